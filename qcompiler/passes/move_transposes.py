"""move-transposes: a transpose moves after the elementwise ops that follow it, as TFLiteConverter moves it.

    %t = transpose(%x) {perm=[0, 2, 1, 3]}          %m = mul(%x, %half)
    %m = mul(%t, %half)                      ->     %r = relu(%m)
    %r = relu(%m)                                   %t = transpose(%r) {perm=[0, 2, 1, 3]}

Three rules of the converter's pipeline, all pushing a transpose towards the outputs, in two phases as the
converter runs them (TensorFlow's pass first, then TFLite's):
- TensorFlow's MoveTransposes (kEnd, layout optimization): a layout-agnostic op whose operands are all transposes
  with the same permutation computes on the untransposed operands, whatever else uses them. Of the ops qcompiler
  has, measured on TF 2.21: relu and tanh, and add/sub/mul/div/maximum/minimum of two such transposes.
- TFLite's ReorderElementwiseAndMoveOperations (optimize): a unary value op of a transpose used only there —
  relu, relu6, relu_n1_to_1, sigmoid, tanh, exp, square, neg, sqrt (not abs, leaky_relu, elu, gelu, hard_swish).
- TFLite's PushTransposeThroughEwise: add/sub/mul/div/maximum/minimum of a transpose used only there and a
  constant that is a scalar or of the transpose's rank (transposed back by the inverse permutation), when the
  constant does not broadcast the result beyond the transpose's shape; or of two transposes with the same
  permutation, one of them used only there.

Why it matters for int8: a ReLU after a transpose fuses into the op before it (an Average's MUL), and the op
whose result ends the model is the transpose, so the elementwise op before it may write in place and the
converter's calibrator unites its input's range with its output's (random seed 1008: ReLU(max_value) and a
Rescaling after an ops.transpose; 1 LSB on 21% of the values).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import numpy as np

from qcompiler.backend.tflite_arena import MOVED_ABOVE_RESHAPE
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.passes.base import PassResult
from qcompiler.passes.rewriter import (Match, Pat, Rewriter, RewritePass, RewriteStats, Rule, apply_rules, has_data,
                                       result_from_stats)

TF_LAYOUT_AGNOSTIC_UNARY = frozenset({"relu", "tanh"})
TFL_REORDERED_UNARY = MOVED_ABOVE_RESHAPE  # ReorderElementwiseAndMoveOperations moves them above a TRANSPOSE too
EWISE_BINARY = ("add", "sub", "mul", "div", "maximum", "minimum")


def _transpose_of(value: Value) -> Optional[Node]:
    producer = value.producer
    return producer if producer is not None and producer.op == "transpose" else None


def _only_use(value: Value) -> bool:
    return len(value.uses) == 1 and not value.producer.graph.is_output(value)


def _inverse(perm: Sequence[int]) -> list[int]:
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[int(p)] = i
    return inverse


# ----- unary -----
def _unary_check_tf(m: Match) -> Optional[str]:
    if m.root.op not in TF_LAYOUT_AGNOSTIC_UNARY:
        return f"{m.root.op} is not layout-agnostic in TF (TFLite's rule below may still move it)"
    return None


def _unary_check_tfl(m: Match) -> Optional[str]:
    transpose = m["t"]
    if not _only_use(transpose.result):
        return f"the transpose %{transpose.result.name} has other users"
    return None


def _unary_rewrite(m: Match, rw: Rewriter) -> None:
    node, transpose = m.root, m["t"]
    inner = rw.op(node.op, transpose.operands[0], name=f"{node.result.name}_untransposed", layer=node.layer,
                  **dict(node.attrs))
    rw.replace_value(node, rw.op("transpose", inner, perm=list(transpose.attrs["perm"]), layer=transpose.layer))


# ----- binary -----
def _two_transposes_reason(m: Match, one_use: bool) -> Optional[str]:
    ta, tb = _transpose_of(m["a"]), _transpose_of(m["b"])
    if ta is None or tb is None:
        return "not both operands are transposes"
    if list(ta.attrs["perm"]) != list(tb.attrs["perm"]):
        return "the two transposes permute differently"
    if m["a"].type.shape != m["b"].type.shape:
        return "the transposed operands broadcast"
    if one_use and not (_only_use(m["a"]) or _only_use(m["b"])):
        return "both transposes have other users"
    return None


def _binary_check_tf(m: Match) -> Optional[str]:
    return _two_transposes_reason(m, one_use=False)


def _binary_check_tfl(m: Match) -> Optional[str]:
    if _two_transposes_reason(m, one_use=True) is None:
        return None
    a, b, node = m["a"], m["b"], m.root
    ta, tb = _transpose_of(a), _transpose_of(b)
    transpose, other = (ta, b) if ta is not None else (tb, a)
    if transpose is None:
        return "no operand is a transpose"
    if not other.is_constant or not has_data(other):
        return f"the other operand %{other.name} is not a constant"
    if not _only_use(transpose.result):
        return f"the transpose %{transpose.result.name} has other users"
    size = int(np.asarray(other.data).size)
    if size != 1 and other.type.rank != transpose.result.type.rank:
        return f"the constant's rank {other.type.rank} is not the transpose's {transpose.result.type.rank}"
    if transpose.result.type.shape != node.result.type.shape:
        return "the constant broadcasts the transposed operand"
    return None


def _binary_rewrite(m: Match, rw: Rewriter) -> None:
    node = m.root
    transposes = [_transpose_of(v) for v in node.operands]
    perm = list(next(t for t in transposes if t is not None).attrs["perm"])
    operands = []
    for value, transpose in zip(node.operands, transposes):
        if transpose is not None:
            operands.append(transpose.operands[0])
        elif np.asarray(value.data).size == 1:
            operands.append(value)
        else:  # a constant of the transpose's rank, transposed back
            data = np.ascontiguousarray(np.transpose(np.asarray(value.data), _inverse(perm)))
            operands.append(rw.const(data, name=f"{value.name}_untransposed", layer=node.layer,
                                     dtype=value.type.dtype))
    inner = rw.op(node.op, *operands, name=f"{node.result.name}_untransposed", layer=node.layer, **dict(node.attrs))
    layer = next(t for t in transposes if t is not None).layer
    rw.replace_value(node, rw.op("transpose", inner, perm=perm, layer=layer))


def _rules(unary_check, binary_check) -> list[Rule]:
    return [Rule("unary-after-transpose", Pat(tuple(sorted(TFL_REORDERED_UNARY)), Pat("transpose", "x", capture="t")),
                 _unary_rewrite, unary_check),
            Rule("ewise-after-transpose", Pat(EWISE_BINARY, "a", "b"), _binary_rewrite, binary_check)]


TF_RULES = _rules(_unary_check_tf, _binary_check_tf)  # TensorFlow's MoveTransposes, first
TFL_RULES = _rules(_unary_check_tfl, _binary_check_tfl)  # then TFLite's optimize / PushTransposeThroughEwise
RULES = TF_RULES + TFL_RULES


@dataclass(frozen=True)
class MoveTransposes(RewritePass):
    name: ClassVar[str] = "move-transposes"
    summary: ClassVar[str] = "move transposes after the elementwise ops that follow them (the converter's layout rules)"

    def rules(self) -> Sequence[Rule]:
        return RULES

    def run(self, graph: Graph) -> PassResult:
        stats = RewriteStats()
        for phase in (TF_RULES, TFL_RULES):
            apply_rules(graph, phase, stats=stats)
        return result_from_stats(stats)
