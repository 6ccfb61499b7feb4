"""Very deep Keras models (thousands of layers) for the scaling test and benchmarks/scaling.py.

A chain of residual blocks on a small tensor, in nested stages of at most 250 layers: convolution blocks on
4x4x16 maps, then dense blocks on 16 features. Most layers carry no weights (ReLU, Add, Maximum, ...), because
every Keras weight costs ~10-20 ms to create in TensorFlow; one layer in five has weights (Conv2D,
DepthwiseConv2D, Dense, BatchNormalization).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tests.zoo import randomize_batchnorm  # noqa: E402

layers = keras.layers

# One block per entry: the layers it adds, in order. `skip` is the block's input.
STAGE_LAYERS = 250
CHANNELS = 16  # a 3x3 kernel then has 2304 weights: enough for dynamic-range quantization (at least 1024)
# A block reads its input `skip` and adds a small signed update to it (the last weight layer is initialised
# small), so the output still depends on the input after hundreds of blocks (a deep random net whose blocks
# saturate or contract forgets its input, and then any compile bug that keeps the constant would pass).
_CONV_BLOCK = ("conv", "bn", "relu", "maximum", "relu6", "minimum", "relu", "relu6", "depthwise", "add")
_DENSE_BLOCK = ("dense", "bn", "relu", "maximum", "relu6", "minimum", "relu", "relu6", "dense_small", "add")


def _apply(kind: str, x, skip, first, i: int):
    """Layer `kind` on `x`; `skip` is the block's input, `first` the output of its second layer."""
    small = keras.initializers.RandomNormal(stddev=0.05, seed=i)
    if kind == "conv":
        return layers.Conv2D(CHANNELS, 3 if i % 2 else 1, padding="same")(x)
    if kind == "depthwise":
        return layers.DepthwiseConv2D(3, padding="same", depthwise_initializer=small)(x)
    if kind == "dense":
        return layers.Dense(CHANNELS)(x)
    if kind == "dense_small":
        return layers.Dense(CHANNELS, kernel_initializer=small)(x)
    if kind == "bn":
        return layers.BatchNormalization()(x) if i % 3 == 0 else layers.ReLU()(x)
    if kind == "relu":
        return layers.ReLU()(x)
    if kind == "relu6":
        return layers.ReLU(max_value=6.0)(x)
    if kind == "add":
        return layers.Add()([skip, x])
    if kind == "maximum":
        return layers.Maximum()([x, skip])
    if kind == "minimum":
        return layers.Minimum()([x, first])
    raise ValueError(kind)


def _blocks(n_layers: int) -> list[tuple[str, ...]]:
    """The layer kinds, block by block (a block's first layer reads the block input, `skip`)."""
    budget = n_layers - 1  # the final Dense
    conv_part = budget // 2
    blocks: list[tuple[str, ...]] = []
    for kinds, end in ((_CONV_BLOCK, conv_part - 1), (_DENSE_BLOCK, budget)):
        count = sum(map(len, blocks))
        while count < end:
            blocks.append(kinds[:end - count])
            count += len(blocks[-1])
        if kinds is _CONV_BLOCK:
            blocks.append(("global_pool",))
    return blocks


def deep_model(n_layers: int, seed: int = 0, stage_layers: int = STAGE_LAYERS) -> keras.Model:
    """A model of exactly `n_layers` layers (Input layers and the stage models not counted; n_layers >= 24),
    built as a chain of nested functional models ("stages") of at most `stage_layers` layers each: Keras builds
    a functional graph recursively (keras.src.ops.function._build_map_helper), so one flat graph deeper than
    the recursion limit cannot be built. qcompiler flattens the stages into one graph that is n_layers deep."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, CHANNELS), name="x")
    x, stage, stage_count = inputs, [], 0
    blocks = _blocks(n_layers)
    for index, kinds in enumerate(blocks):
        stage.append(kinds)
        stage_count += len(kinds)
        last = index == len(blocks) - 1
        if stage_count + len(blocks[min(index + 1, len(blocks) - 1)]) > stage_layers or last:
            x = _stage_model(stage, x.shape[1:], first_block=index + 1 - len(stage))(x)
            stage, stage_count = [], 0
    outputs = layers.Dense(4, name="logits")(x)
    model = keras.Model(inputs, outputs, name=f"deep{n_layers}")
    return randomize_batchnorm(model, seed)


def _stage_model(blocks: list[tuple[str, ...]], shape: tuple, first_block: int) -> keras.Model:
    inputs = keras.Input(shape)
    x = inputs
    for number, kinds in enumerate(blocks):
        if kinds == ("global_pool",):
            x = layers.GlobalAveragePooling2D()(x)
            continue
        skip = first = x
        for position, kind in enumerate(kinds):
            x = _apply(kind, x, skip, first, first_block + number)
            first = x if position == 1 else first  # after the batch norm, which then folds into the conv
    return keras.Model(inputs, x, name=f"stage{first_block}")


def count_layers(model: keras.Model) -> int:
    """Layers of a model, those inside nested models included (models and Input layers not counted)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_layers(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            total += 1
    return total


def deep_inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n, 4, 4, CHANNELS)).astype(np.float32)
