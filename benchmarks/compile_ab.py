"""float32 export time of two qcompiler source trees and of TFLiteConverter, in one process, alternating.

    git archive BEFORE | tar -x -C /tmp/before; git archive HEAD | tar -x -C /tmp/after
    python benchmarks/compile_ab.py /tmp/before /tmp/after --models MobileNet,VGG16 --repeats 3 --json ab.json

Both trees' `qcompiler` packages are imported (every module, eagerly) and swapped in `sys.modules` around each
compile, so one process compiles the same Keras model (keras.applications at 96x96, weights=None, batch-norm
statistics from the data, logits head: the zoo's float32 model) with the old code and the new code (in turns: the
order flips every repeat) and with the converter once per repeat (`--no-converter`: not at all). On a shared
machine whose load changes minute by minute this compares the two versions under the same load. Each figure is
the median over the repeats, in wall-clock seconds and in CPU seconds of the process (all threads); the speed-ups
are converter / qcompiler medians. The output bytes of both versions are hashed: `identical` says whether they
were the same.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import pkgutil
import statistics
import sys
import time
from types import ModuleType

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def load_tree(path: str) -> dict[str, ModuleType]:
    """Every module of the qcompiler package under `path`, imported now (later imports inside functions then find
    them in sys.modules)."""
    for name in [n for n in sys.modules if n == "qcompiler" or n.startswith("qcompiler.")]:
        del sys.modules[name]
    sys.path.insert(0, path)
    try:
        package = importlib.import_module("qcompiler")
        if not package.__file__.startswith(os.path.abspath(path)):
            raise SystemExit(f"{path}: imported qcompiler from {package.__file__}")
        for info in pkgutil.walk_packages(package.__path__, "qcompiler."):
            importlib.import_module(info.name)
    finally:
        sys.path.remove(path)
    return {n: m for n, m in sys.modules.items() if n == "qcompiler" or n.startswith("qcompiler.")}


class Trees:
    def __init__(self, paths: dict[str, str]) -> None:
        self.modules = {label: load_tree(path) for label, path in paths.items()}

    def compile(self, label: str, model) -> tuple[float, float, bytes]:
        sys.modules.update(self.modules[label])
        wall, cpu = time.perf_counter(), time.process_time()
        data = sys.modules["qcompiler"].compile(model, mode="float32")
        return time.perf_counter() - wall, time.process_time() - cpu, data


def converter(model) -> tuple[float, float]:
    from qcompiler.demo import converter_float32

    wall, cpu = time.perf_counter(), time.process_time()
    converter_float32(model)
    return time.perf_counter() - wall, time.process_time() - cpu


def tiny_model():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))


def measure(trees: Trees, name: str, repeats: int, with_converter: bool) -> dict:
    import keras

    from tests.zoo import keras_application, logits_model

    model = logits_model(keras_application(name, 96, 0, "data"))
    wall: dict[str, list[float]] = {"base": [], "new": [], "converter": []}
    cpu: dict[str, list[float]] = {"base": [], "new": [], "converter": []}
    digests = set()
    for repeat in range(repeats):
        for label in ("base", "new") if repeat % 2 == 0 else ("new", "base"):
            seconds, cpu_seconds, data = trees.compile(label, model)
            wall[label].append(seconds)
            cpu[label].append(cpu_seconds)
            digests.add(hashlib.sha256(data).hexdigest())
        if with_converter:
            seconds, cpu_seconds = converter(model)
            wall["converter"].append(seconds)
            cpu["converter"].append(cpu_seconds)
    keras.backend.clear_session()
    median = {clock: {k: statistics.median(v) for k, v in values.items() if v}
              for clock, values in (("wall", wall), ("cpu", cpu))}
    return {"wall": wall, "cpu": cpu, "median": median, "identical": len(digests) == 1}


def line(name: str, row: dict) -> str:
    wall, cpu = row["median"]["wall"], row["median"]["cpu"]
    text = (f"{name:20s} wall base {wall['base']:.3f} s new {wall['new']:.3f} s ({wall['new'] / wall['base']:.2f}) | "
            f"cpu base {cpu['base']:.3f} s new {cpu['new']:.3f} s ({cpu['new'] / cpu['base']:.2f})")
    if "converter" in wall:
        text += (f" | converter {wall['converter']:.2f} s: base {wall['converter'] / wall['base']:.1f}x, "
                 f"new {wall['converter'] / wall['new']:.1f}x")
    return text + f" | bytes identical: {row['identical']}"


def save_results(path: str | None, results: dict) -> None:
    """Write the measurements so far to `path` (if given), atomically: a run cut short keeps the last complete
    file. Standard library only: these scripts import qcompiler from the trees they compare."""
    if path:
        temporary = f"{path}.tmp"
        with open(temporary, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="source tree of the old code (holds qcompiler/)")
    parser.add_argument("new", help="source tree of the new code (holds qcompiler/, tests/zoo.py)")
    parser.add_argument("--models", default="MobileNet,InceptionV3,VGG16", help="comma-separated keras.applications")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-converter", action="store_true", help="time the two qcompiler versions only")
    parser.add_argument("--json", default=None, help="write every measurement here")
    args = parser.parse_args(argv)
    trees = Trees({"base": args.base, "new": args.new})
    sys.path.insert(0, args.new)  # tests.zoo from the new tree
    for label in ("base", "new"):  # first-call costs out of the timings
        trees.compile(label, tiny_model())
    if not args.no_converter:
        converter(tiny_model())
    results = {}
    for name in args.models.split(","):
        results[name] = measure(trees, name, args.repeats, not args.no_converter)
        print(line(name, results[name]), flush=True)
        save_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
