"""Acceptance: qcompiler's full-integer (int8) models against TFLiteConverter's (TF 2.21).

Reference: `optimizations=[DEFAULT]`, `representative_dataset` yielding the same calibration samples one at a
time, `TFLITE_BUILTINS_INT8`, int8 inputs and outputs. qcompiler compiles with its defaults: the `exact` calibration
executor, whose float values are the converter calibrator's bit for bit (qcompiler/backend/tflite_executor.py),
and the `tflite-2.21` policy (qcompiler/quant/policy.py); the rules
that turn ranges into parameters are docs/quantization-notes.md §3-5. For every zoo model:
  - the input and output quantization parameters equal the converter's;
  - on 200 random inputs, run with the reference kernels, at least 99% of the int8 output values are identical
    to the converter model's and none differs by more than 1 (measured: 100% on the whole zoo);
  - our file is at most 1% larger than the converter's (it is smaller: shorter tensor names, no
    SHAPE/STRIDED_SLICE/PACK for Flatten);
  - the folded batch-norm weights and biases of our float graph equal the converter's float model's bit for bit
    (fold-batchnorm, which the per-channel weight scales derive from).
Plus small probe models for the parameter propagation rules (concat, maximum/minimum, MEAN, shape ops, fixed-range
ops feeding a concat, ...), and the seed CNN trained briefly on scikit-learn's digits: int8 accuracy within 0.5
points of the converter's. (The `fast` executor runs XNNPACK's float kernels, whose ranges are within a few ulps
of the converter's: a scale can differ in its last bit; measured 99.0% to 100% identical outputs.)
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import pytest

import qcompiler
from qcompiler.demo import converter_int8
from qcompiler.ir.types import QParams
from qcompiler.quant import math as qmath
from tests.converter_reference import converter_float_constants as float_constants_of
from tests.tflite_run import run_tflite
from tests.zoo import ZOO, random_batch, randomize_batchnorm

CALIBRATION_SAMPLES = 64
TEST_SAMPLES = 200
MIN_IDENTICAL = 0.99
SIZE_MARGIN = 1.01

_SLOW = {"mobilenet_v2_small"}  # ~25 s for the converter and qcompiler together
ZOO_PARAMS = [pytest.param(name, marks=pytest.mark.slow) if name in _SLOW else name for name in ZOO]


# ----------------------------------------------------------------------------------------------------
# the two models
# ----------------------------------------------------------------------------------------------------
def _samples_by_name(model, batch) -> dict[str, np.ndarray]:
    arrays = batch if isinstance(batch, list) else [batch]
    return {t.name: a for t, a in zip(model.inputs, arrays)}


@functools.lru_cache(maxsize=None)
def models(name: str, executor: Optional[str] = None) -> tuple[bytes, bytes]:
    """(ours, the converter's) for a zoo model, calibrated on the same samples (default settings unless an
    executor is named)."""
    model = ZOO[name]()
    calibration = _samples_by_name(model, random_batch(model, CALIBRATION_SAMPLES, seed=5))
    options = {} if executor is None else {"executor": executor}
    ours = qcompiler.compile(model, mode="int8", calibration_data=calibration, **options)
    return ours, _converter_model(name)


@functools.lru_cache(maxsize=None)
def _converter_model(name: str) -> bytes:
    model = ZOO[name]()
    return converter_int8(model, _samples_by_name(model, random_batch(model, CALIBRATION_SAMPLES, seed=5)))


def _io_details(model_bytes: bytes, keras_model) -> tuple[list[dict], list[dict]]:
    """Input and output details in the Keras model's order. qcompiler keeps that order; the converter names its
    inputs serving_default_<Keras tensor name>:0 and its signature outputs output_<k>, but orders both its own
    way in the subgraph."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes)
    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    by_name = {d["name"].removeprefix("serving_default_").split(":")[0]: d for d in inputs}
    tensor_names = [t.name for t in keras_model.inputs]
    if set(by_name) == set(tensor_names):
        inputs = [by_name[n] for n in tensor_names]
    signature = interp._get_full_signature_list().get("serving_default", {}).get("outputs", {})
    if sorted(signature) == [f"output_{k}" for k in range(len(outputs))]:
        by_index = {d["index"]: d for d in outputs}
        outputs = [by_index[signature[f"output_{k}"]] for k in range(len(outputs))]
    return inputs, outputs


def _params(detail: dict) -> tuple:
    q = detail["quantization_parameters"]
    return detail["dtype"], tuple(np.float32(q["scales"])), tuple(q["zero_points"])


def _run_both(name: str, executor: Optional[str] = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Int8 outputs of both models on the same int8 test inputs (quantized as TFLite's QUANTIZE would)."""
    model = ZOO[name]()
    ours, reference = models(name, executor)
    batch = random_batch(model, TEST_SAMPLES, seed=9)
    arrays = batch if isinstance(batch, list) else [batch]
    ref_inputs, _ = _io_details(reference, model)
    quantized = [qmath.quantize(array, QParams.per_tensor(*detail["quantization"]), "i8")
                 for array, detail in zip(arrays, ref_inputs)]
    return _run_in_keras_order(ours, model, quantized), _run_in_keras_order(reference, model, quantized)


def _run_in_keras_order(model_bytes: bytes, keras_model, arrays: list[np.ndarray],
                        preserve_all_tensors: bool = False) -> list[np.ndarray]:
    """run_tflite with inputs given in the Keras order (it feeds the flatbuffer's order)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes)
    file_inputs = [d["index"] for d in interp.get_input_details()]
    file_outputs = [d["index"] for d in interp.get_output_details()]
    keras_inputs, keras_outputs = ([d["index"] for d in details] for details in _io_details(model_bytes, keras_model))
    results = run_tflite(model_bytes, [arrays[keras_inputs.index(i)] for i in file_inputs],
                         preserve_all_tensors=preserve_all_tensors)
    return [results[file_outputs.index(i)] for i in keras_outputs]


# ----------------------------------------------------------------------------------------------------
# the zoo
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_io_quantization_equals_the_converter(name: str) -> None:
    ours, reference = models(name)
    model = ZOO[name]()
    our_inputs, our_outputs = _io_details(ours, model)
    ref_inputs, ref_outputs = _io_details(reference, model)
    assert [_params(d) for d in our_inputs] == [_params(d) for d in ref_inputs]
    assert [_params(d) for d in our_outputs] == [_params(d) for d in ref_outputs]


def _assert_outputs_match(ours: list[np.ndarray], reference: list[np.ndarray], min_identical: float) -> None:
    assert len(ours) == len(reference)
    for got, expected in zip(ours, reference):
        assert got.dtype == expected.dtype == np.int8 and got.shape == expected.shape
        diff = np.abs(got.astype(np.int32) - expected.astype(np.int32))
        identical = float(np.mean(diff == 0))
        assert identical >= min_identical, f"{identical:.2%} of int8 outputs identical"
        assert diff.max() <= 1


@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_int8_outputs_equal_the_converter_by_default(name: str) -> None:
    """The default (exact) executor sees the converter calibrator's float values: every output is identical."""
    _assert_outputs_match(*_run_both(name), min_identical=1.0)


@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_int8_outputs_match_the_converter_with_the_fast_executor(name: str) -> None:
    """The fast (XNNPACK) executor sees float values a few ulps off: a range may move by one ulp."""
    _assert_outputs_match(*_run_both(name, "fast"), min_identical=MIN_IDENTICAL)


@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_file_is_not_larger_than_the_converters(name: str) -> None:
    ours, reference = models(name)
    assert len(ours) <= len(reference) * SIZE_MARGIN, f"{len(ours)} bytes vs the converter's {len(reference)}"


# ----------------------------------------------------------------------------------------------------
# which tensors get which parameters: small models probing the converter's propagation rules
# ----------------------------------------------------------------------------------------------------
def _probe(name: str, build, inputs: int = 1):
    """A small Keras model on 12x12x3 inputs named x0, x1, ..."""
    import keras

    keras.utils.set_random_seed(len(name))
    xs = [keras.Input((12, 12, 3), name=f"x{i}") for i in range(inputs)]
    outputs = build(keras.layers, *xs)
    return keras.Model(xs, outputs, name=name)


def _concat_convs(L, x):  # different ranges: the concat's wins for both convs
    a = L.Conv2D(6, 3, padding="same", activation="relu")(x)
    b = L.Activation("relu6")(L.Conv2D(4, 3, padding="same")(x))
    return L.Conv2D(5, 1)(L.Concatenate()([a, b]))


def _concat_of_means(L, x):  # a MEAN keeps its input's range, its output takes the concat's
    a = L.GlobalAveragePooling2D()(L.Conv2D(6, 3, padding="same", activation="relu")(x))
    b = L.GlobalMaxPooling2D()(L.Conv2D(4, 3, padding="same")(x))
    return L.Dense(5)(L.Concatenate()([a, b]))


def _maximum_minimum(L, x):  # minimum(a, maximum(a, b)): the minimum's range for all of them
    a, b = L.Conv2D(6, 3, padding="same")(x), L.Conv2D(6, 3, padding="same")(x)
    return L.Conv2D(5, 1)(L.Minimum()([a, L.Maximum()([a, b])]))


def _tensor_into_two_concats(L, x):
    """b takes the later concat's parameters, a requantize feeds the earlier one. (The later one in the
    converter's op order, which follows TF's op names when nothing orders the two: here the second concat
    depends on the first, so every order agrees.)"""
    a, b = L.Conv2D(4, 3, padding="same")(x), L.Conv2D(4, 3, padding="same")(x)
    first = L.Concatenate()([a, b])
    c = L.Rescaling(5.0)(L.Conv2D(4, 3, padding="same", activation="relu")(first))
    return L.Conv2D(3, 1)(L.Concatenate()([b, c]))


def _input_into_concat(L, x):  # the graph input takes the concat's parameters through the max pool
    p = L.MaxPooling2D()(x)
    c = L.Rescaling(4.0)(L.Conv2D(4, 3, padding="same", activation="relu")(p))
    return L.Dense(4)(L.Flatten()(L.Concatenate()([p, c])))


def _maximum_of_inputs(L, x0, x1):
    return L.Conv2D(3, 3)(L.Maximum()([x0, x1]))


def _shape_ops(L, x):  # pad, upsampling (the converter: EXPAND_DIMS/TILE/RESHAPE), average pool, cropping
    y = L.ZeroPadding2D(((1, 2), (0, 1)))(L.Conv2D(4, 3)(x))
    y = L.Cropping2D(((1, 0), (0, 1)))(L.AveragePooling2D(3)(L.UpSampling2D(2)(y)))
    return L.Conv2D(3, 1)(y)


def _activations(L, x):  # hard_swish, leaky_relu, Rescaling with offset (MUL + ADD), MUL, logistic
    a = L.Conv2D(6, 3, padding="same")(x)
    y = L.Add()([L.Activation("hard_swish")(a), L.LeakyReLU(0.1)(a)])
    y = L.Rescaling(0.5, offset=0.25)(y)
    return L.Conv2D(3, 1)(L.Activation("sigmoid")(L.Multiply()([y, y])))


def _softmax_into_concat(L, x):  # softmax keeps 1/256, a requantize feeds the concat and the second output
    s = L.Softmax()(L.Dense(8)(L.Flatten()(x)))
    return [L.Dense(3)(L.Concatenate()([s, L.Dense(8)(L.Flatten()(x))])), s]


def _standalone_batchnorm(L, x):  # not foldable: MUL + ADD with the converter's float32 constants
    a = L.Conv2D(6, 3, padding="same")(L.BatchNormalization()(x))
    s = L.BatchNormalization()(L.Add()([a, L.Conv2D(6, 3, padding="same")(x)]))
    return L.Conv2D(3, 1)(L.ReLU()(s))


PROBES = {
    "concat_convs": (_concat_convs, 1), "concat_of_means": (_concat_of_means, 1),
    "maximum_minimum": (_maximum_minimum, 1), "tensor_into_two_concats": (_tensor_into_two_concats, 1),
    "input_into_concat": (_input_into_concat, 1), "maximum_of_inputs": (_maximum_of_inputs, 2),
    "shape_ops": (_shape_ops, 1), "activations": (_activations, 1),
    "softmax_into_concat": (_softmax_into_concat, 1), "standalone_batchnorm": (_standalone_batchnorm, 1),
}
PROBE_PARAMS = list(PROBES)  # about 1 s each


@functools.lru_cache(maxsize=None)
def probe_models(name: str):
    build, inputs = PROBES[name]
    model = randomize_batchnorm(_probe(name, build, inputs), seed=7)
    calibration = _samples_by_name(model, random_batch(model, 32, seed=1))
    ours = qcompiler.compile(model, mode="int8", calibration_data=calibration)
    return model, ours, converter_int8(model, calibration)


def _activation_params(model_bytes: bytes) -> tuple[set, int]:
    """Distinct (scale, zero point) of the int8 activations, and the number of int8 -> int8 QUANTIZE ops."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes)
    details = {d["index"]: d for d in interp.get_tensor_details()}
    activations = {i for op in interp._get_ops_details() for i in (*op["inputs"][:1], *op["outputs"]) if i >= 0}
    params = set()
    for index in activations:
        q = details[index]["quantization_parameters"]
        if details[index]["dtype"] == np.int8 and len(q["scales"]) == 1:
            params.add((np.float32(q["scales"][0]), int(q["zero_points"][0])))
    requantize = sum(1 for op in interp._get_ops_details() if op["op_name"] == "QUANTIZE"
                     and details[op["inputs"][0]]["dtype"] == np.int8)
    return params, requantize


@pytest.mark.parametrize("name", PROBE_PARAMS)
def test_propagation_rules_match_the_converter(name: str) -> None:
    """Every activation parameter set in our model is one the converter uses and vice versa, with as many
    requantizations; outputs identical where the converter's model runs in ai-edge-litert."""
    model, ours, reference = probe_models(name)
    assert _activation_params(ours) == _activation_params(reference)
    our_io, ref_io = _io_details(ours, model), _io_details(reference, model)
    assert [_params(d) for d in our_io[0] + our_io[1]] == [_params(d) for d in ref_io[0] + ref_io[1]]
    if name == "shape_ops":
        return  # the converter writes TILE version 3 for int8, which ai-edge-litert 2.3 cannot run
    batch = random_batch(model, 50, seed=2)
    arrays = batch if isinstance(batch, list) else [batch]
    quantized = [qmath.quantize(a, QParams.per_tensor(*d["quantization"]), "i8") for a, d in zip(arrays, ref_io[0])]
    expected = _run_in_keras_order(reference, model, quantized)
    for got, want in zip(_run_in_keras_order(ours, model, quantized), expected):
        np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------------------------------
# fold-batchnorm: the folded float weights are the converter's
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def converter_float_constants(name: str) -> set[tuple[tuple[int, ...], bytes]]:
    """(shape, bytes) of every float32 constant in the converter's float model."""
    return float_constants_of(ZOO[name]())


@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_folded_weights_equal_the_converters_float_model(name: str) -> None:
    graph = qcompiler.api.float_graph(ZOO[name]())
    reference = converter_float_constants(name)
    checked = 0
    for node in graph.nodes:
        if node.op not in ("conv2d", "depthwise_conv2d", "fully_connected"):
            continue
        for role, value in zip(("weights", "bias"), node.operands[1:3]):
            data = np.asarray(value.data, np.float32)
            if role == "bias" and not data.any():
                continue  # the converter drops all-zero Dense biases
            assert (data.shape, data.tobytes()) in reference, f"{node.describe()}: {role} differ from the converter's"
            checked += 1
    assert checked > 0


# ----------------------------------------------------------------------------------------------------
# a trained model: accuracy on scikit-learn's digits
# ----------------------------------------------------------------------------------------------------
def test_trained_seed_cnn_accuracy_matches_the_converter() -> None:  # ~12 s
    import keras

    from qcompiler.demo import CALIBRATION_SAMPLES as DEMO_SAMPLES, digits_28x28, seed_cnn, tflite_predict

    x_train, y_train, x_test, y_test = digits_28x28()
    model = seed_cnn()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)
    calibration = x_train[:DEMO_SAMPLES]
    ours = qcompiler.compile(model, mode="int8", calibration_data=calibration)
    reference = converter_int8(model, {model.inputs[0].name: calibration})

    def accuracy(model_bytes: bytes) -> float:
        return float(np.mean(np.argmax(tflite_predict(model_bytes, x_test), -1) == y_test))

    keras_accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    assert keras_accuracy > 0.8, "training did not converge; the comparison would say little"
    assert abs(accuracy(ours) - accuracy(reference)) <= 0.005
