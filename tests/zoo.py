"""The test zoo: small deterministic Keras models with randomized batch-norm statistics.

Builders are cached (each returns the same model object on every call), so tests must not mutate the models.
Fresh batch-norm statistics matter: with Keras' defaults (mean 0, variance 1, gamma 1, beta 0) a wrong
batch-norm translation would go unnoticed.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Union

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

layers = keras.layers
Batch = Union[np.ndarray, list[np.ndarray]]


def randomize_batchnorm(model: keras.Model, seed: int) -> keras.Model:
    """Give every BatchNormalization layer (nested ones included) random statistics, drawn independently of the
    activations (small networks stay well-conditioned; deep ones need batchnorm_from_data)."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, layers.BatchNormalization):
            continue
        shape = tuple(layer.moving_mean.shape)
        layer.moving_mean.assign(rng.normal(0.0, 0.5, shape).astype(np.float32))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
        if layer.scale:
            layer.gamma.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        if layer.center:
            layer.beta.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))
    return model


def _conv_bn_relu(x, filters: int, name: str):
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


@functools.lru_cache(maxsize=None)
def seed_cnn() -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((28, 28, 1), name="image")
    x = _conv_bn_relu(inputs, 32, "block1")
    x = layers.MaxPooling2D(name="pool1")(x)
    x = _conv_bn_relu(x, 32, "block2")
    x = layers.MaxPooling2D(name="pool2")(x)
    x = _conv_bn_relu(x, 32, "block3")
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(64, activation="relu", name="fc1")(x)
    outputs = layers.Dense(10, activation="softmax", name="logits")(x)
    return randomize_batchnorm(keras.Model(inputs, outputs, name="seed_cnn"), seed=1)


@functools.lru_cache(maxsize=None)
def seed_mlp() -> keras.Model:
    keras.utils.set_random_seed(2)
    model = keras.Sequential([
        keras.Input((8, 8), name="digits"),
        layers.Flatten(name="flatten"),
        layers.Dense(32, activation="relu", name="hidden"),
        layers.Dense(10, activation="softmax", name="probs"),
    ], name="seed_mlp")
    return randomize_batchnorm(model, seed=2)


@functools.lru_cache(maxsize=None)
def residual_block() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 8), name="features")
    x = layers.Conv2D(8, 3, padding="same", name="conv_a")(inputs)
    x = layers.BatchNormalization(name="bn_a")(x)
    x = layers.Conv2D(8, 3, padding="same", name="conv_b")(x)
    x = layers.BatchNormalization(name="bn_b")(x)
    x = layers.Add(name="residual")([x, inputs])
    x = layers.Activation("relu", name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(10, name="head")(x)
    return randomize_batchnorm(keras.Model(inputs, outputs, name="residual_block"), seed=3)


@functools.lru_cache(maxsize=None)
def mobilenet_v2_small() -> keras.Model:
    keras.utils.set_random_seed(4)
    model = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, weights=None, classes=10)
    return randomize_batchnorm(model, seed=4)


@functools.lru_cache(maxsize=None)
def two_input_concat() -> keras.Model:
    keras.utils.set_random_seed(5)
    left = keras.Input((16, 16, 3), name="left")
    right = keras.Input((16, 16, 1), name="right")
    a = layers.Conv2D(8, 3, padding="same", activation="relu", name="left_conv")(left)
    b = layers.Conv2D(4, 3, strides=1, padding="same", activation="relu", name="right_conv")(right)
    x = layers.Concatenate(name="concat")([a, b])
    x = layers.AveragePooling2D(pool_size=2, name="avgpool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(10, name="head")(x)
    return keras.Model([left, right], outputs, name="two_input_concat")


ZOO: dict[str, Callable[[], keras.Model]] = {
    "seed_cnn": seed_cnn,
    "seed_mlp": seed_mlp,
    "residual_block": residual_block,
    "mobilenet_v2_small": mobilenet_v2_small,
    "two_input_concat": two_input_concat,
}


def random_batch(model: keras.Model, n: int, seed: int) -> Batch:
    """Standard-normal float32 inputs for `model`: one array, or a list for multi-input models."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((n, *tuple(t.shape)[1:])).astype(np.float32) for t in model.inputs]
    return arrays[0] if len(arrays) == 1 else arrays


# keras.applications, as the benchmark (benchmarks/zoo.py) and the zoo-sized tests build them

def keras_application_names() -> list[str]:
    """Every model constructor that keras.applications exports (ResNet50 once, though two modules export it)."""
    import keras.applications as apps

    return sorted(name for name in dir(apps) if name[:1].isupper() and callable(getattr(apps, name)))


BATCHNORM_STATISTICS = ("data", "random")


def keras_application(name: str, size: int, seed: int = 0, batchnorm: str = "data") -> keras.Model:
    """keras.applications.`name` (weights=None, 1000 classes, softmax) at size x size (or the model's minimum size
    if that is larger), with batch-norm statistics `batchnorm`: "data" (batchnorm_from_data on the model's own
    preprocessed inputs: each batch norm normalizes its input as a trained one does) or "random"
    (randomize_batchnorm: statistics unrelated to the activations; deep networks then grow their activations block
    by block and amplify float32 rounding, see batchnorm_from_data)."""
    import re

    if batchnorm not in BATCHNORM_STATISTICS:
        raise ValueError(f"batchnorm must be one of {BATCHNORM_STATISTICS}, got {batchnorm!r}")
    constructor = getattr(keras.applications, name)
    keras.utils.set_random_seed(seed)
    try:
        model = constructor(weights=None, input_shape=(size, size, 3))
    except ValueError as err:  # "Input size must be at least 75x75; Received: ..."
        minimum = re.search(r"at least (\d+)x(\d+)", str(err))
        if minimum is None or int(minimum.group(1)) <= size:
            raise
        return keras_application(name, int(minimum.group(1)), seed, batchnorm)
    if batchnorm == "data":
        size = int(model.inputs[0].shape[1])
        return batchnorm_from_data(model, keras_application_inputs(name, size, 8, seed + 1000), seed)
    return randomize_batchnorm(model, seed)


def batchnorm_from_data(model: keras.Model, x: np.ndarray, seed: int) -> keras.Model:
    """Batch-norm statistics under which no layer amplifies and activations stay O(1): random gamma and beta (as
    randomize_batchnorm); then, in one inference forward pass on `x` in which each batch norm first measures its
    own input (the earlier layers' statistics already final), moving mean = the per-channel mean and moving
    variance = the per-channel variance + 1 (a channel's gain gamma / sqrt(variance + 1) is at most gamma, and
    its output's deviation at most gamma times its input's).

    randomize_batchnorm's statistics are independent of the activations: through a deep network with residual
    additions (EfficientNetV2B1+, B6, B7) the activations grow block by block and the network amplifies float32
    rounding (benchmarks/float_error.py measures how much). Normalizing to exactly unit variance instead (+ 0)
    amplifies too: deep features of random-pixel images hardly differ between images, and dividing by that small
    spread makes a network that blows up on other images."""
    import types

    rng = np.random.default_rng(seed)
    norms = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, layers.BatchNormalization)]

    def measuring_call(layer, inputs, *args, **kwargs):
        values = np.asarray(inputs, np.float64)
        axes = tuple(i for i in range(values.ndim) if i != layer.axis % values.ndim)
        variance = values.var(axis=axes)
        layer.moving_mean.assign(values.mean(axis=axes).astype(np.float32))
        layer.moving_variance.assign((variance + 1.0).astype(np.float32))
        return type(layer).call(layer, inputs, *args, **kwargs)

    for layer in norms:
        shape = tuple(layer.moving_mean.shape)
        if layer.scale:
            layer.gamma.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        if layer.center:
            layer.beta.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))
        layer.call = types.MethodType(measuring_call, layer)
    try:
        model(x, training=False)
    finally:
        for layer in norms:
            del layer.call
    return model


def logits_model(model: keras.Model) -> keras.Model:
    """The same model without its final softmax, as `classifier_activation=None` builds it, sharing every layer:
    for a softmax Activation layer (MobileNet, MobileNetV3) its input; for a Dense layer with a softmax activation,
    that Dense layer again with activation None and the same weights."""
    head = model.layers[-1]
    if isinstance(head, layers.Activation) and head.activation is keras.activations.softmax:
        return keras.Model(model.input, head.input, name=f"{model.name}_logits")
    if not isinstance(head, layers.Dense) or head.activation is not keras.activations.softmax:
        raise ValueError(f"model '{model.name}' does not end in a softmax (its last layer is '{head.name}' of class "
                         f"{type(head).__name__})")
    config = dict(head.get_config(), activation=None, name=f"{head.name}_logits")
    logits = layers.Dense.from_config(config)
    outputs = logits(head.input)
    logits.set_weights(head.get_weights())
    return keras.Model(model.input, outputs, name=f"{model.name}_logits")


def keras_application_inputs(name: str, size: int, n: int, seed: int) -> np.ndarray:
    """Random pixels in [0, 255] through the model's own `preprocess_input`: the value range it expects."""
    import importlib

    constructor = getattr(keras.applications, name)
    preprocess = importlib.import_module(constructor.__module__).preprocess_input
    pixels = np.random.default_rng(seed).uniform(0.0, 255.0, (n, size, size, 3)).astype(np.float32)
    return np.asarray(preprocess(pixels), np.float32)
