"""Compile speed: qcompiler vs TFLiteConverter, full int8 PTQ of MobileNetV2 224x224 with 100 calibration samples.

Both run in the same process on the same data, so the ratio is meaningful on a noisy machine:
    python benchmarks/compile_speed.py [--samples 100] [--size 224] [--repeats 1] [--executor exact fast]

qcompiler runs once per calibration executor given: `exact` (the default: TensorFlow's TFLite runtime configured
as the converter's calibrator, ranges bit for bit) and `fast` (XNNPACK). The converter runs between them, so slow
drift of the machine's load does not favour either side.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # this checkout's qcompiler

import numpy as np  # noqa: E402

from qcompiler.demo import converter_int8  # noqa: E402  (the reference: TFLiteConverter, same settings as the demo)


def build_model(size: int):
    import keras

    from tests.zoo import randomize_batchnorm

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=None)
    return randomize_batchnorm(model, seed=0)


def qcompiler_int8(model, samples: np.ndarray, executor: str = "exact") -> bytes:
    import qcompiler

    return qcompiler.compile(model, mode="int8", calibration_data=samples, executor=executor)


def timed(fn, *args) -> tuple[float, bytes]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=1, help="best of N for each compiler")
    parser.add_argument("--executor", nargs="+", default=["exact", "fast"], choices=("exact", "fast", "numpy"),
                        help="qcompiler's calibration executors to time (exact: ranges bit-exact with the converter)")
    args = parser.parse_args()
    model = build_model(args.size)
    samples = np.random.default_rng(0).uniform(-1, 1, (args.samples, args.size, args.size, 3)).astype(np.float32)
    for executor in args.executor:  # warm-up: imports and first-call costs, for both sides below
        qcompiler_int8(model, samples[:2], executor)
    converter_int8(model, samples[:2])
    ours = {}
    for i, executor in enumerate(args.executor):
        ours[executor] = min(timed(qcompiler_int8, model, samples, executor)[0] for _ in range(args.repeats))
        if i == 0:
            theirs = min(timed(converter_int8, model, samples)[0] for _ in range(args.repeats))
    print(f"MobileNetV2 {args.size}x{args.size}, {args.samples} calibration samples, full int8")
    print(f"  TFLiteConverter:               {theirs:7.2f} s")
    for executor, seconds in ours.items():
        print(f"  qcompiler (executor={executor:5s}): {seconds:7.2f} s   speed-up {theirs / seconds:5.2f}x")


if __name__ == "__main__":
    main()
