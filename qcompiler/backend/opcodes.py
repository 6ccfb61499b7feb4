"""TFLite builtin operator codes and the version each operator needs.

`op_version` mirrors `GetBuiltinOperatorVersion` in tensorflow/lite/tools/versioning/op_version.cc for the
operators this backend writes: the smallest version whose kernel contract covers the tensor types and options
used. A runtime older than that version refuses the model at load time instead of misbehaving at run time.
Operators not listed there are version 1 (RESHAPE, ELU, HARD_SWISH, RELU_N1_TO_1, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from tflite.BuiltinOperator import BuiltinOperator as B

from qcompiler.ir.types import QParams

# Codes above this only fit the 32-bit `builtin_code`; the old 8-bit field then holds this placeholder.
PLACEHOLDER_FOR_GREATER_OP_CODES = 127


def deprecated_builtin_code(code: int) -> int:
    return min(code, PLACEHOLDER_FOR_GREATER_OP_CODES)


@dataclass(frozen=True)
class TensorSig:
    """What versioning looks at in a tensor: IR dtype name ('none' for an absent optional input), shape, quant."""

    dtype: str
    shape: tuple[int, ...] = ()
    quant: Optional[QParams] = None

    def scale_count(self) -> int:
        return 0 if self.quant is None else len(self.quant.scale)


ABSENT = TensorSig("none")


@dataclass(frozen=True)
class OpSig:
    builtin: int
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]
    options: dict[str, Any] = field(default_factory=dict)

    def i(self, index: int) -> str:
        return self.inputs[index].dtype if index < len(self.inputs) else "none"

    def o(self, index: int = 0) -> str:
        return self.outputs[index].dtype if index < len(self.outputs) else "none"

    def needs_broadcast_over_4d(self) -> bool:
        if len(self.inputs) < 2:
            return False
        max_rank = max(len(t.shape) for t in self.inputs)
        return self.inputs[0].shape != self.inputs[1].shape and max_rank > 4


def _by_input_type(int8: int = 2, int16: Optional[int] = None) -> Callable[[OpSig], int]:
    """The common rule: version 1 for float (and uint8), `int8` for int8 inputs, `int16` for int16 inputs."""

    def rule(s: OpSig) -> int:
        if int16 is not None and s.i(0) == "i16":
            return int16
        if s.i(0) == "i8":
            return int8
        return 1

    return rule


def _conv_2d(s: OpSig) -> int:
    # op_version.cc's int16 rule tests inputs[1] (the weights) for int16 and so never fires for int16x8 models
    # (int8 weights), which then fall to 1. We write the version that introduced int16 activations instead.
    types = (s.i(0), s.i(1), s.o())
    if s.i(0) == "i16" and s.o() == "i16":
        return 4
    if types == ("i8", "i4", "i8"):  # INT4 weights
        return 7
    if types == ("i8", "i8", "i8"):
        return 3
    if types == ("f32", "i8", "f32"):  # hybrid
        w = s.inputs[1]
        return 5 if w.scale_count() == w.shape[0] else 2
    return 1


def _depthwise_conv_2d(s: OpSig) -> int:
    types = (s.i(0), s.i(1), s.o())
    if s.i(0) == "i16" and s.o() == "i16":  # see _conv_2d
        return 5
    if types == ("f32", "i8", "f32"):  # hybrid
        w = s.inputs[1]
        return 6 if w.scale_count() == w.shape[3] else 4
    if types == ("i8", "i8", "i8"):
        return 3
    if s.options.get("dilation", (1, 1)) != (1, 1):
        return 2
    return 1


def _fully_connected(s: OpSig) -> int:
    types = (s.i(0), s.i(1), s.o())
    w = s.inputs[1]
    if types == ("f32", "i8", "f32") and w.scale_count() > 1 and w.scale_count() == w.shape[0]:
        return 12
    if types == ("i16", "i16", "i16"):
        return 7
    if types == ("i8", "i4", "i8"):  # INT4 weights
        return 10
    if len(s.inputs) == 2:  # no bias slot at all
        return 6
    if s.options.get("keep_num_dims"):
        return 5
    if types == ("i8", "i8", "i8"):
        return 4
    if types == ("f32", "i8", "f32"):
        return 9 if s.options.get("asymmetric_quantize_inputs") else 3
    return 1


def _mul(s: OpSig) -> int:
    quantized = s.inputs[0].quant is not None
    if s.i(0) == "i16" and not quantized:
        return 7
    if s.i(0) == "i64":
        return 5
    if s.i(0) == "i16":
        return 4
    a, b, out = s.inputs[0].quant, s.inputs[1].quant, s.outputs[0].quant
    if a is not None and b is not None and out is not None and a.scale[0] * b.scale[0] / out.scale[0] >= 1.0:
        return 3
    if s.i(0) == "i8":
        return 2
    return 1


def _add(s: OpSig) -> int:
    if s.i(0) == "i16" and s.inputs[0].quant is None:
        return 5
    if s.i(0) == "i64":
        return 4
    if s.i(0) == "i16" and s.o() == "i16" and not s.options.get("pot_scale_int16", True):
        return 3
    if s.i(0) == "i8":
        return 2
    return 1


def _sub(s: OpSig) -> int:
    if s.i(0) == "i16" and s.o() == "i16" and not s.options.get("pot_scale_int16", True):
        return 5
    if s.i(0) == "i64":
        return 4
    if s.needs_broadcast_over_4d():
        return 3
    if s.i(0) == "i8":
        return 2
    return 1


def _pool(s: OpSig) -> int:
    if s.i(0) == "i16" and s.o() == "i16":
        return 3
    return 2 if s.i(0) == "i8" else 1


def _max_min(s: OpSig) -> int:
    if s.i(0) == "i16" and s.o() == "i16":
        return 4
    if s.needs_broadcast_over_4d():
        return 3
    return 2 if s.i(0) == "i8" else 1


def _tanh_logistic(s: OpSig) -> int:
    if s.i(0) == "i16" and s.o() == "i16":
        return 3
    return 2 if s.i(0) == "i8" else 1


def _relu(s: OpSig) -> int:
    if s.i(0) == "i16":
        return 3
    return 2 if s.i(0) in ("i8", "u8") else 1


def _pad(s: OpSig) -> int:
    if len(s.inputs[0].shape) > 4:
        return 4
    return _by_input_type(int8=2, int16=3)(s)


def _slice(s: OpSig) -> int:
    if len(s.inputs[0].shape) > 4:
        return 5
    return _by_input_type(int8=2, int16=4)(s)


def _resize_nearest(s: OpSig) -> int:
    if s.i(0) == "i16":
        return 4
    if s.options.get("align_corners") or s.options.get("half_pixel_centers"):
        return 3
    return 2 if s.i(0) == "i8" else 1


def _dequantize(s: OpSig) -> int:
    if s.i(0) in ("i16", "f16"):
        return 3
    if s.i(0) == "i8":
        return 5 if s.inputs[0].scale_count() > 1 else 2
    return 1


def _quantize(s: OpSig) -> int:
    if s.outputs[0].scale_count() > 1:
        return 3
    return 2 if s.o() == "i16" else 1


def _cast(s: OpSig) -> int:
    types = (s.i(0), s.o())
    if any(t in ("f64", "f16") for t in types):
        return 5
    if "i8" in types:
        return 3
    return 1


def _gelu(s: OpSig) -> int:
    return 2 if s.i(0) in ("i8", "u8") else 1


_RULES: dict[int, Callable[[OpSig], int]] = {
    B.CONV_2D: _conv_2d,
    B.DEPTHWISE_CONV_2D: _depthwise_conv_2d,
    B.FULLY_CONNECTED: _fully_connected,
    B.ADD: _add,
    B.SUB: _sub,
    B.MUL: _mul,
    B.MAXIMUM: _max_min,
    B.MINIMUM: _max_min,
    B.GREATER: _by_input_type(int8=2),
    B.RELU: _relu,
    B.RELU6: _by_input_type(int8=2, int16=3),
    B.LEAKY_RELU: lambda s: 2 if s.i(0) == "i16" else 1,
    B.LOGISTIC: _tanh_logistic,
    B.TANH: _tanh_logistic,
    B.SOFTMAX: _by_input_type(int8=2, int16=3),
    B.GELU: _gelu,
    B.MAX_POOL_2D: _pool,
    B.AVERAGE_POOL_2D: _pool,
    B.MEAN: _by_input_type(int8=2, int16=3),
    B.REDUCE_MAX: _by_input_type(int8=2, int16=3),
    B.REDUCE_MIN: _by_input_type(int8=2, int16=3),
    B.CONCATENATION: _by_input_type(int8=2, int16=3),
    B.PAD: _pad,
    B.SLICE: _slice,
    B.SPACE_TO_BATCH_ND: _by_input_type(int8=2, int16=4),
    B.BATCH_TO_SPACE_ND: _by_input_type(int8=2, int16=4),
    B.RESIZE_NEAREST_NEIGHBOR: _resize_nearest,
    B.QUANTIZE: _quantize,
    B.DEQUANTIZE: _dequantize,
    B.CAST: _cast,
    # as TFLiteConverter 2.21 writes them for int8 and 16x8 models
    B.TRANSPOSE: _by_input_type(int8=2, int16=2),
    B.SQUARED_DIFFERENCE: _by_input_type(int8=2, int16=2),
    B.RSQRT: _by_input_type(int8=2, int16=2),
    B.SQRT: _by_input_type(int8=2, int16=2),
    B.ABS: _by_input_type(int8=2, int16=2),
    B.EXP: _by_input_type(int8=2, int16=2),
    B.SUM: _by_input_type(int8=2, int16=2),
}


# Builtins qcompiler writes that stay version 1 for every tensor type it writes them with. Every builtin an OpDef
# names (`tflite`) is in _RULES or here, so a new op cannot silently fall back to version 1 (tests/test_op_facts.py).
VERSION_1_BUILTINS = frozenset({B.RESHAPE, B.ELU, B.HARD_SWISH, B.RELU_N1_TO_1, B.SELECT_V2, B.DIV,
                               B.NEG, B.SQUARE, B.POW,  # DIV, NEG, SQUARE, POW: written in float only
                               B.SHAPE, B.STRIDED_SLICE, B.PACK})  # on int32 shapes only (a Keras Flatten's)


def has_version_rule(builtin: int) -> bool:
    return builtin in _RULES or builtin in VERSION_1_BUILTINS


def op_version(sig: OpSig) -> int:
    """Minimum operator version for this use of a builtin (1 for builtins without version rules)."""
    rule = _RULES.get(sig.builtin)
    return rule(sig) if rule is not None else 1
