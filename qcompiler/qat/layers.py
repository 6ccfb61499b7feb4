"""Keras 3 layers for quantization-aware training. All are registered serializable (package "qcompiler"), so a
QAT model saved as `.keras` loads with plain `keras.saving.load_model` once qcompiler.qat is imported (importing
qcompiler.qat registers them; qcompiler's own loader imports it).

- `FakeQuant`: quantize-dequantize activations on TF's fake-quant grid; ranges fixed, tracked as an exponential
  moving average of batch min/max (tf.contrib.quantize's EMA), or learned by gradient descent.
- `QuantConv2D`, `QuantDepthwiseConv2D`, `QuantDense`: a float layer, optionally with the batch norm after it
  and a ReLU/ReLU6, whose weights are folded with the batch norm and fake-quantized before the convolution, so
  that the weights that train are the weights that ship.

Every layer counts its training calls (`step`); fake quantization is off in training while step < quant_delay
(ranges are tracked meanwhile). Inference always quantizes, like tf.contrib.quantize's eval graph, so the
inference graph holds only TF fake-quant ops and TFLiteConverter can read it.
"""
from __future__ import annotations

from typing import Any, Optional

import keras
from keras import ops

from qcompiler.qat.fake_quant_ops import fake_quant, include_zero, symmetric_range

RANGE_MODES = ("ema", "fixed", "learned")
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")
BN_STATISTICS = ("quantized", "float")
register = keras.saving.register_keras_serializable(package="qcompiler")


def _check_bits(bits: int, low: int = 2, high: int = 16) -> int:
    if not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"bits must be an integer from {low} to {high}, got {bits!r}")
    return bits


@register
class FakeQuant(keras.layers.Layer):
    """Fake-quantize a tensor: `y = scale * (round((clip(x) - nudged_min) / scale) + qmin - zero_point)`.

    Arguments:
      bits: 2..16 levels exponent; narrow_range: drop the lowest level (symmetric grids).
      mode: "ema" (track batch min/max, `ema_decay`; the first batch sets them, a batch beyond them widens them
        at once), "fixed" (`min`/`max` as given,
        the equivalent of tf.quantization.fake_quant_with_min_max_args), or "learned" (min/max trainable
        variables, started from the first batch or from `min`/`max` when given).
      per_channel: one range per index of the last axis.
      quant_delay: training steps during which the layer passes values through unchanged (ranges are still
        tracked).
    The range always contains 0: [min(min, 0), max(max, 0)].
    Call with `observe=False` to quantize with the current range without updating it or counting a step
    (a second use of the same quantizer, e.g. after average pooling, which keeps its input's scale).
    """

    def __init__(self, bits: int = 8, narrow_range: bool = False, mode: str = "ema",
                 min: Optional[float] = None, max: Optional[float] = None, ema_decay: float = 0.99,
                 per_channel: bool = False, quant_delay: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in RANGE_MODES:
            raise ValueError(f"FakeQuant mode must be one of {RANGE_MODES}, got {mode!r}")
        if mode == "fixed" and (min is None or max is None):
            raise ValueError("FakeQuant(mode='fixed') needs min and max")
        if min is not None and max is not None and not min <= max:
            raise ValueError(f"FakeQuant needs min <= max, got {min} > {max}")
        self.bits = _check_bits(bits)
        self.narrow_range = bool(narrow_range)
        self.mode = mode
        self.init_min = None if min is None else float(min)
        self.init_max = None if max is None else float(max)
        self.ema_decay = float(ema_decay)
        self.per_channel = bool(per_channel)
        self.quant_delay = int(quant_delay)

    def build(self, input_shape: Any) -> None:
        shape = (int(input_shape[-1]),) if self.per_channel else ()
        known = self.init_min is not None and self.init_max is not None
        self.range_min = self.add_weight(name="min", shape=shape, trainable=self.mode == "learned",
                                         initializer=keras.initializers.Constant(self.init_min if known else 0.0))
        self.range_max = self.add_weight(name="max", shape=shape, trainable=self.mode == "learned",
                                         initializer=keras.initializers.Constant(self.init_max if known else 0.0))
        # 1.0 once the range holds data (given, or seen in training); a range never seen is refused at compile
        self.initialized = self.add_weight(name="initialized", shape=(), trainable=False,
                                           initializer=keras.initializers.Constant(1.0 if known else 0.0))
        self.step = self.add_weight(name="step", shape=(), dtype="int64", trainable=False, initializer="zeros")

    def call(self, x, training: Optional[bool] = None, observe: bool = True):
        active = self.step >= self.quant_delay
        if training and observe:
            self._observe(x)
            self.step.assign_add(ops.cast(1, "int64"))
        lo, hi = include_zero(self.range_min, self.range_max)
        quantized = fake_quant(x, lo, hi, self.bits, self.narrow_range, self.per_channel)
        if training and self.quant_delay > 0:  # inference always quantizes, as tf.contrib's eval graph
            quantized = ops.where(active, quantized, x)
        return _keep_logits(x, quantized)

    def _observe(self, x) -> None:
        """Update the range from this training batch before quantizing it (as tf.contrib.quantize).

        "ema": decay * range + (1 - decay) * batch min/max, but never narrower than this batch: a batch beyond
        the range widens it at once, and the range then shrinks back as a moving average. A plain moving
        average lags behind activations that grow (from scratch, Adam's first steps grow them several-fold in
        tens of steps, far faster than a 0.99 average's 100-step time constant); the values outside the lagging
        range get TF's fake-quant gradient 0 (12-57% of the logits in each of steps 1-59 of digits seed 7), and
        an image whose logits all fall below the range gives no gradient at all (seed 7: every logit of every
        training image of a 2 ended below it; the model never predicted a 2, 86%; README "Against tfmot").
        With the batch always inside, training only rounds it, and the range it quantized with is the range that
        is stored and ships."""
        if self.mode == "fixed":
            return
        axes = tuple(range(len(x.shape) - 1)) if self.per_channel else None
        batch_min = ops.stop_gradient(ops.min(x, axis=axes))
        batch_max = ops.stop_gradient(ops.max(x, axis=axes))
        first = self.initialized < 0.5
        if self.mode == "ema":  # the moving average, widened at once to hold this batch (see _observe's doc)
            decay = self.ema_decay
            ema_min = decay * self.range_min + (1.0 - decay) * batch_min
            ema_max = decay * self.range_max + (1.0 - decay) * batch_max
            new_min = ops.where(first, batch_min, ops.minimum(ema_min, batch_min))
            new_max = ops.where(first, batch_max, ops.maximum(ema_max, batch_max))
        else:  # learned: the first batch starts the range, gradients move it afterwards
            new_min = ops.where(first, batch_min, self.range_min)
            new_max = ops.where(first, batch_max, self.range_max)
        self.range_min.assign(new_min)
        self.range_max.assign(new_max)
        self.initialized.assign(1.0)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(bits=self.bits, narrow_range=self.narrow_range, mode=self.mode, min=self.init_min,
                      max=self.init_max, ema_decay=self.ema_decay, per_channel=self.per_channel,
                      quant_delay=self.quant_delay)
        return config


def _keep_logits(x, y):
    """`y` (x fake-quantized) keeps the logits Keras attached to a softmax/sigmoid output `x`.

    Keras computes a cross-entropy on a softmax/sigmoid output from its logits (`_keras_logits`), "to prevent
    collapsing zero when training". The probability grid [0, 255/256] rounds every probability under 1/512 to an
    exact 0, which the cross-entropy clips at 1e-7, where its gradient is 0: a confidently wrong image would stop
    training. Passing the logits on keeps the loss that of the (fake-quantized) logits, as tfmot's training graph
    has it (its softmax output is not quantized); the output values themselves stay on the grid."""
    logits = getattr(x, "_keras_logits", None)
    if logits is not None and y is not x:
        try:
            y._keras_logits = logits
        except AttributeError:  # a backend tensor without attributes: the loss then reads the probabilities
            pass
    return y


# ----------------------------------------------------------------------------------------------------
# batch-norm folding shared with the importer (numpy or keras tensors, the same float32 operations)
# ----------------------------------------------------------------------------------------------------
def fold_batch_norm(xp, kernel, bias, gamma, beta, mean, variance, epsilon: float, channel_shape=None):
    """Weights that a conv/dense followed by batch norm computes with: kernel * s, beta + (bias - mean) * s with
    s = gamma / sqrt(variance + epsilon), per output channel (the kernel's last axis, or the last two reshaped to
    `channel_shape` for depthwise kernels). `xp` is numpy or keras.ops: the importer folds exactly as the layer
    does, in float32, in this order."""
    factor = gamma / xp.sqrt(variance + epsilon)
    folded_bias = beta + (bias - mean) * factor if bias is not None else beta - mean * factor
    if channel_shape is not None:
        factor = xp.reshape(factor, channel_shape)
    return kernel * factor, folded_bias


def _unbuilt(config: dict) -> dict:
    """A serialized layer without its build config: the wrapper builds it."""
    return {k: v for k, v in config.items() if k not in ("build_config", "compile_config")}


class _QuantWeights(keras.layers.Layer):
    """A float layer (Conv2D, DepthwiseConv2D or Dense), optionally the BatchNormalization after it and a fused
    ReLU/ReLU6, trained with folded, fake-quantized weights.

    Training before `freeze_bn_delay` steps: batch statistics are folded in (and update the moving ones, as Keras'
    BatchNormalization does); after it, and at inference, the moving statistics. `bn_statistics="quantized"`
    (per-channel weights): the statistics of the conv with fake-quantized weights, one conv per step;
    "float" (and per-tensor weights, where quantization does not commute with the per-channel factor): the
    statistics of a separate float conv, as tf.contrib.quantize, two convs per step.
    """

    float_class: type = keras.layers.Layer

    def __init__(self, layer: dict, batch_norm: Optional[dict] = None, activation: str = "linear",
                 activation_name: Optional[str] = None, weight_bits: int = 8, per_channel: bool = True,
                 narrow_range: bool = True, quant_delay: int = 0, freeze_bn_delay: Optional[int] = None,
                 split_activation: Optional[str] = None, bn_statistics: str = "float", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if activation not in FUSED_ACTIVATIONS:
            raise ValueError(f"fused activation must be one of {FUSED_ACTIVATIONS}, got {activation!r}")
        self.layer_config = _unbuilt(layer)
        self.batch_norm_config = None if batch_norm is None else _unbuilt(batch_norm)
        self.activation_kind = activation
        self.activation_name = activation_name
        self.split_activation = split_activation  # the layer's own activation, now an Activation layer after it
        self.weight_bits = _check_bits(weight_bits, 2, 8)
        self.per_channel = bool(per_channel)
        if not narrow_range:
            raise ValueError("weights need narrow_range=True: TFLite's int8 weights have zero point 0, which only the "
                             "symmetric grid [-(2^(bits-1) - 1), 2^(bits-1) - 1] guarantees")
        self.narrow_range = True
        self.quant_delay = int(quant_delay)
        self.freeze_bn_delay = None if freeze_bn_delay is None else int(freeze_bn_delay)
        if bn_statistics not in BN_STATISTICS:
            raise ValueError(f"bn_statistics must be one of {BN_STATISTICS}, got {bn_statistics!r}")
        self.bn_statistics = bn_statistics
        inner = keras.layers.deserialize(self.layer_config)
        if type(inner) is not self.float_class:
            raise ValueError(f"{type(self).__name__} wraps {self.float_class.__name__}, got {type(inner).__name__}")
        if self.layer_config["config"].get("activation", "linear") != "linear":
            raise ValueError(f"{type(self).__name__}: the wrapped layer must have activation='linear'")
        self.inner = inner
        self.bn = None if batch_norm is None else keras.layers.deserialize(self.batch_norm_config)

    def build(self, input_shape: Any) -> None:
        self.inner.build(input_shape)
        if self.bn is not None:
            self.bn.build(self.inner.compute_output_shape(input_shape))
        self.step = self.add_weight(name="step", shape=(), dtype="int64", trainable=False, initializer="zeros")

    # ----- what each wrapped class defines ---------------------------------------------------------
    def _linear(self, x, kernel):
        raise NotImplementedError

    def _channel_shape(self):
        return None

    # -----------------------------------------------------------------------------------------------
    def folded_weights(self, x=None, training: bool = False):
        """(kernel, bias) the layer computes with: folded with the batch norm (batch statistics of `x` while
        training before freeze_bn_delay; moving statistics otherwise)."""
        inner = self.inner
        kernel = inner.kernel
        bias = inner.bias if inner.use_bias else None
        if self.bn is None:
            return kernel, (bias if bias is not None else ops.zeros((self._channels(),)))
        bn = self.bn
        mean, variance = bn.moving_mean, bn.moving_variance
        if training and x is not None:
            mean, variance = self._batch_statistics(x, kernel, bias)
        gamma = bn.gamma if bn.scale else ops.ones_like(bn.moving_mean)
        beta = bn.beta if bn.center else ops.zeros_like(bn.moving_mean)
        return fold_batch_norm(ops, kernel, bias, gamma, beta, mean, variance, bn.epsilon, self._channel_shape())

    def _channels(self) -> int:
        return int(self.inner.kernel.shape[-1]) if self._channel_shape() is None else int(
            self.inner.kernel.shape[-2] * self.inner.kernel.shape[-1])

    def _bn_not_frozen(self):
        if self.freeze_bn_delay is None:
            return ops.convert_to_tensor(True)
        return self.step < self.freeze_bn_delay

    def _batch_statistics(self, x, kernel, bias):
        y = self._linear(x, kernel)
        if bias is not None:
            y = y + bias
        return self._update_statistics(y)

    def _update_statistics(self, y):
        """(mean, variance) to fold with: the batch ones of `y` before freeze_bn_delay (moving statistics updated
        from them, as Keras' BatchNormalization does), the moving ones after."""
        axes = tuple(range(len(y.shape) - 1))
        mean, variance = ops.moments(y, axes=axes)
        bn = self.bn
        update = self._bn_not_frozen()
        momentum = bn.momentum
        new_mean = bn.moving_mean * momentum + ops.stop_gradient(mean) * (1.0 - momentum)
        new_variance = bn.moving_variance * momentum + ops.stop_gradient(variance) * (1.0 - momentum)
        bn.moving_mean.assign(ops.where(update, new_mean, bn.moving_mean))
        bn.moving_variance.assign(ops.where(update, new_variance, bn.moving_variance))
        return ops.where(update, mean, bn.moving_mean), ops.where(update, variance, bn.moving_variance)

    def quantized_kernel(self, kernel):
        lo, hi = symmetric_range(kernel, self.per_channel, self._flat_channel_shape(kernel))
        if self.per_channel and self._channel_shape() is not None:  # depthwise: channels span the last two axes
            flat = ops.reshape(kernel, (*kernel.shape[:-2], -1))
            q = fake_quant(flat, lo, hi, self.weight_bits, self.narrow_range, True)
            return ops.reshape(q, kernel.shape)
        return fake_quant(kernel, lo, hi, self.weight_bits, self.narrow_range, self.per_channel)

    def _flat_channel_shape(self, kernel):
        if self._channel_shape() is None:
            return None
        return (-1, int(kernel.shape[-2] * kernel.shape[-1]))

    def call(self, x, training: Optional[bool] = None):
        active = self.step >= self.quant_delay
        if training and self.bn is not None and self._one_pass():
            y = self._train_one_pass(x, active)
        else:
            kernel, bias = self.folded_weights(x, bool(training))
            q_kernel = self.quantized_kernel(kernel)
            if training and self.quant_delay > 0:
                q_kernel = ops.where(active, q_kernel, kernel)
            y = self._linear(x, q_kernel) + bias
        if training:
            self.step.assign_add(ops.cast(1, "int64"))
        return self._activate(y)

    def _one_pass(self) -> bool:
        """Batch statistics from the quantized conv itself: per-channel symmetric quantization commutes with the
        per-channel batch-norm factor (q(W * s) = s * q(W) on a grid scaled by max|W * s|), so one conv gives both
        the statistics and the folded layer's output."""
        return self.bn_statistics == "quantized" and self.per_channel

    def _train_one_pass(self, x, active):
        """Training with batch norm: y = conv(x, q(W)) (+ bias); statistics of y (batch ones before
        freeze_bn_delay, which also update the moving ones; moving ones after it); then y * s + beta - mean * s
        with s = gamma / sqrt(variance + epsilon): the folded layer conv(x, q(W * s)) + folded bias, with one conv
        instead of tf.contrib.quantize's two (a float conv for the statistics, then the folded one)."""
        inner, bn = self.inner, self.bn
        kernel = inner.kernel
        q_kernel = self.quantized_kernel(kernel)
        if self.quant_delay > 0:
            q_kernel = ops.where(active, q_kernel, kernel)
        y = self._linear(x, q_kernel)
        if inner.use_bias:
            y = y + inner.bias
        mean, variance = self._update_statistics(y)
        gamma = bn.gamma if bn.scale else ops.ones_like(bn.moving_mean)
        beta = bn.beta if bn.center else ops.zeros_like(bn.moving_mean)
        factor = gamma / ops.sqrt(variance + bn.epsilon)
        return y * factor + (beta - mean * factor)

    def _activate(self, y):
        if self.activation_kind == "relu":
            y = ops.relu(y)
        elif self.activation_kind == "relu6":
            y = ops.relu6(y)
        return y

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.inner.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(layer=self.layer_config, batch_norm=self.batch_norm_config, activation=self.activation_kind,
                      activation_name=self.activation_name, weight_bits=self.weight_bits,
                      per_channel=self.per_channel, narrow_range=self.narrow_range, quant_delay=self.quant_delay,
                      freeze_bn_delay=self.freeze_bn_delay, split_activation=self.split_activation,
                      bn_statistics=self.bn_statistics)
        return config


@register
class QuantConv2D(_QuantWeights):
    float_class = keras.layers.Conv2D

    def _linear(self, x, kernel):
        inner = self.inner
        return ops.conv(x, kernel, strides=inner.strides, padding=inner.padding, data_format=inner.data_format,
                        dilation_rate=inner.dilation_rate)


@register
class QuantDepthwiseConv2D(_QuantWeights):
    float_class = keras.layers.DepthwiseConv2D

    def _linear(self, x, kernel):
        inner = self.inner
        return ops.depthwise_conv(x, kernel, strides=inner.strides, padding=inner.padding,
                                  data_format=inner.data_format, dilation_rate=inner.dilation_rate)

    def _channel_shape(self):
        kernel = self.inner.kernel
        return (int(kernel.shape[-2]), int(kernel.shape[-1]))


@register
class QuantDense(_QuantWeights):
    float_class = keras.layers.Dense

    def _linear(self, x, kernel):
        return ops.matmul(x, kernel)


QUANT_WEIGHT_LAYERS: dict[type, type] = {
    keras.layers.Conv2D: QuantConv2D,
    keras.layers.DepthwiseConv2D: QuantDepthwiseConv2D,
    keras.layers.Dense: QuantDense,
}
