"""The test zoo (tests/zoo.py) in int8 against TFLiteConverter: the issue-8 bar, latency included.

    python benchmarks/test_zoo_int8.py [--rounds 7] [--out results/test_zoo_int8.md]

Per model, both tools calibrate on the same samples as tests/test_int8_vs_converter.py (which checks everything
but latency, since tests are not timed): input/output quantization equal, share of identical int8 outputs and
largest difference on its 200 test inputs under BUILTIN_REF, file size ratio, and latency: batch 1, one thread,
the default resolver (XNNPACK), both models loaded side by side and invoked in turn, the median over `--rounds`
rounds of each round's fastest of 20 invocations (the models are tiny, so single invocations are noise).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

PER_ROUND = 20


def latency_ms(models: list[bytes], inputs: list[np.ndarray], rounds: int) -> list[float]:
    """Median over rounds of the fastest of PER_ROUND invocations, for each model, invoked in turn."""
    from ai_edge_litert.interpreter import Interpreter

    interpreters = []
    for data in models:
        interpreter = Interpreter(model_content=data, num_threads=1)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            shape = tuple(detail["shape"])
            interpreter.set_tensor(detail["index"], np.zeros(shape, detail["dtype"]))
        interpreter.invoke()
        interpreters.append(interpreter)
    best: list[list[float]] = [[] for _ in interpreters]
    for round_ in range(rounds):
        times: list[list[float]] = [[] for _ in interpreters]
        for i in range(PER_ROUND):
            order = list(range(len(interpreters)))
            for k in (order if (round_ + i) % 2 == 0 else order[::-1]):
                start = time.perf_counter()
                interpreters[k].invoke()
                times[k].append(time.perf_counter() - start)
        for k, samples in enumerate(times):
            best[k].append(min(samples))
    return [float(np.median(b) * 1000) for b in best]


def measure(name: str, rounds: int) -> dict:
    from tests.test_int8_vs_converter import _io_details, _params, _run_both, models
    from tests.zoo import ZOO

    model = ZOO[name]()
    ours, reference = models(name)
    io_ours, io_ref = (_io_details(m, model) for m in (ours, reference))
    io_equal = [_params(d) for d in io_ours[0] + io_ours[1]] == [_params(d) for d in io_ref[0] + io_ref[1]]
    got, expected = _run_both(name)
    a = np.concatenate([g.astype(np.int32).ravel() for g in got])
    b = np.concatenate([e.astype(np.int32).ravel() for e in expected])
    ms = latency_ms([ours, reference], [], rounds)
    return {"model": name, "io_equal": io_equal, "identical_pct": float(np.mean(a == b) * 100),
            "max_lsb": int(np.max(np.abs(a - b))), "size_ratio": len(ours) / len(reference),
            "latency_ms": ms, "latency_ratio": ms[0] / ms[1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args()
    from tests.zoo import ZOO

    lines = ["| model | I/O q | identical | max LSB | size (qc / conv) | latency ms (qc / conv) | latency ratio |",
             "|---|---|---|---|---|---|---|"]
    for name in ZOO:
        r = measure(name, args.rounds)
        lines.append(f"| {name} | {'equal' if r['io_equal'] else '**differ**'} | {r['identical_pct']:.2f}% "
                     f"| {r['max_lsb']} | {r['size_ratio']:.3f}x | {r['latency_ms'][0]:.4f} / "
                     f"{r['latency_ms'][1]:.4f} | {r['latency_ratio']:.2f}x |")
        print(lines[-1], flush=True)
    if args.out is not None:
        from qcompiler.files import atomic_write

        atomic_write(args.out, ("\n".join(lines) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
