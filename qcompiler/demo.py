"""`qcompiler demo`: train the seed CNN on scikit-learn's bundled digits, compile it, run it in the TFLite
interpreter and compare accuracy and size with Keras. Runs offline on any machine."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from qcompiler.files import atomic_write
from qcompiler.quiet import native_output_silenced


def digits_28x28(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, upsampled to 28x28x1 in [0, 1]; 80/20 train/test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # 8x8, values 0..16
    upsampled = np.kron(images, np.ones((3, 3), np.float32))  # 24x24
    padded = np.pad(upsampled, ((0, 0), (2, 2), (2, 2)))[..., None]  # 28x28x1
    order = np.random.default_rng(seed).permutation(len(padded))
    x, y = padded[order], digits.target[order].astype(np.int64)
    split = int(0.8 * len(x))
    return x[:split], y[:split], x[split:], y[split:]


def seed_cnn(seed: int = 0):
    """The seed MNIST-style CNN: conv-BN-relu-maxpool x2, conv-BN-relu, flatten, dense relu, dense softmax."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((28, 28, 1), name="image")
    x = inputs
    for filters in (32, 64):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)  # few training steps: let moving stats settle
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)  # few training steps: let moving stats settle
    x = layers.Activation("relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    outputs = layers.Dense(10, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def tflite_predict(model_bytes: bytes, x: np.ndarray, batch: int = 64, raw: bool = False) -> np.ndarray:
    """Run a .tflite (float or integer I/O) on `x` with the reference kernels; returns float outputs
    (or the raw output tensor when `raw`)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=model_bytes, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        interp.resize_tensor_input(inp["index"], [len(chunk), *inp["shape"][1:]])
        interp.allocate_tensors()
        interp.set_tensor(inp["index"], _to_input(chunk, interp.get_input_details()[0]))
        interp.invoke()
        output = interp.get_tensor(out["index"])
        results.append(output.copy() if raw else _from_output(output, out))
    return np.concatenate(results)


def _to_input(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if detail["dtype"] == np.float32 or scale == 0:
        return x.astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(detail["dtype"])


def _from_output(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if detail["dtype"] == np.float32 or scale == 0:
        return y.astype(np.float32)
    return (y.astype(np.float32) - zero_point) * scale


def run_demo(out_dir: Path, epochs: int = 4, stream: TextIO = sys.stdout) -> dict[str, dict[str, float]]:
    import keras

    from qcompiler.api import compile as compile_model

    x_train, y_train, x_test, y_test = digits_28x28()
    print(f"data: scikit-learn digits upsampled to 28x28 — {len(x_train)} train / {len(x_test)} test", file=stream)
    model = seed_cnn()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    print(f"trained the seed CNN for {epochs} epochs in {time.perf_counter() - start:.1f} s", file=stream)

    out_dir.mkdir(parents=True, exist_ok=True)
    keras_acc = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    rows = {"keras (float32)": {"accuracy": keras_acc, "bytes": float(model.count_params() * 4), "seconds": 0.0}}
    calibration = x_train[:CALIBRATION_SAMPLES]
    models: dict[str, bytes] = {}
    for mode in ("float32", "int8"):
        start = time.perf_counter()
        data = compile_model(model, mode=mode, calibration_data=calibration if mode == "int8" else None)
        models[mode] = data
        _add_row(rows, f"qcompiler {mode}", data, time.perf_counter() - start, x_test, y_test)
        atomic_write(out_dir / f"seed_cnn_{mode}.tflite", data)
    start = time.perf_counter()
    reference = converter_int8(model, calibration)
    _add_row(rows, "TFLiteConverter int8", reference, time.perf_counter() - start, x_test, y_test)
    qat = _qat_fine_tune(model, x_train, y_train, stream)
    start = time.perf_counter()
    qat_bytes = compile_model(qat, mode="int8")  # the trained ranges: no calibration data
    _add_row(rows, "qcompiler QAT int8", qat_bytes, time.perf_counter() - start, x_test, y_test)
    atomic_write(out_dir / "seed_cnn_qat_int8.tflite", qat_bytes)
    _print_table(rows, stream)
    same = _identical_fraction(models["int8"], reference, x_test)
    print(f"\nint8 outputs identical to TFLiteConverter's on {same * 100:.2f}% of values "
          f"({len(x_test)} test images, reference kernels)", file=stream)
    print(f"files written to {out_dir}/", file=stream)
    return rows


CALIBRATION_SAMPLES = 200


def _qat_fine_tune(model, x_train: np.ndarray, y_train: np.ndarray, stream: TextIO, epochs: int = 1):
    """Quantization-aware fine-tuning of the trained float model (qcompiler.qat), batch norm folded."""
    import keras

    from qcompiler.qat import quantize_model

    qat = quantize_model(model)
    qat.compile(optimizer=keras.optimizers.Adam(5e-4), loss="sparse_categorical_crossentropy")
    start = time.perf_counter()
    qat.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    print(f"QAT fine-tuned it for {epochs} epoch in {time.perf_counter() - start:.1f} s", file=stream)
    return qat


def converter_int8(model, calibration) -> bytes:
    """The reference: TFLiteConverter's full-integer PTQ, calibrated one sample at a time on the same samples.

    `calibration` is one array (single-input model), a list in the Keras input order, or a dict by Keras input
    name. Samples are fed by name: a list would be matched to the flatbuffer's input order, not the Keras one.
    """
    import tensorflow as tf

    if not isinstance(calibration, dict):
        arrays = calibration if isinstance(calibration, (list, tuple)) else [calibration]
        calibration = {t.name: a for t, a in zip(model.inputs, arrays)}
    count = len(next(iter(calibration.values())))

    def representative():
        for i in range(count):
            yield {name: array[i:i + 1] for name, array in calibration.items()}

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return _convert_int8_io(converter)


def converter_trained_int8(model) -> bytes:
    """TFLiteConverter on a model whose ranges were trained (fake-quant ops in the graph, QAT): no calibration,
    int8 inputs and outputs. Works for Keras 3 and tf_keras (tfmot) models."""
    import tensorflow as tf

    return _convert_int8_io(tf.lite.TFLiteConverter.from_keras_model(model))


def _convert_int8_io(converter) -> bytes:
    """Run a converter with default optimizations and int8 I/O, quietly."""
    import warnings

    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    # the converter prints its SavedModel export, C++ logs and a warning about input statistics
    with warnings.catch_warnings(), native_output_silenced(fds=(1, 2)):
        warnings.simplefilter("ignore")
        return converter.convert()


def converter_float32(model) -> bytes:
    """The float reference: TFLiteConverter's default float32 conversion of `model`."""
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings(), native_output_silenced(fds=(1, 2)):
        warnings.simplefilter("ignore")
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _add_row(rows: dict, name: str, data: bytes, seconds: float, x: np.ndarray, y: np.ndarray) -> None:
    accuracy = float(np.mean(np.argmax(tflite_predict(data, x), -1) == y))
    rows[name] = {"accuracy": accuracy, "bytes": float(len(data)), "seconds": seconds}


def _identical_fraction(ours: bytes, reference: bytes, x: np.ndarray) -> float:
    a = tflite_predict(ours, x, raw=True)
    b = tflite_predict(reference, x, raw=True)
    return float(np.mean(a == b))


def _print_table(rows: dict[str, dict[str, float]], stream: TextIO) -> None:
    print(f"\n{'model':<24}{'accuracy':>10}{'size':>14}{'compile':>10}", file=stream)
    for name, row in rows.items():
        size = f"{row['bytes'] / 1024:,.1f} KiB"
        compile_time = f"{row['seconds']:.2f} s" if row["seconds"] else "-"
        print(f"{name:<24}{row['accuracy'] * 100:>9.2f}%{size:>14}{compile_time:>10}", file=stream)
