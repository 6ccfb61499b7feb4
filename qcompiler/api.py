"""The public Python API: import, run passes, quantize, compile. Everything here composes the lower layers."""
from __future__ import annotations

from pathlib import Path
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
    from qcompiler.passes.manager import run_passes as _run

    return _run(graph, pipeline, **options)


def float_graph(model_or_graph: Union[ModelLike, Graph]) -> Graph:
    """Import (or copy) and run the default float pipeline: what every mode starts from."""
    from qcompiler.passes.registry import DEFAULT_FLOAT_PIPELINE

    graph = model_or_graph.clone() if isinstance(model_or_graph, Graph) else import_keras(model_or_graph)
    return run_passes(graph, DEFAULT_FLOAT_PIPELINE)


def quantize(model_or_graph: Union[ModelLike, Graph], mode: str = "int8", calibration_data: Any = None, *,
             io: Optional[str] = None, observer: str = "minmax", observer_options: Optional[Mapping] = None,
             per_channel: bool = True, default_ranges: Optional[Sequence[float]] = None,
             input_stats: Optional[Sequence[float]] = None, batch_size: int = 32,
             calibration_stats: Optional[Mapping] = None, calibrate_with: str = "tflite",
             progress: Optional[TextIO] = None, int4_weights: bool = True) -> Graph:
    """The integer IR graph of a model: float pipeline, insert-fake-quant, calibrate, lower-to-int.

    `calibration_stats` (from an earlier `calibration_statistics` call) replaces `calibration_data`, so another
    observer can be tried without running the data again. `int4_weights`: weights trained (QAT) with <= 4 bits
    are stored as TFLite INT4 (False: int8 storage holding the same levels).
    """
    from qcompiler.passes.calibrate import apply_ranges
    from qcompiler.passes.dce import DeadCodeElimination
    from qcompiler.passes.insert_fake_quant import InsertFakeQuant
    from qcompiler.passes.lower_to_int import LowerToInt

    if mode not in CALIBRATED_MODES:
        raise QCompilerError(f"quantize() takes a calibrated mode {CALIBRATED_MODES}, not '{mode}'")
    io = io or _IO_CHOICES[mode][0]
    if io not in _IO_CHOICES[mode]:
        raise QCompilerError(f"--io {io} is not available in mode {mode}; choose {' or '.join(_IO_CHOICES[mode])}")
    graph = float_graph(model_or_graph)
    activations = "i16" if mode == "int16x8" else "i8"
    # a QAT model brings its own ranges: no calibration (a missing one is an error, or default_ranges, in lowering)
    trained = _trained_ranges(graph, mode, calibration_data, calibration_stats)
    if not trained:
        run_passes(graph, [InsertFakeQuant(activations=activations, per_channel=per_channel)])
    if trained:
        pass
    elif calibration_stats is None and calibration_data is not None:
        calibration_stats = calibration_statistics(graph, calibration_data, batch_size=batch_size,
                                                   calibrate_with=calibrate_with, progress=progress,
                                                   exact_histograms=observer == "kl")
    if trained:
        pass
    elif calibration_stats is not None:
        apply_ranges(graph, calibration_stats, observer, **dict(observer_options or {}))
    elif default_ranges is None:
        raise QCompilerError(f"mode {mode} needs calibration data (--calibration DATA.npy or calibration_data=...) "
                             "or --default-ranges MIN,MAX")
    lower = LowerToInt(io=io, default_ranges=_pair(default_ranges, "default ranges"),
                       input_stats=_pair(input_stats, "input stats"), int4=int4_weights)
    return run_passes(graph, [lower, DeadCodeElimination()])


def _has_trained_ranges(graph: Graph) -> bool:
    from qcompiler.passes.insert_missing_fake_quant import has_trained_ranges

    return has_trained_ranges(graph)


def _trained_ranges(graph: Graph, mode: str, calibration_data: Any, calibration_stats: Any) -> bool:
    """A quantization-aware-trained model (qcompiler.qat): mark what training left out and use its ranges."""
    import warnings

    from qcompiler.passes.insert_missing_fake_quant import InsertMissingFakeQuant

    if not _has_trained_ranges(graph):
        return False
    if mode == "int16x8":
        raise QCompilerError("this model was quantization-aware trained for 8-bit activations; compile it with "
                             "--mode int8 or uint8")
    if calibration_data is not None or calibration_stats is not None:
        warnings.warn("the model carries ranges from quantization-aware training; the calibration data is not used",
                      UserWarning, stacklevel=3)
    run_passes(graph, [InsertMissingFakeQuant()])
    return True


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

    if mode not in MODES:
        raise QCompilerError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
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
    if values is None:
        return None
    values = tuple(float(v) for v in values)
    if len(values) != 2:
        raise QCompilerError(f"{what} need exactly two numbers, got {list(values)}")
    return values  # type: ignore[return-value]


def layer_report(model_or_graph: Union[ModelLike, Graph], calibration_data: Any, eval_data: Any = None, *,
                 mode: str = "int8", observer: str = "minmax", observer_options: Optional[Mapping] = None,
                 per_channel: bool = True, calibrate_with: str = "tflite"):
    """Per-tensor quantization error (SNR, cosine, MSE, clipping) of the quantized model against the float
    one, on `eval_data` (the calibration data when not given). See qcompiler/validate/layer_report.py."""
    from qcompiler.passes.calibrate import apply_ranges
    from qcompiler.passes.insert_fake_quant import InsertFakeQuant
    from qcompiler.validate.layer_report import layer_report as _report

    if mode not in CALIBRATED_MODES:
        raise QCompilerError(f"a layer report needs a calibrated mode {CALIBRATED_MODES}, not '{mode}'")
    graph = float_graph(model_or_graph)
    run_passes(graph, [InsertFakeQuant(activations="i16" if mode == "int16x8" else "i8", per_channel=per_channel)])
    stats = calibration_statistics(graph, calibration_data, calibrate_with=calibrate_with,
                                   exact_histograms=observer == "kl")
    apply_ranges(graph, stats, observer, **dict(observer_options or {}))
    return _report(graph, calibration_data if eval_data is None else eval_data, observer=observer)
