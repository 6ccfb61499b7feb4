"""Random-model campaign: qcompiler against TFLiteConverter on models from tests/random_models.py.

    python benchmarks/fuzz_vs_converter.py --models 300 [--seed S] [--jobs N] [--max-depth K]
        [--calibrate-with EXECUTOR]
        [--out fuzz.md] [--json fuzz.json] [--journal fuzz.jsonl]

Seeds S, S+1, ... S+models-1. Each worker is a subprocess that checks seeds one by one (tests/differential.py:
int8 I/O quantization, % identical int8 outputs with the reference kernels, max LSB, float32 against Keras) and
prints one JSON line per seed; when the interpreter aborts (a native crash), the seed it was on is recorded as a
crash and a fresh worker carries on with the next seed. Writes a Markdown table of failures by cause, with the
seeds, and which building blocks are over-represented among the failures (to point at a cause).
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION_SAMPLES = 32
TEST_SAMPLES = 64


# ----------------------------------------------------------------------------------------------------
# the worker: one process checking a list of seeds
# ----------------------------------------------------------------------------------------------------
def worker(seeds: list[int], executor: str, max_depth: Optional[int] = None) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.differential import check
    from tests.random_models import available_blocks, random_batch, random_model

    for seed in seeds:
        print(json.dumps({"seed": seed, "started": True}), flush=True)
        start = time.perf_counter()
        try:
            spec = random_model(seed, blocks=available_blocks(), max_depth=max_depth)
        except Exception as err:  # noqa: BLE001 - a generator bug is reported, not fatal
            row = {"seed": seed, "cause": "generator error", "detail": f"{type(err).__name__}: {err}"[:300]}
        else:
            model = spec.model
            verdict = check(model, random_batch(model, CALIBRATION_SAMPLES, seed=1),
                            random_batch(model, TEST_SAMPLES, seed=2), executor=executor or None)
            row = {"seed": seed, "cause": verdict.cause, "detail": verdict.detail, "identical": verdict.identical,
                   "max_lsb": verdict.max_lsb, "float_error": verdict.float_error, "size_ratio": verdict.size_ratio,
                   "layers": spec.layer_count,
                   "blocks": sorted(set(spec.blocks)), "logits": spec.logits, "timing": verdict.seconds}
        row["seconds"] = round(time.perf_counter() - start, 2)
        print(json.dumps(row), flush=True)
        import keras

        keras.backend.clear_session()


# ----------------------------------------------------------------------------------------------------
# the driver
# ----------------------------------------------------------------------------------------------------
def _record(row: dict, journal: Optional[str]) -> None:
    print(_progress(row), flush=True)
    if journal:
        with open(journal, "a") as f:
            f.write(json.dumps(row) + "\n")


def _run_chunk(seeds: list[int], calibrate_with: str, timeout: float, journal: Optional[str] = None,
               max_depth: Optional[int] = None) -> list[dict]:
    """Check `seeds` in worker subprocesses, restarting after a crash; one row per seed."""
    rows: dict[int, dict] = {}
    pending = list(seeds)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    while pending:
        cmd = [sys.executable, __file__, "--worker", ",".join(map(str, pending)), "--calibrate-with", calibrate_with]
        if max_depth is not None:
            cmd += ["--max-depth", str(max_depth)]
        current: Optional[int] = None
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
        deadline = time.monotonic() + timeout * len(pending)
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("started"):
                current = row["seed"]
                continue
            rows[row["seed"]] = row
            current = None
            _record(row, journal)
            if time.monotonic() > deadline:
                proc.kill()
                break
        code = proc.wait()
        if current is not None:  # the worker died on this seed
            rows[current] = {"seed": current, "cause": "crash", "detail": f"worker exit code {code}"}
            _record(rows[current], journal)
        pending = [s for s in pending if s not in rows]
    return [rows[s] for s in seeds]


def _progress(row: dict) -> str:
    if row.get("cause") is None:
        return f"seed {row['seed']}: ok ({row.get('layers')} layers, {row.get('seconds')} s)"
    identical = ", ".join(f"{v:.1%}" for v in row.get("identical", []))
    return f"seed {row['seed']}: {row['cause']} [{identical}] max LSB {row.get('max_lsb')} {row.get('detail', '')}"


def run_campaign(first: int, count: int, jobs: int, calibrate_with: str, timeout: float,
                 journal: Optional[str] = None, max_depth: Optional[int] = None) -> list[dict]:
    seeds = list(range(first, first + count))
    if jobs <= 1:
        return _run_chunk(seeds, calibrate_with, timeout, journal, max_depth)
    from concurrent.futures import ThreadPoolExecutor

    chunks = [seeds[i::jobs] for i in range(jobs)]
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(lambda c: _run_chunk(c, calibrate_with, timeout, journal, max_depth), chunks))
    by_seed = {row["seed"]: row for rows in results for row in rows}
    return [by_seed[s] for s in seeds]


# ----------------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------------
CAUSE_ORDER = ("generator error", "import error", "compile error", "converter error", "converter model aborts", "keras error", "float32 mismatch",
               "float32 TFLite overwrite (converter too)", "I/O quant mismatch", "<99% identical", ">1 LSB", "size > converter + 1%", "runtime error", "crash")


def report(rows: list[dict], calibrate_with: str, seconds: float, max_depth: Optional[int] = None) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    failures = [r for r in rows if r.get("cause")]
    lines = [
        f"Random-model campaign ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit "
        f"{os.environ.get('FUZZ_COMMIT') or commit.stdout.strip() or '?'}, seeds {rows[0]['seed']}..{rows[-1]['seed']}, calibrate_with="
        f"{calibrate_with or 'default'}, keras.ops blocks on, max depth {max_depth or 'each seed its own (<= 160)'}, "
        f"{seconds / 60:.1f} min): **{len(rows) - len(failures)} of {len(rows)} meet the bar** "
        "(equal int8 I/O quantization, >= 99% identical int8 outputs, <= 1 LSB, size <= converter + 1%, float32 "
        "within 1e-4 of Keras).",
        "",
        "| cause | models | seeds |",
        "| --- | ---: | --- |",
    ]
    by_cause = collections.defaultdict(list)
    for row in failures:
        by_cause[row["cause"]].append(row["seed"])
    for cause in sorted(by_cause, key=lambda c: CAUSE_ORDER.index(c) if c in CAUSE_ORDER else 99):
        seeds = by_cause[cause]
        lines.append(f"| {cause} | {len(seeds)} | {', '.join(map(str, seeds))} |")
    details = collections.Counter(_short(r["detail"]) for r in failures if r.get("detail"))
    if details:
        lines += ["", "Error messages (compile, import, converter errors and crashes):", ""]
        lines += [f"- {n} x {text}" for text, n in details.most_common(12)]
    lift = _block_lift(rows)
    if lift:
        lines += ["", "Blocks most over-represented among the failing models (failure rate with / without):", "",
                  "| block | with | without |", "| --- | ---: | ---: |"]
        lines += [f"| {b} | {w:.0%} ({n}) | {wo:.0%} |" for b, w, n, wo in lift[:10]]
    return "\n".join(lines) + "\n"


def _short(detail: str) -> str:
    text = detail.split(" (Keras layer")[0]
    for marker in ("%", "'m"):
        if marker in text:
            text = text.split(marker)[0] + "..."
    return text[:160]


def _block_lift(rows: list[dict]) -> list[tuple[str, float, int, float]]:
    checked = [r for r in rows if "blocks" in r]
    blocks = sorted({b for r in checked for b in r["blocks"]})
    lift = []
    for block in blocks:
        having = [r for r in checked if block in r["blocks"]]
        others = [r for r in checked if block not in r["blocks"]]
        if len(having) < 3 or not others:
            continue
        rate = sum(1 for r in having if r.get("cause")) / len(having)
        other_rate = sum(1 for r in others if r.get("cause")) / len(others)
        lift.append((block, rate, len(having), other_rate))
    return sorted(lift, key=lambda t: t[1] - t[3], reverse=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1000, help="first seed (CI uses 0..19)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--max-depth", type=int, default=None,
                        help="cap on the blocks per model (default: each seed's own depth, up to 160)")
    parser.add_argument("--calibrate-with", default="", help="calibration executor (default: compile's default)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per model")
    parser.add_argument("--out", default=None, help="write the Markdown report here (atomically)")
    parser.add_argument("--json", default=None, help="write every row as JSON here")
    parser.add_argument("--journal", default=None, help="append each row as a JSON line here as it comes")
    parser.add_argument("--report-from", default=None, help="only write the report of a journal (an interrupted run)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker([int(s) for s in args.worker.split(",")], args.calibrate_with, args.max_depth)
        return 0
    start = time.perf_counter()
    if args.report_from:
        with open(args.report_from) as f:
            rows = sorted((json.loads(line) for line in f if line.strip()), key=lambda r: r["seed"])
        seconds = sum(r.get("seconds", 0.0) for r in rows)
    else:
        rows = run_campaign(args.seed, args.models, args.jobs, args.calibrate_with, args.timeout, args.journal,
                            args.max_depth)
        seconds = time.perf_counter() - start
    text = report(rows, args.calibrate_with, seconds, args.max_depth)
    print(text)
    sys.path.insert(0, str(ROOT))
    from qcompiler.files import atomic_write

    if args.out:
        atomic_write(args.out, text.encode())
    if args.json:
        atomic_write(args.json, json.dumps(rows, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
