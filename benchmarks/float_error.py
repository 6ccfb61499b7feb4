"""How far float32 models of keras.applications are from the exact answer, and how much of that any float32
model must show: Keras in float32, qcompiler (and optionally TFLiteConverter) against the same Keras model
evaluated in float64.

    python benchmarks/float_error.py [--models EfficientNetV2B1,EfficientNetB7] [--batchnorm random,data]
                                     [--converter] [--size 96] [--json float_error.json]

Per model and batch-norm statistics ("random": tests/zoo.py randomize_batchnorm, what benchmarks/zoo.py uses;
"data": batchnorm_from_data, statistics that keep the activations O(1)), every figure is max|a - b| / max|keras64|
on the same preprocessed inputs:

- keras32: Keras' own float32 output;
- qcompiler: qcompiler's float32 .tflite under BUILTIN_REF (and `converter`: TFLiteConverter's, with --converter);
- floor: the float64 model with every weight perturbed by a random relative ±2^-24 (half a float32 ulp): what
  storing the weights in float32 alone costs (folding batch norm into the conv weights rounds them to float32 in
  every TFLite model, the converter's as well).

A network whose floor is near or above 1e-5 amplifies float32 rounding so much that no float32 implementation can
be within 1e-5·max|ref| of another (Keras' own float32 output is not, of its float64 output).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

DEFAULT_MODELS = ("EfficientNetB0", "EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetB6", "EfficientNetB7",
                  "EfficientNetV2S")
HALF_ULP = 2.0 ** -24


def float64_twin(name: str, model):
    """keras.applications.`name` in float64 with the weights of `model` (its float32 logits model)."""
    import keras

    from tests.zoo import logits_model

    constructor = getattr(keras.applications, name)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        twin = logits_model(constructor(weights=None, input_shape=tuple(model.inputs[0].shape)[1:]))
    finally:
        keras.config.set_dtype_policy(previous)
    twin.set_weights([w.astype(np.float64) for w in model.get_weights()])
    return twin


def perturbed(model, weights: list[np.ndarray], seed: int):
    """`model` with every weight times (1 + u), u uniform in ±HALF_ULP."""
    rng = np.random.default_rng(seed)
    model.set_weights([w * (1.0 + rng.uniform(-HALF_ULP, HALF_ULP, w.shape)) for w in weights])
    return model


def measure(name: str, batchnorm: str, size: int, samples: int, seed: int, converter: bool) -> dict:
    import qcompiler
    from qcompiler.demo import converter_float32
    from tests.tflite_run import run_tflite
    from tests.zoo import keras_application, keras_application_inputs, logits_model

    model = logits_model(keras_application(name, size, seed, batchnorm))
    x = keras_application_inputs(name, int(model.inputs[0].shape[1]), samples, seed + 1)
    twin = float64_twin(name, model)
    exact = np.asarray(twin(x.astype(np.float64), training=False), np.float64)
    scale = float(np.max(np.abs(exact)))
    outputs = {"keras32": np.asarray(model(x, training=False)),
               "qcompiler": run_tflite(qcompiler.compile(model, mode="float32"), [x])[0]}
    if converter:
        outputs["converter"] = run_tflite(converter_float32(model), [x])[0]
    weights = twin.get_weights()
    outputs["floor"] = np.asarray(perturbed(twin, weights, seed)(x.astype(np.float64), training=False))
    row = {"model": name, "batchnorm": batchnorm, "max_abs_keras64": scale}
    row.update({key: float(np.max(np.abs(value.astype(np.float64) - exact))) / scale
                for key, value in outputs.items()})
    row["qcompiler_vs_keras32"] = float(np.max(np.abs(outputs["qcompiler"].astype(np.float64)
                                                      - outputs["keras32"]))) / scale
    if converter:
        row["qcompiler_vs_converter"] = float(np.max(np.abs(outputs["qcompiler"].astype(np.float64)
                                                            - outputs["converter"]))) / scale
    return row


def line(row: dict) -> str:
    def fmt(key: str) -> str:
        return f"{row[key]:.1e}" if key in row else "—"

    return (f"| {row['model']} | {row['batchnorm']} | {row['max_abs_keras64']:.3g} | {fmt('floor')} | "
            f"{fmt('keras32')} | {fmt('qcompiler')} | {fmt('converter')} | {fmt('qcompiler_vs_keras32')} | "
            f"{fmt('qcompiler_vs_converter')} |")


HEADER = ("| model | batch norm | max\\|keras64\\| | floor | keras32 | qcompiler | converter | qcompiler vs keras32 "
          "| qcompiler vs converter |\n|---|---|---|---|---|---|---|---|---|")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--batchnorm", default="random,data", help="random, data or both (comma-separated)")
    parser.add_argument("--converter", action="store_true", help="also TFLiteConverter's float model (slow)")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON (rows are added to it)")
    args = parser.parse_args(argv)
    rows = json.loads(args.json.read_text()) if args.json is not None and args.json.exists() else []
    print(HEADER, flush=True)
    for name in args.models.split(","):
        for batchnorm in args.batchnorm.split(","):
            row = measure(name, batchnorm, args.size, args.samples, args.seed, args.converter)
            print(line(row), flush=True)
            rows = [r for r in rows if (r["model"], r["batchnorm"]) != (name, batchnorm)] + [row]
            if args.json is not None:
                from qcompiler.files import atomic_write

                atomic_write(args.json, json.dumps(rows, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
