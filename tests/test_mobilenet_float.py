"""Acceptance for the graph passes: Keras MobileNetV2 (random weights, randomized batch-norm statistics) in float32.

After the default float pipeline no batch_norm, pad or standalone relu6 is left; our .tflite has no PAD operator,
no more operators than TFLiteConverter's model of the same Keras model, and runs within 1e-5 * max|ref| of Keras
in the reference kernels.

Variants: the zoo's 64x64 alpha 0.35 model; 75x75 (odd sizes inside the network, so the ZeroPadding2D layers
pad (1, 1) as well as (0, 1)); 96x96 alpha 1.0. TFLiteConverter takes ~10 s per model, so only the zoo model's
comparison with it runs in the fast suite.
"""
from __future__ import annotations

import functools
from collections import Counter

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

import qcompiler
from qcompiler.ir.graph import Graph
from qcompiler.passes import DEFAULT_FLOAT_PIPELINE
from qcompiler.passes.fold_pad import FoldPad
from tests.tflite_run import run_tflite
from tests.zoo import mobilenet_v2_small, random_batch, randomize_batchnorm


def _mobilenet_v2(size: int, alpha: float, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, weights=None, classes=10)
    return randomize_batchnorm(model, seed=seed)


MODELS = {
    "64x64_alpha0.35": mobilenet_v2_small,
    "75x75_alpha0.35": functools.lru_cache(maxsize=None)(lambda: _mobilenet_v2(75, 0.35, seed=6)),
    "96x96_alpha1.0": functools.lru_cache(maxsize=None)(lambda: _mobilenet_v2(96, 1.0, seed=7)),
}


@functools.lru_cache(maxsize=None)
def _float_graph(name: str) -> Graph:
    return qcompiler.run_passes(qcompiler.import_keras(MODELS[name]()), DEFAULT_FLOAT_PIPELINE)


@functools.lru_cache(maxsize=None)
def _ours(name: str) -> bytes:
    return qcompiler.compile(MODELS[name](), mode="float32")


@functools.lru_cache(maxsize=None)
def _converter(name: str) -> bytes:
    return tf.lite.TFLiteConverter.from_keras_model(MODELS[name]()).convert()


def _operators(model: bytes) -> Counter:
    interp = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    return Counter(op["op_name"] for op in interp._get_ops_details())


def _layers_of(model: keras.Model, kind: type) -> list:
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True) if isinstance(layer, kind)]


@pytest.mark.parametrize("name", list(MODELS))
def test_default_pipeline_folds_batchnorm_pad_and_activations(name: str) -> None:
    model, graph = MODELS[name](), _float_graph(name)
    counts = graph.op_counts()
    assert _layers_of(model, keras.layers.BatchNormalization) and "batch_norm" not in counts
    assert _layers_of(model, keras.layers.ZeroPadding2D) and "pad" not in counts
    assert not {"relu", "relu6", "maximum", "minimum"} & set(counts), counts
    relu6_layers = len(_layers_of(model, keras.layers.ReLU))
    assert sum(n.attrs.get("activation") == "relu6" for n in graph.nodes) == relu6_layers


@pytest.mark.parametrize("name", list(MODELS))
def test_fold_pad_folds_every_zero_padding_layer(name: str) -> None:
    model = MODELS[name]()
    graph = qcompiler.run_passes(qcompiler.import_keras(model), "dce,canonicalize")
    pads = len(_layers_of(model, keras.layers.ZeroPadding2D))
    assert len(graph.find("pad")) == pads
    result = FoldPad().run(graph)
    assert result.counters == {"rule:fold-pad": pads, "convs-padded": pads, "nodes-erased": pads}
    assert result.notes == ()
    assert "pad" not in graph.op_counts()


@pytest.mark.parametrize("name", list(MODELS))
def test_float_tflite_has_no_pad_and_matches_keras(name: str) -> None:
    model, ours = MODELS[name](), _ours(name)
    assert "PAD" not in _operators(ours)
    x = random_batch(model, 2, seed=3)
    got = run_tflite(ours, [x])[0].astype(np.float64)
    want = np.asarray(model(x, training=False), np.float64)
    err, ref = np.max(np.abs(got - want)), np.max(np.abs(want))
    assert err <= 1e-5 * ref, f"max|err| {err:.3g} vs max|ref| {ref:.3g}"


@pytest.mark.parametrize("name", ["64x64_alpha0.35",
                                  pytest.param("75x75_alpha0.35", marks=pytest.mark.slow),
                                  pytest.param("96x96_alpha1.0", marks=pytest.mark.slow)])
def test_no_more_operators_than_tflite_converter(name: str) -> None:
    ours, theirs = _operators(_ours(name)), _operators(_converter(name))
    assert sum(ours.values()) <= sum(theirs.values()), f"ours {dict(ours)}\nconverter {dict(theirs)}"


def test_a_pad_that_is_not_same_stays_and_says_why() -> None:
    """ZeroPadding2D(1) before a stride-2 3x3 conv on an even input pads (1, 1); SAME would pad (0, 1)."""
    keras.utils.set_random_seed(8)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.ZeroPadding2D(1, name="pad")(inputs)
    outputs = keras.layers.Conv2D(4, 3, strides=2, name="conv")(x)
    model = keras.Model(inputs, outputs)
    graph = qcompiler.import_keras(model)
    result = FoldPad().run(graph)
    assert not result.modified and graph.op_counts()["pad"] == 1
    assert result.notes == ("fold-pad did not apply to %pad = pad (Keras layer 'pad'): pad [[1, 1], [1, 1]] is not "
                            "the SAME padding [[0, 1], [0, 1]] of %conv = conv2d (Keras layer 'conv') "
                            "(kernel [3, 3], strides [2, 2], dilation [1, 1])",)
    ours = qcompiler.compile(model, mode="float32")
    assert _operators(ours)["PAD"] == 1
    x = random_batch(model, 2, seed=4)
    np.testing.assert_allclose(run_tflite(ours, [x])[0], np.asarray(model(x)), rtol=1e-5, atol=1e-5)
