"""The op table: for each op its operands, attributes (with defaults), result-type inference and float semantics.

Layout conventions (the same as TFLite, so the backend writes tensors as they are):
  activations NHWC; conv2d weights [out, kh, kw, in]; depthwise_conv2d weights [1, kh, kw, in*multiplier];
  fully_connected weights [out, in] applied to the last axis of any-rank input.
Fused activations (`activation` attribute): none, relu, relu6, relu_n1_to_1, tanh.

To add an op: write its inference and compute functions, add an `OpDef` to `OPS`; the printer, parser,
verifier and interpreter pick it up. Then teach the frontend to emit it and the backend to write it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qcompiler.ir.graph import IRError, Node
from qcompiler.ir.types import TensorType

FUSED_ACTIVATIONS = ("none", "relu", "relu6", "relu_n1_to_1", "tanh")
Shape = tuple[Optional[int], ...]
InferFn = Callable[[Sequence[TensorType], dict], list[TensorType]]
ComputeFn = Callable[[Sequence[np.ndarray], dict], list[np.ndarray]]


@dataclass(frozen=True)
class OpDef:
    name: str
    min_operands: int
    max_operands: Optional[int]  # None: any number
    attrs: dict[str, Any]  # attribute name -> default (REQUIRED when it must be given)
    infer: InferFn
    compute: ComputeFn
    doc: str = ""
    fusable_activation: bool = field(default=False)


REQUIRED = object()


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
    value = np.asarray(attrs["value"])
    from qcompiler.ir.types import dtype_name

    return [TensorType(value.shape, dtype_name(value.dtype))]


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
    if x.shape[-1] is not None and x.shape[-1] != w.shape[1]:
        raise IRError(f"fully_connected weights take {w.shape[1]} inputs but the last input axis is {x.shape[-1]}")
    _check_bias(types, w.shape[0])
    _check_activation(attrs)
    return [TensorType(x.shape[:-1] + (w.shape[0],), x.dtype)]


def _check_bias(types: Sequence[TensorType], channels: Optional[int]) -> None:
    if len(types) > 2 and (types[2].rank != 1 or types[2].shape[0] != channels):
        raise IRError(f"bias must be [{channels}], got {types[2]}")


def _infer_batch_norm(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
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
    axes = _normalize_axes(attrs["axes"], x.rank)
    if attrs["keepdims"]:
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return [TensorType(shape, x.dtype)]


def _infer_flatten(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x = types[0]
    rest = x.shape[1:]
    flat = int(np.prod(rest)) if all(d is not None for d in rest) else None
    return [TensorType((x.shape[0], flat), x.dtype)]


def _infer_reshape(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x = types[0]
    target = list(attrs["shape"])
    if sum(1 for d in target if d == -1) > 1:
        raise IRError(f"reshape target {target} has more than one -1")
    known_in = x.num_elements()
    if -1 in target:
        rest = int(np.prod([d for d in target if d != -1]))
        if known_in is not None:
            if rest == 0 or known_in % rest:
                raise IRError(f"cannot reshape {x} to {target}")
            target[target.index(-1)] = known_in // rest
        elif x.shape[0] is None and target[0] == -1 and x.rank >= 1:
            # the batch stays unknown; check the rest is consistent
            inner = x.shape[1:]
            if all(d is not None for d in inner) and int(np.prod(inner)) != rest:
                raise IRError(f"cannot reshape {x} to {attrs['shape']}: {int(np.prod(inner))} elements per batch, not {rest}")
            target[0] = None
        else:
            target[target.index(-1)] = None
    elif known_in is not None and int(np.prod(target)) != known_in:
        raise IRError(f"cannot reshape {x} ({known_in} elements) to {target}")
    return [TensorType(tuple(target), x.dtype)]


def _infer_concat(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    _check_activation(attrs)
    rank = types[0].rank
    axis = attrs["axis"] % rank
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
        if s == -1:
            shape.append(None if d is None else d - b)
        else:
            if d is not None and b + s > d:
                raise IRError(f"slice [{b}:{b + s}] is outside a dimension of {d}")
            shape.append(s)
    return [TensorType(tuple(shape), x.dtype)]


def _infer_resize(types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
    x = types[0]
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


def _compute_reshape(xs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    target = list(attrs["shape"])
    if target and target[0] == -1 and -1 not in target[1:]:
        target[0] = xs[0].shape[0]  # the batch dimension follows the input's
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

    if attrs["weights"]:
        params = qmath.weight_qparams(x, attrs["axis"])
        return qmath.dequantize(qmath.quantize_weights(x, params), params)
    if attrs["min"] is None:
        return x
    params = qmath.activation_qparams(attrs["min"], attrs["max"], attrs["dtype"])
    return qmath.dequantize(qmath.quantize(x, params, attrs["dtype"]), params)


def _compute_quantize(xs: Sequence[np.ndarray], attrs: dict, result: TensorType) -> np.ndarray:
    q = result.quant
    x = xs[0]
    if np.issubdtype(x.dtype, np.integer):
        raise IRError("quantize of an integer input (requantize) is evaluated by the integer interpreter")
    info = np.iinfo(result.np_dtype)
    # As TFLite's QUANTIZE (reference AffineQuantize): x / scale in float32, rounded half away from zero
    # (TfLiteRound), then the zero point added. np.round would round ties to even.
    scaled = (x.astype(np.float32) / q.scale_array(x.ndim)).astype(np.float64)
    whole = np.trunc(scaled)
    rounded = whole + np.where(np.abs(scaled - whole) >= 0.5, np.sign(scaled), 0.0)
    return np.clip(rounded + q.zero_point_array(x.ndim), info.min, info.max).astype(result.np_dtype)


def dequantize_array(x: np.ndarray, t: TensorType, dtype: np.dtype = np.dtype(np.float32)) -> np.ndarray:
    q = t.quant
    if q is None:
        return x.astype(dtype)
    return ((x.astype(np.int64) - q.zero_point_array(x.ndim)) * q.scale_array(x.ndim)).astype(dtype)


def _elu(x: np.ndarray, attrs: dict) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _hard_swish(x: np.ndarray, attrs: dict) -> np.ndarray:
    return x * np.clip(x + 3, 0, 6) / 6


def _sigmoid(x: np.ndarray, attrs: dict) -> np.ndarray:
    return 1 / (1 + np.exp(-x.astype(np.float64)))


# ----------------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------------
_CONV_ATTRS = {"strides": [1, 1], "padding": "valid", "dilation": [1, 1], "activation": "none"}
_POOL_ATTRS = {"pool_size": REQUIRED, "strides": REQUIRED, "padding": "valid", "activation": "none"}


def _def(name: str, lo: int, hi: Optional[int], attrs: dict, infer: InferFn, compute: ComputeFn, doc: str = "") -> OpDef:
    return OpDef(name, lo, hi, attrs, infer, compute, doc, fusable_activation="activation" in attrs)


OPS: dict[str, OpDef] = {
    d.name: d
    for d in [
        _def("const", 0, 0, {"value": REQUIRED}, _infer_const, lambda xs, a: [np.asarray(a["value"])],
             "a constant tensor"),
        _def("conv2d", 2, 3, dict(_CONV_ATTRS), _infer_conv2d, _compute_conv2d, "(x, w[o,kh,kw,i], bias?)"),
        _def("depthwise_conv2d", 2, 3, {**_CONV_ATTRS, "depth_multiplier": 1}, _infer_depthwise,
             _compute_depthwise, "(x, w[1,kh,kw,c*m], bias?)"),
        _def("fully_connected", 2, 3, {"activation": "none"}, _infer_fc, _compute_fc,
             "(x, w[o,i], bias?) on the last axis"),
        _def("batch_norm", 5, 5, {"epsilon": REQUIRED}, _infer_batch_norm, _compute_batch_norm,
             "(x, gamma, beta, mean, var) on the last axis"),
        _def("add", 2, 2, {"activation": "none"}, _infer_binary, _binary(np.add)),
        _def("sub", 2, 2, {"activation": "none"}, _infer_binary, _binary(np.subtract)),
        _def("mul", 2, 2, {"activation": "none"}, _infer_binary, _binary(np.multiply)),
        _def("maximum", 2, 2, {}, _infer_binary, _binary(np.maximum)),
        _def("minimum", 2, 2, {}, _infer_binary, _binary(np.minimum)),
        _def("greater", 2, 2, {}, _infer_compare, lambda xs, a: [np.greater(xs[0], xs[1])]),
        _def("select", 3, 3, {}, _infer_select, lambda xs, a: [np.where(xs[0], xs[1], xs[2]).astype(xs[1].dtype)],
             "(condition, if_true, if_false)"),
        _def("relu", 1, 1, {}, _same, _unary(lambda x, a: np.maximum(x, 0))),
        _def("relu6", 1, 1, {}, _same, _unary(lambda x, a: np.clip(x, 0, 6))),
        _def("relu_n1_to_1", 1, 1, {}, _same, _unary(lambda x, a: np.clip(x, -1, 1))),
        _def("leaky_relu", 1, 1, {"alpha": REQUIRED}, _same,
             _unary(lambda x, a: np.where(x >= 0, x, x * np.float32(a["alpha"])))),
        _def("sigmoid", 1, 1, {}, _same, _unary(_sigmoid)),
        _def("tanh", 1, 1, {}, _same, _unary(lambda x, a: np.tanh(x))),
        _def("softmax", 1, 1, {"beta": 1.0}, _same, _unary(_compute_softmax), "on the last axis"),
        _def("elu", 1, 1, {}, _same, _unary(_elu)),
        _def("hard_swish", 1, 1, {}, _same, _unary(_hard_swish)),
        _def("gelu", 1, 1, {"approximate": False}, _same, _unary(_compute_gelu)),
        _def("max_pool2d", 1, 1, dict(_POOL_ATTRS), _infer_pool, _compute_max_pool),
        _def("avg_pool2d", 1, 1, dict(_POOL_ATTRS), _infer_pool, _compute_avg_pool),
        _def("mean", 1, 1, {"axes": REQUIRED, "keepdims": False}, _infer_reduce, _compute_mean),
        _def("reduce_max", 1, 1, {"axes": REQUIRED, "keepdims": False}, _infer_reduce, _compute_reduce_max),
        _def("flatten", 1, 1, {}, _infer_flatten, lambda xs, a: [xs[0].reshape(xs[0].shape[0], -1)],
             "keep the batch axis, flatten the rest"),
        _def("reshape", 1, 1, {"shape": REQUIRED}, _infer_reshape, _compute_reshape,
             "target shape; a leading -1 is the batch"),
        _def("concat", 1, None, {"axis": REQUIRED, "activation": "none"}, _infer_concat,
             lambda xs, a: [apply_activation(np.concatenate(xs, axis=a["axis"]), a["activation"])]),
        _def("pad", 1, 1, {"paddings": REQUIRED}, _infer_pad, lambda xs, a: [np.pad(xs[0], a["paddings"])],
             "zero padding, [[before, after], ...] per axis"),
        _def("slice", 1, 1, {"begin": REQUIRED, "size": REQUIRED}, _infer_slice, _compute_slice,
             "size -1 runs to the end"),
        _def("space_to_batch", 1, 1, {"block": REQUIRED, "paddings": REQUIRED}, _infer_space_to_batch,
             _compute_space_to_batch, "NHWC SpaceToBatchND: zero padding [[top, bottom], [left, right]], block [bh, bw]"),
        _def("batch_to_space", 1, 1, {"block": REQUIRED, "crops": REQUIRED}, _infer_batch_to_space,
             _compute_batch_to_space, "NHWC BatchToSpaceND: block [bh, bw], crops [[top, bottom], [left, right]]"),
        _def("resize_nearest", 1, 1, {"size": REQUIRED}, _infer_resize, _compute_resize_nearest,
             "nearest neighbour, align_corners=False, half_pixel_centers=False"),
        _def("identity", 1, 1, {}, _same, lambda xs, a: [xs[0]], "inference-time no-op (dropout, noise)"),
        _def("fake_quant", 1, 1, {"dtype": "i8", "min": None, "max": None, "weights": False, "axis": None},
             _infer_fake_quant, lambda xs, a: [fake_quant_array(xs[0], a)],
             "quantize-dequantize; weights=true: symmetric from the values (per channel along axis); "
             "otherwise from [min, max], none until calibrated"),
        _def("quantize", 1, 1, {}, _infer_quantize, lambda xs, a: [xs[0]],
             "float → integer (or integer → integer requantize); params in the result type"),
        _def("dequantize", 1, 1, {"dtype": "f32"}, _infer_dequantize, lambda xs, a: [xs[0]], "integer → float"),
        _def("cast", 1, 1, {"dtype": REQUIRED}, _infer_cast, lambda xs, a: [xs[0]]),
    ]
}


def op_def(op: str) -> OpDef:
    if op not in OPS:
        raise IRError(f"unknown op '{op}'; known ops: {', '.join(sorted(OPS))}")
    return OPS[op]


def complete_attrs(node: Node) -> None:
    """Fill defaults and reject unknown or missing attributes."""
    definition = op_def(node.op)
    unknown = set(node.attrs) - set(definition.attrs)
    if unknown:
        raise IRError(f"{node.op}: unknown attribute(s) {sorted(unknown)}; known: {sorted(definition.attrs)}")
    for key, default in definition.attrs.items():
        if key not in node.attrs:
            if default is REQUIRED:
                raise IRError(f"{node.op}: attribute '{key}' is required")
            node.attrs[key] = list(default) if isinstance(default, list) else default


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
        return op_def(node.op).infer([v.type for v in node.operands], node.attrs)
    except IRError as err:
        layer = f" (Keras layer '{node.layer}')" if node.layer else ""
        raise IRError(f"{node.op}{layer}: {err}") from None


def compute(node: Node, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Float semantics of one node."""
    if node.op == "quantize":
        return [_compute_quantize(inputs, node.attrs, node.result.type)]
    if node.op == "dequantize":
        return [dequantize_array(inputs[0], node.operands[0].type, node.result.type.np_dtype)]
    if node.op == "cast":
        return [inputs[0].astype(node.result.type.np_dtype)]
    return op_def(node.op).compute(inputs, node.attrs)
