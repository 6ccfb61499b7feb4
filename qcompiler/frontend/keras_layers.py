"""Per-layer translation of Keras 3 layers into IR nodes.

Each converter takes a `LayerContext` (the graph, the Keras layer, the name prefix of this call) and the IR
values of the layer's positional tensor inputs, emits nodes and returns the layer's output value. Weights are
copied as float32 constants in TFLite layouts. Fused Keras activations become separate nodes after the main
op; the fusion passes fold them later.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import keras
import numpy as np

from qcompiler.frontend.errors import UnsupportedLayerError
from qcompiler.ir.graph import Graph, Value


@dataclass
class LayerContext:
    graph: Graph
    layer: Any  # the keras.layers.Layer being translated
    base: str  # value-name prefix for this call: nested model path + layer name
    weights: dict[tuple[int, str], Value] = field(default_factory=dict)  # shared across calls of one layer

    @property
    def class_name(self) -> str:
        return type(self.layer).__name__

    def op(self, op: str, *operands: Value, suffix: Optional[str] = None, **attrs: Any) -> Value:
        return self.graph.op(op, *operands, name=f"{self.base}/{suffix or op}", layer=self.layer.name, **attrs)

    def const(self, array: Any, suffix: str) -> Value:
        return self.graph.const(np.asarray(array, np.float32), name=f"{self.base}/{suffix}", layer=self.layer.name)

    def weight(self, array: Any, suffix: str) -> Value:
        """A constant holding layer weights; repeated calls of a shared layer reuse the same constant."""
        key = (id(self.layer), suffix)
        if key not in self.weights:
            self.weights[key] = self.const(array, suffix)
        return self.weights[key]

    def unsupported(self, reason: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(self.layer.name, self.class_name, supported_layers(), reason)


Converter = Callable[[LayerContext, Sequence[Value]], Value]
ActivationFn = Callable[[LayerContext, Value], Value]


def _weights(variable: Any, perm: Optional[Sequence[int]] = None) -> np.ndarray:
    """A weight as read-only float32 numpy, its axes permuted by `perm` (e.g. HWIO -> OHWI).

    A TensorFlow variable is read with one ReadVariableOp and viewed without a copy (`_variable_array`), and a
    permuted kernel is that view transposed, not a copy (a lazy transpose, qcompiler/ir/layout.py): its values
    are moved once, by the writer into the output file in TFLite's layout (or by a batch-norm fold into its
    product), instead of twice (a transposed copy in fresh memory, then the file). On the benchmark VM mapping
    fresh memory costs more than copying it (~2 µs a 4 KiB page); VGG16's import took 0.02 s instead of 0.1-0.2 s
    of CPU (TensorFlow's transposes, for kernels over 2^18 values; numpy's below)."""
    array = _variable_array(variable)
    return array if perm is None else array.transpose(perm)


def _variable_tensor(variable: Any) -> Any:
    """The current value of a Keras variable as a TensorFlow eager tensor (one ReadVariableOp, no copy: the
    tensor shares the variable's buffer, and TensorFlow copies the buffer before any later assignment writes to
    it), or None where the variable is not a TensorFlow resource variable (another backend, a plain array)."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    value = getattr(variable, "value", None)
    if not isinstance(value, tf.Variable) or not tf.executing_eagerly():
        return None
    return tf.raw_ops.ReadVariableOp(resource=value.handle, dtype=value.dtype)


# The weights of the model being imported, read in one loop before its layers are translated (`read_weights`).
_READ_WEIGHTS: ContextVar[Optional[dict[int, np.ndarray]]] = ContextVar("qcompiler_read_weights", default=None)


@contextmanager
def read_weights(model: Any) -> Iterator[None]:
    """Read every weight of `model` (`_variable_array`) in one loop, for the layer translators to use while the
    block runs. TensorFlow's eager op call costs ~20 us a variable in a loop of reads, ~60 us between the
    translations of layers, where the Python work in between has evicted its code from the CPU's caches
    (InceptionV3's 378 variables: ~9 ms against ~25 ms of CPU)."""
    arrays = {id(variable): _variable_array(variable) for variable in model.weights}
    token = _READ_WEIGHTS.set(arrays)
    try:
        yield
    finally:
        _READ_WEIGHTS.reset(token)


def _variable_array(variable: Any) -> np.ndarray:
    """A Keras variable's value as read-only float32 numpy: for a TensorFlow variable a view of the tensor
    `_variable_tensor` reads (no copy; `np.asarray(variable)` copied and went through Keras' and TensorFlow's
    Python layers, ~70 us a variable against ~10 us), otherwise `np.asarray`. Read already (`read_weights`)
    where the import read them all first."""
    read = _READ_WEIGHTS.get()
    if read is not None and id(variable) in read:
        return read[id(variable)]
    tensor = _variable_tensor(variable)
    if tensor is None:
        return _read_only(np.asarray(variable, np.float32))
    return _as_float32(tensor)


def _as_float32(tensor: Any) -> np.ndarray:
    array = np.asarray(tensor)  # an eager tensor's __array__ without a dtype: a view of its buffer
    return _read_only(array if array.dtype == np.float32 else array.astype(np.float32))


def _read_only(array: np.ndarray) -> np.ndarray:
    """Weights are constants: a view of a TensorFlow buffer must never be written through."""
    array.flags.writeable = False
    return array


def _check_channels_last(ctx: LayerContext) -> None:
    data_format = getattr(ctx.layer, "data_format", "channels_last")
    if data_format != "channels_last":
        raise ctx.unsupported(f"data_format='{data_format}' is not supported; qcompiler works in NHWC. "
                              "Rebuild the model with data_format='channels_last'")


def _static_dims(ctx: LayerContext, x: Value, axes: Sequence[int]) -> list[int]:
    dims = [x.type.shape[a] for a in axes]
    if any(d is None for d in dims):
        raise ctx.unsupported(f"needs a static shape on axes {list(axes)} but its input is {x.type}; "
                              "give the model Input a fixed spatial shape")
    return [int(d) for d in dims]


# ----------------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------------
def relu_general(ctx: LayerContext, x: Value, negative_slope: float = 0.0, max_value: Optional[float] = None,
                 threshold: float = 0.0) -> Value:
    """keras.activations.relu, step for step (keras/src/activations/activations.py, ReLU.static_call)."""
    negative_slope, threshold = float(negative_slope), float(threshold)
    if negative_slope != 0.0 and max_value is None and threshold == 0.0:
        return ctx.op("leaky_relu", x, alpha=negative_slope)
    threshold_const = ctx.const(np.float32(threshold), "threshold") if threshold != 0.0 else None
    negative_part = None
    if negative_slope != 0.0 and threshold != 0.0:  # relu(-x + threshold): TensorFlow makes neg(x) + t a SUB
        negative_part = ctx.op("relu", ctx.op("sub", threshold_const, x, suffix="neg"), suffix="neg_relu")
    elif negative_slope != 0.0:  # relu(-x): a NEG, which the converter keeps (a float island; random seed 4094)
        negative_part = ctx.op("relu", ctx.op("neg", x, suffix="neg"), suffix="neg_relu")
    clip_max = max_value is not None
    if threshold != 0.0:  # x where x > threshold, else 0
        above = ctx.op("greater", x, threshold_const)
        y = ctx.op("select", above, x, ctx.const(np.float32(0.0), "zero"))
    elif max_value is not None and float(max_value) == 6.0:
        y = ctx.op("relu6", x)
        clip_max = False
    else:
        y = ctx.op("relu", x)
    if clip_max:  # ops.clip(y, 0, max_value): tf.clip_by_value is minimum, then maximum
        y = ctx.op("minimum", y, ctx.const(np.float32(max_value), "max_value"))
        # Not redundant after a relu for the converter: canonicalize makes it a RELU that TFLiteConverter keeps
        # after the MINIMUM, with its own calibrated range (wider when an in-place op after it unions it).
        y = ctx.op("maximum", y, ctx.const(np.float32(0.0), "clip_min"))
    if negative_part is not None:
        scaled = ctx.op("mul", negative_part, ctx.const(np.float32(negative_slope), "negative_slope"))
        y = ctx.op("sub", y, scaled)
    return y


def elu_general(ctx: LayerContext, x: Value, alpha: float) -> Value:
    """keras.activations.elu: elu(x) where x > 0, alpha * elu(x) elsewhere (TF backend)."""
    e = ctx.op("elu", x)
    if float(alpha) == 1.0:
        return e
    positive = ctx.op("greater", x, ctx.const(np.float32(0.0), "zero"))
    scaled = ctx.op("mul", e, ctx.const(np.float32(alpha), "alpha"))
    return ctx.op("select", positive, e, scaled)


def _hard_sigmoid(ctx: LayerContext, x: Value) -> Value:
    shifted = ctx.op("add", x, ctx.const(np.float32(3.0), "three"))
    return ctx.op("mul", ctx.op("relu6", shifted), ctx.const(np.float32(1.0 / 6.0), "one_sixth"))


def _silu(ctx: LayerContext, x: Value) -> Value:
    return ctx.op("mul", x, ctx.op("sigmoid", x))


ACTIVATIONS: dict[str, ActivationFn] = {
    "linear": lambda ctx, x: x,
    "relu": lambda ctx, x: ctx.op("relu", x),
    "relu6": lambda ctx, x: ctx.op("relu6", x),
    "leaky_relu": lambda ctx, x: ctx.op("leaky_relu", x, alpha=0.2),  # keras.activations.leaky_relu default
    "elu": lambda ctx, x: ctx.op("elu", x),
    "sigmoid": lambda ctx, x: ctx.op("sigmoid", x),
    "tanh": lambda ctx, x: ctx.op("tanh", x),
    "hard_tanh": lambda ctx, x: ctx.op("relu_n1_to_1", x),
    "softmax": lambda ctx, x: ctx.op("softmax", x),
    "silu": _silu,
    "hard_sigmoid": _hard_sigmoid,
    "hard_silu": lambda ctx, x: ctx.op("hard_swish", x),
    "gelu": lambda ctx, x: ctx.op("gelu", x, approximate=False),  # keras.activations.gelu default
}
ACTIVATION_ALIASES = {"swish": "silu", "hard_swish": "hard_silu"}


def activation_name(fn: Any) -> Optional[str]:
    """Name of a built-in Keras activation function, or None for anything else."""
    for name in ACTIVATIONS:
        if fn is getattr(keras.activations, name):
            return name
    return None


def emit_activation(ctx: LayerContext, x: Value, fn: Any) -> Value:
    name = activation_name(fn)
    if name is None:
        label = getattr(fn, "__name__", type(fn).__name__)
        supported = ", ".join(sorted([*ACTIVATIONS, *ACTIVATION_ALIASES]))
        raise ctx.unsupported(f"activation '{label}' is not supported; use one of: {supported}")
    return ACTIVATIONS[name](ctx, x)


# ----------------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------------
def _conv2d(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    layer = ctx.layer
    _check_channels_last(ctx)
    in_channels = int(layer.kernel.shape[2]) * layer.groups
    if layer.groups != 1 and layer.groups == in_channels:  # one group per channel: a depthwise convolution
        return _grouped_as_depthwise(ctx, xs)
    if layer.groups != 1:
        raise ctx.unsupported(f"groups={layer.groups} (grouped convolution) has no TFLite builtin; "
                              "use groups=1, groups=input channels (depthwise), or split the channels into "
                              "separate Conv2D layers")
    operands = [xs[0], ctx.weight(_weights(layer.kernel, (3, 0, 1, 2)), "kernel")]  # HWIO -> OHWI
    if layer.use_bias:
        operands.append(ctx.weight(_weights(layer.bias), "bias"))
    y = ctx.op("conv2d", *operands, strides=list(layer.strides), padding=layer.padding,
               dilation=list(layer.dilation_rate))
    return emit_activation(ctx, y, layer.activation)



def _grouped_as_depthwise(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    """Conv2D with groups == input channels (ConvNeXt): kernel [kh, kw, 1, c*m], output channel c*m + j reads
    input channel c, exactly TFLite's depthwise layout."""
    layer = ctx.layer
    kernel = _weights(layer.kernel)
    kh, kw, _, filters = kernel.shape
    operands = [xs[0], ctx.weight(kernel.reshape(1, kh, kw, filters), "kernel")]
    if layer.use_bias:
        operands.append(ctx.weight(_weights(layer.bias), "bias"))
    y = ctx.op("depthwise_conv2d", *operands, strides=list(layer.strides), padding=layer.padding,
               dilation=list(layer.dilation_rate), depth_multiplier=filters // layer.groups)
    return emit_activation(ctx, y, layer.activation)

def _depthwise_kernel(kernel: np.ndarray) -> np.ndarray:
    """Keras [kh, kw, c, m] -> TFLite [1, kh, kw, c*m] (output channel c*m + j, as tf.nn.depthwise_conv2d)."""
    kh, kw, c, m = kernel.shape
    return kernel.reshape(1, kh, kw, c * m)


def _depthwise_conv2d(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    layer = ctx.layer
    _check_channels_last(ctx)
    operands = [xs[0], ctx.weight(_depthwise_kernel(_weights(layer.kernel)), "kernel")]
    if layer.use_bias:
        operands.append(ctx.weight(_weights(layer.bias), "bias"))
    y = ctx.op("depthwise_conv2d", *operands, strides=list(layer.strides), padding=layer.padding,
               dilation=list(layer.dilation_rate), depth_multiplier=int(layer.depth_multiplier))
    return emit_activation(ctx, y, layer.activation)


def _separable_conv2d(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    layer = ctx.layer
    _check_channels_last(ctx)
    depthwise = ctx.weight(_depthwise_kernel(_weights(layer.depthwise_kernel)), "depthwise_kernel")
    y = ctx.op("depthwise_conv2d", xs[0], depthwise, strides=list(layer.strides), padding=layer.padding,
               dilation=list(layer.dilation_rate), depth_multiplier=int(layer.depth_multiplier))
    operands = [y, ctx.weight(_weights(layer.pointwise_kernel, (3, 0, 1, 2)), "pointwise_kernel")]
    if layer.use_bias:
        operands.append(ctx.weight(_weights(layer.bias), "bias"))
    y = ctx.op("conv2d", *operands, strides=[1, 1], padding="valid", dilation=[1, 1], suffix="pointwise")
    return emit_activation(ctx, y, layer.activation)


def _dense(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    """On a rank > 2 input Keras computes a tensordot and then adds the bias: the bias stays a separate add
    (TFLiteConverter keeps it apart too, see passes/rewriter.batched_fc_reason)."""
    layer = ctx.layer
    operands = [xs[0], ctx.weight(_weights(layer.kernel, (1, 0)), "kernel")]  # [in, out] -> [out, in]
    separate_bias = layer.use_bias and xs[0].type.rank > 2
    if layer.use_bias and not separate_bias:
        operands.append(ctx.weight(_weights(layer.bias), "bias"))
    y = ctx.op("fully_connected", *operands)
    if separate_bias:
        y = ctx.op("add", y, ctx.weight(_weights(layer.bias), "bias"), suffix="bias_add")
    return emit_activation(ctx, y, layer.activation)


def _batch_norm(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    layer, x = ctx.layer, xs[0]
    if layer.axis % x.type.rank != x.type.rank - 1:
        raise ctx.unsupported(f"normalizes axis {layer.axis} of a rank-{x.type.rank} input; only the last "
                              "(channel) axis is supported")
    mean = _weights(layer.moving_mean)
    gamma = _weights(layer.gamma) if layer.scale else np.ones_like(mean)
    beta = _weights(layer.beta) if layer.center else np.zeros_like(mean)
    params = [ctx.weight(gamma, "gamma"), ctx.weight(beta, "beta"), ctx.weight(mean, "moving_mean"),
              ctx.weight(_weights(layer.moving_variance), "moving_variance")]
    return ctx.op("batch_norm", x, *params, epsilon=float(layer.epsilon))


def _activation_layer(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    if activation_name(ctx.layer.activation) == "linear":
        return ctx.op("identity", xs[0])
    return emit_activation(ctx, xs[0], ctx.layer.activation)


def _relu_layer(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    layer = ctx.layer
    return relu_general(ctx, xs[0], layer.negative_slope, layer.max_value, layer.threshold)


def _softmax_layer(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    axis, rank = ctx.layer.axis, xs[0].type.rank
    axes = list(axis) if isinstance(axis, (tuple, list)) else [axis]
    if len(axes) != 1 or axes[0] % rank != rank - 1:
        raise ctx.unsupported(f"softmax over axis {axis} of a rank-{rank} input; only the last axis is supported")
    return ctx.op("softmax", xs[0])


def _pool_attrs(ctx: LayerContext) -> dict[str, Any]:
    _check_channels_last(ctx)
    layer = ctx.layer
    return {"pool_size": list(layer.pool_size), "strides": list(layer.strides), "padding": layer.padding}


def _global_pool(op: str) -> Converter:
    def convert(ctx: LayerContext, xs: Sequence[Value]) -> Value:
        _check_channels_last(ctx)
        return ctx.op(op, xs[0], axes=[1, 2], keepdims=bool(ctx.layer.keepdims))

    return convert


def _flatten(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    _check_channels_last(ctx)
    return ctx.op("flatten", xs[0])


def _reshape(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    target = [int(d) for d in ctx.layer.target_shape]
    if -1 in target:  # resolve it here: the IR keeps the single -1 for the batch
        x = xs[0]
        total = int(np.prod(_static_dims(ctx, x, range(1, x.type.rank))))
        known = int(np.prod([d for d in target if d != -1]))
        target[target.index(-1)] = total // known
    # Keras' Reshape layer builds its target from the input's batch at run time (ops.shape(x)[0])
    return ctx.op("reshape", xs[0], shape=[-1, *target], runtime_batch=True)


def _merge(op: str) -> Converter:
    """Add / Subtract / Multiply / Maximum / Minimum: a left-to-right chain, as Keras computes it."""
    def convert(ctx: LayerContext, xs: Sequence[Value]) -> Value:
        _check_equal_ranks(ctx, xs)
        y = xs[0]
        for i, x in enumerate(xs[1:]):
            y = ctx.op(op, y, x, suffix=op if len(xs) == 2 else f"{op}_{i}")
        return y

    return convert


def _average(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    total = _merge("add")(ctx, xs)
    return ctx.op("mul", total, ctx.const(np.float32(1.0 / len(xs)), "inv_count"))


def _check_equal_ranks(ctx: LayerContext, xs: Sequence[Value]) -> None:
    if len({x.type.rank for x in xs}) != 1:
        raise ctx.unsupported(f"inputs of different ranks {[str(x.type) for x in xs]}; reshape them to one rank")


def _concatenate(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    _check_equal_ranks(ctx, xs)
    return ctx.op("concat", *xs, axis=int(ctx.layer.axis) % xs[0].type.rank)


def _zero_padding(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    _check_channels_last(ctx)
    (top, bottom), (left, right) = ctx.layer.padding
    return ctx.op("pad", xs[0], paddings=[[0, 0], [int(top), int(bottom)], [int(left), int(right)], [0, 0]])


def _cropping(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    _check_channels_last(ctx)
    (top, bottom), (left, right) = ctx.layer.cropping
    height, width = _static_dims(ctx, xs[0], [1, 2])
    size = [-1, height - top - bottom, width - left - right, -1]
    return ctx.op("slice", xs[0], begin=[0, int(top), int(left), 0], size=[int(s) for s in size])


def _upsampling(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    _check_channels_last(ctx)
    if ctx.layer.interpolation != "nearest":
        raise ctx.unsupported(f"interpolation='{ctx.layer.interpolation}' is not supported; use 'nearest'")
    height, width = _static_dims(ctx, xs[0], [1, 2])
    sh, sw = ctx.layer.size
    return ctx.op("resize_nearest", xs[0], size=[height * int(sh), width * int(sw)])


def _rescaling(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    try:
        scale = np.asarray(ctx.layer.scale, np.float32)
        offset = np.asarray(ctx.layer.offset, np.float32)
    except (TypeError, ValueError):
        raise ctx.unsupported(f"scale {ctx.layer.scale!r} and offset {ctx.layer.offset!r} must be numbers") from None
    y = ctx.op("mul", xs[0], ctx.weight(scale, "scale"))
    if np.any(offset != 0):
        y = ctx.op("add", y, ctx.weight(offset, "offset"))
    return y


def _channel_vector(ctx: LayerContext, array: np.ndarray, rank: int, axes: Sequence[int]) -> np.ndarray:
    """Parameters over `axes` of a rank-`rank` input: [C] when only the last axis is kept (what the folding
    passes and TFLite kernels like best), else their broadcast shape (1 on every other axis)."""
    array = np.asarray(array, np.float32)
    if list(axes) == [rank - 1]:
        return array.reshape(-1)
    dims = iter(d for d in array.shape if d != 1) if array.ndim != len(axes) else iter(array.shape)
    return array.reshape([next(dims) if a in axes else 1 for a in range(rank)])


def _normalization(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    """(x - mean) / max(sqrt(var), eps) as sub + mul by the constant reciprocal (the converter's SUB, MUL);
    `invert=True` is x * max(sqrt(var), eps) + mean. Identity halves (mean 0, scale 1) are left out."""
    layer, x = ctx.layer, xs[0]
    mean = np.asarray(keras.ops.convert_to_numpy(layer.mean), np.float32)
    variance = np.asarray(keras.ops.convert_to_numpy(layer.variance), np.float32)
    denominator = np.maximum(np.sqrt(variance), np.float32(keras.backend.epsilon()))
    keep = sorted(a % x.type.rank for a in layer._keep_axis)
    if keep and keep[0] == 0:
        raise ctx.unsupported("normalizes along the batch axis")

    def per_axis(array: np.ndarray) -> np.ndarray:
        return _channel_vector(ctx, array.reshape(layer._broadcast_shape), x.type.rank, keep)

    if layer.invert:
        y = x if np.all(denominator == 1) else ctx.op("mul", x, ctx.weight(per_axis(denominator), "scale"))
        if np.any(mean):
            return ctx.op("add", y, ctx.weight(per_axis(mean), "mean"))
        return y if y is not x else ctx.op("identity", x)
    y = x if not np.any(mean) else ctx.op("sub", x, ctx.weight(per_axis(mean), "mean"))
    scale = np.float32(1.0) / denominator
    if np.all(scale == 1):
        return y if y is not x else ctx.op("identity", x)
    return ctx.op("mul", y, ctx.weight(per_axis(scale), "inv_stddev"))


def _layer_norm(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    """keras.ops.layer_normalization, op for op as Keras computes it (and TFLiteConverter therefore converts it):
    mean and variance over `axis` (MEAN, SQUARED_DIFFERENCE, MEAN, as tf.nn.moments), inv = rsqrt(var + eps)
    * gamma, then x * inv + (-mean * inv + beta). rms_scaling: x * rsqrt(var + eps), then * gamma. gamma and
    beta are always written; canonicalize drops a multiply by ones or an add of zeros that does not broadcast,
    as the converter does (a gamma of ones stays: it broadcasts inv over the normalized axis). The NEG stays
    float in integer models, as in the converter's."""
    layer, x = ctx.layer, xs[0]
    rank = x.type.rank
    axes = sorted(int(a) % rank for a in (layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]))
    if 0 in axes:
        raise ctx.unsupported(f"normalizes over the batch axis (axis={layer.axis})")
    mean = ctx.op("mean", x, axes=axes, keepdims=True)
    variance = ctx.op("mean", ctx.op("squared_difference", x, mean), axes=axes, keepdims=True, suffix="variance")
    shifted = ctx.op("add", variance, ctx.const(np.float32(layer.epsilon), "epsilon"))
    inv = ctx.op("rsqrt", shifted)
    gamma = _weights(layer.gamma) if layer.scale else None
    gamma_value = None if gamma is None else ctx.weight(_channel_vector(ctx, gamma, rank, axes), "gamma")
    if layer.rms_scaling:
        y = ctx.op("mul", x, inv, suffix="normalized")
        return y if gamma_value is None else ctx.op("mul", y, gamma_value, suffix="scaled")
    if gamma_value is not None:
        inv = ctx.op("mul", inv, gamma_value, suffix="scale")
    shift = ctx.op("mul", ctx.op("neg", mean, suffix="neg_mean"), inv, suffix="shift")
    beta = _weights(layer.beta) if layer.center else None
    if beta is not None:
        shift = ctx.op("add", shift, ctx.weight(_channel_vector(ctx, beta, rank, axes), "beta"), suffix="offset")
    return ctx.op("add", ctx.op("mul", x, inv, suffix="normalized"), shift)


def _rms_norm(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    """keras.ops.rms_normalization: x * rsqrt(mean(x * x) + eps) * scale."""
    layer, x = ctx.layer, xs[0]
    rank = x.type.rank
    axes = sorted(int(a) % rank for a in (layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]))
    if 0 in axes:
        raise ctx.unsupported(f"normalizes over the batch axis (axis={layer.axis})")
    mean_square = ctx.op("mean", ctx.op("mul", x, x, suffix="square"), axes=axes, keepdims=True)
    epsilon = keras.backend.epsilon() if layer.epsilon is None else layer.epsilon
    inv = ctx.op("rsqrt", ctx.op("add", mean_square, ctx.const(np.float32(epsilon), "epsilon")))
    y = ctx.op("mul", x, inv, suffix="normalized")
    scale = _weights(layer.scale)
    if np.all(scale == 1):
        return y
    return ctx.op("mul", y, ctx.weight(_channel_vector(ctx, scale, rank, axes), "scale"), suffix="scaled")


def _custom_scale(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    """InceptionResNetV2's CustomScaleLayer: inputs[0] + inputs[1] * scale."""
    if len(xs) != 2:
        raise ctx.unsupported(f"takes 2 tensors, got {len(xs)}")
    scaled = ctx.op("mul", xs[1], ctx.const(np.float32(ctx.layer.scale), "scale"))
    return ctx.op("add", xs[0], scaled)


def _layer_scale(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    """ConvNeXt's LayerScale: x * gamma, gamma per channel."""
    return ctx.op("mul", xs[0], ctx.weight(_weights(ctx.layer.gamma), "gamma"))


def _known_application_layers() -> dict[type, Converter]:
    """Layers that keras.applications models define for themselves, translated by what their call() does
    (keras/src/applications/*.py); matched by exact class, so a subclass with another call() is refused."""
    from keras.src.applications import convnext, inception_resnet_v2

    return {
        inception_resnet_v2.CustomScaleLayer: _custom_scale,
        convnext.LayerScale: _layer_scale,
        convnext.StochasticDepth: _identity,  # drops paths only when training
    }


def _identity(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    return ctx.op("identity", xs[0])


LAMBDA_REASON = ("Lambda layers hold arbitrary Python code, which qcompiler never executes; "
                 "rewrite the Lambda with built-in Keras layers")


def _lambda(ctx: LayerContext, xs: Sequence[Value]) -> Value:
    raise ctx.unsupported(LAMBDA_REASON)


L = keras.layers
CONVERTERS: dict[type, Converter] = {
    L.Conv2D: _conv2d,
    L.DepthwiseConv2D: _depthwise_conv2d,
    L.SeparableConv2D: _separable_conv2d,
    L.Dense: _dense,
    L.BatchNormalization: _batch_norm,
    L.Activation: _activation_layer,
    L.ReLU: _relu_layer,
    L.LeakyReLU: lambda ctx, xs: ctx.op("leaky_relu", xs[0], alpha=float(ctx.layer.negative_slope)),
    L.ELU: lambda ctx, xs: elu_general(ctx, xs[0], ctx.layer.alpha),
    L.Softmax: _softmax_layer,
    L.MaxPooling2D: lambda ctx, xs: ctx.op("max_pool2d", xs[0], **_pool_attrs(ctx)),
    L.AveragePooling2D: lambda ctx, xs: ctx.op("avg_pool2d", xs[0], **_pool_attrs(ctx)),
    L.GlobalAveragePooling2D: _global_pool("mean"),
    L.GlobalMaxPooling2D: _global_pool("reduce_max"),
    L.Flatten: _flatten,
    L.Reshape: _reshape,
    L.Add: _merge("add"),
    L.Subtract: _merge("sub"),
    L.Multiply: _merge("mul"),
    L.Maximum: _merge("maximum"),
    L.Minimum: _merge("minimum"),
    L.Average: _average,
    L.Concatenate: _concatenate,
    L.ZeroPadding2D: _zero_padding,
    L.Cropping2D: _cropping,
    L.UpSampling2D: _upsampling,
    L.Rescaling: _rescaling,
    L.Dropout: _identity,
    L.SpatialDropout1D: _identity,
    L.SpatialDropout2D: _identity,
    L.SpatialDropout3D: _identity,
    L.GaussianNoise: _identity,
    L.GaussianDropout: _identity,
    L.AlphaDropout: _identity,
    L.Lambda: _lambda,
    L.Normalization: _normalization,
    L.LayerNormalization: _layer_norm,
    L.RMSNormalization: _rms_norm,
}
del L
CONVERTERS.update(_known_application_layers())


def supported_layers() -> list[str]:
    """Class names of the layers the importer translates (plus InputLayer and nested models)."""
    names = {cls.__name__ for cls in CONVERTERS if cls is not keras.layers.Lambda}
    return sorted(names | {"InputLayer", "Functional", "Sequential"})
