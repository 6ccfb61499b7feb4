"""fold-batchnorm: fold inference batch norms into the preceding conv2d / depthwise_conv2d / fully_connected.

    y = (conv(x, w) + b - mean) * gamma / sqrt(var + eps) + beta
      = conv(x, w * s) + (b - mean) * s + beta          with s = gamma / sqrt(var + eps) per output channel

Every layer puts its output channels on the last axis of its result and on the axis of its weights that
`_scale_weights` scales (conv2d [out,kh,kw,in]: axis 0; depthwise [1,kh,kw,in*mult]: axis 3, output channel
c*mult+m is weight column c*mult+m, so the depth multiplier needs nothing special; fully_connected [out,in]: 0).

A batch norm that cannot be folded (first in the model, after an add, its producer has other users or a fused
activation, ...) becomes `mul` + `add` with per-channel constants, which every backend can run. Batch norms
whose parameters are not constants are left alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import numpy as np

from qcompiler.passes.rewriter import Const, Match, Pat, Rewriter, RewritePass, Rule, Var, has_data

FOLDABLE_PRODUCERS = ("conv2d", "depthwise_conv2d", "fully_connected")
_OUTPUT_AXIS = {"conv2d": 0, "depthwise_conv2d": 3, "fully_connected": 0}
_BN_PARAMS = ("gamma", "beta", "mean", "var")


def _bn_pattern(source) -> Pat:
    return Pat("batch_norm", source, *(Const(capture=p) for p in _BN_PARAMS))


def scale_and_shift(m: Match) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel s and t with batch_norm(x) == x * s + t, computed in float64."""
    gamma, beta, mean, var = (np.asarray(m[p].data, np.float64) for p in _BN_PARAMS)
    scale = gamma / np.sqrt(var + float(np.float32(m.root.attrs["epsilon"])))
    return scale, beta - mean * scale


# ----- folding into the producer -----
def _fold_check(m: Match) -> Optional[str]:
    producer = m["producer"]
    result = producer.result
    if not result.type.is_float:
        return f"{producer.op} result is {result.type.dtype}, not float"
    if len(result.uses) != 1:
        return f"{producer.op} result %{result.name} has {len(result.uses)} uses"
    if producer.graph.is_output(result):
        return f"{producer.op} result %{result.name} is also a graph output"
    if producer.attrs["activation"] != "none":
        return f"{producer.op} has fused activation '{producer.attrs['activation']}'"
    if not has_data(producer.operands[1]):
        return f"{producer.op} weights are not a constant with known data"
    if not producer.operands[1].type.is_float or producer.operands[1].type.quant is not None:
        return f"{producer.op} weights are {producer.operands[1].type}, not float"
    if len(producer.operands) > 2 and not has_data(producer.operands[2]):
        return f"{producer.op} bias is not a constant with known data"
    return _params_check(m)


def _params_check(m: Match) -> Optional[str]:
    missing = [p for p in _BN_PARAMS if not has_data(m[p])]
    if missing:
        return f"batch_norm {'/'.join(missing)} data is elided (read from a digest-only dump)"
    return None


def _scale_weights(op: str, weights: np.ndarray, scale: np.ndarray) -> np.ndarray:
    shape = [1] * weights.ndim
    shape[_OUTPUT_AXIS[op]] = -1
    return weights.astype(np.float64) * scale.reshape(shape)


def _fold(m: Match, rw: Rewriter) -> None:
    producer = m["producer"]
    scale, shift = scale_and_shift(m)
    weights = producer.operands[1]
    old_bias = producer.operands[2].data if len(producer.operands) > 2 else np.zeros_like(scale)
    dtype = weights.type.dtype
    new_weights = rw.const(_scale_weights(producer.op, weights.data, scale), name=weights.name,
                           layer=weights.layer, before=producer, dtype=dtype)
    bias = rw.const(old_bias.astype(np.float64) * scale + shift, name=f"{producer.result.name}_bias",
                    layer=producer.layer, before=producer, dtype=producer.result.type.dtype)
    rw.set_operand(producer, 1, new_weights)
    if len(producer.operands) > 2:
        rw.set_operand(producer, 2, bias)
    else:
        rw.add_operand(producer, bias)
    rw.replace_value(m.root, producer.result)


# ----- everything else: mul + add -----
def _lower_check(m: Match) -> Optional[str]:
    if not m.root.result.type.is_float:
        return f"batch_norm result is {m.root.result.type.dtype}, not float"
    return _params_check(m)


def _lower_to_mul_add(m: Match, rw: Rewriter) -> None:
    bn = m.root
    dtype = bn.result.type.dtype
    scale, shift = scale_and_shift(m)
    base = bn.result.name
    s = rw.const(scale, name=f"{base}_scale", layer=bn.layer, dtype=dtype)
    t = rw.const(shift, name=f"{base}_shift", layer=bn.layer, dtype=dtype)
    scaled = rw.op("mul", m["x"], s, name=f"{base}_mul", layer=bn.layer)
    rw.replace_value(bn, rw.op("add", scaled, t, layer=bn.layer))


RULES: list[Rule] = [
    Rule("fold-into-producer", _bn_pattern(Pat(FOLDABLE_PRODUCERS, capture="producer")),
         _fold, _fold_check),
    Rule("lower-to-mul-add", _bn_pattern(Var("x")), _lower_to_mul_add, _lower_check),
]


@dataclass(frozen=True)
class FoldBatchNorm(RewritePass):
    name: ClassVar[str] = "fold-batchnorm"
    summary: ClassVar[str] = "fold batch_norm into conv/depthwise/fully_connected weights, else mul+add"

    def rules(self) -> Sequence[Rule]:
        return RULES
