"""Which tensors of which op get which quantization: the recipe as a table, not code.

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
from typing import Optional

OWN, SAME, FIXED = "own", "same", "fixed"

# Fixed output ranges as (min, max) that activation_qparams turns into the kernel's required parameters:
# int8: softmax/logistic scale 1/256 zero point -128; tanh 1/128, 0.  int16: 1/32768, 0 for all three.
_FIXED_I8_UNIT = (0.0, 255.0 / 256.0)
_FIXED_I8_TANH = (-1.0, 127.0 / 128.0)
_FIXED_I16_UNIT = (0.0, 32767.0 / 32768.0)
_FIXED_I16_TANH = (-1.0, 32767.0 / 32768.0)


@dataclass(frozen=True)
class OpQuantSpec:
    output: str = OWN
    weight_operand: Optional[int] = None
    weight_axis: int = 0
    bias_operand: Optional[int] = None
    fixed_i8: Optional[tuple[float, float]] = None
    fixed_i16: Optional[tuple[float, float]] = None
    param_operands: int = 0

    def fixed_range(self, dtype: str) -> Optional[tuple[float, float]]:
        return self.fixed_i16 if dtype == "i16" else self.fixed_i8


_CONV = OpQuantSpec(OWN, weight_operand=1, weight_axis=0, bias_operand=2)
_SAME = OpQuantSpec(SAME)
_SAME_WITH_PARAM = OpQuantSpec(SAME, param_operands=1)

QUANT_SPEC: dict[str, OpQuantSpec] = {
    "conv2d": _CONV,
    "depthwise_conv2d": OpQuantSpec(OWN, weight_operand=1, weight_axis=3, bias_operand=2),
    "fully_connected": _CONV,
    "add": OpQuantSpec(OWN),
    "sub": OpQuantSpec(OWN),
    "mul": OpQuantSpec(OWN),
    "mean": OpQuantSpec(OWN),
    "relu": OpQuantSpec(OWN),
    "relu6": OpQuantSpec(OWN),
    "relu_n1_to_1": OpQuantSpec(OWN),
    "leaky_relu": OpQuantSpec(OWN),
    "hard_swish": OpQuantSpec(OWN),
    "gelu": OpQuantSpec(OWN),
    "elu": OpQuantSpec(OWN),
    "softmax": OpQuantSpec(FIXED, fixed_i8=_FIXED_I8_UNIT, fixed_i16=_FIXED_I16_UNIT),
    "sigmoid": OpQuantSpec(FIXED, fixed_i8=_FIXED_I8_UNIT, fixed_i16=_FIXED_I16_UNIT),
    "tanh": OpQuantSpec(FIXED, fixed_i8=_FIXED_I8_TANH, fixed_i16=_FIXED_I16_TANH),
    "max_pool2d": _SAME,
    "avg_pool2d": _SAME,
    "reduce_max": _SAME_WITH_PARAM,  # axes
    "reshape": _SAME_WITH_PARAM,  # shape
    "flatten": _SAME_WITH_PARAM,  # written as RESHAPE
    "pad": _SAME_WITH_PARAM,  # paddings
    "slice": OpQuantSpec(SAME, param_operands=2),  # begin, size
    "space_to_batch": OpQuantSpec(SAME, param_operands=2),  # block, paddings
    "batch_to_space": OpQuantSpec(SAME, param_operands=2),  # block, crops
    "resize_nearest": _SAME_WITH_PARAM,  # size
    "concat": _SAME,
    "maximum": _SAME,
    "minimum": _SAME,
}


def quant_spec(op: str) -> Optional[OpQuantSpec]:
    """The op's quantization recipe, or None when TFLite has no integer kernel for it."""
    return QUANT_SPEC.get(op)
