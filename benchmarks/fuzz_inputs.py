"""A long fuzzing campaign over qcompiler's inputs: mutated IR dumps, .keras files and calibration files.

    python benchmarks/fuzz_inputs.py --minutes 10              # prints counts by exception type
    python benchmarks/fuzz_inputs.py --minutes 1 --kinds ir    # only IR text

The mutations and chains are those of the test suite (tests/fuzz_mutations.py, tests/test_fuzz.py runs a short
budget). Cases run in a worker subprocess with an address-space limit (`--memory-gb`, 2 by default, via
resource.setrlimit) and a per-case timeout (`--timeout`): a hang is killed and counted, a MemoryError is counted.
Every outcome other than "ok" and a plain QCompilerError is a finding, saved under `--save` to reproduce.
A QCompilerError wrapping a Python exception raised inside qcompiler (a safety net caught a bug) is reported as
"wrapped <Type>" with the place it came from. Exit status 1 when there is any finding.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "@@fuzz "
KIND_WEIGHTS = {"ir": 0.75, "calib": 0.17, "keras": 0.08}


# ----------------------------------------------------------------------------------------------------
# worker: runs cases read from stdin, one JSON line each, and answers one line each
# ----------------------------------------------------------------------------------------------------
def worker(memory_gb: float, keras_seed: str) -> None:
    import resource

    import faulthandler

    faulthandler.enable()  # a segfault in a native library writes the Python stack to the worker's stderr
    limit = int(memory_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, str(ROOT))
    import warnings

    warnings.simplefilter("ignore")
    from qcompiler.errors import QCompilerError
    from qcompiler.quiet import silence_tensorflow_imports
    from tests import fuzz_mutations as fm

    silence_tensorflow_imports()
    seeds = fm.ir_seeds()
    calib = fm.calibration_seeds()
    folder = Path(tempfile.mkdtemp(prefix="qfuzz-"))
    print(MARK + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        start = time.perf_counter()
        try:
            _run_case(fm, case, seeds, calib, folder, keras_seed)
            outcome, where = "ok", ""
        except QCompilerError as err:
            bug = fm.internal_bug(err)
            outcome, where = ("QCompilerError", "") if bug is None else (f"wrapped {type(err.__cause__).__name__}",
                                                                         _short_place(bug))
        except BaseException as err:  # noqa: BLE001 - everything else is a finding
            outcome, where = type(err).__name__, _raise_place(err)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(MARK + json.dumps({"outcome": outcome, "where": where, "seconds": time.perf_counter() - start,
                                 "rss_mb": rss_mb}), flush=True)


def _run_case(fm, case: dict, seeds, calib, folder: Path, keras_seed: str) -> None:  # noqa: ANN001
    edits = [tuple(e) for e in case["edits"]]
    if case["kind"] == "ir":
        text = fm.mutate_ir(seeds[case["seed"] % len(seeds)], edits)
        fm.run_ir_chain(text, case["pipeline"])
    elif case["kind"] == "calib":
        names = sorted(calib)
        which = names[case["seed"] % len(names)]
        if case["seed"] % 5 == 0:  # a header that lies about the shape
            rng = random.Random(case["seed"])
            data = fm.npy_header(tuple(rng.randrange(1 << rng.choice((3, 20, 40))) for _ in range(rng.randrange(6))),
                                 rng.choice(["<f4", "<f8", ">i2", "|u1", "|O", "<U3", "V8"]), rng.randrange(256))
            which = ".npy"
        else:
            data = fm.mutate_bytes(calib[which], edits)
        path = folder / ("data.npz" if which.endswith(".npz") else "data.npy")
        path.write_bytes(data)
        fm.run_calibration_chain(path)
    else:
        kinds = ("zip",) + fm.CONFIG_EDITS
        # A fresh name per case: HDF5 keeps files it failed to read open, and rewriting such a file in place
        # under an open handle crashes it (a harness artefact, not a qcompiler input).
        path = folder / f"mutated-{case['seed']}.keras"
        path.write_bytes(fm.mutate_keras(Path(keras_seed).read_bytes(), kinds[case["seed"] % len(kinds)], edits))
        try:
            fm.run_keras_chain(path)
        finally:
            path.unlink()


def _short_place(place: str) -> str:
    marker = "/qcompiler/"
    return "qcompiler/" + place.split(marker, 1)[1] if marker in place else place


def _raise_place(err: BaseException) -> str:
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if "/qcompiler/" in f.filename] or frames[-1:]
    return _short_place(f"{ours[-1].filename}:{ours[-1].lineno}") if ours else "?"


# ----------------------------------------------------------------------------------------------------
# parent: draws cases, feeds the worker, enforces the timeout, counts
# ----------------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, memory_gb: float, keras_seed: str, log: Path) -> None:
        self.log = log
        with open(log, "ab") as stderr:  # the worker's stderr: why it died, when it does
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--worker", "--memory-gb", str(memory_gb), "--keras-seed", keras_seed],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT,
                start_new_session=True)
        self.buffer = ""
        if self.read(300) is None:
            raise RuntimeError("the fuzz worker did not start")

    def read(self, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            while "\n" in self.buffer:
                line, self.buffer = self.buffer.split("\n", 1)
                if line.startswith(MARK):
                    return json.loads(line[len(MARK):])
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536).decode(errors="replace")
                if not chunk:
                    return None  # the worker died
                self.buffer += chunk

    def run(self, case: dict, timeout: float):
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def draw_case(rng: random.Random, kinds: list[str]) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests import fuzz_mutations as fm

    weights = [KIND_WEIGHTS[k] for k in kinds]
    kind = rng.choices(kinds, weights)[0]
    edit_kinds = fm.IR_EDITS if kind == "ir" and rng.random() < 0.85 else fm.BYTE_EDITS
    edits = fm.random_edits(rng, edit_kinds)
    case = {"kind": kind, "seed": rng.randrange(1 << 30), "edits": edits, "pipeline": rng.choice(fm.PIPELINES)}
    if kind == "ir" and edit_kinds is fm.BYTE_EDITS:
        case["kind"] = "ir"  # byte edits on IR text: applied as text edits by position
        case["edits"] = [("drop-char" if e[0] in ("delete-range", "truncate") else "insert-text", e[1], e[2])
                         for e in edits]
    return case


def make_keras_seed(folder: Path) -> str:
    code = ("import sys; sys.path.insert(0, %r)\nfrom qcompiler.quiet import silence_tensorflow_imports\n"
            "silence_tensorflow_imports()\nfrom tests import fuzz_mutations as fm\n"
            "fm.seed_models()[1].save(%r)\n") % (str(ROOT), str(folder / "seed.keras"))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
    return str(folder / "seed.keras")


def campaign(minutes: float, seed: int, kinds: list[str], timeout: float, memory_gb: float,
             save: Path | None) -> int:
    folder = Path(tempfile.mkdtemp(prefix="qfuzz-seed-"))
    keras_seed = make_keras_seed(folder) if "keras" in kinds else ""
    rng = random.Random(seed)
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    places: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    findings: list[dict] = []
    peak_rss, slowest = 0.0, 0.0
    log = folder / "worker-stderr.log"
    worker = Worker(memory_gb, keras_seed, log)
    restarts = 0
    start = time.monotonic()
    end = start + minutes * 60
    next_report = start + 60
    while time.monotonic() < end:
        case = draw_case(rng, kinds)
        answer = worker.run(case, timeout)
        if answer == "timeout" or answer is None:
            outcome = "hang (killed after %gs)" % timeout if answer == "timeout" else "worker died"
            code = worker.proc.poll()
            worker.kill()
            if answer is None:
                outcome += f" (exit status {code})"
            worker = Worker(memory_gb, keras_seed, log)
            restarts += 1
            answer = {"outcome": outcome, "where": "", "seconds": timeout, "rss_mb": 0}
        counts[case["kind"]][answer["outcome"]] += 1
        peak_rss = max(peak_rss, answer["rss_mb"])
        slowest = max(slowest, answer["seconds"])
        if answer["outcome"] not in ("ok", "QCompilerError"):
            places[answer["outcome"]][answer["where"]] += 1
            findings.append({**case, **answer})
        if time.monotonic() >= next_report:
            done = sum(sum(c.values()) for c in counts.values())
            print(f"  {(time.monotonic() - start) / 60:5.1f} min: {done:,} cases, {len(findings)} findings",
                  flush=True)
            next_report += 60
    worker.kill()
    elapsed = time.monotonic() - start
    total = sum(sum(c.values()) for c in counts.values())
    print(f"\n===== fuzz campaign: {total:,} cases in {elapsed / 60:.1f} min ({total / elapsed:.0f}/s), seed {seed}, "
          f"timeout {timeout:g}s, memory limit {memory_gb:g} GiB =====")
    print(f"{'kind':6} {'outcome':34} {'count':>8}")
    for kind in kinds:
        for outcome, n in counts[kind].most_common():
            print(f"{kind:6} {outcome:34} {n:8,}")
    print(f"peak worker RSS {peak_rss:.0f} MB; slowest case {slowest:.2f} s; worker restarts {restarts} "
          f"(worker stderr: {log})")
    if places:
        print("\nfindings by place:")
        for outcome, where in places.items():
            for place, n in where.most_common():
                print(f"  {n:6,}  {outcome:28} {place}")
    if findings and save is not None:
        save.mkdir(parents=True, exist_ok=True)
        (save / "findings.json").write_text(json.dumps(findings[:500], indent=1))
        print(f"\nfindings saved to {save / 'findings.json'} (replay a case with --replay)")
    print(json.dumps({"cases": total, "minutes": round(elapsed / 60, 2), "findings": len(findings),
                      "counts": {k: dict(v) for k, v in counts.items()}, "peak_rss_mb": round(peak_rss),
                      "slowest_s": round(slowest, 2)}))
    return 1 if findings else 0


def replay(findings: Path, index: int) -> int:
    """Run one saved case in this process, without limits, so its traceback shows."""
    sys.path.insert(0, str(ROOT))
    from tests import fuzz_mutations as fm

    case = json.loads(findings.read_text())[index]
    folder = Path(tempfile.mkdtemp(prefix="qfuzz-replay-"))
    keras_seed = make_keras_seed(folder) if case["kind"] == "keras" else ""
    print(f"replaying {case['kind']} case {index}: {case['outcome']} at {case['where']}", flush=True)
    _run_case(fm, case, fm.ir_seeds(), fm.calibration_seeds(), folder, keras_seed)
    print("no exception")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="ir,calib,keras", help="comma-separated: ir, calib, keras")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per case before it counts as a hang")
    parser.add_argument("--memory-gb", type=float, default=2.0, help="address-space limit of the worker")
    parser.add_argument("--save", type=Path, default=Path("fuzz-findings"), help="folder for findings")
    parser.add_argument("--replay", type=Path, help="run case --index of a findings.json in this process")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keras-seed", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.memory_gb, args.keras_seed)
        return 0
    if args.replay:
        return replay(args.replay, args.index)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KIND_WEIGHTS]
    if unknown or not kinds:
        parser.error(f"unknown kinds {unknown}; choose from {sorted(KIND_WEIGHTS)}")
    return campaign(args.minutes, args.seed, kinds, args.timeout, args.memory_gb, args.save)


if __name__ == "__main__":
    sys.exit(main())
