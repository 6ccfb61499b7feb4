"""Quantization arithmetic shared by passes, observers and the backend (pure numpy).

Everything here reproduces, bit for bit, what TFLiteConverter (TF 2.21, MLIR quantizer, `legacy_float_scale=true`)
and the TFLite reference kernels (ai-edge-litert 2.3, BUILTIN_REF) compute. docs/quantization-notes.md gives the
formulas, their source files and the experiments that confirmed them; each function names its C++ counterpart.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from qcompiler.ir.types import QParams

ArrayLike = Union[float, Sequence[float], np.ndarray]

# Storage ranges of the quantized element types.
QRANGES: dict[str, tuple[int, int]] = {
    "i8": (-128, 127),
    "i4": (-8, 7),
    "u8": (0, 255),
    "i16": (-32768, 32767),
    "i32": (-(2**31), 2**31 - 1),
    "i64": (-(2**63), 2**63 - 1),
}
FLT_MIN = float(np.finfo(np.float32).tiny)  # what the TFLite calibration logger starts `max` from
NEAR_ZERO_TOLERANCE = 1.0e-6  # kNearZeroTolerance in the MLIR quantizer
BIAS_MAX_I32 = (2**31 - 1) // 2  # kBiasMax in tfl_quantization_driver.cc


def qrange(dtype: str, narrow_range: bool = False) -> tuple[int, int]:
    """(qmin, qmax) of an IR integer dtype; narrow range drops the lowest value (int8 weights: [-127, 127])."""
    if dtype not in QRANGES:
        raise ValueError(f"no quantized range for dtype '{dtype}'; expected one of {sorted(QRANGES)}")
    qmin, qmax = QRANGES[dtype]
    return (qmin + 1 if narrow_range else qmin), qmax


def round_half_away(x: np.ndarray) -> np.ndarray:
    """std::round / TfLiteRound: halves round away from zero. Keeps the float dtype of `x`.

    Exact for every float (floor(|x| + 0.5) is not: the addition itself rounds once |x| >= 2^23 in float32)."""
    x = np.asarray(x)
    whole = np.trunc(x)
    fraction = x - whole  # exact
    return (whole + np.sign(x) * (np.abs(fraction) >= 0.5)).astype(x.dtype)


# ----------------------------------------------------------------------------------------------------
# FakeQuant nudging (tf.quantization.fake_quant_with_min_max_vars), used by the fake_quant IR op
# ----------------------------------------------------------------------------------------------------
def nudge_range(qmin: int, qmax: int, rmin: np.ndarray, rmax: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TensorFlow's FakeQuant nudging: shift [rmin, rmax] so that real 0 lands exactly on an integer.

    Returns (nudged_min, nudged_max, scale) in float32, element-wise over per-channel ranges.
    """
    rmin = np.asarray(rmin, np.float32)
    rmax = np.asarray(rmax, np.float32)
    scale = ((rmax - rmin) / np.float32(qmax - qmin)).astype(np.float32)
    safe_scale = np.where(scale > 0, scale, np.float32(1))
    zero_point_from_min = np.float32(qmin) - rmin / safe_scale
    nudged_zero_point = np.where(
        zero_point_from_min < qmin, qmin,
        np.where(zero_point_from_min > qmax, qmax, round_half_away(zero_point_from_min)))
    nudged_min = ((np.float32(qmin) - nudged_zero_point) * scale).astype(np.float32)
    nudged_max = ((np.float32(qmax) - nudged_zero_point) * scale).astype(np.float32)
    return nudged_min, nudged_max, scale


class FakeQuantGrid(NamedTuple):
    """The grid of tf.quantization.fake_quant_with_min_max_vars for a range: real = scale * (level - zero_point),
    levels in [qmin, qmax] (unsigned: [0, 2^bits - 1], [1, 2^bits - 1] with narrow range)."""

    scale: np.ndarray  # float32, one per channel (or a scalar)
    zero_point: np.ndarray  # float32 holding integers in [qmin, qmax]
    nudged_min: np.ndarray
    nudged_max: np.ndarray
    qmin: int
    qmax: int


def fake_quant_grid(rmin: ArrayLike, rmax: ArrayLike, bits: int = 8, narrow_range: bool = False) -> FakeQuantGrid:
    """TensorFlow's FakeQuant nudging for `bits` levels (2..16): the range is shifted so that 0 is a level."""
    if not 2 <= bits <= 16:
        raise ValueError(f"fake quantization takes 2 to 16 bits, not {bits}")
    qmin, qmax = (1 if narrow_range else 0), (1 << bits) - 1
    rmin, rmax = np.asarray(rmin, np.float32), np.asarray(rmax, np.float32)
    nudged_min, nudged_max, scale = nudge_range(qmin, qmax, rmin, rmax)
    zero_point = np.float32(qmin) - np.round(nudged_min / np.where(scale > 0, scale, np.float32(1)))
    return FakeQuantGrid(scale, zero_point.astype(np.float32), nudged_min, nudged_max, qmin, qmax)


def fake_quant_levels(x: np.ndarray, grid: FakeQuantGrid, axis: Optional[int] = None) -> np.ndarray:
    """The signed level of each value, level - zero_point (int64), as TF's kernel finds it: clamp to the nudged
    range, then floor((x - nudged_min) * (1 / scale) + 0.5) in float32. `axis`: the channel axis of per-channel
    grids (TF's _per_channel op takes the last one)."""
    x = np.asarray(x, np.float32)
    shape = [1] * x.ndim
    if axis is not None:
        shape[axis] = -1
    scale, zero_point, nmin, nmax = (np.reshape(a, shape if np.ndim(a) else ())
                                     for a in (grid.scale, grid.zero_point, grid.nudged_min, grid.nudged_max))
    safe_scale = np.where(scale > 0, scale, np.float32(1))
    inv = (np.float32(1) / safe_scale).astype(np.float32)
    clamped = np.clip(x, nmin, nmax)
    steps = np.floor(((clamped - nmin).astype(np.float32) * inv).astype(np.float32) + np.float32(0.5))
    return (steps + np.float32(grid.qmin) - zero_point).astype(np.int64)


def fake_quant(x: np.ndarray, rmin: ArrayLike, rmax: ArrayLike, bits: int = 8, narrow_range: bool = False,
               axis: Optional[int] = None) -> np.ndarray:
    """tf.quantization.fake_quant_with_min_max_vars(_per_channel) in float32: scale * (level - zero_point).

    TF's kernel gives the same float32 values on all but about 1 in a million elements (tests/test_qat_math.py):
    its vectorised float32 steps occasionally round the other way at an exact .5."""
    x = np.asarray(x, np.float32)
    grid = fake_quant_grid(np.atleast_1d(rmin) if axis is not None else rmin,
                           np.atleast_1d(rmax) if axis is not None else rmax, bits, narrow_range)
    levels = fake_quant_levels(x, grid, axis).astype(np.float32)
    shape = [1] * x.ndim
    if axis is not None:
        shape[axis] = -1
    scale = np.reshape(grid.scale, shape if np.ndim(grid.scale) else ())
    out = (levels * scale).astype(np.float32)
    return np.where(scale > 0, out, np.clip(x, np.reshape(grid.nudged_min, np.shape(scale)),
                                           np.reshape(grid.nudged_max, np.shape(scale)))).astype(np.float32)


def fake_quant_qparams(rmin: ArrayLike, rmax: ArrayLike, bits: int = 8, narrow_range: bool = False,
                       dtype: str = "i8", axis: Optional[int] = None) -> QParams:
    """Plain lowering of a trained fake-quant range: the grid's scale, and its zero point moved into the signed
    storage type (level u stored as u - 2^(bits-1)), so an 8-bit grid is int8 with zero point zp - 128 and a
    b-bit grid uses 2^b of int8's levels. No converter rules (no FLT_MIN, no 1e-6 widening): the range as trained."""
    grid = fake_quant_grid(rmin, rmax, bits, narrow_range)
    storage_min, storage_max = qrange(dtype)
    offset = 1 << (bits - 1)
    if -offset < storage_min or offset - 1 > storage_max:
        raise ValueError(f"a {bits}-bit grid does not fit {dtype} storage")
    scales = np.atleast_1d(grid.scale)
    if np.any(scales <= 0):
        raise ValueError(f"fake-quant range [{rmin}, {rmax}] is empty; its scale would be 0")
    zero_points = tuple(int(z) - offset for z in np.atleast_1d(grid.zero_point))
    if axis is None and scales.size == 1:
        return QParams.per_tensor(float(scales[0]), zero_points[0])
    return QParams(tuple(float(s) for s in scales), zero_points, axis if axis is not None else 0)


def fake_quant_storage(x: np.ndarray, rmin: ArrayLike, rmax: ArrayLike, bits: int, narrow_range: bool,
                       dtype: str = "i8", axis: Optional[int] = None) -> np.ndarray:
    """The stored integers of `x` on the grid of `fake_quant_qparams`: level - zero_point + storage zero point."""
    grid = fake_quant_grid(np.atleast_1d(rmin) if axis is not None else rmin,
                           np.atleast_1d(rmax) if axis is not None else rmax, bits, narrow_range)
    levels = fake_quant_levels(x, grid, axis)
    params = fake_quant_qparams(rmin, rmax, bits, narrow_range, dtype, axis)
    shape = [1] * np.ndim(x)
    if axis is not None:
        shape[axis] = -1
    zero_points = np.reshape(np.asarray(params.zero_point, np.int64), shape if axis is not None else ())
    return (levels + zero_points).astype(_NP_INT[dtype])


def symmetric_weight_range(w: np.ndarray, axis: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """QAT weight ranges: [-m, m] with m = max|w| (per channel along `axis`), at least WEIGHT_RANGE_FLOOR so that
    an all-zero channel still has a grid. qcompiler.qat computes the same with keras.ops."""
    w = np.abs(np.asarray(w, np.float32))
    if axis is None:
        m = np.asarray(w.max() if w.size else 0, np.float32)
    else:
        m = w.max(axis=tuple(i for i in range(w.ndim) if i != axis % w.ndim))
    m = np.maximum(m, np.float32(WEIGHT_RANGE_FLOOR)).astype(np.float32)
    return -m, m


WEIGHT_RANGE_FLOOR = 1e-8


# ----------------------------------------------------------------------------------------------------
# scale / zero point from a range: the MLIR quantizer (FakeQuantSupport.cc + DownCastScale)
# ----------------------------------------------------------------------------------------------------
def _nudged_zero_point(qmin: int, qmax: int, rmin: float, rmax: float) -> tuple[float, int]:
    """mlir::quantfork::fakeQuantAttrsToType in double: (scale, zero point)."""
    if abs(rmax - rmin) < np.finfo(np.float64).eps:
        return 1.0, qmin
    scale = (rmax - rmin) / float(qmax - qmin)
    zp_from_min = qmin - rmin / scale
    zp_from_max = qmax - rmax / scale
    from_min_error = abs(qmin) + abs(rmin / scale)
    from_max_error = abs(qmax) + abs(rmax / scale)
    zp = zp_from_min if from_min_error < from_max_error else zp_from_max
    if zp < qmin:
        return scale, qmin
    if zp > qmax:
        return scale, qmax
    return scale, int(round_half_away(np.float64(zp)))


def _down_cast_scale(qmin: int, qmax: int, rmin: float, rmax: float, zero_point: int) -> tuple[np.float32, int]:
    """DownCastScale (quantization_utils.cc, legacy_float_scale): the scale is recomputed in float32 and, for an
    asymmetric storage range, the zero point is recomputed in float32 from it."""
    scale = np.float32(np.float32(rmax) - np.float32(rmin)) / np.float32(qmax - qmin)
    scale = np.float32(scale)
    if qmax != -qmin:
        zp_from_min = np.float32(qmin - rmin / float(scale))
        if zp_from_min < qmin:
            zero_point = qmin
        elif zp_from_min > qmax:
            zero_point = qmax
        else:
            zero_point = int(round_half_away(zp_from_min))
    return scale, zero_point


def _range_qparams(qmin: int, qmax: int, rmin: float, rmax: float) -> tuple[np.float32, int]:
    _, zero_point = _nudged_zero_point(qmin, qmax, rmin, rmax)
    return _down_cast_scale(qmin, qmax, rmin, rmax, zero_point)


def _check_range(rmin: float, rmax: float, what: str) -> None:
    if not (math.isfinite(rmin) and math.isfinite(rmax)):
        raise ValueError(f"{what}: the calibrated range [{rmin}, {rmax}] is not finite; check the representative "
                         "data for inf/NaN or pick a clipping observer (percentile, mse, kl)")
    if rmin > rmax:
        raise ValueError(f"{what}: min {rmin} > max {rmax}")


def activation_qparams(rmin: float, rmax: float, dtype: str = "i8", flt_min_floor: bool = True) -> QParams:
    """Per-tensor quantization of an activation from its calibrated float range, as the converter does.

    i8/u8 (MLIR quantizer, prepare_quantize_helper.h ConvertStatsToQDQs):
      include 0; widen by 1e-6 on both sides when max-min < 1e-6; scale = (f32(max) - f32(min)) / 255 in float32;
      zp = round_half_away(f32(qmin - min / scale)) clamped to [qmin, qmax].
    i16 (16x8 mode uses the old quantizer, GetSymmetricQuantizationParams): include 0, symmetric,
      scale = max(|min|, |max|) / 32767 in float32, zp = 0.
    The converter's calibration logger starts `max` at FLT_MIN, so an all-non-positive tensor has max = FLT_MIN;
    `flt_min_floor` (the tflite-2.21 policy) applies that (it matters for int16: an all-zero tensor gets scale
    FLT_MIN / 32767). Without it an all-zero int16 range is widened by 1e-6 like an int8 one.
    """
    rmin, rmax = float(np.float32(rmin)), float(np.float32(rmax))
    _check_range(rmin, rmax, "activation_qparams")
    if flt_min_floor:
        rmax = max(rmax, FLT_MIN)
    if dtype == "i16":
        lo, hi = np.float32(min(rmin, 0.0)), np.float32(max(rmax, 0.0))
        half_range = max(abs(lo), abs(hi))
        if half_range == 0:
            half_range = np.float32(NEAR_ZERO_TOLERANCE)
        scale = np.float32(half_range / np.float32(32767))
        return QParams.per_tensor(float(scale), 0)
    if dtype not in ("i8", "u8"):
        raise ValueError(f"activation_qparams supports i8, u8 and i16 activations, not '{dtype}'")
    qmin, qmax = qrange(dtype)
    rmin, rmax = min(rmin, 0.0), max(rmax, 0.0)
    if abs(rmax - rmin) < NEAR_ZERO_TOLERANCE:  # TensorRangeSanityCheck widens (and warns)
        rmin -= NEAR_ZERO_TOLERANCE
        rmax += NEAR_ZERO_TOLERANCE
    scale, zero_point = _range_qparams(qmin, qmax, rmin, rmax)
    return QParams.per_tensor(float(scale), zero_point)


# ----------------------------------------------------------------------------------------------------
# constants: weights (symmetric per channel) and other constants (asymmetric per tensor)
# ----------------------------------------------------------------------------------------------------
def _channel_min_max(w: np.ndarray, axis: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """ExtractMinMaxFromAttr before symmetrisation: per-channel min/max in double, widened to include 0."""
    w = np.asarray(w, np.float32)
    if axis is None:
        mins, maxs = np.atleast_1d(w.min()), np.atleast_1d(w.max())
    else:
        reduce_axes = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        mins, maxs = w.min(axis=reduce_axes), w.max(axis=reduce_axes)
    mins = np.minimum(mins.astype(np.float64), 0.0)
    maxs = np.maximum(maxs.astype(np.float64), 0.0)
    return mins, maxs


def _expand_very_small_range(mins: np.ndarray, maxs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ExpandVerySmallRange: ranges of at most 1e-6 become at least [-5e-7, 5e-7]."""
    small = (maxs - mins) <= NEAR_ZERO_TOLERANCE
    half = NEAR_ZERO_TOLERANCE / 2
    return np.where(small, np.minimum(mins, -half), mins), np.where(small, np.maximum(maxs, half), maxs)


def weight_qparams(w: np.ndarray, axis: Optional[int], dtype: str = "i8", narrow_range: bool = True) -> QParams:
    """Quantization parameters of a constant (GetUniformQuantized[PerAxis]TypeForWeight, legacy float scale).

    narrow_range=True (weights of conv/depthwise/FC): symmetric, [-127, 127], scale = f32(2 max|w| / 254) per
    channel along `axis` (0 for conv2d/FC, 3 for depthwise), zero point 0. A channel whose range is at most 1e-6
    (e.g. all zeros) gets scale f32(1e-6 / 254).
    narrow_range=False (a non-weight constant operand, e.g. of ADD/MUL): asymmetric over [-128, 127] from the
    values' min/max widened to include 0, zero point computed like an activation's.
    """
    if dtype != "i8":
        raise ValueError(f"the converter quantizes constants to i8 only (got '{dtype}'); 16x8 mode uses "
                         "weight_qparams_16x8")
    qmin, qmax = qrange(dtype, narrow_range)
    mins, maxs = _channel_min_max(w, axis)
    if narrow_range:
        maxs = np.maximum(np.abs(mins), np.abs(maxs))
        mins = -maxs
    mins, maxs = _expand_very_small_range(mins, maxs)
    if narrow_range:  # symmetric: zero point 0 whatever the nudging, one vectorised float32 scale per channel
        scales = (maxs.astype(np.float32) - mins.astype(np.float32)).astype(np.float32) / np.float32(qmax - qmin)
        zero_points = (0,) * len(scales)
    else:
        scales, zero_points = zip(*(_range_qparams(qmin, qmax, float(lo), float(hi)) for lo, hi in zip(mins, maxs)))
    if axis is None:
        return QParams.per_tensor(float(scales[0]), zero_points[0])
    return QParams(scales, zero_points, axis % np.ndim(w))


def _channel_shape(qparams: QParams, ndim: int) -> list[int]:
    shape = [1] * ndim
    if qparams.axis is not None:
        shape[qparams.axis] = -1
    return shape


def quantize_weights(w: np.ndarray, qparams: QParams, dtype: str = "i8") -> np.ndarray:
    """Symmetric int8 weight values as the converter writes them (QuantizeLegacy).

    Per channel (SymmetricPerChannelQuantizeValues): inv = f32(1.0 / scale) computed in double,
    q = round_half_away(f32(w * inv)) clamped to [-127, 127].
    Per tensor (PortableSymmetricQuantizeFloats): inv = f32(127 / max|w|) in float32 (all-zero: zeros).
    """
    if dtype != "i8":
        raise ValueError(f"quantize_weights writes i8 weights, not '{dtype}'")
    w = np.asarray(w, np.float32)
    if qparams.axis is None:
        value_range = np.float32(max(abs(float(w.min())), abs(float(w.max())))) if w.size else np.float32(0)
        if value_range == 0:
            return np.zeros(w.shape, np.int8)
        inv = np.float32(np.float32(127) / value_range)
        return _scaled_to_i8(w.reshape(-1, 1, 1), np.full((1, 1, 1), inv, np.float32)).reshape(w.shape)
    scales = np.asarray(qparams.scale, np.float64)
    axis = qparams.axis % w.ndim
    channels = w.shape[axis]
    inv = (1.0 / scales).astype(np.float32).reshape(1, channels, 1)
    before = int(np.prod(w.shape[:axis], dtype=np.int64))
    return _scaled_to_i8(w.reshape(before, channels, -1), inv).reshape(w.shape)


WEIGHT_BLOCK = 1 << 16  # elements quantized at a time: the temporaries stay in the CPU cache


def _scaled_to_i8(w3: np.ndarray, inv3: np.ndarray) -> np.ndarray:
    """clamp(round_half_away(f32(w * inv)), -127, 127) as int8 for w viewed as (before, channels, after) and inv of
    shape (1, channels, 1), block by block: the same values as one whole-array expression, but the half-dozen
    temporaries of a large kernel (VGG16's fc1: 75 MB each) are never allocated, which made this the slowest step
    of an int8 compile on large models."""
    before, channels, after = w3.shape
    out = np.empty(w3.shape, np.int8)
    if before > 1:  # blocks of whole (channels, after) slices: every block uses all of inv
        step = max(1, WEIGHT_BLOCK // max(1, channels * after))
        for start in range(0, before, step):
            out[start:start + step] = _round_clip(w3[start:start + step] * inv3)
    else:  # blocks of channels
        step = max(1, WEIGHT_BLOCK // max(1, after))
        for start in range(0, channels, step):
            out[:, start:start + step] = _round_clip(w3[:, start:start + step] * inv3[:, start:start + step])
    return out


def _round_clip(scaled: np.ndarray) -> np.ndarray:
    return np.clip(round_half_away(scaled.astype(np.float32, copy=False)), -127, 127).astype(np.int8)


def quantize_constant(x: np.ndarray, qparams: QParams, dtype: str = "i8", narrow_range: bool = False) -> np.ndarray:
    """Any other float constant (quantfork::quantizeAttr, UniformQuantizedValueConverter::quantizeF32ToInt8):
    q = clamp(round_half_away(double(x) / double(scale) + zero_point)) — double arithmetic, unlike the kernel."""
    x = np.asarray(x, np.float32).astype(np.float64)
    rank = x.ndim
    scaled = x / qparams.scale_array(rank).astype(np.float64) + qparams.zero_point_array(rank).astype(np.float64)
    qmin, qmax = qrange(dtype, narrow_range)
    return np.clip(round_half_away(scaled), qmin, qmax).astype(np.dtype(_NP_INT[dtype])).reshape(x.shape)


_NP_INT = {"i4": np.int8, "i8": np.int8, "u8": np.uint8, "i16": np.int16, "i32": np.int32, "i64": np.int64}


# ----------------------------------------------------------------------------------------------------
# bias
# ----------------------------------------------------------------------------------------------------
class BiasQParams(NamedTuple):
    """Bias quantization and the weight quantization it may have forced (see `bias_qparams`)."""

    bias: QParams
    weight: QParams


def _as_weight_qparams(weight_qparams: Union[QParams, Sequence[float], np.ndarray]) -> QParams:
    if isinstance(weight_qparams, QParams):
        return weight_qparams
    scales = np.atleast_1d(np.asarray(weight_qparams, np.float32))
    if scales.size == 1:
        return QParams.per_tensor(float(scales[0]), 0)
    return QParams(tuple(float(s) for s in scales), (0,) * scales.size, 0)


def bias_qparams(bias: np.ndarray, input_scale: float, weight_qparams: Union[QParams, Sequence[float]],
                 dtype: str = "i32", adjust: bool = True) -> BiasQParams:
    """Bias of conv2d / depthwise / FC: scale = f32(input_scale * weight_scale[c]), zero point 0, quantized
    dimension 0 (GetUniformQuantizedTypeForBias with legacy float scale).

    i32 (int8 mode) also applies SetBiasParamsWithAdjustments: when |b[c]| / bias_scale[c] > kBiasMax = 2^30 - 1
    the bias scale becomes f32(|b[c]| / kBiasMax) and the weight scale f32(that / input_scale) — a channel with
    all-zero or tiny weights and a real bias gets a larger weight scale. Quantize the weights with the returned
    `weight` params. i64 (16x8 mode) has no adjustment here (the old quantizer adjusts the weights beforehand,
    see weight_qparams_16x8). `adjust=False` (the plain policy) keeps scale = input * weight; quantize_bias then
    saturates a bias that does not fit.
    """
    wq = _as_weight_qparams(weight_qparams)
    bias = np.asarray(bias, np.float32).reshape(-1)
    in_scale = np.float32(input_scale)
    w_scales = np.asarray(wq.scale, np.float32)
    b_scales = (in_scale * w_scales).astype(np.float32)
    per_channel = wq.axis is not None and w_scales.size > 1
    if dtype == "i32" and adjust:
        b_scales, w_scales = _adjust_for_bias_overflow(bias, in_scale, b_scales, w_scales, per_channel)
    elif dtype not in ("i32", "i64"):
        raise ValueError(f"bias dtype must be i32 (int8 activations) or i64 (16x8), not '{dtype}'")
    if per_channel:
        bias_q = QParams(b_scales, (0,) * b_scales.size, 0)
        weight_q = QParams(w_scales, wq.zero_point, wq.axis)
    else:
        bias_q = QParams.per_tensor(float(b_scales[0]), 0)
        weight_q = QParams.per_tensor(float(w_scales[0]), wq.zero_point[0]) if wq.axis is None else \
            QParams((float(w_scales[0]),), wq.zero_point, wq.axis)
    return BiasQParams(bias_q, weight_q)


def _adjust_for_bias_overflow(bias: np.ndarray, in_scale: np.float32, b_scales: np.ndarray, w_scales: np.ndarray,
                              per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    abs_bias = np.abs(bias).astype(np.float64)
    if per_channel:
        over = abs_bias / b_scales.astype(np.float64) > BIAS_MAX_I32
        new_b = abs_bias / BIAS_MAX_I32
        new_w = new_b / np.float64(in_scale)
        return (np.where(over, new_b, b_scales).astype(np.float32),
                np.where(over, new_w, w_scales).astype(np.float32))
    half_range = float(abs_bias.max()) if abs_bias.size else 0.0
    if half_range / float(b_scales[0]) < BIAS_MAX_I32:
        return b_scales, w_scales
    new_b = half_range / BIAS_MAX_I32
    return np.asarray([new_b], np.float32), np.asarray([new_b / float(in_scale)], np.float32)


def quantize_bias(bias: np.ndarray, qparams: QParams, dtype: str = "i32") -> np.ndarray:
    """SymmetricBiasQuantize: inv = f32(1.0 / scale) in double, q = round_half_away(f32(b * inv)) (float32
    product), saturated to [-max, max] of the storage type (-2^31 is never produced; NaN from 0 * inf gives 0)."""
    bias = np.asarray(bias, np.float32)
    scales = np.asarray(qparams.scale, np.float32).astype(np.float64)
    inv = np.where(scales == 0, 0.0, 1.0 / np.where(scales == 0, 1.0, scales)).astype(np.float32)
    if inv.size > 1:
        inv = inv.reshape(_channel_shape(qparams, bias.ndim))
    with np.errstate(invalid="ignore", over="ignore"):  # a denormal scale gives inv = inf, like in C++
        q = round_half_away((bias * inv).astype(np.float32)).astype(np.float64)
    return _saturate(q, dtype)


def _saturate(q: np.ndarray, dtype: str) -> np.ndarray:
    """tflite SafeCast then clamp to [-max, max]: NaN -> 0, out of range (and +-inf) -> +-max."""
    limit = QRANGES[dtype][1]
    q = np.where(np.isnan(q), 0.0, q)
    high, low = q >= float(limit), q <= -float(limit)
    safe = np.where(high | low, 0.0, q).astype(np.int64)
    return np.where(high, limit, np.where(low, -limit, safe)).astype(_NP_INT[dtype])


# ----------------------------------------------------------------------------------------------------
# 16x8 mode weights (old quantizer: tensorflow/lite/tools/optimize/quantization_utils.cc)
# ----------------------------------------------------------------------------------------------------
def weight_qparams_16x8(w: np.ndarray, axis: int, bias: Optional[np.ndarray] = None,
                        input_scale: Optional[float] = None, adjust: bool = True) -> tuple[QParams, np.ndarray]:
    """Per-channel int8 weights as the 16x8 (old) quantizer writes them: (params, int8 values).

    half_range = max(|min|, |max|) per channel in float32; with a bias, AdjustWeightsForBiasScale first widens a
    channel when |b| >= 0.5 * input_scale * (half_range / 127) * (2^31 - 1), to
    half_range = 2 |b| / (2^31 - 1) * (127 / input_scale). scale = half_range / 127, inv = 127 / half_range
    (both float32; an all-zero channel gets scale 0 and zeros), q = round_half_away(f32(w * inv)).
    `adjust=False` (the plain policy) skips AdjustWeightsForBiasScale.
    """
    w = np.asarray(w, np.float32)
    axis = axis % w.ndim
    reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
    half_range = np.maximum(np.abs(w.min(axis=reduce_axes)), np.abs(w.max(axis=reduce_axes))).astype(np.float32)
    if adjust and bias is not None and input_scale is not None and half_range.size > 1:
        k_scale = float(2**31 - 1)
        in_scale = float(np.float32(input_scale))
        scales = (half_range / np.float32(127)).astype(np.float32)
        abs_b = np.abs(np.asarray(bias, np.float32).reshape(-1)).astype(np.float64)
        adjust = abs_b >= 0.5 * in_scale * scales.astype(np.float64) * k_scale
        # 2.0 * |b| / kScale * (kMaxQuantizedValue8bit / input_scale): the last factor is an int / float
        widened = (2.0 * abs_b / k_scale * float(np.float32(127) / np.float32(in_scale))).astype(np.float32)
        half_range = np.where(adjust, widened, half_range).astype(np.float32)
    scales = (half_range / np.float32(127)).astype(np.float32)
    safe = np.where(half_range == 0, np.float32(1), half_range)
    inv = np.where(half_range == 0, np.float32(0), (np.float32(127) / safe).astype(np.float32))
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(round_half_away((w * inv.reshape(shape)).astype(np.float32)), -127, 127).astype(np.int8)
    # A zero scale is what the converter writes for an all-zero channel; QParams needs > 0, so it is kept tiny.
    safe_scales = tuple(float(s) if s > 0 else FLT_MIN for s in scales)
    return QParams(safe_scales, (0,) * len(safe_scales), axis), q


# ----------------------------------------------------------------------------------------------------
# runtime arithmetic of the TFLite reference kernels
# ----------------------------------------------------------------------------------------------------
def quantize(x: np.ndarray, qparams: QParams, dtype: str = "i8") -> np.ndarray:
    """Reference QUANTIZE kernel (reference_ops::AffineQuantize): q = clamp(round_half_away(f32(x / scale)) + zp).
    The division is float32 (the optimized kernel differs: it multiplies by the inverse and rounds half to even)."""
    x = np.asarray(x, np.float32)
    rank = x.ndim
    scaled = round_half_away((x / qparams.scale_array(rank)).astype(np.float32)).astype(np.float64)
    qmin, qmax = qrange(dtype)
    return np.clip(scaled + qparams.zero_point_array(rank), qmin, qmax).astype(_NP_INT[dtype])


def dequantize(q: np.ndarray, qparams: QParams) -> np.ndarray:
    """Reference DEQUANTIZE kernel: f32(scale * (q - zero_point))."""
    q = np.asarray(q)
    rank = q.ndim
    diff = (q.astype(np.int64) - qparams.zero_point_array(rank)).astype(np.float32)
    return (qparams.scale_array(rank) * diff).astype(np.float32)


def quantize_multiplier(real_multiplier: float, single_rounding: bool = True) -> tuple[int, int]:
    """QuantizeMultiplier (kernels/internal/quantization_util.cc): real = multiplier * 2^(shift - 31),
    multiplier in [2^30, 2^31). frexp + round half away; shift < -31 flushes to (0, 0). With
    TFLITE_SINGLE_ROUNDING (what ai-edge-litert 2.3 is built with) a shift > 30 saturates to (2^31 - 1, 30)."""
    if real_multiplier == 0.0:
        return 0, 0
    if not math.isfinite(real_multiplier):  # glibc frexp(inf) gives exponent 0 and the int64 cast of inf * 2^31
        return 0, 0                         # (x86) INT64_MIN, whose int32 truncation is 0: multiplier 0
    fraction, shift = math.frexp(real_multiplier)
    q_fixed = int(math.copysign(math.floor(abs(fraction) * (1 << 31) + 0.5), fraction))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if single_rounding and shift > 30:
        return (1 << 31) - 1, 30
    return q_fixed, shift


def multiply_by_quantized_multiplier(x: np.ndarray, multiplier: Union[int, np.ndarray],
                                     shift: Union[int, np.ndarray], single_rounding: bool = True) -> np.ndarray:
    """MultiplyByQuantizedMultiplier for int32 accumulators, vectorised (multiplier/shift broadcast, e.g. per
    channel along the last axis). Returns int64 values (the kernel's int32 result).

    single_rounding=True (TFLITE_SINGLE_ROUNDING): (x * m + 2^(30 - shift)) >> (31 - shift), one rounding, ties
      toward +inf. ai-edge-litert's FULLY_CONNECTED reference kernel rounds like this.
    single_rounding=False (gemmlowp): RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x << left, m), right);
      what ai-edge-litert's other reference kernels do (qcompiler/ir/int_kernels.py says which op uses which).
    """
    x = np.asarray(x, np.int64)
    m = np.asarray(multiplier, np.int64)
    s = np.asarray(shift, np.int64)
    if x.size and (x.min() < -(2**31) or x.max() > 2**31 - 1):
        raise ValueError("multiply_by_quantized_multiplier takes int32 accumulators; use "
                         "multiply_by_quantized_multiplier_int64 for 16x8 (int64) accumulators")
    if single_rounding:
        total_shift = 31 - s
        rounding = np.left_shift(np.int64(1), total_shift - 1)
        return wrap_int((x * m + rounding) >> total_shift, 32)  # the kernel's static_cast<int32_t>: wraps
    if np.any(s > 0):
        shifted = x << (np.maximum(s, 0) & 31)  # x86 shifts int32 by the count modulo 32 (shift > 31: not saturated)
        shifted = ((shifted + 2**31) & (2**32 - 1)) - 2**31  # int32 wrap-around of x * (1 << left_shift)
    else:
        shifted = x
    return _rounding_divide_by_pot(_saturating_rounding_doubling_high_mul(shifted, m), np.maximum(-s, 0))


def _saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = a * b
    total = ab + ((1 << 30) - (ab < 0) * np.int64(2**31 - 1))  # nudge: 2^30, or 1 - 2^30 below zero
    high = (total + ((total >> 63) & np.int64(2**31 - 1))) >> 31  # C++ division truncates toward zero
    if np.any(np.asarray(b) == -(2**31)):
        high = np.where((a == b) & (a == -(2**31)), np.int64(2**31 - 1), high)
    return high


def _rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    mask = np.left_shift(np.int64(1), exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier_int64(x: np.ndarray, multiplier: Union[int, np.ndarray],
                                           shift: Union[int, np.ndarray]) -> np.ndarray:
    """MultiplyByQuantizedMultiplier(int64 x, ...) used with 16x8 int64 accumulators (single-rounding build):
    the multiplier is reduced to 16 bits, result = (x * m16 + 2^(14 - shift)) >> (15 - shift), returned as the
    kernel's `static_cast<int32_t>`: a result beyond int32 (a tiny output scale) wraps around, it does not saturate."""
    x = np.asarray(x, np.int64)
    m = np.asarray(multiplier, np.int64)
    s = np.asarray(shift, np.int64)
    if np.any((x < -(2**47)) | (x >= 2**47)):
        raise ValueError("multiply_by_quantized_multiplier_int64 needs |x| < 2^47 (the kernel's assumption)")
    reduced = np.where(m < 0x7FFF0000, (m + (1 << 15)) >> 16, np.int64(0x7FFF))
    total_shift = 15 - s
    return wrap_int((x * reduced + np.left_shift(np.int64(1), total_shift - 1)) >> total_shift, 32)


def round_scaled_to_int32(acc: np.ndarray, real: ArrayLike) -> np.ndarray:
    """static_cast<int32_t>(std::round(double(acc) * real)): the requantization of TFLite's FULLY_CONNECTED
    reference kernel since TF 2.20 ("do requant in float"; `real` = double(in) * double(w[c]) / double(out)). Halves
    round away from zero; a value outside int32 becomes INT32_MIN, as x86's cvttsd2si gives it (it does not
    wrap or saturate). Returns int64 values."""
    scaled = round_half_away(np.asarray(acc, np.int64).astype(np.float64) * np.asarray(real, np.float64))
    outside = ~((scaled >= INT32_MIN) & (scaled <= INT32_MAX))  # NaN too
    return np.where(outside, INT32_MIN, np.where(outside, 0, scaled).astype(np.int64))


def add_left_shift(dtype: str) -> int:
    """How far TFLite's integer ADD/SUB shift their inputs left before rescaling: 15 for int16, else 20."""
    return 15 if dtype == "i16" else 20


def add_output_multiplier(input_scales: Sequence[float], output_scale: float, dtype: str) -> tuple[float, float]:
    """TFLite's integer ADD/SUB Prepare: (twice the larger input scale, the output's real multiplier
    2 max(input scales) / (2^left_shift * output scale)), the product in float32 as the kernel computes it."""
    twice_max = 2 * max(input_scales)
    return twice_max, twice_max / float(np.float32((1 << add_left_shift(dtype)) * np.float32(output_scale)))


def add_runnable_output_scale(input_scales: Sequence[float], output_scale: float, dtype: str) -> Optional[float]:
    """None when TFLite's integer ADD accepts `output_scale` (its output multiplier is below 1: Prepare aborts
    otherwise, in QuantizeMultiplierSmallerThanOneExp); else the smallest float32 scale it accepts, for an
    intermediate that a QUANTIZE then takes to `output_scale` (a degenerate calibrated range: random seed 3196)."""
    twice_max, multiplier = add_output_multiplier(input_scales, output_scale, dtype)
    if multiplier < 1.0:
        return None
    scale = float(np.float32(twice_max / (1 << add_left_shift(dtype))))
    while add_output_multiplier(input_scales, scale, dtype)[1] >= 1.0:
        scale = float(np.nextafter(np.float32(scale * (1 + 2 ** -12)), np.float32(np.inf)))
    return scale


def effective_scale(input_scale: float, weight_scale: ArrayLike, output_scale: float) -> np.ndarray:
    """Real multiplier of conv/depthwise/FC per output channel, as the kernels compute it
    (PopulateConvolutionQuantizationParams): double(in) * double(w[c]) / double(out) from the float32 scales."""
    w = np.asarray(weight_scale, np.float32).astype(np.float64)
    return float(np.float32(input_scale)) * w / float(np.float32(output_scale))


# ----------------------------------------------------------------------------------------------------
# more reference-kernel arithmetic: requantize, gemmlowp fixed point, activation ranges, LUTs
# (used by the integer interpreter, qcompiler/ir/int_kernels.py)
# ----------------------------------------------------------------------------------------------------
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def np_int_dtype(dtype: str) -> np.dtype:
    return np.dtype(_NP_INT[dtype])


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: Union[int, np.ndarray]) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values held in int64 arrays."""
    return _saturating_rounding_doubling_high_mul(np.asarray(a, np.int64), np.asarray(b, np.int64))


def rounding_divide_by_pot(x: np.ndarray, exponent: Union[int, np.ndarray]) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero."""
    return _rounding_divide_by_pot(np.asarray(x, np.int64), np.asarray(exponent, np.int64))


def saturating_rounding_multiply_by_pot(x: np.ndarray, exponent: int) -> np.ndarray:
    """gemmlowp SaturatingRoundingMultiplyByPOT<exponent> for int32 raw values."""
    x = np.asarray(x, np.int64)
    if exponent <= 0:
        return _rounding_divide_by_pot(x, np.int64(-exponent))
    return np.clip(x << exponent, INT32_MIN, INT32_MAX)


def multiply_by_quantized_multiplier_any(x: np.ndarray, multiplier, shift, wide: bool,
                                         single_rounding: bool = True) -> np.ndarray:
    """The int32 (`wide=False`) or int64-accumulator (`wide=True`, 16x8 kernels) MultiplyByQuantizedMultiplier."""
    if wide:
        return multiply_by_quantized_multiplier_int64(x, multiplier, shift)
    return multiply_by_quantized_multiplier(x, multiplier, shift, single_rounding)


def quantize_multipliers(reals: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """QuantizeMultiplier over an array of real multipliers: (multipliers, shifts) as int64 arrays."""
    pairs = [quantize_multiplier(float(r)) for r in np.atleast_1d(np.asarray(reals, np.float64)).ravel()]
    return np.asarray([p[0] for p in pairs], np.int64), np.asarray([p[1] for p in pairs], np.int64)


def requantize(q: np.ndarray, src: QParams, dst: QParams, dtype: str, single_rounding: bool = True) -> np.ndarray:
    """Reference QUANTIZE of an integer input (reference_ops::Requantize): real = double(in) / double(out),
    out = clamp(MultiplyByQuantizedMultiplier(q - zp_in, m, s) + zp_out)."""
    real = float(np.float32(src.scale[0])) / float(np.float32(dst.scale[0]))
    m, s = quantize_multiplier(real)
    acc = multiply_by_quantized_multiplier(np.asarray(q, np.int64) - src.zero_point[0], m, s, single_rounding)
    acc = acc + dst.zero_point[0]
    qmin, qmax = qrange(dtype)
    return np.clip(acc, qmin, qmax).astype(_NP_INT[dtype])


def float_to_int32(x: float) -> int:
    """static_cast<int32_t>(float) as x86-64 computes it (cvttss2si): truncation, and INT32_MIN for NaN, infinities
    and values outside the int32 range (a bound f / scale overflows for the FLT_MIN-derived scale of an all-zero
    int16 tensor; the kernel then clamps with that INT32_MIN)."""
    x = float(x)
    if not math.isfinite(x) or not INT32_MIN <= math.trunc(x) <= INT32_MAX:
        return INT32_MIN
    return math.trunc(x)


def activation_range(activation: str, qparams: QParams, dtype: str) -> tuple[int, int]:
    """CalculateActivationRangeQuantized: the fused activation's bounds in the output's integer domain,
    zp + int(TfLiteRound(f32(f / scale)))."""
    qmin, qmax = qrange(dtype)
    scale, zp = np.float32(qparams.scale[0]), qparams.zero_point[0]

    def q(f: float) -> int:
        with np.errstate(over="ignore", invalid="ignore"):
            return zp + float_to_int32(round_half_away(np.float32(np.float32(f) / scale)))

    bounds = {"none": (qmin, qmax), "relu": (max(qmin, q(0.0)), qmax),
              "relu6": (max(qmin, q(0.0)), min(qmax, q(6.0))),
              "relu_n1_to_1": (max(qmin, q(-1.0)), min(qmax, q(1.0)))}
    if activation not in bounds:
        raise ValueError(f"no integer kernel for the fused activation '{activation}'")
    return bounds[activation]


def populate_lut(fn, src: QParams, dst: QParams, dtype: str) -> np.ndarray:
    """LUTPopulate for 8-bit types: every input code dequantized in float32, transformed, requantized with
    TfLiteRound(f32(y * f32(1 / out_scale))) + zp, saturated. Indexed by code - qmin."""
    qmin, qmax = qrange(dtype)
    codes = np.arange(qmin, qmax + 1, dtype=np.int64)
    x = (np.float32(src.scale[0]) * (codes - src.zero_point[0]).astype(np.float32)).astype(np.float32)
    with np.errstate(all="ignore"):
        y = np.asarray(fn(x), np.float32)
        inverse = np.float32(np.float32(1) / np.float32(dst.scale[0]))
        rescaled = round_half_away((y * inverse).astype(np.float32)).astype(np.float64)
    return np.clip(rescaled + dst.zero_point[0], qmin, qmax).astype(_NP_INT[dtype])


# gemmlowp fixed-point exp / reciprocal (fixedpoint.h), on int32 raw values in int64 arrays
def _fp_mul(a: np.ndarray, b) -> np.ndarray:
    return _saturating_rounding_doubling_high_mul(np.asarray(a, np.int64), np.asarray(b, np.int64))


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: np.ndarray) -> np.ndarray:
    constant_term, one_third = 1895147668, 715827883
    x = a + (1 << 28)
    x2 = _fp_mul(x, x)
    x3 = _fp_mul(x2, x)
    x4 = _fp_mul(x2, x2)
    x4_over_4 = saturating_rounding_multiply_by_pot(x4, -2)
    poly = saturating_rounding_multiply_by_pot(_fp_mul(x4_over_4 + x3, one_third) + x2, -1)
    return constant_term + _fp_mul(np.int64(constant_term), x + poly)


_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401),
               (4, 242))


def exp_on_negative_values(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """gemmlowp exp_on_negative_values for FixedPoint<int32, integer_bits> raws; returns FixedPoint<int32, 0> raws."""
    a = np.asarray(a, np.int64)
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    a_mod = (a & (one_quarter - 1)) - one_quarter
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        saturating_rounding_multiply_by_pot(a_mod, integer_bits))
    remainder = a_mod - a
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            shift = fractional_bits + exponent
            if shift >= 0:
                bit = (remainder & (np.int64(1) << shift)) != 0
                result = np.where(bit, _fp_mul(result, multiplier), result)
    if integer_bits > 5:
        clamp_bound = -(1 << (fractional_bits + 5)) if fractional_bits + 5 < 31 else INT32_MIN
        result = np.where(a < clamp_bound, 0, result)
    return np.where(a == 0, INT32_MAX, result)


def one_over_one_plus_x_for_x_in_0_1(a: np.ndarray) -> np.ndarray:
    """gemmlowp one_over_one_plus_x_for_x_in_0_1 (Newton-Raphson, 3 iterations): F0 raw in, F0 raw out."""
    a = np.asarray(a, np.int64)
    total = a + INT32_MAX
    half_denominator = np.where(total >= 0, (total + 1) // 2, -((-(total - 1)) // 2))  # (sum + sign) / 2, C division
    x = 1515870810 + _fp_mul(half_denominator, -1010580540)
    for _ in range(3):
        one_minus = (1 << 29) - _fp_mul(half_denominator, x)
        x = x + saturating_rounding_multiply_by_pot(_fp_mul(x, one_minus), 2)
    return saturating_rounding_multiply_by_pot(x, 1)


def get_reciprocal(x: np.ndarray, x_integer_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """tflite GetReciprocal: (F0 raw of 1 / x scaled, num_bits_over_unit) for positive int32 raws."""
    x = np.asarray(x, np.int64)
    headroom_plus_one = 32 - np.frexp(np.maximum(x, 1).astype(np.float64))[1].astype(np.int64)  # CountLeadingZeros
    num_bits_over_unit = x_integer_digits - headroom_plus_one
    shifted_minus_one = ((x << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31)
    return one_over_one_plus_x_for_x_in_0_1(shifted_minus_one), num_bits_over_unit


def populate_lut_int16(fn, input_min: float, input_max: float, output_min: float, output_max: float,
                       precision: type = np.float64) -> np.ndarray:
    """gen_lut / LUTPopulate<int16_t>: 513 samples of fn over [input_min, input_max], each corrected by half the
    error of linear interpolation at the midpoint of its segment, for outputs in [output_min, output_max].
    `precision` is the float type the kernel computes in. Read with `lut_lookup_int16`."""
    f = precision
    input_min, input_max, output_min, output_max = f(input_min), f(input_max), f(output_min), f(output_max)
    step = f((input_max - input_min) / f(512))
    half_step = f(step / f(2))
    inv = f(f(65536) / f(output_max - output_min))
    i = np.arange(512, dtype=f)
    with np.errstate(all="ignore"):
        val = np.asarray(fn((input_min + i * step).astype(f)), f)
        mid = np.asarray(fn((input_min + i * step + half_step).astype(f)), f)
        nxt = np.asarray(fn((input_min + (i + 1) * step).astype(f)), f)
        sample = round_half_away((val * inv).astype(f))
        interp = round_half_away(((nxt * inv + sample) / f(2)).astype(f))
        bias = round_half_away(((interp - round_half_away((mid * inv).astype(f))) / f(2)).astype(f))
        last = round_half_away(np.asarray(np.asarray(fn(np.asarray([input_max], f)), f) * inv, f))
    table = np.concatenate([np.clip(sample - bias, -32768, 32767), np.clip(last, -32768, 32767)])
    # NaN (fn overflowing to inf: inf - inf) survives std::min/max; static_cast<int16_t> of it gives 0 on x86
    return np.where(np.isnan(table), 0, table).astype(np.int16)


def lut_lookup_int16(x: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """LUTLookup(int16): base lut[256 + (x >> 7)] plus the interpolated slope over the low 7 bits.

    The kernel holds the slope lut[i + 1] - lut[i] and the sum in int16_t, so both wrap around: a table that
    crosses most of the int16 range within one segment (a narrow output scale, GELU's tail) gives wrapped
    outputs, and BUILTIN_REF returns those."""
    x = np.asarray(x, np.int64)
    index = 256 + (x >> 7)
    offset = x & 0x7F
    lut = lut.astype(np.int64)
    base = lut[index]
    slope = wrap_int(lut[index + 1] - base, 16)
    return wrap_int(base + ((slope * offset + 64) >> 7), 16).astype(np.int16)


def wrap_int(x: np.ndarray, bits: int) -> np.ndarray:
    """Two's-complement wrap-around of integers to `bits` bits (a C cast to a narrower signed type)."""
    half = np.int64(1) << (bits - 1)
    return ((np.asarray(x, np.int64) + half) & ((half << 1) - 1)) - half


def sigmoid_table_uint16() -> np.ndarray:
    """sigmoid_table_uint16, the 256-entry table TFLite's int16 LOGISTIC and TANH interpolate: sigmoid(i / 24) in
    0.16 fixed point, each entry lowered by a quarter of the curvature over its segment,
    (s(i) + s(i + 1) - 2 s(i + 1/2)) / 4 (half the midpoint error of linear interpolation, as LUTPopulate's bias),
    rounded; the last entry is 65535. This rule reproduces all 256 entries of TFLite's table (plain rounding of
    sigmoid(i / 24) misses 44 of them by one)."""
    i = np.arange(256, dtype=np.float64)

    def s(v: np.ndarray) -> np.ndarray:
        return 65536.0 / (1.0 + np.exp(-v / 24.0))

    table = round_half_away(s(i) - (s(i) + s(i + 1) - 2.0 * s(i + 0.5)) / 4.0)
    table[255] = 65535
    return table.astype(np.int64)
