"""fold-constants: a node whose operands are all constants is evaluated once and replaced by a constant.

Evaluation uses the op table's float semantics (`qcompiler.ir.ops.compute`), the same as the interpreter.
Left alone: fake_quant (its ranges are what quantization reads), quantize/dequantize and anything with a
quantized type (the integer graph keeps its structure), constants whose data was elided in a short dump, and
results larger than `max_elements`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import numpy as np

from qcompiler.ir.graph import IRError, Node
from qcompiler.ir.ops import OPS, compute
from qcompiler.passes.rewriter import Match, Pat, Rewriter, RewritePass, Rule, has_data

KEPT_OPS = frozenset(name for name, d in OPS.items() if not d.constant_foldable)


def _all_operands_constant(node: Node) -> bool:
    return node.op in OPS and node.op not in KEPT_OPS and bool(node.operands) and all(v.is_constant for v in node.operands)


def _check(m: Match, max_elements: int) -> Optional[str]:
    node = m.root
    values = [*node.operands, *node.results]
    if any(v.type.quant is not None for v in values):
        return "a quantized operand or result"
    if not all(has_data(v) for v in node.operands):
        return "constant data is elided (read from a digest-only dump)"
    sizes = [v.type.num_elements() for v in node.results]
    if any(s is not None and s > max_elements for s in sizes):
        return f"result has more than max_elements={max_elements} elements"
    try:
        arrays = compute(node, [np.asarray(v.data) for v in node.operands])
    except (IRError, ValueError, TypeError, ArithmeticError) as err:
        return f"evaluation failed: {err}"
    for array, value in zip(arrays, node.results):
        if not value.type.matches(array.shape) or array.size > max_elements:
            return f"evaluated shape {list(array.shape)} does not fit {value.type} or is too large"
    m.memo["arrays"] = [np.asarray(a).astype(v.type.np_dtype) for a, v in zip(arrays, node.results)]
    return None


def _fold(m: Match, rw: Rewriter) -> None:
    node = m.root
    rw.replace(node, [rw.const(a, layer=node.layer) for a in m.memo["arrays"]])


@dataclass(frozen=True)
class FoldConstants(RewritePass):
    name: ClassVar[str] = "fold-constants"
    summary: ClassVar[str] = "evaluate nodes whose operands are all constants"

    max_elements: int = 1 << 24

    def rules(self) -> Sequence[Rule]:
        limit = self.max_elements
        return [Rule("fold-constant", Pat(None, where=_all_operands_constant), _fold, lambda m: _check(m, limit))]
