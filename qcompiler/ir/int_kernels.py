"""Integer kernels: what TFLite's reference kernels (ai-edge-litert, BUILTIN_REF) compute for int8 and int16x8 ops.

`INT_KERNELS[op](node, args)` takes the raw integer operands of a lowered node (their scales and zero points are
in the operand and result types) and returns the raw integer results, bit for bit as the reference kernel
(accumulators, fixed-point multipliers and shifts, rounding, saturation, lookup tables); the exception, int8 SUM,
follows the BUILTIN resolver because BUILTIN_REF's is wrong (BUILTIN_REF_DIFFERS). The numeric primitives
live in qcompiler/quant/math.py; this file only wires them per op. Accumulating ops use float64 matrix products
of integer values, which are exact (|sum| < 2^53) and let BLAS do the work.

tests/test_int_interpreter.py checks every op lower-to-int can emit against BUILTIN_REF on random parameters.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from qcompiler.ir.graph import IRError, Node, Value
from qcompiler.ir.ops import _normalize_axes, _spatial_pads, _windows
from qcompiler.ir.types import QParams
from qcompiler.quant import math as qm

IntKernel = Callable[[Node, Sequence[np.ndarray]], list[np.ndarray]]
# ai-edge-litert's reference kernels round MultiplyByQuantizedMultiplier twice (gemmlowp's
# SaturatingRoundingDoublingHighMul then RoundingDivideByPOT), measured against BUILTIN_REF
# (tests/test_int_interpreter.py); FULLY_CONNECTED requantizes in double instead (`_fully_connected`).
def _mbqm(node: Node, x: np.ndarray, multiplier, shift) -> np.ndarray:
    return qm.multiply_by_quantized_multiplier(x, multiplier, shift, single_rounding=False)


def _qmult(node: Node, real: float) -> tuple[int, int]:
    """QuantizeMultiplier as the double-rounding kernels see it: they take any shift (their left shift
    `x * (1 << shift)` then uses the shift modulo 32, as x86 does; measured on int16 MUL/RELU with the FLT_MIN-based
    scale of an all-zero tensor)."""
    return qm.quantize_multiplier(real, single_rounding=False)


def _q(value: Value) -> QParams:
    if value.type.quant is None:
        raise IRError(f"%{value.name} ({value.type}) has no quantization parameters; the integer kernel needs them")
    return value.type.quant


def _scale(value: Value) -> float:
    return float(np.float32(_q(value).scale[0]))


def _zp(value: Value) -> int:
    return int(_q(value).zero_point[0])


def _out(node: Node, acc: np.ndarray, lo: int, hi: int) -> list[np.ndarray]:
    return [np.clip(acc, lo, hi).astype(node.result.type.np_dtype)]


def _act_range(node: Node) -> tuple[int, int]:
    return qm.activation_range(node.attrs.get("activation", "none"), _q(node.result), node.result.type.dtype)


def _wide(node: Node) -> bool:
    return node.operands[0].type.dtype == "i16"


def _requantize_acc(node: Node, acc: np.ndarray, real: np.ndarray) -> list[np.ndarray]:
    """acc (int64, channels last) * per-channel real multiplier, + output zero point, clamped to the activation
    (CONV_2D, DEPTHWISE_CONV_2D; 16x8 uses the int64-accumulator variant)."""
    m, s = qm.quantize_multipliers(real)
    scaled = qm.multiply_by_quantized_multiplier_any(acc, m, s, wide=_wide(node), single_rounding=False)
    return _out(node, scaled + _zp(node.result), *_act_range(node))


def _bias(node: Node, args: Sequence[np.ndarray], acc: np.ndarray) -> np.ndarray:
    return acc + args[2].astype(np.int64) if len(args) > 2 else acc


def _weight_real(node: Node) -> np.ndarray:
    return qm.effective_scale(_scale(node.operands[0]), _q(node.operands[1]).scale, _scale(node.result))


def _padded_input(node: Node, x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """x - zero point, zero padded for SAME (the kernels skip padded taps, which is the same)."""
    x = x.astype(np.int64) - _zp(node.operands[0])
    ph, pw = _spatial_pads(x.shape, kh, kw, node.attrs)
    return np.pad(x, ((0, 0), ph, pw, (0, 0))) if ph != (0, 0) or pw != (0, 0) else x


def _taps(node: Node, xp: np.ndarray, kh: int, kw: int, out_hw: tuple[int, int]):
    (sh, sw), (dh, dw) = node.attrs["strides"], node.attrs.get("dilation", [1, 1])
    oh, ow = out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw, :]


def _conv2d(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    x, w = args[0], args[1]
    out_c, kh, kw, in_c = w.shape
    xp = _padded_input(node, x, kh, kw).astype(np.float64)
    oh, ow = _out_hw(node, x)
    cols = np.stack([t for _, _, t in _taps(node, xp, kh, kw, (oh, ow))], axis=3)  # N,OH,OW,KH*KW,C
    acc = cols.reshape(-1, kh * kw * in_c) @ w.reshape(out_c, -1).astype(np.float64).T
    acc = acc.reshape(x.shape[0], oh, ow, out_c).astype(np.int64)
    return _requantize_acc(node, _bias(node, args, acc), _weight_real(node))


def _depthwise(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    x, w = args[0], args[1]
    _, kh, kw, channels = w.shape
    mult = node.attrs["depth_multiplier"]
    xp = _padded_input(node, x, kh, kw)
    if mult > 1:
        xp = np.repeat(xp, mult, axis=3)  # output channel c*mult+m reads input channel c
    oh, ow = _out_hw(node, x)
    acc = np.zeros((x.shape[0], oh, ow, channels), np.int64)
    wk = w[0].astype(np.int64)
    for i, j, tap in _taps(node, xp, kh, kw, (oh, ow)):
        acc += tap * wk[i, j]
    return _requantize_acc(node, _bias(node, args, acc), _weight_real(node))


def _out_hw(node: Node, x: np.ndarray) -> tuple[int, int]:
    return tuple(node.result.type.shape[1:3]) if all(d is not None for d in node.result.type.shape[1:3]) else \
        _infer_hw(node, x)


def _infer_hw(node: Node, x: np.ndarray) -> tuple[int, int]:
    from qcompiler.ir.ops import conv_output_size

    w = node.operands[1].type.shape
    (sh, sw), (dh, dw) = node.attrs["strides"], node.attrs.get("dilation", [1, 1])
    return (conv_output_size(x.shape[1], w[1], sh, dh, node.attrs["padding"]),
            conv_output_size(x.shape[2], w[2], sw, dw, node.attrs["padding"]))


def _fully_connected(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """FullyConnected(PerChannel) of the reference kernels since TF 2.20, which requantize in double: the
    accumulator (int64 for int16 inputs) plus bias, times double(in) * double(w[c]) / double(out), std::round,
    static_cast<int32_t> (INT32_MIN outside int32: an int16 model with a tiny output scale gives -32768 where an
    int32 wrap would give 32767), + zero point in int32, clamped."""
    x = args[0].astype(np.float64) - _zp(node.operands[0])
    w = args[1].astype(np.float64) - _zp(node.operands[1])
    acc = _bias(node, args, (x @ w.T).astype(np.int64))
    scaled = qm.wrap_int(qm.round_scaled_to_int32(acc, _weight_real(node)) + _zp(node.result), 32)
    return _out(node, scaled, *_act_range(node))


def _add_sub(sign: int) -> IntKernel:
    def kernel(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
        a, b, out = node.operands[0], node.operands[1], node.result
        dtype = out.type.dtype
        out_q = _q(out)
        # an ADD whose output scale TFLite's kernel refuses is written as ADD into a runnable scale + QUANTIZE
        stand_in = qm.add_runnable_output_scale((_scale(a), _scale(b)), _scale(out), dtype) if sign > 0 else None
        if stand_in is not None:
            out_q = QParams.per_tensor(stand_in, int(out_q.zero_point[0]))
        left_shift = qm.add_left_shift(dtype)
        twice_max, real_out = qm.add_output_multiplier((_scale(a), _scale(b)), float(out_q.scale[0]), dtype)
        m1, s1 = qm.quantize_multiplier(_scale(a) / twice_max)
        m2, s2 = qm.quantize_multiplier(_scale(b) / twice_max)
        mo, so = qm.quantize_multiplier(real_out)
        x1 = _mbqm(node, (args[0].astype(np.int64) - _zp(a)) << left_shift, m1, s1)
        x2 = _mbqm(node, (args[1].astype(np.int64) - _zp(b)) << left_shift, m2, s2)
        raw = _mbqm(node, x1 + sign * x2, mo, so)
        lo, hi = qm.activation_range(node.attrs.get("activation", "none"), out_q, dtype)
        result = np.clip(raw + int(out_q.zero_point[0]), lo, hi).astype(out.type.np_dtype)
        if stand_in is not None:
            result = qm.requantize(result, out_q, _q(out), dtype, single_rounding=False)
        return [result]

    return kernel


def _mul(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """MulElementwise. Prepare computes the real multiplier in float32 (scale1 * scale2 / scale_out on the tensors'
    float scales), and only then widens it to double for QuantizeMultiplier."""
    a, b, out = node.operands[0], node.operands[1], node.result
    f = np.float32
    m, s = _qmult(node, float(f(f(f(_scale(a)) * f(_scale(b))) / f(_scale(out)))))
    prod = (args[0].astype(np.int64) - _zp(a)) * (args[1].astype(np.int64) - _zp(b))
    return _out(node, _mbqm(node, prod, m, s) + _zp(out), *_act_range(node))


def _relu_x(lo: float, hi: float) -> IntKernel:
    """QuantizedReluX: rescale by f32(in_scale / out_scale), clamp to zp + roundf(bound / out_scale)."""
    def kernel(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
        src, out = node.operands[0], node.result
        qmin, qmax = qm.qrange(out.type.dtype)
        out_scale = np.float32(_scale(out))

        def bound(f: float) -> int:
            with np.errstate(over="ignore", invalid="ignore"):
                return _zp(out) + qm.float_to_int32(qm.round_half_away(np.float32(np.float32(f) / out_scale)))

        act_min = max(qmin, bound(lo))
        act_max = qmax if hi == np.inf else min(qmax, bound(hi))
        m, s = _qmult(node, float(np.float32(np.float32(_scale(src)) / out_scale)))
        acc = _mbqm(node, args[0].astype(np.int64) - _zp(src), m, s) + _zp(out)
        return _out(node, acc, act_min, act_max)

    return kernel


def _leaky_relu(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    src, out = node.operands[0], node.result
    in_s, out_s = np.float32(_scale(src)), np.float32(_scale(out))
    alpha_m, alpha_s = _qmult(node, float(np.float32(in_s * np.float32(node.attrs["alpha"]) / out_s)))
    id_m, id_s = _qmult(node, float(np.float32(in_s / out_s)))
    x = args[0].astype(np.int64) - _zp(src)
    acc = np.where(x >= 0, _mbqm(node, x, id_m, id_s),
                   _mbqm(node, x, alpha_m, alpha_s))
    return _out(node, acc + _zp(out), *qm.qrange(out.type.dtype))


def _lut(fn: Callable[[np.ndarray], np.ndarray], int16: bool = True) -> IntKernel:
    """Ops the kernels run through a table built with LUTPopulate: 256 entries for 8-bit types, 513 interpolated
    ones for int16 (`int16=False`: LOGISTIC and TANH, whose int16 kernels interpolate a fixed sigmoid table)."""
    def kernel(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
        dtype = node.result.type.dtype
        if dtype == "i16" and not int16:
            return {"sigmoid": _logistic16, "tanh": _tanh16}[node.op](node, args)
        if dtype == "i16":
            return [_lut16(node, fn, args[0])]
        table = qm.populate_lut(fn, _q(node.operands[0]), _q(node.result), dtype)
        return [table[args[0].astype(np.int64) - qm.qrange(dtype)[0]]]

    return kernel


def _srdhm16(a: np.ndarray, b) -> np.ndarray:
    """int16 SaturatingRoundingDoublingHighMul."""
    ab = np.asarray(a, np.int64) * np.int64(b)
    nudge = np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    total = ab + nudge
    high = np.sign(total) * (np.abs(total) >> 15)  # C division truncates toward zero
    return np.where((np.asarray(a) == b) & (b == -32768), 32767, high)


def _sat16(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -32768, 32767)


def _rounding_divide_by_pot16(x: np.ndarray, exponent: int) -> np.ndarray:
    """int16 RoundingDivideByPOT, including its mask wrapping to -1 for exponents >= 16."""
    mask = ((1 << exponent) - 1 + 32768) % 65536 - 32768
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + ((x & mask) > threshold)


def _down_scale_to_int16(multiplier: int) -> int:
    """DownScaleInt32ToInt16Multiplier."""
    return 32767 if multiplier >= 2**31 - 1 - (1 << 15) else (multiplier + (1 << 15)) >> 16


def _hard_swish_kernel(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """reference_ops::HardSwish (8-bit): 16-bit fixed point, a relu-ish multiplier in [0, 1] times the input
    rescaled to the output."""
    src, out = node.operands[0], node.result
    if out.type.dtype not in ("i8", "u8"):
        raise NotImplementedError(f"hard_swish on {out.type.dtype}")
    f = np.float32
    hires = f(f(1.0 / 128.0) * f(_scale(src)))
    out_m, out_e = qm.quantize_multiplier(float(f(hires / f(_scale(out)))))
    if out_e > 0:
        raise IRError(f"{node.describe()}: HARD_SWISH needs input scale / 128 <= output scale "
                      f"({_scale(src)} / 128 > {_scale(out)}); TFLite refuses such a model")
    relu_m, relu_e = qm.quantize_multiplier(float(f(hires / f(3.0 / 32768.0))))
    out_m16, relu_m16 = _down_scale_to_int16(out_m), _down_scale_to_int16(relu_m)
    hires_value = (args[0].astype(np.int64) - _zp(src)) * 128
    preshift_out = _srdhm16(hires_value, out_m16)
    reluish = hires_value
    if relu_e > 0:
        reluish = _sat16(reluish << (relu_e - 1))
    reluish = _srdhm16(reluish, relu_m16)
    if relu_e > 0:
        reluish = _sat16(reluish << 1)
    if relu_e < 0:
        reluish = _rounding_divide_by_pot16(reluish, -relu_e)
    reluish = (reluish + (1 << 15)) >> 1
    product = reluish * preshift_out
    preshift = np.where((reluish == -32768) & (preshift_out == -32768), 32767,
                        np.sign(product) * (np.abs(product) >> 15))
    value = _rounding_divide_by_pot16(preshift, -out_e) + _zp(out)
    return _out(node, value, *qm.qrange(out.type.dtype))


def _lut16(node: Node, fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """LUTPopulate<int16_t> over the input's and output's float ranges, read with LUTLookup."""
    src, out = node.operands[0], node.result
    f = np.float32
    table = qm.populate_lut_int16(fn, f(_scale(src)) * f(-32768 - _zp(src)), f(_scale(src)) * f(32767 - _zp(src)),
                                  f(_scale(out)) * f(-32768 - _zp(out)), f(_scale(out)) * f(32767 - _zp(out)),
                                  precision=np.float32)
    return qm.lut_lookup_int16(x, table)


# The table TFLite's int16 LOGISTIC and TANH interpolate (sigmoid(i / 24), 0.16 fixed point).
_SIGMOID_TABLE = qm.sigmoid_table_uint16()


def _checked_log2(scale: float) -> tuple[bool, int]:
    """CheckedLog2 (float32): (|log2(scale) - round| < 1e-3, round(log2(scale)))."""
    f = np.float32
    log2 = f(f(math.log(f(scale))) * f(1.0 / math.log(2.0)))
    rounded = f(qm.round_half_away(log2))
    return bool(abs(f(log2 - rounded)) < f(1e-3)), int(rounded)


def _int16_table_input(node: Node, x: np.ndarray) -> np.ndarray:
    """The input rescaled for the sigmoid table (Prepare of LOGISTIC/TANH for int16). A power-of-two input scale
    with left shift 12 + log2(scale) = 0 (LOGISTIC), 0 or 1 (TANH) multiplies by 3 << left_shift; any other
    scale by int(scale * 4096 * 3), doubled (left_shift += 1) while <= 32767 / 2, then rounds that shift away.
    The product is int32 in the kernel (it wraps for input scales above ~5)."""
    scale = _scale(node.operands[0])
    power_of_two, log2 = _checked_log2(scale)
    left_shift = 12 + log2
    if power_of_two and left_shift in ((0,) if node.op == "sigmoid" else (0, 1)):
        multiplier, left_shift = 3 << left_shift, 0
    else:
        real, left_shift = scale * 4096.0 * 3.0, 0
        while real <= 32767.0 / 2.0 and left_shift <= 30:
            left_shift += 1
            real *= 2.0
        multiplier = int(real)
    rounding = (1 << (left_shift - 1)) if left_shift > 0 else 0
    return qm.wrap_int(x.astype(np.int64) * multiplier + rounding, 32) >> left_shift


def _table_interpolate(x: np.ndarray, fraction_bits: int, saturated: int) -> np.ndarray:
    """|x| read from the sigmoid table, interpolated over its low `fraction_bits` bits (unsigned, as the kernel)."""
    magnitude = np.abs(x)
    index = magnitude >> fraction_bits
    low_index = np.minimum(index, 254)
    low, high = _SIGMOID_TABLE[low_index], _SIGMOID_TABLE[low_index + 1]
    interpolated = (low << fraction_bits) + (magnitude & ((1 << fraction_bits) - 1)) * (high - low)
    return np.where(index >= 255, saturated, interpolated)


def _logistic16(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """reference_integer_ops::Logistic (int16): the table at 9 fractional bits, mirrored for x < 0
    (1 - sigmoid(|x|)), rounded to the 1/32768 output."""
    x = _int16_table_input(node, args[0])
    result = _table_interpolate(x, 9, 0x7FFF << 10)
    result = np.where(x >= 0, result + (1 << 9), (1 << 25) - result + (1 << 9) - 1)
    return [qm.wrap_int(result >> 10, 16).astype(np.int16)]


def _tanh16(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """reference_integer_ops::Tanh (int16): tanh(x) = 2 sigmoid(2x) - 1 from the same table at 8 fractional bits.
    For x < 0 the kernel's uint32 arithmetic wraps; shifting the signed value and wrapping to int16 is the same."""
    x = _int16_table_input(node, args[0])
    result = _table_interpolate(x, 8, 0xFFFF << 8)
    result = np.where(x >= 0, result - (1 << 23) + (1 << 7), -result + (1 << 23) + (1 << 7) - 1)
    return [qm.wrap_int(result >> 8, 16).astype(np.int16)]


def _max_pool(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    kh, kw = node.attrs["pool_size"]
    lowest = np.iinfo(args[0].dtype).min
    win = _windows(args[0], kh, kw, node.attrs, pad_value=lowest)
    return _out(node, win.max(axis=(4, 5)).astype(np.int64), *_act_range(node))


def _avg_pool(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    x = args[0]
    kh, kw = node.attrs["pool_size"]
    sums = _windows(x.astype(np.int64), kh, kw, node.attrs).sum(axis=(4, 5))
    ones = np.ones((1,) + x.shape[1:3] + (1,), np.int64)
    counts = _windows(ones, kh, kw, node.attrs).sum(axis=(4, 5))
    return _out(node, _round_div(sums, counts), *_act_range(node))


def _round_div(acc: np.ndarray, n) -> np.ndarray:
    """acc > 0 ? (acc + n/2) / n : (acc - n/2) / n, C integer division (truncates toward zero)."""
    half = np.asarray(n) // 2
    num = np.where(acc > 0, acc + half, acc - half)
    return np.sign(num) * (np.abs(num) // n)


def _mean(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """reference_ops::QuantizedMeanOrSum (mean): the centred int32 sum times QuantizeMultiplier(in / out) with
    the division by the count folded in: multiplier = (multiplier << r) / count (integer division),
    shift -= r, r = min(floor(log2(count)), 32, 31 + shift); + output zero point."""
    src, out = node.operands[0], node.result
    x = args[0].astype(np.int64)
    axes = tuple(_normalize_axes(node.attrs["axes"], x.ndim))
    n = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    m, s = qm.quantize_multiplier(_scale(src) / _scale(out))
    r = min(n.bit_length() - 1, 32, 31 + s)
    m, s = (m << r) // n, s - r
    total = (x - _zp(src)).sum(axis=axes, keepdims=node.attrs["keepdims"])
    return _out(node, _mbqm(node, total, m, s) + _zp(out), *qm.qrange(out.type.dtype))


def _softmax(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """reference_ops::Softmax (8-bit): gemmlowp fixed-point exp of the rescaled differences to the row max,
    a fixed-point reciprocal of their sum, rescaled to the output."""
    src, out = node.operands[0], node.result
    if src.type.dtype == "i16":
        return _softmax_int16(node, args)
    real = min(float(np.float32(node.attrs["beta"])) * float(np.float32(_q(src).scale[0])) * (1 << 26),
               float(2**31 - 1))
    mult, left_shift = qm.quantize_multiplier(real)
    radius = int(np.floor(31.0 * (1 << 26) / (1 << left_shift)))
    x = args[0].astype(np.int64)
    diff = x - x.max(axis=-1, keepdims=True)
    used = diff >= -radius
    exps = qm.exp_on_negative_values(_mbqm(node, np.where(used, diff, 0), mult, left_shift), 5)
    exps = np.where(used, exps, 0)
    total = qm.rounding_divide_by_pot(exps, 12).sum(axis=-1, keepdims=True)
    scale, bits_over_unit = qm.get_reciprocal(total, 12)
    out_bits = 8 * out.type.np_dtype.itemsize
    exponent = bits_over_unit + 31 - out_bits
    unsat = qm.rounding_divide_by_pot(qm.saturating_rounding_doubling_high_mul(scale, exps), exponent)
    qmin, qmax = qm.qrange(out.type.dtype)
    return _out(node, np.where(used, unsat + qmin, qmin), qmin, qmax)


def _softmax_int16(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """reference_ops::SoftmaxInt16: exp and 1/(1+x) from 513-entry LUTs, Q0.15 arithmetic."""
    exp_lut = qm.populate_lut_int16(np.exp, -10.0, 0.0, -1.0, 1.0)
    recip_lut = qm.populate_lut_int16(lambda v: 1.0 / (1.0 + v), 0.0, 1.0, -1.0, 1.0)
    f = np.float32
    real = float(f(f(_scale(node.operands[0])) * f(node.attrs["beta"]))) / (10.0 / 65535.0)
    mult, shift = qm.quantize_multiplier(real)
    x = args[0].astype(np.int64)
    diff = x - x.max(axis=-1, keepdims=True)
    scaled = _mbqm(node, diff, mult, shift) + 32767
    exps = qm.lut_lookup_int16(np.clip(scaled, -32768, 32767), exp_lut).astype(np.int64)
    total = exps.sum(axis=-1, keepdims=True)
    headroom_plus_one = 32 - np.frexp(np.maximum(total, 1).astype(np.float64))[1].astype(np.int64)
    shifted = ((total << (headroom_plus_one - 1)) + (1 << 13)) >> 14
    recip = qm.lut_lookup_int16(np.clip(shifted - ((1 << 15) + (1 << 16)), -32768, 32767), recip_lut).astype(np.int64)
    right_shift = 31 - headroom_plus_one
    result = (exps * recip + (np.int64(1) << (right_shift - 1))) >> right_shift
    return _out(node, result, 0, 32767)


def _requantize_or_quantize(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    src, out = node.operands[0], node.result
    if src.type.is_float:
        return [qm.quantize(args[0], _q(out), out.type.dtype)]
    return [qm.requantize(args[0], _q(src), _q(out), out.type.dtype, single_rounding=False)]


def _dequantize(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [qm.dequantize(args[0], _q(node.operands[0])).astype(node.result.type.np_dtype)]


def _pad(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    x = args[0]
    if x.ndim == 0:
        return [x.copy()]
    return [np.pad(x, np.asarray(node.attrs["paddings"], np.int64).reshape(-1, 2), constant_values=_zp(node.result))]


def _float_op(name: str) -> IntKernel:
    """Same-parameter ops: their float semantics on raw codes is exact (moves, max/min, reshapes)."""
    from qcompiler.ir.ops import op_def

    def kernel(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [r.astype(node.result.type.np_dtype) for r in op_def(name).compute(args, node.attrs)]

    return kernel


def _zero_point_op(name: str) -> IntKernel:
    """Data movement that pads with real zero (space_to_batch): the op on codes minus the zero point, plus it."""
    from qcompiler.ir.ops import op_def

    def kernel(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
        zp = _zp(node.operands[0])
        shifted = [args[0].astype(np.int64) - zp]
        return [(r + zp).astype(node.result.type.np_dtype) for r in op_def(name).compute(shifted, node.attrs)]

    return kernel


def _concat(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    for v in node.operands:
        if v.type.quant != node.result.type.quant:
            raise IRError(f"{node.describe()}: CONCATENATION needs every int8/int16 operand to share the output's "
                          f"parameters; %{v.name} has {v.type.quant}")
    if node.attrs.get("activation", "none") not in ("none", "relu", "relu6", "relu_n1_to_1"):
        raise NotImplementedError(f"concat with a fused {node.attrs['activation']}")
    # the writer emits a fused relu as its own RELU op on the same parameters: a clamp
    joined = np.concatenate(args, axis=node.attrs["axis"]).astype(np.int64)
    return _out(node, joined, *_act_range(node))


def _greater(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """ComparisonWithScaling (8-bit GREATER): each operand's centred code << 8 times its own scale as a
    QuantizeMultiplierSmallerThanOneExp multiplier, so both sides are on one fixed-point grid; compared exactly.
    TFLite checks that the scales are below 1."""
    if _wide(node):
        raise NotImplementedError("int16 GREATER compares raw codes; lower-to-int keeps it float in 16x8 models")
    scaled = []
    for value, codes in zip(node.operands, args):
        scale = _scale(value)
        if not 0.0 < scale < 1.0:
            raise IRError(f"{node.describe()}: TFLite's int8 GREATER needs operand scales in (0, 1); "
                          f"%{value.name} has {scale}")
        m, s = _qmult(node, scale)
        scaled.append(_mbqm(node, (codes.astype(np.int64) - _zp(value)) << 8, m, s))
    return [np.greater(scaled[0], scaled[1])]


def _select(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """SELECT_V2 on codes: a move, which needs if_true, if_false and the result to share their parameters."""
    for v in node.operands[1:]:
        if v.type.quant != node.result.type.quant:
            raise IRError(f"{node.describe()}: SELECT_V2 needs both value operands to share the output's "
                          f"parameters; %{v.name} has {v.type.quant}")
    return [np.where(args[0], args[1], args[2]).astype(node.result.type.np_dtype)]


def _elu(x: np.ndarray) -> np.ndarray:
    return np.where(x < 0, np.expm1(x), x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (np.float32(1) / (np.float32(1) + np.exp(-x.astype(np.float64)).astype(np.float32))).astype(np.float32)


def _gelu(approximate: bool) -> Callable[[np.ndarray], np.ndarray]:
    """reference_ops::GeluTransform / GeluTransformApproximate in float32, the functions LUTPopulate tabulates:
    0.5f * x * std::erfc(x * f32(-M_SQRT1_2)), and 0.5f * x * (1 + std::tanh(kSqrt2dPi * (x + 0.044715f * x * x * x)))
    with kSqrt2dPi = f32(M_2_SQRTPI * M_SQRT1_2), each float32 operation rounded as the kernel's; erfc and tanh are the
    C library's erfcf and tanhf (qcompiler/ir/libm.py: float64 values rounded to float32 are an ulp off often enough
    to move an int16 table entry)."""
    from qcompiler.ir.libm import erfcf, tanhf

    f = np.float32
    sqrt_2_over_pi = f(_M_2_SQRTPI * _M_SQRT1_2)

    def exact(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, f)
        tail = erfcf((x * f(-_M_SQRT1_2)).astype(f))
        return ((f(0.5) * x).astype(f) * tail).astype(f)

    def tanh_form(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, f)
        cube = (((f(0.044715) * x).astype(f) * x).astype(f) * x).astype(f)
        t = tanhf((sqrt_2_over_pi * (x + cube).astype(f)).astype(f))
        return ((f(0.5) * x).astype(f) * (f(1) + t).astype(f)).astype(f)

    return tanh_form if approximate else exact


_M_2_SQRTPI = 1.12837916709551257390  # <math.h>'s constants, as the kernel spells them
_M_SQRT1_2 = 0.70710678118654752440


def _gelu_kernel(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    return _lut(_gelu(node.attrs["approximate"]))(node, args)


# ---------------------------------------------------------------------------------------------------------
# elementwise.cc (ABS, RSQRT, SQRT), exp.cc, squared_difference.cc, reduce.cc (SUM)
# ---------------------------------------------------------------------------------------------------------
def _abs(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """AbsEvalQuantized (int8, int16): |code - zp_in|, rescaled by QuantizeMultiplier(f32(in / out)) unless the
    float32 scales are equal, + zp_out, saturated."""
    src, out = node.operands[0], node.result
    value = np.abs(args[0].astype(np.int64) - _zp(src))
    in_scale, out_scale = np.float32(_scale(src)), np.float32(_scale(out))
    if in_scale != out_scale:
        value = _mbqm(node, value, *_qmult(node, float(np.float32(in_scale / out_scale))))
    return _out(node, value + _zp(out), *qm.qrange(out.type.dtype))


def _require_non_negative(node: Node, centred: np.ndarray, what: str) -> None:
    """RSQRT/SQRT refuse inputs below the zero point at run time (the interpreter fails); so do we."""
    if centred.size and centred.min() < 0:
        raise IRError(f"{node.describe()}: {what} is only defined for non-negative values, and an input code is "
                      f"below the zero point {_zp(node.operands[0])}; TFLite fails to invoke such a model")


def _inv_sqrt_multiplier(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GetInvSqrtQuantizedMultiplierExp(value, kReverseShift = -1) for int32 values >= 0, vectorised:
    1/sqrt(value) = multiplier * 2^(shift - 31), by five Newton-Raphson steps in gemmlowp Q3.28 fixed point."""
    x = np.asarray(value, np.int64).copy()
    trivial = x <= 1
    x = np.where(trivial, 2, x)
    shift = np.full(x.shape, 11, np.int64)
    while np.any(x >= 1 << 29):
        big = x >= 1 << 29
        x, shift = np.where(big, x // 4, x), shift + big
    clz = 32 - np.frexp(x.astype(np.float64))[1].astype(np.int64)  # CountLeadingZeros(uint32)
    pairs = (clz - 1) // 2 - 1
    shift, x = shift - pairs, x << (2 * pairs)
    srdhm, pot = qm.saturating_rounding_doubling_high_mul, qm.saturating_rounding_multiply_by_pot
    half_input = qm.rounding_divide_by_pot(x >> 1, 1)
    half_three = (1 << 28) + (1 << 27)
    guess = np.full(x.shape, 1 << 28, np.int64)
    for _ in range(5):
        cube = pot(srdhm(srdhm(guess, guess), guess), 6)
        guess = pot(srdhm(half_three, guess) - srdhm(half_input, cube), 3)
    multiplier = srdhm(guess, 1518500250)  # times sqrt(2) / 2 in Q0.31
    multiplier = np.where(shift < 0, _wrap32(multiplier << np.maximum(-shift, 0)), multiplier)
    shift = -np.maximum(shift, 0)
    return np.where(trivial, 2**31 - 1, multiplier), np.where(trivial, 0, shift)


def _wrap32(x: np.ndarray) -> np.ndarray:
    return ((x + 2**31) & (2**32 - 1)) - 2**31


def _rsqrt(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """RsqrtEvalQuantizedInt8: a fixed-point 1/sqrt(code - zp_in) carried with 20 extra bits, times
    QuantizeMultiplier(1 / (sqrtf(in) * out)); code == zp_in gives 127 (the output's maximum)."""
    src, out = node.operands[0], node.result
    if out.type.dtype != "i8":
        raise NotImplementedError(f"rsqrt on {out.type.dtype}")
    value = args[0].astype(np.int64) - _zp(src)
    _require_non_negative(node, value, "RSQRT")
    f = np.float32
    m, s = _qmult(node, 1.0 / float(f(np.sqrt(f(_scale(src))) * f(_scale(out)))))
    levels = np.arange(int(value.max()) + 1 if value.size else 1, dtype=np.int64)  # one table entry per code
    inv_m, inv_s = _inv_sqrt_multiplier(levels)
    k_shift = 20  # keeps the intermediate an integer
    data = qm.multiply_by_quantized_multiplier(np.ones_like(levels), inv_m, inv_s + k_shift, single_rounding=False)
    qmin, qmax = qm.qrange("i8")
    table = np.clip(_mbqm(node, data, m, s - k_shift) + _zp(out), qmin, qmax)
    table[0] = qmax  # "any value close to 0 represents the max output value"
    return _out(node, table[value], qmin, qmax)


def _sqrt(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """SqrtEvalQuantized: float32 sqrt of f32(in_scale * (code - zp_in)), divided by the output scale in
    float32 and truncated toward zero (static_cast<int>), + zp_out, saturated."""
    src, out = node.operands[0], node.result
    if out.type.dtype != "i8":
        raise NotImplementedError(f"sqrt on {out.type.dtype}")
    f = np.float32
    real = (f(_scale(src)) * (args[0].astype(np.int64) - _zp(src)).astype(f)).astype(f)
    _require_non_negative(node, real, "SQRT")
    scaled = (np.sqrt(real) / f(_scale(out))).astype(f)
    return _out(node, np.trunc(scaled).astype(np.int64) + _zp(out), *qm.qrange(out.type.dtype))


def _exp(x: np.ndarray) -> np.ndarray:
    """EXP's LUTPopulate transform, std::exp(float): the C library's expf (qcompiler/ir/libm.py)."""
    from qcompiler.ir.libm import expf

    return expf(x)


def _squared_difference(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """SquaredDifference (int8): both inputs << 7 rescaled to twice the larger input scale, the difference
    squared in int32 and rescaled by (2 max)^2 / (2^14 out); every multiplier from
    QuantizeMultiplierSmallerThanOneExp (TFLite aborts unless it is below 1)."""
    a, b, out = node.operands[0], node.operands[1], node.result
    if out.type.dtype != "i8":
        raise NotImplementedError(f"squared_difference on {out.type.dtype}")
    sa, sb, so = f32_scales = [float(np.float32(_scale(v))) for v in (a, b, out)]
    twice_max = 2.0 * max(sa, sb)
    real_out = twice_max * twice_max / float(np.float32(np.float32(1 << 14) * np.float32(so)))
    if not 0.0 < real_out < 1.0:
        raise IRError(f"{node.describe()}: SQUARED_DIFFERENCE needs (2 * max input scale)^2 / (2^14 * output scale) "
                      f"below 1, got {real_out:.4g} (scales {f32_scales}); TFLite aborts on such a model. Widen the "
                      f"output range")
    left_shift = 7
    x1 = _mbqm(node, (args[0].astype(np.int64) - _zp(a)) << left_shift, *_qmult(node, sa / twice_max))
    x2 = _mbqm(node, (args[1].astype(np.int64) - _zp(b)) << left_shift, *_qmult(node, sb / twice_max))
    diff = x1 - x2
    raw = _mbqm(node, diff * diff, *_qmult(node, real_out)) + _zp(out)
    return _out(node, raw, *qm.qrange("i8"))


def _sum(node: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """optimized_ops::QuantizedMeanOrSum (sum), the kernel of the BUILTIN resolver: in float32,
    round(sum(codes) * f32(in / out) + f32(-zp_in * scale * count)) + zp_out, saturated. (BUILTIN_REF's int8 SUM in
    ai-edge-litert 2.3 reads the int8 codes as uint8 and saturates to [0, 255]: see BUILTIN_REF_DIFFERS.)"""
    src, out = node.operands[0], node.result
    if out.type.dtype != "i8":
        raise NotImplementedError(f"sum on {out.type.dtype}")
    f = np.float32
    x = args[0].astype(np.int64)
    axes = tuple(_normalize_axes(node.attrs["axes"], x.ndim))
    count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    scale = f(f(_scale(src)) / f(_scale(out)))
    bias = f(f(f(-_zp(src)) * scale) * f(count))
    total = x.sum(axis=axes, keepdims=node.attrs["keepdims"]).astype(f)
    value = qm.round_half_away((total * scale + bias).astype(f)).astype(np.int64)
    return _out(node, value + _zp(out), *qm.qrange(out.type.dtype))


INT_KERNELS: dict[str, IntKernel] = {
    "quantize": _requantize_or_quantize,
    "dequantize": _dequantize,
    "conv2d": _conv2d,
    "depthwise_conv2d": _depthwise,
    "fully_connected": _fully_connected,
    "add": _add_sub(1),
    "sub": _add_sub(-1),
    "mul": _mul,
    "relu": _relu_x(0.0, np.inf),
    "relu6": _relu_x(0.0, 6.0),
    "relu_n1_to_1": _relu_x(-1.0, 1.0),
    "leaky_relu": _leaky_relu,
    "elu": _lut(_elu),
    "sigmoid": _lut(_sigmoid, int16=False),
    "tanh": _lut(np.tanh, int16=False),
    "hard_swish": _hard_swish_kernel,
    "gelu": _gelu_kernel,
    "softmax": _softmax,
    "max_pool2d": _max_pool,
    "avg_pool2d": _avg_pool,
    "mean": _mean,
    "pad": _pad,
    "concat": _concat,
    "greater": _greater,
    "select": _select,
    **{name: _float_op(name) for name in ("maximum", "minimum", "reduce_max", "reduce_min", "flatten", "reshape",
                                          "slice", "resize_nearest", "batch_to_space", "transpose")},
    "space_to_batch": _zero_point_op("space_to_batch"),
    "abs": _abs,
    "exp": _lut(_exp),
    "rsqrt": _rsqrt,
    "sqrt": _sqrt,
    "squared_difference": _squared_difference,
    "sum": _sum,
}

# Ops lower-to-int emits that have no integer kernel here: the interpreter would simulate them (dequantize, float op,
# quantize). A new op goes in one of INT_KERNELS or this set (tests/test_int_interpreter.py holds them to that).
SIMULATED_OPS: frozenset[str] = frozenset()

# Ops whose kernel above is not BUILTIN_REF's: ai-edge-litert 2.3's reference int8 SUM reads the int8 codes as uint8
# (QuantizedMeanOrSum<uint8_t> on the same bytes, saturated to [0, 255]): e.g. -1 is summed as 255. `_sum` computes
# what the BUILTIN resolver (optimized_ops::QuantizedMeanOrSum, and XNNPACK) computes instead, and is compared with it.
BUILTIN_REF_DIFFERS: frozenset[str] = frozenset({"sum"})

# Ops whose kernel above covers only some dtypes (the others raise NotImplementedError and are simulated).
# HARD_SWISH: TFLite has no int16 kernel (lower-to-int keeps it float in 16x8 models), so there is nothing to match.
EXACT_DTYPES: dict[str, tuple[str, ...]] = {"hard_swish": ("i8", "u8")}
# int16 RSQRT/SQRT/SQUARED_DIFFERENCE/SUM: lower-to-int keeps them float in 16x8 models; their kernels are int8 only.
EXACT_DTYPES.update({op: ("i8",) for op in ("rsqrt", "sqrt", "squared_difference", "sum")})
