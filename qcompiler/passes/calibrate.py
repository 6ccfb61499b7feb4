"""calibrate: run calibration data through the float graph and give every uncalibrated fake_quant a range.

Statistics are collected batch-wise into one `TensorStats` per quantized tensor (exact min/max, per-batch
min/max and a histogram), so another observer can be applied later without running the data again:

    stats = collect_statistics(graph, data)          # the expensive part
    apply_ranges(graph, stats, "percentile", percentile=99.99)
    apply_ranges(graph, stats, "minmax")             # changed your mind: no data needed

The float values come from an executor (`executor=`): `exact`, the default, runs qcompiler's own float .tflite
in TensorFlow's bundled TFLite runtime configured as TFLiteConverter's calibrator (its float values bit for bit);
`fast` runs it with XNNPACK; `numpy` in the IR interpreter (qcompiler/backend/tflite_executor.py).

Converter compatibility (the `tflite-2.21` policy, qcompiler/quant/policy.py): TFLiteConverter's calibrator logs
every op's inputs before *and after* the kernel runs, and TFLite runs some kernels in place, writing the output
into an input's buffer. Such an input is recorded with the union of its own range and the op's output range
(e.g. a residual block's last conv: [min(conv), max(relu(conv + shortcut))]). Which buffers are shared is the
TFLite runtime's rule, modelled in qcompiler/backend/tflite_arena.py; `collect_statistics` records the
consumer's range on the input (`TensorStats.note_inplace_write`) and `apply_ranges` gives the minmax observer the
union. The `plain` policy does neither.
"""
from __future__ import annotations

import sys
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Mapping, Optional, Protocol, Sequence, TextIO, Union

import numpy as np

from qcompiler.errors import QCompilerError
from qcompiler.ir import interpreter
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.passes.base import NOT_AN_OPTION, Pass, PassResult
from qcompiler.quant.observers import TensorStats, make_observer
from qcompiler.quant.policy import DEFAULT_POLICY, PolicyName, QuantPolicy, get_policy

CalibrationData = Union[np.ndarray, Sequence[np.ndarray], Mapping[str, np.ndarray]]

# Values per sample and tensor that go into each histogram (a strided sample; min/max always see every value):
# 1<<16 per tensor for a batch of 32. MobileNetV2 at 224x224, 100 images, against exact histograms: calibration
# 1.25 s instead of 4.1 s; percentile(99.99) and mse ranges move by a median 0 and at most 1.5% / 5% of the
# span, but kl ranges by up to the whole span (its window search reacts to sampling noise in sparse bins):
# use exact histograms (None) for kl.
HISTOGRAM_SAMPLE = 2048


class CalibrationError(QCompilerError):
    pass


class BatchRunner(Protocol):
    """Runs one batch of inputs (one array per graph input, in graph order) and returns the arrays of the wanted
    values. The arrays may be views into the runner's buffers that the next call overwrites: read them before
    the next call. `max_batch`: the most samples per call the runner wants (None: any); a statistics batch is
    fed to it in pieces of that size."""

    max_batch: Optional[int]

    def __call__(self, batch: Sequence[np.ndarray]) -> Mapping[str, np.ndarray]: ...


class Executor(Protocol):
    def __call__(self, graph: Graph, names: Sequence[str]) -> BatchRunner:
        """Prepare to run `graph` (fake_quant-free, float) and return a runner for the named values."""


class _NumpyRunner:
    max_batch: Optional[int] = None  # the interpreter is vectorised: the bigger the batch the better

    def __init__(self, graph: Graph, names: Sequence[str]) -> None:
        self.graph, self.wanted = graph, set(names)

    def __call__(self, batch: Sequence[np.ndarray]) -> Mapping[str, np.ndarray]:
        seen: dict[str, np.ndarray] = {}

        def observe(value: Value, array: np.ndarray) -> None:
            if value.name in self.wanted:
                seen[value.name] = array

        interpreter.run(self.graph, list(batch), observe=observe)
        return seen


def numpy_executor(graph: Graph, names: Sequence[str]) -> BatchRunner:
    """Runs the graph with the IR's numpy interpreter (any graph, also ones the backend cannot write)."""
    return _NumpyRunner(graph, names)


class CalibrationStats(dict):
    """Tensor name -> TensorStats for every calibrated tensor, plus how many samples were seen and how many
    tensors got an in-place range union."""

    samples: int = 0
    inplace_unions: int = 0


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------
# Calibration files are read only after their headers are checked: the bytes a header claims must be in the
# file (a 192-byte .npy claiming shape (2**36, 8, 8, 1) is refused, not allocated), and at most this much in all.
MAX_CALIBRATION_BYTES = 16 << 30


def load_calibration_data(path: Union[str, Path]) -> CalibrationData:
    """A .npy file (one array for a single-input model) or .npz file (arrays named after the inputs).

    No pickles (object arrays are refused); each array's header is checked against the bytes actually stored
    before anything is allocated."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration data '{path}' does not exist")
    if not path.is_file():
        raise CalibrationError(f"calibration data '{path}' is not a regular file")
    if path.suffix not in (".npy", ".npz"):
        raise CalibrationError(f"calibration data '{path}' must be a .npy or .npz file, not '{path.suffix}'")
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as handle:
                return _read_npy(handle, path.stat().st_size, f"'{path}'")
        return _read_npz(path)
    except CalibrationError:
        raise
    except Exception as err:  # numpy's header parser and zipfile raise many kinds (TokenError, SyntaxError ...)
        raise CalibrationError(f"cannot read calibration data '{path}': {type(err).__name__}: {err}") from None


def _read_npy(handle, size: int, where: str) -> np.ndarray:  # noqa: ANN001 - a binary file object
    """One array from an open .npy stream of `size` bytes, its header checked before allocating."""
    from numpy.lib import format as npy

    version = npy.read_magic(handle)
    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    if version not in readers:
        raise CalibrationError(f"calibration data {where}: unsupported .npy version {version} (expected 1.0 or 2.0)")
    shape, fortran, dtype = readers[version](handle)  # refuses headers over 10,000 bytes
    if dtype.hasobject:
        raise CalibrationError(f"calibration data {where} holds Python objects (a pickle); give a numeric array")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CalibrationError(f"calibration data {where}: bad shape {shape} in the header")
    count = 1
    for d in shape:
        count *= d
    nbytes = count * dtype.itemsize
    stored = size - handle.tell()
    if nbytes != stored:
        raise CalibrationError(f"calibration data {where}: the header claims shape {list(shape)} of {dtype} "
                               f"({nbytes:,} bytes) but the file holds {stored:,} bytes of data (truncated or "
                               "corrupt)")
    if nbytes > MAX_CALIBRATION_BYTES:
        raise CalibrationError(f"calibration data {where} is {nbytes:,} bytes, more than the "
                               f"{MAX_CALIBRATION_BYTES >> 30} GiB qcompiler reads")
    array = np.empty(count, dtype)  # allocated only now that the file is known to hold these bytes
    view, filled = memoryview(array.view(np.uint8)), 0
    while filled < nbytes:
        got = handle.readinto(view[filled:])
        if not got:
            raise CalibrationError(f"calibration data {where} ends early: {filled:,} of {nbytes:,} bytes")
        filled += got
    array = array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)
    return array


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        total = sum(info.file_size for info in members)
        if total > MAX_CALIBRATION_BYTES:
            raise CalibrationError(f"calibration data '{path}' unpacks to {total:,} bytes, more than the "
                                   f"{MAX_CALIBRATION_BYTES >> 30} GiB qcompiler reads")
        for info in members:
            if not info.filename.endswith(".npy"):
                raise CalibrationError(f"calibration data '{path}' holds '{info.filename}', not a .npy array")
            name = info.filename[:-len(".npy")]
            with archive.open(info) as handle:
                arrays[name] = _read_npy(handle, info.file_size, f"'{path}' (array '{name}')")
    if not arrays:
        raise CalibrationError(f"calibration data '{path}' holds no arrays")
    return arrays


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
            array = array[None]  # a single sample without its batch axis
        if array.ndim != value.type.rank or not value.type.matches(array.shape):
            expected = ", ".join(("N" if i == 0 else "?") if d is None else str(d)
                                 for i, d in enumerate(value.type.shape))
            raise CalibrationError(f"{where} has shape {list(array.shape)}; the model expects [{expected}] "
                                   "(N samples)")
        if array.shape[0] == 0:
            raise CalibrationError(f"{where} is empty: give at least one sample")
        array = np.asarray(array, np.float32)
        if not (np.isfinite(array.min()) and np.isfinite(array.max())):  # NaN and inf show in min or max
            bad = ~np.isfinite(array)
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
        raise CalibrationError(f"calibration data has arrays {sorted(data)}; name them after the model's inputs "
                               f"{names} (or arr_0, arr_1, ... in that order)")
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


# ----------------------------------------------------------------------------------------------------
# executors
# ----------------------------------------------------------------------------------------------------
# What runs the float graph over the calibration data (qcompiler/backend/tflite_executor.py):
#   exact  TensorFlow's bundled TFLite runtime set up as the converter's calibrator: its float values bit for bit,
#   fast   ai-edge-litert with XNNPACK (a few float32 ulps off the converter's values),
#   numpy  the IR interpreter (any graph, also ones the backend cannot write; slow).
EXECUTORS = ("exact", "fast", "numpy")
DEFAULT_EXECUTOR = "exact"
# The names calibrate_with= used before executors had names of their own.
EXECUTOR_ALIASES = {"tensorflow": "exact", "tflite": "fast"}


def get_executor(name: str) -> Executor:
    """The executor called `name` (exact, fast, numpy; tensorflow and tflite are the older names)."""
    name = EXECUTOR_ALIASES.get(name, name)
    if name == "numpy":
        return numpy_executor
    if name not in EXECUTORS:
        raise CalibrationError(f"unknown calibration executor '{name}'; choose one of {', '.join(EXECUTORS)}")
    from qcompiler.backend import tflite_executor  # the backend runs the graph it writes

    return tflite_executor.tensorflow_executor if name == "exact" else tflite_executor.tflite_executor


def inplace_writes(graph: Graph) -> list[tuple[Value, Value]]:
    """(input, output) pairs whose ranges the converter's calibrator unites (see qcompiler/backend/tflite_arena.py,
    which models the TFLite runtime's arena planner)."""
    from qcompiler.backend.tflite_arena import inplace_writes as arena_writes

    return arena_writes(graph)


# ----------------------------------------------------------------------------------------------------
# statistics and ranges
# ----------------------------------------------------------------------------------------------------
def collect_statistics(graph: Graph, data: CalibrationData, batch_size: int = 32,
                       executor: Optional[Executor] = None, progress: Optional[TextIO] = None,
                       bins: int = 2048, histogram_sample: Optional[int] = HISTOGRAM_SAMPLE,
                       policy: Union[str, QuantPolicy] = DEFAULT_POLICY) -> CalibrationStats:
    """Statistics of every calibration point over all of `data`, in batches of `batch_size` samples (what the
    moving-average observer averages over; the executor's runner may take each batch in smaller pieces).

    `histogram_sample`: values per sample and tensor that go into the histograms (None: all of them; see
    `TensorStats`). With the policy's `inplace_range_unions` (tflite-2.21), inputs of in-place kernels also get
    the kernel's output range (`inplace_writes`; the minmax observer then reports the union)."""
    if batch_size < 1:
        raise CalibrationError(f"calibration batch size must be at least 1, got {batch_size}")
    arrays = check_calibration_data(graph, data)
    names = sorted({n.operands[0].name for n in calibration_points(graph)})
    stats = CalibrationStats({name: TensorStats(bins=bins, name=name, sample_limit=histogram_sample)
                              for name in names})
    if not names:
        return stats
    plain = float_graph_of(graph)
    unions = get_policy(policy).inplace_range_unions
    writes = [(a.name, y.name) for a, y in (inplace_writes(plain) if unions else []) if a.name in stats]
    ranges = {y: [np.inf, -np.inf] for _, y in writes if y not in stats}  # min/max only, e.g. softmax outputs
    runner = (executor or numpy_executor)(plain, names + sorted(ranges))
    step = min(batch_size, runner.max_batch or batch_size)
    total = arrays[0].shape[0]
    bar = _Progress(total, progress)
    for batch_start in range(0, total, batch_size):
        batch_stop = min(batch_start + batch_size, total)
        for start in range(batch_start, batch_stop, step):  # a batch in pieces the runner can take
            stop = min(start + step, batch_stop)
            values = runner([a[start:stop] for a in arrays])
            for name in names:
                stats[name].update(values[name], new_batch=start == batch_start)
            for name, extent in ranges.items():
                lo, hi = _value_range(values[name])
                extent[0], extent[1] = min(extent[0], lo), max(extent[1], hi)
            del values  # may be views into the runner's buffers: let go before the next call
            bar.advance(stop - start)
    bar.close()
    for name, output in writes:
        lo, hi = ranges[output] if output in ranges else (stats[output].min, stats[output].max)
        stats[name].note_inplace_write(lo, hi)
    stats.samples = total
    stats.inplace_unions = len(writes)
    return stats


def _value_range(array: np.ndarray) -> tuple[float, float]:
    lo, hi = np.min(array), np.max(array)
    if np.isnan(lo) or np.isnan(hi):  # NaN is skipped, as the converter's calibration logger does
        lo, hi = np.nanmin(array), np.nanmax(array)
    return float(lo), float(hi)


def apply_ranges(graph: Graph, stats: Mapping[str, TensorStats], observer: str = "minmax",
                 policy: Union[str, QuantPolicy] = DEFAULT_POLICY, **options) -> int:
    """Set min/max of each fake_quant whose input has statistics; returns how many were set. The minmax observer
    includes in-place writes (`TensorStats.logged_range`) when the policy has in-place range unions."""
    rules = get_policy(policy)
    if observer == "minmax":
        options.setdefault("inplace", rules.inplace_range_unions)
    chosen = make_observer(observer, **options)
    applied = 0
    for node in graph.find("fake_quant"):
        name = node.operands[0].name
        if node.attrs["weights"] or name not in stats:
            continue
        where = _describe(node.operands[0])
        try:
            lo, hi = chosen.range(stats[name])
        except ValueError as err:
            raise CalibrationError(f"{where}: {err}") from None
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise CalibrationError(f"{where}: calibrated range [{lo}, {hi}] is not finite: the calibration data "
                                   "overflows float32 inside the model (values too large?); scale the data as the "
                                   "model expects it, or use a clipping observer (percentile, mse, kl)")
        lo, hi = _check_degenerate(float(lo), float(hi), where, widen=rules.widen_degenerate_ranges)
        node.attrs["min"], node.attrs["max"] = lo, hi
        applied += 1
    return applied


# A calibrated range narrower than this (after including 0) says nothing about the tensor's scale.
DEGENERATE_SPAN = 1e-6


class DegenerateRangeWarning(UserWarning):
    """Calibration saw (almost) one value for a tensor, e.g. all zeros."""


def _describe(value: Value) -> str:
    layer = f" (Keras layer '{value.layer}')" if value.layer else ""
    return f"tensor %{value.name}{layer}"


def _check_degenerate(lo: float, hi: float, where: str, widen: bool) -> tuple[float, float]:
    """A range that collapses to a point (all-zero data) gives a scale of ~1e-8 (int16: a denormal), so any other
    value at inference saturates. Warn; with `widen` (the plain policy) use a unit-wide range around the value,
    otherwise keep it, as the converter does."""
    if max(hi, 0.0) - min(lo, 0.0) >= DEGENERATE_SPAN:
        return lo, hi
    center = (lo + hi) / 2
    widened = (min(center - 0.5, 0.0), max(center + 0.5, 0.0))
    if widen:
        action = f"so [{widened[0]:g}, {widened[1]:g}] is used instead"
    else:
        action = (f"and is kept as the converter keeps it (any other value saturates); the plain policy would use "
                  f"[{widened[0]:g}, {widened[1]:g}]")
    warnings.warn(f"{where}: calibration saw only the value {center:g} (range [{lo:g}, {hi:g}]); its "
                  f"quantization range is degenerate, {action}. Calibrate with data that exercises this tensor",
                  DegenerateRangeWarning, stacklevel=3)
    return widened if widen else (lo, hi)


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


def _histogram_sample(observer: str) -> Optional[int]:
    """Values per sample that go into the histograms the observer needs: none for minmax and moving_average
    (they read min/max only), all of them for kl (it reacts to sampling noise), a strided sample otherwise."""
    return 0 if observer in ("minmax", "moving_average") else None if observer == "kl" else HISTOGRAM_SAMPLE


@dataclass(frozen=True)
class Calibrate(Pass):
    """Pipeline form: `calibrate{data=calib.npy,executor=exact,observer=minmax,policy=tflite-2.21}`.

    `observer_options` are `key=value` items (`observer_options=[percentile=99.9]`). From Python the data may
    instead be given in memory (`arrays`), or statistics gathered earlier (`stats`); neither is a pipeline option,
    so a pipeline string always names a file."""

    name: ClassVar[str] = "calibrate"
    summary: ClassVar[str] = "run calibration data (.npy/.npz) through the float graph and set fake_quant ranges"

    data: str = ""
    executor: str = DEFAULT_EXECUTOR
    observer: str = "minmax"
    observer_options: tuple[str, ...] = ()
    batch_size: int = 32
    policy: PolicyName = DEFAULT_POLICY
    arrays: Optional[CalibrationData] = field(default=None, compare=False, repr=False, metadata=NOT_AN_OPTION)
    stats: Optional[Mapping[str, TensorStats]] = field(default=None, compare=False, repr=False,
                                                       metadata=NOT_AN_OPTION)
    progress: Optional[TextIO] = field(default=None, compare=False, repr=False, metadata=NOT_AN_OPTION)

    def __post_init__(self) -> None:
        super().__post_init__()
        get_policy(self.policy)
        if EXECUTOR_ALIASES.get(self.executor, self.executor) not in EXECUTORS:
            raise CalibrationError(f"unknown calibration executor '{self.executor}'; choose one of "
                                   f"{', '.join(EXECUTORS)}")
        self.parsed_observer_options()

    def parsed_observer_options(self) -> dict[str, float]:
        options = {}
        for item in self.observer_options:
            key, eq, value = item.partition("=")
            try:
                options[key.strip()] = float(value) if "." in value or "e" in value.lower() else int(value)
            except ValueError:
                eq = ""
            if not eq:
                raise CalibrationError(f"observer option '{item}' must be key=number, e.g. percentile=99.99")
        return options

    def run(self, graph: Graph) -> PassResult:
        stats = self.stats
        if stats is None:
            stats = collect_statistics(graph, self._data(), batch_size=self.batch_size,
                                       executor=get_executor(self.executor), progress=self.progress,
                                       histogram_sample=_histogram_sample(self.observer),
                                       policy=self.policy)
        applied = apply_ranges(graph, stats, self.observer, policy=self.policy, **self.parsed_observer_options())
        counters = {"ranges-set": applied, "samples": getattr(stats, "samples", 0),
                    "inplace-unions": getattr(stats, "inplace_unions", 0)}
        return PassResult(applied > 0, {k: v for k, v in counters.items() if v})

    def _data(self) -> CalibrationData:
        if self.arrays is not None:
            return self.arrays
        if not self.data:
            raise CalibrationError("calibrate needs data: calibrate{data=samples.npy}")
        return load_calibration_data(self.data)
