"""Test helper: what TFLiteConverter's float model holds, to compare qcompiler's folded constants with."""
from __future__ import annotations

import numpy as np

from qcompiler.demo import converter_float32


def converter_float_constants(keras_model) -> set[tuple[tuple[int, ...], bytes]]:
    """(shape, bytes) of every float32 constant in the converter's float model of `keras_model`."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=converter_float32(keras_model))
    interp.allocate_tensors()
    constants = set()
    for detail in interp.get_tensor_details():
        try:
            array = interp.get_tensor(detail["index"])
        except ValueError:  # tensors without data
            continue
        if array.dtype == np.float32:
            constants.add((array.shape, array.tobytes()))
    return constants
