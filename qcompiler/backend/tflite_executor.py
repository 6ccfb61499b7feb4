"""Runs an IR float graph in the TFLite interpreter and hands back chosen intermediate tensors by IR name.

Used by calibration: qcompiler writes the float graph with its own writer, and the interpreter's optimized
builtin kernels (no XNNPACK, so every intermediate tensor stays readable) compute the values — the same
kernels TFLiteConverter's calibrator runs, so the recorded ranges agree with the converter's to the bit.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from qcompiler.backend.tflite_writer import BackendError, write_tflite
from qcompiler.ir.graph import Graph


def tflite_executor(graph: Graph, names: Sequence[str]):
    """Prepare `graph` (float, no fake_quant) and return a function: batch of inputs -> {name: array}."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    model = write_tflite(graph)
    interp = Interpreter(model_content=model, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    by_name = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise BackendError(f"tensors {missing} are not in the written model; cannot calibrate them with TFLite")
    inputs = interp.get_input_details()
    state = {"batch": None}

    def run_batch(batch: Sequence[np.ndarray]) -> Mapping[str, np.ndarray]:
        size = len(batch[0])
        if state["batch"] != size:
            for detail, array in zip(inputs, batch):
                interp.resize_tensor_input(detail["index"], [size, *array.shape[1:]])
            interp.allocate_tensors()
            state["batch"] = size
        for detail, array in zip(inputs, batch):
            interp.set_tensor(detail["index"], np.ascontiguousarray(array, np.float32))
        interp.invoke()
        return {name: interp.get_tensor(by_name[name]) for name in names}

    return run_batch
