"""Compile time against model depth: is it linear? Deep residual models from tests/deep_models.py (nested stages
of at most 250 layers), compiled in every mode at Python's default recursion limit:
    python benchmarks/scaling.py [--layers 750 1500 3000] [--repeats 1]

Prints seconds per mode and depth, and the time per 1,000 layers (flat when the time is linear). The integer
modes calibrate on 8 samples.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

MODES = ("float32", "dynamic", "float16", "int8", "int16x8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[750, 1500, 3000])
    parser.add_argument("--repeats", type=int, default=1, help="best of N compiles per mode")
    args = parser.parse_args()

    import qcompiler
    from tests.deep_models import deep_inputs, deep_model

    sys.setrecursionlimit(min(sys.getrecursionlimit(), 1000))  # TensorFlow's imports raised it to 3000
    qcompiler.compile(deep_model(30), "float32")  # warm-up
    calibration = deep_inputs(8, seed=2)
    rows = []
    for layers in args.layers:
        model = deep_model(layers)
        start = time.perf_counter()
        graph = qcompiler.import_keras(model)
        seconds = {"import": time.perf_counter() - start}
        for mode in MODES:
            options = {"calibration_data": calibration} if mode in ("int8", "int16x8") else {}
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                qcompiler.compile(model, mode, **options)
                best = min(best, time.perf_counter() - start)
            seconds[mode] = best
        rows.append((layers, len(graph.nodes), seconds))
    columns = ["import", *MODES]
    print(f"recursion limit {sys.getrecursionlimit()}; seconds per compile (import included), and per 1,000 layers")
    print("| layers | IR nodes | " + " | ".join(columns) + " |")
    print("|---:|---:|" + "---:|" * len(columns))
    for layers, nodes, seconds in rows:
        cells = [f"{seconds[c]:.2f} ({1000 * seconds[c] / layers:.2f})" for c in columns]
        print(f"| {layers} | {nodes} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
