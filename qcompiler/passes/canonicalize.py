"""canonicalize: one spelling per computation, so later passes and the backend see fewer forms.

- flatten(x)                      -> reshape(x) {shape=[-1, prod(x.shape[1:])]}
- identity(x)                     -> x   (also between a graph input and a graph output: the output is the
                                         input, as in the converter's model; two outputs stay two tensors)
- reshape(x) to x's own shape     -> x   (static, or the batch taken from x at run time: a Keras Reshape/Flatten
                                         layer; keras.ops.reshape(x, (-1, ...)) on an unknown batch stays, as in TF)
- reshape(reshape(x))             -> reshape(x)
- transpose(x) {perm=[0, 1, ..]}  -> x   (TensorFlow's grappler drops an identity permutation before the converter
                                         sees it: `ops.transpose(x, [0, 1, 2])` leaves no TRANSPOSE)
  The three identity removals above are recorded in Graph.elided_ops: TensorFlow's graph still has those ops when
  the converter imports it, and they decide its op order (qcompiler/quant/op_order.py).
- maximum(x, 0)                   -> relu(x)
- relu(relu(x)), relu6(relu6(x)) -> the inner one, whatever else uses it (TensorFlow's Idempotent fold: a Dense
                                    with relu6 followed by an Activation("relu6") is one FULLY_CONNECTED);
  relu_n1_to_1(relu_n1_to_1(x))   -> the inner one if it has no other user
- abs(abs(x)) -> abs(x);  neg(neg(x)) -> x   (TensorFlow's folds of its Idempotent and Involution ops, whatever
                                         else uses the inner op: two ops.abs leave one ABS, random seed 2115)
- minimum(relu(x), 6)             -> relu6(x)
- clamp(x, -1, 1) (min of max)    -> relu_n1_to_1(x)
- mean/sum/reduce_max/reduce_min over axes of size 1 with keepdims -> x (GlobalAveragePooling2D(keepdims=True)
  of a 1x1 map, as TFLiteConverter drops it; without keepdims it keeps the op, measured on TF 2.21)
- add(x, 0), sub(x, 0), mul(x, 1) -> x   (constants of equal elements that do not broadcast x; TensorFlow's
                                         IdentityArithmeticOpFolder, which the converter runs: a Dense with a
                                         zero bias on a rank-3 input keeps no ADD)
- sub(x, neg(y)) -> add(x, y);  add(neg(x), y) -> sub(y, x);  add(x, neg(y)) -> sub(x, y)
                                         (TensorFlow's SubOfNeg / AddV2OfNegLeft / AddV2OfNegRight canonicalizations,
                                         which the converter runs; the neg stays while it has other users)
- square(sub(x, y))               -> squared_difference(x, y)   (TensorFlow's SquareOfSub canonicalization: the
                                         converter writes one int8 SQUARED_DIFFERENCE, not SUB then a float
                                         SQUARE; the sub stays while it has other users)
- add(add(x, c1), c2)             -> add(x, c1 + c2)   (the converter's constant-add fusion: a rank-3 Dense's
                                         bias add and hard_sigmoid's +3 are one ADD), unless x comes from a
                                         conv2d / depthwise_conv2d / 2-D fully_connected, where fold-affine
                                         folds each add into the bias in turn as the converter does
- relu/relu6/relu_n1_to_1(hard_swish(x)), hard_swish(neg(y)) -> clamp(mul(x, mul(relu6(add(x, 3)), 1/6)))
                                         (Keras' hard_silu is that arithmetic in the TF graph; the converter's
                                         MatchHardSwishPattern needs the outer MUL without a fused activation and
                                         an ADD of x and 3. Its optimize pass visits ops bottom-up, so a clamp
                                         after a single-use hard_swish fuses into the MUL first; and TensorFlow's
                                         canonicalizer has already made neg(y) + 3 a SUB. No HARD_SWISH then.)
- mul(x, mul(relu6(add(x, 3)), 1/6)) (either operand order of the outer mul: x * hard_sigmoid(x)) -> hard_swish(x)
                                         (TFLite's MatchHardSwishPattern2/4/6: a Multiply of an
                                         Activation("hard_sigmoid") and its own input is one HARD_SWISH with
                                         the outer MUL's range; the add must be single-use, as its relu6 must
                                         fuse into it; the gate ops stay for other users; random seed 3104)
- relu/relu6/relu_n1_to_1(gelu{approximate}(x)) -> clamp(0.5 * x * (1 + tanh(0.79788456 * (x + 0.044715 * x**3))))
                                         (the same for GELU: the clamp fuses into the last MUL; x**3 is a POW)
- gelu{approximate}(neg(y))       -> the same arithmetic (neg(y) + t is a SUB, so no GELU match)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import numpy as np

from qcompiler.ir.graph import ElidedOp, Node, Value
from qcompiler.passes.rewriter import (Const, Match, Pat, Rewriter, RewritePass, Rule, batched_fc_reason,
                                       constant_scalar, has_data, single_use_reason)


def _drop_identity_check(m: Match) -> Optional[str]:
    return _output_alias_reason(m.root, m["x"])


def _output_alias_reason(node: Node, source: Value) -> Optional[str]:
    """Two graph outputs stay two tensors. A graph output may become a graph input itself, as in the
    converter's model (an identity Reshape between them leaves no op; tflite-2.21 then keeps that input float,
    lower-to-int's `unread_inputs_float`)."""
    graph = node.graph
    if graph.is_output(node.result) and graph.is_output(source):
        return "it keeps two graph outputs distinct"
    return None


def _forward_operand(m: Match, rw: Rewriter) -> None:
    rw.replace_value(m.root, m["x"])


def _elide(const_root: bool):
    """Forward the operand, and record the removed op for the converter's op order: TensorFlow's graph still has
    it (grappler drops it only later), so the import walk reaches its users through it, and from its Const."""
    def rewrite(m: Match, rw: Rewriter) -> None:
        node = m.root
        users = frozenset(user.layer for user in node.result.users)
        node.graph.elided_ops.append(ElidedOp(node.layer, m["x"].name, users, const_root))
        rw.replace_value(node, m["x"])
    return rewrite


# ----- flatten -----
def _flatten_check(m: Match) -> Optional[str]:
    inner = m["x"].type.shape[1:]
    if any(d is None for d in inner):
        return f"non-batch dimensions of {m['x'].type} are not all known"
    return None


def _flatten_to_reshape(m: Match, rw: Rewriter) -> None:
    x = m["x"]
    size = int(np.prod(x.type.shape[1:]))
    # Keras' Flatten builds its target from the input's batch at run time, as the Reshape layer does
    rw.replace_value(m.root, rw.op("reshape", x, shape=[-1, size], runtime_batch=True, layer=m.root.layer))


# ----- reshapes -----
def _is_noop_reshape(node: Node) -> bool:
    """Same static shape, or the same shape with only the batch unknown and taken from the input at run time.

    TensorFlow folds a Reshape to its input when both shapes are static, or when the target is built from the
    input's own Shape (Keras' Flatten and Reshape layers: Pack(StridedSlice(Shape(x)), ...)). A constant target
    with a -1 (keras.ops.reshape(x, (-1, ...))) on an unknown batch is no fold of either kind: the converter keeps
    that RESHAPE, and TFLite's optimize pass may then move ops above it (move-binary-reshapes, random seed 2161).
    """
    have, want = node.operands[0].type.shape, node.result.type.shape
    if have != want:
        return False
    unknown = [i for i, d in enumerate(have) if d is None]
    return not unknown or (unknown == [0] and node.attrs["shape"][0] == -1 and node.attrs.get("runtime_batch", False))


def _collapse_check(m: Match) -> Optional[str]:
    outer, inner = m.root.attrs["shape"], m["inner"].attrs["shape"]
    # a leading -1 means "the batch of my input"; it must be the batch of x as well
    if outer and outer[0] == -1 and -1 not in outer[1:]:
        x_batch, mid_batch = m["x"].type.shape[0], m["inner"].result.type.shape[0]
        batch_follows = inner and inner[0] == -1 and -1 not in inner[1:]
        if not batch_follows and (x_batch is None or x_batch != mid_batch):
            return f"the outer reshape keeps the batch of the inner one ({inner}), not of the input"
    return None


def _collapse_reshapes(m: Match, rw: Rewriter) -> None:
    rw.set_operand(m.root, 0, m["x"])


def _is_identity_transpose(node: Node) -> bool:
    return list(node.attrs["perm"]) == list(range(len(node.attrs["perm"])))


# ----- reductions over axes of size 1 -----
_REDUCTIONS = ("mean", "sum", "reduce_max", "reduce_min")


def _reduces_nothing(node: Node) -> bool:
    shape = node.operands[0].type.shape
    return all(shape[a % len(shape)] == 1 for a in node.attrs["axes"])


def _trivial_reduce_check(m: Match) -> Optional[str]:
    if not m.root.attrs["keepdims"]:
        # TensorFlow folds a reduction only when its result type is its operand's; without keepdims the converter
        # keeps the MEAN / SUM / REDUCE_MAX (own calibrated range in int8: a MEAN of a 1x1 sigmoid map does not
        # keep 1/256; random seed 3140), float32 too
        return "without keepdims the reduction changes the shape, and the converter keeps it"
    return _output_alias_reason(m.root, m["x"])


def _trivial_reduce(m: Match, rw: Rewriter) -> None:
    rw.replace_value(m.root, m["x"])


# ----- clamps spelled with maximum / minimum -----
def _scalar_is(target: float):
    return lambda v: constant_scalar(v) == target


def _bound_is(target: float):
    """A clamp bound equal to `target` bit for bit: TFLite's clamp patterns compare with APFloat::isExactlyValue,
    so maximum(x, -0.0) stays a MAXIMUM (ops.clip(x, -0.0, hi); random seed 4116)."""
    def matches(v: Value) -> bool:
        s = constant_scalar(v)
        return s is not None and np.float32(s).tobytes() == np.float32(target).tobytes()

    return matches


def _keeps_shape(node: Node) -> bool:
    """The constant operand does not broadcast the result beyond the other operand's shape."""
    return all(v.is_constant or v.type.shape == node.result.type.shape for v in node.operands)


def _to_activation(op: str):
    def rewrite(m: Match, rw: Rewriter) -> None:
        rw.replace_value(m.root, rw.op(op, m["x"], layer=m.root.layer))

    return rewrite


def _clamp(outer: str, inner: str, outer_bound: float, inner_bound: float) -> Pat:
    return Pat(outer, Pat(inner, "x", Const(where=_bound_is(inner_bound)), one_use=True, commutative=True,
                          where=_keeps_shape),
               Const(where=_bound_is(outer_bound)), commutative=True, where=_keeps_shape)


def _identity_arithmetic_check(m: Match) -> Optional[str]:
    node, x = m.root, m["x"]
    if node.attrs.get("activation", "none") != "none":
        return f"{node.op} has fused activation '{node.attrs['activation']}'"
    if node.result.type != x.type:
        return f"the constant broadcasts %{x.name} {x.type} to {node.result.type}"
    return _output_alias_reason(node, x)


def _identity_arithmetic(op: str, neutral: float, commutative: bool) -> Rule:
    return Rule(f"{op}-{'zero' if neutral == 0 else 'one'}",
                Pat(op, "x", Const(where=_scalar_is(neutral)), commutative=commutative),
                _forward_operand, _identity_arithmetic_check)


_AFFINE_LAYERS = ("conv2d", "depthwise_conv2d", "fully_connected")


def _add_of_adds_check(m: Match) -> Optional[str]:
    inner, x, c1, c2 = m["inner"], m["x"], m["c1"], m["c2"]
    if not (has_data(c1) and has_data(c2)) or c1.type.dtype != "f32" or c2.type.dtype != "f32":
        return "the constants are not float32 with known data"
    if inner.attrs["activation"] != "none" or m.root.attrs["activation"] != "none":
        return "an add has a fused activation"
    if (reason := single_use_reason(inner)) is not None:
        return reason
    if m.root.result.type != x.type:
        return f"the constants broadcast %{x.name} {x.type} to {m.root.result.type}"
    if x.producer is not None and x.producer.op in _AFFINE_LAYERS and batched_fc_reason(x.producer) is None:
        return f"fold-affine folds each add into {x.producer.describe()} in turn"
    return None


def _add_of_adds(m: Match, rw: Rewriter) -> None:
    total = (np.asarray(m["c1"].data, np.float32) + np.asarray(m["c2"].data, np.float32)).astype(np.float32)
    c = rw.const(total, name=f"{m.root.result.name}_sum", layer=m.root.layer, dtype="f32")
    rw.replace_value(m.root, rw.op("add", m["x"], c, layer=m.root.layer))


# ----- the same clamp twice (Dense(activation="relu6") then Activation("relu6")): the converter keeps one -----
def _drop_outer_check(m: Match) -> Optional[str]:
    return _output_alias_reason(m.root, m["inner"].result)


def _drop_outer_activation(m: Match, rw: Rewriter) -> None:
    rw.replace_value(m.root, m["inner"].result)


# ----- arithmetic with a negation -----
def _plain_check(m: Match) -> Optional[str]:
    if m.root.attrs.get("activation", "none") != "none":
        return f"{m.root.op} has fused activation '{m.root.attrs['activation']}'"
    return None


def _arith(op: str, left: str, right: str):
    def rewrite(m: Match, rw: Rewriter) -> None:
        rw.replace_value(m.root, rw.op(op, m[left], m[right], layer=m.root.layer))

    return rewrite


_NEG_RULES: list[Rule] = [
    Rule("sub-of-neg", Pat("sub", "x", Pat("neg", "y")), _arith("add", "x", "y"), _plain_check),
    Rule("add-of-neg-left", Pat("add", Pat("neg", "x"), "y"), _arith("sub", "y", "x"), _plain_check),
    Rule("add-of-neg-right", Pat("add", "x", Pat("neg", "y")), _arith("sub", "x", "y"), _plain_check),
]


# ----- hard_swish the converter does not match as HARD_SWISH -----
def _hard_swish_arithmetic(rw: Rewriter, hard_swish: Node) -> Value:
    """Keras' hard_silu as the TF graph spells it: x * (relu6(x + 3) * (1/6))."""
    x, layer, name = hard_swish.operands[0], hard_swish.layer, hard_swish.result.name
    three = rw.const(np.float32(3.0), name=f"{name}_three", layer=layer, dtype="f32")
    shifted = rw.op("relu6", rw.op("add", x, three, name=f"{name}_add", layer=layer), name=f"{name}_relu6",
                    layer=layer)
    sixth = rw.const(np.float32(1.0 / 6.0), name=f"{name}_one_sixth", layer=layer, dtype="f32")
    gate = rw.op("mul", shifted, sixth, name=f"{name}_gate", layer=layer)
    return rw.op("mul", x, gate, name=f"{name}_mul", layer=layer)


_ONE_SIXTH = float(np.float32(1.0 / 6.0))  # the converter's 0.166666666f / 0.166666672


def _no_activation(*names: str):
    def check(m: Match) -> Optional[str]:
        for name in names:
            node = m.root if name == "root" else m[name]
            if node.attrs.get("activation", "none") != "none":
                return f"{node.op} has fused activation '{node.attrs['activation']}'"
        return None

    return check


def _clamp_fuses_first_reason(node: Node) -> Optional[str]:
    """Why the converter fuses the one clamp using `node` into it before matching `node` (None: it does not):
    its optimize pass visits ops bottom-up, the fusion needs one use."""
    if single_use_reason(node) is None and node.result.uses[0].node.op in ("relu", "relu6", "relu_n1_to_1"):
        return f"the {node.result.uses[0].node.op} after {node.op} fuses into it first"
    return None


def _x_times_hard_sigmoid_check(m: Match) -> Optional[str]:
    return _no_activation("root", "gate", "add")(m) or _clamp_fuses_first_reason(m.root)


def _hard_swish_of(m: Match, rw: Rewriter) -> None:
    rw.replace_value(m.root, rw.op("hard_swish", m["x"], layer=m.root.layer))


_HARD_SIGMOID_GATE = Pat("mul", Pat("relu6", Pat("add", "x", Const(where=_scalar_is(3.0)), one_use=True,
                                                 commutative=True, capture="add")),
                         Const(where=_scalar_is(_ONE_SIXTH)), commutative=True, capture="gate")


def _unfuse_hard_swish_under_clamp(m: Match, rw: Rewriter) -> None:
    rw.set_operand(m.root, 0, _hard_swish_arithmetic(rw, m["hs"]))


def _unfuse_hard_swish(m: Match, rw: Rewriter) -> None:
    rw.replace_value(m.root, _hard_swish_arithmetic(rw, m.root))


def _gelu_tanh_arithmetic(rw: Rewriter, gelu: Node) -> Value:
    """tf.nn.gelu(x, approximate=True) as the TF graph spells it:
    0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x**3)))."""
    x, layer, name = gelu.operands[0], gelu.layer, gelu.result.name

    def const(value: float, suffix: str) -> Value:
        return rw.const(np.float32(value), name=f"{name}_{suffix}", layer=layer, dtype="f32")

    cube = rw.op("pow", x, const(3.0, "three"), name=f"{name}_pow", layer=layer)
    inner = rw.op("add", x, rw.op("mul", cube, const(0.044715, "coeff"), name=f"{name}_mul_1", layer=layer),
                  name=f"{name}_add", layer=layer)
    scaled = rw.op("mul", inner, const(0.7978845608028654, "sqrt_2_over_pi"), name=f"{name}_mul_2", layer=layer)
    gate = rw.op("add", rw.op("tanh", scaled, name=f"{name}_tanh", layer=layer), const(1.0, "one"),
                 name=f"{name}_add_1", layer=layer)
    half = rw.op("mul", x, const(0.5, "half"), name=f"{name}_mul", layer=layer)
    return rw.op("mul", half, gate, name=f"{name}_mul_3", layer=layer)


def _unfuse_gelu_under_clamp(m: Match, rw: Rewriter) -> None:
    rw.set_operand(m.root, 0, _gelu_tanh_arithmetic(rw, m["gelu"]))


def _unfuse_gelu(m: Match, rw: Rewriter) -> None:
    rw.replace_value(m.root, _gelu_tanh_arithmetic(rw, m.root))


def _square_of_sub(m: Match, rw: Rewriter) -> None:
    sub = m["sub"]
    rw.replace_value(m.root, rw.op("squared_difference", sub.operands[0], sub.operands[1], layer=m.root.layer))


def _square_of_sub_check(m: Match) -> Optional[str]:
    if m["sub"].attrs.get("activation", "none") != "none":
        return f"the sub has fused activation '{m['sub'].attrs['activation']}'"
    return None


_HARD_SWISH_RULES: list[Rule] = [
    Rule("x-times-hard-sigmoid", Pat("mul", "x", _HARD_SIGMOID_GATE, commutative=True), _hard_swish_of,
         _x_times_hard_sigmoid_check),
    # the same for an approximate GELU: MatchGeluApproximate needs its last MUL without a fused activation (seed
    # 1128); an exact GELU there leaves tf.Erfc, which the converter cannot convert at all
    Rule("gelu-tanh-under-clamp", Pat(("relu", "relu6", "relu_n1_to_1"),
                                      Pat("gelu", "x", one_use=True, capture="gelu",
                                          where=lambda n: bool(n.attrs.get("approximate")))),
         _unfuse_gelu_under_clamp),
    Rule("hard-swish-under-clamp", Pat(("relu", "relu6", "relu_n1_to_1"),
                                       Pat("hard_swish", "x", one_use=True, capture="hs")),
         _unfuse_hard_swish_under_clamp),
    Rule("hard-swish-of-neg", Pat("hard_swish", Pat("neg", "y")), _unfuse_hard_swish),
    # gelu(neg(y)): TensorFlow's canonicalizer makes neg(y) + 0.044715 * y'**3 a SUB (add-of-neg below), so
    # MatchGeluApproximate finds no ADD of x: POW (float), MUL, SUB, MUL, TANH, ADD, MUL, MUL (random seed 3107)
    Rule("gelu-tanh-of-neg", Pat("gelu", Pat("neg", "y"), where=lambda n: bool(n.attrs.get("approximate"))),
         _unfuse_gelu),
]


RULES: list[Rule] = [
    Rule("flatten-to-reshape", Pat("flatten", "x"), _flatten_to_reshape, _flatten_check),
    Rule("remove-identity", Pat("identity", "x"), _elide(const_root=False), _drop_identity_check),
    Rule("remove-noop-reshape", Pat("reshape", "x", where=_is_noop_reshape), _elide(const_root=True),
         _drop_identity_check),
    Rule("remove-identity-transpose", Pat("transpose", "x", where=_is_identity_transpose),
         _elide(const_root=True), _drop_identity_check),
    Rule("collapse-reshapes", Pat("reshape", Pat("reshape", "x", capture="inner")), _collapse_reshapes,
         _collapse_check),
    *[Rule(f"trivial-{op}", Pat(op, "x", where=_reduces_nothing), _trivial_reduce, _trivial_reduce_check)
      for op in _REDUCTIONS],
    # clamps first: maximum(minimum(x, 6), 0) must not become relu(minimum(x, 6))
    Rule("clamp-to-relu6", _clamp("maximum", "minimum", 0.0, 6.0), _to_activation("relu6")),
    Rule("clamp-to-relu-n1-to-1", _clamp("minimum", "maximum", 1.0, -1.0), _to_activation("relu_n1_to_1")),
    Rule("clamp-to-relu-n1-to-1-swapped", _clamp("maximum", "minimum", -1.0, 1.0),
         _to_activation("relu_n1_to_1")),
    Rule("maximum-zero-to-relu", Pat("maximum", "x", Const(where=_bound_is(0.0)), commutative=True,
                                     where=_keeps_shape), _to_activation("relu")),
    Rule("min-relu-6-to-relu6", Pat("minimum", Pat("relu", "x", one_use=True), Const(where=_bound_is(6.0)),
                                    commutative=True, where=_keeps_shape), _to_activation("relu6")),
    # relu/relu6: TensorFlow's Idempotent fold, whatever else uses the inner one (random seed 4005: Dense(relu6),
    # then Activation("relu6") and a multiply of both is FULLY_CONNECTED, MUL(fc, fc)); clip(-1, 1) is no TF op
    # with that trait: the converter keeps both when the inner has another user (probed)
    *[Rule(f"{op}-of-{op}", Pat(op, Pat(op, "x", capture="inner")), _drop_outer_activation, _drop_outer_check)
      for op in ("relu", "relu6")],
    Rule("relu_n1_to_1-of-relu_n1_to_1", Pat("relu_n1_to_1", Pat("relu_n1_to_1", "x", one_use=True, capture="inner")),
         _drop_outer_activation, _drop_outer_check),
    Rule("abs-of-abs", Pat("abs", Pat("abs", "x", capture="inner")), _drop_outer_activation, _drop_outer_check),
    Rule("neg-of-neg", Pat("neg", Pat("neg", "x")), _forward_operand, _drop_identity_check),
    _identity_arithmetic("add", 0.0, commutative=True),
    _identity_arithmetic("sub", 0.0, commutative=False),
    _identity_arithmetic("mul", 1.0, commutative=True),
    Rule("add-of-adds", Pat("add", Pat("add", "x", Const(capture="c1"), commutative=True, capture="inner"),
                            Const(capture="c2"), commutative=True), _add_of_adds, _add_of_adds_check),
    *_HARD_SWISH_RULES,
    *_NEG_RULES,
    Rule("square-of-sub", Pat("square", Pat("sub", "x", "y", capture="sub")), _square_of_sub, _square_of_sub_check),
]


@dataclass(frozen=True)
class Canonicalize(RewritePass):
    name: ClassVar[str] = "canonicalize"
    summary: ClassVar[str] = ("flatten->reshape, drop identities, no-op reshapes and transposes, reductions over "
                              "size-1 axes and x+0/x-0/x*1, negations into add/sub, "
                              "square(sub) into squared_difference, "
                              "min/max clamps->relu ops")

    def rules(self) -> Sequence[Rule]:
        return RULES
