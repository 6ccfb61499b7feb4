"""space-to-batch-dilation: a dilated conv2d / depthwise_conv2d becomes TensorFlow's space-to-batch form.

    %y = conv2d(%x, %w, %b) {dilation=[2, 2], padding="same"}
->
    %s = space_to_batch(%x) {block=[2, 2], paddings=[[t, b'], [l, r']]}
    %c = conv2d(%s, %w) {padding="valid"}             (no dilation, no bias)
    %d = batch_to_space(%c) {block=[2, 2], crops=[[0, b' - b], [0, r' - r]]}
    %y = add(%d, %b)

This is how Keras' TensorFlow backend computes a dilated convolution (tf.nn.convolution / depthwise_conv2d ->
with_space_to_batch), and TFLiteConverter 2.21 keeps that form for Keras models (their batch is dynamic, and its
dilated-conv fusion does not apply): SPACE_TO_BATCH_ND, CONV_2D, BATCH_TO_SPACE_ND, then the bias as a separate
ADD. In int8 it matters: the convolution's output has its own calibrated range, recorded over the padded grid
(including the positions the crops drop), and the bias add its own. Paddings are TensorFlow's
required_space_to_batch_paddings: the SAME (or zero) base padding of the dilated kernel, plus at the end what
makes each padded size a multiple of the block; the crops remove that extra again.

Not rewritten: convolutions with a stride (Keras refuses strides with dilation), an unknown spatial size, or a fused
activation (the importer emits activations as separate nodes; this pass runs first in the float pipeline).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from qcompiler.ir.graph import Graph, Node
from qcompiler.passes.base import Pass, PassResult

CONVS = ("conv2d", "depthwise_conv2d")


def space_to_batch_paddings(size: int, kernel: int, dilation: int, padding: str) -> tuple[list[int], list[int]]:
    """([before, after] padding, [0, extra] crops) along one spatial axis, as TensorFlow computes them."""
    if padding == "same":
        extra = (kernel - 1) * dilation
        before, after = extra // 2, extra - extra // 2
    else:
        before = after = 0
    end_extra = (dilation - (size + before + after) % dilation) % dilation
    return [before, after + end_extra], [0, end_extra]


def _reason(node: Node) -> Optional[str]:
    attrs = node.attrs
    if list(attrs["strides"]) != [1, 1]:
        return f"{node.describe()} has strides {attrs['strides']} with dilation"
    if attrs["activation"] != "none":
        return f"{node.describe()} has fused activation '{attrs['activation']}'"
    if any(d is None for d in node.operands[0].type.shape[1:3]):
        return f"{node.describe()} has an unknown spatial size {node.operands[0].type}"
    return None


def _rewrite(graph: Graph, node: Node) -> None:
    x, weights = node.operands[0], node.operands[1]
    kernel = weights.type.shape[1:3]
    pads, crops = zip(*(space_to_batch_paddings(int(size), int(k), int(d), node.attrs["padding"])
                        for size, k, d in zip(x.type.shape[1:3], kernel, node.attrs["dilation"])))
    block = [int(d) for d in node.attrs["dilation"]]
    name, layer = node.result.name, node.layer
    spaced = graph.op("space_to_batch", x, name=f"{name}/space_to_batch", layer=layer, before=node,
                      block=block, paddings=[list(p) for p in pads])
    attrs = {k: v for k, v in node.attrs.items() if k not in ("dilation", "padding")}
    conv = graph.op(node.op, spaced, weights, name=f"{name}/conv", layer=layer, before=node,
                    padding="valid", dilation=[1, 1], **attrs)
    y = graph.op("batch_to_space", conv, name=f"{name}/batch_to_space", layer=layer, before=node,
                 block=block, crops=[list(c) for c in crops])
    if len(node.operands) > 2:
        y = graph.op("add", y, node.operands[2], name=f"{name}/bias_add", layer=layer, before=node)
    graph.replace_all_uses(node.result, y)
    graph.remove(node)
    graph.rename(y, name)


@dataclass(frozen=True)
class SpaceToBatchDilation(Pass):
    name: ClassVar[str] = "space-to-batch-dilation"
    summary: ClassVar[str] = "dilated conv2d/depthwise_conv2d -> space_to_batch, conv, batch_to_space, bias add"

    def run(self, graph: Graph) -> PassResult:
        rewritten, notes = 0, []
        for node in list(graph.nodes):
            if node.op not in CONVS or list(node.attrs["dilation"]) == [1, 1]:
                continue
            reason = _reason(node)
            if reason is not None:
                notes.append(f"space-to-batch-dilation did not apply to {reason}")
                continue
            _rewrite(graph, node)
            rewritten += 1
        if not rewritten:
            return PassResult(False, {}, tuple(notes))
        return PassResult(True, {"convs-rewritten": rewritten}, tuple(notes))


__all__ = ["SpaceToBatchDilation", "space_to_batch_paddings"]
