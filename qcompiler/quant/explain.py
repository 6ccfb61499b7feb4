"""Why each tensor got the quantization it got, and why ops stayed float: reason codes derived from the op
table's quant rules (`OpDef.quant` through `node_spec`) and the same sharing rules insert-fake-quant applies.

    shared-with-input:OP %x     the result of a SAME op (max_pool2d, reshape, ...) keeps its input %x's parameters
    shared-with-output:OP %y    an operand of a multi-input SAME op (concat) takes that op's output parameters
                                (backward sharing, the policy's int8 rule)
    fixed-range:OP              the integer kernel fixes the output range (softmax, logistic, tanh)
    keep-float:user             the op stays float: its Keras layer was kept float (--keep-float, a plan entry)
    no-integer-kernel           the op stays float: TFLite has no integer kernel for it in this mode
    converter-keeps-float       the op stays float: the converter never quantizes it (ELU; policy tflite-2.21)
    float-operand %v            the op stays float: %v is a float op's output that nothing quantizes (it lost its
                                range to backward sharing), as in the converter (qcompiler/quant/float_spread.py)
"""
from __future__ import annotations

from typing import Optional

from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.quant.float_spread import float_ops as converter_float_ops
from qcompiler.quant.policy import DEFAULT_POLICY, get_policy
from qcompiler.quant.spec import FIXED, SAME, node_spec


def explain(graph: Graph, act_dtype: str = "i8", policy: str = DEFAULT_POLICY,
            keep_float: frozenset = frozenset()) -> dict:
    """The explanation of quantizing the float `graph` (after the float pipeline, before insert-fake-quant)."""
    from qcompiler.passes.insert_fake_quant import _PASS_THROUGH, calibrated_values, keeps_own_range

    keep = frozenset(keep_float)
    tensors: list[dict] = []
    float_ops: list[dict] = []
    own = calibrated_values(graph, share_backwards=False, act_dtype=act_dtype, keep_float=keep)
    kept = calibrated_values(graph, share_backwards=get_policy(policy).shares_backwards(act_dtype),
                             act_dtype=act_dtype, keep_float=keep)
    backward = _backward_sharer(graph, own - kept, act_dtype, keep)
    floats = converter_float_ops(graph, kept, act_dtype, get_policy(policy), keep)
    for value in graph.inputs:
        if id(value) in backward:
            tensors.append(_entry(value, *backward[id(value)]))
    for node in graph.nodes:
        if node.op in _PASS_THROUGH:
            continue
        reason = floats.reasons.get(id(node))
        if reason is not None:
            float_ops.append({"tensor": node.result.name, "op": node.op, "layer": node.layer, "reason": reason})
        spec = node_spec(node, act_dtype, keep)
        if spec is None or not node.result.type.is_float:
            continue
        if id(node.result) in backward:
            tensors.append(_entry(node.result, *backward[id(node.result)]))
        elif spec.output == FIXED:
            tensors.append(_entry(node.result, f"fixed-range:{node.op}", None))
        elif spec.output == SAME and not keeps_own_range(node):
            source = _activation_operand(node)
            if source is not None:
                tensors.append(_entry(node.result, f"shared-with-input:{node.op}", source))
    return {"activations": act_dtype, "policy": policy, "tensors": tensors, "float_ops": float_ops}


def _entry(value: Value, reason: str, other: Optional[Value]) -> dict:
    code = reason if other is None else f"{reason} %{other.name}"
    return {"tensor": value.name, "layer": value.layer, "reason": code}


def _activation_operand(node: Node) -> Optional[Value]:
    return next((v for v in node.operands if v.type.is_float and not v.is_constant), None)


def _backward_sharer(graph: Graph, shared_ids: set[int], act_dtype: str, keep: frozenset) -> dict:
    """value id -> ("shared-with-output:OP", the SAME op's result) for the values backward sharing took."""
    from qcompiler.passes.insert_fake_quant import _is_same, keeps_own_range

    found: dict[int, tuple[str, Value]] = {}
    for node in reversed(graph.nodes):  # the outermost multi-operand SAME op names the parameters
        if not (_is_same(node, act_dtype, keep) and keeps_own_range(node)):
            continue
        stack = [node]
        while stack:
            for operand in stack.pop().operands:
                if id(operand) in shared_ids and id(operand) not in found:
                    found[id(operand)] = (f"shared-with-output:{node.op}", node.result)
                    if operand.producer is not None and _is_same(operand.producer, act_dtype, keep):
                        stack.append(operand.producer)
    return found


def explanation_text(explained: dict) -> str:
    lines = [f"tensor %{t['tensor']}" + (f" (Keras layer '{t['layer']}')" if t["layer"] else "") + f": {t['reason']}"
             for t in explained["tensors"]]
    lines += [f"float %{f['tensor']} = {f['op']}" + (f" (Keras layer '{f['layer']}')" if f["layer"] else "")
              + f": {f['reason']}" for f in explained["float_ops"]]
    return "\n".join(lines) + ("\n" if lines else "")


def explain_model(model, mode: str = "int8", policy: str = DEFAULT_POLICY, keep_float=()) -> dict:
    from qcompiler.api import float_graph

    return explain(float_graph(model, policy), "i16" if mode == "int16x8" else "i8", policy, frozenset(keep_float))
