"""The op table: for each op its operands, attributes (with defaults), result-type inference and float semantics.

Layout conventions (the same as TFLite, so the backend writes tensors as they are):
  activations NHWC; conv2d weights [out, kh, kw, in]; depthwise_conv2d weights [1, kh, kw, in*multiplier];
  fully_connected weights [out, in] applied to the last axis of any-rank input.
Fused activations (`activation` attribute): none, relu, relu6, relu_n1_to_1, tanh.

The table is the one source of every fact about an op: operands and typed attributes (qcompiler/ir/attrs.py),
result-type inference, float semantics, which operands are weights/bias and their output-channel axis
(`Weights`), the quantization rule (`QuantRule`), TFLite runtime facts the calibrator and folding passes read
(in-place operands, shared buffers, constant folding, zero-pad folding) and the TFLite builtin it is written as.
Passes and the backend read these facts; nothing here imports them.

To add an op (docs/architecture.md "Adding an op" has a worked example): write its inference and compute
functions and add an `OpDef` to `OPS` (the printer, parser, verifier, interpreter and every pass pick it up);
teach the frontend to emit it; add its writer to the backend's EMITTERS (tests/test_op_facts.py fails until
every op with a `tflite` builtin has a writer and a version rule).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qcompiler.ir.attrs import REQUIRED, Attr, array, enum, flag, int_pairs, integer, ints, pair, real
from qcompiler.ir.graph import IRError, Node
from qcompiler.ir.types import DTYPES, TensorType

FUSED_ACTIVATIONS = ("none", "relu", "relu6", "relu_n1_to_1", "tanh")
Shape = tuple[Optional[int], ...]
InferFn = Callable[[Sequence[TensorType], dict], list[TensorType]]
ComputeFn = Callable[[Sequence[np.ndarray], dict], list[np.ndarray]]


# ----------------------------------------------------------------------------------------------------
# facts about an op that passes and the backend read (the op table below is their only source)
# ----------------------------------------------------------------------------------------------------
# How quantization treats an op's output (QuantRule.output):
OWN = "own"  # its own calibrated range (a fake_quant after it)
SAME = "same"  # shares its operands' parameters: the TFLite kernel moves values without rescaling
FIXED = "fixed"  # a range the kernel fixes (softmax, logistic, tanh)
FLOAT_ONLY = "float"  # TFLite has no integer kernel: integer models keep it float (dequantize/quantize around it)
NOT_ACTIVATION = "none"  # constants and explicit conversions: quantization leaves the op alone

# Fixed output ranges as (min, max) that activation_qparams turns into the kernel's required parameters:
# int8: softmax/logistic scale 1/256 zero point -128; tanh 1/128, 0.  int16: 1/32768, 0 for all three.
FIXED_I8_UNIT = (0.0, 255.0 / 256.0)
FIXED_I8_TANH = (-1.0, 127.0 / 128.0)
FIXED_I16_UNIT = (0.0, 32767.0 / 32768.0)
FIXED_I16_TANH = (-1.0, 32767.0 / 32768.0)


@dataclass(frozen=True)
class QuantRule:
    """How int8/int16 quantization treats the op (qcompiler/quant/spec.py explains OWN/SAME/FIXED).

    param_operands: the non-tensor operands (shape, paddings, size, ...) the TFLite op takes, which the converter's
    same-scale heuristic counts (docs/quantization-notes.md §5.2)."""

    output: str
    fixed_i8: Optional[tuple[float, float]] = None
    fixed_i16: Optional[tuple[float, float]] = None
    param_operands: int = 0
    int16: bool = True  # TFLite has an int16 kernel too (16x8 models); else the op stays float there
    # TFLiteConverter's MLIR quantizer quantizes the TFL op (it has the QuantizableResult trait). False for ELU:
    # tfl.elu lacks it, so the converter keeps ELU float though TFLite has an int8 kernel (policy tflite-2.21).
    converter_quantizes: bool = True

    @property
    def quantizable(self) -> bool:
        return self.output in (OWN, SAME, FIXED)

    def quantizable_in(self, act_dtype: str) -> bool:
        return self.quantizable and (act_dtype != "i16" or self.int16)


@dataclass(frozen=True)
class Weights:
    """The op has constant weights (and maybe a bias) that quantization and folding rewrite.

    out_axis: the weights' output-channel axis (per-channel quantization; fold-batchnorm/fold-affine scale it).
    operand / bias: operand indices (bias None: the op takes no bias).
    hybrid: TFLite has a dynamic-range kernel for it (float activations, int8 weights): quantize-weights
      quantizes its weights and the writer accepts the mix.
    affine_foldable: output channel c is sum(x * w[c]) + bias[c] with the input channels on the weights' last
      axis, so fold-batchnorm and fold-affine may fold a per-channel mul/add into weights and bias.
    int4: ai-edge-litert's int8 kernel loads TFLite INT4 weights (CONV_2D v7, FULLY_CONNECTED v10); lower-to-int
      stores weights trained with <= 4 bits that way."""

    out_axis: int
    operand: int = 1
    bias: Optional[int] = 2
    hybrid: bool = True
    affine_foldable: bool = True
    int4: bool = False


@dataclass(frozen=True)
class OpDef:
    """Everything about one op. Adding an op: an entry in OPS below, the frontend mapping that emits it
    (qcompiler/frontend/), and a writer in the backend's EMITTERS when `tflite` is set (tests check both)."""

    name: str
    min_operands: int
    max_operands: Optional[int]  # None: any number
    signature: dict[str, Attr]  # attribute name -> its declaration (kind, default, constraints)
    infer: InferFn
    compute: ComputeFn
    quant: QuantRule
    doc: str = ""
    weights: Optional[Weights] = None
    tflite: Optional[str] = None  # the TFLite BuiltinOperator name the backend writes it as; None: never written
    # TFLite runtime facts the converter's calibrator sees (backend/tflite_arena.py): the inplace_operator flags of
    # the `tflite` kernel's registration. Operands whose buffer the kernel may overwrite with its output, in the
    # order TFLite tries them (kTfLiteInplaceOpInputNShared); or input 0 shared unmodified (+DataUnmodified).
    inplace_operands: tuple[int, ...] = ()
    shares_input_buffer: bool = False
    constant_foldable: bool = True  # fold-constants may evaluate it when all operands are constants
    absorbs_zero_pad: bool = False  # a zero pad before it can become its SAME padding (fold-pad)
    converts_dtype: bool = False  # converts between float and integer by design (the writer allows the mix)
    # Its TFLite kernel runs a fused relu/relu6/relu_n1_to_1 (`activation` attribute). CONCATENATION's Prepare
    # requires NONE: the writer emits the activation as its own op and fuse-activations leaves it alone.
    tflite_fuses_activation: bool = True
    attrs: dict[str, Any] = field(init=False)  # attribute name -> default (REQUIRED when it must be given)
    fusable_activation: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attrs", {k: a.default for k, a in self.signature.items()})
        object.__setattr__(self, "fusable_activation", "activation" in self.signature)


def _fail(node_desc: str, message: str) -> IRError:
    return IRError(f"{node_desc}: {message}")


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def apply_activation(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "none":
        return x
    if activation == "relu":
        return np.maximum(x, 0).astype(x.dtype)
    if activation == "relu6":
        return np.clip(x, 0, 6).astype(x.dtype)
    if activation == "relu_n1_to_1":
        return np.clip(x, -1, 1).astype(x.dtype)
    if activation == "tanh":
        return np.tanh(x).astype(x.dtype)
    raise IRError(f"unknown fused activation '{activation}'; expected one of {FUSED_ACTIVATIONS}")


def conv_output_size(size: Optional[int], kernel: int, stride: int, dilation: int, padding: str) -> Optional[int]:
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    effective = (kernel - 1) * dilation + 1
    out = (size - effective) // stride + 1
    if out <= 0:
        raise IRError(f"window {effective} does not fit input size {size} with padding 'valid'")
    return out


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding: the extra pixel goes after."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _spatial_pads(x_shape: Sequence[int], kh: int, kw: int, attrs: dict) -> tuple[tuple[int, int], tuple[int, int]]:
    if attrs["padding"] == "valid":
        return (0, 0), (0, 0)
    sh, sw = attrs["strides"]
    dh, dw = attrs.get("dilation", [1, 1])
    return same_padding(x_shape[1], kh, sh, dh), same_padding(x_shape[2], kw, sw, dw)


def _windows(x: np.ndarray, kh: int, kw: int, attrs: dict, pad_value: float = 0.0) -> np.ndarray:
    """[N, OH, OW, C, KH, KW] windows of an NHWC tensor (padding, stride and dilation applied)."""
    ph, pw = _spatial_pads(x.shape, kh, kw, attrs)
    if ph != (0, 0) or pw != (0, 0):
        x = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=pad_value)
    sh, sw = attrs["strides"]
    dh, dw = attrs.get("dilation", [1, 1])
    eff_h, eff_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    win = sliding_window_view(x, (eff_h, eff_w), axis=(1, 2))  # N, H', W', C, eff_h, eff_w
    return win[:, ::sh, ::sw, :, ::dh, ::dw]


def _check_activation(attrs: dict) -> None:
    if attrs.get("activation", "none") not in FUSED_ACTIVATIONS:
        raise IRError(f"activation '{attrs['activation']}' is not a fusable activation {FUSED_ACTIVATIONS}")


def _same(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    _check_activation(attrs)
    return [TensorType(types[0].shape, types[0].dtype)]


def _unary(fn: Callable[[np.ndarray, dict], np.ndarray]) -> ComputeFn:
    return lambda xs, attrs: [np.asarray(fn(xs[0], attrs), dtype=xs[0].dtype)]


def broadcast_shapes(a: Shape, b: Shape) -> Shape:
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + tuple(a)
    b = (1,) * (rank - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x == 1:
            out.append(y)
        elif y == 1 or x == y:
            out.append(x)
        elif x is None or y is None:
            out.append(x if y is None else y)
        else:
            raise IRError(f"shapes {a} and {b} do not broadcast")
    return tuple(out)


# ----------------------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------------------
def _infer_const(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    from qcompiler.ir.types import dtype_name

    try:
        value = attrs["value"]  # an ndarray, or a LazyProduct (shape and dtype without computing it)
        if not hasattr(value, "dtype") or not hasattr(value, "shape"):
            value = np.asarray(value)
        return [TensorType(value.shape, dtype_name(value.dtype))]
    except (TypeError, ValueError) as err:
        raise IRError(f"the value is not a tensor of a supported dtype: {err}") from None


def _need_rank(x: TensorType, what: str, rank: Optional[int] = None, at_least: int = 0) -> None:
    """Refuse an operand of the wrong rank before an inference function indexes its shape."""
    if rank is not None and x.rank != rank:
        raise IRError(f"{what} must have rank {rank}, got {x}")
    if x.rank < at_least:
        raise IRError(f"{what} must have rank >= {at_least}, got {x}")


def _check_axis(axis: int, rank: int, what: str = "axis") -> int:
    """`axis` in [-rank, rank), as a non-negative index."""
    if not -rank <= axis < rank:
        raise IRError(f"{what} {axis} is outside a rank-{rank} tensor (valid: {-rank}..{rank - 1})")
    return axis % rank


def _infer_conv2d(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x, w = types[0], types[1]
    if x.rank != 4 or w.rank != 4:
        raise IRError(f"conv2d wants a rank-4 input and rank-4 weights [out,kh,kw,in], got {x} and {w}")
    if x.shape[3] is not None and w.shape[3] != x.shape[3]:
        raise IRError(f"conv2d weights take {w.shape[3]} input channels but the input has {x.shape[3]}")
    _check_bias(types, w.shape[0])
    _check_activation(attrs)
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilation"]
    oh = conv_output_size(x.shape[1], w.shape[1], sh, dh, attrs["padding"])
    ow = conv_output_size(x.shape[2], w.shape[2], sw, dw, attrs["padding"])
    return [TensorType((x.shape[0], oh, ow, w.shape[0]), x.dtype)]


def _infer_depthwise(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x, w = types[0], types[1]
    if x.rank != 4 or w.rank != 4 or w.shape[0] != 1:
        raise IRError(f"depthwise_conv2d wants a rank-4 input and weights [1,kh,kw,in*multiplier], got {x} and {w}")
    mult = attrs["depth_multiplier"]
    if x.shape[3] is not None and w.shape[3] != x.shape[3] * mult:
        raise IRError(f"depthwise weights have {w.shape[3]} channels, expected {x.shape[3]}×{mult}")
    _check_bias(types, w.shape[3])
    _check_activation(attrs)
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilation"]
    oh = conv_output_size(x.shape[1], w.shape[1], sh, dh, attrs["padding"])
    ow = conv_output_size(x.shape[2], w.shape[2], sw, dw, attrs["padding"])
    return [TensorType((x.shape[0], oh, ow, w.shape[3]), x.dtype)]


def _infer_fc(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x, w = types[0], types[1]
    if w.rank != 2:
        raise IRError(f"fully_connected wants weights [out,in], got {w}")
    _need_rank(x, "the fully_connected input", at_least=1)
    if x.shape[-1] is not None and x.shape[-1] != w.shape[1]:
        raise IRError(f"fully_connected weights take {w.shape[1]} inputs but the last input axis is {x.shape[-1]}")
    _check_bias(types, w.shape[0])
    _check_activation(attrs)
    return [TensorType(x.shape[:-1] + (w.shape[0],), x.dtype)]


def _check_bias(types: Sequence[TensorType], channels: Optional[int]) -> None:
    if len(types) > 2 and (types[2].rank != 1 or types[2].shape[0] != channels):
        raise IRError(f"bias must be [{channels}], got {types[2]}")


def _infer_batch_norm(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    _need_rank(types[0], "the batch_norm input", at_least=1)
    if attrs["epsilon"] < 0:
        raise IRError(f"epsilon must not be negative, got {attrs['epsilon']}")
    channels = types[0].shape[-1]
    for t in types[1:]:
        if t.shape != (channels,):
            raise IRError(f"batch_norm parameters must be [{channels}], got {t}")
    return [TensorType(types[0].shape, types[0].dtype)]


def _infer_binary(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    _check_activation(attrs)
    return [TensorType(broadcast_shapes(types[0].shape, types[1].shape), types[0].dtype)]


def _infer_compare(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    return [TensorType(broadcast_shapes(types[0].shape, types[1].shape), "bool")]


def _infer_select(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    shape = broadcast_shapes(broadcast_shapes(types[0].shape, types[1].shape), types[2].shape)
    return [TensorType(shape, types[1].dtype)]


def _infer_pool(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x = types[0]
    if x.rank != 4:
        raise IRError(f"pooling wants a rank-4 NHWC input, got {x}")
    _check_activation(attrs)
    (kh, kw), (sh, sw) = attrs["pool_size"], attrs["strides"]
    oh = conv_output_size(x.shape[1], kh, sh, 1, attrs["padding"])
    ow = conv_output_size(x.shape[2], kw, sw, 1, attrs["padding"])
    return [TensorType((x.shape[0], oh, ow, x.shape[3]), x.dtype)]


def _normalize_axes(axes: Sequence[int], rank: int) -> list[int]:
    return sorted(a % rank for a in axes)


def _infer_reduce(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x = types[0]
    for a in attrs["axes"]:
        _check_axis(a, x.rank, "reduction axis")
    axes = _normalize_axes(attrs["axes"], x.rank)
    if len(set(axes)) != len(axes):
        raise IRError(f"reduction axes {list(attrs['axes'])} name an axis twice")
    if attrs["keepdims"]:
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return [TensorType(shape, x.dtype)]


def _infer_flatten(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x = types[0]
    _need_rank(x, "the flatten input", at_least=1)
    rest = x.shape[1:]
    flat = math.prod(rest) if all(d is not None for d in rest) else None
    return [TensorType((x.shape[0], flat), x.dtype)]


def _infer_reshape(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x = types[0]
    target = list(attrs["shape"])
    if sum(1 for d in target if d == -1) > 1:
        raise IRError(f"reshape target {target} has more than one -1")
    known_in = x.num_elements()
    if -1 in target:
        rest = math.prod(d for d in target if d != -1)
        if known_in is not None:
            if rest == 0 or known_in % rest:
                raise IRError(f"cannot reshape {x} to {target}")
            target[target.index(-1)] = known_in // rest
        elif x.shape[0] is None and target[0] == -1 and x.rank >= 1:
            # the batch stays unknown; check the rest is consistent
            inner = x.shape[1:]
            if all(d is not None for d in inner) and math.prod(inner) != rest:
                raise IRError(f"cannot reshape {x} to {attrs['shape']}: {math.prod(inner)} elements per batch, "
                              f"not {rest}")
            target[0] = None
        else:
            target[target.index(-1)] = None
    elif known_in is not None and math.prod(target) != known_in:
        raise IRError(f"cannot reshape {x} ({known_in} elements) to {target}")
    return [TensorType(tuple(target), x.dtype)]


def _infer_concat(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    _check_activation(attrs)
    rank = types[0].rank
    axis = _check_axis(attrs["axis"], rank, "concat axis")
    total: Optional[int] = 0
    for t in types:
        if t.rank != rank:
            raise IRError(f"concat inputs must have equal rank, got {[str(t) for t in types]}")
        for i, (a, b) in enumerate(zip(t.shape, types[0].shape)):
            if i != axis and a is not None and b is not None and a != b:
                raise IRError(f"concat inputs differ on axis {i}: {[str(t) for t in types]}")
        total = None if total is None or t.shape[axis] is None else total + t.shape[axis]
    shape = list(types[0].shape)
    shape[axis] = total
    return [TensorType(tuple(shape), types[0].dtype)]


def _infer_pad(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x = types[0]
    pads = attrs["paddings"]
    if len(pads) != x.rank:
        raise IRError(f"pad needs {x.rank} [before, after] pairs, got {pads}")
    shape = tuple(None if d is None else d + a + b for d, (a, b) in zip(x.shape, pads))
    return [TensorType(shape, x.dtype)]


def _infer_slice(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x = types[0]
    begin, size = attrs["begin"], attrs["size"]
    if len(begin) != x.rank or len(size) != x.rank:
        raise IRError(f"slice begin/size need {x.rank} entries, got {begin} and {size}")
    shape = []
    for d, b, s in zip(x.shape, begin, size):
        if d is not None and b > d:
            raise IRError(f"slice begin {b} is outside a dimension of {d}")
        if s == -1:
            shape.append(None if d is None else d - b)
        else:
            if d is not None and b + s > d:
                raise IRError(f"slice [{b}:{b + s}] is outside a dimension of {d}")
            shape.append(s)
    return [TensorType(tuple(shape), x.dtype)]


def _infer_resize(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x = types[0]
    _need_rank(x, "the resize_nearest input (NHWC)", rank=4)
    h, w = attrs["size"]
    return [TensorType((x.shape[0], h, w, x.shape[3]), x.dtype)]


def _infer_fake_quant(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    if attrs["dtype"] not in ("i8", "u8", "i16"):
        raise IRError(f"fake_quant dtype must be i8, u8 or i16, got '{attrs['dtype']}'")
    if (attrs["min"] is None) != (attrs["max"] is None):
        raise IRError("fake_quant needs both min and max, or neither (not calibrated yet)")
    if attrs["min"] is not None and not attrs["min"] <= attrs["max"]:
        raise IRError(f"fake_quant needs min <= max, got min={attrs['min']} max={attrs['max']}")
    if attrs["axis"] is not None and not attrs["weights"]:
        raise IRError("only weights (weights=true) are quantized per channel")
    if attrs["bits"] is not None and not 2 <= attrs["bits"] <= 8:
        raise IRError(f"fake_quant bits must be 2..8 (int8 storage), got {attrs['bits']}")
    if attrs["axis"] is not None and not -types[0].rank <= attrs["axis"] < types[0].rank:
        raise IRError(f"fake_quant axis {attrs['axis']} is outside a rank-{types[0].rank} tensor")
    return [TensorType(types[0].shape, types[0].dtype)]


def _infer_quantize(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    raise IRError("quantize needs an explicit result type (the target dtype and its quantization)")


def _infer_dequantize(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    return [TensorType(types[0].shape, attrs.get("dtype", "f32"))]


def _infer_cast(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    return [TensorType(types[0].shape, attrs["dtype"])]


# ----------------------------------------------------------------------------------------------------
# float semantics
# ----------------------------------------------------------------------------------------------------
def _compute_conv2d(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    x, w = xs[0], xs[1]
    win = _windows(x, w.shape[1], w.shape[2], attrs)  # N,OH,OW,C,KH,KW
    out = np.einsum("nhwcij,oijc->nhwo", win, w, optimize=True)
    if len(xs) > 2:
        out = out + xs[2]
    return [apply_activation(out.astype(x.dtype), attrs["activation"])]


def _compute_depthwise(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    x, w = xs[0], xs[1]
    mult = attrs["depth_multiplier"]
    channels = x.shape[3]
    win = _windows(x, w.shape[1], w.shape[2], attrs)  # N,OH,OW,C,KH,KW
    wk = w[0].reshape(w.shape[1], w.shape[2], channels, mult)  # KH,KW,C,M
    out = np.einsum("nhwcij,ijcm->nhwcm", win, wk, optimize=True)
    out = out.reshape(out.shape[:3] + (channels * mult,))
    if len(xs) > 2:
        out = out + xs[2]
    return [apply_activation(out.astype(x.dtype), attrs["activation"])]


def _compute_fc(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    out = xs[0] @ xs[1].T
    if len(xs) > 2:
        out = out + xs[2]
    return [apply_activation(out.astype(xs[0].dtype), attrs["activation"])]


def _compute_batch_norm(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    x, gamma, beta, mean, var = xs
    inv = gamma / np.sqrt(var + np.float32(attrs["epsilon"]))
    return [((x - mean) * inv + beta).astype(x.dtype)]


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> ComputeFn:
    def compute(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
        out = np.asarray(fn(xs[0], xs[1])).astype(xs[0].dtype)
        return [apply_activation(out, attrs.get("activation", "none"))]

    return compute


def _compute_max_pool(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    kh, kw = attrs["pool_size"]
    win = _windows(xs[0], kh, kw, attrs, pad_value=-np.inf)
    return [apply_activation(win.max(axis=(4, 5)).astype(xs[0].dtype), attrs["activation"])]


def _compute_avg_pool(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    x = xs[0]
    kh, kw = attrs["pool_size"]
    sums = _windows(x, kh, kw, attrs).sum(axis=(4, 5), dtype=np.float64)
    ones = np.ones((1,) + x.shape[1:3] + (1,), dtype=np.float64)
    counts = _windows(ones, kh, kw, attrs).sum(axis=(4, 5))  # padded cells are not counted (TF semantics)
    return [apply_activation((sums / counts).astype(x.dtype), attrs["activation"])]


def _compute_mean(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    axes = tuple(_normalize_axes(attrs["axes"], xs[0].ndim))
    return [xs[0].mean(axis=axes, keepdims=attrs["keepdims"], dtype=np.float64).astype(xs[0].dtype)]


def _compute_reduce_max(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    axes = tuple(_normalize_axes(attrs["axes"], xs[0].ndim))
    return [xs[0].max(axis=axes, keepdims=attrs["keepdims"])]


def _compute_reduce_min(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    axes = tuple(_normalize_axes(attrs["axes"], xs[0].ndim))
    return [xs[0].min(axis=axes, keepdims=attrs["keepdims"])]


def _compute_pad(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    if xs[0].ndim == 0:
        return [xs[0].copy()]  # nothing to pad (np.pad refuses an empty pad list)
    return [np.pad(xs[0], np.asarray(attrs["paddings"], np.int64).reshape(-1, 2))]


def _compute_reshape(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    target = list(attrs["shape"])
    if xs[0].size == 0 and target and target[0] == -1 and -1 not in target[1:]:
        target[0] = xs[0].shape[0]  # an empty batch: numpy cannot solve for the -1
    return [xs[0].reshape(target)]


def _compute_softmax(x: np.ndarray, attrs: dict) -> np.ndarray:
    z = (x - x.max(axis=-1, keepdims=True)) * np.float32(attrs["beta"])
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _compute_gelu(x: np.ndarray, attrs: dict) -> np.ndarray:
    x64 = x.astype(np.float64)
    if attrs["approximate"]:
        return 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    from scipy.special import erf  # scipy ships with the test deps; only gelu needs it

    return 0.5 * x64 * (1 + erf(x64 / math.sqrt(2)))


def _infer_space_to_batch(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x = types[0]
    (bh, bw), pads = attrs["block"], attrs["paddings"]
    if x.rank != 4 or len(pads) != 2 or bh < 1 or bw < 1:
        raise IRError(f"space_to_batch wants an NHWC input, block [bh, bw] and 2 padding pairs, got {x}, {attrs}")
    n, h, w, c = x.shape
    sizes = []
    for d, (a, b), k in zip((h, w), pads, (bh, bw)):
        if d is not None and (d + a + b) % k:
            raise IRError(f"space_to_batch: padded size {d + a + b} is not a multiple of the block {k}")
        sizes.append(None if d is None else (d + a + b) // k)
    return [TensorType((None if n is None else n * bh * bw, *sizes, c), x.dtype)]


def _compute_space_to_batch(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    """TensorFlow's SpaceToBatchND on NHWC: pad, then move each (i, j) offset of the block to the batch axis."""
    (bh, bw), ((t, b), (l, r)) = attrs["block"], attrs["paddings"]
    x = np.pad(xs[0], [(0, 0), (t, b), (l, r), (0, 0)])
    n, h, w, c = x.shape
    y = x.reshape(n, h // bh, bh, w // bw, bw, c).transpose(2, 4, 0, 1, 3, 5)
    return [y.reshape(bh * bw * n, h // bh, w // bw, c)]


def _infer_batch_to_space(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x = types[0]
    (bh, bw), crops = attrs["block"], attrs["crops"]
    if x.rank != 4 or len(crops) != 2:
        raise IRError(f"batch_to_space wants an NHWC input and 2 crop pairs, got {x}, {attrs}")
    n, h, w, c = x.shape
    if n is not None and n % (bh * bw):
        raise IRError(f"batch_to_space: batch {n} is not a multiple of the block {bh}x{bw}")
    sizes = [None if d is None else d * k - a - b for d, k, (a, b) in zip((h, w), (bh, bw), crops)]
    return [TensorType((None if n is None else n // (bh * bw), *sizes, c), x.dtype)]


def _compute_batch_to_space(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    """TensorFlow's BatchToSpaceND on NHWC: the inverse interleaving, then the crops."""
    (bh, bw), ((t, b), (l, r)) = attrs["block"], attrs["crops"]
    x = xs[0]
    batch, h, w, c = x.shape
    n = batch // (bh * bw)
    y = x.reshape(bh, bw, n, h, w, c).transpose(2, 3, 0, 4, 1, 5).reshape(n, h * bh, w * bw, c)
    return [y[:, t:h * bh - b, l:w * bw - r, :]]


def _compute_slice(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    index = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(attrs["begin"], attrs["size"]))
    return [xs[0][index]]


def _compute_resize_nearest(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    x = xs[0]
    h, w = attrs["size"]
    rows = np.minimum((np.arange(h) * x.shape[1]) // h, x.shape[1] - 1)
    cols = np.minimum((np.arange(w) * x.shape[2]) // w, x.shape[2] - 1)
    return [x[:, rows][:, :, cols]]


def fake_quant_array(x: np.ndarray, attrs: dict) -> np.ndarray:
    """Quantize then dequantize exactly as the integer model will: weights symmetric from their own values
    (per channel along `axis`), activations from the calibrated [min, max]; uncalibrated is the identity."""
    from qcompiler.quant import math as qmath  # pure numpy; imports nothing above the IR

    if attrs["bits"] is not None:  # trained (QAT) ranges: TF's fake-quant grid, as trained
        if attrs["weights"]:
            lo, hi = qmath.symmetric_weight_range(x, attrs["axis"])
        elif attrs["min"] is None:
            return x
        else:
            lo, hi = attrs["min"], attrs["max"]
        return qmath.fake_quant(x, lo, hi, attrs["bits"], attrs["narrow_range"], attrs["axis"])
    if attrs["weights"]:
        params = qmath.weight_qparams(x, attrs["axis"])
        return qmath.dequantize(qmath.quantize_weights(x, params), params)
    if attrs["min"] is None:
        return x
    params = qmath.activation_qparams(attrs["min"], attrs["max"], attrs["dtype"])
    return qmath.dequantize(qmath.quantize(x, params, attrs["dtype"]), params)


def _compute_quantize(xs: Sequence[np.ndarray], attrs: dict, result: TensorType) -> np.ndarray:
    from qcompiler.quant import math as qmath  # the one quantize implementation (the reference QUANTIZE kernel)

    if np.issubdtype(xs[0].dtype, np.integer):
        raise IRError("quantize of an integer input (requantize) is evaluated by the integer interpreter")
    return qmath.quantize(xs[0], result.quant, result.dtype)


def dequantize_array(x: np.ndarray, t: TensorType, dtype: np.dtype = np.dtype(np.float32)) -> np.ndarray:
    """The reference DEQUANTIZE kernel (qcompiler/quant/math.py): f32(scale * (q - zero_point))."""
    from qcompiler.quant import math as qmath

    if t.quant is None:
        return x.astype(dtype)
    return qmath.dequantize(x, t.quant).astype(dtype)


def _elu(x: np.ndarray, attrs: dict) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _hard_swish(x: np.ndarray, attrs: dict) -> np.ndarray:
    return x * np.clip(x + 3, 0, 6) / 6


def _sigmoid(x: np.ndarray, attrs: dict) -> np.ndarray:
    return 1 / (1 + np.exp(-x.astype(np.float64)))


# ----------------------------------------------------------------------------------------------------
# float semantics: transpose, elementwise math, sum (keras.ops graphs, normalization layers)
# ----------------------------------------------------------------------------------------------------
def _infer_transpose(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x, perm = types[0], list(attrs["perm"])
    if sorted(perm) != list(range(x.rank)):
        raise IRError(f"transpose perm {perm} is not a permutation of the {x.rank} axes of {x}")
    return [TensorType(tuple(x.shape[p] for p in perm), x.dtype)]


def _infer_binary_plain(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    return [TensorType(broadcast_shapes(types[0].shape, types[1].shape), types[0].dtype)]


def _float64_unary(fn: Callable[[np.ndarray], np.ndarray]) -> ComputeFn:
    """Computed in float64; NaN for negative inputs of sqrt/rsqrt and inf for overflow, as TFLite's kernels."""
    def compute(x: np.ndarray, attrs: dict) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return fn(x.astype(np.float64))

    return _unary(compute)


def _compute_sum(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    """Floats: accumulated one element at a time in the input's precision, in row-major order, as TFLite's SUM."""
    x = xs[0]
    axes = tuple(_normalize_axes(attrs["axes"], x.ndim))
    if not np.issubdtype(x.dtype, np.floating) or not axes or x.size == 0:
        return [x.sum(axis=axes, keepdims=attrs["keepdims"], dtype=np.float64).astype(x.dtype)]
    kept = x.ndim - len(axes)
    rows = np.moveaxis(x, sorted(axes), range(kept, x.ndim))
    rows = rows.reshape(rows.shape[:kept] + (-1,))
    total = np.cumsum(rows, axis=-1, dtype=x.dtype)[..., -1]
    return [np.expand_dims(total, sorted(axes)) if attrs["keepdims"] else total]


def _compute_exp(x: np.ndarray, attrs: dict) -> np.ndarray:
    """float32: the C library's expf, bit for bit as TFLite's float EXP (qcompiler/ir/libm.py)."""
    from qcompiler.ir.libm import expf

    if x.dtype != np.float32:
        with np.errstate(over="ignore"):
            return np.exp(x)
    return expf(x)


def _float32_rsqrt(x: np.ndarray, attrs: dict) -> np.ndarray:
    """1.f / std::sqrt(f) in the input's precision (two roundings, as TFLite's float RSQRT)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.reciprocal(np.sqrt(x))


# ----------------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------------
_PADDING = enum("same", "valid", default="valid")
_ACTIVATION = enum(*FUSED_ACTIVATIONS, default="none")
_CONV_ATTRS = {"strides": pair(1), "padding": _PADDING, "dilation": pair(1), "activation": _ACTIVATION}
_POOL_ATTRS = {"pool_size": pair(), "strides": pair(), "padding": _PADDING, "activation": _ACTIVATION}
_AXES = {"axes": ints(), "keepdims": flag(False)}

# quantization rules
_OWN = QuantRule(OWN)
_SAME = QuantRule(SAME)
_SAME_1 = QuantRule(SAME, param_operands=1)  # one int32 parameter operand (shape, axes, paddings, size)
_UNIT = QuantRule(FIXED, fixed_i8=FIXED_I8_UNIT, fixed_i16=FIXED_I16_UNIT)
_TANH = QuantRule(FIXED, fixed_i8=FIXED_I8_TANH, fixed_i16=FIXED_I16_TANH)
_OWN_NO_I16 = QuantRule(OWN, int16=False)  # TFLite's kernel takes int8 but not int16
_OWN_NOT_BY_CONVERTER = QuantRule(OWN, int16=False, converter_quantizes=False)  # int8 kernel; the converter: float
_SAME_NO_I16 = QuantRule(SAME, int16=False)
# A comparison: int8 operands at their own parameters (constants quantized on their own range) and a bool result,
# which has no range; OWN, because nothing flows through it. int16: TFLite compares raw codes, so 16x8 keeps it float.
_COMPARE = QuantRule(OWN, int16=False)
_FLOAT = QuantRule(FLOAT_ONLY)
_NOT_ACTIVATION = QuantRule(NOT_ACTIVATION)


def _def(name: str, lo: int, hi: Optional[int], attrs: dict[str, Attr], infer: InferFn, compute: ComputeFn,
         quant: QuantRule, tflite: Optional[str], doc: str = "", **facts: Any) -> OpDef:
    return OpDef(name, lo, hi, attrs, infer, compute, quant, doc, tflite=tflite, **facts)


OPS: dict[str, OpDef] = {
    d.name: d
    for d in [
        _def("const", 0, 0, {"value": array()}, _infer_const, lambda xs, a: [np.asarray(a["value"])],
             _NOT_ACTIVATION, None, "a constant tensor", constant_foldable=False),
        _def("conv2d", 2, 3, dict(_CONV_ATTRS), _infer_conv2d, _compute_conv2d, _OWN, "CONV_2D",
             "(x, w[o,kh,kw,i], bias?)", weights=Weights(out_axis=0, int4=True), absorbs_zero_pad=True),
        _def("depthwise_conv2d", 2, 3, {**_CONV_ATTRS, "depth_multiplier": integer(1, minimum=1)}, _infer_depthwise,
             _compute_depthwise, _OWN, "DEPTHWISE_CONV_2D", "(x, w[1,kh,kw,c*m], bias?)",
             weights=Weights(out_axis=3), absorbs_zero_pad=True),
        _def("fully_connected", 2, 3, {"activation": _ACTIVATION}, _infer_fc, _compute_fc, _OWN, "FULLY_CONNECTED",
             "(x, w[o,i], bias?) on the last axis", weights=Weights(out_axis=0, int4=True)),
        _def("batch_norm", 5, 5, {"epsilon": real()}, _infer_batch_norm, _compute_batch_norm, _FLOAT, None,
             "(x, gamma, beta, mean, var) on the last axis; fold-batchnorm removes it"),
        _def("add", 2, 2, {"activation": _ACTIVATION}, _infer_binary, _binary(np.add), _OWN, "ADD",
             inplace_operands=(0, 1)),
        _def("sub", 2, 2, {"activation": _ACTIVATION}, _infer_binary, _binary(np.subtract), _OWN, "SUB",
             inplace_operands=(0, 1)),
        _def("mul", 2, 2, {"activation": _ACTIVATION}, _infer_binary, _binary(np.multiply), _OWN, "MUL",
             inplace_operands=(0, 1)),
        _def("maximum", 2, 2, {}, _infer_binary, _binary(np.maximum), _SAME, "MAXIMUM"),
        _def("minimum", 2, 2, {}, _infer_binary, _binary(np.minimum), _SAME, "MINIMUM"),
        # int8 GREATER compares its operands at their own parameters (a bool result, no range); constant operands
        # get their own (§4.3). SELECT_V2 is same-scale over if_true/if_false and its result (the bool condition
        # is no activation): its own calibrated range, pushed back to its operands. Both float in 16x8.
        _def("greater", 2, 2, {}, _infer_compare, lambda xs, a: [np.greater(xs[0], xs[1])], _COMPARE, "GREATER"),
        _def("select", 3, 3, {}, _infer_select, lambda xs, a: [np.where(xs[0], xs[1], xs[2]).astype(xs[1].dtype)],
             _SAME_NO_I16, "SELECT_V2", "(condition, if_true, if_false)"),
        _def("relu", 1, 1, {}, _same, _unary(lambda x, a: np.maximum(x, 0)), _OWN, "RELU"),
        _def("relu6", 1, 1, {}, _same, _unary(lambda x, a: np.clip(x, 0, 6)), _OWN, "RELU6"),
        _def("relu_n1_to_1", 1, 1, {}, _same, _unary(lambda x, a: np.clip(x, -1, 1)), _OWN_NO_I16, "RELU_N1_TO_1"),
        _def("leaky_relu", 1, 1, {"alpha": real()}, _same,
             _unary(lambda x, a: np.where(x >= 0, x, x * np.float32(a["alpha"]))), _OWN, "LEAKY_RELU"),
        _def("sigmoid", 1, 1, {}, _same, _unary(_sigmoid), _UNIT, "LOGISTIC"),
        _def("tanh", 1, 1, {}, _same, _unary(lambda x, a: np.tanh(x)), _TANH, "TANH"),
        _def("softmax", 1, 1, {"beta": real(1.0)}, _same, _unary(_compute_softmax), _UNIT, "SOFTMAX",
             "on the last axis", inplace_operands=(0,)),
        _def("elu", 1, 1, {}, _same, _unary(_elu), _OWN_NOT_BY_CONVERTER, "ELU"),
        _def("hard_swish", 1, 1, {}, _same, _unary(_hard_swish), _OWN_NO_I16, "HARD_SWISH"),
        _def("gelu", 1, 1, {"approximate": flag(False)}, _same, _unary(_compute_gelu), _OWN, "GELU"),
        _def("max_pool2d", 1, 1, dict(_POOL_ATTRS), _infer_pool, _compute_max_pool, _SAME, "MAX_POOL_2D"),
        _def("avg_pool2d", 1, 1, dict(_POOL_ATTRS), _infer_pool, _compute_avg_pool, _SAME, "AVERAGE_POOL_2D"),
        _def("mean", 1, 1, dict(_AXES), _infer_reduce, _compute_mean, _OWN, "MEAN"),
        _def("reduce_max", 1, 1, dict(_AXES), _infer_reduce, _compute_reduce_max, _SAME_1, "REDUCE_MAX"),
        _def("reduce_min", 1, 1, dict(_AXES), _infer_reduce, _compute_reduce_min, _SAME_1, "REDUCE_MIN"),
        _def("flatten", 1, 1, {}, _infer_flatten, lambda xs, a: [xs[0].reshape(xs[0].shape[0], math.prod(xs[0].shape[1:]))], _SAME_1,
             "RESHAPE", "keep the batch axis, flatten the rest", shares_input_buffer=True),
        _def("reshape", 1, 1, {"shape": ints(minimum=-1), "runtime_batch": flag(False)}, _infer_reshape,
             _compute_reshape, _SAME_1, "RESHAPE",
             "target shape; a leading -1 is the batch. runtime_batch: a Keras Flatten/Reshape layer, whose target "
             "TensorFlow builds from the input's batch at run time (SHAPE, STRIDED_SLICE, PACK before the RESHAPE "
             "in the converter's model, when the batch is unknown)", shares_input_buffer=True),
        _def("concat", 1, None, {"axis": integer(), "activation": _ACTIVATION}, _infer_concat,
             lambda xs, a: [apply_activation(np.concatenate(xs, axis=a["axis"]), a["activation"])], _SAME,
             "CONCATENATION", tflite_fuses_activation=False),
        _def("pad", 1, 1, {"paddings": int_pairs(minimum=0)}, _infer_pad,
             _compute_pad, _SAME_1, "PAD",
             "zero padding, [[before, after], ...] per axis"),
        _def("slice", 1, 1, {"begin": ints(minimum=0), "size": ints(minimum=-1)}, _infer_slice, _compute_slice,
             QuantRule(SAME, param_operands=2), "SLICE", "size -1 runs to the end"),
        _def("space_to_batch", 1, 1, {"block": pair(), "paddings": int_pairs(minimum=0)}, _infer_space_to_batch,
             _compute_space_to_batch, QuantRule(SAME, param_operands=2), "SPACE_TO_BATCH_ND",
             "NHWC SpaceToBatchND: zero padding [[top, bottom], [left, right]], block [bh, bw]"),
        _def("batch_to_space", 1, 1, {"block": pair(), "crops": int_pairs(minimum=0)}, _infer_batch_to_space,
             _compute_batch_to_space, QuantRule(SAME, param_operands=2), "BATCH_TO_SPACE_ND",
             "NHWC BatchToSpaceND: block [bh, bw], crops [[top, bottom], [left, right]]"),
        _def("resize_nearest", 1, 1, {"size": pair()}, _infer_resize, _compute_resize_nearest, _SAME_1,
             "RESIZE_NEAREST_NEIGHBOR", "nearest neighbour, align_corners=False, half_pixel_centers=False"),
        _def("identity", 1, 1, {}, _same, lambda xs, a: [xs[0]], _FLOAT, None,
             "inference-time no-op (dropout, noise); canonicalize removes it"),
        _def("fake_quant", 1, 1, {"dtype": enum("i8", "u8", "i16", default="i8"), "min": real(None, optional=True),
                                  "max": real(None, optional=True), "weights": flag(False),
                                  "axis": integer(None, optional=True), "bits": integer(None, minimum=2, optional=True),
                                  "narrow_range": flag(False)},
             _infer_fake_quant, lambda xs, a: [fake_quant_array(xs[0], a)], _NOT_ACTIVATION, None,
             "quantize-dequantize; weights=true: symmetric from the values (per channel along axis); "
             "otherwise from [min, max], none until calibrated; bits set: a trained (QAT) range on TF's "
             "fake-quant grid of 2^bits levels", constant_foldable=False),
        _def("quantize", 1, 1, {}, _infer_quantize, lambda xs, a: [xs[0]], _NOT_ACTIVATION, "QUANTIZE",
             "float → integer (or integer → integer requantize); params in the result type",
             constant_foldable=False, converts_dtype=True),
        _def("dequantize", 1, 1, {"dtype": enum(*sorted(DTYPES), default="f32")}, _infer_dequantize,
             lambda xs, a: [xs[0]], _NOT_ACTIVATION, "DEQUANTIZE", "integer → float",
             constant_foldable=False, converts_dtype=True),
        _def("cast", 1, 1, {"dtype": enum(*sorted(DTYPES))}, _infer_cast, lambda xs, a: [xs[0]], _FLOAT, "CAST",
             converts_dtype=True),
        _def("transpose", 1, 1, {"perm": ints(minimum=0)}, _infer_transpose,
             lambda xs, a: [np.transpose(xs[0], a["perm"])], _SAME_1, "TRANSPOSE",
             "perm[i] is the input axis that becomes axis i"),
        _def("div", 2, 2, {"activation": _ACTIVATION}, _infer_binary, _binary(np.divide), _FLOAT, "DIV",
             "TFLite divides int8 tensors only as uint8: a float island in integer models"),
        _def("squared_difference", 2, 2, {}, _infer_binary_plain,
             _binary(lambda a, b: np.square(np.subtract(a, b))), _OWN_NO_I16, "SQUARED_DIFFERENCE"),
        _def("rsqrt", 1, 1, {}, _same, _unary(_float32_rsqrt), _OWN_NO_I16, "RSQRT"),
        _def("sqrt", 1, 1, {}, _same, _float64_unary(np.sqrt), _OWN_NO_I16, "SQRT"),
        _def("abs", 1, 1, {}, _same, _unary(lambda x, a: np.abs(x)), _OWN, "ABS"),
        # keras.ops.negative / square: TFLiteConverter writes NEG and SQUARE, float-only in integer models (a
        # DEQUANTIZE/op/QUANTIZE island); qcompiler writes them the same way, so its int8 values are the converter's
        _def("neg", 1, 1, {}, _same, _unary(lambda x, a: -x), _FLOAT, "NEG"),
        _def("square", 1, 1, {}, _same, _unary(lambda x, a: x * x), _FLOAT, "SQUARE"),
        # TF's Pow (the x**3 of an approximate GELU that the converter did not match): float-only POW in int8
        _def("pow", 2, 2, {}, _infer_binary_plain, _binary(np.power), _FLOAT, "POW"),
        _def("exp", 1, 1, {}, _same, _unary(_compute_exp), _OWN, "EXP"),
        _def("sum", 1, 1, dict(_AXES), _infer_reduce, _compute_sum, _OWN_NO_I16, "SUM"),
    ]
}


def op_def(op: str) -> OpDef:
    if op not in OPS:
        raise IRError(f"unknown op '{op}'; known ops: {', '.join(sorted(OPS))}")
    return OPS[op]


def complete_attrs(node: Node) -> None:
    """Fill defaults and reject unknown, missing or ill-typed attributes."""
    definition = op_def(node.op)
    unknown = set(node.attrs) - set(definition.attrs)
    if unknown:
        raise IRError(f"{node.op}: unknown attribute(s) {sorted(unknown)}; known: {sorted(definition.attrs)}")
    for key, default in definition.attrs.items():
        if key not in node.attrs:
            if default is REQUIRED:
                raise IRError(f"{node.op}: attribute '{key}' is required")
            node.attrs[key] = list(default) if isinstance(default, list) else default
    check_attrs(node)


def check_attrs(node: Node) -> None:
    """Check every attribute the node has against its declaration in the op table (qcompiler/ir/attrs.py)."""
    signature = op_def(node.op).signature
    for key, value in node.attrs.items():
        if key in signature:
            signature[key].check(key, value)


def check_arity(node: Node) -> None:
    definition = op_def(node.op)
    n = len(node.operands)
    if n < definition.min_operands or (definition.max_operands is not None and n > definition.max_operands):
        hi = "any" if definition.max_operands is None else definition.max_operands
        raise IRError(f"{node.op} takes {definition.min_operands}..{hi} operands, got {n}")


def infer_types(node: Node) -> list[TensorType]:
    """Complete the node's attributes and infer its result types from its operands."""
    try:
        complete_attrs(node)
        check_arity(node)
        return infer_checked(node.op, [v.type for v in node.operands], node.attrs)
    except IRError as err:
        layer = f" (Keras layer '{node.layer}')" if node.layer else ""
        raise IRError(f"{node.op}{layer}: {err}") from None


def infer_checked(op: str, types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    """The op's inference, after the checks every op shares: weight and bias operands have fully known shapes."""
    weights = op_def(op).weights
    if weights is not None:
        for index, role in ((weights.operand, "weights"), (weights.bias, "bias")):
            if index is not None and index < len(types) and not types[index].is_static:
                raise IRError(f"{role} (operand {index}) must have a fully known shape, got {types[index]}")
    return op_def(op).infer(types, attrs)


def compute(node: Node, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Float semantics of one node."""
    if node.op == "quantize":
        return [_compute_quantize(inputs, node.attrs, node.result.type)]
    if node.op == "dequantize":
        return [dequantize_array(inputs[0], node.operands[0].type, node.result.type.np_dtype)]
    if node.op == "cast":
        return [inputs[0].astype(node.result.type.np_dtype)]
    return op_def(node.op).compute(inputs, node.attrs)
