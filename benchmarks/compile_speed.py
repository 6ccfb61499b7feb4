"""Compile speed: qcompiler vs TFLiteConverter, full int8 PTQ of MobileNetV2 224x224 with 100 calibration samples.

Both run in the same process on the same data, so the ratio is meaningful on a noisy machine:
    python benchmarks/compile_speed.py [--samples 100] [--size 224] [--repeats 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from qcompiler.demo import converter_int8  # noqa: E402  (the reference: TFLiteConverter, same settings as the demo)


def build_model(size: int):
    import keras

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from tests.zoo import randomize_batchnorm

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=None)
    return randomize_batchnorm(model, seed=0)


def qcompiler_int8(model, samples: np.ndarray, calibrate_with: str = "tflite") -> bytes:
    import qcompiler

    return qcompiler.compile(model, mode="int8", calibration_data=samples, calibrate_with=calibrate_with)


def timed(fn, *args) -> tuple[float, bytes]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=1, help="best of N for each compiler")
    parser.add_argument("--calibrate-with", default="tflite", choices=("tflite", "tensorflow", "numpy"),
                        help="qcompiler's calibration executor (tensorflow: ranges bit-exact with the converter)")
    args = parser.parse_args()
    model = build_model(args.size)
    samples = np.random.default_rng(0).uniform(-1, 1, (args.samples, args.size, args.size, 3)).astype(np.float32)
    qcompiler_int8(model, samples[:2], args.calibrate_with)  # warm-up: imports and first-call costs, for both sides below
    converter_int8(model, samples[:2])
    ours = min(timed(qcompiler_int8, model, samples, args.calibrate_with)[0] for _ in range(args.repeats))
    theirs = min(timed(converter_int8, model, samples)[0] for _ in range(args.repeats))
    print(f"MobileNetV2 {args.size}x{args.size}, {args.samples} calibration samples, full int8")
    print(f"  TFLiteConverter: {theirs:7.2f} s")
    print(f"  qcompiler:       {ours:7.2f} s   (calibrate_with={args.calibrate_with})")
    print(f"  speed-up:        {theirs / ours:7.2f}x")


if __name__ == "__main__":
    main()
