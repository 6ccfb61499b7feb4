"""The public Python API: import, run passes, quantize, compile. Everything here composes the lower layers."""
from __future__ import annotations

import functools
import gc
import inspect
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, TextIO, Union

import numpy as np

from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph
from qcompiler.ir.parser import parse
from qcompiler.quant.policy import DEFAULT_POLICY, get_policy

ModelLike = Union[str, Path, Any]  # a keras.Model or a path to .keras / .h5
MODES = ("float32", "int8", "uint8", "int16x8", "dynamic", "float16")
CALIBRATED_MODES = ("int8", "uint8", "int16x8")
_IO_CHOICES = {"int8": ("int8", "float"), "uint8": ("uint8",), "int16x8": ("int16", "float")}
# Modes that need no calibration: weights stored as int8 (hybrid kernels) or float16, activations float32.
_WEIGHT_ONLY_PIPELINES = {"dynamic": "quantize-weights", "float16": "weights-to-f16"}


def _young_objects_only(fn):
    """Run `fn` with the objects that existed before it frozen out of garbage collection (gc.freeze).

    A compile allocates many small linked objects; every so often CPython then runs a full collection that
    scans every object of the process, and a process with TensorFlow loaded holds ~700,000 of them. Frozen, they
    are skipped: on a 3,000-layer model the int8 compile took 8.4 s instead of 13.5 s when a full collection
    fell in it. Nothing is kept alive longer than it would be: unfreezing returns them to the oldest generation.
    Not done when something else already froze objects (unfreezing would undo that)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled() or gc.get_freeze_count():
            return fn(*args, **kwargs)
        gc.freeze()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.unfreeze()

    return run


def _graph_of(model_or_graph: Union[ModelLike, Graph]) -> tuple[Graph, bool]:
    """A graph to compile (a copy of a given graph, or the import of a model) and whether it still needs
    verifying before the first pass (an import was verified already)."""
    if isinstance(model_or_graph, Graph):
        return model_or_graph.clone(), True
    return import_keras(model_or_graph), False


def import_keras(model_or_path: ModelLike) -> Graph:
    """Import a Keras 3 model (object or .keras/.h5 path) into a verified IR graph."""
    from qcompiler.frontend.keras import import_keras as _import

    return _import(model_or_path)


def parse_ir(text: str, constants: Optional[dict] = None) -> Graph:
    """Parse IR text (as printed by `print(graph)`)."""
    return parse(text, constants=constants)


def run_passes(graph: Graph, pipeline: Union[str, list], **options: Any) -> Graph:
    """Run a pass pipeline ("fold-batchnorm,fuse-activations") on `graph` in place and return it."""
    from qcompiler.passes.base import Pass
    from qcompiler.passes.manager import run_passes as _run

    _check_graph(graph, "run_passes")
    items = [pipeline] if isinstance(pipeline, str) else pipeline
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, (str, Pass)) for p in items):
        bad = pipeline if not isinstance(items, (list, tuple)) else next(p for p in items
                                                                         if not isinstance(p, (str, Pass)))
        raise TypeError("run_passes takes a pipeline string (\"fold-batchnorm,fuse-activations\") or a list of pass "
                        f"names and Pass objects, got {type(bad).__name__} {bad!r}")
    return _run(graph, pipeline, **options)


# ----------------------------------------------------------------------------------------------------
# argument checks: wrong types raise TypeError, wrong values QCompilerError, both saying what was expected
# ----------------------------------------------------------------------------------------------------
def _check_graph(graph: Any, where: str) -> None:
    if not isinstance(graph, Graph):
        raise TypeError(f"{where} takes a qcompiler Graph (from import_keras or parse_ir), got {type(graph).__name__}")


def _check_model(model: Any, where: str) -> None:
    import os

    if isinstance(model, (str, os.PathLike, Graph)):
        return
    import keras

    if isinstance(model, keras.Model):
        return
    raise TypeError(f"{where} takes a keras.Model, a .keras/.h5 path or a qcompiler Graph, got {type(model).__name__}")


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {', '.join(choices)}; got {type(value).__name__} {value!r}")
    if value not in choices:
        import difflib

        near = [c for c in choices if c.lower() == value.lower()] or difflib.get_close_matches(value, choices, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise QCompilerError(f"{name} '{value}' is not one of {', '.join(choices)}{hint}")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise QCompilerError(f"{name} must be at least 1, got {value}")


def _check_options(where: str, mode: Any, options: Mapping[str, Any], allow: Sequence[str] = ()) -> None:
    """The mode, the option names (with a "did you mean") and the types of the quantization options."""
    import difflib

    from qcompiler.quant.observers import OBSERVERS

    _check_choice("mode", mode, MODES)
    known = [name for name in inspect.signature(_passes).parameters
             if name not in ("mode", "calibration", "trained") or name in allow]
    for key in options:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise TypeError(f"{where} got an unexpected keyword argument '{key}'{hint} (known: {', '.join(known)})")
    if "observer" in options:
        _check_choice("observer", options["observer"], tuple(OBSERVERS))
    if "batch_size" in options:
        _check_positive_int("batch_size", options["batch_size"])
    if options.get("observer_options") is not None and not isinstance(options["observer_options"], Mapping):
        raise TypeError(f"observer_options must be a dict, got {type(options['observer_options']).__name__}")
    for flag in ("per_channel", "int4_weights"):
        if flag in options and not isinstance(options[flag], (bool, np.bool_)):
            raise TypeError(f"{flag} must be True or False, got {type(options[flag]).__name__} {options[flag]!r}")
    for name in ("io", "executor", "calibrate_with", "policy"):
        if options.get(name) is not None and not isinstance(options[name], str):
            raise TypeError(f"{name} must be a str, got {type(options[name]).__name__} {options[name]!r}")
    for name in ("default_ranges", "input_stats"):
        _pair(options.get(name), name)


def float_graph(model_or_graph: Union[ModelLike, Graph], policy: str = DEFAULT_POLICY) -> Graph:
    """Import (or copy) and run the default float pipeline: what every mode starts from."""
    _check_model(model_or_graph, "float_graph")
    graph, unverified = _graph_of(model_or_graph)
    return run_passes(graph, _float_passes(policy), verify_input=unverified)


def pipeline_for(mode: str = "float32", calibration: Union[str, Path, None] = None, **options: Any) -> str:
    """The pass pipeline `compile(model, mode, calibration, **options)` runs, as text: give it to
    `qcompiler dump MODEL --pipeline` (or `run_passes`) to get the same IR, and write that to get the same bytes.

    Calibration data in a pipeline is a file (.npy/.npz): `calibration` is its path.
    """
    if (calibration is not None and not isinstance(calibration, (str, Path))) or options.get("calibration_stats"):
        raise QCompilerError("a pipeline string names its calibration data by file: give pipeline_for the path of "
                             "a .npy/.npz file, not arrays or statistics")
    from qcompiler.passes.calibrate import Calibrate
    from qcompiler.passes.insert_fake_quant import InsertFakeQuant
    from qcompiler.passes.lower_to_int import LowerToInt

    _check_options("pipeline_for", mode, options, allow=("trained",))
    # the quantization steps spell out every option, so the text shows the executor, observer and policy
    return ",".join(p.text(explicit=isinstance(p, (InsertFakeQuant, Calibrate, LowerToInt)))
                    for p in _passes(mode, calibration, **options))


def _float_passes(policy: str) -> list:
    from dataclasses import replace

    from qcompiler.passes.fold_batchnorm import FoldBatchNorm
    from qcompiler.passes.registry import DEFAULT_FLOAT_PIPELINE, parse_pipeline

    get_policy(policy)
    return [replace(p, policy=policy) if isinstance(p, FoldBatchNorm) else p
            for p in parse_pipeline(DEFAULT_FLOAT_PIPELINE)]


def _passes(mode: str, calibration: Any = None, *, io: Optional[str] = None, observer: str = "minmax",
            observer_options: Optional[Mapping] = None, per_channel: bool = True,
            default_ranges: Optional[Sequence[float]] = None, input_stats: Optional[Sequence[float]] = None,
            batch_size: int = 32, calibration_stats: Optional[Mapping] = None, executor: Optional[str] = None,
            calibrate_with: Optional[str] = None, policy: str = DEFAULT_POLICY,
            progress: Optional[TextIO] = None, trained: bool = False, int4_weights: bool = True,
            keep_float: Sequence[str] = ()) -> list:
    """The passes of `mode` (see `compile`). Calibration data: a path (a pipeline option) or arrays (not).
    `trained`: the model comes from quantization-aware training (qcompiler.qat) and brings its own ranges.
    `keep_float`: Keras layers left in float (float islands)."""
    from qcompiler.passes.dce import DeadCodeElimination
    from qcompiler.passes.insert_fake_quant import InsertFakeQuant
    from qcompiler.passes.lower_to_int import LowerToInt
    from qcompiler.passes.registry import parse_pipeline

    if mode not in MODES:
        raise QCompilerError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    passes = _float_passes(policy)
    if mode not in CALIBRATED_MODES:
        _refuse_quantization_options(mode, {
            "calibration data": calibration, "io": io, "observer": None if observer == "minmax" else observer,
            "observer_options": observer_options, "per_channel": None if per_channel else False,
            "default_ranges": default_ranges, "input_stats": input_stats,
            "batch_size": None if batch_size == 32 else batch_size, "calibration_stats": calibration_stats,
            "executor": executor, "calibrate_with": calibrate_with, "keep_float": tuple(keep_float) or None})
        return passes + ([] if mode == "float32" else parse_pipeline(_WEIGHT_ONLY_PIPELINES[mode]))
    io = io or _IO_CHOICES[mode][0]
    if io not in _IO_CHOICES[mode]:
        raise QCompilerError(f"--io {io} is not available in mode {mode}; choose {' or '.join(_IO_CHOICES[mode])}")
    if trained:
        return passes + _trained_passes(mode, io, default_ranges, input_stats, calibration is not None
                                        or calibration_stats is not None, policy, int4_weights)
    passes.append(InsertFakeQuant(activations="i16" if mode == "int16x8" else "i8", per_channel=per_channel,
                                  policy=policy, keep_float=tuple(keep_float)))
    if calibration is not None or calibration_stats is not None:
        passes.append(_calibrate_pass(calibration, calibration_stats, _executor_name(executor, calibrate_with),
                                      observer, observer_options, batch_size, policy, progress))
    elif default_ranges is None:
        raise QCompilerError(f"mode {mode} needs calibration data (--calibration DATA.npy or calibration_data=...) "
                             "or --default-ranges MIN,MAX")
    passes.append(LowerToInt(io=io, default_ranges=_pair(default_ranges, "default ranges"),
                             input_stats=_pair(input_stats, "input stats"), policy=policy,
                             keep_float=tuple(keep_float)))
    return passes + [DeadCodeElimination()]


def _trained_passes(mode: str, io: str, default_ranges: Optional[Sequence[float]],
                    input_stats: Optional[Sequence[float]], calibrated: bool, policy: str, int4: bool) -> list:
    """A QAT model: its trained fake_quants stay; insert-missing-fake-quant marks what training left out (a range
    still missing is an error naming it, or default_ranges); no calibration."""
    import warnings

    from qcompiler.passes.dce import DeadCodeElimination
    from qcompiler.passes.insert_missing_fake_quant import InsertMissingFakeQuant
    from qcompiler.passes.lower_to_int import LowerToInt

    if mode == "int16x8":
        raise QCompilerError("this model was quantization-aware trained for 8-bit activations; compile it with "
                             "--mode int8 or uint8")
    if calibrated:
        warnings.warn("the model carries ranges from quantization-aware training; the calibration data is not used",
                      UserWarning, stacklevel=4)
    return [InsertMissingFakeQuant(),
            LowerToInt(io=io, default_ranges=_pair(default_ranges, "default ranges"),
                       input_stats=_pair(input_stats, "input stats"), policy=policy, int4=int4),
            DeadCodeElimination()]


def _has_trained_ranges(graph: Graph) -> bool:
    from qcompiler.passes.insert_missing_fake_quant import has_trained_ranges as _trained

    return _trained(graph)


def has_trained_ranges(model_or_graph: Union[ModelLike, Graph]) -> bool:
    """True for a quantization-aware-trained model (qcompiler.qat): its int8 pipeline needs no calibration
    (`pipeline_for(mode, trained=True)`)."""
    graph = model_or_graph if isinstance(model_or_graph, Graph) else import_keras(model_or_graph)
    return _has_trained_ranges(graph)


def _refuse_quantization_options(mode: str, given: Mapping[str, Any]) -> None:
    extra = sorted(k for k, v in given.items() if v is not None)
    if extra:
        what = "takes no quantization options" if mode == "float32" else \
            "quantizes weights only and takes no calibration data or quantization options"
        raise QCompilerError(f"mode {mode} {what} (got {', '.join(extra)})")


def _executor_name(executor: Optional[str], calibrate_with: Optional[str]) -> str:
    """The calibration executor's canonical name; `calibrate_with` is its older spelling."""
    from qcompiler.passes.calibrate import DEFAULT_EXECUTOR, EXECUTOR_ALIASES

    if executor is not None and calibrate_with is not None and \
            EXECUTOR_ALIASES.get(executor, executor) != EXECUTOR_ALIASES.get(calibrate_with, calibrate_with):
        raise QCompilerError(f"executor='{executor}' and calibrate_with='{calibrate_with}' disagree; give one")
    chosen = executor or calibrate_with or DEFAULT_EXECUTOR
    return EXECUTOR_ALIASES.get(chosen, chosen)


def _calibrate_pass(calibration: Any, stats: Optional[Mapping], executor: str, observer: str,
                    observer_options: Optional[Mapping], batch_size: int, policy: str, progress: Optional[TextIO]):
    """calibrate{...}: a file is a pipeline option; arrays and earlier statistics are handed over directly."""
    from qcompiler.passes.calibrate import Calibrate

    is_file = isinstance(calibration, (str, Path))
    return Calibrate(data=str(calibration) if is_file else "", arrays=None if is_file else calibration,
                     stats=stats, executor=executor, observer=observer, batch_size=batch_size, policy=policy,
                     progress=progress,
                     observer_options=tuple(f"{k}={v}" for k, v in (observer_options or {}).items()))


@_young_objects_only
def quantize(model_or_graph: Union[ModelLike, Graph], mode: str = "int8", calibration_data: Any = None,
             **options: Any) -> Graph:
    """The integer IR graph of a model: float pipeline, insert-fake-quant, calibrate, lower-to-int, dce
    (`pipeline_for(mode, ...)` prints it).

    `calibration_data`: arrays, or a .npy/.npz path. Options: io, observer, observer_options, per_channel,
    default_ranges, input_stats, batch_size, executor ("exact", the default: the converter calibrator's float
    kernels; "fast": XNNPACK; "numpy"), calibrate_with (the older name of executor: "tensorflow", "tflite",
    "numpy"), policy ("tflite-2.21", the default, or "plain"; see qcompiler/quant/policy.py), progress.
    `calibration_stats` (from an earlier `calibration_statistics` call) replaces `calibration_data`, so another
    observer can be tried without running the data again.
    """
    _check_model(model_or_graph, "quantize")
    verify_each = _verify_each(options)
    _check_options("quantize", mode, options)
    if mode not in CALIBRATED_MODES:
        raise QCompilerError(f"quantize() takes a calibrated mode {CALIBRATED_MODES}, not '{mode}'")
    graph, unverified = _graph_of(model_or_graph)
    return run_passes(graph, _passes(mode, calibration_data, trained=_has_trained_ranges(graph), **options),
                      verify_input=unverified, verify_each=verify_each)


def calibration_statistics(graph: Graph, calibration_data: Any, batch_size: int = 32,
                           calibrate_with: str = "exact", progress: Optional[TextIO] = None,
                           exact_histograms: bool = False, policy: str = DEFAULT_POLICY):
    """Run the data once through a graph that has fake_quant nodes; returns per-tensor statistics.

    `calibrate_with`: the executor. "exact" (or "tensorflow"; the default): qcompiler's float .tflite in
    TensorFlow's TFLite runtime set up like the converter's calibrator: its float values bit for bit. "fast" (or
    "tflite"): ai-edge-litert with XNNPACK, float values within a few ulps of the converter's, ~2-3x faster
    calibration. "numpy": the IR interpreter, for graphs the backend cannot write.
    See qcompiler/backend/tflite_executor.py.
    Min/max are always exact; the histograms behind percentile/mse/kl hold a strided sample of each tensor
    unless `exact_histograms` (about 3x slower on MobileNetV2; advisable for kl, which reacts to sampling noise).
    With the policy's in-place range unions the stats also record in-place writes (see passes/calibrate.py).
    """
    from qcompiler.passes.calibrate import HISTOGRAM_SAMPLE, collect_statistics, get_executor

    _check_graph(graph, "calibration_statistics")
    _check_positive_int("batch_size", batch_size)
    if not isinstance(calibrate_with, str):
        raise TypeError(f"calibrate_with must be a str (exact, fast, numpy), got {calibrate_with!r}")
    return collect_statistics(graph, calibration_data, batch_size=batch_size, executor=get_executor(calibrate_with),
                              progress=progress, histogram_sample=None if exact_histograms else HISTOGRAM_SAMPLE,
                              policy=policy)


@_young_objects_only
def compile(model_or_path: Union[ModelLike, Graph], mode: str = "float32", calibration_data: Any = None,
            **options: Any) -> bytes:
    """Compile a Keras model (or an IR graph) to TFLite flatbuffer bytes: runs the pipeline `pipeline_for(mode,
    ...)` prints, then the TFLite writer. See `quantize` for the options; `policy` applies to every mode.
    The graph is verified after the last pass; `verify_each=True` verifies it after every pass (debugging)."""
    from qcompiler.backend.tflite_writer import write_tflite

    _check_model(model_or_path, "compile")
    verify_each = _verify_each(options)
    _check_options("compile", mode, options)
    graph, unverified = _graph_of(model_or_path)
    trained = mode in CALIBRATED_MODES and _has_trained_ranges(graph)  # a QAT model: its own ranges
    # float32: a Keras Flatten/Reshape gets a constant target, not the converter's SHAPE/STRIDED_SLICE/PACK (three
    # ops fewer each, the same outputs, as fast or faster under XNNPACK: benchmarks/results/zoo_float32_flatten.json)
    return write_tflite(run_passes(graph, _passes(mode, calibration_data, trained=trained, **options),
                                   verify_input=unverified, verify_each=verify_each),
                        runtime_batch_reshapes=mode != "float32")


def _verify_each(options: dict) -> bool:
    """compile/quantize option `verify_each` (default False): verify the graph after every pass that changed it,
    so that a pass leaving a broken graph is named, instead of once after the last pass (the import is verified
    either way). For debugging a pass; off by default because verifying is a large share of a float32 compile
    (MobileNet: about a sixth)."""
    verify_each = options.pop("verify_each", False)
    if not isinstance(verify_each, (bool, np.bool_)):
        raise TypeError(f"verify_each must be True or False, got {type(verify_each).__name__} {verify_each!r}")
    return bool(verify_each)


def _pair(values: Optional[Sequence[float]], what: str) -> Optional[tuple[float, float]]:
    """Two finite numbers (min, max) or (mean, std), given as a tuple/list/array, e.g. (-6, 6)."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"{what} takes two numbers as a tuple, e.g. (-6, 6); got {type(values).__name__} {values!r}")
    if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{what} takes two numbers, e.g. (-6, 6); got {list(values)!r}")
    pair = tuple(float(v) for v in values)
    if len(pair) != 2 or not all(np.isfinite(pair)):
        raise QCompilerError(f"{what} takes exactly two finite numbers, got {list(pair)}")
    return pair  # type: ignore[return-value]


def layer_report(model_or_graph: Union[ModelLike, Graph], calibration_data: Any, eval_data: Any = None, *,
                 mode: str = "int8", observer: str = "minmax", observer_options: Optional[Mapping] = None,
                 per_channel: bool = True, calibrate_with: str = "exact", policy: str = DEFAULT_POLICY):
    """Per-tensor quantization error (SNR, cosine, MSE, clipping) of the quantized model against the float
    one, on `eval_data` (the calibration data when not given). See qcompiler/validate/layer_report.py."""
    from qcompiler.passes.calibrate import apply_ranges
    from qcompiler.passes.insert_fake_quant import InsertFakeQuant
    from qcompiler.validate.layer_report import layer_report as _report

    from qcompiler.quant.observers import OBSERVERS

    _check_model(model_or_graph, "layer_report")
    _check_choice("mode", mode, CALIBRATED_MODES)
    _check_choice("observer", observer, tuple(OBSERVERS))
    graph = float_graph(model_or_graph, policy)
    run_passes(graph, [InsertFakeQuant(activations="i16" if mode == "int16x8" else "i8", per_channel=per_channel,
                                       policy=policy)])
    stats = calibration_statistics(graph, calibration_data, calibrate_with=calibrate_with,
                                   exact_histograms=observer == "kl", policy=policy)
    apply_ranges(graph, stats, observer, policy=policy, **dict(observer_options or {}))
    return _report(graph, calibration_data if eval_data is None else eval_data, observer=observer, policy=policy)
