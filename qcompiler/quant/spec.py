"""Which tensors of which op get which quantization: the recipe is data in the op table (`OpDef.quant` and
`OpDef.weights` in qcompiler/ir/ops.py); this module is the view the quantization passes read.

For every op that can run on integers: how its output is quantized —
  OWN    its own calibrated range (a fake_quant after it),
  SAME   shared with its operands: the TFLite kernel moves values without rescaling. With one activation operand
         (pooling, reshape, pad, ...) the output takes the operand's parameters. With several float operands
         (concat, maximum, minimum) the output keeps its own calibrated range and, as TFLiteConverter does for
         int8, that range is pushed back to the operands (through chains of SAME ops, graph inputs included);
         16x8 mode (the converter's older quantizer) requantizes the operands instead,
  FIXED  a range fixed by the kernel (softmax, logistic, tanh) —
and which operands are weights (symmetric, per channel along `weight_axis`) and which is the bias (int32/int64,
scale = input scale × weight scale). `param_operands` counts the non-tensor operands (shape, paddings, size, ...)
the TFLite op takes, which the converter's same-scale heuristic counts (docs/quantization-notes.md §5.2).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

from qcompiler.ir.ops import FIXED, NOT_ACTIVATION, OPS, OWN, SAME

__all__ = ["FIXED", "FLOAT_ISLAND", "OWN", "SAME", "OpQuantSpec", "op_spec", "quant_spec", "stays_float"]


@dataclass(frozen=True)
class OpQuantSpec:
    """The quantization view of one op, read from its OpDef (`quant` and `weights`)."""

    output: str = OWN
    weight_operand: Optional[int] = None
    weight_axis: int = 0
    bias_operand: Optional[int] = None
    fixed_i8: Optional[tuple[float, float]] = None
    fixed_i16: Optional[tuple[float, float]] = None
    param_operands: int = 0

    def fixed_range(self, dtype: str) -> Optional[tuple[float, float]]:
        return self.fixed_i16 if dtype == "i16" else self.fixed_i8


@lru_cache(maxsize=None)
def quant_spec(op: str, act_dtype: str = "i8") -> Optional[OpQuantSpec]:
    """The op's quantization recipe for `act_dtype` activations, or None when TFLite has no integer kernel for
    it (or it is not an op that computes activations: constants, fake_quant, quantize, dequantize)."""
    definition = OPS.get(op)
    if definition is None or not definition.quant.quantizable_in(act_dtype):
        return None
    rule, weights = definition.quant, definition.weights
    return OpQuantSpec(rule.output,
                       weight_operand=weights.operand if weights else None,
                       weight_axis=weights.out_axis if weights else 0,
                       bias_operand=weights.bias if weights else None,
                       fixed_i8=rule.fixed_i8, fixed_i16=rule.fixed_i16, param_operands=rule.param_operands)


FLOAT_ISLAND = OpQuantSpec(OWN)  # how quantization sees a float island from outside: its own calibrated range


@lru_cache(maxsize=None)
def stays_float(op: str, act_dtype: str = "i8") -> bool:
    """An op that integer models keep in float (a float island: dequantize before it, quantize after it, as
    TFLiteConverter does for ops without an integer kernel): it computes activations, TFLite writes it in
    float, it has no weights to quantize, and TFLite has no `act_dtype` kernel for it."""
    definition = OPS.get(op)
    if definition is None or definition.tflite is None or definition.weights is not None:
        return False
    if definition.quant.output == NOT_ACTIVATION or definition.converts_dtype:
        return False
    return not definition.quant.quantizable_in(act_dtype)


def op_spec(op: str, act_dtype: str = "i8") -> Optional[OpQuantSpec]:
    """The op's quantization spec as the quantization passes see it: a float island looks, from outside, like an
    op with its own calibrated output range (FLOAT_ISLAND)."""
    return FLOAT_ISLAND if stays_float(op, act_dtype) else quant_spec(op, act_dtype)


def can_keep_float(op: str) -> bool:
    """An op the user may keep in float (`--keep-float LAYER`, a plan's `keep_float`): it computes activations
    and TFLite writes it (in float, with float weights where it has any)."""
    definition = OPS.get(op)
    return (definition is not None and definition.tflite is not None and not definition.converts_dtype
            and definition.quant.output != NOT_ACTIVATION)


def node_spec(node, act_dtype: str = "i8", keep_float: frozenset = frozenset()) -> Optional[OpQuantSpec]:
    """`op_spec` for one node: a node of a Keras layer in `keep_float` is a float island as well."""
    if keep_float and node.layer in keep_float and can_keep_float(node.op):
        return FLOAT_ISLAND
    return op_spec(node.op, act_dtype)


def float_reason(node, act_dtype: str = "i8", keep_float: frozenset = frozenset()) -> Optional[str]:
    """Why a node stays float in an integer model: `keep-float:user` or `no-integer-kernel`; None if it does not."""
    if keep_float and node.layer in keep_float and can_keep_float(node.op):
        return "keep-float:user"
    if stays_float(node.op, act_dtype):
        return "no-integer-kernel"
    return None
