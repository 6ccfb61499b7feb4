"""The keras.applications zoo: qcompiler against TFLiteConverter, every model, in one run.

    python benchmarks/zoo.py [--models ResNet50,VGG16] [--size 96] [--samples 20] [--jobs 1]
                             [--out zoo.md] [--json zoo.json]

Per model (weights=None, batch-norm statistics measured on the model's inputs with random gamma and beta, or with
`--batchnorm random` drawn at random with a fixed seed, 1000 classes):
- float32: compile time of both tools, op count, file size, interpreter latency, and each model's max abs error
  against Keras relative to max|Keras output|;
- int8 (`--samples` calibration samples, the same for both tools), twice: the logits model
  (`classifier_activation=None`, since a 1000-class softmax on random weights saturates int8 outputs and hides
  differences) and the outputs model (softmax): compile time, op count, size, latency, the share of identical int8
  values under BUILTIN_REF, the largest difference in LSB, and whether input/output quantization is equal.

Every model runs in its own process (this script with `--worker`), and every interpreter run in a process of its
own (`--run-tflite`), so an abort or a segfault becomes a failure row with a one-line reason; the run goes on.
The reference int8 SOFTMAX aborts on a near-uniform 1000-class softmax (its sum of exponentials reaches 512):
then both tools' int8 models are compared with the default kernels instead, marked † in the report. Latency: batch 1, one thread, the interpreter's
default resolver (XNNPACK), both tools' models loaded in one process and invoked in turn; the median over
`--latency-runs` rounds of each round's fastest of 5 invocations (more for models faster than 10 ms: as many as
fill 50 ms, up to 100), in CPU time of the invoking thread (with one thread the interpreter runs on the caller, so
time spent descheduled by other processes does not count: on the shared 2-core machine wall-clock medians vary
fivefold, e.g. EfficientNetB0 3 to 23 ms for either tool, while the thread's CPU time stays within a few
percent). The wall-clock figure is kept beside it (`latency_wall_ms`). That is measured in `--latency-processes`
fresh processes (load order alternating) and the median over them kept, the ratio as the median of the per-process
ratios: one process's ratio is steady, but it moves by up to ±10% from one process to the next, a model against a
copy of itself included (where the interpreter's buffers land in memory), so one process cannot resolve 5%.
Compile times are measured after both tools have compiled a tiny model in the same process (imports, first-call
costs). Both tools are timed in the same process one after the other, so the speed-ups hold on a busy machine
better than the absolute seconds do; `--jobs 2` halves the wall time on two cores at the cost of noisier seconds.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # this checkout's qcompiler and tests.zoo, not an installed copy
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

MODES = ("float32", "logits", "outputs")
DEFAULT_KERNELS_MARK = " †"  # int8 values compared with the default kernels: BUILTIN_REF aborted
LATENCY_PER_ROUND = 5  # invocations per model per latency round (at least); the fastest counts
LATENCY_ROUND_SECONDS = 0.05  # fast models get more invocations per round, up to this much time per model
TOOLS = ("qcompiler", "converter")
FAST_EXECUTOR = "fast"  # int8 modes also time qcompiler with this calibration executor (entry["qcompiler_fast"])


@dataclass(frozen=True)
class Settings:
    size: int = 96
    samples: int = 20
    eval_samples: int = 4
    latency_runs: int = 5  # rounds of LATENCY_PER_ROUND invocations, in each latency process
    latency_processes: int = 7  # fresh processes the latency is measured in (median over them)
    seed: int = 0
    modes: tuple[str, ...] = MODES
    timeout: float = 1200.0  # seconds per model
    warm_up: bool = True  # both tools compile a tiny model before anything is timed
    always_convert: bool = False  # run the converter even where qcompiler failed
    batchnorm: str = "data"  # batch-norm statistics: "data" or "random" (tests/zoo.py keras_application)
    compile_repeats: int = 1  # compiles per tool, alternating; the seconds shown are each tool's median

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        values = json.loads(text)
        values["modes"] = tuple(values["modes"])
        values.setdefault("batchnorm", "random")  # runs from before the option drew the statistics at random
        values.setdefault("latency_processes", 1)  # runs from before the option measured in one process
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


# ---------------------------------------------------------------- models

def build(name: str, size: int, seed: int, batchnorm: str = "data"):
    """A keras.applications model by name (softmax head), or `module:function` for any builder
    `function(size)` returning a single-input Keras model that ends in a softmax Dense layer."""
    if ":" in name:
        import importlib

        module, function = name.split(":", 1)
        return getattr(importlib.import_module(module), function)(size)
    from tests.zoo import keras_application

    return keras_application(name, size, seed, batchnorm)


def input_batch(name: str, model, n: int, seed: int) -> np.ndarray:
    """Inputs in the range the model expects: pixels through its preprocess_input (or standard normal for a
    custom builder)."""
    size = tuple(model.inputs[0].shape)[1:]
    if ":" in name:
        return np.random.default_rng(seed).standard_normal((n, *size)).astype(np.float32)
    from tests.zoo import keras_application_inputs

    return keras_application_inputs(name, size[0], n, seed)


def model_names() -> list[str]:
    from tests.zoo import keras_application_names

    return keras_application_names()


# ---------------------------------------------------------------- the two compilers

def qcompiler_compile(model, mode: str, calibration: Optional[np.ndarray]) -> bytes:
    import qcompiler

    if mode == "float32":
        return qcompiler.compile(model, mode="float32")
    return qcompiler.compile(model, mode="int8", calibration_data=calibration)


def qcompiler_compile_fast(model, mode: str, calibration: Optional[np.ndarray]) -> bytes:
    """int8 with the fast calibration executor (XNNPACK): timed only, beside the default (exact) compile."""
    import qcompiler

    return qcompiler.compile(model, mode="int8", calibration_data=calibration, executor=FAST_EXECUTOR)


def converter_compile(model, mode: str, calibration: Optional[np.ndarray]) -> bytes:
    from qcompiler.demo import converter_float32, converter_int8

    if mode == "float32":
        return converter_float32(model)
    return converter_int8(model, calibration)


COMPILERS: dict[str, Callable[[Any, str, Optional[np.ndarray]], bytes]] = {
    "qcompiler": qcompiler_compile,
    "converter": converter_compile,
}


def warm_up() -> None:
    """Both tools compile a tiny model in float32 and int8 once, so first-call costs stay out of the timings."""
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    samples = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
    for compile_fn in COMPILERS.values():
        for mode in ("float32", "int8"):
            compile_fn(model, mode, samples)
    qcompiler_compile_fast(model, "int8", samples)


# ---------------------------------------------------------------- the interpreter, in a process of its own

def run_tflite(model_path: str, inputs_path: str, result_path: str, resolver: str = "BUILTIN_REF") -> None:
    """(`--run-tflite`) Run a .tflite under BUILTIN_REF (or another `OpResolverType`) on the float inputs (quantized
    for integer inputs) and count its ops; writes the raw outputs and those facts to `result_path` (.npz)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    x = np.load(inputs_path)
    reference = Interpreter(model_path=model_path, experimental_op_resolver_type=OpResolverType[resolver])
    if len(reference.get_input_details()) != 1:
        raise ValueError(f"the zoo runs single-input models; this one has {len(reference.get_input_details())}")
    ops = [op["op_name"] for op in reference._get_ops_details()]
    detail = reference.get_input_details()[0]
    reference.resize_tensor_input(detail["index"], list(x.shape))
    reference.allocate_tensors()
    reference.set_tensor(detail["index"], _to_input(x, detail))
    reference.invoke()
    outputs = [reference.get_tensor(d["index"]).copy() for d in reference.get_output_details()]
    io = [_io_fact(d) for d in (*reference.get_input_details(), *reference.get_output_details())]
    meta = {"ops": ops, "io": io}
    np.savez(result_path, meta=json.dumps(meta), **{f"output_{i}": o for i, o in enumerate(outputs)})


def measure_latency(model_paths: list[str], inputs_path: str, result_path: str, rounds: int,
                    per_round: Optional[int] = None) -> None:
    """(`--latency`) Invoke time of each model: batch 1, one thread, the default resolver (XNNPACK). The models are
    loaded side by side and invoked in turn; each round keeps every model's fastest of `per_round` invocations, and
    the result is the median of the rounds, in CPU time of this thread ("cpu": the one-thread interpreter runs on
    the caller, so time descheduled by other processes is left out) and in wall-clock time ("wall"). On a shared
    machine wall-clock invocations vary tenfold with other processes' load; the thread's CPU time does not."""
    from ai_edge_litert.interpreter import Interpreter

    x = np.load(inputs_path)[:1]
    interpreters = []
    for path in model_paths:
        interpreter = Interpreter(model_path=path, num_threads=1)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], _to_input(x, detail))
        interpreter.invoke()  # warm-up
        interpreters.append(interpreter)
    if per_round is None:  # at least LATENCY_PER_ROUND, more for sub-millisecond models (a steadier minimum)
        per_round = max(LATENCY_PER_ROUND, min(100, int(LATENCY_ROUND_SECONDS / _fastest_invoke(interpreters))))
    best = {clock: [[] for _ in interpreters] for clock in ("cpu", "wall")}
    for round_ in range(rounds):
        times = {clock: [[] for _ in interpreters] for clock in best}
        for i in range(per_round):
            order = range(len(interpreters)) if (round_ + i) % 2 == 0 else reversed(range(len(interpreters)))
            for k in order:
                wall, cpu = time.perf_counter(), time.thread_time()
                interpreters[k].invoke()
                times["cpu"][k].append(time.thread_time() - cpu)
                times["wall"][k].append(time.perf_counter() - wall)
        for clock, per_model in times.items():
            for k, samples in enumerate(per_model):
                best[clock][k].append(min(samples))
    Path(result_path).write_text(json.dumps({clock: [float(np.median(b) * 1000) for b in per_model]
                                             for clock, per_model in best.items()}))


def _fastest_invoke(interpreters: list) -> float:
    """The slowest model's fastest of 3 invocations, in seconds of this thread's CPU time."""
    fastest = []
    for interpreter in interpreters:
        times = []
        for _ in range(3):
            start = time.thread_time()
            interpreter.invoke()
            times.append(time.thread_time() - start)
        fastest.append(min(times))
    return max(max(fastest), 1e-6)


def _to_input(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if np.issubdtype(detail["dtype"], np.floating) or scale == 0:
        return x.astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(detail["dtype"])


def _io_fact(detail: dict) -> list:
    scale, zero_point = detail["quantization"]
    return [np.dtype(detail["dtype"]).name, float(scale), int(zero_point)]


class StepCrash(RuntimeError):
    """A child process died (signal, non-zero exit, timeout)."""


def run_child(args: list[str], log_path: Path, timeout: float, what: str) -> None:
    """Run this script with `args` in a new process; raise StepCrash naming `what` if it dies or hangs."""
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    with open(log_path, "wb") as log:
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise StepCrash(f"{what} did not finish in {timeout:.0f} s") from None
    if code != 0:
        raise StepCrash(f"{what} {describe_exit(code)}{last_line(log_path)}")


def run_tflite_isolated(model_path: Path, inputs_path: Path, timeout: float = 1200.0,
                        resolver: str = "BUILTIN_REF") -> tuple[dict, list[np.ndarray]]:
    result_path = model_path.with_suffix(f".{resolver}.npz")
    run_child(["--run-tflite", str(model_path), str(inputs_path), str(result_path), resolver],
              model_path.with_suffix(f".{resolver}.log"), timeout, f"the {resolver} interpreter")
    with np.load(result_path) as result:
        meta = json.loads(str(result["meta"]))
        outputs = [result[f"output_{i}"] for i in range(len(result.files) - 1)]
    return meta, outputs


def latency_isolated(model_paths: list[Path], inputs_path: Path, runs: int,
                     timeout: float = 1200.0) -> dict[str, list[float]]:
    """{"cpu": [ms per model], "wall": [ms per model]} (see measure_latency)."""
    result_path = model_paths[0].with_suffix(".latency.json")
    run_child(["--latency", ",".join(map(str, model_paths)), str(inputs_path), str(result_path), str(runs)],
              result_path.with_suffix(".log"), timeout, "the latency run (default resolver)")
    return json.loads(result_path.read_text())


def latency_in_processes(model_paths: list[Path], inputs_path: Path, runs: int, processes: int,
                         timeout: float = 1200.0) -> dict:
    """Latency measured in `processes` fresh processes (the models' load order alternating), each as
    `latency_isolated`. Why: within one process the models' ratio is steady (interquartile range of the rounds
    ±1%), but from one process to the next it moves by up to ±10%, the same .tflite loaded twice included
    (InceptionV3 against a copy of itself: 0.89x to 1.10x in 8 processes; where the interpreter's buffers land in
    memory decides it, not the model), so one process cannot tell 5% apart. Returns per clock ("cpu", "wall") the
    median over the processes per model, "cpu_processes" (every process's figure per model) and, for two models,
    "cpu_ratio": the median over the processes of the first model's time / the second's."""
    per_process: list[dict[str, list[float]]] = []
    for k in range(max(1, processes)):
        order = list(range(len(model_paths)))
        if k % 2:
            order.reverse()
        result = latency_isolated([model_paths[i] for i in order], inputs_path, runs, timeout)
        per_process.append({clock: [result[clock][order.index(i)] for i in range(len(model_paths))]
                            for clock in ("cpu", "wall")})
    summary: dict[str, Any] = {clock: [float(np.median([p[clock][i] for p in per_process]))
                                       for i in range(len(model_paths))] for clock in ("cpu", "wall")}
    summary["cpu_processes"] = [[p["cpu"][i] for p in per_process] for i in range(len(model_paths))]
    if len(model_paths) == 2:
        summary["cpu_ratio"] = float(np.median([p["cpu"][0] / p["cpu"][1] for p in per_process]))
    return summary


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def last_line(log_path: Path) -> str:
    """': <the last non-empty line of a child's log>', or '' if it wrote nothing."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:200]}" if lines else ""


# ---------------------------------------------------------------- one model (`--worker`)

class Recorder:
    """The row of one model, saved after every step, so the parent still has it if this process dies."""

    def __init__(self, row: dict, path: Path):
        self.row, self.path = row, path

    def save(self) -> None:
        from qcompiler.files import atomic_write

        atomic_write(self.path, json.dumps(self.row, indent=1).encode())

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        """Run a step; an exception becomes a failure '<label>: <reason>' and the run goes on."""
        self.row["step"] = label
        self.save()
        started = time.perf_counter()
        try:
            yield
        except Exception as err:  # noqa: BLE001  (every failure is a row, never the end of the run)
            self.row["failures"].append(f"{label}: {one_line(err)}")
        finally:
            self.row["step_seconds"][label] = round(time.perf_counter() - started, 3)
            self.save()


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if not isinstance(err, StepCrash) else text[:300]


def measure_model(name: str, settings: Settings, row_path: Path) -> dict:
    """Everything the zoo table shows for one model; failures are recorded in row['failures']."""
    rec = Recorder({"model": name, "failures": [], "step": "start", "step_seconds": {}}, row_path)
    # beside the row, in the parent's folder: the parent removes it even if this process dies
    with tempfile.TemporaryDirectory(prefix=f"{row_path.stem}-", dir=row_path.parent) as tmp_dir:
        tmp = Path(tmp_dir)
        models = {}
        with rec.step("build"):
            models["outputs"] = build(name, settings.size, settings.seed, settings.batchnorm)
            from tests.zoo import logits_model

            models["float32"] = models["logits"] = logits_model(models["outputs"])
            rec.row["input"] = list(tuple(models["outputs"].inputs[0].shape)[1:])
            rec.row["params"] = int(models["outputs"].count_params())
            rec.row["layers"] = len(models["outputs"].layers)
        if "logits" not in models:
            return rec.row
        calibration = input_batch(name, models["outputs"], settings.samples, settings.seed)
        x = input_batch(name, models["outputs"], settings.eval_samples, settings.seed + 1)
        inputs_path = tmp / "inputs.npy"
        np.save(inputs_path, x)
        if settings.warm_up:
            with rec.step("warm-up"):
                warm_up()
        for mode in settings.modes:
            measure_mode(rec, mode, models[mode], calibration, x, inputs_path, tmp, settings)
            rec.row.setdefault("peak_rss_mb", {})[mode] = peak_rss_mb()
    rec.row["step"] = "done"
    rec.save()
    return rec.row


def measure_mode(rec: Recorder, mode: str, model, calibration: np.ndarray, x: np.ndarray, inputs_path: Path,
                 tmp: Path, settings: Settings) -> None:
    entry: dict[str, Any] = rec.row.setdefault(mode, {})
    compile_mode = "float32" if mode == "float32" else "int8"
    outputs: dict[str, list[np.ndarray]] = {}
    io: dict[str, list] = {}
    seconds: dict[str, list[float]] = {}
    for repeat in range(settings.compile_repeats):  # the tools in turn, so a change of load hits both
        for tool, compile_fn in COMPILERS.items():
            if tool == "converter" and "qcompiler" not in entry and not settings.always_convert:
                entry["converter_skipped"] = True  # qcompiler failed: nothing to compare with, save the time
                continue
            if repeat and tool not in seconds:  # failed the first time
                continue
            with rec.step(f"{mode}: {tool} compile"):
                start, cpu = time.perf_counter(), time.process_time()
                data = compile_fn(model, compile_mode, calibration)
                seconds.setdefault(tool, []).append(time.perf_counter() - start)
                entry[tool] = {"seconds": round(statistics.median(seconds[tool]), 3), "bytes": len(data),
                               "cpu_seconds": round(time.process_time() - cpu, 3)}
                if len(seconds[tool]) > 1:
                    entry[tool]["seconds_each"] = [round(t, 3) for t in seconds[tool]]
                (tmp / f"{mode}-{tool}.tflite").write_bytes(data)
                del data
            release_memory()
            if repeat == 0 and tool == "qcompiler" and compile_mode == "int8" and "qcompiler" in entry:
                # timed between the default compile and the converter's, so drift of the machine's load favours
                # neither
                with rec.step(f"{mode}: qcompiler compile (executor={FAST_EXECUTOR})"):
                    start, cpu = time.perf_counter(), time.process_time()
                    data = qcompiler_compile_fast(model, compile_mode, calibration)
                    entry["qcompiler_fast"] = {"seconds": round(time.perf_counter() - start, 3), "bytes": len(data),
                                               "cpu_seconds": round(time.process_time() - cpu, 3)}
                    del data
                release_memory()
    compiled = [tool for tool in TOOLS if tool in entry]
    run_models(rec, mode, compiled, entry, tmp, inputs_path, outputs, io)
    # the values first, then the latency: the float error needs the Keras model in this process, the latency
    # processes load both .tflite files beside it, so the comparison's memory is returned before they start
    compare_outputs(rec, mode, model, x, entry, outputs, io)
    outputs.clear()
    release_memory()
    if compiled and settings.latency_runs > 0:
        with rec.step(f"{mode}: latency"):
            # in several processes, the load order alternating: the model loaded first runs a few percent faster
            # in the same process (VGG16 int8, the same two files: 0.92-0.97x first, 1.03-1.09x second)
            paths = [tmp / f"{mode}-{tool}.tflite" for tool in compiled]
            latency = latency_in_processes(paths, inputs_path, settings.latency_runs, settings.latency_processes)
            for k, tool in enumerate(compiled):
                entry[tool]["latency_ms"] = latency["cpu"][k]
                entry[tool]["latency_wall_ms"] = latency["wall"][k]
                entry[tool]["latency_processes_ms"] = latency["cpu_processes"][k]
            if "cpu_ratio" in latency:
                entry["latency_ratio"] = latency["cpu_ratio"]


def compare_outputs(rec: Recorder, mode: str, model, x: np.ndarray, entry: dict,
                    outputs: dict[str, list[np.ndarray]], io: dict[str, list]) -> None:
    """float32: each tool's max error against Keras relative to max|Keras|; int8: identical values and I/O
    quantization of the two tools' models."""
    if mode == "float32" and outputs:
        with rec.step("float32: error against Keras"):
            reference = np.asarray(model(x, training=False), np.float32)
            scale = float(np.max(np.abs(reference))) or 1.0
            for tool, result in outputs.items():
                entry[tool]["max_error_rel"] = float(np.max(np.abs(result[0] - reference))) / scale
            del reference
    elif len(outputs) == 2:
        with rec.step(f"{mode}: compare int8"):
            entry.update(compare_int8(outputs["qcompiler"], outputs["converter"]))
            entry["io_equal"] = io["qcompiler"] == io["converter"]
            entry["io_difference"] = io_difference(io["qcompiler"], io["converter"])
            entry["io"] = io


def peak_rss_mb() -> int:
    """The largest resident set so far of this worker process, in MiB (its child processes not included)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the system (glibc keeps it otherwise; a ConvNeXtXLarge worker
    reached 9 GB), so the interpreter and latency processes that follow find it free."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_models(rec: Recorder, mode: str, compiled: list[str], entry: dict, tmp: Path, inputs_path: Path,
               outputs: dict[str, list[np.ndarray]], io: dict[str, list]) -> None:
    """Each tool's model under BUILTIN_REF. If the reference kernels abort on an int8 model (the int8 SOFTMAX
    reference kernel stops the process when its sum of exponentials reaches 512, i.e. on a near-uniform softmax
    over 512 or more classes: README), both tools' models run again with the default kernels, so the comparison
    is still like for like; the entry records it (`kernels`, `reference_crash`)."""
    crashed: dict[str, str] = {}
    for tool in compiled:
        with rec.step(f"{mode}: {tool} model under BUILTIN_REF"):
            try:
                meta, outputs[tool] = run_tflite_isolated(tmp / f"{mode}-{tool}.tflite", inputs_path)
            except StepCrash as err:
                if mode == "float32" or "was killed by" not in str(err):
                    raise
                crashed[tool] = str(err)
                continue
            io[tool] = meta["io"]
            entry[tool].update(ops=len(meta["ops"]), op_types=_histogram(meta["ops"]))
    if not crashed:
        return
    entry["reference_crash"], entry["kernels"] = crashed, "default"
    outputs.clear()
    for tool in compiled:
        with rec.step(f"{mode}: {tool} model under the default kernels (BUILTIN_REF aborted)"):
            meta, outputs[tool] = run_tflite_isolated(tmp / f"{mode}-{tool}.tflite", inputs_path, resolver="AUTO")
            io[tool] = meta["io"]
            entry[tool].update(ops=len(meta["ops"]), op_types=_histogram(meta["ops"]))


def compare_int8(ours: list[np.ndarray], theirs: list[np.ndarray]) -> dict:
    if [o.shape for o in ours] != [t.shape for t in theirs]:
        raise ValueError(f"output shapes differ: {[o.shape for o in ours]} vs {[t.shape for t in theirs]}")
    a = np.concatenate([o.astype(np.int64).ravel() for o in ours])
    b = np.concatenate([t.astype(np.int64).ravel() for t in theirs])
    return {"identical_pct": float(np.mean(a == b) * 100), "max_lsb": int(np.max(np.abs(a - b))), "values": int(a.size)}


def io_difference(ours: list, theirs: list) -> str:
    """How the (dtype, scale, zero point) of the model inputs then outputs differ: '' if equal, else e.g.
    'output 0: scale 1 ulp' (float32 ulps) or 'input 0: zero point 3 vs 2'."""
    if len(ours) != len(theirs):
        return f"{len(ours)} vs {len(theirs)} inputs+outputs"
    inputs = 1  # every zoo model has one input (run_tflite checks)
    notes = []
    for i, ((dtype_a, scale_a, zp_a), (dtype_b, scale_b, zp_b)) in enumerate(zip(ours, theirs)):
        where = f"input {i}" if i < inputs else f"output {i - inputs}"
        if dtype_a != dtype_b:
            notes.append(f"{where}: {dtype_a} vs {dtype_b}")
        elif zp_a != zp_b:
            notes.append(f"{where}: zero point {zp_a} vs {zp_b}")
        elif scale_a != scale_b:
            ulps = abs(int(np.float32(scale_a).view(np.int32)) - int(np.float32(scale_b).view(np.int32)))
            notes.append(f"{where}: scale {ulps} ulp" if ulps < 1000
                         else f"{where}: scale {scale_a:.4g} vs {scale_b:.4g}")
    return ", ".join(notes)


def _histogram(ops: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------- the parent: one process per model

def run_isolated(name: str, settings: Settings, work_dir: Path) -> dict:
    """measure_model in a fresh process; a crash or a timeout becomes a failure with the step it happened in."""
    safe = name.replace(":", "-").replace("/", "-")
    row_path, log_path = work_dir / f"{safe}.json", work_dir / f"{safe}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, json.dumps(asdict(settings)),
               str(row_path)]
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=settings.timeout).returncode
            problem = None if code == 0 else f"the model's process {describe_exit(code)}{last_line(log_path)}"
        except subprocess.TimeoutExpired:
            problem = f"timed out after {settings.timeout:.0f} s"
    try:
        row = json.loads(row_path.read_text())
    except (OSError, ValueError):
        row = {"model": name, "failures": [], "step": "start", "step_seconds": {}}
    if problem is not None:
        row["failures"].append(f"{row.get('step', 'start')}: {problem}")
    row["wall_seconds"] = round(time.perf_counter() - started, 1)
    return row


def run_zoo(names: list[str], settings: Settings, jobs: int = 1,
            on_row: Optional[Callable[[list[dict]], None]] = None) -> list[dict]:
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="zoo-run-") as work_dir:
        def one(name: str) -> None:
            rows[name] = run_isolated(name, settings, Path(work_dir))
            done = [rows[n] for n in names if n in rows]
            print(f"[{len(done)}/{len(names)}] {name}: {row_summary(rows[name])}", flush=True)
            if on_row is not None:
                on_row(done)

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(one, names))
    return [rows[n] for n in names]


def row_summary(row: dict) -> str:
    parts = [f"{row.get('wall_seconds', 0):.0f} s"]
    for mode in MODES:
        entry = row.get(mode, {})
        if "identical_pct" in entry:
            parts.append(f"{mode} {percent(entry['identical_pct'])} identical, {entry['max_lsb']} LSB")
    if row["failures"]:
        parts.append(f"{len(row['failures'])} failure(s): {row['failures'][0]}")
    return ", ".join(parts)


# ---------------------------------------------------------------- report

def machine() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def package(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git_commit(), "cpus": os.cpu_count(), "cpu": cpu, "system": platform.system(),
            "python": platform.python_version(), "tensorflow": package("tensorflow"), "keras": package("keras"),
            "ai_edge_litert": package("ai-edge-litert")}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def git_commit() -> str:
    commit = _git("rev-parse", "--short=10", "HEAD") or "unknown"
    return commit + (" + uncommitted changes" if _git("status", "--porcelain", "--untracked-files=no") else "")


def package_commit(commit: str) -> str:
    """The last commit at or before `commit` that changed qcompiler/ (what was measured), if git knows it."""
    bare = commit.split(" ")[0]
    found = _git("log", "-1", "--format=%h", "--abbrev=10", bare, "--", "qcompiler") if bare != "unknown" else ""
    return (found or bare) + commit[len(bare):]


def shown_modes(rows: list[dict], settings: Settings) -> tuple[str, ...]:
    """The modes measured now or in the rows kept from an earlier run (`--update --modes ...`)."""
    return tuple(m for m in MODES if m in settings.modes or any(m in row for row in rows))


def markdown(rows: list[dict], header: dict, settings: Settings, jobs: int, not_measured: Sequence[str] = ()) -> str:
    modes = shown_modes(rows, settings)
    lines = [
        "# qcompiler vs TFLiteConverter on keras.applications", "",
        f"{header['date']} · {commits_text(rows, header)} · {header['cpus']} CPUs ({header['cpu']}), "
        f"{header['system']} · Python {header['python']}, TensorFlow {header['tensorflow']}, Keras {header['keras']}, "
        f"ai-edge-litert {header['ai_edge_litert']} · `--jobs {jobs}`"
        + (f" · {header['wall_minutes']} min" if "wall_minutes" in header else ""),
        "",
        f"Input {settings.size}x{settings.size} (larger where a model requires it), weights=None, batch-norm "
        + (f"statistics randomized (seed {settings.seed})" if settings.batchnorm == "random" else
           f"statistics from the data (random gamma and beta, seed {settings.seed}; moving statistics measured on 8 "
           "preprocessed inputs)")
        + f", 1000 classes; int8 calibrated on the same {settings.samples} "
        f"samples by both tools; values compared on {settings.eval_samples} other samples under BUILTIN_REF; latency "
        f"is the median over {settings.latency_processes} fresh processes (load order alternating; the ratio: the median "
        f"of the per-process ratios; rows marked \"1 proc.\" were measured in one) of each process's median over "
        f"{settings.latency_runs} rounds of the fastest of {LATENCY_PER_ROUND} (or as many as fill "
        f"{LATENCY_ROUND_SECONDS * 1000:.0f} ms, up to 100) single-threaded "
        "batch-1 invocations with the default resolver (XNNPACK), both tools' models invoked in turn (rows with `latency_ms_orders` were "
        "measured in one process per load order and averaged), in CPU time "
        "of the invoking thread (time descheduled by other processes left out). "
        f"Speed-up = converter time / qcompiler time, int8 with the default (exact) calibration executor and "
        f"with `executor=\"{FAST_EXECUTOR}\"` (exact / {FAST_EXECUTOR}), each compiled in the same process"
        + (f" (compile times: each tool's median of {settings.compile_repeats} compiles, the tools in turn)"
           if settings.compile_repeats > 1 else "")
        + ". CPU speed-up: the same in CPU seconds of all the process's "
        "threads, steadier than wall time on a loaded machine (a compile's many threads get more of a shared CPU). "
        "Size and latency in the int8 table are qcompiler / converter.",
        "", *summary(rows), "",
        *([f"Not measured in this run: {', '.join(not_measured)}.", ""] if not_measured else []),
        *overview(rows, settings), "",
    ]
    several = len({package_commit(row.get("commit", header["commit"])) for row in rows}) > 1
    if "float32" in modes:
        lines += ["## float32", "",
                  "| model | input | params | compile s (qc / conv) | speed-up | ops (qc / conv) | KiB (qc / conv) "
                  "| latency ms (qc / conv) | max err / max\\|ref\\| (qc / conv) |"
                  + (" qcompiler/ at |" if several else ""),
                  "|---|---|---|---|---|---|---|---|---|" + ("---|" if several else "")]
        measured = [row for row in rows if _compiled(row, "float32")]
        lines += [float_line(row) + (f" {package_commit(row.get('commit', header['commit']))} |" if several else "")
                  for row in measured]
        lines += ["", *_left_out(rows, measured)]
    int8_modes = [m for m in ("logits", "outputs") if m in modes]
    if int8_modes:
        lines += ["## int8", "",
                  "logits: `classifier_activation=None`; outputs: the softmax model. "
                  "identical = share of equal int8 values, LSB = largest difference, I/O q = input and output scale "
                  "and zero point equal.", "",
                  f"| model | mode | compile s (qc / qc {FAST_EXECUTOR} / conv) | speed-up (exact / {FAST_EXECUTOR}) "
                  "| CPU speed-up | ops (qc / conv) | size | latency "
                  "| identical | max LSB | I/O q |" + (" qcompiler/ at |" if several else ""),
                  "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if several else "")]
        measured = [row for row in rows if any(_compiled(row, mode) for mode in int8_modes)]
        lines += [int8_line(row, mode) + (f" {package_commit(row.get('commit', header['commit']))} |" if several else "")
                  for row in measured for mode in int8_modes if _compiled(row, mode)]
        lines += ["", *_left_out(rows, measured)]
    differences = [(row["model"], mode, op_differences(row[mode])) for row in rows for mode in modes
                   if op_differences(row.get(mode, {}))]
    if differences:
        lines += ["## Op count differences", "", "| model | mode | op: qcompiler vs converter |", "|---|---|---|"]
        lines += [f"| {model} | {mode} | {text} |" for model, mode, text in differences]
        lines.append("")
    aborted = [(row["model"], mode, tool, reason) for row in rows for mode in int8_modes
               for tool, reason in row.get(mode, {}).get("reference_crash", {}).items()]
    if aborted:
        lines += ["## BUILTIN_REF aborts", "",
                  f"{DEFAULT_KERNELS_MARK.strip()} these models stopped the reference-kernel process; both tools' models "
                  "were then compared with the default kernels. The int8 SOFTMAX reference kernel checks that its "
                  "output shift is at most 31, which fails once the sum of exponentials reaches 512 (a near-uniform "
                  "softmax over 512 or more classes, as random weights give); the optimized kernel uses a table and "
                  "has no such limit.", "", "| model | mode | tool | reason |", "|---|---|---|---|"]
        lines += [f"| {model} | {mode} | {tool} | {cell(reason)} |" for model, mode, tool, reason in aborted]
        lines.append("")
    failures = [(row["model"], failure) for row in rows for failure in grouped_failures(row["failures"])]
    if failures:
        lines += ["## Failures", "", "| model | step: reason |", "|---|---|"]
        lines += [f"| {model} | {cell(failure)} |" for model, failure in failures]
        lines.append("")
    return "\n".join(lines)


def overview(rows: list[dict], settings: Settings) -> list[str]:
    """One line per model: the figures the acceptance criteria name, and the first failure."""
    modes = shown_modes(rows, settings)
    columns = {"float32": "float32: speed-up, ops (qc / conv), qc error",
               "logits": f"int8 logits: speed-up (exact / {FAST_EXECUTOR}), identical, LSB", "outputs": "int8 outputs: identical, LSB"}
    lines = ["## Overview", "", "| model | " + " | ".join(columns[m] for m in modes) + " | I/O q (logits / outputs) "
             "| first failure |", "|---|" + "---|" * (len(modes) + 2)]
    for row in rows:
        cells = []
        for mode in modes:
            entry = row.get(mode, {})
            if mode == "float32":
                error = entry.get("qcompiler", {}).get("max_error_rel")
                parts = [_fmt_speedup(entry), _pair(entry, "ops", "d"), "—" if error is None else f"{error:.1e}"]
            else:
                identical = percent(entry["identical_pct"]) if "identical_pct" in entry else "—"
                identical += DEFAULT_KERNELS_MARK if entry.get("kernels") == "default" and "identical_pct" in entry \
                    else ""
                parts = [identical, str(entry.get("max_lsb", "—"))]
                parts = [_fmt_speedups(entry), *parts] if mode == "logits" else parts
            cells.append(", ".join(parts) if _has(entry, "seconds") else "—")
        io = " / ".join({True: "equal", False: "differ"}.get(row.get(m, {}).get("io_equal"), "—")
                        for m in ("logits", "outputs") if m in modes)
        failure = cell(grouped_failures(row["failures"])[0], 110) if row["failures"] else ""
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {io} | {failure} |")
    return lines


def _compiled(row: dict, mode: str) -> bool:
    return any(tool in row.get(mode, {}) for tool in TOOLS)


def _left_out(rows: list[dict], measured: list[dict]) -> list[str]:
    missing = [row["model"] for row in rows if row not in measured]
    return [f"Left out, no model from either tool (see Failures): {', '.join(missing)}.", ""] if missing else []


def commits_text(rows: list[dict], header: dict) -> str:
    """The qcompiler/ commit measured and the commits the benchmark ran from (rows merged by `--update` may come
    from several); with several qcompiler/ commits, each with its number of models."""
    runs = list(dict.fromkeys(row.get("commit", header["commit"]) for row in rows)) or [header["commit"]]
    packages: dict[str, int] = {}
    for row in rows or [{}]:
        package = package_commit(row.get("commit", header["commit"]))
        packages[package] = packages.get(package, 0) + 1
    ran = f"benchmark run from {', '.join(runs)}"
    if len(packages) == 1:
        return f"qcompiler/ at {next(iter(packages))} ({ran})"
    return "qcompiler/ at " + ", ".join(f"{p} ({n} models)" for p, n in packages.items()) + f" ({ran})"


def op_differences(entry: dict) -> str:
    """'RELU 112 vs 48, SLICE 4 vs 0' for the op types whose counts differ between the two tools' models."""
    if not _has(entry, "op_types"):
        return ""
    ours, theirs = entry["qcompiler"]["op_types"], entry["converter"]["op_types"]
    return ", ".join(f"{op} {ours.get(op, 0)} vs {theirs.get(op, 0)}" for op in sorted({*ours, *theirs})
                     if ours.get(op, 0) != theirs.get(op, 0))


def summary(rows: list[dict]) -> list[str]:
    """The acceptance criteria as counts; each mode's count is out of the models measured in that mode."""
    def count(mode: str, test: Callable[[dict], bool]) -> str:
        measured = [row for row in rows if mode in row]
        return f"{sum(1 for row in measured if _safe(test, row[mode]))}/{len(measured)}"

    both = lambda e: all("ops" in e[t] for t in TOOLS)  # noqa: E731
    int8_ok = lambda e: e["identical_pct"] >= 99.0 and e["max_lsb"] <= 1 and e["io_equal"]  # noqa: E731
    size_ok = lambda e: _ratio(e, "bytes") <= 1.01  # noqa: E731
    latency_ok = lambda e: _latency_ratio(e) <= 1.05  # noqa: E731
    bar = lambda e: int8_ok(e) and size_ok(e) and latency_ok(e)  # noqa: E731
    modes = [m for m in MODES if any(m in row for row in rows)]
    int8 = [m for m in ("logits", "outputs") if m in modes]

    def per_mode(test: Callable[[dict], bool]) -> str:
        return ", ".join(f"{m} {count(m, test)}" for m in int8)

    lines = [f"{len(rows)} models. Compiled and run by both tools: "
             + ", ".join(f"{'int8 ' if m != 'float32' else ''}{m} {count(m, both)}" for m in modes) + "."]
    if "float32" in modes:
        lines.append(
            f"float32 error ≤ 1e-5·max|ref|: {count('float32', lambda e: e['qcompiler']['max_error_rel'] <= 1e-5)}; "
            f"float32 ops ≤ converter's: {count('float32', lambda e: e['qcompiler']['ops'] <= e['converter']['ops'])}; "
            f"float32 ≥ 50x faster: {count('float32', lambda e: _speedup(e) >= 50)}; "
            f"float32 latency ≤ 1.05x: {count('float32', latency_ok)}.")
    if int8:
        lines.append(
            f"int8, all of the bar (equal I/O quantization, ≥ 99% identical, ≤ 1 LSB, size ≤ converter + 1%, "
            f"latency ≤ 1.05x): {per_mode(bar)}. Each: equal I/O quantization, ≥ 99% identical and ≤ 1 LSB: "
            f"{per_mode(int8_ok)}; 100% identical: {per_mode(lambda e: e['identical_pct'] == 100.0)}; size ≤ "
            f"converter + 1%: {per_mode(size_ok)}; latency ≤ 1.05x: {per_mode(latency_ok)}.")
        lines.append(
            f"int8 compile ≥ 5x faster than the converter (default executor): {per_mode(lambda e: _speedup(e) >= 5)}; "
            f"≥ 10x faster with `executor=\"{FAST_EXECUTOR}\"`: {per_mode(lambda e: _speedup_fast(e) >= 10)}.")
        timed = [row for row in rows if any(_has(row.get(m, {}), "cpu_seconds") for m in int8)]
        if timed:
            cpu = lambda m, test: (f"{m} {sum(1 for row in timed if _safe(test, row.get(m, {})))}"  # noqa: E731
                                   f"/{sum(1 for row in timed if _has(row.get(m, {}), 'cpu_seconds'))}")
            lines.append(
                "The same in CPU seconds (all threads of the process; the models measured with CPU time): ≥ 5x "
                + ", ".join(cpu(m, lambda e: _speedup(e, "cpu_seconds") >= 5) for m in int8) + "; ≥ 10x with "
                f"`executor=\"{FAST_EXECUTOR}\"` "
                + ", ".join(cpu(m, lambda e: _speedup_fast(e, "cpu_seconds") >= 10) for m in int8) + ".")
    return lines


def _safe(test: Callable[[dict], bool], row: dict) -> bool:
    try:
        return bool(test(row))
    except (KeyError, TypeError, ZeroDivisionError):
        return False


def _speedup(entry: dict, key: str = "seconds") -> float:
    return entry["converter"][key] / entry["qcompiler"][key]


def _speedup_fast(entry: dict, key: str = "seconds") -> float:
    return entry["converter"][key] / entry["qcompiler_fast"][key]


def _ratio(entry: dict, key: str) -> float:
    return entry["qcompiler"][key] / entry["converter"][key]


def _latency_ratio(entry: dict) -> float:
    """qcompiler's latency / the converter's: the median of the per-process ratios where several processes measured
    it (`latency_in_processes`), else the ratio of the two figures."""
    return entry["latency_ratio"] if "latency_ratio" in entry else _ratio(entry, "latency_ms")


def _pair(entry: dict, key: str, fmt: str) -> str:
    values = [format(entry[t][key], fmt) if key in entry.get(t, {}) else "—" for t in TOOLS]
    return " / ".join(values)


def float_line(row: dict) -> str:
    entry = row.get("float32", {})
    size = "x".join(str(d) for d in row.get("input", [])[:2]) or "—"
    params = f"{row['params'] / 1e6:.1f}M" if "params" in row else "—"
    kib = " / ".join(f"{entry[t]['bytes'] / 1024:,.0f}" if t in entry else "—" for t in TOOLS)
    latency = (f" ({_latency_ratio(entry):.2f}x{'' if 'latency_ratio' in entry else ', 1 proc.'})"
               if _has(entry, "latency_ms") else "")
    return (f"| {row['model']} | {size} | {params} | {_pair(entry, 'seconds', '.2f')} | {_fmt_speedup(entry)} "
            f"| {_pair(entry, 'ops', 'd')} | {kib} | {_pair(entry, 'latency_ms', '.2f')}{latency} "
            f"| {_pair(entry, 'max_error_rel', '.1e')} |")


def int8_line(row: dict, mode: str) -> str:
    entry = row.get(mode, {})
    size = f"{_ratio(entry, 'bytes'):.3f}x" if _has(entry, "bytes") else "—"
    latency = (f"{_latency_ratio(entry):.2f}x{'' if 'latency_ratio' in entry else ' (1 proc.)'}"
               if _has(entry, "latency_ms") else "—")
    identical = percent(entry["identical_pct"]) if "identical_pct" in entry else "—"
    identical += DEFAULT_KERNELS_MARK if entry.get("kernels") == "default" and "identical_pct" in entry else ""
    lsb = str(entry["max_lsb"]) if "max_lsb" in entry else "—"
    io = {True: "equal", False: f"**differ** ({entry.get('io_difference', '')})"}.get(entry.get("io_equal"), "—")
    seconds = " / ".join(format(entry[t]["seconds"], ".2f") if "seconds" in entry.get(t, {}) else "—"
                         for t in ("qcompiler", "qcompiler_fast", "converter"))
    return (f"| {row['model']} | {mode} | {seconds} | {_fmt_speedups(entry)} | {_fmt_speedups(entry, 'cpu_seconds')} "
            f"| {_pair(entry, 'ops', 'd')} | {size} | {latency} | {identical} | {lsb} | {io} |")


def percent(value: float) -> str:
    """Two decimals, but never a rounded-up 100% (or 0%) that is not exact."""
    text = f"{value:.2f}%"
    if text == "100.00%" and value < 100.0:
        return "99.99%"
    return "0.01%" if text == "0.00%" and value > 0.0 else text


def _has(entry: dict, key: str) -> bool:
    return all(key in entry.get(t, {}) for t in TOOLS)


def _fmt_speedup(entry: dict) -> str:
    return f"{_speedup(entry):.1f}x" if _has(entry, "seconds") else "—"


def _fmt_speedups(entry: dict, key: str = "seconds") -> str:
    """'12.3x / 20.1x': the default executor's and the fast executor's speed-up ('—' where not measured), in wall
    seconds or (key="cpu_seconds") in CPU seconds of all the process's threads."""
    if not _has(entry, key):
        return "—"
    fast = f"{_speedup_fast(entry, key):.1f}x" if key in entry.get("qcompiler_fast", {}) else "—"
    return f"{_speedup(entry, key):.1f}x / {fast}"


def grouped_failures(failures: list[str]) -> list[str]:
    """'float32/logits/outputs: qcompiler compile: X' for the same failure in several modes."""
    modes_of: dict[str, list[str]] = {}
    for failure in failures:
        mode, _, rest = failure.partition(": ")
        key, mode = (rest, mode) if mode in MODES else (failure, "")
        modes_of.setdefault(key, []).append(mode)
    return [f"{'/'.join(modes)}: {key}" if all(modes) else key for key, modes in modes_of.items()]


def cell(text: str, limit: int = 200) -> str:
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return text.replace("|", "\\|").replace("\n", " ")


def write_outputs(rows: list[dict], header: dict, settings: Settings, jobs: int, out: Optional[Path],
                  json_path: Optional[Path], not_measured: Sequence[str] = ()) -> None:
    from qcompiler.files import atomic_write

    if out is not None:
        atomic_write(out, markdown(rows, header, settings, jobs, not_measured).encode())
    if json_path is not None:
        document = {"header": header, "settings": asdict(settings), "jobs": jobs, "rows": rows}
        atomic_write(json_path, json.dumps(document, indent=1).encode())


# settings that may differ between runs whose rows go in one table
_COMPARABLE_ANYWAY = ("modes", "timeout", "always_convert", "compile_repeats", "latency_processes")


def previous_rows(path: Path, settings: Settings, names: list[str]) -> list[dict]:
    """The rows of an earlier run (`--update`) for the models not measured again; its settings must be ours."""
    document = json.loads(path.read_text())
    theirs = asdict(Settings.from_json(json.dumps(document["settings"])))
    ours = asdict(settings)
    different = [key for key in ours if key not in _COMPARABLE_ANYWAY and theirs[key] != ours[key]]
    if different:
        raise SystemExit(f"--update {path}: measured with other settings ({', '.join(different)}); "
                         "use the same options or start a new file")
    for row in document["rows"]:
        row.setdefault("commit", document["header"]["commit"])
        row.setdefault("date", document["header"]["date"])
    return [row for row in document["rows"] if row["model"] not in names]


def merge_documents(documents: list[dict]) -> dict:
    """Several --json files as one: same settings (but modes), rows by model with the later files winning, the
    last file's header and the modes of all."""
    last = documents[-1]
    for document in documents[:-1]:
        ours, theirs = document["settings"], last["settings"]
        different = [k for k in ours if k not in _COMPARABLE_ANYWAY and ours[k] != theirs.get(k)]
        if different:
            raise SystemExit(f"cannot merge runs with different settings ({', '.join(different)})")
    rows: dict[str, dict] = {}
    for document in documents:
        for row in document["rows"]:
            row.setdefault("commit", document["header"]["commit"])
            row.setdefault("date", document["header"]["date"])
            rows[row["model"]] = row
    modes = [m for m in MODES if any(m in d["settings"]["modes"] for d in documents)]
    dates = sorted({row["date"] for row in rows.values()})
    header = {k: v for k, v in last["header"].items() if k != "wall_minutes"}
    header["date"] = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    return dict(last, header=header, rows=merge_rows([], list(rows.values())), jobs=max(d["jobs"] for d in documents),
                settings=dict(last["settings"], modes=modes))


def merge_rows(kept: list[dict], new: list[dict]) -> list[dict]:
    """Earlier rows and new ones in one list, in model-name order."""
    return sorted([*kept, *new], key=lambda row: row["model"])


# ---------------------------------------------------------------- command line

def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # internal: one model, in its own process
        name, settings_json, row_path = argv[1:4]
        measure_model(name, Settings.from_json(settings_json), Path(row_path))
        return 0
    if argv[:1] == ["--run-tflite"]:  # internal: one interpreter run (BUILTIN_REF by default), in its own process
        run_tflite(*argv[1:5])
        return 0
    if argv[:1] == ["--latency"]:  # internal: latency of one or more models, in their own process
        model_paths, inputs_path, result_path, runs = argv[1:5]
        measure_latency(model_paths.split(","), inputs_path, result_path, int(runs))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated keras.applications names (or module:function builders); "
                                         "default: all of keras.applications")
    parser.add_argument("--skip", default="", help="comma-separated models to leave out")
    parser.add_argument("--size", type=int, default=96, help="input size (a model's minimum if larger)")
    parser.add_argument("--samples", type=int, default=20, help="calibration samples, the same for both tools")
    parser.add_argument("--eval-samples", type=int, default=4, help="samples whose outputs are compared")
    parser.add_argument("--latency-runs", type=int, default=5,
                        help=f"latency rounds; each keeps the fastest of {LATENCY_PER_ROUND} invocations "
                             f"(more for fast models, up to {LATENCY_ROUND_SECONDS * 1000:.0f} ms)")
    parser.add_argument("--latency-processes", type=int, default=7,
                        help="fresh processes the latency is measured in; the median over them counts")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batchnorm", choices=("data", "random"), default="data",
                        help="batch-norm statistics: measured on the model's own inputs (default), which keeps deep "
                             "networks' activations O(1) as trained statistics do (tests/zoo.py batchnorm_from_data), "
                             "or random: drawn independently of the activations (randomize_batchnorm; the deep "
                             "EfficientNets then amplify float32 rounding beyond 1e-5, Keras' own float32 included: "
                             "README, float32 error of deep EfficientNets)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per model")
    parser.add_argument("--compile-repeats", type=int, default=1,
                        help="compile with each tool this many times, in turn; the table shows each tool's median "
                             "(the speed-up is the ratio of the medians), the JSON every time (seconds_each)")
    parser.add_argument("--always-convert", action="store_true",
                        help="run the converter in a mode even where qcompiler failed (default: skip it)")
    parser.add_argument("--jobs", type=int, default=1, help="models measured at once (timings need --jobs 1)")
    parser.add_argument("--out", type=Path, default=Path("zoo.md"), help="markdown table")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement as JSON")
    parser.add_argument("--update", type=Path, default=None,
                        help="a previous --json file: keep its rows for the models not measured now (same settings)")
    parser.add_argument("--render", default=None,
                        help="only write --out (and --json) again from these comma-separated --json files, measuring "
                             "nothing; a model in several files takes its row from the last")
    args = parser.parse_args(argv)
    if args.render is not None:
        documents = [json.loads(Path(path).read_text()) for path in args.render.split(",")]
        document = merge_documents(documents)
        settings = Settings.from_json(json.dumps(document["settings"]))
        measured = {row["model"] for row in document["rows"]}
        write_outputs(document["rows"], document["header"], settings, document["jobs"], args.out, args.json,
                      [name for name in model_names() if name not in measured])
        print(f"wrote {args.out}" + (f" and {args.json}" if args.json else ""))
        return 0
    modes = tuple(m for m in args.modes.split(",") if m)
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    available = model_names()
    names = args.models.split(",") if args.models else available
    unknown = [n for n in names if ":" not in n and n not in available]
    if unknown:
        parser.error(f"not in keras.applications: {', '.join(unknown)} (available: {', '.join(available)})")
    names = [n for n in names if n not in set(args.skip.split(","))]
    settings = Settings(size=args.size, samples=args.samples, eval_samples=args.eval_samples,
                        latency_runs=args.latency_runs, latency_processes=args.latency_processes, seed=args.seed,
                        modes=modes, timeout=args.timeout, always_convert=args.always_convert,
                        batchnorm=args.batchnorm, compile_repeats=args.compile_repeats)
    header = machine()
    started = time.perf_counter()
    kept = previous_rows(args.update, settings, names) if args.update is not None else []

    def save(rows: list[dict]) -> None:
        for row in rows:
            row.setdefault("commit", header["commit"])
            row.setdefault("date", header["date"])
        header["wall_minutes"] = round((time.perf_counter() - started) / 60, 1)
        write_outputs(merge_rows(kept, rows), header, settings, args.jobs, args.out, args.json)

    rows = run_zoo(names, settings, args.jobs, on_row=save)
    save(rows)
    print(f"wrote {args.out}" + (f" and {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
