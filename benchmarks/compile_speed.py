"""Compile speed: qcompiler vs TFLiteConverter on one keras.applications model (weights=None, random BN stats).

Both run in the same process on the same model (and data), so the ratio is meaningful on a noisy machine:
    python benchmarks/compile_speed.py       # MobileNetV2 224x224, int8, 100 samples, executors exact and fast
    python benchmarks/compile_speed.py --mode float32 --model VGG16 --size 96 --repeats 3
    python benchmarks/compile_speed.py --model ResNet50 --size 96 --samples 20 --executor fast
    python benchmarks/compile_speed.py --mode float32 --model VGG16 --size 96 --profile   # where the time goes

float32: `qcompiler.compile(model, "float32")` against `TFLiteConverter.from_keras_model(model).convert()`.
int8: full integer PTQ (int8 inputs/outputs) on the same calibration samples; the converter is calibrated one
sample at a time, as `qcompiler.demo.converter_int8` does. qcompiler runs once per calibration executor given:
`exact` (the default: TensorFlow's TFLite runtime configured as the converter's calibrator, ranges bit for bit)
and `fast` (XNNPACK). The converter runs between them, so slow drift of the machine's load favours neither side.
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


def build_model(name: str, size: int):
    import keras

    from tests.zoo import randomize_batchnorm

    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(input_shape=(size, size, 3), weights=None)
    return randomize_batchnorm(model, seed=0)


def qcompiler_float32(model, samples: np.ndarray = None, executor: str = "") -> bytes:
    import qcompiler

    return qcompiler.compile(model, mode="float32")


def converter_float32(model, samples: np.ndarray = None) -> bytes:
    import warnings

    import tensorflow as tf

    from qcompiler.quiet import native_output_silenced

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with warnings.catch_warnings(), native_output_silenced(fds=(1, 2)):
        warnings.simplefilter("ignore")
        return converter.convert()


def qcompiler_int8(model, samples: np.ndarray, executor: str = "exact") -> bytes:
    import qcompiler

    return qcompiler.compile(model, mode="int8", calibration_data=samples, executor=executor)


MODES = {"float32": (qcompiler_float32, converter_float32), "int8": (qcompiler_int8, converter_int8)}


def timed(fn, *args) -> tuple[float, float]:
    """Wall seconds and process CPU seconds (all threads) of one call. On a shared machine the wall time of a
    short single-threaded call is inflated by the load more than that of a long multi-threaded one, so the CPU
    ratio is printed beside the wall ratio."""
    start, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - start, time.process_time() - cpu


def best(fn, args: tuple, repeats: int) -> tuple[float, float]:
    runs = [timed(fn, *args) for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def profile(fn, *args) -> None:
    """Print where qcompiler's time goes (cProfile, cumulative, qcompiler functions only)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    fn(*args)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(r"qcompiler", 40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="int8", choices=sorted(MODES))
    parser.add_argument("--model", default="MobileNetV2", help="a keras.applications name, e.g. VGG16, ResNet50")
    parser.add_argument("--samples", type=int, default=100, help="calibration samples (int8)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=1, help="best of N for each compiler")
    parser.add_argument("--executor", nargs="+", default=["exact", "fast"], choices=("exact", "fast", "numpy"),
                        help="int8: qcompiler's calibration executors to time (exact: ranges bit-exact with the "
                             "converter)")
    parser.add_argument("--profile", action="store_true", help="profile qcompiler's compile instead of timing")
    args = parser.parse_args()
    ours_fn, theirs_fn = MODES[args.mode]
    executors = args.executor if args.mode == "int8" else [""]
    model = build_model(args.model, args.size)
    samples = np.random.default_rng(0).uniform(-1, 1, (args.samples, args.size, args.size, 3)).astype(np.float32)
    for executor in executors:  # warm-up: imports and first-call costs, for both sides below
        ours_fn(model, samples[:2], executor)
    if args.profile:
        profile(ours_fn, model, samples, executors[0])
        return
    theirs_fn(model, samples[:2])
    ours = {}
    for i, executor in enumerate(executors):
        ours[executor] = best(ours_fn, (model, samples, executor), args.repeats)
        if i == 0:
            theirs = best(theirs_fn, (model, samples), args.repeats)
    what = "float32" if args.mode == "float32" else f"{args.samples} calibration samples, full int8"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.model} {args.size}x{args.size}, {what} (load average {load:.1f} at the end)")
    print(f"  TFLiteConverter:               {theirs[0]:7.2f} s  (CPU {theirs[1]:6.2f} s)")
    for executor, (seconds, cpu) in ours.items():
        label = f"qcompiler (executor={executor:5s}):" if executor else "qcompiler:                    "
        print(f"  {label} {seconds:7.2f} s  (CPU {cpu:6.2f} s)   speed-up {theirs[0] / seconds:5.2f}x "
              f"(CPU {theirs[1] / cpu:5.2f}x)")


if __name__ == "__main__":
    main()
