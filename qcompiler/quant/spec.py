"""Which tensors of which op get which quantization: the recipe as a table, not code.

For every op that can run on integers: how its output is quantized —
  OWN    its own calibrated range (a fake_quant after it),
  SAME   the parameters of its first input (TFLite kernels that move values without rescaling require it),
  FIXED  a range fixed by the kernel (softmax, logistic, tanh) —
and which operands are weights (symmetric, per channel along `weight_axis`) and which is the bias (int32/int64,
scale = input scale × weight scale).
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

    def fixed_range(self, dtype: str) -> Optional[tuple[float, float]]:
        return self.fixed_i16 if dtype == "i16" else self.fixed_i8


_CONV = OpQuantSpec(OWN, weight_operand=1, weight_axis=0, bias_operand=2)

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
    "concat": OpQuantSpec(OWN),
    "softmax": OpQuantSpec(FIXED, fixed_i8=_FIXED_I8_UNIT, fixed_i16=_FIXED_I16_UNIT),
    "sigmoid": OpQuantSpec(FIXED, fixed_i8=_FIXED_I8_UNIT, fixed_i16=_FIXED_I16_UNIT),
    "tanh": OpQuantSpec(FIXED, fixed_i8=_FIXED_I8_TANH, fixed_i16=_FIXED_I16_TANH),
    "max_pool2d": OpQuantSpec(SAME),
    "avg_pool2d": OpQuantSpec(SAME),
    "reduce_max": OpQuantSpec(SAME),
    "reshape": OpQuantSpec(SAME),
    "flatten": OpQuantSpec(SAME),
    "pad": OpQuantSpec(SAME),
    "slice": OpQuantSpec(SAME),
    "resize_nearest": OpQuantSpec(SAME),
    "maximum": OpQuantSpec(SAME),
    "minimum": OpQuantSpec(SAME),
}


def quant_spec(op: str) -> Optional[OpQuantSpec]:
    """The op's quantization recipe, or None when TFLite has no integer kernel for it."""
    return QUANT_SPEC.get(op)
