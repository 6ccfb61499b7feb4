"""Random valid Keras 3 functional models, deterministic per seed, for differential testing.

    from tests.random_models import random_model
    spec = random_model(seed)          # spec.model, spec.logits (output indices before a final softmax), spec.blocks

The generator is a table of building blocks (`BLOCKS`). Each block says which tensors it accepts (by shape,
batch axis excluded) and builds Keras layers (or keras.ops calls) on one of them; a model is a random walk:
pick a live tensor (usually the newest), pick a block that accepts it, apply it, repeat; then choose outputs so
that every input reaches one. Blocks cover every layer the importer translates, every built-in activation,
batch norm anywhere, residual Add/Subtract/Multiply/Maximum/Minimum/Average, Concatenate (channels and spatial
axes), squeeze-excitation gates, pooling, upsampling, padding/cropping, reshape/flatten, Dense on rank 2-4,
dilation, depth multipliers, several inputs and outputs, and depths past 100 layers.

Weights are drawn from the seed after the model is built (`randomize_weights`): kernels with a fan-in scaled
normal so that activations stay near unit scale, biases and batch-norm statistics random (never Keras'
defaults, which would hide a wrong batch-norm translation).

Adding a block: write `def _my_block(g: Gen, x) -> KerasTensor`, add `Block("my-block", accepts, _my_block)` to
`BLOCKS`. Blocks marked `probe=True` (keras.ops calls, layers another branch may not translate yet) are used
only on request (`random_model(seed, blocks=available_blocks())`, as benchmarks/fuzz_vs_converter.py does):
`available_blocks()` probes each once per process, so a block is generated as soon as the importer supports it.
By default a model uses `LAYER_BLOCKS` only, so a seed's model does not change when the importer learns more. A probe that fails with anything but
UnsupportedLayerError keeps the block (a crash is a bug for the tests to find, not a reason to hide it).
With `available_blocks()` seeds are deterministic only for a given qcompiler version.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

L = keras.layers
Shape = tuple  # a tensor shape without the batch axis

MAX_CHANNELS = 24
MAX_SPATIAL = 24
MAX_ELEMENTS = 4096  # per sample, for any tensor (keeps calibration and the converter fast)

# Built-in Keras activations by name (the importer's table may grow: `probe=True` blocks check each one).
ACTIVATIONS = ("linear", "relu", "relu6", "leaky_relu", "elu", "sigmoid", "tanh", "hard_tanh", "softmax", "silu",
               "swish", "hard_sigmoid", "hard_silu", "hard_swish", "gelu", "selu", "softplus", "softsign",
               "mish", "exponential", "log_softmax", "celu", "glu", "squareplus", "sparse_plus", "log_sigmoid",
               "tanh_shrink", "hard_shrink", "soft_shrink", "threshold", "sparsemax")
# Activations fused into conv/dense layers: the common ones, most often none.
FUSED_ACTIVATIONS = (None, None, None, "relu", "relu6", "sigmoid", "tanh", "swish", "hard_swish", "elu",
                     "leaky_relu", "gelu", "hard_sigmoid")


@dataclass
class Gen:
    """The state of one model's random walk: the rng, layer naming, and live tensors."""
    rng: np.random.Generator
    prefix: str = ""
    count: int = 0
    pool: list = field(default_factory=list)  # every tensor built so far (merge blocks look for partners here)
    activations: tuple = ACTIVATIONS  # the activation names the importer accepts

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{self.prefix}{kind}_{self.count}"

    def choice(self, options: Sequence[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def int(self, lo: int, hi: int) -> int:
        """Uniform in [lo, hi]."""
        return int(self.rng.integers(lo, hi + 1))

    def activation(self, fused: bool = True) -> Optional[str]:
        options = [a for a in (FUSED_ACTIVATIONS if fused else self.activations)
                   if a is None or a in self.activations]
        return self.choice(options)

    def channels(self, current: int) -> int:
        return self.int(1, min(MAX_CHANNELS, max(4, 2 * current)))


def shape_of(x: Any) -> Shape:
    return tuple(int(d) for d in tuple(x.shape)[1:])


def _elements(shape: Shape) -> int:
    return int(np.prod(shape)) if shape else 1


# ----------------------------------------------------------------------------------------------------
# acceptance predicates
# ----------------------------------------------------------------------------------------------------
def rank(*ranks: int) -> Callable[[Shape], bool]:
    return lambda s: len(s) in ranks


def image(min_hw: int = 1) -> Callable[[Shape], bool]:
    return lambda s: len(s) == 3 and s[0] >= min_hw and s[1] >= min_hw


def any_shape(s: Shape) -> bool:
    return True


# ----------------------------------------------------------------------------------------------------
# convolutions
# ----------------------------------------------------------------------------------------------------
def _conv_geometry(g: Gen, s: Shape) -> dict:
    """Kernel, stride, dilation and padding that fit an [H, W, C] input."""
    h, w = s[0], s[1]
    kernel = g.choice([k for k in (1, 3, 5) if k <= min(h, w)] or [1])
    kernel = (kernel, kernel) if g.chance(0.8) else (kernel, g.choice([k for k in (1, 3) if k <= w] or [1]))
    dilation = 1
    stride = 1
    if kernel[0] > 1 and g.chance(0.25):
        dilation = g.choice([d for d in (2, 3) if (kernel[0] - 1) * d + 1 <= h and (kernel[1] - 1) * d + 1 <= w]
                            or [1])
    elif min(h, w) >= 4 and g.chance(0.3):
        stride = 2
    padding = "same" if g.chance(0.6) else "valid"
    return {"kernel_size": kernel, "strides": stride, "dilation_rate": dilation, "padding": padding}


def _conv(g: Gen, x: Any) -> Any:
    s = shape_of(x)
    return L.Conv2D(g.channels(s[2]), activation=g.activation(), use_bias=g.chance(0.8), name=g.name("conv"),
                    **_conv_geometry(g, s))(x)


def _depthwise(g: Gen, x: Any) -> Any:
    s = shape_of(x)
    multiplier = g.choice([m for m in (1, 1, 2, 3) if s[2] * m <= MAX_CHANNELS] or [1])
    return L.DepthwiseConv2D(depth_multiplier=multiplier, activation=g.activation(), use_bias=g.chance(0.8),
                             name=g.name("dwconv"), **_conv_geometry(g, s))(x)


def _separable(g: Gen, x: Any) -> Any:
    s = shape_of(x)
    multiplier = g.choice([m for m in (1, 2) if s[2] * m <= MAX_CHANNELS] or [1])
    return L.SeparableConv2D(g.channels(s[2]), depth_multiplier=multiplier, activation=g.activation(),
                             use_bias=g.chance(0.8), name=g.name("sepconv"), **_conv_geometry(g, s))(x)


def _dense(g: Gen, x: Any) -> Any:
    return L.Dense(g.int(1, 32), activation=g.activation(), use_bias=g.chance(0.8), name=g.name("dense"))(x)


def _batch_norm(g: Gen, x: Any) -> Any:
    return L.BatchNormalization(center=g.chance(0.9), scale=g.chance(0.9), epsilon=g.choice([1e-3, 1e-5, 1e-2]),
                                name=g.name("bn"))(x)


# ----------------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------------
def _activation(g: Gen, x: Any) -> Any:
    return L.Activation(g.activation(fused=False) or "linear", name=g.name("act"))(x)


def _relu_layer(g: Gen, x: Any) -> Any:
    variant = g.int(0, 4)
    max_value = [None, 6.0, float(g.choice([1.0, 2.5, 4.0])), None, 6.0][variant]
    slope = float(g.choice([0.05, 0.1, 0.3])) if variant in (3, 4) else 0.0
    return L.ReLU(max_value=max_value, negative_slope=slope, name=g.name("relu"))(x)


def _relu_threshold(g: Gen, x: Any) -> Any:
    """ReLU with a threshold: Keras computes x * (x > t); its own block (see BLOCKS)."""
    max_value = g.choice([None, 6.0, 2.5])
    slope = float(g.choice([0.0, 0.1]))
    return L.ReLU(max_value=max_value, negative_slope=slope, threshold=float(g.choice([0.25, 0.5])),
                  name=g.name("relu"))(x)


def _leaky_relu(g: Gen, x: Any) -> Any:
    return L.LeakyReLU(negative_slope=float(g.choice([0.01, 0.1, 0.2, 0.3])), name=g.name("leaky"))(x)


def _elu(g: Gen, x: Any) -> Any:
    return L.ELU(alpha=1.0, name=g.name("elu"))(x)


def _elu_alpha(g: Gen, x: Any) -> Any:
    """ELU with alpha != 1: where(x > 0, elu(x), alpha * elu(x)); its own block (see BLOCKS)."""
    return L.ELU(alpha=float(g.choice([0.5, 1.5])), name=g.name("elu"))(x)


def _softmax(g: Gen, x: Any) -> Any:
    return L.Softmax(name=g.name("softmax"))(x)


def _rescaling(g: Gen, x: Any) -> Any:
    offset = 0.0 if g.chance(0.5) else float(np.round(g.rng.normal(0, 0.5), 3))
    return L.Rescaling(float(np.round(g.rng.uniform(0.25, 2.0), 3)), offset=offset, name=g.name("rescale"))(x)


def _dropout(g: Gen, x: Any) -> Any:
    kind = g.choice([L.Dropout, L.GaussianNoise, L.GaussianDropout])
    return kind(0.1, name=g.name("noise"))(x)


# ----------------------------------------------------------------------------------------------------
# pooling, resampling, padding
# ----------------------------------------------------------------------------------------------------
def _pool(kind: Any) -> Callable[[Gen, Any], Any]:
    def build(g: Gen, x: Any) -> Any:
        s = shape_of(x)
        size = g.choice([p for p in (2, 3) if p <= min(s[0], s[1])] or [1])
        strides = g.choice([size, 1, 2] if min(s[0], s[1]) >= 4 else [1])
        return kind(pool_size=size, strides=strides, padding=g.choice(["valid", "same"]),
                    name=g.name(kind.__name__.lower()))(x)

    return build


def _global_pool(g: Gen, x: Any) -> Any:
    kind = g.choice([L.GlobalAveragePooling2D, L.GlobalMaxPooling2D])
    return kind(keepdims=g.chance(0.3), name=g.name("gpool"))(x)


def _upsampling(g: Gen, x: Any) -> Any:
    s = shape_of(x)
    size = (2, 2) if g.chance(0.7) else (g.choice([1, 2]), g.choice([2, 3]))
    size = tuple(k if d * k <= MAX_SPATIAL else 1 for d, k in zip(s[:2], size))
    return L.UpSampling2D(size, name=g.name("upsample"))(x)


def _fits_upsampling(s: Shape) -> bool:
    return len(s) == 3 and s[0] * 2 <= MAX_SPATIAL and _elements(s) * 4 <= MAX_ELEMENTS


def _zero_padding(g: Gen, x: Any) -> Any:
    pads = ((g.int(0, 2), g.int(0, 2)), (g.int(0, 2), g.int(0, 2)))
    return L.ZeroPadding2D(pads, name=g.name("zpad"))(x)


def _cropping(g: Gen, x: Any) -> Any:
    s = shape_of(x)
    top, left = g.int(0, (s[0] - 2) // 2), g.int(0, (s[1] - 2) // 2)
    bottom, right = g.int(0, (s[0] - 2) // 2), g.int(0, (s[1] - 2) // 2)
    if top + bottom + left + right == 0:
        top = 1
    return L.Cropping2D(((top, bottom), (left, right)), name=g.name("crop"))(x)


# ----------------------------------------------------------------------------------------------------
# shape changes
# ----------------------------------------------------------------------------------------------------
def _flatten(g: Gen, x: Any) -> Any:
    return L.Flatten(name=g.name("flatten"))(x)


def _factor(g: Gen, n: int) -> tuple[int, int]:
    """A random a * b == n with a > 1 when possible."""
    divisors = [d for d in range(2, n) if n % d == 0] or [1]
    a = g.choice(divisors)
    return a, n // a


def _reshape(g: Gen, x: Any) -> Any:
    s = shape_of(x)
    n = _elements(s)
    options: list[tuple[int, ...]] = [(n,)]
    if len(s) == 3:
        options += [(s[0] * s[1], s[2]), (s[0], s[1] * s[2])]
    if len(s) in (1, 2):
        options += [_factor(g, n), (*_factor(g, n), 1)]
    if len(s) == 2:
        options += [(s[0], 1, s[1]), (s[0], s[1], 1)]
    target = g.choice(options)
    if g.chance(0.2) and len(target) > 1:  # let Keras resolve one axis
        target = (-1, *target[1:])
    return L.Reshape(target, name=g.name("reshape"))(x)


# ----------------------------------------------------------------------------------------------------
# composite blocks: residuals, branches, gates
# ----------------------------------------------------------------------------------------------------
MERGES = (L.Add, L.Subtract, L.Multiply, L.Maximum, L.Minimum, L.Average)


def _same_shape_branch(g: Gen, x: Any, steps: int) -> Any:
    """A short chain of shape-preserving layers on x."""
    s = shape_of(x)
    y = x
    for _ in range(steps):
        kind = g.int(0, 4)
        if len(s) == 3 and kind == 0:
            y = L.Conv2D(s[2], g.choice([1, 3]), padding="same", activation=g.activation(),
                         dilation_rate=g.choice([1, 1, 2]), name=g.name("res_conv"))(y)
        elif len(s) == 3 and kind == 1:
            y = L.DepthwiseConv2D(3, padding="same", activation=g.activation(), name=g.name("res_dw"))(y)
        elif kind == 2:
            y = _batch_norm(g, y)
        elif kind == 3:
            y = _activation(g, y)
        else:
            y = L.Dense(s[-1], activation=g.activation(), name=g.name("res_dense"))(y)
    return y


def _residual(g: Gen, x: Any) -> Any:
    branch = _same_shape_branch(g, x, g.int(1, 3))
    operands = [x, branch] if g.chance(0.7) else [branch, x]
    merge = L.Subtract if len(operands) == 2 and g.chance(0.15) else g.choice(MERGES)
    if merge is not L.Subtract and g.chance(0.15):
        operands.append(_same_shape_branch(g, x, 1))
    return merge(name=g.name(merge.__name__.lower()))(operands)


def _merge_with_pool(g: Gen, x: Any) -> Any:
    """Merge x with an earlier tensor of the same shape (another input's stream, an older layer)."""
    partners = [t for t in g.pool if t is not x and shape_of(t) == shape_of(x)]
    if not partners:
        return _residual(g, x)
    merge = g.choice(MERGES)
    operands = [x, g.choice(partners)]
    if g.chance(0.5):
        operands.reverse()
    return merge(name=g.name(merge.__name__.lower()))(operands)


def _concat_branches(g: Gen, x: Any) -> Any:
    """Inception-like: 2-3 branches on x concatenated on the channel axis (or a spatial axis)."""
    s = shape_of(x)
    branches = []
    for _ in range(g.int(2, 3)):
        kind = g.int(0, 4)
        if len(s) == 3 and kind == 0:
            b = L.Conv2D(g.int(1, 8), g.choice([1, 3]), padding="same", activation=g.activation(),
                         name=g.name("br_conv"))(x)
        elif len(s) == 3 and kind == 1:
            b = g.choice([L.MaxPooling2D, L.AveragePooling2D])(3, strides=1, padding="same", name=g.name("br_pool"))(x)
        elif kind == 2:
            b = x
        else:
            b = L.Dense(g.int(1, 8), activation=g.activation(), name=g.name("br_dense"))(x)
        branches.append(b)
    axis = -1
    if len(s) >= 2 and g.chance(0.2):  # same channels needed: project every branch to s[-1]
        branches = [b if shape_of(b) == s else L.Dense(s[-1], name=g.name("br_proj"))(b) for b in branches]
        axis = g.int(1, len(s) - 1)
    return L.Concatenate(axis=axis, name=g.name("concat"))(branches)


def _se_gate(g: Gen, x: Any) -> Any:
    """Squeeze-excitation: a per-channel gate computed from the global average, multiplied into x."""
    c = shape_of(x)[2]
    squeezed = L.GlobalAveragePooling2D(keepdims=g.chance(0.5), name=g.name("se_pool"))(x)
    if len(shape_of(squeezed)) == 1:
        squeezed = L.Reshape((1, 1, c), name=g.name("se_reshape"))(squeezed)
    hidden = max(1, c // g.choice([2, 4]))
    if g.chance(0.5):
        h = L.Conv2D(hidden, 1, activation=g.choice(["relu", "swish"]), name=g.name("se_reduce"))(squeezed)
        gate = L.Conv2D(c, 1, activation=g.choice(["sigmoid", "hard_sigmoid"]), name=g.name("se_expand"))(h)
    else:
        h = L.Dense(hidden, activation="relu", name=g.name("se_reduce"))(squeezed)
        gate = L.Dense(c, activation=g.choice(["sigmoid", "hard_sigmoid"]), name=g.name("se_expand"))(h)
    return L.Multiply(name=g.name("se_mul"))([x, gate])


def _conv_bn_act(g: Gen, x: Any) -> Any:
    """The classic unit, so that batch-norm folding and activation fusion see their usual pattern."""
    y = _conv(g, x) if g.chance(0.6) else _depthwise(g, x)
    return L.Activation(g.choice(["relu", "relu6", "swish", "linear"]), name=g.name("act"))(_batch_norm(g, y))


# ----------------------------------------------------------------------------------------------------
# keras.ops blocks (used once the importer translates them; see the module docstring)
# ----------------------------------------------------------------------------------------------------
def _ops_unary(fn_name: str, **kwargs: Any) -> Callable[[Gen, Any], Any]:
    def build(g: Gen, x: Any) -> Any:
        return getattr(keras.ops, fn_name)(x, **kwargs)

    build.__name__ = f"ops_{fn_name}"
    return build


def _ops_binary_self(fn_name: str) -> Callable[[Gen, Any], Any]:
    """op(x, f(x)) with f a shape-preserving layer, or op(x, constant)."""
    def build(g: Gen, x: Any) -> Any:
        if g.chance(0.5):
            other = np.asarray(g.rng.normal(0, 1, (shape_of(x)[-1],)), np.float32)
        else:
            other = _same_shape_branch(g, x, 1)
        return getattr(keras.ops, fn_name)(x, other)

    return build


def _ops_mean(g: Gen, x: Any) -> Any:
    axis = g.choice([-1, 1] if len(shape_of(x)) >= 2 else [-1])
    return g.choice([keras.ops.mean, keras.ops.max, keras.ops.sum])(x, axis=axis, keepdims=g.chance(0.5))


def _ops_transpose(g: Gen, x: Any) -> Any:
    n = len(shape_of(x))
    perm = [0, *(int(i) + 1 for i in g.rng.permutation(n))]
    return keras.ops.transpose(x, perm)


def _ops_reshape(g: Gen, x: Any) -> Any:
    s = shape_of(x)
    return keras.ops.reshape(x, (-1, *_factor(g, _elements(s))))


def _ops_concat(g: Gen, x: Any) -> Any:
    return keras.ops.concatenate([x, _same_shape_branch(g, x, 1)], axis=-1)


def _ops_clip(g: Gen, x: Any) -> Any:
    lo = float(np.round(g.rng.uniform(-2, 0), 2))
    return keras.ops.clip(x, lo, lo + float(np.round(g.rng.uniform(0.5, 4), 2)))


def _ops_pad(g: Gen, x: Any) -> Any:
    return keras.ops.pad(x, [[0, 0], [1, 0], [0, 2], [0, 0]])


def _ops_matmul(g: Gen, x: Any) -> Any:
    w = np.asarray(g.rng.normal(0, 1 / math.sqrt(shape_of(x)[-1]), (shape_of(x)[-1], g.int(1, 16))), np.float32)
    return keras.ops.matmul(x, w)


# ----------------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    name: str
    accepts: Callable[[Shape], bool]
    build: Callable[[Gen, Any], Any]
    weight: float = 1.0
    probe: bool = False  # generated only when qcompiler imports it (keras.ops, layers still being added)
    probe_shape: Shape = (8, 8, 4)


def _small(s: Shape) -> bool:
    return _elements(s) <= MAX_ELEMENTS // 4


BLOCKS: tuple[Block, ...] = (
    Block("conv2d", image(), _conv, 3.0),
    Block("depthwise_conv2d", image(), _depthwise, 1.5),
    Block("separable_conv2d", image(), _separable, 1.0),
    Block("conv-bn-act", image(), _conv_bn_act, 1.5),
    Block("dense", rank(1, 2, 3), _dense, 1.5, probe_shape=(6,)),
    Block("batch_norm", any_shape, _batch_norm, 1.5),
    Block("activation", any_shape, _activation, 1.5),
    Block("relu-layer", any_shape, _relu_layer, 0.7),
    Block("leaky_relu-layer", any_shape, _leaky_relu, 0.3),
    Block("elu-layer", any_shape, _elu, 0.3),
    # Keras computes these two with greater + select (GREATER and SELECT_V2 in int8; ELU's in float): rare, so that
    # they do not hide every other finding (the weights stay: they decide every seed's model).
    Block("relu-threshold", any_shape, _relu_threshold, 0.05),
    Block("elu-alpha", any_shape, _elu_alpha, 0.05),
    Block("softmax-layer", any_shape, _softmax, 0.2),
    Block("rescaling", any_shape, _rescaling, 0.3),
    Block("dropout", any_shape, _dropout, 0.2),
    Block("max_pool", image(2), _pool(L.MaxPooling2D), 0.8),
    Block("avg_pool", image(2), _pool(L.AveragePooling2D), 0.8),
    Block("global_pool", image(), _global_pool, 0.3),
    Block("upsampling", _fits_upsampling, _upsampling, 0.5),
    Block("zero_padding", lambda s: len(s) == 3 and _elements(s) * 2 <= MAX_ELEMENTS and s[0] <= MAX_SPATIAL,
          _zero_padding, 0.5),
    Block("cropping", image(4), _cropping, 0.8),
    Block("flatten", lambda s: len(s) >= 2, _flatten, 0.3),
    Block("reshape", lambda s: len(s) >= 1, _reshape, 0.4),
    Block("residual", any_shape, _residual, 2.0),
    Block("merge-with-earlier", any_shape, _merge_with_pool, 0.8),
    Block("concat-branches", lambda s: len(s) >= 1 and s[-1] <= MAX_CHANNELS - 8, _concat_branches, 1.0),
    Block("se-gate", image(), _se_gate, 0.7),
    # keras.ops on symbolic tensors
    Block("ops.relu", any_shape, _ops_unary("relu"), 0.3, probe=True),
    Block("ops.sigmoid", any_shape, _ops_unary("sigmoid"), 0.2, probe=True),
    Block("ops.tanh", any_shape, _ops_unary("tanh"), 0.2, probe=True),
    Block("ops.silu", any_shape, _ops_unary("silu"), 0.2, probe=True),
    Block("ops.hard_silu", any_shape, _ops_unary("hard_silu"), 0.2, probe=True),
    Block("ops.gelu", any_shape, _ops_unary("gelu"), 0.2, probe=True),
    Block("ops.relu6", any_shape, _ops_unary("relu6"), 0.2, probe=True),
    Block("ops.leaky_relu", any_shape, _ops_unary("leaky_relu", negative_slope=0.1), 0.2, probe=True),
    Block("ops.elu", any_shape, _ops_unary("elu"), 0.2, probe=True),
    Block("ops.softmax", any_shape, _ops_unary("softmax", axis=-1), 0.2, probe=True),
    Block("ops.abs", any_shape, _ops_unary("abs"), 0.2, probe=True),
    Block("ops.negative", any_shape, _ops_unary("negative"), 0.2, probe=True),
    Block("ops.square", any_shape, _ops_unary("square"), 0.2, probe=True),
    Block("ops.add", any_shape, _ops_binary_self("add"), 0.3, probe=True),
    Block("ops.subtract", any_shape, _ops_binary_self("subtract"), 0.2, probe=True),
    Block("ops.multiply", any_shape, _ops_binary_self("multiply"), 0.3, probe=True),
    Block("ops.maximum", any_shape, _ops_binary_self("maximum"), 0.2, probe=True),
    Block("ops.minimum", any_shape, _ops_binary_self("minimum"), 0.2, probe=True),
    Block("ops.clip", any_shape, _ops_clip, 0.2, probe=True),
    Block("ops.reduce", lambda s: len(s) >= 2, _ops_mean, 0.2, probe=True),
    Block("ops.transpose", lambda s: len(s) >= 2, _ops_transpose, 0.2, probe=True),
    Block("ops.reshape", lambda s: len(s) >= 1, _ops_reshape, 0.2, probe=True),
    Block("ops.concatenate", lambda s: s[-1] <= MAX_CHANNELS // 2 if s else False, _ops_concat, 0.2, probe=True),
    Block("ops.pad", lambda s: len(s) == 3 and _small(s), _ops_pad, 0.2, probe=True),
    Block("ops.matmul", lambda s: len(s) in (1, 2, 3), _ops_matmul, 0.2, probe=True, probe_shape=(6,)),
)


# ----------------------------------------------------------------------------------------------------
# probing: which blocks and activations the importer translates
# ----------------------------------------------------------------------------------------------------
def _imports(build: Callable[[Any], Any], shape: Shape) -> bool:
    from qcompiler.frontend.errors import UnsupportedLayerError
    from qcompiler.frontend.keras import import_keras

    x = keras.Input(shape, name="probe_in")
    try:
        model = keras.Model(x, build(x))
    except Exception:  # noqa: BLE001 - Keras cannot build it: nothing to generate
        return False
    try:
        import_keras(model)
    except UnsupportedLayerError:
        return False
    except Exception:  # noqa: BLE001 - any other failure is a bug the differential tests should report
        return True
    return True


@functools.lru_cache(maxsize=None)
def supported_activations() -> tuple[str, ...]:
    """The built-in activation names the importer translates (as an Activation layer)."""
    return tuple(a for a in ACTIVATIONS if _imports(lambda x, a=a: L.Activation(a)(x), (4,)))


@functools.lru_cache(maxsize=None)
def available_blocks() -> tuple[Block, ...]:
    """BLOCKS without the probed blocks the importer does not translate yet."""
    found = []
    for block in BLOCKS:
        if block.probe:
            g = Gen(np.random.default_rng(0), activations=("linear", "relu"))
            if not _imports(lambda x, b=block, g=g: b.build(g, x), block.probe_shape):
                continue
        found.append(block)
    return tuple(found)


# ----------------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------------
_DEPTHWISE_KERNELS = {"depthwise_kernel"}


def randomize_weights(model: keras.Model, rng: np.random.Generator) -> keras.Model:
    """Fan-in scaled kernels, random biases (sometimes zero) and random batch-norm statistics."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        zero_bias = rng.random() < 0.15
        for variable in layer.weights:
            shape = tuple(variable.shape)
            name = variable.name
            if name in ("kernel", "depthwise_kernel", "pointwise_kernel"):
                depthwise = name in _DEPTHWISE_KERNELS or isinstance(layer, L.DepthwiseConv2D)
                fan_in = int(np.prod(shape[:2])) if depthwise and len(shape) == 4 else int(np.prod(shape[:-1]))
                value = rng.normal(0.0, 1.3 / math.sqrt(max(fan_in, 1)), shape)
            elif name == "bias":
                value = np.zeros(shape) if zero_bias else rng.normal(0.0, 0.2, shape)
            elif name == "gamma":
                value = rng.uniform(0.5, 1.5, shape)
            elif name == "beta":
                value = rng.normal(0.0, 0.2, shape)
            elif name == "moving_mean":
                value = rng.normal(0.0, 0.3, shape)
            elif name == "moving_variance":
                value = rng.uniform(0.5, 2.0, shape)
            else:  # a layer added later: small normal values
                value = rng.normal(0.0, 0.3, shape)
            variable.assign(np.asarray(value, np.float32))
    return model


# ----------------------------------------------------------------------------------------------------
# the walk
# ----------------------------------------------------------------------------------------------------
@dataclass
class RandomModel:
    seed: int
    model: keras.Model
    logits: list[int]  # indices of outputs that are pre-softmax logits of another output
    blocks: list[str]  # the blocks applied, in order

    @property
    def layer_count(self) -> int:
        return len(self.model.layers)


def _input_shapes(g: Gen) -> list[Shape]:
    count = g.choice([1] * 7 + [2, 2, 3])
    shapes = []
    for _ in range(count):
        kind = g.choice(["image", "image", "image", "vector", "sequence"])
        if kind == "image":
            hw = g.int(4, 16)
            shapes.append((hw, hw if g.chance(0.7) else g.int(4, 16), g.int(1, 6)))
        elif kind == "vector":
            shapes.append((g.int(2, 48),))
        else:
            shapes.append((g.int(2, 8), g.int(2, 16)))
    if len(shapes) > 1 and g.chance(0.5):  # same-shaped inputs get merged directly
        shapes = [shapes[0]] * len(shapes)
    return shapes


def _depth(g: Gen) -> int:
    """Blocks to apply: mostly a few to a few dozen, one model in ten 100-160 (past 100 layers)."""
    if g.chance(0.1):
        return g.int(100, 160)
    return g.choice([g.int(2, 8), g.int(4, 16), g.int(10, 30), g.int(20, 50)])


def _pick_tensor(g: Gen, leaves: list[Any], live: list[Any]) -> Any:
    """Mostly extend the newest unconsumed tensor; sometimes an older one, or branch off anything."""
    r = g.rng.random()
    if r < 0.75:
        return leaves[-1]
    return g.choice(leaves) if r < 0.87 else g.choice(live)


def _head(g: Gen, x: Any) -> tuple[Any, Any]:
    """A classifier head: (logits, softmax)."""
    if len(shape_of(x)) == 3:
        x = (L.GlobalAveragePooling2D(name=g.name("head_pool")) if g.chance(0.6) else
             L.Flatten(name=g.name("head_flatten")))(x)
    elif len(shape_of(x)) > 1:
        x = L.Flatten(name=g.name("head_flatten"))(x)
    logits = L.Dense(g.int(2, 12), name=g.name("logits"))(x)
    softmax = (L.Softmax(name=g.name("probs")) if g.chance(0.5) else
               L.Activation("softmax", name=g.name("probs")))(logits)
    return logits, softmax


LAYER_BLOCKS: tuple[Block, ...] = tuple(b for b in BLOCKS if not b.probe)


def random_model(seed: int, blocks: Optional[Sequence[Block]] = None, depth: Optional[int] = None,
                 max_depth: Optional[int] = None, exclude_activations: Sequence[str] = ()) -> RandomModel:
    """A random valid functional model, the same for the same seed (and block set). `depth` (number of blocks
    applied) overrides the seed's own, `max_depth` caps it; the walk is otherwise unchanged, so depth=k gives the
    seed's first k steps (handy to shrink a failing model). `exclude_activations`: activation names never drawn
    (e.g. "elu", which BUILTIN_REF cannot run); excluding any changes the seed's model."""
    blocks = tuple(LAYER_BLOCKS if blocks is None else blocks)
    activations = tuple(a for a in supported_activations() if a not in exclude_activations)
    g = Gen(np.random.default_rng(seed), prefix=f"m{seed}_", activations=activations)
    inputs = [keras.Input(s, name=f"in{i}") for i, s in enumerate(_input_shapes(g))]
    steps = _depth(g) if max_depth is None else min(_depth(g), max_depth)
    reaches: dict[int, frozenset] = {id(x): frozenset([i]) for i, x in enumerate(inputs)}
    live: list[Any] = list(inputs)
    leaves: list[Any] = list(inputs)
    g.pool = list(inputs)
    applied: list[str] = []
    for _ in range(depth if depth is not None else steps):
        x = _pick_tensor(g, leaves, live)
        candidates = [b for b in blocks if b.accepts(shape_of(x))]
        weights = np.array([b.weight for b in candidates])
        block = candidates[int(g.rng.choice(len(candidates), p=weights / weights.sum()))]
        y = block.build(g, x)
        if _elements(shape_of(y)) > MAX_ELEMENTS or len(shape_of(y)) == 0 or min(shape_of(y)) == 0:
            continue  # too large or degenerate: drop it (Keras keeps only what reaches the outputs)
        applied.append(block.name)
        reaches[id(y)] = _sources(y, reaches)
        leaves = [t for t in leaves if t is not x and not _feeds(t, y, reaches)] + [y]
        live.append(y)
        g.pool.append(y)
    return _finish(g, seed, inputs, leaves, reaches, applied)


def _feeds(t: Any, y: Any, reaches: dict[int, frozenset]) -> bool:
    """Whether t is among y's direct operands (a merge block consumed it)."""
    history = getattr(y, "_keras_history", None)
    if history is None or history.operation is None:
        return False
    return any(i is t for i in history.operation._inbound_nodes[history.node_index].input_tensors)


def _sources(y: Any, reaches: dict[int, frozenset]) -> frozenset:
    """The model inputs that feed y: walk y's Keras history back to tensors whose sources are known."""
    found: frozenset = frozenset()
    stack, seen = [y], set()
    while stack:
        cur = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if id(cur) in reaches:
            found |= reaches[id(cur)]
            continue
        history = getattr(cur, "_keras_history", None)
        if history is not None and history.operation is not None:
            stack.extend(history.operation._inbound_nodes[history.node_index].input_tensors)
    return found


MAX_OUTPUTS = 3


def _finish(g: Gen, seed: int, inputs: list[Any], leaves: list[Any], reaches: dict, applied: list[str]) -> RandomModel:
    """Outputs: the newest unconsumed tensors (up to MAX_OUTPUTS), plus one per input that reaches none of them;
    half the models get a classifier head on one output, whose logits become an extra output."""
    def computed(t: Any) -> Any:  # an output must not be a model input itself
        return L.Activation("relu6", name=g.name("out_act"))(t) if any(t is x for x in inputs) else t

    chosen = leaves[::-1][:MAX_OUTPUTS]
    covered = frozenset().union(*(reaches.get(id(t), frozenset()) for t in chosen))
    outputs = [computed(t) for t in chosen]
    for i, x in enumerate(inputs):  # every input must reach an output
        if i not in covered:
            own = [t for t in leaves if i in reaches.get(id(t), frozenset())][-1:] or [x]
            outputs.append(computed(own[0]))
            covered |= reaches.get(id(own[0]), frozenset([i]))
    logits = []
    if g.chance(0.5):
        k = g.int(0, len(outputs) - 1)
        logit, probs = _head(g, outputs[k])
        outputs[k] = probs
        outputs.append(logit)
        logits.append(len(outputs) - 1)
        applied.append("softmax-head")
    model = keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=f"random_{seed}")
    randomize_weights(model, g.rng)
    return RandomModel(seed, model, logits, applied)


def random_batch(model: keras.Model, n: int, seed: int) -> list[np.ndarray]:
    """Standard-normal float32 inputs for every model input, in the Keras input order."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *tuple(t.shape)[1:])).astype(np.float32) for t in model.inputs]


if __name__ == "__main__":  # python -m tests.random_models 0 1 2: summaries of a few models
    import sys

    for s in [int(a) for a in sys.argv[1:]] or [0]:
        spec = random_model(s)
        print(f"seed {s}: {spec.layer_count} layers, inputs {[shape_of(t) for t in spec.model.inputs]}, "
              f"outputs {[shape_of(t) for t in spec.model.outputs]}, logits {spec.logits}")
        print("   ", ", ".join(spec.blocks))
