"""Writes an IR graph as a TFLite flatbuffer, with the `tflite` package's generated schema builders.

One subgraph, a `serving_default` signature, buffer 0 empty (the schema's sentinel for "no data"). Constants get
buffers, deduplicated by (dtype, bytes); operator codes are deduplicated and carry the highest version any of their
operators needs (see opcodes.py). The output depends only on the graph's structure, names and data, so the same
graph (or a clone of it) always gives the same bytes.

Tensor shapes: an unknown dimension (the batch) is written as 1 in `shape` and -1 in `shape_signature`, as
TFLiteConverter does; `Interpreter.resize_tensor_input` then changes it.

Speed on big models: constant data is copied exactly once, from the arrays' memory straight into the returned
`bytes` (one `bytes.join`). The flatbuffers builder only writes the small rest ("skeleton"); the constants' data
vectors are laid out by `_DataRegion` at the end of the file, where the builder would have put them, and the
Buffer tables point there. Large constants are deduplicated by a sampled fingerprint and compared in full only
when fingerprints collide, so their bytes are never hashed. Identical small int32 vectors (shapes, signatures)
and quantization tables are written once and shared, which flatbuffers allows.
"""
from __future__ import annotations

import functools
import importlib
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Optional, Sequence

import flatbuffers
import numpy as np
from tflite.ActivationFunctionType import ActivationFunctionType
from tflite.BuiltinOperator import BuiltinOperator as B
from tflite.BuiltinOptions import BuiltinOptions as BO
from tflite.Padding import Padding
from tflite.TensorType import TensorType as TflType

from qcompiler.backend.join_bytes import join_bytes
from qcompiler.backend.tflite_arena import (RuntimeOp, RuntimeTensors, clobbered_reads, kernel_flags,
                                            runtime_batch_reshape, safe_operator_order)
from qcompiler.backend.opcodes import ABSENT, OpSig, TensorSig, deprecated_builtin_code, op_version
from qcompiler.errors import QCompilerError
from qcompiler.files import atomic_write
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.layout import is_permuted_contiguous
from qcompiler.ir.ops import OPS
from qcompiler.ir.types import DTYPES, QParams, TensorType
from qcompiler.quant import math as qm


def _schema(name: str) -> ModuleType:
    """The generated builder module tflite/<name>.py (the `tflite` package rebinds these names to classes)."""
    return importlib.import_module(f"tflite.{name}")


AddOptions = _schema("AddOptions")
Buffer = _schema("Buffer")
CastOptions = _schema("CastOptions")
ConcatenationOptions = _schema("ConcatenationOptions")
Conv2DOptions = _schema("Conv2DOptions")
DepthwiseConv2DOptions = _schema("DepthwiseConv2DOptions")
DequantizeOptions = _schema("DequantizeOptions")
DivOptions = _schema("DivOptions")
ExpOptions = _schema("ExpOptions")
NegOptions = _schema("NegOptions")
SquareOptions = _schema("SquareOptions")
PowOptions = _schema("PowOptions")
SquaredDifferenceOptions = _schema("SquaredDifferenceOptions")
TransposeOptions = _schema("TransposeOptions")
FullyConnectedOptions = _schema("FullyConnectedOptions")
GeluOptions = _schema("GeluOptions")
GreaterOptions = _schema("GreaterOptions")
HardSwishOptions = _schema("HardSwishOptions")
LeakyReluOptions = _schema("LeakyReluOptions")
MaximumMinimumOptions = _schema("MaximumMinimumOptions")
Model = _schema("Model")
MulOptions = _schema("MulOptions")
Operator = _schema("Operator")
OperatorCode = _schema("OperatorCode")
PackOptions = _schema("PackOptions")
PadOptions = _schema("PadOptions")
BatchToSpaceNDOptions = _schema("BatchToSpaceNDOptions")
SpaceToBatchNDOptions = _schema("SpaceToBatchNDOptions")
Pool2DOptions = _schema("Pool2DOptions")
QuantizationParameters = _schema("QuantizationParameters")
QuantizeOptions = _schema("QuantizeOptions")
ShapeOptions = _schema("ShapeOptions")
StridedSliceOptions = _schema("StridedSliceOptions")
ReducerOptions = _schema("ReducerOptions")
ReshapeOptions = _schema("ReshapeOptions")
ResizeNearestNeighborOptions = _schema("ResizeNearestNeighborOptions")
SelectV2Options = _schema("SelectV2Options")
SignatureDef = _schema("SignatureDef")
SliceOptions = _schema("SliceOptions")
SoftmaxOptions = _schema("SoftmaxOptions")
SubGraph = _schema("SubGraph")
SubOptions = _schema("SubOptions")
Tensor = _schema("Tensor")
TensorMap = _schema("TensorMap")

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
SIGNATURE_KEY = "serving_default"
BUFFER_ALIGNMENT = 16  # TFLiteConverter aligns constant data to 16 bytes; kernels may read it in place
_HASHED_BUFFER_LIMIT = 4096  # constants up to this many bytes are deduplicated by their bytes, larger by fingerprint
_FINGERPRINT_SAMPLES = 256

_TFL_DTYPES: dict[str, int] = {
    "f32": TflType.FLOAT32,
    "f16": TflType.FLOAT16,
    "f64": TflType.FLOAT64,
    "i8": TflType.INT8,
    "i4": TflType.INT4,
    "u8": TflType.UINT8,
    "i16": TflType.INT16,
    "i32": TflType.INT32,
    "i64": TflType.INT64,
    "bool": TflType.BOOL,
}
_FUSED: dict[str, int] = {
    "none": ActivationFunctionType.NONE,
    "relu": ActivationFunctionType.RELU,
    "relu6": ActivationFunctionType.RELU6,
    "relu_n1_to_1": ActivationFunctionType.RELU_N1_TO_1,
}
_PADDING = {"same": Padding.SAME, "valid": Padding.VALID}
_PIPELINE_HINT = "run the default pipeline (canonicalize, fold-batchnorm) first"


def builtin_code(op: str) -> int:
    """The TFLite builtin operator code of an IR op, from its OpDef (`tflite`, a BuiltinOperator name)."""
    name = OPS[op].tflite
    if name is None:
        raise BackendError(f"op '{op}' has no TFLite builtin; {_PIPELINE_HINT}")
    return getattr(B, name)

OptionsFn = Callable[[flatbuffers.Builder], int]


class BackendError(QCompilerError):
    """The graph cannot be written as TFLite; the message names the node, its Keras layer and what to do."""


# ----------------------------------------------------------------------------------------------------
# the model being assembled (plain data; serialized at the end)
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    signature: Optional[tuple[int, ...]]  # only when some dimension is unknown
    dtype: str
    buffer: int
    quant: Optional[QParams]

    def sig(self) -> TensorSig:
        return TensorSig(self.dtype, self.shape, self.quant)


@dataclass
class _Operator:
    opcode: int
    inputs: list[int]
    outputs: list[int]
    options_type: int
    options: Optional[OptionsFn]


def _is_quantized(t: TensorType) -> bool:
    """Same rule as the IR interpreter: quantization params count on integer tensors only."""
    return t.quant is not None and not t.is_float


class _ModelWriter:
    """Collects tensors, buffers, operator codes and operators while the graph's nodes are lowered."""

    def __init__(self, value_names: Iterable[str]) -> None:
        self.tensors: list[_Tensor] = []
        # flat uint8 views of the constants' little-endian data, or a large array with permuted axes
        # (a lazily transposed kernel, qcompiler/ir/layout.py), copied into the file in C order
        self.buffers: list[np.ndarray] = [_NO_DATA]
        self.operators: list[_Operator] = []
        self.opcodes: list[list[int]] = []  # [builtin code, version], in order of first use
        self._buffer_index: dict[tuple, int] = {}  # small constants: (dtype, bytes) -> buffer index
        self._large_buffers: dict[tuple, list[int]] = {}  # (dtype, size, fingerprint) -> buffer indices
        self._opcode_index: dict[int, int] = {}
        self._shared_consts: dict[tuple, int] = {}  # shared_int32_const: (shape, bytes) -> tensor index
        self._value_tensor: dict[int, int] = {}  # id(Value) -> tensor index; lookup only, never iterated
        # IR value names are unique already and keep their spelling; tensors the backend adds get fresh names.
        self._names: set[str] = set(value_names)

    # ----- tensors ------------------------------------------------------------------------------
    def _fresh(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self._names:
            candidate = f"{name}_{n}"
            n += 1
        self._names.add(candidate)
        return candidate

    def _add_tensor(self, name: str, t: TensorType, buffer: int = 0, of_value: bool = False) -> int:
        shape = tuple(1 if d is None else d for d in t.shape)
        signature = None if t.is_static else tuple(-1 if d is None else d for d in t.shape)
        if t.dtype not in _TFL_DTYPES:
            raise BackendError(f"tensor '{name}' has dtype {t.dtype}, which TFLite cannot store")
        quant = t.quant if _is_quantized(t) else None
        name = name if of_value else self._fresh(name)
        self.tensors.append(_Tensor(name, shape, signature, t.dtype, buffer, quant))
        return len(self.tensors) - 1

    def _add_buffer(self, dtype: str, data: np.ndarray) -> int:
        """The index of a buffer holding `data` (see `_fingerprint`), added unless an identical one exists."""
        if data.nbytes <= _HASHED_BUFFER_LIMIT:
            key = (dtype, data.tobytes())
            if key not in self._buffer_index:
                self.buffers.append(data)
                self._buffer_index[key] = len(self.buffers) - 1
            return self._buffer_index[key]
        candidates = self._large_buffers.setdefault((dtype, data.nbytes, _fingerprint(data)), [])
        for index in candidates:
            if _same_bytes(self.buffers[index], data):
                return index
        self.buffers.append(data)
        candidates.append(len(self.buffers) - 1)
        return len(self.buffers) - 1

    def add_const(self, array: np.ndarray, name: str, t: Optional[TensorType] = None, of_value: bool = False
                  ) -> int:
        t = t or TensorType(np.shape(array), np.asarray(array).dtype)
        if t.dtype == "i4":
            data = _pack_int4(np.ascontiguousarray(array))
        else:
            array = np.asarray(array)
            array = array.astype(array.dtype.newbyteorder("<"), copy=False)
            if array.nbytes > _HASHED_BUFFER_LIMIT and is_permuted_contiguous(array):
                data = array if not array.flags.c_contiguous else array.reshape(-1).view(np.uint8)
            else:
                data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        return self._add_tensor(name, t, self._add_buffer(t.dtype, data), of_value)

    def shared_int32_const(self, values: "int | Sequence[int]") -> int:
        """One int32 constant tensor per value (a scalar for an int) for the whole model: the small operands of the
        shape computations the backend adds (e.g. a Keras Flatten's), named after their values."""
        array = np.asarray(values, np.int32)
        key = (array.shape, array.tobytes())
        if key not in self._shared_consts:
            name = "c" + "_".join(str(v) for v in array.reshape(-1))
            self._shared_consts[key] = self.add_const(array, name, TensorType(array.shape, "i32"))
        return self._shared_consts[key]

    def int32_const(self, values: Sequence[int] | np.ndarray, name: str) -> int:
        return self.add_const(np.asarray(values, dtype=np.int32), name)

    def add_input(self, value: Value) -> int:
        index = self._add_tensor(value.name, value.type, of_value=True)
        self._value_tensor[id(value)] = index
        return index

    def tensor_of(self, value: Value) -> int:
        """The tensor of an operand; constants are written on first use (unused constants are dropped)."""
        index = self._value_tensor.get(id(value))
        if index is not None:
            return index
        if not value.is_constant:
            raise BackendError(f"%{value.name} is used before it is defined; the graph is not in topological "
                               "order (run graph.verify() to see why)")
        index = self.add_const(_const_data(value), value.name, value.type, of_value=True)
        self._value_tensor[id(value)] = index
        return index

    def result_tensor(self, value: Value) -> int:
        index = self._add_tensor(value.name, value.type, of_value=True)
        self._value_tensor[id(value)] = index
        return index

    def scratch_tensor_of_type(self, name: str, t: TensorType) -> int:
        """A tensor the backend adds, of type `t` (e.g. the shape a Keras Flatten computes at run time)."""
        return self._add_tensor(name, t)

    def scratch_tensor(self, like: Value, suffix: str) -> int:
        """An intermediate the backend adds (e.g. before an unfusable activation), typed like `like`."""
        return self._add_tensor(f"{like.name}/{suffix}", like.type)

    # ----- operators ----------------------------------------------------------------------------
    def emit(self, builtin: int, inputs: Sequence[int], outputs: Sequence[int], options_type: int = 0,
             options: Optional[OptionsFn] = None, **version_options: Any) -> None:
        sig = OpSig(builtin,
                    tuple(self.tensors[i].sig() if i >= 0 else ABSENT for i in inputs),
                    tuple(self.tensors[i].sig() for i in outputs),
                    version_options)
        version = op_version(sig)
        if builtin not in self._opcode_index:
            self._opcode_index[builtin] = len(self.opcodes)
            self.opcodes.append([builtin, version])
        entry = self.opcodes[self._opcode_index[builtin]]
        entry[1] = max(entry[1], version)
        self.operators.append(_Operator(self._opcode_index[builtin], list(inputs), list(outputs), options_type,
                                        options))

    def emit_with_activation(self, node: Node, emit_main: Callable[[int, int], None]) -> None:
        """Write an op with a fused activation: fused when TFLite honours it, else as a separate op after it.

        `emit_main(fused_code, output_tensor)` writes the op itself.
        """
        activation = node.attrs.get("activation", "none")
        out = self.result_tensor(node.result)
        if activation == "none" or (activation in _FUSED and OPS[node.op].tflite_fuses_activation):
            emit_main(_FUSED[activation], out)
            return
        if activation == "tanh" and _is_quantized(node.result.type):
            raise BackendError(f"{node.describe()}: a fused tanh on a quantized op cannot be written (the tensor "
                               "before the tanh has no quantization params); keep tanh as its own op")
        # For relu-like activations on a quantized result, the intermediate reuses the result's params: values
        # outside the result's range would be clamped by the activation anyway.
        pre = self.scratch_tensor(node.result, f"pre_{activation}")
        emit_main(_FUSED["none"], pre)
        # Activations TFLite kernels cannot fuse (a fused TANH is silently ignored by conv/add kernels) become
        # their own op: the IR op of the same name.
        self.emit(builtin_code(activation), [pre], [out])


_NO_DATA = np.zeros(0, np.uint8)


def _fingerprint(data: np.ndarray) -> bytes:
    """A few hundred evenly spaced bytes and both ends of `data` (a buffer: flat uint8, or an array with permuted
    axes standing for its bytes in C order): equal bytes have equal fingerprints."""
    step = max(data.nbytes // _FINGERPRINT_SAMPLES, 1)
    if _is_flat(data):
        return data[::step].tobytes() + data[-64:].tobytes()
    positions = np.concatenate([np.arange(0, data.nbytes, step), np.arange(max(data.nbytes - 64, 0), data.nbytes)])
    elements = data[np.unravel_index(positions // data.itemsize, data.shape)]  # C order, whatever the layout
    return elements.view(np.uint8).reshape(-1, data.itemsize)[np.arange(positions.size),
                                                               positions % data.itemsize].tobytes()


def _is_flat(data: np.ndarray) -> bool:
    return data.dtype == np.uint8 and data.ndim == 1 and data.flags.c_contiguous


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two buffers (see `_fingerprint`) hold the same bytes in C order."""
    if a.nbytes != b.nbytes:
        return False
    if _is_flat(a) and _is_flat(b):
        return np.array_equal(a, b)
    ref, other = (b, a) if _is_flat(b) else (a, b)  # ref has permuted axes: compare in its shape
    unsigned = np.dtype(f"u{ref.itemsize}")
    if _is_flat(other) or other.shape != ref.shape or other.itemsize != ref.itemsize:
        other = np.ascontiguousarray(other).reshape(-1).view(np.uint8).view(unsigned).reshape(ref.shape)
    return bool(np.array_equal(ref.view(unsigned), other.view(unsigned)))


def _pack_int4(array: np.ndarray) -> np.ndarray:
    """TFLite INT4 buffers: two values per byte, the first in the low nibble (an odd count ends half empty)."""
    flat = np.asarray(array, np.int8).reshape(-1)
    if np.any((flat < -8) | (flat > 7)):
        raise BackendError("an INT4 constant holds values outside [-8, 7]")
    nibbles = (flat.astype(np.uint8) & 0x0F)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def _const_data(value: Value) -> np.ndarray:
    data = np.asarray(value.data)
    t = value.type
    if data.shape != t.shape:
        raise BackendError(f"constant %{value.name}{_layer(value.producer)} holds shape {data.shape} but its type "
                           f"is {t}")
    if data.dtype != t.np_dtype:
        converted = data.astype(t.np_dtype)
        if not np.array_equal(converted.astype(data.dtype), data):
            raise BackendError(f"constant %{value.name}{_layer(value.producer)} holds {data.dtype} data that does "
                               f"not fit its type {t}; quantize the data before retyping the constant")
        data = converted
    return data


def _layer(node: Optional[Node]) -> str:
    return f" (Keras layer '{node.layer}')" if node is not None and node.layer else ""


# ----------------------------------------------------------------------------------------------------
# options builders
# ----------------------------------------------------------------------------------------------------
def _conv_options(attrs: dict, fused: int) -> OptionsFn:
    def build(b: flatbuffers.Builder) -> int:
        Conv2DOptions.Start(b)
        Conv2DOptions.AddPadding(b, _PADDING[attrs["padding"]])
        Conv2DOptions.AddStrideH(b, attrs["strides"][0])
        Conv2DOptions.AddStrideW(b, attrs["strides"][1])
        Conv2DOptions.AddDilationHFactor(b, attrs["dilation"][0])
        Conv2DOptions.AddDilationWFactor(b, attrs["dilation"][1])
        Conv2DOptions.AddFusedActivationFunction(b, fused)
        return Conv2DOptions.End(b)

    return build


def _depthwise_options(attrs: dict, fused: int) -> OptionsFn:
    def build(b: flatbuffers.Builder) -> int:
        DepthwiseConv2DOptions.Start(b)
        DepthwiseConv2DOptions.AddPadding(b, _PADDING[attrs["padding"]])
        DepthwiseConv2DOptions.AddStrideH(b, attrs["strides"][0])
        DepthwiseConv2DOptions.AddStrideW(b, attrs["strides"][1])
        DepthwiseConv2DOptions.AddDilationHFactor(b, attrs["dilation"][0])
        DepthwiseConv2DOptions.AddDilationWFactor(b, attrs["dilation"][1])
        DepthwiseConv2DOptions.AddDepthMultiplier(b, attrs["depth_multiplier"])
        DepthwiseConv2DOptions.AddFusedActivationFunction(b, fused)
        return DepthwiseConv2DOptions.End(b)

    return build


def _fc_options(fused: int, keep_num_dims: bool, asymmetric_quantize_inputs: bool = False) -> OptionsFn:
    def build(b: flatbuffers.Builder) -> int:
        FullyConnectedOptions.Start(b)
        FullyConnectedOptions.AddFusedActivationFunction(b, fused)
        FullyConnectedOptions.AddKeepNumDims(b, keep_num_dims)
        if asymmetric_quantize_inputs:
            FullyConnectedOptions.AddAsymmetricQuantizeInputs(b, True)
        return FullyConnectedOptions.End(b)

    return build


def _pool_options(attrs: dict, fused: int) -> OptionsFn:
    def build(b: flatbuffers.Builder) -> int:
        Pool2DOptions.Start(b)
        Pool2DOptions.AddPadding(b, _PADDING[attrs["padding"]])
        Pool2DOptions.AddStrideH(b, attrs["strides"][0])
        Pool2DOptions.AddStrideW(b, attrs["strides"][1])
        Pool2DOptions.AddFilterHeight(b, attrs["pool_size"][0])
        Pool2DOptions.AddFilterWidth(b, attrs["pool_size"][1])
        Pool2DOptions.AddFusedActivationFunction(b, fused)
        return Pool2DOptions.End(b)

    return build


def _arith_options(op: str, fused: int) -> tuple[int, OptionsFn]:
    """ADD/SUB/MUL options. pot_scale_int16=False: int16 tensors use general scales, not powers of two."""
    module = {"add": AddOptions, "sub": SubOptions, "mul": MulOptions}[op]

    def build(b: flatbuffers.Builder) -> int:
        module.Start(b)
        module.AddFusedActivationFunction(b, fused)
        if op != "mul":
            module.AddPotScaleInt16(b, False)
        return module.End(b)

    options_type = {"add": BO.AddOptions, "sub": BO.SubOptions, "mul": BO.MulOptions}[op]
    return options_type, build


def _empty_options(module: Any) -> OptionsFn:
    def build(b: flatbuffers.Builder) -> int:
        module.Start(b)
        return module.End(b)

    return build


def _single_options(module: Any, adder: str, value: Any) -> OptionsFn:
    def build(b: flatbuffers.Builder) -> int:
        module.Start(b)
        getattr(module, adder)(b, value)
        return module.End(b)

    return build


# ----------------------------------------------------------------------------------------------------
# one emitter per IR op
# ----------------------------------------------------------------------------------------------------
def _zero_bias(w: _ModelWriter, node: Node, channels: int) -> int:
    """TFLite's conv kernels require a bias; synthesize zeros in the type the kernel expects."""
    x, weights = node.operands[0].type, node.operands[1].type
    name = f"{node.result.name}/zero_bias"
    if not _is_quantized(x):
        return w.add_const(np.zeros(channels, np.float32), name)
    if not _is_quantized(weights):
        raise BackendError(f"{node.describe()}: quantized input but float weights; quantize the weights too")
    dtype = "i64" if x.dtype == "i16" else "i32"
    scales = np.asarray(weights.quant.scale, np.float64) * x.quant.scale[0]
    axis = 0 if len(scales) > 1 else None
    quant = QParams(tuple(scales), (0,) * len(scales), axis)
    t = TensorType((channels,), dtype, quant)
    return w.add_const(np.zeros(channels, t.np_dtype), name, t)


def _conv_inputs(w: _ModelWriter, node: Node, channels: int) -> list[int]:
    inputs = [w.tensor_of(v) for v in node.operands]
    if len(inputs) == 2:
        inputs.append(_zero_bias(w, node, channels))
    return inputs


def _emit_conv2d(w: _ModelWriter, node: Node) -> None:
    inputs = _conv_inputs(w, node, node.operands[1].type.shape[0])
    w.emit_with_activation(node, lambda fused, out: w.emit(
        builtin_code(node.op), inputs, [out], BO.Conv2DOptions, _conv_options(node.attrs, fused)))


def _emit_depthwise(w: _ModelWriter, node: Node) -> None:
    inputs = _conv_inputs(w, node, node.operands[1].type.shape[3])
    w.emit_with_activation(node, lambda fused, out: w.emit(
        builtin_code(node.op), inputs, [out], BO.DepthwiseConv2DOptions, _depthwise_options(node.attrs, fused),
        dilation=tuple(node.attrs["dilation"])))


def _emit_fully_connected(w: _ModelWriter, node: Node) -> None:
    # An all-zero bias is none, as in the converter's model (TensorFlow folds a BiasAdd of zeros away): a Keras
    # Dense's freshly initialised bias costs no tensor (4 bytes per unit; the zoo's seed_mlp).
    operands = node.operands[:2] if len(node.operands) > 2 and _all_zero(node.operands[2]) else node.operands
    inputs = [w.tensor_of(v) for v in operands]
    if len(inputs) == 2:
        inputs.append(-1)  # optional bias left out; TFLite's kernel accepts it from version 1
    keep = node.operands[0].type.rank > 2
    # A hybrid FC quantizes its float input per row at run time; the converter always asks for asymmetric
    # (zero-point) quantization of that input (prepare_quantize_dynamic_range.cc).
    asymmetric = _is_hybrid(node)
    w.emit_with_activation(node, lambda fused, out: w.emit(
        builtin_code(node.op), inputs, [out], BO.FullyConnectedOptions, _fc_options(fused, keep, asymmetric),
        keep_num_dims=keep, asymmetric_quantize_inputs=asymmetric))


def _all_zero(value: Value) -> bool:
    return value.is_constant and value.data is not None and not np.any(np.asarray(value.data))


def _is_hybrid(node: Node) -> bool:
    """Float input and result with int8 weights: a dynamic-range ("hybrid") kernel."""
    x, weights = node.operands[0].type, node.operands[1].type
    return x.is_float and node.result.type.is_float and _is_quantized(weights)


def _check_mixed_types(node: Node) -> None:
    """Only conv2d, depthwise_conv2d and fully_connected have kernels that mix float activations with integer
    weights; elsewhere TFLite would reject (or misread) the model at run time."""
    if OPS[node.op].converts_dtype or not any(v.type.is_float for v in node.results):
        return
    for index, operand in enumerate(node.operands):
        if not _is_quantized(operand.type):
            continue
        weights = OPS[node.op].weights
        if weights is not None and weights.hybrid and index == weights.operand and _is_hybrid(node):
            if operand.type.dtype != "i8":
                raise BackendError(f"{node.describe()}: hybrid weights %{operand.name} must be i8, not "
                                   f"{operand.type.dtype}")
            continue
        raise BackendError(f"{node.describe()}: float result but operand {index} %{operand.name} is "
                           f"{operand.type}; TFLite only mixes float activations with int8 weights in conv2d, "
                           "depthwise_conv2d and fully_connected. Dequantize the operand first, or keep it float")


def _runnable_add_output(node: Node) -> Optional[QParams]:
    """Parameters for an intermediate that TFLite's integer ADD can write, when its own output's cannot be written
    (None: they can).

    TFLite's integer ADD rescales the output by 2 max(input scales) / (2^shift * output scale) with
    QuantizeMultiplierSmallerThanOneExp, which aborts the process (in Prepare) unless that is below 1. A degenerate
    calibrated range (a dead activation's [0, 0]: scale 2e-6 / 255) on an add's output gives such a multiplier.
    The converter writes that ADD as it is, and its model aborts when run (random seed 3196: a rank-3 Dense with a
    fused relu that calibration never saw above 0; TFLite prepares the ADD at invoke after the tensordot's dynamic
    RESHAPE). qcompiler keeps the converter's parameters on the result and writes the ADD into an intermediate
    with the smallest scale the kernel accepts, then a QUANTIZE to the result's parameters (random seed 1183 had
    such an add as well). SUB takes a multiplier >= 1 (measured: a [0, 0] sub output allocates under
    BUILTIN_REF; random seed 17 writes one)."""
    out = node.result
    if node.op != "add" or out.type.quant is None or out.type.dtype not in ("i8", "i16"):
        return None
    scales = [float(np.float32(v.type.quant.scale[0])) for v in node.operands if v.type.quant is not None]
    if len(scales) != 2:
        return None
    scale = qm.add_runnable_output_scale(scales, float(np.float32(out.type.quant.scale[0])), out.type.dtype)
    return None if scale is None else QParams.per_tensor(scale, int(out.type.quant.zero_point[0]))


def _emit_arith(w: _ModelWriter, node: Node) -> None:
    inputs = [w.tensor_of(v) for v in node.operands]
    builtin = builtin_code(node.op)

    def main(fused: int, out: int) -> None:
        options_type, build = _arith_options(node.op, fused)
        w.emit(builtin, inputs, [out], options_type, build, pot_scale_int16=False)

    stand_in = _runnable_add_output(node)
    if stand_in is None:
        w.emit_with_activation(node, main)
        return
    activation = node.attrs.get("activation", "none")
    if activation not in _FUSED:
        raise BackendError(f"{node.describe()}: the output range is degenerate and the activation '{activation}' "
                           "cannot be fused into TFLite's ADD; keep this layer in float (keep_float)")
    mid = w.scratch_tensor_of_type(f"{node.result.name}/runnable",
                                   TensorType(node.result.type.shape, node.result.type.dtype, stand_in))
    main(_FUSED[activation], mid)
    w.emit(B.QUANTIZE, [mid], [w.result_tensor(node.result)], BO.QuantizeOptions,
           _empty_options(QuantizeOptions))


def _emit_pool(w: _ModelWriter, node: Node) -> None:
    inputs = [w.tensor_of(node.operands[0])]
    builtin = builtin_code(node.op)
    w.emit_with_activation(node, lambda fused, out: w.emit(
        builtin, inputs, [out], BO.Pool2DOptions, _pool_options(node.attrs, fused)))


def _emit_concat(w: _ModelWriter, node: Node) -> None:
    inputs = [w.tensor_of(v) for v in node.operands]
    axis = node.attrs["axis"] % node.result.type.rank

    def main(fused: int, out: int) -> None:
        def build(b: flatbuffers.Builder) -> int:
            ConcatenationOptions.Start(b)
            ConcatenationOptions.AddAxis(b, axis)
            ConcatenationOptions.AddFusedActivationFunction(b, fused)
            return ConcatenationOptions.End(b)

        w.emit(builtin_code(node.op), inputs, [out], BO.ConcatenationOptions, build)

    w.emit_with_activation(node, main)


def _simple(options_type: int = 0, options: Optional[Callable[[Node], OptionsFn]] = None
            ) -> Callable[[_ModelWriter, Node], None]:
    """An op whose operands map one to one onto the TFLite op's inputs (the builtin is the OpDef's `tflite`)."""

    def emitter(w: _ModelWriter, node: Node) -> None:
        inputs = [w.tensor_of(v) for v in node.operands]
        out = w.result_tensor(node.result)
        w.emit(builtin_code(node.op), inputs, [out], options_type, options(node) if options else None)

    return emitter


def _emit_reduce(w: _ModelWriter, node: Node) -> None:
    axes = sorted(a % node.operands[0].type.rank for a in node.attrs["axes"])
    inputs = [w.tensor_of(node.operands[0]), w.int32_const(axes, f"{node.result.name}/axes")]
    out = w.result_tensor(node.result)
    builtin = builtin_code(node.op)
    w.emit(builtin, inputs, [out], BO.ReducerOptions,
           _single_options(ReducerOptions, "AddKeepDims", bool(node.attrs["keepdims"])))


def _emit_transpose(w: _ModelWriter, node: Node) -> None:
    inputs = [w.tensor_of(node.operands[0]), w.int32_const(node.attrs["perm"], f"{node.result.name}/perm")]
    w.emit(builtin_code(node.op), inputs, [w.result_tensor(node.result)], BO.TransposeOptions,
           _empty_options(TransposeOptions))


def _emit_div(w: _ModelWriter, node: Node) -> None:
    inputs = [w.tensor_of(v) for v in node.operands]
    w.emit_with_activation(node, lambda fused, out: w.emit(
        builtin_code(node.op), inputs, [out], BO.DivOptions,
        _single_options(DivOptions, "AddFusedActivationFunction", fused)))


def _reshape_target(node: Node) -> list[int]:
    if node.op == "reshape":
        return [int(d) for d in node.attrs["shape"]]
    rest = node.operands[0].type.shape[1:]
    if any(d is None for d in rest):
        raise BackendError(f"{node.describe()}: cannot flatten {node.operands[0].type}: only the batch may be "
                           "unknown; give the model a fixed input size")
    return [-1, int(np.prod(rest))]


def _emit_runtime_shape(w: _ModelWriter, node: Node, target: list[int]) -> int:
    """SHAPE, STRIDED_SLICE (the batch) and PACK with the other dimensions: the target as the converter computes it
    for a Keras Flatten/Reshape layer. It matters beyond looks: the RESHAPE's output shape is then unknown when
    TFLite prepares it, and when that output cannot alias its input (a graph input), TFLite makes it a dynamic
    tensor, which no later kernel overwrites in place (qcompiler/backend/tflite_arena.py; random seed 2142)."""
    x, name = node.operands[0], node.result.name
    shape = w.scratch_tensor_of_type(f"{name}/s", TensorType((x.type.rank,), "i32"))
    w.emit(B.SHAPE, [w.tensor_of(x)], [shape], BO.ShapeOptions, _single_options(ShapeOptions, "AddOutType",
                                                                                 TflType.INT32))
    batch = w.scratch_tensor_of_type(f"{name}/b", TensorType((), "i32"))

    def slice_options(b: flatbuffers.Builder) -> int:
        StridedSliceOptions.Start(b)
        StridedSliceOptions.AddShrinkAxisMask(b, 1)
        return StridedSliceOptions.End(b)

    one = w.shared_int32_const([1])
    w.emit(B.STRIDED_SLICE, [shape, w.shared_int32_const([0]), one, one], [batch], BO.StridedSliceOptions,
           slice_options)
    dims = [w.shared_int32_const(d) for d in target[1:]]
    packed = w.scratch_tensor_of_type(f"{name}/p", TensorType((len(target),), "i32"))

    def pack_options(b: flatbuffers.Builder) -> int:
        PackOptions.Start(b)
        PackOptions.AddValuesCount(b, len(target))
        PackOptions.AddAxis(b, 0)
        return PackOptions.End(b)

    w.emit(B.PACK, [batch, *dims], [packed], BO.PackOptions, pack_options)
    return packed


def _emit_reshape(w: _ModelWriter, node: Node) -> None:
    # The batch stays -1 in the target so that resizing the input's batch reshapes correctly.
    target = _reshape_target(node)
    if runtime_batch_reshape(node):
        inputs = [w.tensor_of(node.operands[0]), _emit_runtime_shape(w, node, target)]
        w.emit(builtin_code(node.op), inputs, [w.result_tensor(node.result)])
        return
    inputs = [w.tensor_of(node.operands[0]), w.int32_const(target, f"{node.result.name}/shape")]
    out = w.result_tensor(node.result)

    def build(b: flatbuffers.Builder) -> int:
        new_shape = b.CreateNumpyVector(np.asarray(target, np.int32))
        ReshapeOptions.Start(b)
        ReshapeOptions.AddNewShape(b, new_shape)
        return ReshapeOptions.End(b)

    w.emit(builtin_code(node.op), inputs, [out], BO.ReshapeOptions, build)


def _emit_pad(w: _ModelWriter, node: Node) -> None:
    paddings = np.asarray(node.attrs["paddings"], np.int32).reshape(-1, 2)
    inputs = [w.tensor_of(node.operands[0]), w.int32_const(paddings, f"{node.result.name}/paddings")]
    out = w.result_tensor(node.result)
    w.emit(builtin_code(node.op), inputs, [out], BO.PadOptions, _empty_options(PadOptions))


def _emit_space_batch(w: _ModelWriter, node: Node) -> None:
    """SPACE_TO_BATCH_ND (block, paddings) and BATCH_TO_SPACE_ND (block, crops): two int32 constant inputs."""
    to_batch = node.op == "space_to_batch"
    second = "paddings" if to_batch else "crops"
    inputs = [w.tensor_of(node.operands[0]),
              w.int32_const(np.asarray(node.attrs["block"], np.int32), f"{node.result.name}/block"),
              w.int32_const(np.asarray(node.attrs[second], np.int32).reshape(2, 2), f"{node.result.name}/{second}")]
    out = w.result_tensor(node.result)
    if to_batch:
        w.emit(B.SPACE_TO_BATCH_ND, inputs, [out], BO.SpaceToBatchNDOptions, _empty_options(SpaceToBatchNDOptions))
    else:
        w.emit(B.BATCH_TO_SPACE_ND, inputs, [out], BO.BatchToSpaceNDOptions, _empty_options(BatchToSpaceNDOptions))


def _emit_slice(w: _ModelWriter, node: Node) -> None:
    inputs = [w.tensor_of(node.operands[0]),
              w.int32_const(node.attrs["begin"], f"{node.result.name}/begin"),
              w.int32_const(node.attrs["size"], f"{node.result.name}/size")]
    out = w.result_tensor(node.result)
    w.emit(builtin_code(node.op), inputs, [out], BO.SliceOptions, _empty_options(SliceOptions))


def _emit_resize_nearest(w: _ModelWriter, node: Node) -> None:
    inputs = [w.tensor_of(node.operands[0]), w.int32_const(node.attrs["size"], f"{node.result.name}/size")]
    out = w.result_tensor(node.result)

    def build(b: flatbuffers.Builder) -> int:
        ResizeNearestNeighborOptions.Start(b)
        ResizeNearestNeighborOptions.AddAlignCorners(b, False)
        ResizeNearestNeighborOptions.AddHalfPixelCenters(b, False)
        return ResizeNearestNeighborOptions.End(b)

    w.emit(builtin_code(node.op), inputs, [out], BO.ResizeNearestNeighborOptions, build)


def _emit_quantize(w: _ModelWriter, node: Node) -> None:
    result = node.result.type
    if not _is_quantized(result):
        raise BackendError(f"{node.describe()}: quantize must produce an integer type with quantization params, "
                           f"got {result}")
    _simple(BO.QuantizeOptions, lambda n: _empty_options(QuantizeOptions))(w, node)


def _emit_dequantize(w: _ModelWriter, node: Node) -> None:
    if node.result.type.dtype != "f32":
        raise BackendError(f"{node.describe()}: TFLite's DEQUANTIZE only produces f32, not "
                           f"{node.result.type.dtype}")
    _simple(BO.DequantizeOptions, lambda n: _empty_options(DequantizeOptions))(w, node)


def _emit_cast(w: _ModelWriter, node: Node) -> None:
    source, target = _TFL_DTYPES[node.operands[0].type.dtype], _TFL_DTYPES[node.result.type.dtype]

    def build(b: flatbuffers.Builder) -> int:
        CastOptions.Start(b)
        CastOptions.AddInDataType(b, source)
        CastOptions.AddOutDataType(b, target)
        return CastOptions.End(b)

    inputs = [w.tensor_of(node.operands[0])]
    w.emit(builtin_code(node.op), inputs, [w.result_tensor(node.result)], BO.CastOptions, build)


Emitter = Callable[[_ModelWriter, Node], None]


def _emitters() -> dict[str, Emitter]:
    """The writer of every IR op whose OpDef has a `tflite` builtin, keyed by op name (tests/test_op_facts.py
    checks that the two sets are equal). An op without options is `_simple()`; options are built from attrs."""
    return {
        "conv2d": _emit_conv2d,
        "depthwise_conv2d": _emit_depthwise,
        "fully_connected": _emit_fully_connected,
        "add": _emit_arith,
        "sub": _emit_arith,
        "mul": _emit_arith,
        "maximum": _simple(BO.MaximumMinimumOptions, lambda n: _empty_options(MaximumMinimumOptions)),
        "minimum": _simple(BO.MaximumMinimumOptions, lambda n: _empty_options(MaximumMinimumOptions)),
        "greater": _simple(BO.GreaterOptions, lambda n: _empty_options(GreaterOptions)),
        "select": _simple(BO.SelectV2Options, lambda n: _empty_options(SelectV2Options)),
        "relu": _simple(),
        "relu6": _simple(),
        "relu_n1_to_1": _simple(),
        "leaky_relu": _simple(BO.LeakyReluOptions,
                              lambda n: _single_options(LeakyReluOptions, "AddAlpha", float(n.attrs["alpha"]))),
        "sigmoid": _simple(),
        "tanh": _simple(),
        "softmax": _simple(BO.SoftmaxOptions,
                           lambda n: _single_options(SoftmaxOptions, "AddBeta", float(n.attrs["beta"]))),
        "elu": _simple(),
        "hard_swish": _simple(BO.HardSwishOptions, lambda n: _empty_options(HardSwishOptions)),
        "gelu": _simple(BO.GeluOptions,
                        lambda n: _single_options(GeluOptions, "AddApproximate", bool(n.attrs["approximate"]))),
        "max_pool2d": _emit_pool,
        "avg_pool2d": _emit_pool,
        "mean": _emit_reduce,
        "reduce_max": _emit_reduce,
        "reduce_min": _emit_reduce,
        "flatten": _emit_reshape,
        "reshape": _emit_reshape,
        "concat": _emit_concat,
        "pad": _emit_pad,
        "slice": _emit_slice,
        "space_to_batch": _emit_space_batch,
        "batch_to_space": _emit_space_batch,
        "resize_nearest": _emit_resize_nearest,
        "quantize": _emit_quantize,
        "dequantize": _emit_dequantize,
        "cast": _emit_cast,
        "transpose": _emit_transpose,
        "div": _emit_div,
        "squared_difference": _simple(BO.SquaredDifferenceOptions, lambda n: _empty_options(SquaredDifferenceOptions)),
        "rsqrt": _simple(),
        "sqrt": _simple(),
        "abs": _simple(),
        "neg": _simple(BO.NegOptions, lambda n: _empty_options(NegOptions)),
        "square": _simple(BO.SquareOptions, lambda n: _empty_options(SquareOptions)),
        "pow": _simple(BO.PowOptions, lambda n: _empty_options(PowOptions)),
        "exp": _simple(BO.ExpOptions, lambda n: _empty_options(ExpOptions)),
        "sum": _emit_reduce,
    }


EMITTERS: dict[str, Emitter] = _emitters()
SUPPORTED_OPS = frozenset(EMITTERS)


def _emit_node(w: _ModelWriter, node: Node) -> None:
    emitter = EMITTERS.get(node.op)
    if emitter is None:
        raise BackendError(f"{node.describe()}: op '{node.op}' has no TFLite equivalent in this backend; "
                           f"{_PIPELINE_HINT}. Ops the backend writes: {', '.join(sorted(SUPPORTED_OPS))}")
    if len(node.results) != 1:
        raise BackendError(f"{node.describe()}: expected one result, got {len(node.results)}")
    _check_mixed_types(node)
    emitter(w, node)


# ----------------------------------------------------------------------------------------------------
# serialization
# ----------------------------------------------------------------------------------------------------
def _offset_vector(b: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


def _vector(b: flatbuffers.Builder, code: str, values: Sequence[Any]) -> int:
    """A vector of little-endian scalars (struct format `code`: i, f, q), packed straight into the builder;
    several times faster than CreateNumpyVector on the few-element vectors of shapes, operands and scales."""
    size = struct.calcsize(code)
    b.StartVector(size, len(values), size)
    b.head -= size * len(values)
    struct.pack_into(f"<{len(values)}{code}", b.Bytes, b.head, *values)
    return b.EndVector()


def _int32_vector(b: flatbuffers.Builder, values: Sequence[int]) -> int:
    return _vector(b, "i", values)


class _Shared:
    """Writes each distinct shape vector and quantization table once; later tensors point at the same bytes
    (a requantization-free chain of int8 ops shares one set of parameters)."""

    def __init__(self, b: flatbuffers.Builder) -> None:
        self.b = b
        self.vectors: dict[tuple[int, ...], int] = {}
        self.quants: dict[QParams, int] = {}

    def int32(self, values: Sequence[int]) -> int:
        key = tuple(values)
        offset = self.vectors.get(key)
        if offset is None:
            offset = self.vectors[key] = _int32_vector(self.b, key)
        return offset

    def quant(self, q: QParams) -> int:
        offset = self.quants.get(q)
        if offset is None:
            offset = self.quants[q] = _write_quant(self.b, q)
        return offset


class _DataRegion:
    """The constants' [ubyte] vectors, laid out as the flatbuffers builder would write them first (so they end up
    at the end of the file), each one's data 16-byte aligned, but never copied into the builder.

    `offsets[i]` is what `Buffer.AddData` takes for buffer i: the builder measures offsets from the end of its
    own bytes, which is where this region starts, so a vector inside the region has a negative offset (the
    forward distance the builder computes from it is still right). None for an empty buffer (no data vector)."""

    def __init__(self, buffers: Sequence[np.ndarray]) -> None:
        self.offsets: list[Optional[int]] = []
        self._vectors: list[tuple[np.ndarray, int]] = []  # (data, padding after it), in writing order
        written = 0  # bytes from the end of the file
        for data in buffers:  # flat uint8, or an array with permuted axes (its bytes in C order)
            if not data.nbytes:
                self.offsets.append(None)
                continue
            padding = -(written + data.nbytes) % BUFFER_ALIGNMENT  # makes the data start 16-byte aligned
            written += padding + data.nbytes + 4  # + the uint32 length before the data
            self._vectors.append((data, padding))
            self.offsets.append(written)
        # Leading padding keeps the region a multiple of the alignment, and no offset 0 (AddData would skip it).
        self._front = -written % BUFFER_ALIGNMENT or BUFFER_ALIGNMENT
        self.size = written + self._front
        self.offsets = [None if o is None else o - self.size for o in self.offsets]

    def pieces(self) -> list[Any]:
        """The region's bytes, in file order, as buffers for `join_bytes` (the arrays' own memory)."""
        out: list[Any] = [bytes(self._front)]
        for data, padding in reversed(self._vectors):
            out += [struct.pack("<I", data.nbytes), memoryview(data) if _is_flat(data) else data, bytes(padding)]
        return out


def _write_buffer(b: flatbuffers.Builder, data_offset: Optional[int]) -> int:
    Buffer.Start(b)
    if data_offset is not None:
        Buffer.AddData(b, data_offset)
    return Buffer.End(b)


def _write_quant(b: flatbuffers.Builder, q: QParams) -> int:
    scale = _vector(b, "f", q.scale)  # QParams keeps float32-representable scales
    zero_point = _vector(b, "q", q.zero_point)
    QuantizationParameters.Start(b)
    QuantizationParameters.AddScale(b, scale)
    QuantizationParameters.AddZeroPoint(b, zero_point)
    QuantizationParameters.AddQuantizedDimension(b, q.axis or 0)
    return QuantizationParameters.End(b)


def _write_tensor(b: flatbuffers.Builder, t: _Tensor, shared: _Shared) -> int:
    name = b.CreateString(t.name)
    shape = shared.int32(t.shape)
    signature = shared.int32(t.signature) if t.signature is not None else None
    quant = shared.quant(t.quant) if t.quant is not None else None
    Tensor.Start(b)
    Tensor.AddShape(b, shape)
    Tensor.AddType(b, _TFL_DTYPES[t.dtype])
    Tensor.AddBuffer(b, t.buffer)
    Tensor.AddName(b, name)
    if quant is not None:
        Tensor.AddQuantization(b, quant)
    if signature is not None:
        Tensor.AddShapeSignature(b, signature)
    Tensor.AddHasRank(b, True)
    return Tensor.End(b)


def _write_operator(b: flatbuffers.Builder, op: _Operator) -> int:
    inputs = _int32_vector(b, op.inputs)
    outputs = _int32_vector(b, op.outputs)
    options = op.options(b) if op.options is not None else None
    Operator.Start(b)
    Operator.AddOpcodeIndex(b, op.opcode)
    Operator.AddInputs(b, inputs)
    Operator.AddOutputs(b, outputs)
    if options is not None:
        Operator.AddBuiltinOptionsType(b, op.options_type)
        Operator.AddBuiltinOptions(b, options)
    return Operator.End(b)


def _write_opcode(b: flatbuffers.Builder, code: int, version: int) -> int:
    OperatorCode.Start(b)
    OperatorCode.AddDeprecatedBuiltinCode(b, deprecated_builtin_code(code))
    OperatorCode.AddBuiltinCode(b, code)
    OperatorCode.AddVersion(b, version)
    return OperatorCode.End(b)


def _write_tensor_maps(b: flatbuffers.Builder, entries: Sequence[tuple[str, int]]) -> int:
    maps = []
    for name, index in entries:
        name_offset = b.CreateString(name)
        TensorMap.Start(b)
        TensorMap.AddName(b, name_offset)
        TensorMap.AddTensorIndex(b, index)
        maps.append(TensorMap.End(b))
    return _offset_vector(b, maps)


def _signature_names(values: Sequence[Value], taken: set[str]) -> list[str]:
    """Signature keys: value names, made unique when a value is listed twice."""
    names = []
    for value in values:
        name, n = value.name, 1
        while name in taken:
            name = f"{value.name}_{n}"
            n += 1
        taken.add(name)
        names.append(name)
    return names


def _serialize(w: _ModelWriter, graph: Graph, inputs: list[int], output_values: Sequence[Value], outputs: list[int],
               description: str) -> bytes:
    region = _DataRegion(w.buffers)
    names = sum(len(t.name) for t in w.tensors)
    b = flatbuffers.Builder(65536 + 256 * (len(w.tensors) + len(w.operators)) + 2 * names)
    b.minalign = BUFFER_ALIGNMENT  # the skeleton's size stays a multiple of 16, so the data stays aligned in the file
    shared = _Shared(b)
    buffers = _offset_vector(b, [_write_buffer(b, offset) for offset in region.offsets])
    tensors = _offset_vector(b, [_write_tensor(b, t, shared) for t in w.tensors])
    operators = _offset_vector(b, [_write_operator(b, op) for op in w.operators])
    subgraph_name = b.CreateString(graph.name)
    in_vec, out_vec = _int32_vector(b, inputs), _int32_vector(b, outputs)
    SubGraph.Start(b)
    SubGraph.AddTensors(b, tensors)
    SubGraph.AddInputs(b, in_vec)
    SubGraph.AddOutputs(b, out_vec)
    SubGraph.AddOperators(b, operators)
    SubGraph.AddName(b, subgraph_name)
    subgraphs = _offset_vector(b, [SubGraph.End(b)])
    opcodes = _offset_vector(b, [_write_opcode(b, code, version) for code, version in w.opcodes])

    sig_inputs = _write_tensor_maps(b, list(zip(_signature_names(graph.inputs, set()), inputs)))
    sig_outputs = _write_tensor_maps(b, list(zip(_signature_names(output_values, set()), outputs)))
    key = b.CreateString(SIGNATURE_KEY)
    SignatureDef.Start(b)
    SignatureDef.AddInputs(b, sig_inputs)
    SignatureDef.AddOutputs(b, sig_outputs)
    SignatureDef.AddSignatureKey(b, key)
    SignatureDef.AddSubgraphIndex(b, 0)
    signatures = _offset_vector(b, [SignatureDef.End(b)])

    desc = b.CreateString(description)
    Model.Start(b)
    Model.AddVersion(b, SCHEMA_VERSION)
    Model.AddOperatorCodes(b, opcodes)
    Model.AddSubgraphs(b, subgraphs)
    Model.AddDescription(b, desc)
    Model.AddBuffers(b, buffers)
    Model.AddSignatureDefs(b, signatures)
    b.Finish(Model.End(b), file_identifier=FILE_IDENTIFIER)
    return join_bytes([memoryview(b.Bytes)[b.Head():], *region.pieces()])


# ----------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------
OPERATOR_ORDERS = ("runtime-safe", "graph")


def write_tflite(graph: Graph, description: str = "qcompiler", extra_outputs: Sequence[Value] = (),
                 operator_order: str = "runtime-safe") -> bytes:
    """Serialize `graph` to TFLite flatbuffer bytes. Raises BackendError for anything TFLite cannot express.

    `extra_outputs`: values of `graph` written as further model outputs after the graph's own (those already
    outputs, and graph inputs, are skipped), e.g. the tensors calibration reads; the graph is not changed.

    `operator_order`: "runtime-safe" (the default) writes the operators in the graph's order except where TFLite's
    arena planner would then let a kernel overwrite in place a buffer another op still reads (`_order_for_runtime`):
    those readers move before the write. "graph" writes them exactly in the graph's order, as TFLiteConverter writes
    its model, e.g. to reproduce what the converter's calibrator records (its in-place range unions); such a model
    may compute wrong values in TFLite's runtime where the planner overwrites a tensor still to be read.
    """
    if operator_order not in OPERATOR_ORDERS:
        raise BackendError(f"unknown operator_order '{operator_order}'; choose one of {', '.join(OPERATOR_ORDERS)}")
    check_writable(graph, description)
    output_values = list(graph.outputs)
    listed = {id(v) for v in output_values} | {id(v) for v in graph.inputs}
    for value in extra_outputs:
        if id(value) not in listed:
            if value.producer is None or not graph.contains(value.producer):
                raise BackendError(f"extra output %{value.name} is not a value of graph @{graph.name}")
            listed.add(id(value))
            output_values.append(value)
    w = _ModelWriter(v.name for v in graph.values())
    inputs = [w.add_input(v) for v in graph.inputs]
    for node in graph.nodes:
        if node.op != "const":
            try:
                _emit_node(w, node)
            except QCompilerError:
                raise
            except (KeyError, IndexError, TypeError, ValueError, OverflowError, struct.error) as err:
                raise BackendError(f"{node.describe()} cannot be written as TFLite: {type(err).__name__}: {err}") \
                    from err
    outputs = [w.tensor_of(v) for v in output_values]
    if operator_order == "runtime-safe":
        _order_for_runtime(w, inputs, outputs)
    try:
        return _serialize(w, graph, inputs, output_values, outputs, description)
    except (OverflowError, struct.error, ValueError) as err:
        raise BackendError(f"graph @{graph.name} cannot be written as TFLite: {type(err).__name__}: {err}") from err


def _order_for_runtime(w: _ModelWriter, inputs: Sequence[int], outputs: Sequence[int]) -> None:
    """Reorder the operators (a topological order still) so that TFLite's arena planner never lets an op write
    in place into a buffer another tensor still needs (`tflite_arena.safe_operator_order`): its planner checks
    only the reference count of the buffer's first owner, so a SUB after a RESHAPE of a SOFTMAX output that
    SOFTMAX wrote in place overwrites that output while other ops still have to read it (random-model seed
    2142: float32 outputs off by 269 times their size)."""
    ops, tensors = _runtime_model(w, inputs, outputs)
    if not clobbered_reads(ops, tensors):
        return
    order = safe_operator_order(ops, tensors)
    w.operators = [w.operators[i] for i in order]
    left = clobbered_reads([ops[i] for i in order], tensors)
    if left:
        names = sorted({w.tensors[tensor].name for _, _, tensor in left})
        warnings.warn(InPlaceOverwriteWarning(
            f"TFLite's arena planner will overwrite {', '.join('%' + n for n in names)} in place before an op that "
            "needs the overwritten value reads it, and no operator order avoids it (that op also needs the "
            "writing op's result): the model computes wrong values there. Keep the two apart (e.g. compute the "
            "reshape on a copy) or run the model with experimental_preserve_all_tensors"), stacklevel=3)


def _runtime_model(w: _ModelWriter, inputs: Sequence[int],
                   outputs: Sequence[int]) -> tuple[list[RuntimeOp], RuntimeTensors]:
    """The written operators and tensors as TFLite's arena planner sees them (backend/tflite_arena.py): each
    kernel's in-place flags, the RESHAPEs whose target is a tensor computed at run time, bytes at batch 1."""
    flags = _builtin_flags()
    ops = []
    for op in w.operators:
        code = w.opcodes[op.opcode][0]
        at_run_time = code == B.RESHAPE and len(op.inputs) > 1 and op.inputs[1] >= 0 and \
            w.tensors[op.inputs[1]].buffer == 0
        ops.append(RuntimeOp(flags.get(code, 0), tuple(op.inputs), tuple(op.outputs), at_run_time))
    tensors = RuntimeTensors(
        tuple(int(np.prod(t.shape, dtype=np.int64)) * DTYPES[t.dtype].itemsize for t in w.tensors),
        frozenset(i for i, t in enumerate(w.tensors) if t.buffer != 0), frozenset(inputs), frozenset(outputs))
    return ops, tensors


class InPlaceOverwriteWarning(UserWarning):
    """A written model in which TFLite's runtime overwrites a tensor that is still to be read (no order helps)."""


@functools.lru_cache(maxsize=1)
def _builtin_flags() -> dict[int, int]:
    """The inplace_operator flags of each builtin kernel the writer emits, from the op table."""
    flags: dict[int, int] = {}
    for name, definition in OPS.items():
        if definition.tflite is not None:
            code = getattr(B, definition.tflite)
            flags[code] = flags.get(code, 0) | kernel_flags(name)
    return flags


# Flatbuffers address with 32-bit offsets: a model and its buffers must stay under 2 GiB.
MAX_MODEL_BYTES = (1 << 31) - (1 << 20)


def check_writable(graph: Graph, description: str = "qcompiler") -> None:
    """The writer's input checks, before anything is built (the pass manager has verified the graph): outputs,
    every used constant's values known (not read from a digest-only dump) and finite, shapes and sizes TFLite
    can store."""
    from qcompiler.ir.checks import check_known_values, check_values

    if not isinstance(graph, Graph):
        raise TypeError(f"write_tflite takes a qcompiler Graph, got {type(graph).__name__}")
    if not isinstance(description, str):
        raise TypeError(f"description must be a str, got {type(description).__name__}")
    if not graph.outputs:
        raise BackendError(f"graph @{graph.name} has no outputs; nothing to write")
    check_known_values(graph, "writing TFLite")
    check_values(graph)
    total = 0
    for value in graph.values():
        if any(d is not None and not 0 <= d < (1 << 31) for d in value.type.shape):
            raise BackendError(f"%{value.name} has shape {list(value.type.shape)}; TFLite dimensions are int32")
        if value.is_constant:
            total += int(value.data.nbytes)
    if total > MAX_MODEL_BYTES:
        raise BackendError(f"graph @{graph.name} holds {total:,} bytes of constants; a .tflite file (flatbuffer) "
                           f"is limited to 2 GiB")


def write_tflite_file(graph: Graph, path: str | os.PathLike, description: str = "qcompiler") -> Path:
    """Write the model to `path` atomically (see qcompiler.files.atomic_write): on any error nothing is left
    behind and an existing file at `path` is untouched."""
    atomic_write(path, write_tflite(graph, description))
    return Path(path)
