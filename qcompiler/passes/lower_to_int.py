"""lower-to-int: turn a calibrated fake-quant graph into an integer graph that the backend writes as is.

  - every fake_quant'ed activation becomes an i8 (or i16) value with the converter's scale and zero point;
    ops that keep their input's parameters (pooling, reshape, ...) inherit them;
  - weights become symmetric per-channel i8 constants, biases i32 (i64 for 16-bit activations) with
    scale = input scale × weight scale;
  - other constant operands become per-tensor i8 constants;
  - where a kernel needs all its operands on the output's parameters (concatenation, maximum, minimum) and an
    operand's differ, a requantizing `quantize` is inserted;
  - graph inputs/outputs are integer (`io=int8`/`int16`), uint8 (`io=uint8`, TOCO-style), or float with
    quantize/dequantize at the edges (`io=float`).

A tensor without a range is an error naming the tensor and its Keras layer, unless `default_ranges` fills it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import numpy as np

from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.types import QParams, TensorType
from qcompiler.passes.base import Pass, PassResult
from qcompiler.quant import math as qmath
from qcompiler.quant.spec import SAME, quant_spec

# Kernels that move raw integers between operands without rescaling (TFLite checks equal parameters).
_SHARED_PARAMS_OPS = ("concat", "maximum", "minimum")


class MissingRangeError(QCompilerError):
    pass


class DefaultRangesWarning(UserWarning):
    pass


@dataclass(frozen=True)
class LowerToInt(Pass):
    name: ClassVar[str] = "lower-to-int"
    summary: ClassVar[str] = "replace fake_quant by integer types, quantize weights and biases, set I/O types"

    io: Literal["int8", "int16", "uint8", "float"] = "int8"
    default_ranges: Optional[tuple[float, float]] = None
    input_stats: Optional[tuple[float, float]] = None  # uint8 inputs: real = (q - mean) / std

    def run(self, graph: Graph) -> PassResult:
        fake_quants = graph.find("fake_quant")
        if not fake_quants:
            return PassResult.unchanged()
        act_dtype = _activation_dtype(fake_quants)
        self._check_io(act_dtype)
        self._fill_missing_ranges(graph, fake_quants)
        params = _activation_params(graph, fake_quants)
        counts = {"weights": 0, "requantize": 0}
        for node in list(graph.nodes):
            if node.op in ("fake_quant", "const", "quantize", "dequantize"):
                continue
            counts["weights"] += _lower_constants(graph, node, params, act_dtype)
            if node.op in _SHARED_PARAMS_OPS:
                counts["requantize"] += _requantize_operands(graph, node, params, act_dtype)
        _retype_activations(graph, params, act_dtype)
        for node in list(graph.find("fake_quant")):
            graph.replace_node(node, [node.operands[0]])
        self._lower_io(graph, act_dtype)
        return PassResult(True, {k: v for k, v in counts.items() if v} | {"fake-quant-erased": len(fake_quants)})

    # ----- ranges ---------------------------------------------------------------------------------
    def _check_io(self, act_dtype: str) -> None:
        allowed = {"i8": ("int8", "uint8", "float"), "i16": ("int16", "float")}[act_dtype]
        if self.io not in allowed:
            raise QCompilerError(f"io={self.io} does not fit {act_dtype} activations; choose one of {allowed}")

    def _fill_missing_ranges(self, graph: Graph, fake_quants: list[Node]) -> None:
        missing = [n for n in fake_quants if not n.attrs["weights"] and n.attrs["min"] is None]
        if not missing:
            return
        listing = ", ".join(_describe_tensor(n.operands[0]) for n in missing)
        if self.default_ranges is None:
            raise MissingRangeError(
                f"{len(missing)} tensor(s) have no calibrated range: {listing}. Calibrate with data that reaches "
                "them (--calibration DATA.npy), or fill them with --default-ranges MIN,MAX")
        lo, hi = self.default_ranges
        if not lo <= 0 <= hi or lo == hi:
            raise QCompilerError(f"default ranges [{lo}, {hi}] must contain 0 and not be empty")
        warnings.warn(f"default range [{lo}, {hi}] used for {len(missing)} uncalibrated tensor(s): {listing}",
                      DefaultRangesWarning, stacklevel=2)
        for node in missing:
            node.attrs["min"], node.attrs["max"] = float(lo), float(hi)

    # ----- I/O ------------------------------------------------------------------------------------
    def _lower_io(self, graph: Graph, act_dtype: str) -> None:
        if self.io == "float":
            for value in graph.inputs:
                if value.type.quant is not None:
                    _quantize_input(graph, value, value.type)
            graph.outputs = [_dequantize(graph, v) if v.type.quant is not None else v for v in graph.outputs]
        elif self.io == "uint8":
            for value in graph.inputs:
                if value.type.quant is not None:
                    self._uint8_input(graph, value)
            graph.outputs = [_to_uint8(graph, v) if v.type.quant is not None else v for v in graph.outputs]

    def _uint8_input(self, graph: Graph, value: Value) -> None:
        internal = value.type
        if self.input_stats is not None:
            mean, std = self.input_stats
            if std <= 0:
                raise QCompilerError(f"input stats need a positive std, got {std}")
            zero_point = int(round(mean))
            if not 0 <= zero_point <= 255:
                raise QCompilerError(f"input stats mean {mean} is outside the uint8 range [0, 255]")
            internal = internal.with_quant(QParams.per_tensor(1.0 / std, zero_point - 128))
        q = internal.quant
        uint8_type = TensorType(value.type.shape, "u8", QParams.per_tensor(q.scale[0], q.zero_point[0] + 128))
        _quantize_input(graph, value, internal, input_type=uint8_type)


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def _describe_tensor(value: Value) -> str:
    layer = f" (Keras layer '{value.layer}')" if value.layer else " (model input)" if value.producer is None else ""
    return f"%{value.name}{layer}"


def _activation_dtype(fake_quants: list[Node]) -> str:
    dtypes = {n.attrs["dtype"] for n in fake_quants if not n.attrs["weights"]}
    if len(dtypes) > 1:
        raise QCompilerError(f"mixed activation types {sorted(dtypes)} are not supported in one graph")
    return dtypes.pop() if dtypes else "i8"


def _activation_params(graph: Graph, fake_quants: list[Node]) -> dict[int, QParams]:
    """value id -> parameters, for every activation the integer graph will carry."""
    params: dict[int, QParams] = {}
    for node in fake_quants:
        if node.attrs["weights"] or node.operands[0].is_constant:
            continue
        qp = qmath.activation_qparams(node.attrs["min"], node.attrs["max"], node.attrs["dtype"])
        params[id(node.operands[0])] = qp
        params[id(node.result)] = qp
    for node in graph.nodes:  # topological: an input's parameters are known before its users'
        spec = quant_spec(node.op)
        if spec is not None and spec.output == SAME and node.result.type.is_float:
            source = node.operands[0]
            if id(source) not in params:
                raise MissingRangeError(f"{node.describe()} keeps its input's quantization, but its input "
                                        f"{_describe_tensor(source)} has none")
            params[id(node.result)] = params[id(source)]
    return params


def _unwrap(value: Value) -> tuple[Value, Optional[Node]]:
    """The value under a fake_quant, and the fake_quant (or None)."""
    if value.producer is not None and value.producer.op == "fake_quant":
        return value.producer.operands[0], value.producer
    return value, None


def _quantized_const(graph: Graph, array: np.ndarray, qp: QParams, like: Value, before: Node) -> Value:
    new = graph.const(array, name=f"{like.name}.int", layer=like.layer, before=before)
    new.type = new.type.with_quant(qp)
    return new


def _lower_constants(graph: Graph, node: Node, params: dict[int, QParams], act_dtype: str) -> int:
    spec = quant_spec(node.op)
    lowered = 0
    if spec.weight_operand is not None and spec.weight_operand < len(node.operands):
        _lower_weights_and_bias(graph, node, spec, params, act_dtype)
        lowered += 1
    for index, operand in enumerate(node.operands):
        if index in (spec.weight_operand, spec.bias_operand):
            continue
        source, fq = _unwrap(operand)
        if fq is None or not source.is_constant:
            continue
        data = np.asarray(source.data, np.float32)
        qp = qmath.weight_qparams(data, None, narrow_range=False)
        node.set_operand(index, _quantized_const(graph, qmath.quantize_constant(data, qp), qp, source, node))
        lowered += 1
    return lowered


def _lower_weights_and_bias(graph: Graph, node: Node, spec, params: dict[int, QParams], act_dtype: str) -> None:
    weights, fq = _unwrap(node.operands[spec.weight_operand])
    if fq is None:
        raise QCompilerError(f"{node.describe()}: weights %{weights.name} were not marked by insert-fake-quant")
    x = node.operands[0]
    if id(x) not in params:
        raise MissingRangeError(f"{node.describe()}: its input {_describe_tensor(x)} has no quantization")
    in_scale = params[id(x)].scale[0]
    w = np.asarray(weights.data, np.float32)
    axis = fq.attrs["axis"]
    bias = None
    if spec.bias_operand is not None and spec.bias_operand < len(node.operands):
        bias = node.operands[spec.bias_operand]
        if not bias.is_constant:
            raise QCompilerError(f"{node.describe()}: bias %{bias.name} is not a constant")
    bias_data = None if bias is None else np.asarray(bias.data, np.float32)
    if act_dtype == "i16":
        wq, w_int = qmath.weight_qparams_16x8(w, axis if axis is not None else 0, bias_data, in_scale)
        bias_dtype = "i64"
    else:
        wq = qmath.weight_qparams(w, axis)
        bias_dtype = "i32"
    if bias_data is not None:
        adjusted = qmath.bias_qparams(bias_data, in_scale, wq, dtype=bias_dtype)
        wq = adjusted.weight
        b_int = qmath.quantize_bias(bias_data, adjusted.bias, dtype=bias_dtype)
        node.set_operand(spec.bias_operand, _quantized_const(graph, b_int, adjusted.bias, bias, node))
    if act_dtype != "i16":
        w_int = qmath.quantize_weights(w, wq)
    node.set_operand(spec.weight_operand, _quantized_const(graph, w_int, wq, weights, node))


def _requantize_operands(graph: Graph, node: Node, params: dict[int, QParams], act_dtype: str) -> int:
    target = params.get(id(node.result))
    if target is None:
        return 0
    inserted = 0
    for index, operand in enumerate(node.operands):
        source, _ = _unwrap(operand)
        if source.is_constant or params.get(id(operand)) == target:
            continue
        requant = graph.add_node("quantize", [operand], {},
                                 result_types=[TensorType(operand.type.shape, "f32")],
                                 names=[f"{source.name}.requant"], layer=node.layer, before=node).result
        params[id(requant)] = target
        node.set_operand(index, requant)
        inserted += 1
    return inserted


def _retype_activations(graph: Graph, params: dict[int, QParams], act_dtype: str) -> None:
    for value in graph.values():
        qp = params.get(id(value))
        if qp is not None and value.type.is_float:
            value.type = TensorType(value.type.shape, act_dtype, qp)


def _quantize_input(graph: Graph, value: Value, internal: TensorType, input_type: Optional[TensorType] = None) -> None:
    """Make graph input `value` take `input_type` (float when None) and quantize it to `internal` inside."""
    users = list(value.uses)
    first = graph.nodes[0] if graph.nodes else None
    value.type = input_type if input_type is not None else TensorType(value.type.shape, "f32")
    q = graph.add_node("quantize", [value], {}, result_types=[internal], names=[f"{value.name}.quant"],
                       before=first).result
    for use in users:
        use.node.set_operand(use.index, q)


def _dequantize(graph: Graph, value: Value) -> Value:
    return graph.op("dequantize", value, name=f"{value.name}.float", layer=value.layer)


def _to_uint8(graph: Graph, value: Value) -> Value:
    q = value.type.quant
    out_type = TensorType(value.type.shape, "u8", QParams.per_tensor(q.scale[0], q.zero_point[0] + 128))
    return graph.add_node("quantize", [value], {}, result_types=[out_type], names=[f"{value.name}.u8"],
                          layer=value.layer).result


