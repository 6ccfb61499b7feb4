"""fuse-activations: relu / relu6 / relu_n1_to_1 (/ tanh) nodes become the `activation` attribute of their producer.

    %c = conv2d(%x, %w, %b) : ...          %c = conv2d(%x, %w, %b) {activation="relu"} : ...
    %r = relu(%c) : ...             ->

Producers: every op whose op-table entry has an `activation` attribute (conv2d, depthwise_conv2d,
fully_connected, add, sub, mul, max_pool2d, avg_pool2d, concat). The producer's result must have exactly one
use, must not be a graph output, and must have no activation yet.

One exception, TFLite's: a clamp of a fully_connected on a 2-D input whose result has other uses (or is a graph
output) becomes a *copy* of that fully_connected with the clamp fused; the original stays for its other users.

    %f = fully_connected(%x, %w, %b)           %f = fully_connected(%x, %w, %b)
    %r = relu(%f)                      ->      %r = fully_connected(%x, %w, %b) {activation="relu"}
    %s = sigmoid(%f)                           %s = sigmoid(%f)

The converter's FuseFullyConnectedAndReluX (tfl optimize) has no one-use condition, unlike the fused-activation
patterns of the other ops: it creates a new FULLY_CONNECTED for the clamp (measured on TF 2.21: Dense -> ReLU
and sigmoid gives FULLY_CONNECTED, FULLY_CONNECTED {relu}, LOGISTIC; random seed 3099). On a rank > 2 input the
clamp reads Keras' tensordot RESHAPE, not the FULLY_CONNECTED, so nothing is copied there (move-reshapes has the
case where a reshape after it collapses with that RESHAPE).

Two fusions the IR can express are off by default because TFLite does not run them:
- tanh: kernels compute the clamp range of a fused activation for relu, relu6 and relu_n1_to_1 only, and run a
  fused tanh as no activation at all, so the results change silently;
- into concat: CONCATENATION's Prepare requires activation NONE, so the model fails to load.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

from qcompiler.ir.graph import Node, Value
from qcompiler.ir.ops import OPS
from qcompiler.passes.rewriter import Match, Pat, Rewriter, RewritePass, Rule, single_use_reason

CLAMP_ACTIVATIONS = ("relu", "relu6", "relu_n1_to_1")
FUSING_OPS = tuple(sorted(name for name, d in OPS.items() if d.fusable_activation))


def producer_fuse_reason(producer: Node) -> Optional[str]:
    """Why an activation cannot fuse into `producer` (None: it can)."""
    if (reason := single_use_reason(producer)) is not None:
        return reason
    if producer.attrs["activation"] != "none":
        return f"{producer.op} already has activation '{producer.attrs['activation']}'"
    return None


def _check(m: Match) -> Optional[str]:
    return producer_fuse_reason(m["producer"])


def fully_connected_copy_reason(producer: Node) -> Optional[str]:
    """Why a clamp of the fully_connected `producer` does not become a copy of it with the clamp fused (None: it
    does; FuseFullyConnectedAndReluX): only a 2-D one without activation whose result has other uses."""
    if producer.op != "fully_connected":
        return f"{producer.op} is not a fully_connected"
    if producer.attrs["activation"] != "none":
        return f"{producer.op} already has activation '{producer.attrs['activation']}'"
    if producer.operands[0].type.rank > 2:
        return "the clamp of a fully_connected on a rank > 2 input reads Keras' tensordot RESHAPE in the converter"
    if single_use_reason(producer) is None:
        return "the clamp is its only user: it fuses in place"
    return None


def _copy_check(m: Match) -> Optional[str]:
    return fully_connected_copy_reason(m["producer"])


def fuse_clamp(rw: Rewriter, clamp: Node, producer: Node) -> Value:
    """`producer`'s result with the activation `clamp` fused: the producer itself when the clamp is its only
    user, else a copy of it (a fully_connected: FuseFullyConnectedAndReluX has no one-use condition)."""
    if single_use_reason(producer) is None:
        rw.set_attr(producer, "activation", clamp.op)
        return producer.result
    return rw.op(producer.op, *producer.operands, name=f"{clamp.result.name}_fc", layer=producer.layer,
                 **{**producer.attrs, "activation": clamp.op})


def fuse_into_producer(m: Match, rw: Rewriter) -> None:
    """The matched activation (root) becomes the fused activation of the captured `producer`, or of a copy of it
    when the producer has other users."""
    rw.replace_value(m.root, fuse_clamp(rw, m.root, m["producer"]))


@dataclass(frozen=True)
class FuseActivations(RewritePass):
    name: ClassVar[str] = "fuse-activations"
    summary: ClassVar[str] = "fold relu/relu6/relu_n1_to_1 nodes into the fused activation of their producer"

    tanh: bool = False  # see the module docstring before turning these on
    concat: bool = False

    def rules(self) -> Sequence[Rule]:
        activations = CLAMP_ACTIVATIONS + (("tanh",) if self.tanh else ())
        producers = [op for op in FUSING_OPS if OPS[op].tflite_fuses_activation or self.concat]
        return [Rule("fuse-activation", Pat(activations, Pat(producers, capture="producer")), fuse_into_producer,
                     _check),
                Rule("clamp-into-fully-connected-copy", Pat(CLAMP_ACTIVATIONS, Pat("fully_connected",
                                                                                  capture="producer")),
                     fuse_into_producer, _copy_check)]
