"""dce: remove nodes whose results are unused and are not graph outputs (graph inputs always stay)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qcompiler.ir.graph import Graph
from qcompiler.passes.base import Pass, PassResult


@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    name: ClassVar[str] = "dce"
    summary: ClassVar[str] = "remove nodes whose results are never used"

    def run(self, graph: Graph) -> PassResult:
        outputs = {id(v) for v in graph.outputs}
        removed = 0
        for node in reversed(list(graph.nodes)):  # users first, so a whole dead chain goes in one sweep
            if not any(r.uses or id(r) in outputs for r in node.results):
                graph.remove(node)
                removed += 1
        return PassResult(removed > 0, {"nodes-erased": removed} if removed else {})
