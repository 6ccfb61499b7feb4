"""weights-to-f16: store every float32 constant as float16, dequantized back to float32 where it is used.

    %b = const f32[32] #1c2d3e
    %c = conv2d(%x, %w, %b) : f32[?,14,14,32]
  becomes
    %b.f16 = const f16[32] #7a8b9c
    %b = dequantize(%b.f16) : f32[32]
    %c = conv2d(%x, %w, %b) : f32[?,14,14,32]

As TFLiteConverter does with `optimizations=[Optimize.DEFAULT]` and `supported_types=[tf.float16]` (TF 2.21, MLIR
prepare-dynamic-range-quantize in float16 mode): every float32 constant that an op uses is converted — weights,
biases and any other constant operand, whatever its size — with values clamped to ±65504 and rounded to nearest
even; a constant gets one DEQUANTIZE however many ops use it; a constant that is itself a graph output stays f32.
Activations and the computation stay float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qcompiler.ir.graph import Graph, Value
from qcompiler.passes.base import Pass, PassResult
from qcompiler.passes.rewriter import has_data

F16_MAX = 65504.0  # largest finite float16


def to_float16(array: np.ndarray) -> np.ndarray:
    """float32 -> float16 as the converter does: clamp to the finite range, then round to nearest even."""
    return np.clip(np.asarray(array, np.float32), -F16_MAX, F16_MAX).astype(np.float16)


@dataclass(frozen=True)
class WeightsToF16(Pass):
    name: ClassVar[str] = "weights-to-f16"
    summary: ClassVar[str] = "float16 constants with a dequantize to float32; activations stay float32"

    def run(self, graph: Graph) -> PassResult:
        converted = 0
        notes = []
        for node in list(graph.nodes):
            value = node.results[0]
            if node.op != "const" or value.type.dtype != "f32" or not value.uses:
                continue
            if not has_data(value):
                notes.append(f"constant %{value.name} was read from a digest-only dump; kept f32")
                continue
            if np.any(np.abs(value.data) > F16_MAX):
                notes.append(f"constant %{value.name}{_layer(value)} has values beyond ±{F16_MAX:g}; clamped")
            _convert(graph, value)
            converted += 1
        return PassResult(converted > 0, {"constants": converted} if converted else {}, tuple(notes))


def _layer(value: Value) -> str:
    return f" (Keras layer '{value.layer}')" if value.layer else ""


def _convert(graph: Graph, value: Value) -> None:
    half = graph.const(to_float16(value.data), name=f"{value.name}.f16", layer=value.layer, before=value.producer)
    widened = graph.op("dequantize", half, name=f"{value.name}.f32", layer=value.layer, after=half.producer)
    for use in list(value.uses):
        use.node.set_operand(use.index, widened)
    if graph.is_output(value):
        return  # the output keeps the f32 constant; its other users read the dequantized copy
    name = value.name
    graph.remove(value.producer)
    graph.rename(widened, name)
