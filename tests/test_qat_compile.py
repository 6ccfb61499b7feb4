"""Compiling quantization-aware-trained models: the trained ranges are used as they are (no calibration), and
the int8 .tflite in the reference kernels matches the QAT model's own simulated outputs."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import qcompiler
from qcompiler.cli import main
from qcompiler.demo import converter_trained_int8, tflite_predict
from qcompiler.errors import QCompilerError
from qcompiler.passes.lower_to_int import DefaultRangesWarning
from qcompiler.qat import FakeQuant, quantize_model

L = keras.layers


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], digits.target[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _cnn() -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 1), name="image")
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = L.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = L.Activation("relu", name="relu1")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Conv2D(32, 3, padding="same", use_bias=False, name="conv2")(x)
    x = L.BatchNormalization(momentum=0.9, name="bn2")(x)
    x = L.Activation("relu", name="relu2")(x)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(32, activation="relu", name="hidden")(x)
    outputs = L.Dense(10, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    x_train, y_train, x_test, y_test = _digits()
    qat = quantize_model(_cnn(), quant_delay=20, dense_per_channel=False)
    qat.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    qat.fit(x_train, y_train, epochs=6, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("qat") / "qat.keras"
    qat.save(path)
    return qat, path, x_test, y_test


def _to_int8(probs: np.ndarray) -> np.ndarray:
    """The softmax output grid (scale 1/256, zero point -128) as int8 levels."""
    return np.clip(np.floor(probs * 256 + 0.5) - 128, -128, 127)


def test_int8_tflite_matches_the_simulated_qat_model(trained):
    qat, path, x_test, y_test = trained
    simulated = qat.predict(x_test, verbose=0)
    model = qcompiler.compile(path, mode="int8")  # no calibration data
    raw = tflite_predict(model, x_test, raw=True)
    outputs = tflite_predict(model, x_test)
    agreement = np.mean(outputs.argmax(-1) == simulated.argmax(-1))
    assert agreement >= 0.995
    sim_acc, tflite_acc = np.mean(simulated.argmax(-1) == y_test), np.mean(outputs.argmax(-1) == y_test)
    assert sim_acc > 0.9
    assert abs(sim_acc - tflite_acc) <= 0.003
    lsb = np.abs(raw.astype(np.int64) - _to_int8(simulated))
    assert np.mean(lsb <= 1) >= 0.99
    assert np.mean(lsb == 0) >= 0.9


def test_uint8_with_input_stats_uses_the_trained_ranges_inside(trained):
    qat, path, x_test, _ = trained
    model = qcompiler.compile(path, mode="uint8", input_stats=(0.0, 255.0))  # real = q / 255: inputs in [0, 1]
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_content=model).get_input_details()[0]
    assert detail["dtype"] == np.uint8 and detail["quantization"] == (pytest.approx(1 / 255), 0)
    outputs = tflite_predict(model, x_test)
    assert np.mean(outputs.argmax(-1) == qat.predict(x_test, verbose=0).argmax(-1)) >= 0.995


def test_cli_compiles_a_qat_model_without_calibration(trained, tmp_path, capsys):
    _, path, x_test, _ = trained
    out = tmp_path / "qat_int8.tflite"
    assert main(["compile", str(path), "--mode", "int8", "-o", str(out)]) == 0
    assert out.read_bytes() == qcompiler.compile(path, mode="int8")


def test_converter_reads_the_same_qat_model_and_agrees(trained):
    """TFLiteConverter on the QAT model (TF fake-quant ops in the graph): same I/O quantization, the same int8
    outputs on at least 99% of values."""
    from ai_edge_litert.interpreter import Interpreter

    qat, _, x_test, _ = trained
    reference = converter_trained_int8(qat)
    ours = qcompiler.compile(qat, mode="int8")
    io = [(d["quantization"], d["dtype"]) for m in (reference, ours) for i in [Interpreter(model_content=m)]
          for d in (i.get_input_details()[0], i.get_output_details()[0])]
    assert io[:2] == io[2:]
    a, b = tflite_predict(reference, x_test, raw=True), tflite_predict(ours, x_test, raw=True)
    assert np.mean(a == b) >= 0.99


def test_four_bit_weights_are_stored_as_int4_with_at_most_15_levels(trained):
    x_train, y_train, x_test, _ = _digits()
    qat = quantize_model(_cnn(), weight_bits=4)
    qat.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    qat.fit(x_train[:256], y_train[:256], epochs=1, batch_size=32, verbose=0)
    graph = qcompiler.quantize(qat, "int8")
    kernels = [n.result for n in graph.find("const") if n.result.name.endswith("kernel.int")]
    assert sorted(k.type.dtype for k in kernels) == ["i4"] * 4  # conv2d and fully_connected: TFLite INT4
    for kernel in kernels:
        data = np.asarray(kernel.data)
        for channel in data.reshape(data.shape[0], -1):
            assert len(np.unique(channel)) <= 15 and np.abs(channel).max() <= 7
    int4 = qcompiler.compile(qat, mode="int8")
    int8_storage = qcompiler.compile(qat, mode="int8", int4_weights=False)
    weight_count = sum(int(np.prod(k.type.shape)) for k in kernels)
    assert len(int8_storage) - len(int4) >= weight_count // 2 - 64  # two weights per byte
    raw = tflite_predict(int4, x_test, raw=True)
    np.testing.assert_array_equal(raw, tflite_predict(int8_storage, x_test, raw=True))
    outputs = tflite_predict(int4, x_test)
    simulated = qat.predict(x_test, verbose=0)
    # one epoch on 256 images leaves many near-ties; the int8 output (1/256 steps) cannot order those
    top2 = np.sort(simulated, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 / 256
    assert clear.sum() >= len(x_test) // 2
    assert np.mean(outputs[clear].argmax(-1) == simulated[clear].argmax(-1)) >= 0.99


def test_a_range_training_never_saw_is_an_error_naming_it_or_takes_default_ranges():
    qat = quantize_model(_cnn())  # never trained: no range was ever observed
    with pytest.raises(QCompilerError, match=r"no trained range: %image \(model input\).*%conv1/conv2d \(Keras layer "
                       r"'conv1'\).*--default-ranges"):
        qcompiler.compile(qat, mode="int8")
    with pytest.warns(DefaultRangesWarning, match="conv1"):
        model = qcompiler.compile(qat, mode="int8", default_ranges=(-6.0, 6.0))
    assert len(model) > 0


def test_depthwise_bn_relu6_residual_add_and_concatenate_compile_to_the_simulated_outputs():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 1), name="image")
    d = L.DepthwiseConv2D(3, depth_multiplier=4, padding="same", use_bias=False, name="dw")(inputs)
    d = L.ReLU(6.0, name="dw_relu6")(L.BatchNormalization(name="dw_bn")(d))
    a = L.Conv2D(8, 3, padding="same", name="a")(d)
    b = L.Conv2D(8, 1, name="b")(d)
    s = L.ReLU(name="sum_relu")(L.Add(name="sum")([a, b]))
    c = L.Concatenate(name="cat")([L.Conv2D(4, 1, activation="relu", name="c")(s), L.AveragePooling2D(
        1, name="avg")(s)])
    x = L.GlobalAveragePooling2D(name="gap")(c)
    outputs = L.Dense(10, activation="softmax", name="probs")(x)
    qat = quantize_model(keras.Model(inputs, outputs))
    assert type(qat.get_layer("dw")).__name__ == "QuantDepthwiseConv2D" and qat.get_layer("dw").bn is not None
    x_train, y_train, x_test, _ = _digits()
    qat.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    qat.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    simulated = qat.predict(x_test, verbose=0)
    raw = tflite_predict(qcompiler.compile(qat, mode="int8"), x_test, raw=True)
    assert np.mean(raw.argmax(-1) == simulated.argmax(-1)) >= 0.99
    assert np.mean(np.abs(raw.astype(np.int64) - _to_int8(simulated)) <= 1) >= 0.98


def test_activations_of_fewer_than_8_bits_are_refused_at_compile_time():
    inputs = keras.Input((4,), name="x")
    h = L.Dense(3, name="dense")(FakeQuant(bits=8, mode="fixed", min=-1.0, max=1.0, name="in_q")(inputs))
    model = keras.Model(inputs, FakeQuant(bits=4, mode="fixed", min=-2.0, max=2.0, name="out_q")(h))
    with pytest.raises(QCompilerError, match=r"%dense .*4-bit activations"):
        qcompiler.compile(model, mode="int8")


def test_learned_ranges_compile_to_the_simulated_outputs():
    x_train, y_train, x_test, _ = _digits()
    qat = quantize_model(_cnn(), range_mode="learned")
    qat.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    qat.fit(x_train[:512], y_train[:512], epochs=2, batch_size=32, verbose=0)
    learned = qat.get_layer("hidden_quant")
    assert learned.range_max.trainable
    graph = qcompiler.import_keras(qat)
    node = next(n for n in graph.find("fake_quant") if n.attrs["min"] is not None and n.layer == "hidden_quant")
    assert node.attrs["max"] == pytest.approx(float(learned.range_max.numpy()))
    simulated = qat.predict(x_test, verbose=0)
    outputs = tflite_predict(qcompiler.compile(qat, mode="int8"), x_test)
    assert np.mean(outputs.argmax(-1) == simulated.argmax(-1)) >= 0.99


def test_a_qat_compile_is_its_printed_pipeline(trained, capsys):
    from qcompiler.backend.tflite_writer import write_tflite

    _, path, _, _ = trained
    assert main(["compile", str(path), "--mode", "int8", "--print-pipeline"]) == 0
    pipeline = capsys.readouterr().out.strip()
    assert pipeline == qcompiler.pipeline_for("int8", trained=True)
    assert "insert-missing-fake-quant" in pipeline and "calibrate" not in pipeline
    graph = qcompiler.run_passes(qcompiler.import_keras(path), pipeline)
    assert write_tflite(graph) == qcompiler.compile(path, mode="int8")
