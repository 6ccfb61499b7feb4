"""calibrate: run calibration data through the float graph and give every uncalibrated fake_quant a range.

Statistics are collected batch-wise into one `TensorStats` per quantized tensor (exact min/max, per-batch
min/max and a histogram), so another observer can be applied later without running the data again:

    stats = collect_statistics(graph, data)          # the expensive part
    apply_ranges(graph, stats, "percentile", percentile=99.99)
    apply_ranges(graph, stats, "minmax")             # changed your mind: no data needed

The float values come from an executor: the numpy interpreter by default; `qcompiler.compile` passes one that
runs qcompiler's own float .tflite in the TFLite interpreter, which is faster and sees the same float values
TFLiteConverter's calibrator sees.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Mapping, Optional, Protocol, Sequence, TextIO, Union

import numpy as np

from qcompiler.errors import QCompilerError
from qcompiler.ir import interpreter
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.passes.base import Pass, PassResult
from qcompiler.quant.observers import TensorStats, make_observer

BatchRunner = Callable[[Sequence[np.ndarray]], Mapping[str, np.ndarray]]
CalibrationData = Union[np.ndarray, Sequence[np.ndarray], Mapping[str, np.ndarray]]


class CalibrationError(QCompilerError):
    pass


class Executor(Protocol):
    def __call__(self, graph: Graph, names: Sequence[str]) -> BatchRunner:
        """Prepare to run `graph` (fake_quant-free, float) and return a function from one batch of inputs to
        the arrays of the named values."""


def numpy_executor(graph: Graph, names: Sequence[str]) -> BatchRunner:
    wanted = set(names)

    def run_batch(batch: Sequence[np.ndarray]) -> Mapping[str, np.ndarray]:
        seen: dict[str, np.ndarray] = {}

        def observe(value: Value, array: np.ndarray) -> None:
            if value.name in wanted:
                seen[value.name] = array

        interpreter.run(graph, list(batch), observe=observe)
        return seen

    return run_batch


class CalibrationStats(dict):
    """Tensor name -> TensorStats for every calibrated tensor, plus how many samples were seen."""

    samples: int = 0


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------
def load_calibration_data(path: Union[str, Path]) -> CalibrationData:
    """A .npy file (one array for a single-input model) or .npz file (arrays named after the inputs)."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration data '{path}' does not exist")
    if path.suffix not in (".npy", ".npz"):
        raise CalibrationError(f"calibration data '{path}' must be a .npy or .npz file, not '{path.suffix}'")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise CalibrationError(f"cannot read calibration data '{path}': {err}") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        return {key: loaded[key] for key in loaded.files}


def check_calibration_data(graph: Graph, data: CalibrationData) -> list[np.ndarray]:
    """One float32 array per graph input, all with the same number of samples; clear errors otherwise."""
    arrays = _arrays_by_input(graph, data)
    counts = set()
    checked = []
    for value, array in zip(graph.inputs, arrays):
        where = f"calibration data for input '{value.name}'"
        array = np.asarray(array)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.floating)
                                         or np.issubdtype(array.dtype, np.integer)):
            raise CalibrationError(f"{where} has dtype {array.dtype}; give float32 samples")
        if array.ndim == value.type.rank - 1 and value.type.matches((1,) + array.shape):
            array = array[None]
        if not value.type.matches((array.shape[0],) + array.shape[1:]) or array.ndim != value.type.rank:
            raise CalibrationError(f"{where} has shape {list(array.shape)}; the model expects "
                                   f"[N, {', '.join('?' if d is None else str(d) for d in value.type.shape[1:])}]")
        if array.shape[0] == 0:
            raise CalibrationError(f"{where} is empty: give at least one sample")
        array = array.astype(np.float32)
        bad = ~np.isfinite(array)
        if bad.any():
            sample = int(np.argwhere(bad)[0][0])
            kind = "NaN" if np.isnan(array).any() else "inf"
            raise CalibrationError(f"{where} contains {int(bad.sum())} non-finite values ({kind}), first in "
                                   f"sample {sample}; clean the data before calibrating")
        counts.add(array.shape[0])
        checked.append(array)
    if len(counts) > 1:
        raise CalibrationError(f"calibration inputs have different sample counts {sorted(counts)}")
    return checked


def _arrays_by_input(graph: Graph, data: CalibrationData) -> list[np.ndarray]:
    names = [v.name for v in graph.inputs]
    if isinstance(data, Mapping):
        if len(names) == 1 and len(data) == 1:
            return [next(iter(data.values()))]
        if all(n in data for n in names):
            return [data[n] for n in names]
        if all(f"arr_{i}" in data for i in range(len(names))):
            return [data[f"arr_{i}"] for i in range(len(names))]
        raise CalibrationError(f"calibration data has arrays {sorted(data)}; the model's inputs are {names}")
    if isinstance(data, np.ndarray) or not isinstance(data, Sequence):
        data = [data]
    if len(data) != len(names):
        raise CalibrationError(f"got {len(data)} calibration arrays for {len(names)} model inputs {names}")
    return list(data)


# ----------------------------------------------------------------------------------------------------
# statistics and ranges
# ----------------------------------------------------------------------------------------------------
def calibration_points(graph: Graph) -> list[Node]:
    """fake_quant nodes whose range comes from data: activations not yet calibrated and not fixed."""
    return [n for n in graph.find("fake_quant") if not n.attrs["weights"] and n.attrs["min"] is None]


def float_graph_of(graph: Graph) -> Graph:
    """A copy without fake_quant nodes: the float model the calibration data runs through."""
    plain = graph.clone()
    for node in list(plain.find("fake_quant")):
        plain.replace_node(node, [node.operands[0]])
    return plain


def collect_statistics(graph: Graph, data: CalibrationData, batch_size: int = 32,
                       executor: Optional[Executor] = None, progress: Optional[TextIO] = None,
                       bins: int = 2048) -> CalibrationStats:
    arrays = check_calibration_data(graph, data)
    points = calibration_points(graph)
    names = sorted({n.operands[0].name for n in points})
    stats = CalibrationStats({name: TensorStats(bins=bins, name=name) for name in names})
    if not names:
        return stats
    run_batch = (executor or numpy_executor)(float_graph_of(graph), names)
    total = arrays[0].shape[0]
    bar = _Progress(total, progress)
    for start in range(0, total, batch_size):
        batch = [a[start:start + batch_size] for a in arrays]
        values = run_batch(batch)
        for name in names:
            stats[name].update(values[name])
        bar.advance(len(batch[0]))
    bar.close()
    stats.samples = total
    return stats


def apply_ranges(graph: Graph, stats: Mapping[str, TensorStats], observer: str = "minmax", **options) -> int:
    """Set min/max of each fake_quant whose input has statistics; returns how many were set."""
    chosen = make_observer(observer, **options)
    applied = 0
    for node in graph.find("fake_quant"):
        name = node.operands[0].name
        if node.attrs["weights"] or name not in stats:
            continue
        lo, hi = chosen.range(stats[name])
        node.attrs["min"], node.attrs["max"] = float(lo), float(hi)
        applied += 1
    return applied


class _Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total: int, stream: Optional[TextIO]) -> None:
        self.total, self.done = total, 0
        self.stream = stream if stream is not None else (sys.stderr if sys.stderr.isatty() else None)
        self.start = time.perf_counter()

    def advance(self, n: int) -> None:
        self.done += n
        if self.stream is None:
            return
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        self.stream.write(f"\rcalibrating [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                          f"samples ({rate:.0f}/s)")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


@dataclass(frozen=True)
class Calibrate(Pass):
    name: ClassVar[str] = "calibrate"
    summary: ClassVar[str] = "run calibration data (.npy/.npz) through the float graph and set fake_quant ranges"

    data: str = ""
    observer: str = "minmax"
    batch_size: int = 32

    def run(self, graph: Graph) -> PassResult:
        if not self.data:
            raise CalibrationError("calibrate needs data: calibrate{data=samples.npy}")
        stats = collect_statistics(graph, load_calibration_data(self.data), batch_size=self.batch_size)
        applied = apply_ranges(graph, stats, self.observer)
        return PassResult(applied > 0, {"ranges-set": applied, "samples": stats.samples})
