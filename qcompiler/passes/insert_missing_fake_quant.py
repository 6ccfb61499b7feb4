"""insert-missing-fake-quant: a graph imported from a quantization-aware-trained model already carries its trained
fake_quant nodes; mark only what training left out, so that lower-to-int can run without calibration.

    %c = conv2d(%x.q, %w, %b) : ...        ->   %w.q = fake_quant(%w) {axis=0, weights=true}
                                                %c = conv2d(%x.q, %w.q, %b) : ...
    (a %c whose range lowering needs but training never saw)  ->   %c.q = fake_quant(%c)   # no range

- weights of a conv/depthwise/fully-connected with no fake_quant get the standard one (int8, per channel);
- an activation whose own range the integer model needs (insert-fake-quant's rule, `calibrated_values`) and
  that has no fake_quant gets an uncalibrated one: lower-to-int names it in its error, or fills it with
  --default-ranges and a warning.
A graph without fake_quant nodes is left alone (that is insert-fake-quant's job).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qcompiler.ir.graph import Graph, Value
from qcompiler.passes.base import Pass, PassResult
from qcompiler.passes.insert_fake_quant import _PASS_THROUGH, NotQuantizableError, calibrated_values
from qcompiler.quant.spec import quant_spec


def has_trained_ranges(graph: Graph) -> bool:
    """True when the graph came from a QAT model: fake_quant nodes with `bits` set."""
    return any(n.attrs["bits"] is not None for n in graph.find("fake_quant"))


@dataclass(frozen=True)
class InsertMissingFakeQuant(Pass):
    name: ClassVar[str] = "insert-missing-fake-quant"
    summary: ClassVar[str] = ("after a QAT import: mark weights and needed activations that training left without "
                              "fake_quant (activations stay uncalibrated)")

    def run(self, graph: Graph) -> PassResult:
        if not graph.find("fake_quant"):
            return PassResult.unchanged()
        _check_quantizable(graph)
        counts = {"weights": self._mark_weights(graph), "activations": self._mark_activations(graph)}
        return PassResult(any(counts.values()), {k: v for k, v in counts.items() if v})

    @staticmethod
    def _mark_weights(graph: Graph) -> int:
        marked = 0
        for node in list(graph.nodes):
            if node.op in _PASS_THROUGH:
                continue
            spec = quant_spec(node.op)
            index = spec.weight_operand if spec is not None else None
            if index is None or index >= len(node.operands):
                continue
            weights = node.operands[index]
            if weights.producer is not None and weights.producer.op == "fake_quant":
                continue
            q = graph.op("fake_quant", weights, name=f"{weights.name}.q", layer=weights.layer, before=node,
                         weights=True, axis=spec.weight_axis)
            node.set_operand(index, q)
            marked += 1
        return marked

    @staticmethod
    def _mark_activations(graph: Graph) -> int:
        marked = 0
        needed = calibrated_values(graph)
        for value in [v for v in graph.values() if id(v) in needed]:
            if _has_fake_quant(value):
                continue
            users = list(value.uses)
            outputs = [i for i, v in enumerate(graph.outputs) if v is value]
            anchor = {"after": value.producer} if value.producer is not None else {"before": graph.nodes[0]}
            q = graph.op("fake_quant", value, name=f"{value.name}.q", layer=value.layer, **anchor)
            for use in users:
                use.node.set_operand(use.index, q)
            for i in outputs:
                graph.outputs[i] = q
            marked += 1
        return marked


def _check_quantizable(graph: Graph) -> None:
    for node in graph.nodes:
        if node.op in _PASS_THROUGH:
            continue
        spec = quant_spec(node.op)
        if spec is None:
            layer = f" (Keras layer '{node.layer}')" if node.layer else ""
            raise NotQuantizableError(f"op {node.op} at %{node.results[0].name}{layer} cannot be quantized: TFLite "
                                      "has no integer kernel for it")
        index = spec.weight_operand
        if index is None or index >= len(node.operands):
            continue
        weights = node.operands[index]
        if weights.producer is not None and weights.producer.op == "fake_quant":
            weights = weights.producer.operands[0]
        if not weights.is_constant:
            raise NotQuantizableError(f"{node.describe()}: weights %{weights.name} are not a constant; only "
                                      "constant weights can be quantized")


def _has_fake_quant(value: Value) -> bool:
    return any(u.node.op == "fake_quant" and not u.node.attrs["weights"] for u in value.uses)
