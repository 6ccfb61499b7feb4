"""float32 export time of two qcompiler source trees, each model's FIRST compile in a fresh process, against
TFLiteConverter in the same process.

    git archive BEFORE | tar -x -C /tmp/before; git archive HEAD | tar -x -C /tmp/after
    python benchmarks/compile_fresh_ab.py /tmp/before /tmp/after --models InceptionV3,VGG19 --processes 2 --json ab.json

Why: `compile_ab.py` compiles both versions over and over in one process, where each compile reuses memory the
previous ones (and the converter) freed, so a change that avoids fresh memory (page faults) barely shows. Here each
process does what `benchmarks/zoo.py`'s worker does: build the model (keras.applications at 96x96, weights=None,
batch-norm statistics from the data, logits head), compile a tiny model (first-call costs), compile the model once
with qcompiler (timed), then convert it once with TFLiteConverter (timed). The trees alternate process by process
(base, new, new, base, ...). Reported per model and tree: the medians over the processes of wall-clock and CPU
seconds (the process, all threads), the converter's, the ratios converter / qcompiler, the load average, and
whether the output bytes were the same in every process of a tree.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def child(tree: str, name: str, with_converter: bool) -> dict:
    sys.path.insert(0, tree)
    import qcompiler

    if not qcompiler.__file__.startswith(os.path.abspath(tree)):
        raise SystemExit(f"{tree}: imported qcompiler from {qcompiler.__file__}")
    from tests.zoo import keras_application, logits_model

    sys.path.insert(0, os.path.join(tree, "benchmarks"))
    from compile_ab import converter, tiny_model

    model = logits_model(keras_application(name, 96, 0, "data"))
    qcompiler.compile(tiny_model(), mode="float32")
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    data = qcompiler.compile(model, mode="float32")
    row = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "load": load,
           "sha256": hashlib.sha256(data).hexdigest()}
    if with_converter:
        row["converter_wall"], row["converter_cpu"] = converter(model)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", nargs="?")
    parser.add_argument("new", nargs="?")
    parser.add_argument("--models", default="InceptionV3,VGG19,ResNet50")
    parser.add_argument("--processes", type=int, default=2, help="fresh processes per tree and model")
    parser.add_argument("--no-converter", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=2, metavar=("TREE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, not args.no_converter)))
        return 0
    from compile_ab import save_results  # the driver's own benchmarks/ (a child imports its tree's compile_ab)

    results: dict = {}
    for name in args.models.split(","):
        runs: dict[str, list[dict]] = {"base": [], "new": []}
        for k in range(args.processes):
            for label in ("base", "new") if k % 2 == 0 else ("new", "base"):
                command = [sys.executable, os.path.abspath(__file__), "--child", getattr(args, label), name]
                if args.no_converter:
                    command.append("--no-converter")
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                runs[label].append(json.loads(out.strip().splitlines()[-1]))
        summary = {}
        for label, rows in runs.items():
            median = {key: statistics.median(r[key] for r in rows) for key in rows[0] if key != "sha256"}
            if "converter_wall" in median:
                median["speedup_wall"] = statistics.median(r["converter_wall"] / r["wall"] for r in rows)
                median["speedup_cpu"] = statistics.median(r["converter_cpu"] / r["cpu"] for r in rows)
            median["identical_within"] = len({r["sha256"] for r in rows}) == 1
            summary[label] = median
        results[name] = {"runs": runs, "median": summary,
                         "identical_across": {r["sha256"] for r in runs["base"]} == {r["sha256"] for r in runs["new"]}}
        print(name, json.dumps(summary), flush=True)
        save_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
