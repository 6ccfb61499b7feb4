"""Fake quantization on Keras tensors, with straight-through gradients.

One grid everywhere: tf.quantization.fake_quant_with_min_max_vars(_per_channel)'s. On the TensorFlow backend
the TF op itself runs (so TFLiteConverter can read a QAT model too); on other backends `fake_quant_keras`
computes the same grid with keras.ops, step for step as qcompiler/quant/math.py (`fake_quant_grid`,
`fake_quant_levels`), which is also what lowering uses. tests/test_qat_math.py checks all three agree.

Gradients (both paths): straight through inside the nudged range, zero outside; min/max receive the gradient
of the values clipped at them (what TF's FakeQuantWithMinMaxVarsGradient gives), so ranges can be learned.
"""
from __future__ import annotations

from typing import Optional

import keras
from keras import ops


def _use_tf_op() -> bool:
    return keras.backend.backend() == "tensorflow"


def fake_quant(x, rmin, rmax, bits: int, narrow_range: bool, per_channel: bool = False):
    """Quantize-dequantize `x` on the grid of [rmin, rmax] (per channel along the last axis when
    `per_channel`). The range should contain 0 (callers clamp it)."""
    if _use_tf_op():
        import tensorflow as tf

        if per_channel:
            return tf.quantization.fake_quant_with_min_max_vars_per_channel(
                x, rmin, rmax, num_bits=bits, narrow_range=narrow_range)
        return tf.quantization.fake_quant_with_min_max_vars(x, rmin, rmax, num_bits=bits, narrow_range=narrow_range)
    return fake_quant_keras(x, rmin, rmax, bits, narrow_range)


def fake_quant_keras(x, rmin, rmax, bits: int, narrow_range: bool):
    """The same grid with keras.ops (any backend). Per-channel ranges broadcast along the last axis."""
    qmin = 1.0 if narrow_range else 0.0
    qmax = float((1 << bits) - 1)
    rmin = ops.cast(rmin, "float32")
    rmax = ops.cast(rmax, "float32")
    scale = (rmax - rmin) / (qmax - qmin)
    safe_scale = ops.where(scale > 0, scale, ops.ones_like(scale))
    zero_point_from_min = qmin - rmin / safe_scale
    nudged_zero_point = ops.clip(_round_half_away(zero_point_from_min), qmin, qmax)
    nudged_zero_point = ops.stop_gradient(nudged_zero_point)
    nudged_min = (qmin - nudged_zero_point) * scale
    nudged_max = (qmax - nudged_zero_point) * scale
    clamped = ops.minimum(ops.maximum(x, nudged_min), nudged_max)
    inv = 1.0 / safe_scale
    steps = ops.floor((clamped - nudged_min) * inv + 0.5)
    quantized = (steps + qmin - nudged_zero_point) * scale
    return clamped + ops.stop_gradient(quantized - clamped)


def _round_half_away(x):
    return ops.sign(x) * ops.floor(ops.abs(x) + 0.5)


def include_zero(rmin, rmax):
    """[min(rmin, 0), max(rmax, 0)]: a grid must hold 0 exactly (zero padding, ReLU)."""
    return ops.minimum(rmin, 0.0), ops.maximum(rmax, 0.0)


WEIGHT_RANGE_FLOOR = 1e-8  # = qcompiler.quant.math.WEIGHT_RANGE_FLOOR


def symmetric_range(w, per_channel: bool, channel_shape: Optional[tuple] = None):
    """[-m, m] with m = max|w| per output channel (the last axis) or over the tensor, at least
    WEIGHT_RANGE_FLOOR. `channel_shape`: reshape w to [-1, channels] first (depthwise kernels)."""
    a = ops.abs(w)
    if per_channel:
        a = ops.reshape(a, (-1, a.shape[-1]) if channel_shape is None else channel_shape)
        m = ops.max(a, axis=0)
    else:
        m = ops.max(a)
    m = ops.maximum(ops.stop_gradient(m), WEIGHT_RANGE_FLOOR)
    return -m, m
