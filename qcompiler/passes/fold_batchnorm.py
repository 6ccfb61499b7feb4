"""fold-batchnorm: fold inference batch norms into the preceding conv2d / depthwise_conv2d.

    y = (conv(x, w) + b - mean) * gamma / sqrt(var + eps) + beta
      = conv(x, w * inv) + b * inv + (beta - mean * inv)          with inv = rsqrt(var + eps) * gamma

The arithmetic is float32, step by step in this order, because that is what Keras (tf.nn.batch_normalization)
and TFLiteConverter (constant folding, then fusing the mul into the weights and the add into the bias) compute;
the folded weights are then equal to the converter's to the bit, and so are the per-channel weight scales
derived from them. `rsqrt` picks the kernel for 1/sqrt (see `rsqrt`); by default the quantization policy's
(`fold-batchnorm{policy=plain}` computes it portably in float32, the tflite-2.21 default calls TensorFlow).

Every layer puts its output channels on the last axis of its result and on the axis of its weights that
`_scale_weights` scales (conv2d [out,kh,kw,in]: axis 0; depthwise [1,kh,kw,in*mult]: axis 3, output channel
c*mult+m is weight column c*mult+m, so the depth multiplier needs nothing special; fully_connected [out,in]: 0).

A batch norm after a fully_connected is left to fold-affine as `mul` + `add`: the converter may fold it, with the
layer's bias, into the *next* fully_connected instead (fold-affine's docstring). The mul + add carry the same
float32 constants, so where it folds back into its own layer the weights are the same bits.

A batch norm that cannot be folded (first in the model, after an add, its producer has other users or a fused
activation, ...) becomes `mul` + `add` with per-channel constants inv and beta - mean * inv, which every backend
can run. Batch norms whose parameters are not constants are left alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Literal, Optional, Sequence

import numpy as np

from qcompiler.errors import QCompilerError
from qcompiler.ir.layout import lazy_multiply
from qcompiler.ir.ops import OPS
from qcompiler.passes.rewriter import (Const, Match, Pat, Rewriter, RewritePass, Rule, Var, batched_fc_reason, has_data,
                                       single_use_reason)
from qcompiler.quant.policy import DEFAULT_POLICY, PolicyName, get_policy

# conv2d, depthwise_conv2d, fully_connected: OpDef.weights.affine_foldable
FOLDABLE_PRODUCERS = tuple(name for name, d in OPS.items() if d.weights and d.weights.affine_foldable)
_BN_PARAMS = ("gamma", "beta", "mean", "var")
RsqrtKernel = Literal["tensorflow", "f32"]
_F32 = np.float32


def rsqrt(x: np.ndarray, kernel: RsqrtKernel) -> np.ndarray:
    """1 / sqrt(x) in float32, as `kernel` computes it.

    tensorflow: TensorFlow's CPU kernel (Eigen), which Keras runs for BatchNormalization and TFLiteConverter runs
      when it constant-folds the batch norm. Eigen computes whole packets of 8 with the CPU's approximate
      reciprocal square root instruction plus one Newton step, and the remaining elements as 1/sqrt in float32.
      The instruction's results differ between CPU vendors, so the kernel cannot be emulated in numpy: it is
      called. Up to 2 ulp from the exact result.
    f32: 1 / sqrt(x) in float32 (portable; TFLite's RSQRT kernel and Eigen's scalar path).
    """
    x = np.ascontiguousarray(x, _F32)
    if kernel == "f32":
        return (_F32(1) / np.sqrt(x)).astype(_F32)
    try:
        import tensorflow as tf
    except ImportError as err:
        raise QCompilerError(f"fold-batchnorm{{rsqrt=tensorflow}} needs TensorFlow ({err}); install it or run "
                             "fold-batchnorm{rsqrt=f32} (weights may then differ from the converter's in the "
                             "last bit)") from None
    return np.asarray(tf.raw_ops.Rsqrt(x=x))  # the kernel tf.math.rsqrt runs, without its Python layers


def _bn_pattern(source) -> Pat:
    return Pat("batch_norm", source, *(Const(capture=p) for p in _BN_PARAMS))


def scale_and_shift(m: Match, kernel: RsqrtKernel = "tensorflow") -> tuple[np.ndarray, np.ndarray]:
    """Per-channel inv and shift with batch_norm(x) == x * inv + shift, in float32 in tf.nn.batch_normalization's
    order: inv = rsqrt(var + eps) * gamma; shift = beta - mean * inv."""
    gamma, beta, mean, var = (np.asarray(m[p].data, _F32) for p in _BN_PARAMS)
    inv = (rsqrt((var + _F32(m.root.attrs["epsilon"])).astype(_F32), kernel) * gamma).astype(_F32)
    return inv, (beta - (mean * inv).astype(_F32)).astype(_F32)


# ----- folding into the producer -----
def _fold_check(m: Match) -> Optional[str]:
    producer = m["producer"]
    result = producer.result
    if producer.op == "fully_connected":
        return ("a batch norm after a fully_connected becomes mul + add, which fold-affine folds in the converter's "
                "order (into this layer, or with its bias into the next fully_connected)")
    if not result.type.is_float:
        return f"{producer.op} result is {result.type.dtype}, not float"
    if (reason := single_use_reason(producer) or batched_fc_reason(producer)) is not None:
        return reason
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


def _scale_weights(op: str, weights: np.ndarray, inv: np.ndarray) -> np.ndarray:
    shape = [1] * weights.ndim
    shape[OPS[op].weights.out_axis] = -1
    # the products are computed by the writer, straight into the file (a LazyProduct, qcompiler/ir/layout.py)
    return lazy_multiply(np.asarray(weights, _F32), inv.reshape(shape))


def _fold(m: Match, rw: Rewriter, kernel: RsqrtKernel) -> None:
    """The converter's fusions: conv(x, w) + b -> mul by inv -> add shift, i.e. w * inv and b * inv + shift."""
    producer = m["producer"]
    inv, shift = scale_and_shift(m, kernel)
    weights = producer.operands[1]
    if len(producer.operands) > 2:
        old_bias = np.asarray(producer.operands[2].data, _F32)
        new_bias = ((old_bias * inv).astype(_F32) + shift).astype(_F32)
    else:
        new_bias = shift
    new_weights = rw.const(_scale_weights(producer.op, weights.data, inv), name=weights.name,
                           layer=weights.layer, before=producer, dtype=weights.type.dtype)
    bias = rw.const(new_bias, name=f"{producer.result.name}_bias", layer=producer.layer, before=producer,
                    dtype=producer.result.type.dtype)
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


def _lower_to_mul_add(m: Match, rw: Rewriter, kernel: RsqrtKernel) -> None:
    bn = m.root
    dtype = bn.result.type.dtype
    inv, shift = scale_and_shift(m, kernel)
    base = bn.result.name
    s = rw.const(inv, name=f"{base}_scale", layer=bn.layer, dtype=dtype)
    t = rw.const(shift, name=f"{base}_shift", layer=bn.layer, dtype=dtype)
    scaled = rw.op("mul", m["x"], s, name=f"{base}_mul", layer=bn.layer)
    rw.replace_value(bn, rw.op("add", scaled, t, layer=bn.layer))


def make_rules(kernel: RsqrtKernel = "tensorflow") -> list[Rule]:
    return [
        Rule("fold-into-producer", _bn_pattern(Pat(FOLDABLE_PRODUCERS, capture="producer")),
             partial(_fold, kernel=kernel), _fold_check),
        Rule("lower-to-mul-add", _bn_pattern(Var("x")), partial(_lower_to_mul_add, kernel=kernel), _lower_check),
    ]


@dataclass(frozen=True)
class FoldBatchNorm(RewritePass):
    name: ClassVar[str] = "fold-batchnorm"
    summary: ClassVar[str] = "fold batch_norm into conv/depthwise/fully_connected weights, else mul+add"

    rsqrt: Optional[RsqrtKernel] = None  # None: the policy's (tflite-2.21: tensorflow, plain: f32)
    policy: PolicyName = DEFAULT_POLICY

    def rules(self) -> Sequence[Rule]:
        return make_rules(self.rsqrt or get_policy(self.policy).rsqrt)
