"""Quantization policies: which converter-emulation rules quantization follows, named and chosen in one place.

Every rule that exists only to reproduce another tool's choices bit for bit is a field here, so both the plain
rule and the compatibility rule can be read, chosen and tested:

    policy = get_policy("tflite-2.21")      # the default: TFLiteConverter 2.21, bit for bit
    policy = get_policy("plain")            # textbook quantization, no emulation (other targets, QAT)

A pipeline chooses it with the `policy` option of the passes that have rules here
(`fold-batchnorm{policy=plain}`, `insert-fake-quant{policy=plain}`, `calibrate{policy=plain}`,
`lower-to-int{policy=plain}`); `qcompiler.pipeline_for(mode, policy=...)`, `compile(..., policy=...)` and the
command line's `--policy` put the same name in every one of them. docs/quantization-notes.md explains each rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qcompiler.errors import QCompilerError

Propagation = Literal["mlir-driver", "forward"]
OpOrder = Literal["graph", "tf-import"]
RsqrtKernel = Literal["tensorflow", "f32"]

DEFAULT_POLICY = "tflite-2.21"


@dataclass(frozen=True)
class QuantPolicy:
    """One named set of quantization rules.

    propagation_i8 / propagation_i16: how activations without their own range get parameters.
      "mlir-driver": TFLiteConverter's MLIR QuantizationDriver (int8 mode): a work list of all ops in program
        order processed from the back, users re-queued earliest first; a concat/maximum/minimum output's
        parameters flow back into its operands, graph inputs included.
      "forward": parameters only flow forward (pooling/reshape take their operand's); a multi-operand
        concat/maximum/minimum keeps its own calibrated range and requantizes operands that differ. Textbook,
        and what the converter's older quantizer does for 16x8.
    backward_sharing_i8 / _i16: insert-fake-quant leaves the operands of a concat/maximum/minimum without a
      range of their own (RemoveRedundantStatsOps backwards); goes with "mlir-driver".
    rsqrt: the kernel fold-batchnorm computes 1/sqrt(var + eps) with: "tensorflow" (tf.math.rsqrt, what Keras
      and the converter run) or "f32" (portable 1/sqrt in float32).
    inplace_range_unions: a tensor whose buffer a TFLite kernel overwrites in place is calibrated with the union
      of its own range and the kernel's output range, as the converter's calibration logger records it
      (qcompiler/backend/tflite_arena.py decides which tensors).
    flt_min_floor: a calibrated max below FLT_MIN becomes FLT_MIN (the logger starts max at FLT_MIN): matters for
      int16, where an all-zero tensor then gets scale FLT_MIN/32767 instead of the plain degenerate-range rule.
    bias_adjustment: a bias too large for int32 at scale input*weight widens that channel's weight scale
      (SetBiasParamsWithAdjustments in int8, AdjustWeightsForBiasScale in 16x8) instead of saturating.
    converter_float_i8: int8 ops stay float where TFLiteConverter's MLIR quantizer leaves them float: an op it
      never quantizes (QuantRule.converter_quantizes: ELU) is a float island, and float spreads from a float op
      whose output lost its range to backward sharing (RemoveRedundantStatsOps) and so gets no QUANTIZE: its
      users run in float too (qcompiler/quant/float_spread.py). Otherwise every op with an integer kernel runs
      in integers and every float island's output is quantized.
    op_order: the order in which "mlir-driver" propagation meets the ops: "graph" (qcompiler's node order) or
      "tf-import" (the converter's: TensorFlow's GraphDef import, a reverse post-order with successors by name,
      qcompiler/quant/op_order.py). It decides which same-scale user's parameters a shared tensor takes, which
      same-scale ops the driver drops, and where it requantizes.
    widen_degenerate_ranges: a calibrated range that collapses to a point (all-zero data) becomes a unit-wide
      range around the value; otherwise it is kept as the converter keeps it (a scale of ~1e-8). Both warn.
    """

    name: str
    summary: str
    propagation_i8: Propagation
    propagation_i16: Propagation
    backward_sharing_i8: bool
    backward_sharing_i16: bool
    rsqrt: RsqrtKernel
    inplace_range_unions: bool
    flt_min_floor: bool
    bias_adjustment: bool
    widen_degenerate_ranges: bool
    converter_float_i8: bool
    op_order: OpOrder = "graph"

    def propagation(self, activations: str) -> Propagation:
        return self.propagation_i16 if activations == "i16" else self.propagation_i8

    def shares_backwards(self, activations: str) -> bool:
        return self.backward_sharing_i16 if activations == "i16" else self.backward_sharing_i8

    def converter_float(self, activations: str) -> bool:
        return activations == "i8" and self.converter_float_i8


TFLITE_2_21 = QuantPolicy(
    name="tflite-2.21",
    summary="TFLiteConverter 2.21 bit for bit: MLIR driver propagation (int8), older quantizer (16x8), TF rsqrt, "
            "in-place range unions, FLT_MIN floor, bias adjustment, the converter's float ops",
    propagation_i8="mlir-driver", propagation_i16="forward",
    backward_sharing_i8=True, backward_sharing_i16=False,
    rsqrt="tensorflow", inplace_range_unions=True, flt_min_floor=True, bias_adjustment=True,
    widen_degenerate_ranges=False, converter_float_i8=True, op_order="tf-import")

PLAIN = QuantPolicy(
    name="plain",
    summary="textbook quantization, no emulation: forward propagation with requantized concat operands, float32 "
            "1/sqrt, each tensor's own range, saturating bias",
    propagation_i8="forward", propagation_i16="forward",
    backward_sharing_i8=False, backward_sharing_i16=False,
    rsqrt="f32", inplace_range_unions=False, flt_min_floor=False, bias_adjustment=False,
    widen_degenerate_ranges=True, converter_float_i8=False)

POLICIES: dict[str, QuantPolicy] = {p.name: p for p in (TFLITE_2_21, PLAIN)}
PolicyName = Literal["tflite-2.21", "plain"]


class UnknownPolicyError(QCompilerError, ValueError):
    pass


def get_policy(policy: "str | QuantPolicy") -> QuantPolicy:
    """The policy of that name (a QuantPolicy is returned as is)."""
    if isinstance(policy, QuantPolicy):
        return policy
    if policy not in POLICIES:
        raise UnknownPolicyError(f"unknown quantization policy '{policy}'; choose one of {', '.join(POLICIES)}")
    return POLICIES[policy]
