"""insert-fake-quant: mark every tensor whose calibrated range the integer model uses with a fake_quant node.

    %c = conv2d(%x, %w, %b) {activation="relu"} : f32[?,28,28,32]
  becomes
    %x.q = fake_quant(%x) : f32[?,28,28,1]                          # graph input: calibrated later
    %w.q = fake_quant(%w) {axis=0, weights=true} : f32[32,3,3,1]    # weights: symmetric per channel
    %c = conv2d(%x.q, %w.q, %b) {activation="relu"} : f32[?,28,28,32]
    %c.q = fake_quant(%c) : f32[?,28,28,32]                         # output: calibrated later

What each op gets is the table in qcompiler/quant/spec.py, applied as TFLiteConverter's RemoveRedundantStatsOps
does (docs/quantization-notes.md §5.2):
  - graph inputs and outputs of OWN ops get a fake_quant; softmax/logistic/tanh get their fixed range;
  - outputs of SAME ops with one activation operand (pooling, reshape, pad, ...) get none: they keep the
    operand's parameters;
  - outputs of SAME ops with several float operands (concat, maximum, minimum) get one, and with the policy's
    backward sharing (tflite-2.21 in int8 mode) their operands do not: lowering gives those operands the op's
    parameters, recursively through chains of SAME ops, so a graph input or a conv output feeding a concat gets
    no fake_quant of its own (counter `shared-backwards`). Without it (the plain policy; tflite-2.21's 16x8 mode,
    the converter's older quantizer) the operands keep their own ranges and are requantized.
Activation ranges stay `none` until `calibrate` fills them. Biases and constant operands of SAME ops are not
marked: lowering derives them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import numpy as np

from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.ops import NOT_ACTIVATION, OPS
from qcompiler.passes.base import Pass, PassResult
from qcompiler.quant.policy import DEFAULT_POLICY, PolicyName, get_policy
from qcompiler.quant.spec import FIXED, FLOAT_ISLAND, OWN, SAME, can_keep_float, node_spec, quant_spec

# Ops that quantization leaves alone: their inputs and outputs are not activations (OpDef.quant).
_PASS_THROUGH = frozenset(name for name, d in OPS.items() if d.quant.output == NOT_ACTIVATION)


class NotQuantizableError(QCompilerError):
    pass


@dataclass(frozen=True)
class InsertFakeQuant(Pass):
    name: ClassVar[str] = "insert-fake-quant"
    summary: ClassVar[str] = ("insert fake_quant on each activation whose calibrated range is used, on weights "
                              "and on constant operands")

    activations: Literal["i8", "i16"] = "i8"
    per_channel: bool = True
    policy: PolicyName = DEFAULT_POLICY
    keep_float: tuple[str, ...] = ()  # Keras layers left in float (float islands, as ops without integer kernel)

    def run(self, graph: Graph) -> PassResult:
        if graph.find("fake_quant"):
            return PassResult.unchanged()
        lowered = next((v for v in graph.values() if v.type.quant is not None), None)
        if lowered is not None:
            raise QCompilerError(f"insert-fake-quant: the graph is already quantized (%{lowered.name} is "
                                 f"{lowered.type}); give it the float graph")
        keep = check_keep_float(graph, self.keep_float)
        _check_quantizable(graph, self.activations, keep)
        share = get_policy(self.policy).shares_backwards(self.activations)
        calibrated = calibrated_values(graph, share_backwards=share, act_dtype=self.activations, keep_float=keep)
        unshared = calibrated_values(graph, share_backwards=False, act_dtype=self.activations, keep_float=keep)
        counts = {"activations": 0, "weights": 0, "constants": 0, "shared": 0,
                  "shared-backwards": len(unshared) - len(calibrated)}
        first = graph.nodes[0] if graph.nodes else None
        for value in list(graph.inputs):
            if not value.type.is_float:
                continue
            if id(value) in calibrated:
                self._mark_activation(graph, value, None, before=first)
                counts["activations"] += 1
            else:
                counts["shared"] += 1
        for node in list(graph.nodes):
            if node.op in _PASS_THROUGH:
                continue
            spec = node_spec(node, self.activations, keep)
            if spec is not FLOAT_ISLAND:  # a float island keeps its constants in float
                counts["weights"] += self._mark_weights(graph, node)
                counts["constants"] += self._mark_constants(graph, node)
            if not node.result.type.is_float:
                continue
            if spec.output == FIXED:
                self._mark_activation(graph, node.result, spec.fixed_range(self.activations), after=node)
                counts["activations"] += 1
            elif id(node.result) in calibrated:
                self._mark_activation(graph, node.result, None, after=node)
                counts["activations"] += 1
            elif spec.output == OWN or (spec.output == SAME and keeps_own_range(node)):
                counts["shared"] += 1
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
        spec = quant_spec(node.op, self.activations)
        index = spec.weight_operand
        if index is None or index >= len(node.operands):
            return 0
        weights = node.operands[index]  # a constant: _check_quantizable made sure
        axis = spec.weight_axis if self.per_channel else None
        marked = graph.op("fake_quant", weights, name=f"{weights.name}.q", layer=weights.layer, before=node,
                          weights=True, axis=axis)
        node.set_operand(index, marked)
        return 1

    def _mark_constants(self, graph: Graph, node: Node) -> int:
        """Constant operands that are not weights or bias (e.g. the scale of a Rescaling mul)."""
        spec = quant_spec(node.op, self.activations)
        if spec.output == SAME:  # they take the op's parameters
            return 0
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


def keeps_own_range(node: Node) -> bool:
    """A SAME op with several float operands (constants count, as in the converter's PreferResultScale) keeps
    its own calibrated output range instead of taking its operand's."""
    return sum(1 for v in node.operands if v.type.is_float) > 1


def check_keep_float(graph: Graph, layers: tuple[str, ...]) -> frozenset:
    """The Keras layers to keep in float, each checked: it names a layer of the graph with an op that can stay
    float."""
    known = {n.layer for n in graph.nodes if n.layer and can_keep_float(n.op)}
    for layer in layers:
        if layer not in known:
            raise NotQuantizableError(f"keep-float: the graph has no Keras layer '{layer}' with an op that can stay "
                                      f"float; its layers are {', '.join(sorted(known)) or 'none'}")
    return frozenset(layers)


def calibrated_values(graph: Graph, share_backwards: bool = True, act_dtype: str = "i8",
                      keep_float: frozenset = frozenset()) -> set[int]:
    """Ids of the activations whose own calibrated range the integer model uses.

    Graph inputs, outputs of OWN ops and outputs of multi-operand SAME ops; with `share_backwards` (int8, the
    MLIR quantizer) minus every activation reached backwards from a SAME op's calibrated output through SAME
    producers: those take the downstream op's parameters.
    """
    candidates: list[Value] = [v for v in graph.inputs if v.type.is_float]
    for node in graph.nodes:
        spec = node_spec(node, act_dtype, keep_float) if node.op not in _PASS_THROUGH else None
        if spec is None or not node.result.type.is_float:
            continue
        if spec.output == OWN or (spec.output == SAME and keeps_own_range(node)):
            candidates.append(node.result)
    shared: set[int] = set()
    if share_backwards:
        for value in candidates:
            if value.producer is not None and _is_same(value.producer, act_dtype, keep_float):
                _share_operands(value.producer, shared, act_dtype, keep_float)
    return {id(v) for v in candidates if id(v) not in shared}


def _is_same(node: Node, act_dtype: str, keep_float: frozenset = frozenset()) -> bool:
    spec = node_spec(node, act_dtype, keep_float) if node.op not in _PASS_THROUGH else None
    return spec is not None and spec.output == SAME


def _share_operands(node: Node, shared: set[int], act_dtype: str, keep_float: frozenset = frozenset()) -> None:
    stack = [node]
    while stack:
        for operand in stack.pop().operands:
            if operand.is_constant or not operand.type.is_float or id(operand) in shared:
                continue
            shared.add(id(operand))
            producer = operand.producer
            if producer is not None and _is_same(producer, act_dtype, keep_float):
                stack.append(producer)


def _check_quantizable(graph: Graph, act_dtype: str, keep_float: frozenset = frozenset()) -> None:
    for node in graph.nodes:
        if node.op in _PASS_THROUGH:
            continue
        spec = node_spec(node, act_dtype, keep_float)
        if spec is None:
            layer = f" (Keras layer '{node.layer}')" if node.layer else ""
            hint = ("run the default float pipeline first (canonicalize, fold-batchnorm)"
                    if node.op in _REMOVED_BY_FLOAT_PIPELINE else
                    "TFLite has no integer kernel for it; use --mode dynamic or float16 for this model")
            raise NotQuantizableError(f"op {node.op} at %{node.results[0].name}{layer} cannot be quantized: {hint}")
        _check_weights(node, spec.weight_operand)


# Ops without an integer kernel that the default float pipeline removes (they have no TFLite builtin).
_REMOVED_BY_FLOAT_PIPELINE = frozenset(name for name, d in OPS.items()
                                       if d.tflite is None and d.quant.output != NOT_ACTIVATION)


def _check_weights(node: Node, index: Optional[int]) -> None:
    if index is None or index >= len(node.operands) or node.operands[index].is_constant:
        return
    raise NotQuantizableError(
        f"{node.describe()}: weights %{node.operands[index].name} are not a constant; only constant weights can be "
        "quantized (run fold-constants first, or keep this layer in float)")
