"""Test helper: what TFLiteConverter's float model holds, to compare qcompiler's folded constants with."""
from __future__ import annotations

import warnings

import numpy as np

from qcompiler.quiet import native_output_silenced


def converter_float_constants(keras_model) -> set[tuple[tuple[int, ...], bytes]]:
    """(shape, bytes) of every float32 constant in the converter's float model of `keras_model`."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings(), native_output_silenced(fds=(1, 2)):
        warnings.simplefilter("ignore")
        model = tf.lite.TFLiteConverter.from_keras_model(keras_model).convert()
    interp = Interpreter(model_content=model)
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
