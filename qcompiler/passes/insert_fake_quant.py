"""insert-fake-quant: mark every tensor that the integer model will quantize with a fake_quant node.

    %c = conv2d(%x, %w, %b) {activation="relu"} : f32[?,28,28,32]
  becomes
    %x.q = fake_quant(%x) : f32[?,28,28,1]                          # graph input: calibrated later
    %w.q = fake_quant(%w) {axis=0, weights=true} : f32[32,3,3,1]    # weights: symmetric per channel
    %c = conv2d(%x.q, %w.q, %b) {activation="relu"} : f32[?,28,28,32]
    %c.q = fake_quant(%c) : f32[?,28,28,32]                         # output: calibrated later

What each op gets is the table in qcompiler/quant/spec.py: ops whose output keeps its input's parameters
(pooling, reshape, pad, ...) get no fake_quant of their own; softmax/logistic/tanh get their fixed range.
Activation ranges stay `none` until `calibrate` fills them. Biases are not marked: lowering derives them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.passes.base import Pass, PassResult
from qcompiler.quant.spec import FIXED, SAME, quant_spec

# Ops that quantization leaves alone: their inputs and outputs are not activations.
_PASS_THROUGH = ("const", "fake_quant", "quantize", "dequantize")


class NotQuantizableError(QCompilerError):
    pass


@dataclass(frozen=True)
class InsertFakeQuant(Pass):
    name: ClassVar[str] = "insert-fake-quant"
    summary: ClassVar[str] = "insert fake_quant on every activation, weight and constant operand to quantize"

    activations: Literal["i8", "i16"] = "i8"
    per_channel: bool = True

    def run(self, graph: Graph) -> PassResult:
        if graph.find("fake_quant"):
            return PassResult.unchanged()
        _check_quantizable(graph)
        counts = {"activations": 0, "weights": 0, "constants": 0}
        for value in list(graph.inputs):
            if value.type.is_float:
                self._mark_activation(graph, value, None, before=graph.nodes[0] if graph.nodes else None)
                counts["activations"] += 1
        for node in list(graph.nodes):
            if node.op in _PASS_THROUGH:
                continue
            counts["weights"] += self._mark_weights(graph, node)
            counts["constants"] += self._mark_constants(graph, node)
            spec = quant_spec(node.op)
            if spec.output == SAME or not node.result.type.is_float:
                continue
            fixed = spec.fixed_range(self.activations) if spec.output == FIXED else None
            self._mark_activation(graph, node.result, fixed, after=node)
            counts["activations"] += 1
        return PassResult(any(counts.values()), {k: v for k, v in counts.items() if v})

    def _mark_activation(self, graph: Graph, value: Value, fixed: tuple[float, float] | None,
                         before: Node | None = None, after: Node | None = None) -> None:
        attrs = {"dtype": self.activations}
        if fixed is not None:
            attrs.update(min=fixed[0], max=fixed[1])
        users = list(value.uses)
        was_output = [i for i, v in enumerate(graph.outputs) if v is value]
        marked = graph.op("fake_quant", value, name=f"{value.name}.q", layer=value.layer, before=before,
                          after=after, **attrs)
        for use in users:
            use.node.set_operand(use.index, marked)
        for i in was_output:
            graph.outputs[i] = marked

    def _mark_weights(self, graph: Graph, node: Node) -> int:
        spec = quant_spec(node.op)
        index = spec.weight_operand
        if index is None or index >= len(node.operands):
            return 0
        weights = node.operands[index]
        if not weights.is_constant:
            raise NotQuantizableError(
                f"{node.describe()}: weights %{weights.name} are not a constant; only constant weights can be "
                "quantized (run fold-constants first, or keep this layer in float)")
        axis = spec.weight_axis if self.per_channel else None
        marked = graph.op("fake_quant", weights, name=f"{weights.name}.q", layer=weights.layer, before=node,
                          weights=True, axis=axis)
        node.set_operand(index, marked)
        return 1

    def _mark_constants(self, graph: Graph, node: Node) -> int:
        """Constant operands that are not weights or bias (e.g. the scale of a Rescaling mul)."""
        spec = quant_spec(node.op)
        marked_count = 0
        for index, operand in enumerate(node.operands):
            if index in (spec.weight_operand, spec.bias_operand) or not operand.is_constant:
                continue
            if not operand.type.is_float:
                continue
            data = np.asarray(operand.data, np.float32)
            marked = graph.op("fake_quant", operand, name=f"{operand.name}.q", layer=operand.layer, before=node,
                              dtype=self.activations, min=float(data.min()), max=float(data.max()))
            node.set_operand(index, marked)
            marked_count += 1
        return marked_count


def _check_quantizable(graph: Graph) -> None:
    for node in graph.nodes:
        if node.op in _PASS_THROUGH:
            continue
        if quant_spec(node.op) is None:
            layer = f" (Keras layer '{node.layer}')" if node.layer else ""
            hint = ("run the default float pipeline first (canonicalize, fold-batchnorm)"
                    if node.op in ("batch_norm", "identity") else
                    "TFLite has no integer kernel for it; use --mode dynamic or float16 for this model")
            raise NotQuantizableError(f"op {node.op} at %{node.results[0].name}{layer} cannot be quantized: {hint}")
