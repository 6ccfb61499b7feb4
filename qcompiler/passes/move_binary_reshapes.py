"""move-binary-reshapes: a binary op of a reshape and a constant computes before the reshape, as TFLiteConverter
moves it.

    %r = reshape(%x) {shape=[-1, 3, 10]}          %m = mul(%x, %scale)        (%scale: f32[10])
    %m = mul(%r, %scale)                   ->     %r = reshape(%m) {shape=[-1, 3, 10]}

TFLite's optimize pass (MoveBinaryOpConstBeforeReshape, one pattern per op: add, sub, mul, div, maximum, minimum,
greater, ...): `op(reshape(input, constant shape), constant)` becomes `reshape(op(input, constant))` when
- the reshape has a constant shape (keras.ops.reshape; not a Flatten or Reshape layer, whose shape is computed
  from the input's batch at run time) and its result has no other use (a graph output is a use too);
- the reshape is the first operand and the constant the second (the pattern's order);
- the constant's shape is a tail of both the reshape's result shape and its input's shape (IsTailOfShape: the
  trailing dimensions are equal, an unknown one only to an unknown one; a scalar is a tail of every shape), so
  the op broadcasts the same way on either side of the reshape;
- the input, the reshape's result and the constant have rank <= 4, and the input and the constant the same
  element type.
The pattern fires again on the moved reshape, so a chain of such ops (a batch norm's MUL and ADD, a Rescaling, a
clamp by constants) ends with the reshape.

And MoveBinaryOpBeforeReshape: `op(reshape(a), reshape(b))` with constant shapes becomes `reshape(op(a, b))` when
the two reshapes give one shape from one shape (each a tail of the other, both sides) and a, b have one element
type; for add/sub/mul/div each reshape has one use (or it is one reshape used twice by the op), for the other
ops the reshapes may have other users (they stay for them).

It runs in the same greedy pattern set as the fusions of a MUL/ADD into the conv / fully_connected before it, so
this pass comes before fold-affine: a Rescaling after `ops.reshape` of a conv's result folds into the conv.

Why it matters for int8: an identity `keras.ops.reshape(x, (-1, ...))` on a dynamic batch stays a RESHAPE in the
converter's model (canonicalize keeps it) and ends up after the chain, so the chain's last op is no graph output
any more: it writes in place, and the converter's calibrator unites the ranges of the tensors sharing that
buffer (random seed 2161: BN MUL/ADD, MINIMUM, BN MUL/ADD after such a reshape; 1157: a Rescaling's MUL/ADD by
scalars after a reshape of a hard_silu).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

from qcompiler.ir.graph import Value
from qcompiler.passes.rewriter import Const, Match, Pat, Rewriter, RewritePass, Rule, single_use_reason

# the binary ops of TFLite's MoveBinaryOpConstBeforeReshape patterns that qcompiler has
BINARY_OPS = ("add", "div", "greater", "maximum", "minimum", "mul", "sub")
MAX_RANK = 4  # TFLite's binary kernels broadcast up to 4-D


def is_tail_of_shape(tail: Value, full: Value) -> bool:
    """TFLite's IsTailOfShape: `tail`'s dimensions equal the last dimensions of `full` (unknown equals unknown)."""
    a, b = tail.type.shape, full.type.shape
    return len(a) <= len(b) and tuple(a) == tuple(b[len(b) - len(a):])


def _check(m: Match) -> Optional[str]:
    reshape, constant = m["reshape"], m["c"]
    source = reshape.operands[0]
    if reshape.attrs.get("runtime_batch", False):
        return "the reshape's shape is computed at run time (a Flatten or Reshape layer), not a constant"
    if (reason := single_use_reason(reshape)) is not None:
        return reason
    if not (is_tail_of_shape(constant, reshape.result) and is_tail_of_shape(constant, source)):
        return (f"the constant's shape {constant.type} is not a tail of both {source.type} and "
                f"{reshape.result.type}")
    if max(source.type.rank, reshape.result.type.rank, constant.type.rank) > MAX_RANK:
        return f"a rank above {MAX_RANK}"
    if source.type.dtype != constant.type.dtype:
        return f"the input is {source.type.dtype}, the constant {constant.type.dtype}"
    return None


def _rewrite(m: Match, rw: Rewriter) -> None:
    node, reshape = m.root, m["reshape"]
    inner = rw.op(node.op, reshape.operands[0], m["c"], name=f"{node.result.name}_unreshaped", layer=node.layer,
                  **dict(node.attrs))
    rw.replace_value(node, rw.op("reshape", inner, layer=reshape.layer, **dict(reshape.attrs)))


# MoveBinaryOpBeforeReshape: binary(reshape(a), reshape(b)) -> reshape(binary(a, b)). For add/sub/mul/div the two
# reshapes have one use each (or are one reshape used twice there); the other ops take no use condition.
ONE_USE_OPS = frozenset({"add", "div", "mul", "sub"})


def _constant_shape_reshape(value: Value) -> Optional[str]:
    producer = value.producer
    if producer is None or producer.op != "reshape":
        return f"%{value.name} is not a reshape"
    if producer.attrs.get("runtime_batch", False):
        return f"%{value.name}'s shape is computed at run time (a Flatten or Reshape layer), not a constant"
    return None


def _two_check(m: Match) -> Optional[str]:
    a, b = m["a"], m["b"]
    for value in (a, b):
        if (reason := _constant_shape_reshape(value)) is not None:
            return reason
    x, y = a.producer.operands[0], b.producer.operands[0]
    if a.type.shape != b.type.shape or x.type.shape != y.type.shape:
        return f"the reshapes' shapes ({x.type} -> {a.type}, {y.type} -> {b.type}) are not the same"
    if x.type.dtype != y.type.dtype:
        return f"the reshapes' inputs are {x.type.dtype} and {y.type.dtype}"
    if m.root.op in ONE_USE_OPS:
        if a is b:
            if len(a.uses) != 2 or a.producer.graph.is_output(a):
                return f"the reshape %{a.name} has other uses"
        elif single_use_reason(a.producer) is not None or single_use_reason(b.producer) is not None:
            return "a reshape has other uses"
    return None


def _two_rewrite(m: Match, rw: Rewriter) -> None:
    node, first = m.root, m["a"].producer
    inner = rw.op(node.op, first.operands[0], m["b"].producer.operands[0], name=f"{node.result.name}_unreshaped",
                  layer=node.layer, **dict(node.attrs))
    rw.replace_value(node, rw.op("reshape", inner, layer=first.layer, **dict(first.attrs)))


RULES = [Rule("binary-const-after-reshape", Pat(BINARY_OPS, Pat("reshape", "x", capture="reshape"), Const(capture="c"),
                                                arity=2), _rewrite, _check),
         Rule("binary-after-two-reshapes", Pat(BINARY_OPS, "a", "b", arity=2), _two_rewrite, _two_check)]


@dataclass(frozen=True)
class MoveBinaryReshapes(RewritePass):
    name: ClassVar[str] = "move-binary-reshapes"
    summary: ClassVar[str] = ("move a constant-shape reshape after the binary op with a constant that follows it "
                              "(the converter's MoveBinaryOpConstBeforeReshape)")

    def rules(self) -> Sequence[Rule]:
        return RULES
