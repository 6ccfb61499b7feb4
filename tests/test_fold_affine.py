"""fold-affine against TFLiteConverter: the folded float weights are the converter's to the bit, and the int8
models of a Rescaling -> valid conv model, a Dense -> Rescaling -> Dense model and a Rescaling -> SAME conv model
give the converter's outputs."""
from __future__ import annotations

import functools

import numpy as np
import pytest

import qcompiler
from tests.converter_reference import converter_float_constants
from qcompiler.demo import converter_int8
from qcompiler.ir.types import QParams
from qcompiler.quant import math as qmath
from tests.tflite_run import run_tflite

CALIBRATION_SAMPLES = 32
TEST_SAMPLES = 200


def _preprocessing_conv(keras):
    """Rescaling(1/255, offset=-1) into a valid conv (folds before it), a Rescaling between a conv and a
    depthwise (folds after the conv), a Rescaling after the depthwise (folds after it)."""
    L = keras.layers
    x = keras.Input((12, 12, 3), name="image")
    y = L.Conv2D(6, 3, padding="valid", name="conv")(L.Rescaling(1 / 255, offset=-1, name="scale_in")(x))
    y = L.Rescaling(0.5, offset=0.3, name="scale_mid")(y)
    y = L.DepthwiseConv2D(3, depth_multiplier=2, name="depthwise")(y)
    y = L.ReLU()(L.Rescaling(2.0, offset=0.1, name="scale_out")(y))
    return keras.Model(x, L.Conv2D(4, 1, name="project")(y), name="preprocessing_conv")


def _dense_rescaling(keras):
    L = keras.layers
    x = keras.Input((16,), name="features")
    y = L.Rescaling(0.5, offset=0.25, name="rescale")(L.Dense(12, name="dense")(x))
    return keras.Model(x, L.Dense(5, name="head")(y), name="dense_rescaling")


def _rescaling_same_conv(keras):
    """EfficientNet's stem: Rescaling(1/255) -> ZeroPadding2D -> stride-2 valid conv (a SAME conv after fold-pad),
    then a scalar Rescaling into a SAME depthwise: both scales fold into the weights, the zero border stays zero."""
    L = keras.layers
    x = keras.Input((16, 16, 3), name="image")
    y = L.ZeroPadding2D(((0, 1), (0, 1)), name="stem_pad")(L.Rescaling(1 / 255, name="scale_in")(x))
    y = L.Conv2D(8, 3, strides=2, activation="relu", name="stem")(y)
    y = L.DepthwiseConv2D(3, padding="same", name="depthwise")(L.Rescaling(-0.5, name="scale_mid")(y))
    return keras.Model(x, L.Conv2D(4, 1, name="project")(y), name="rescaling_same_conv")


MODELS = {"preprocessing_conv": (_preprocessing_conv, 255.0), "dense_rescaling": (_dense_rescaling, None),
          "rescaling_same_conv": (_rescaling_same_conv, 255.0)}


def _data(name: str, model, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, *tuple(model.inputs[0].shape)[1:])
    pixels = MODELS[name][1]
    if pixels is not None:
        return rng.uniform(0, pixels, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _model(name: str):
    import keras

    keras.utils.set_random_seed(11)
    return MODELS[name][0](keras)


@functools.lru_cache(maxsize=None)
def _int8_models(name: str) -> tuple[bytes, bytes]:
    model = _model(name)
    calibration = _data(name, model, CALIBRATION_SAMPLES, seed=1)
    ours = qcompiler.compile(model, mode="int8", calibration_data=calibration)
    return ours, converter_int8(model, calibration)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_mul_and_add_folds(name: str) -> None:
    graph = qcompiler.api.float_graph(_model(name))
    assert not graph.find("mul") and not graph.find("add"), str(graph)


@pytest.mark.parametrize("name", list(MODELS))
def test_folded_weights_equal_the_converters_float_model(name: str) -> None:
    model = _model(name)
    reference = converter_float_constants(model)
    checked = 0
    for node in qcompiler.api.float_graph(model).nodes:
        if node.op not in ("conv2d", "depthwise_conv2d", "fully_connected"):
            continue
        for role, value in zip(("weights", "bias"), node.operands[1:3]):
            data = np.asarray(value.data, np.float32)
            if role == "bias" and not data.any():
                continue  # the converter drops all-zero biases
            assert (data.shape, data.tobytes()) in reference, f"{node.describe()}: {role} differ from the converter's"
            checked += 1
    assert checked >= 3


@pytest.mark.parametrize("name", list(MODELS))
def test_int8_outputs_match_the_converter(name: str) -> None:
    """Measured: 100% identical int8 outputs for both models."""
    from ai_edge_litert.interpreter import Interpreter

    model = _model(name)
    ours, reference = _int8_models(name)
    detail = Interpreter(model_content=reference).get_input_details()[0]
    x = qmath.quantize(_data(name, model, TEST_SAMPLES, seed=2), QParams.per_tensor(*detail["quantization"]), "i8")
    got, want = run_tflite(ours, [x])[0], run_tflite(reference, [x])[0]
    assert got.shape == want.shape
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    identical = float(np.mean(diff == 0))
    print(f"{name}: {identical:.2%} identical, max diff {diff.max()}")
    assert identical >= 0.99 and diff.max() <= 1, f"{identical:.2%} identical, max diff {diff.max()}"
