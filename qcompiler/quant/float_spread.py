"""Which ops of an integer model run in float, as TFLiteConverter's MLIR quantizer decides it (policy tflite-2.21,
int8; `QuantPolicy.converter_float`). docs/quantization-notes.md §10 derives it:

  - an op the quantizer never quantizes stays float: an op without an integer kernel, and an op whose TFL
    definition lacks the QuantizableResult trait although TFLite has an int8 kernel (tfl.elu:
    `QuantRule.converter_quantizes`). IsOpNotQuantizable skips it, so QuantizationPattern leaves it float;
  - such an op's output gets a QUANTIZE only from its own calibrated range (a statistics op). Backward sharing
    (RemoveRedundantStatsOps) drops that range when the output feeds a concat/maximum/minimum (through SAME
    ops), and the QuantizationDriver then never quantizes it: it only quantizes the results of the ops on its
    work list (quantizable or same-scale ops), and the float op is not one. The output stays float, unquantized;
  - an op with an unquantized float operand cannot be quantized either (QuantizationPattern wants every float
    operand to come from a DEQUANTIZE): it runs in float, with float constants (weights included), and its
    own output is quantized with the parameters it has (its range, or the one propagation gave it), because
    the driver does quantize the results of the ops on its work list. So float spreads exactly one op deep
    per unquantized value: a concat after an ELU runs in float, a pooling between them too, and the op after
    the concat is integer again. An op the converter reaches through a hidden RESHAPE (a Dense on a rank > 2
    input: Keras' tensordot) stays integer: the RESHAPE is the float op, and quantizes;
  - between two float ops no QUANTIZE/DEQUANTIZE pair remains (post-quantize's RemoveVolatileOps).

The plain policy keeps the textbook rule: every op with an integer kernel runs in integers, and a float
island's output is always quantized.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from qcompiler.ir.graph import Graph, Node
from qcompiler.ir.ops import OPS
from qcompiler.quant.policy import QuantPolicy
from qcompiler.quant.spec import FLOAT_ISLAND, SAME, float_reason, node_spec

CONVERTER_KEEPS_FLOAT = "converter-keeps-float"  # reason code: the converter never quantizes the op (ELU)
FLOAT_OPERAND = "float-operand"  # reason code: an operand is an unquantized float value
DRIVER_SKIPPED = "driver-skipped"  # reason code: a same-scale op the QuantizationDriver never gave parameters


@dataclass
class FloatOps:
    """The float ops of an integer model: node id -> reason code, and the float values that get no QUANTIZE
    (their users are all float)."""

    reasons: dict[int, str] = field(default_factory=dict)
    unquantized: set[int] = field(default_factory=set)
    unparameterized: set[int] = field(default_factory=set)  # unquantized values without any parameters

    def is_float(self, node: Node) -> bool:
        return id(node) in self.reasons


def converter_keeps_float(op: str) -> bool:
    """TFLite has an integer kernel for the op, but the converter's quantizer never uses it (ELU)."""
    definition = OPS.get(op)
    return definition is not None and not definition.quant.converter_quantizes


def float_ops(graph: Graph, own_ranges: set[int], act_dtype: str, policy: QuantPolicy,
              keep: frozenset = frozenset(), skipped: set[int] = frozenset()) -> FloatOps:
    """The float ops of `graph` (a float graph, before or after insert-fake-quant) once quantized with
    `act_dtype` activations. `own_ranges`: ids of the values that keep their own calibrated range (after the
    policy's backward sharing). `skipped`: ids of the nodes the QuantizationDriver dropped for good
    (lower_to_int.ConverterPropagation.skipped): they run in float; a SAME one's result stays unquantized, a
    fully_connected's (its hidden RESHAPE was the dropped op) is quantized with its own range."""
    result = FloatOps()
    spreads = policy.converter_float(act_dtype)
    for node in graph.nodes:
        spec = node_spec(node, act_dtype, keep)
        if spec is None:
            continue
        if spreads and id(node) in skipped:
            result.reasons[id(node)] = DRIVER_SKIPPED
            if spec.output == SAME:
                result.unquantized.add(id(node.result))
                result.unparameterized.add(id(node.result))
            continue
        reason = _reason(node, spec, act_dtype, keep, spreads, result)
        if reason is None:
            continue
        result.reasons[id(node)] = reason
        if spreads and _leaves_unquantized(graph, node, reason, own_ranges):
            result.unquantized.add(id(node.result))
    return result


def _reason(node: Node, spec, act_dtype: str, keep: frozenset, spreads: bool, floats: FloatOps):
    if spec is FLOAT_ISLAND:
        return float_reason(node, act_dtype, keep)
    if not spreads:
        return None
    if converter_keeps_float(node.op):
        return CONVERTER_KEEPS_FLOAT
    if _reshapes_first(node) and id(node.operands[0]) not in floats.unparameterized:
        return None
    floating = next((v for v in node.operands if id(v) in floats.unquantized), None)
    return None if floating is None else f"{FLOAT_OPERAND} %{floating.name}"


def _reshapes_first(node: Node) -> bool:
    """The converter's graph has a RESHAPE (a same-scale op) between the operand and the op: Keras' tensordot
    for a Dense on a rank > 2 input. That RESHAPE is the op that runs in float; its output is quantized with the
    parameters propagation gave the unquantized value, so the op itself stays integer."""
    return node.op == "fully_connected" and node.operands[0].type.rank > 2


def _leaves_unquantized(graph: Graph, node: Node, reason: str, own_ranges: set[int]) -> bool:
    """A float op off the driver's work list (it never quantizes, it is not a same-scale op) whose output lost
    its own range: nothing quantizes it. A graph output always is (the model's outputs are integer)."""
    if reason.startswith(FLOAT_OPERAND) or reason == "keep-float:user" or _moved_before_its_operand(node):
        return False  # on the work list (or chosen by the user, or followed by a move op): it is quantized
    value = node.result
    return value.type.is_float and id(value) not in own_ranges and not graph.is_output(value)


# TFLite's optimize pass (ReorderElementwiseAndMoveOperations) swaps a unary elementwise op with the move op
# (reshape, transpose, squeeze, expand_dims) before it when that move op has one use: neg(reshape(x)) becomes
# reshape(neg(x)). The move op then follows the float op and, being a same-scale op on the driver's work
# list, quantizes the result with the parameters propagation gives it.
_REORDERED_UNARY = frozenset({"exp", "neg", "relu", "relu_n1_to_1", "relu6", "tanh", "sqrt", "square", "sigmoid"})
_MOVE_OPS = frozenset({"reshape", "flatten", "transpose"})


def _moved_before_its_operand(node: Node) -> bool:
    if node.op not in _REORDERED_UNARY:
        return False
    move = node.operands[0].producer
    return move is not None and move.op in _MOVE_OPS and len(node.operands[0].uses) == 1
