"""Speed of the bit-exact integer interpreter on MobileNetV2-96 (int8 and int16x8), against ai-edge-litert's
reference kernels (BUILTIN_REF, what it is bit-exact with) on the same samples, in the same run.

    python benchmarks/int_interpreter_speed.py [--samples 256] [--batch 64]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from qcompiler import api  # noqa: E402
from qcompiler.backend.tflite_writer import write_tflite  # noqa: E402
from qcompiler.ir.interpreter import run  # noqa: E402
from qcompiler.quant import math as qm  # noqa: E402
from tests.tflite_run import run_tflite  # noqa: E402
from tests.zoo import randomize_batchnorm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--modes", default="int8,int16x8")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    model = randomize_batchnorm(keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None), seed=0)
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((32, 96, 96, 3)).astype(np.float32)
    data = rng.standard_normal((args.samples, 96, 96, 3)).astype(np.float32)
    for mode in args.modes.split(","):
        graph = api.quantize(model, mode, calibration)
        flat = write_tflite(graph)
        x = qm.quantize(data, graph.inputs[0].type.quant, graph.inputs[0].type.dtype)
        start = time.perf_counter()
        ours = np.concatenate([run(graph, [x[i:i + args.batch]])[0] for i in range(0, len(x), args.batch)])
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        ref = np.concatenate([run_tflite(flat, [x[i:i + args.batch]])[0] for i in range(0, len(x), args.batch)])
        t_ref = time.perf_counter() - start
        print(f"MobileNetV2-96 {mode}: {args.samples} samples, batch {args.batch}: integer interpreter "
              f"{t_ours:.1f} s ({1000 * t_ours / args.samples:.1f} ms/sample), BUILTIN_REF {t_ref:.1f} s "
              f"({1000 * t_ref / args.samples:.1f} ms/sample), ratio {t_ours / t_ref:.2f}; identical outputs: "
              f"{100 * np.mean(ours == ref):.2f}%")


if __name__ == "__main__":
    main()
