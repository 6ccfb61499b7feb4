"""fold-affine: fold a `mul` / `add` by a constant into the conv2d / depthwise_conv2d / fully_connected next to it.

After the layer (its output channel c on the last axis; the constant a scalar or one value per output channel):

    conv(x, w) + b -> mul by s   =   conv(x, w * s) + b * s
    conv(x, w) + b -> add t      =   conv(x, w) + (b + t)
    conv(x, w) + b -> sub t      =   conv(x, w) + (b - t)           (t the second operand: x - t, not t - x)

Before the layer (the mul/add may have other users: it stays for them):

    conv(x * s, w) + b           =   conv(x, w * s) + b                   (w scaled along its input-channel axis)
    conv(x + t, w) + b           =   conv(x, w) + (b + sum over the kernel of w * t)
    conv(x - t, w) + b           =   conv(x, w) + (b + sum over the kernel of w * -t)

The second only holds without zero padding, so only for padding="valid" (and fully_connected); a SAME
convolution would add t at the padded border too. The first holds with any padding (a zero border scales to
zero), and the converter folds it there too (EfficientNet's input Rescaling into its SAME stem conv). A mul/add
with several users folds into each layer among them (the converter's pattern rewrites the layer's input, not
the mul/add); it stays for its other users and goes away when none is left.

This is what TFLiteConverter's optimize pass does before quantizing, in its order and in float32 step by step, so
the folded weights and biases equal the converter's to the bit. Its rewrites run in two greedy phases, each
visiting the ops bottom-up (MLIR's default: the last op first), which decides which of two layers a mul/add
between them joins:

1. after-folds (a layer with a single use) and, before a fully_connected, a rank-1 constant (one value per input
   channel: FuseMulAndFullyConnected, and FuseAddAndFullyConnected, which takes an add, never a sub, needs the
   layer to have a bias and
   sums the bias with TFLite's constant folding of FULLY_CONNECTED, a Neumaier-compensated dot product);
2. after-folds and, before any of the three layers, a scalar (FuseBinaryOpToFollowingAffineOp: the sum of an add
   accumulates into the bias one product at a time in the weights' memory order: conv2d [out,kh,kw,in]: for each
   output channel, kh, kw, in; depthwise [1,kh,kw,in*mult]: kh, kw for each column; fully_connected [out,in]: in).
   A per-channel mul/add before a conv is never folded (a batch norm before a conv stays MUL + ADD).

Keras computes a 2-D Dense as matmul + bias add, and the converter keeps them apart until these rewrites run: a
Dense's bias can end up in the *next* fully_connected (Dense -> Dense, or a batch norm between them: the first
FULLY_CONNECTED then has no bias). So a 2-D fully_connected whose result reaches another one through mul/add by
constants first gives its bias up as an `add` (fold-batchnorm leaves batch norms after a fully_connected to this
pass for the same reason); phase 1 folds it back where nothing else took it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import ClassVar, Optional, Sequence

import numpy as np

from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.ops import OPS
from qcompiler.passes.base import PassResult
from qcompiler.passes.canonicalize import RULES as CANONICAL_RULES
from qcompiler.passes.fuse_activations import CLAMP_ACTIVATIONS
from qcompiler.passes.rewriter import (Const, Match, Pat, Rewriter, RewritePass, RewriteStats, Rule, Var, apply_rules,
                                       batched_fc_reason, has_data, result_from_stats,
                                       single_use_reason)

# conv2d, depthwise_conv2d, fully_connected: OpDef.weights.affine_foldable
LAYERS = tuple(name for name, d in OPS.items() if d.weights and d.weights.affine_foldable)
AFFINE = ("mul", "add", "sub")  # sub: by a constant second operand only (x - c), as the converter's patterns


def _out_axis(layer: Node) -> int:
    return OPS[layer.op].weights.out_axis


def _is_depthwise(layer: Node) -> bool:
    """Depthwise weights [1,kh,kw,in*mult]: input channel c feeds columns c*mult .. c*mult+mult-1."""
    return "depth_multiplier" in layer.attrs
_F32 = np.float32


# ----------------------------------------------------------------------------------------------------
# shared checks
# ----------------------------------------------------------------------------------------------------
def _layer_reason(layer: Node) -> Optional[str]:
    """Why the weights and bias of `layer` cannot be rewritten, or None."""
    weights = layer.operands[1]
    if (reason := batched_fc_reason(layer)) is not None:
        return reason
    if not has_data(weights):
        return f"{layer.op} weights are not a constant with known data"
    if weights.type.dtype != "f32" or weights.type.quant is not None:
        return f"{layer.op} weights are {weights.type}, not f32"
    if len(layer.operands) > 2 and not has_data(layer.operands[2]):
        return f"{layer.op} bias is not a constant with known data"
    if layer.result.type.dtype != "f32":
        return f"{layer.op} result is {layer.result.type.dtype}, not f32"
    return None


def _per_channel(binary: Node, constant: Value, other: Value, channels: int) -> Optional[np.ndarray]:
    """The constant as a float32 vector of `channels` values, or None when it is not a scalar or one value per
    channel of the last axis (or it broadcasts `other` to a larger shape)."""
    if binary.result.type.shape != other.type.shape or not has_data(constant):
        return None
    if constant.type.dtype != "f32" or constant.type.quant is not None:
        return None
    data = np.asarray(constant.data, _F32)
    if data.ndim > other.type.rank:
        return None
    if data.size == 1:
        return np.full(channels, data.reshape(()), _F32)
    if data.shape[-1] != channels or data.size != channels:
        return None
    return data.reshape(channels)


def _binary_reason(binary: Node) -> Optional[str]:
    if binary.attrs.get("activation", "none") != "none":
        return f"{binary.describe()} has fused activation '{binary.attrs['activation']}'"
    return None


def _bias(layer: Node) -> np.ndarray:
    if len(layer.operands) > 2:
        return np.array(layer.operands[2].data, _F32)
    channels = layer.operands[1].type.shape[_out_axis(layer)]
    return np.zeros(channels, _F32)


def _set_weights(layer: Node, rw: Rewriter, weights: Optional[np.ndarray], bias: Optional[np.ndarray]) -> None:
    if weights is not None:
        old = layer.operands[1]
        rw.set_operand(layer, 1, rw.const(weights, name=old.name, layer=old.layer, before=layer, dtype="f32"))
    if bias is not None:
        if len(layer.operands) > 2:
            old = layer.operands[2]
            rw.set_operand(layer, 2, rw.const(bias, name=old.name, layer=old.layer, before=layer, dtype="f32"))
        else:
            rw.add_operand(layer, rw.const(bias, name=f"{layer.result.name}_bias", layer=layer.layer,
                                           before=layer, dtype="f32"))


# ----------------------------------------------------------------------------------------------------
# after the layer
# ----------------------------------------------------------------------------------------------------
def _after_pattern(op: str) -> Pat:
    return Pat(op, Pat(LAYERS, capture="layer"), Const(capture="c"), commutative=op != "sub")


def _after_constant(binary: Node, layer: Node) -> tuple[Optional[np.ndarray], Optional[str]]:
    """(the per-output-channel constant, None) or (None, why the binary op cannot fold into `layer`)."""
    result = layer.result
    if (reason := single_use_reason(layer)) is not None:
        return None, reason
    if layer.attrs["activation"] != "none":
        return None, f"{layer.op} has fused activation '{layer.attrs['activation']}'"
    reason = _layer_reason(layer) or _binary_reason(binary)
    if reason is not None:
        return None, reason
    if binary.op == "sub" and binary.operands[0] is not result:
        return None, f"{binary.describe()} subtracts {layer.describe()} from a constant"
    constant = next(v for v in binary.operands if v is not result)
    channels = layer.operands[1].type.shape[_out_axis(layer)]
    values = _per_channel(binary, constant, result, channels)
    if values is None:
        return None, f"%{constant.name} {constant.type} is not a scalar or one value per output channel ({channels})"
    return _signed(binary, values), None


def _signed(binary: Node, values: np.ndarray) -> np.ndarray:
    """A sub by c folds as an add of -c (negation is exact in float32: b + -c == b - c bit for bit)."""
    return -values if binary.op == "sub" else values


def _after_check(m: Match) -> Optional[str]:
    values, reason = _after_constant(m.root, m["layer"])
    m.memo["c"] = values
    return reason


def _fold_after(m: Match, rw: Rewriter) -> None:
    layer, c, binary = m["layer"], m.memo["c"], m.root
    bias = _bias(layer)
    if binary.op == "mul":
        shape = [1] * layer.operands[1].type.rank
        shape[_out_axis(layer)] = -1
        weights = (np.asarray(layer.operands[1].data, _F32) * c.reshape(shape)).astype(_F32, copy=False)
        _set_weights(layer, rw, weights, (bias * c).astype(_F32) if len(layer.operands) > 2 else None)
    elif len(layer.operands) < 3 and (constant := _vector_of(binary, layer)) is not None:
        rw.graph.move_before(constant.producer, layer)  # a constant: anywhere before its new user will do
        rw.add_operand(layer, constant)  # no bias: the converter takes the add's vector as it is
    else:
        _set_weights(layer, rw, None, (bias + c).astype(_F32))
    rw.replace_value(binary, layer.result)


def _vector_of(binary: Node, layer: Node) -> Optional[Value]:
    """The constant operand of `binary` when it is already a float32 bias vector for `layer`."""
    constant = next(v for v in binary.operands if v is not layer.result)
    channels = layer.operands[1].type.shape[_out_axis(layer)]
    if (constant.type.shape == (channels,) and constant.type.dtype == "f32" and constant.type.quant is None
            and constant.producer is not None):
        return constant
    return None


# ----------------------------------------------------------------------------------------------------
# before the layer
# ----------------------------------------------------------------------------------------------------
def _before_pattern(layers: tuple[str, ...]) -> Pat:
    return Pat(layers, Pat(AFFINE, Var("x"), Const(capture="c"), capture="binary", commutative=True),
               capture="layer")


def _before_reason(m: Match) -> Optional[str]:
    """What every fold before a layer needs, or why it cannot fold; on success the constant per input channel is
    in m.memo["c"]."""
    layer, binary, x = m["layer"], m["binary"], m["x"]
    if binary.op == "sub" and binary.operands[0] is not x:
        return f"{binary.describe()} subtracts from a constant (only x - c folds)"
    if binary.op == "add" and layer.attrs.get("padding", "valid") != "valid":
        return f"{layer.describe()} has padding '{layer.attrs['padding']}'; its zero border would change"
    reason = _layer_reason(layer) or _binary_reason(binary)
    if reason is not None:
        return reason
    weights = layer.operands[1]
    channels = weights.type.shape[3] // layer.attrs["depth_multiplier"] if _is_depthwise(layer) \
        else weights.type.shape[-1]
    values = _per_channel(binary, m["c"], x, channels)
    if values is None:
        return f"%{m['c'].name} {m['c'].type} is not a scalar or one value per input channel ({channels})"
    m.memo["c"] = _signed(binary, values)
    return None


def _vector_before_check(m: Match, clamped: frozenset = frozenset()) -> Optional[str]:
    """Phase 1, FuseMulAndFullyConnected / FuseAddAndFullyConnected: a rank-1 constant; an add needs a bias.
    `clamped`: ids of the layers whose clamp directly follows them when the phase starts (`clamped_layers`)."""
    # Keras' scalars (Rescaling) are rank 0 in TensorFlow's graph and may be rank 1 here: one element counts as a
    # scalar (a batch norm on one channel would fold in phase 1 in the converter: not modelled).
    if m["c"].type.rank != 1 or m["c"].type.shape[0] == 1:
        return f"%{m['c'].name} {m['c'].type} is not a vector (a scalar folds in the second phase)"
    if m["binary"].op == "sub":  # observed: x - c (a vector) stays a SUB before the FULLY_CONNECTED (seed 1052)
        return f"{m['binary'].describe()} is a sub: FuseAddAndFullyConnected takes an add only"
    if m["binary"].op == "add" and not _has_nonzero_bias(m["layer"]):
        # an all-zero bias is none: TensorFlow's identity folding removed the Dense's BiasAdd (random seed 1143)
        return f"{m['layer'].describe()} has no (or an all-zero) bias for the add before it (the converter folds none)"
    x_producer = m["x"].producer
    if (x_producer is not None and x_producer.op == "fully_connected" and m["binary"].op == "add"
            and id(m["layer"]) in clamped):
        # observed (Dense -> Dense(relu), Dense -> BN -> Dense(relu), Dense -> Dense -> ReLU): the batch norm's
        # mul/add move into the relu layer, the first Dense's bias does not; without the relu (or with tanh) it
        # moves too, and so it does when a constant op separates the clamp from the layer in TensorFlow's graph
        # (hard_sigmoid's +3, a batch norm or x * c before the ReLU), although it folds into the layer later
        return (f"{m['layer'].describe()} has a fused {_fused_activation(m['layer'])} (or a clamp right after "
                "it): the converter leaves the bias of the fully_connected before it in place")
    return _before_reason(m)


def _has_nonzero_bias(layer: Node) -> bool:
    if len(layer.operands) < 3:
        return False
    bias = layer.operands[2]
    return not (has_data(bias) and not np.any(np.asarray(bias.data)))


def clamped_layers(graph: Graph) -> frozenset:
    """The fully_connected layers whose clamp activation is fused or directly follows them, before phase 1
    folds anything: the ones the converter has fused a relu into when it considers the bias before them."""
    return frozenset(id(n) for n in graph.nodes if n.op == "fully_connected" and _fused_activation(n) is not None)


def _fused_activation(layer: Node) -> Optional[str]:
    """The clamp activation `layer` has or will have fused (fuse-activations runs later), or None."""
    if layer.attrs.get("activation", "none") != "none":
        return layer.attrs["activation"]
    users = layer.result.users
    if len(users) == 1 and users[0].op in CLAMP_ACTIVATIONS and not layer.graph.is_output(layer.result):
        return users[0].op
    return None


def _scalar_before_check(m: Match) -> Optional[str]:
    """Phase 2, FuseBinaryOpToFollowingAffineOp: a constant of one element."""
    if not has_data(m["c"]) or m["c"].data.size != 1:
        return (f"%{m['c'].name} {m['c'].type} is not a scalar: the converter folds only a scalar mul/add into a "
                f"following {m['layer'].op} here (a batch norm before a conv stays MUL + ADD)")
    return _before_reason(m)


def _input_axis_vector(layer: Node, c: np.ndarray) -> np.ndarray:
    """`c` (one value per input channel) laid out along the weights' last axis."""
    if _is_depthwise(layer):
        return np.repeat(c, layer.attrs["depth_multiplier"])
    return c


def _memory_order_sum(layer: Node, products: np.ndarray) -> np.ndarray:
    """bias + the products, added one at a time in the weights' memory order (FuseBinaryOpToFollowingAffineOp)."""
    if _is_depthwise(layer):
        terms = products.reshape(-1, products.shape[-1])  # one row per kernel position, in memory order
    else:
        terms = products.reshape(products.shape[0], -1).T  # one row per (kh, kw, in), in memory order
    bias = _bias(layer)
    for row in terms:
        bias = (bias + row).astype(_F32)
    return bias


def _neumaier_sum(layer: Node, products: np.ndarray) -> np.ndarray:
    """bias + the products of each output row, as TFLite's FULLY_CONNECTED constant folding sums them (the
    converter computes FuseAddAndFullyConnected's bias that way): float32 with Neumaier compensation."""
    total = _bias(layer)
    compensation = np.zeros_like(total)
    for addend in products.T:  # products [out, in]: one input channel at a time
        new_total = (total + addend).astype(_F32)
        bigger = np.abs(total) >= np.abs(addend)
        compensation = (compensation + np.where(bigger, (total - new_total).astype(_F32) + addend,
                                                (addend - new_total).astype(_F32) + total)).astype(_F32)
        total = new_total
    return (total + compensation).astype(_F32)


def _fold_before(m: Match, rw: Rewriter, summed) -> None:
    layer, c = m["layer"], m.memo["c"]
    weights = np.asarray(layer.operands[1].data, _F32)
    products = (weights * _input_axis_vector(layer, c)).astype(_F32)
    if m["binary"].op == "mul":
        _set_weights(layer, rw, products, None)
    else:
        _set_weights(layer, rw, None, summed(layer, products))
    rw.set_operand(layer, 0, m["x"])  # the mul/add stays only while something else uses it


def _fold_vector_before(m: Match, rw: Rewriter) -> None:
    _fold_before(m, rw, _neumaier_sum)


def _fold_scalar_before(m: Match, rw: Rewriter) -> None:
    _fold_before(m, rw, _memory_order_sum)


# ----------------------------------------------------------------------------------------------------
# a 2-D Dense's bias, as the separate add Keras computes
# ----------------------------------------------------------------------------------------------------
_BIAS_ADD = "/bias_add"  # a Dense's bias as a separate add


def _reaches_fully_connected(value: Value) -> bool:
    """Whether `value` feeds a fully_connected directly or through mul/add by constants."""
    stack, seen = [value], set()
    while stack:
        current = stack.pop()
        for user in current.users:
            if id(user) in seen:
                continue
            seen.add(id(user))
            if user.op == "fully_connected" and user.operands[0] is current:
                return True
            if user.op in AFFINE and any(v.is_constant for v in user.operands):
                stack.append(user.result)
    return False


def split_dense_biases(graph: Graph, stats: RewriteStats) -> None:
    """fully_connected(x, w, b) -> add(fully_connected(x, w), b) where the result reaches another
    fully_connected (only there can the bias end up elsewhere; everywhere else phase 1 puts it back). A graph
    output keeps its bias (and its name)."""
    for layer in [n for n in graph.nodes if n.op == "fully_connected" and len(n.operands) == 3]:
        bias, result = layer.operands[2], layer.result
        if (_layer_reason(layer) is not None or layer.attrs["activation"] != "none" or bias.type.rank != 1
                or graph.is_output(result) or not _reaches_fully_connected(result)):
            continue
        users = list(result.uses)
        layer.set_operands(list(layer.operands[:2]))
        added = graph.op("add", result, bias, name=f"{result.name}{_BIAS_ADD}", layer=layer.layer, after=layer)
        for use in users:
            use.node.set_operand(use.index, added)
        stats.inserted += 1
        stats.operands_changed += 1


RULES_AFTER: list[Rule] = [
    Rule("fold-mul-after", _after_pattern("mul"), _fold_after, _after_check),
    Rule("fold-add-after", _after_pattern("add"), _fold_after, _after_check),
    Rule("fold-sub-after", _after_pattern("sub"), _fold_after, _after_check),
]
# The converter merges add(add(x, c1), c2) in the same greedy phase; canonicalize's rule, applied here again
# because fold-batchnorm makes new adds (a batch norm then hard_sigmoid's +3: one ADD).
_ADD_OF_ADDS = next(rule for rule in CANONICAL_RULES if rule.name == "add-of-adds")
PHASE_1: list[Rule] = [*RULES_AFTER, Rule("fold-vector-before", _before_pattern(("fully_connected",)),
                                          _fold_vector_before, _vector_before_check), _ADD_OF_ADDS]
# Phase 2 has FuseAddAndFullyConnected / FuseMulAndFullyConnected too (TFLite's optimize.cc phase_2_patterns):
# a vector mul/add that reaches a fully_connected only once a scalar before it has folded joins it then (random
# seed 4033: batch norm, Rescaling, Dense: all three fold into the FULLY_CONNECTED). Every clamp has fused in
# phase 1, so no clamp ordering decides anything here.
PHASE_2: list[Rule] = [*RULES_AFTER, Rule("fold-scalar-before", _before_pattern(LAYERS), _fold_scalar_before,
                                          _scalar_before_check),
                       Rule("fold-vector-before-2", _before_pattern(("fully_connected",)), _fold_vector_before,
                            _vector_before_check)]
RULES = PHASE_1 + PHASE_2[len(RULES_AFTER):]


@dataclass(frozen=True)
class FoldAffine(RewritePass):
    name: ClassVar[str] = "fold-affine"
    summary: ClassVar[str] = "fold mul/add by constants before or after conv/depthwise/fully_connected into it"

    def rules(self) -> Sequence[Rule]:
        return RULES

    def run(self, graph) -> PassResult:
        stats = RewriteStats()
        split_dense_biases(graph, stats)
        clamped = clamped_layers(graph)
        phase_1 = [replace(r, check=partial(_vector_before_check, clamped=clamped))
                   if r.check is _vector_before_check else r for r in PHASE_1]
        for phase in (phase_1, PHASE_2):
            apply_rules(graph, phase, bottom_up=True, stats=stats)
        return result_from_stats(stats)
