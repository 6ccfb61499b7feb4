"""fold-affine: fold a `mul` / `add` by a constant into the conv2d / depthwise_conv2d / fully_connected next to it.

After the layer (its output channel c on the last axis; the constant a scalar or one value per output channel):

    conv(x, w) + b -> mul by s   =   conv(x, w * s) + b * s
    conv(x, w) + b -> add t      =   conv(x, w) + (b + t)
    conv(x, w) + b -> sub t      =   conv(x, w) + (b - t)           (t the second operand: x - t, not t - x)

Before the layer, as Keras' Rescaling feeding a model (the constant a scalar; before a fully_connected also one
value per input channel, as the converter does: it leaves a per-channel mul/add before a conv alone):

    conv(x * s, w) + b           =   conv(x, w * s) + b                   (w scaled along its input-channel axis)
    conv(x + t, w) + b           =   conv(x, w) + (b + sum over the kernel of w * t)
    conv(x - t, w) + b           =   conv(x, w) + (b + sum over the kernel of w * -t)

The second only holds without zero padding, so only for padding="valid" (and fully_connected); a SAME
convolution would add t at the padded border too. The first holds with any padding (a zero border scales to
zero), and the converter folds it there too (EfficientNet's input Rescaling into its SAME stem conv). A mul/add
with several users folds into each layer among them (the converter's pattern rewrites the layer's input, not
the mul/add); it stays for its other users and goes away when none is left.

This is what TFLiteConverter does before quantizing, in its order and in float32 step by step, so the folded
weights and biases equal the converter's to the bit: the folds after a layer come first (the rule before a layer
waits while one after it can still apply), `add` before `mul`, and the sum of a fold before the layer accumulates
into the bias one product at a time in the weights' memory order (conv2d [out,kh,kw,in]: for each output
channel, kh, kw, in; depthwise [1,kh,kw,in*mult]: kh, kw for each column; fully_connected [out,in]: in).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import numpy as np

from qcompiler.ir.graph import Node, Value
from qcompiler.ir.ops import OPS
from qcompiler.passes.rewriter import (Const, Match, Pat, Rewriter, RewritePass, Rule, Var, batched_fc_reason, has_data,
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
    layer, c = m["layer"], m.memo["c"]
    bias = _bias(layer)
    if m.root.op == "mul":
        shape = [1] * layer.operands[1].type.rank
        shape[_out_axis(layer)] = -1
        weights = (np.asarray(layer.operands[1].data, _F32) * c.reshape(shape)).astype(_F32, copy=False)
        _set_weights(layer, rw, weights, (bias * c).astype(_F32) if len(layer.operands) > 2 else None)
    else:
        _set_weights(layer, rw, None, (bias + c).astype(_F32))
    rw.replace_value(m.root, layer.result)


# ----------------------------------------------------------------------------------------------------
# before the layer
# ----------------------------------------------------------------------------------------------------
def _before_pattern(ops: tuple[str, ...]) -> Pat:
    return Pat(LAYERS, Pat(ops, Var("x"), Const(capture="c"), capture="binary", commutative="sub" not in ops),
               capture="layer")


def _before_check(m: Match) -> Optional[str]:
    layer, binary, x = m["layer"], m["binary"], m["x"]
    for user in layer.result.users:  # the converter folds what follows the layer first
        if user.op in AFFINE and _after_constant(user, layer)[1] is None:
            return f"{user.describe()} after {layer.describe()} folds first"
    if binary.op == "add" and layer.attrs.get("padding", "valid") != "valid":
        return f"{layer.describe()} has padding '{layer.attrs['padding']}'; its zero border would change"
    if layer.op != "fully_connected" and has_data(m["c"]) and m["c"].data.size != 1:
        return (f"%{m['c'].name} {m['c'].type} is per channel: the converter folds only a scalar mul/add into a "
                f"following {layer.op} (a batch norm before a conv stays MUL + ADD)")
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


def _input_axis_vector(layer: Node, c: np.ndarray) -> np.ndarray:
    """`c` (one value per input channel) laid out along the weights' last axis."""
    if _is_depthwise(layer):
        return np.repeat(c, layer.attrs["depth_multiplier"])
    return c


def _fold_before(m: Match, rw: Rewriter) -> None:
    layer, c = m["layer"], m.memo["c"]
    weights = np.asarray(layer.operands[1].data, _F32)
    column = _input_axis_vector(layer, c)
    if m["binary"].op == "mul":
        _set_weights(layer, rw, (weights * column).astype(_F32, copy=False), None)
    else:
        products = (weights * column).astype(_F32, copy=False)
        if _is_depthwise(layer):
            terms = products.reshape(-1, products.shape[-1])  # one row per kernel position, in memory order
        else:
            terms = products.reshape(products.shape[0], -1).T  # one row per (kh, kw, in), in memory order
        bias = _bias(layer)
        for row in terms:
            bias = (bias + row).astype(_F32)
        _set_weights(layer, rw, None, bias)
    rw.set_operand(layer, 0, m["x"])  # leaves the mul/add unused; the rewriter erases it


RULES: list[Rule] = [
    Rule("fold-mul-after", _after_pattern("mul"), _fold_after, _after_check),
    Rule("fold-add-after", _after_pattern("add"), _fold_after, _after_check),
    Rule("fold-sub-after", _after_pattern("sub"), _fold_after, _after_check),
    Rule("fold-before", _before_pattern(("mul", "add")), _fold_before, _before_check),
    Rule("fold-sub-before", _before_pattern(("sub",)), _fold_before, _before_check),
]


@dataclass(frozen=True)
class FoldAffine(RewritePass):
    name: ClassVar[str] = "fold-affine"
    summary: ClassVar[str] = "fold mul/add by constants before or after conv/depthwise/fully_connected into it"

    def rules(self) -> Sequence[Rule]:
        return RULES
