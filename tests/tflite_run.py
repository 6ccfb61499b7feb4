"""Test helper: run .tflite bytes in ai-edge-litert's reference kernels on a batch."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType


def run_tflite(model: bytes, inputs: Sequence[np.ndarray],
               resolver: Optional[OpResolverType] = None, preserve_all_tensors: bool = False) -> list[np.ndarray]:
    """Feed raw arrays (already in the model's input dtypes) and return raw outputs, batch resized. The resolver
    is BUILTIN_REF unless given (looked up at call time: tests/differential.py swaps it for the default one).
    `preserve_all_tensors`: no tensor shares another's buffer (the arena planner's in-place writes are off)."""
    resolver = OpResolverType.BUILTIN_REF if resolver is None else resolver
    interp = Interpreter(model_content=model, experimental_op_resolver_type=resolver,
                         experimental_preserve_all_tensors=preserve_all_tensors)
    details = interp.get_input_details()
    for detail, array in zip(details, inputs):
        interp.resize_tensor_input(detail["index"], list(array.shape))
    interp.allocate_tensors()
    for detail, array in zip(details, inputs):
        interp.set_tensor(detail["index"], np.asarray(array, detail["dtype"]))
    interp.invoke()
    return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]
