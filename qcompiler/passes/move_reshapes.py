"""move-reshapes: a reshape used only by a unary elementwise op moves after it, as TFLiteConverter moves it.

    %f = reshape(%x) {shape=[-1, 60]}          %t = tanh(%x)
    %t = tanh(%f)                      ->      %f = reshape(%t) {shape=[-1, 60]}

TFLite's optimize pass (ReorderElementwiseAndMoveOperations: the value ops relu, relu6, relu_n1_to_1, sigmoid,
tanh, exp, square, neg, sqrt of a move op with one use; its move ops are reshape, transpose, squeeze,
expand_dims and depth_to_space, of which move-transposes handles the transpose). Measured on TF 2.21, it runs
after the activation fusions: a relu moved above a Flatten stays a RELU after a CONV_2D, DEPTHWISE_CONV_2D,
AVERAGE_POOL_2D or ADD, and fuses only into a FULLY_CONNECTED on a 2-D input (FuseFullyConnectedAndReluX,
which the last phase of that pass still applies); it is not moved again above the run-time RESHAPE of Keras'
tensordot. So this pass comes after fuse-activations.

Why the relu stays after a Flatten (or Keras Reshape layer): the RESHAPE's shape is computed at run time from
the SHAPE of its input, so the producer keeps two users (SHAPE and the moved RELU) and the fused-activation
patterns, which need one use, do not apply. A reshape with a constant shape (keras.ops.reshape, runtime_batch
false) leaves the producer one user, and the moved clamp fuses into it like fuse-activations fuses it
(measured: CONV_2D / AVERAGE_POOL_2D + ops.reshape + relu -> CONV_2D {relu}, RESHAPE; random seed 3159).

After a fully_connected on a rank > 2 input (Keras' tensordot: RESHAPE, FULLY_CONNECTED, RESHAPE) the reshape
collapses with the tensordot's output RESHAPE (TFLite folds reshape(reshape(x)) whatever the inner one's other
users), so the moved clamp reads the 2-D FULLY_CONNECTED and FuseFullyConnectedAndReluX fuses it into a copy of
it (no one-use condition; the original keeps the SHAPE user of a run-time reshape). Measured on TF 2.21 for a
Dense without a bias add (use_bias=False, or a zero bias that the converter drops first): after a constant-shape
reshape every clamp fuses; after a Keras Flatten/Reshape layer relu_n1_to_1 fuses, while relu and relu6 of a
zero-bias Dense stay (the converter reorders them while TF's BiasAdd of zeros is still there; relu_n1_to_1 is
formed from minimum/maximum later). qcompiler's IR has dropped a zero bias add by then, so relu/relu6 after a
run-time reshape are left unfused (a use_bias=False Dense there is the one case this misses). Random seed 3175.

TFLite's MoveBinaryOpConstBeforeReshape belongs to the same greedy pattern set, so its rule (move-binary-reshapes,
which runs once before fold-affine) applies here again: reshape -> relu -> mul by a constant ends as relu, mul,
reshape.

Why it matters for int8: the op computes before the reshape, so the reshape shares its parameters, and a fixed
range op (tanh, sigmoid) is requantized before the reshape for a same-scale op after it (random seed 2116:
TANH, QUANTIZE, RESHAPE, QUANTIZE for two MAXIMUMs with different ranges, where qcompiler had refused a tanh
output needing both its producer requantized and a second copy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

from qcompiler.backend.tflite_arena import MOVED_ABOVE_RESHAPE
from qcompiler.ir.graph import Node
from qcompiler.ir.ops import OPS
from qcompiler.passes.fuse_activations import (CLAMP_ACTIVATIONS, FUSING_OPS, fuse_clamp, fuse_into_producer,
                                               producer_fuse_reason)
from qcompiler.passes.move_binary_reshapes import RULES as BINARY_RULES
from qcompiler.passes.rewriter import Match, Pat, Rewriter, RewritePass, Rule, single_use_reason

MOVE_OPS = ("flatten", "reshape")


def _unary_check(m: Match) -> Optional[str]:
    return single_use_reason(m["move"])


def _clamp_fuse_reason(producer: Node) -> Optional[str]:
    """Why a clamp moved above a reshape cannot fuse into `producer` (None: it can)."""
    if (reason := producer_fuse_reason(producer)) is not None:
        return reason
    if producer.op == "fully_connected" and producer.operands[0].type.rank > 2:
        return "a fully_connected on a rank > 2 input ends with Keras' run-time RESHAPE in the converter's model"
    return None


def _batched_fc_fuses(node: Node, move: Node, producer: Node) -> bool:
    """Whether clamp `node`, moved above `move` right after a fully_connected on a rank > 2 input, fuses into (a
    copy of) it: the reshapes collapse, then FuseFullyConnectedAndReluX (see the module docstring)."""
    if producer.op != "fully_connected" or producer.operands[0].type.rank <= 2 or producer.attrs["activation"] != "none":
        return False
    return move.op == "reshape" and not move.attrs.get("runtime_batch", False) or node.op == "relu_n1_to_1"


def _fusing_producer(node: Node, move: Node) -> Optional[Node]:
    """The producer that a clamp `node` moved above the constant-shape reshape `move` fuses into, or None."""
    producer = move.operands[0].producer
    if node.op not in CLAMP_ACTIVATIONS or producer is None:
        return None
    if _batched_fc_fuses(node, move, producer):
        return producer
    if move.op != "reshape" or move.attrs.get("runtime_batch", False):
        return None  # a run-time shaped reshape's SHAPE is a second user of the producer
    if producer.op not in FUSING_OPS or not OPS[producer.op].tflite_fuses_activation:
        return None
    return producer if _clamp_fuse_reason(producer) is None else None


def _unary_rewrite(m: Match, rw: Rewriter) -> None:
    node, move = m.root, m["move"]
    if (producer := _fusing_producer(node, move)) is not None:
        fused = fuse_clamp(rw, node, producer)
        rw.replace_value(node, rw.op(move.op, fused, layer=move.layer, **dict(move.attrs)))
        return
    inner = rw.op(node.op, move.operands[0], name=f"{node.result.name}_unreshaped", layer=node.layer,
                  **dict(node.attrs))
    rw.replace_value(node, rw.op(move.op, inner, layer=move.layer, **dict(move.attrs)))


def _fc_check(m: Match) -> Optional[str]:
    producer = m["producer"]
    if producer.operands[0].type.rank > 2:
        return "a fully_connected on a rank > 2 input ends with Keras' run-time RESHAPE in the converter's model"
    if producer.attrs["activation"] != "none":
        return f"{producer.op} already has activation '{producer.attrs['activation']}'"
    return None


RULES = [
    Rule("unary-after-reshape", Pat(tuple(sorted(MOVED_ABOVE_RESHAPE)), Pat(MOVE_OPS, "x", capture="move")),
         _unary_rewrite, _unary_check),
    *BINARY_RULES,  # one greedy pattern set in the converter: a mul after a relu after a reshape moves up too
    Rule("clamp-into-fully-connected", Pat(CLAMP_ACTIVATIONS, Pat("fully_connected", capture="producer")),
         fuse_into_producer, _fc_check)  # into a copy when it has other users,
]


@dataclass(frozen=True)
class MoveReshapes(RewritePass):
    name: ClassVar[str] = "move-reshapes"
    summary: ClassVar[str] = "move reshapes after the unary elementwise op that follows them (the converter's rule)"

    def rules(self) -> Sequence[Rule]:
        return RULES
