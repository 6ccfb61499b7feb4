"""The public Python API: import, run passes, quantize, compile. Everything here composes the lower layers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from typing import Any, Mapping, Optional, Sequence, TextIO, Union

from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph
from qcompiler.ir.parser import parse

ModelLike = Union[str, Path, Any]  # a keras.Model or a path to .keras / .h5
MODES = ("float32", "int8", "uint8", "int16x8", "dynamic", "float16")
CALIBRATED_MODES = ("int8", "uint8", "int16x8")
_IO_CHOICES = {"int8": ("int8", "float"), "uint8": ("uint8",), "int16x8": ("int16", "float")}
# Modes that need no calibration: weights stored as int8 (hybrid kernels) or float16, activations float32.
_WEIGHT_ONLY_PIPELINES = {"dynamic": "quantize-weights", "float16": "weights-to-f16"}


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
    if isinstance(model, (str, Path, Graph)):
        return
    import os

    if isinstance(model, os.PathLike):
        return
    try:
        import keras
    except ImportError:  # pragma: no cover - keras is a dependency
        keras = None
    if keras is not None and isinstance(model, keras.Model):
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


def _check_options(where: str, options: Mapping[str, Any], known: Sequence[str]) -> None:
    import difflib

    for key in options:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise TypeError(f"{where} got an unexpected keyword argument '{key}'{hint} (known: {', '.join(known)})")


_QUANTIZE_OPTIONS = ("io", "observer", "observer_options", "per_channel", "default_ranges", "input_stats",
                     "batch_size", "calibration_stats", "calibrate_with", "progress")


def float_graph(model_or_graph: Union[ModelLike, Graph]) -> Graph:
    """Import (or copy) and run the default float pipeline: what every mode starts from."""
    from qcompiler.passes.registry import DEFAULT_FLOAT_PIPELINE

    _check_model(model_or_graph, "float_graph")
    graph = model_or_graph.clone() if isinstance(model_or_graph, Graph) else import_keras(model_or_graph)
    return run_passes(graph, DEFAULT_FLOAT_PIPELINE)


def quantize(model_or_graph: Union[ModelLike, Graph], mode: str = "int8", calibration_data: Any = None, *,
             io: Optional[str] = None, observer: str = "minmax", observer_options: Optional[Mapping] = None,
             per_channel: bool = True, default_ranges: Optional[Sequence[float]] = None,
             input_stats: Optional[Sequence[float]] = None, batch_size: int = 32,
             calibration_stats: Optional[Mapping] = None, calibrate_with: str = "tflite",
             progress: Optional[TextIO] = None) -> Graph:
    """The integer IR graph of a model: float pipeline, insert-fake-quant, calibrate, lower-to-int.

    `calibration_stats` (from an earlier `calibration_statistics` call) replaces `calibration_data`, so another
    observer can be tried without running the data again.
    """
    from qcompiler.passes.calibrate import apply_ranges
    from qcompiler.passes.dce import DeadCodeElimination
    from qcompiler.passes.insert_fake_quant import InsertFakeQuant
    from qcompiler.passes.lower_to_int import LowerToInt

    _check_model(model_or_graph, "quantize")
    _check_choice("mode", mode, CALIBRATED_MODES)
    from qcompiler.quant.observers import OBSERVERS

    _check_choice("observer", observer, tuple(OBSERVERS))
    if observer_options is not None and not isinstance(observer_options, Mapping):
        raise TypeError(f"observer_options must be a dict, got {type(observer_options).__name__}")
    _check_positive_int("batch_size", batch_size)
    if not isinstance(calibrate_with, str):
        raise TypeError(f"calibrate_with must be 'tflite', 'tensorflow' or 'numpy', not {calibrate_with!r}")
    if not isinstance(per_channel, (bool, np.bool_)):
        raise TypeError(f"per_channel must be True or False, got {type(per_channel).__name__} {per_channel!r}")
    if io is not None:
        _check_choice("io", io, _IO_CHOICES[mode])
    default_ranges = _pair(default_ranges, "default_ranges")
    input_stats = _pair(input_stats, "input_stats")
    io = io or _IO_CHOICES[mode][0]
    if io not in _IO_CHOICES[mode]:
        raise QCompilerError(f"--io {io} is not available in mode {mode}; choose {' or '.join(_IO_CHOICES[mode])}")
    graph = float_graph(model_or_graph)
    activations = "i16" if mode == "int16x8" else "i8"
    run_passes(graph, [InsertFakeQuant(activations=activations, per_channel=per_channel)])
    if calibration_stats is None and calibration_data is not None:
        calibration_stats = calibration_statistics(graph, calibration_data, batch_size=batch_size,
                                                   calibrate_with=calibrate_with, progress=progress,
                                                   exact_histograms=observer == "kl")
    if calibration_stats is not None:
        apply_ranges(graph, calibration_stats, observer, **dict(observer_options or {}))
    elif default_ranges is None:
        raise QCompilerError(f"mode {mode} needs calibration data (--calibration DATA.npy or calibration_data=...) "
                             "or --default-ranges MIN,MAX")
    lower = LowerToInt(io=io, default_ranges=default_ranges, input_stats=input_stats)
    return run_passes(graph, [lower, DeadCodeElimination()])


def calibration_statistics(graph: Graph, calibration_data: Any, batch_size: int = 32,
                           calibrate_with: str = "tflite", progress: Optional[TextIO] = None,
                           exact_histograms: bool = False):
    """Run the data once through a graph that has fake_quant nodes; returns per-tensor statistics.

    `calibrate_with`: "tflite" (qcompiler's float .tflite in ai-edge-litert with XNNPACK: fast, float values
    within a few ulps of the converter's), "tensorflow" (the same .tflite in TensorFlow's TFLite runtime set up
    like the converter's calibrator: its float values bit for bit, ~3x slower) or "numpy" (the IR interpreter,
    for graphs the backend cannot write). See qcompiler/backend/tflite_executor.py.
    Min/max are always exact; the histograms behind percentile/mse/kl hold a strided sample of each tensor
    unless `exact_histograms` (about 3x slower on MobileNetV2; advisable for kl, which reacts to sampling noise).
    """
    from qcompiler.passes.calibrate import HISTOGRAM_SAMPLE, collect_statistics, numpy_executor

    _check_graph(graph, "calibration_statistics")
    _check_positive_int("batch_size", batch_size)
    if calibrate_with == "tflite":
        from qcompiler.backend.tflite_executor import tflite_executor as executor
    elif calibrate_with == "tensorflow":
        from qcompiler.backend.tflite_executor import tensorflow_executor as executor
    elif calibrate_with == "numpy":
        executor = numpy_executor
    else:
        raise QCompilerError(f"calibrate_with must be 'tflite', 'tensorflow' or 'numpy', not '{calibrate_with}'")
    return collect_statistics(graph, calibration_data, batch_size=batch_size, executor=executor, progress=progress,
                              histogram_sample=None if exact_histograms else HISTOGRAM_SAMPLE)


def compile(model_or_path: Union[ModelLike, Graph], mode: str = "float32", calibration_data: Any = None,
            **options: Any) -> bytes:
    """Compile a Keras model (or an IR graph) to TFLite flatbuffer bytes. See `quantize` for the options."""
    from qcompiler.backend.tflite_writer import write_tflite

    _check_model(model_or_path, "compile")
    _check_choice("mode", mode, MODES)
    _check_options("compile", options, _QUANTIZE_OPTIONS)
    if mode == "float32":
        if calibration_data is not None or options:
            raise QCompilerError(f"mode float32 takes no quantization options (got {sorted(options) or 'data'})")
        return write_tflite(float_graph(model_or_path))
    if mode in _WEIGHT_ONLY_PIPELINES:
        if calibration_data is not None or options:
            raise QCompilerError(f"mode {mode} quantizes weights only and takes no calibration data or quantization "
                                 f"options (got {sorted(options) or 'data'})")
        return write_tflite(run_passes(float_graph(model_or_path), _WEIGHT_ONLY_PIPELINES[mode]))
    return write_tflite(quantize(model_or_path, mode, calibration_data, **options))


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
                 per_channel: bool = True, calibrate_with: str = "tflite"):
    """Per-tensor quantization error (SNR, cosine, MSE, clipping) of the quantized model against the float
    one, on `eval_data` (the calibration data when not given). See qcompiler/validate/layer_report.py."""
    from qcompiler.passes.calibrate import apply_ranges
    from qcompiler.passes.insert_fake_quant import InsertFakeQuant
    from qcompiler.validate.layer_report import layer_report as _report

    from qcompiler.quant.observers import OBSERVERS

    _check_model(model_or_graph, "layer_report")
    _check_choice("mode", mode, CALIBRATED_MODES)
    _check_choice("observer", observer, tuple(OBSERVERS))
    graph = float_graph(model_or_graph)
    run_passes(graph, [InsertFakeQuant(activations="i16" if mode == "int16x8" else "i8", per_channel=per_channel)])
    stats = calibration_statistics(graph, calibration_data, calibrate_with=calibrate_with,
                                   exact_histograms=observer == "kl")
    apply_ranges(graph, stats, observer, **dict(observer_options or {}))
    return _report(graph, calibration_data if eval_data is None else eval_data, observer=observer)
