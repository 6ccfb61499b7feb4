"""Runs an IR float graph in a TFLite interpreter and hands back chosen tensors by IR name (for calibration).

The graph is written with qcompiler's own writer, with every wanted tensor added as a graph output, so the
interpreter may use any kernels, delegates included, and the values are read as views of the output buffers
(no copies). Two runtimes, the `exact` and `fast` executors of the calibrate pass:

* `tensorflow_executor` (`exact`, the default): the TFLite runtime bundled with TensorFlow, builtin kernels
  without delegates, one sample per run and 4 threads, i.e. the converter's calibrator's configuration: its float
  values are the calibrator's bit for bit on the test zoo. Batching cannot make it faster without giving that
  up: the float CONV_2D kernel (Eigen's multithreaded contraction) picks its blocking and thread split from the
  whole problem size, and rows that land in a different micro-kernel path are summed in a different order, so
  MobileNetV2 at 224x224 with 2 or 4 samples per run (or 1 or 2 threads) changes 41 of its 64 tensors in the
  last bits from block_6 on. Two interpreters on two Python threads give the same values but no speed-up on
  two cores (each run already uses both). Needs tensorflow.
* `tflite_executor` (`fast`): ai-edge-litert with its default XNNPACK delegate on every available core, a few
  samples per run. About 2-3x faster per sample, but XNNPACK's float kernels round differently from the builtin
  kernels the converter's calibrator runs: on the test zoo and probes 42% of the calibrated ranges are
  bit-exact and 62% give the same int8 (scale, zero point); the others are a few ulps off, which leaves the int8
  outputs identical to the converter model's on 99-100% of values. (ai-edge-litert's builtin kernels, reference
  kernels, and numpy are not bit-exact either: 55-62%.)
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from qcompiler.backend.tflite_writer import BackendError, write_tflite
from qcompiler.ir.graph import Graph
from qcompiler.quiet import native_output_silenced

# The converter's calibrator runs with TFLite's default thread pool; 4 threads reproduce its float values.
_CALIBRATOR_THREADS = 4
# Samples per XNNPACK run: small batches keep each layer's activations in cache (MobileNetV2 at 224x224 on two
# cores: 1-4 samples per run ~30% faster than 32).
_XNNPACK_BATCH = 4


def tflite_executor(graph: Graph, names: Sequence[str]):
    """Prepare `graph` (float, no fake_quant) and return a runner: batch of inputs -> {name: array}, the arrays
    being views of the interpreter's output buffers, valid until the next call."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    model = _model_with_outputs(graph, names)
    interp = Interpreter(model_content=model, num_threads=_available_cores(),
                         experimental_op_resolver_type=OpResolverType.BUILTIN)
    return _Runner(graph, names, interp, max_batch=_XNNPACK_BATCH)


def tensorflow_executor(graph: Graph, names: Sequence[str]):
    """Like `tflite_executor`, in TensorFlow's TFLite runtime set up like the converter's calibrator: builtin
    kernels without delegates, 4 threads, one sample per run."""
    try:
        import tensorflow as tf
    except ImportError:
        raise BackendError("the exact calibration executor needs the tensorflow package; install it or "
                           "calibrate with executor=fast") from None
    model = _model_with_outputs(graph, names)
    with warnings.catch_warnings():  # tf.lite.Interpreter says it is deprecated in favour of ai-edge-litert
        warnings.simplefilter("ignore")
        interp = tf.lite.Interpreter(
            model_content=model, num_threads=_CALIBRATOR_THREADS,
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return _Runner(graph, names, interp, max_batch=1)


class _Runner:
    """Feeds a batch (resizing the inputs when its shape changes) and returns views of the wanted tensors."""

    def __init__(self, graph: Graph, names: Sequence[str], interp: Any, max_batch: Optional[int]) -> None:
        self.interp, self.max_batch = interp, max_batch
        by_name = {d["name"]: d["index"] for d in interp.get_input_details()}
        self.inputs = [by_name[v.name] for v in graph.inputs]
        graph_inputs = {v.name: i for i, v in enumerate(graph.inputs)}
        self.from_batch = {n: graph_inputs[n] for n in names if n in graph_inputs}
        outputs = {d["name"]: d["index"] for d in interp.get_output_details()}
        missing = [n for n in names if n not in outputs and n not in self.from_batch]
        if missing:
            raise BackendError(f"tensors {missing} are not outputs of the written calibration model; cannot "
                               "calibrate them with TFLite (use executor=numpy)")
        self.outputs = {n: interp.tensor(outputs[n]) for n in names if n not in self.from_batch}
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, batch: Sequence[np.ndarray]) -> Mapping[str, np.ndarray]:
        shapes = [tuple(np.shape(array)) for array in batch]
        if shapes != self.shapes:
            for index, shape in zip(self.inputs, shapes):
                self.interp.resize_tensor_input(index, list(shape))
            with native_output_silenced():  # applying the XNNPACK delegate announces itself on stderr
                self.interp.allocate_tensors()
            self.shapes = shapes
        for index, array in zip(self.inputs, batch):
            self.interp.set_tensor(index, np.ascontiguousarray(array, np.float32))
        self.interp.invoke()
        values = {name: view() for name, view in self.outputs.items()}
        values.update({name: np.asarray(batch[i], np.float32) for name, i in self.from_batch.items()})
        return values


def _model_with_outputs(graph: Graph, names: Sequence[str]) -> bytes:
    """The float model with every wanted tensor (graph inputs aside) as an extra model output; the graph itself
    is not changed (no copy of it is made)."""
    by_name = {v.name: v for v in graph.values()}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise BackendError(f"cannot calibrate tensors {unknown}: graph @{graph.name} has no such values")
    return write_tflite(graph, extra_outputs=[by_name[n] for n in names])


def _available_cores() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)
