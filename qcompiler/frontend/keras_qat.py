"""Importing quantization-aware-trained models: qcompiler.qat's layers become IR nodes carrying their trained
ranges, so compilation needs no calibration.

- `FakeQuant` -> `fake_quant {min, max, bits, narrow_range}`: the range as trained (with 0 included, as the
  layer uses it); a range that training never filled (`initialized` = 0) stays empty, and lower-to-int then
  names the tensor (or fills it with --default-ranges);
- `QuantConv2D` / `QuantDepthwiseConv2D` / `QuantDense` -> conv2d / depthwise_conv2d / fully_connected whose
  weights are folded with the batch norm's moving statistics (the same float32 operations as the layer at
  inference, `qcompiler.qat.fold_batch_norm`) behind a `fake_quant {weights, axis, bits, narrow_range}`,
  then the fused ReLU/ReLU6.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from qcompiler.frontend.keras_layers import LayerContext, _depthwise_kernel, _weights
from qcompiler.ir.graph import Value
from qcompiler.qat.layers import FakeQuant, QuantConv2D, QuantDense, QuantDepthwiseConv2D, fold_batch_norm


def _fake_quant(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    layer = ctx.layer
    if layer.per_channel:
        raise ctx.unsupported("has per-channel activation ranges; TFLite quantizes activations per tensor. "
                              "Train it with per_channel=False")
    attrs = {"bits": int(layer.bits), "narrow_range": bool(layer.narrow_range)}
    if float(_weights(layer.initialized)) >= 0.5:
        lo = float(_weights(layer.range_min))
        hi = float(_weights(layer.range_max))
        attrs.update(min=min(lo, 0.0), max=max(hi, 0.0))
    return ctx.op("fake_quant", xs[0], **attrs)


def _folded(layer) -> tuple[np.ndarray, np.ndarray]:
    """The layer's float weights as it computes with them at inference (Keras layout)."""
    inner = layer.inner
    kernel = _weights(inner.kernel)
    bias = _weights(inner.bias) if inner.use_bias else None
    if layer.bn is None:
        channels = kernel.shape[-2] * kernel.shape[-1] if isinstance(layer, QuantDepthwiseConv2D) else kernel.shape[-1]
        return kernel, bias if bias is not None else np.zeros(channels, np.float32)
    bn = layer.bn
    mean, variance = _weights(bn.moving_mean), _weights(bn.moving_variance)
    gamma = _weights(bn.gamma) if bn.scale else np.ones_like(mean)
    beta = _weights(bn.beta) if bn.center else np.zeros_like(mean)
    channel_shape = kernel.shape[-2:] if isinstance(layer, QuantDepthwiseConv2D) else None
    kernel, bias = fold_batch_norm(np, kernel, bias, gamma, beta, mean, variance, np.float32(bn.epsilon),
                                   channel_shape)
    return np.asarray(kernel, np.float32), np.asarray(bias, np.float32)


def _weight_mark(ctx: LayerContext, kernel: Value, axis: int) -> Value:
    layer = ctx.layer
    return ctx.op("fake_quant", kernel, suffix="kernel.q", weights=True, axis=axis if layer.per_channel else None,
                  bits=int(layer.weight_bits), narrow_range=bool(layer.narrow_range))


def _finish(ctx: LayerContext, y: Value) -> Value:
    kind = ctx.layer.activation_kind
    return y if kind == "linear" else ctx.op(kind, y)


def _check_layout(ctx: LayerContext) -> None:
    if getattr(ctx.layer.inner, "data_format", "channels_last") != "channels_last":
        raise ctx.unsupported("data_format must be 'channels_last'")


def _quant_conv2d(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    _check_layout(ctx)
    inner = ctx.layer.inner
    if inner.groups != 1:
        raise ctx.unsupported(f"groups={inner.groups} (grouped convolution) has no TFLite builtin")
    kernel, bias = _folded(ctx.layer)
    w = _weight_mark(ctx, ctx.const(kernel.transpose(3, 0, 1, 2), "kernel"), 0)
    y = ctx.op("conv2d", xs[0], w, ctx.const(bias, "bias"), strides=list(inner.strides), padding=inner.padding,
               dilation=list(inner.dilation_rate))
    return _finish(ctx, y)


def _quant_depthwise(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    _check_layout(ctx)
    inner = ctx.layer.inner
    kernel, bias = _folded(ctx.layer)
    w = _weight_mark(ctx, ctx.const(_depthwise_kernel(kernel), "kernel"), 3)
    y = ctx.op("depthwise_conv2d", xs[0], w, ctx.const(bias, "bias"), strides=list(inner.strides),
               padding=inner.padding, dilation=list(inner.dilation_rate),
               depth_multiplier=int(inner.depth_multiplier))
    return _finish(ctx, y)


def _quant_dense(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    kernel, bias = _folded(ctx.layer)
    w = _weight_mark(ctx, ctx.const(kernel.T, "kernel"), 0)
    return _finish(ctx, ctx.op("fully_connected", xs[0], w, ctx.const(bias, "bias")))


QAT_CONVERTERS = {
    FakeQuant: _fake_quant,
    QuantConv2D: _quant_conv2d,
    QuantDepthwiseConv2D: _quant_depthwise,
    QuantDense: _quant_dense,
}
