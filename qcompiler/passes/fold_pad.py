"""fold-pad: an explicit zero `pad` in front of a "valid" convolution becomes the convolution's SAME padding.

    %p = pad(%x) {paddings=[[0, 0], [0, 1], [0, 1], [0, 0]]} : f32[?,65,65,8]
    %d = depthwise_conv2d(%p, %w) {strides=[2, 2]} : f32[?,32,32,8]
  ->
    %d = depthwise_conv2d(%x, %w) {padding="same", strides=[2, 2]} : f32[?,32,32,8]

Keras MobileNetV2 writes its stride-2 depthwise convolutions as ZeroPadding2D + DepthwiseConv2D(padding="valid");
TFLiteConverter folds the pair the same way, and without this pass our output has an extra PAD operator each time.

Folded only when the pad is exactly what TensorFlow's SAME padding adds for that op's kernel, stride, dilation and
input size (`ops.same_padding`: the odd pixel goes after), pads the spatial axes only, and every user of the pad is
a conv2d / depthwise_conv2d with padding="valid" that reads it as its input. Pooling is left alone: SAME max
pooling pads with -inf, not zero, and SAME average pooling leaves the padding out of the count, so neither equals
pooling a zero-padded tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

from qcompiler.ir.graph import Graph, Use, Value
from qcompiler.ir.ops import OPS, conv_output_size, same_padding
from qcompiler.passes.base import PassResult
from qcompiler.passes.rewriter import Match, Pat, Rewriter, RewritePass, Rule, apply_rules, result_from_stats

FOLDING_OPS = tuple(name for name, d in OPS.items() if d.absorbs_zero_pad)  # conv2d, depthwise_conv2d
_POOL_REASONS = {
    "max_pool2d": "max_pool2d pads with -inf in SAME mode, not with zeros",
    "avg_pool2d": "avg_pool2d leaves SAME padding out of the average, so zeros would change it",
}
Pads = tuple[tuple[int, int], tuple[int, int]]


def _check(m: Match) -> Optional[str]:
    pad, x = m.root, m["x"]
    result = pad.result
    if pad.graph.is_output(result):
        return f"pad result %{result.name} is also a graph output"
    if not result.uses:
        return f"pad result %{result.name} is unused"
    paddings = [tuple(int(v) for v in p) for p in pad.attrs["paddings"]]
    if len(paddings) != 4:
        return f"pad of a rank-{len(paddings)} tensor, not NHWC"
    if paddings[0] != (0, 0) or paddings[3] != (0, 0):
        return f"pad {[list(p) for p in paddings]} also pads the batch or channel axis"
    height, width = x.type.shape[1], x.type.shape[2]
    if height is None or width is None:
        return f"input %{x.name} {x.type} has an unknown height or width"
    if x.type.quant != result.type.quant:
        return f"pad changes the quantization ({x.type.quant} -> {result.type.quant})"
    for use in result.uses:
        reason = _user_reason(use, (paddings[1], paddings[2]), x)
        if reason is not None:
            return reason
    return None


def _user_reason(use: Use, pads: Pads, x: Value) -> Optional[str]:
    """Why the op at `use` cannot take the pad as its own SAME padding, or None if it can."""
    node = use.node
    if node.op in _POOL_REASONS:
        return _POOL_REASONS[node.op]
    if node.op not in FOLDING_OPS:
        return f"pad is also used by {node.describe()}, which cannot pad itself"
    if use.index != 0:
        return f"pad is operand {use.index} of {node.describe()}, not its input"
    if node.attrs["padding"] != "valid":
        return f"{node.describe()} already has padding '{node.attrs['padding']}'"
    kernel = node.operands[1].type.shape[1:3]
    strides, dilation = node.attrs["strides"], node.attrs["dilation"]
    sizes = x.type.shape[1:3]
    same = tuple(same_padding(sizes[i], kernel[i], strides[i], dilation[i]) for i in range(2))
    if pads != same:
        return (f"pad {[list(p) for p in pads]} is not the SAME padding {[list(p) for p in same]} of "
                f"{node.describe()} (kernel {list(kernel)}, strides {strides}, dilation {dilation})")
    out = tuple(conv_output_size(sizes[i], kernel[i], strides[i], dilation[i], "same") for i in range(2))
    if out != tuple(node.result.type.shape[1:3]):  # cannot differ when the pads agree; guards the type
        return f"{node.describe()} would compute {list(out)} instead of {list(node.result.type.shape[1:3])}"
    return None


def _fold(m: Match, rw: Rewriter) -> None:
    for user in m.root.result.users:
        rw.set_attr(user, "padding", "same")
        rw.set_operand(user, 0, m["x"])  # the last one leaves the pad unused; the rewriter erases it


RULES: list[Rule] = [Rule("fold-pad", Pat("pad", "x"), _fold, _check)]


@dataclass(frozen=True)
class FoldPad(RewritePass):
    name: ClassVar[str] = "fold-pad"
    summary: ClassVar[str] = "fold a zero pad into the SAME padding of the valid conv2d/depthwise_conv2d after it"

    def rules(self) -> Sequence[Rule]:
        return RULES

    def run(self, graph: Graph) -> PassResult:
        stats = apply_rules(graph, self.rules())
        return result_from_stats(stats, {"convs-padded": stats.attrs_changed} if stats.attrs_changed else None)
