"""quantize-weights: dynamic-range quantization — int8 weights, float activations (TFLite "hybrid" kernels).

    %w = const f32[32,3,3,32] #9f3a1c
    %c = conv2d(%x, %w, %b) {activation="relu"} : f32[?,14,14,32]
  becomes
    %w = const i8[32,3,3,32] q<axis=0 [...]:[...]> #51d0e2
    %c = conv2d(%x, %w, %b) {activation="relu"} : f32[?,14,14,32]

As TFLiteConverter does with `optimizations=[Optimize.DEFAULT]` and no representative dataset (TF 2.21, MLIR
prepare-dynamic-range-quantize + quantize passes):
  - only the weights of ops with a hybrid kernel (conv2d, depthwise_conv2d, fully_connected) are quantized, and only
    when they have at least `min_elements` (1024) elements; biases and every other constant stay float32;
  - symmetric int8 in [-127, 127], per channel along the output axis (0 for conv2d/FC, 3 for depthwise);
  - the scale is computed in double, not with the legacy float32 scale of full-integer mode, and the values are
    divided by that double scale (see `dynamic_range_quantize`); the file stores the scale as float32.
The backend writes these ops as hybrid kernels (FULLY_CONNECTED with asymmetric_quantize_inputs=true), which
quantize their float input on the fly. In the numpy interpreter the weights are dequantized, so the graph computes
the float model with quantized weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.ops import OPS
from qcompiler.ir.types import QParams
from qcompiler.passes.base import Pass, PassResult
from qcompiler.passes.rewriter import has_data
from qcompiler.quant import math as qmath

# op -> (weight operand, quantization axis): the ops TFLite has hybrid (float in, int8 weights) kernels for.
HYBRID_WEIGHTS: dict[str, tuple[int, int]] = {
    name: (d.weights.operand, d.weights.out_axis) for name, d in OPS.items() if d.weights and d.weights.hybrid
}
MIN_ELEMENTS = 1024  # the converter's default minimum_elements_for_weights
_QMAX = 127  # narrow signed 8-bit range [-127, 127]


def dynamic_range_quantize(w: np.ndarray, axis: int) -> tuple[QParams, np.ndarray]:
    """Per-channel symmetric int8 weights as the converter's dynamic-range mode writes them.

    Per channel c: m = max|w[c]| in double (range widened to include 0; a range of at most 1e-6 becomes
    [-5e-7, 5e-7]); scale = 2m / 254 in double; q = clamp(round_half_away(double(w) / scale), -127, 127). The
    stored scale is float32(scale). Dividing by the double scale, not the float32 one, matters: a value that lands
    within float32 rounding of a .5 boundary rounds differently (seen in mobilenet_v2).
    """
    w = np.asarray(w, np.float32)
    axis = axis % w.ndim
    reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
    lo = np.minimum(w.min(axis=reduce_axes).astype(np.float64), 0.0)
    hi = np.maximum(w.max(axis=reduce_axes).astype(np.float64), 0.0)
    m = np.maximum(np.abs(lo), np.abs(hi))
    m = np.where(2 * m <= qmath.NEAR_ZERO_TOLERANCE, qmath.NEAR_ZERO_TOLERANCE / 2, m)
    scales = (m - (-m)) / (2 * _QMAX)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = qmath.round_half_away(w.astype(np.float64) / scales.reshape(shape))
    q = np.clip(q, -_QMAX, _QMAX).astype(np.int8)
    stored = tuple(float(s) for s in scales.astype(np.float32))
    return QParams(stored, (0,) * len(stored), axis), q


@dataclass(frozen=True)
class QuantizeWeights(Pass):
    name: ClassVar[str] = "quantize-weights"
    summary: ClassVar[str] = "dynamic range: int8 per-channel weights for conv/depthwise/FC, activations stay float"

    min_elements: int = MIN_ELEMENTS

    def run(self, graph: Graph) -> PassResult:
        # id(float weights) -> (float weights, int8 weights): shared weights are quantized once.
        quantized: dict[int, tuple[Value, Value]] = {}
        notes: list[str] = []
        for node in list(graph.nodes):
            if node.op not in HYBRID_WEIGHTS:
                continue
            index, axis = HYBRID_WEIGHTS[node.op]
            weights = node.operands[index]
            if weights.type.dtype == "i8":
                continue  # quantized already
            reason = self._skip_reason(node, weights)
            if reason is not None:
                notes.append(reason)
                continue
            if id(weights) not in quantized:
                quantized[id(weights)] = (weights, _int8_weights(graph, weights, axis))
            node.set_operand(index, quantized[id(weights)][1])
        for original, new in quantized.values():
            _replace_if_unused(graph, original, new)
        counters = {"weights": len(quantized)} if quantized else {}
        if notes:
            counters["kept-float"] = len(notes)
        return PassResult(bool(quantized), counters, tuple(notes))

    def _skip_reason(self, node: Node, weights: Value) -> Optional[str]:
        if weights.type.dtype != "f32":
            return f"{node.describe()}: weights %{weights.name} are {weights.type.dtype}, not f32; left as they are"
        if not weights.is_constant:
            return f"{node.describe()}: weights %{weights.name} are not a constant; kept float"
        if not has_data(weights):
            return f"{node.describe()}: weights %{weights.name} were read from a digest-only dump; kept float"
        size = weights.type.num_elements()
        if size < self.min_elements:
            return (f"{node.describe()}: weights %{weights.name} have {size} elements, fewer than "
                    f"min_elements={self.min_elements}; kept float (as the converter does)")
        return None


def _int8_weights(graph: Graph, weights: Value, axis: int) -> Value:
    params, q = dynamic_range_quantize(np.asarray(weights.data), axis)
    new = graph.const(q, name=f"{weights.name}.int8", layer=weights.layer, before=weights.producer)
    new.type = new.type.with_quant(params)
    return new


def _replace_if_unused(graph: Graph, original: Value, new: Value) -> None:
    """Drop the float weights once nothing else uses them, and give their name to the int8 weights."""
    if original.uses or graph.is_output(original):
        return
    name = original.name
    graph.remove(original.producer)
    graph.rename(new, name)
