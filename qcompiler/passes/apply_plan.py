"""apply-plan: give every fake_quant the range, dtype and granularity a quantization plan says (in place of
`calibrate`; qcompiler/quant/plan.py).

    %c.q = fake_quant(%c) {dtype="i8"}                      # min/max none after insert-fake-quant
  becomes
    %c.q = fake_quant(%c) {dtype="i8", max=6.0, min=0.0}    # the plan's entry for tensor 'c'

Every fake_quant needs an entry (an activation one, or a weights one for weights); an entry without a
fake_quant (e.g. for a tensor that a layer kept float no longer quantizes) is ignored and counted (`unused`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Mapping, Optional

from qcompiler.ir.graph import Graph
from qcompiler.passes.base import NOT_AN_OPTION, Pass, PassResult


@dataclass(frozen=True)
class ApplyPlan(Pass):
    """Pipeline form: `apply-plan{plan=plan.json}`; from Python the loaded plan may be given (`contents`)."""

    name: ClassVar[str] = "apply-plan"
    summary: ClassVar[str] = "set fake_quant ranges, dtypes and weight granularity from a quantization plan (.json)"

    plan: str = ""
    contents: Optional[Mapping] = field(default=None, compare=False, repr=False, metadata=NOT_AN_OPTION)

    def run(self, graph: Graph) -> PassResult:
        from qcompiler.quant.plan import PlanError, load_plan

        plan = load_plan(self.contents if self.contents is not None else self._path())
        entries = {(e["tensor"], e["kind"]): e for e in plan["tensors"]}
        used, ranges, per_tensor = set(), 0, 0
        for node in graph.find("fake_quant"):
            source = node.operands[0]
            kind = "weights" if node.attrs["weights"] else "activation"
            entry = entries.get((source.name, kind))
            if entry is None:
                layer = f" (Keras layer '{source.layer}')" if source.layer else ""
                raise PlanError(f"the plan has no {kind} entry for tensor '{source.name}'{layer}; make the plan "
                                "again (qcompiler calibrate) with the same model, options and --keep-float")
            used.add((source.name, kind))
            if kind == "weights":
                if entry["granularity"] == "per-tensor" and node.attrs["axis"] is not None:
                    node.attrs["axis"] = None
                    per_tensor += 1
                continue
            if node.attrs["min"] is not None:  # the kernel fixes the range (softmax, logistic, tanh)
                if [node.attrs["min"], node.attrs["max"]] != list(entry["range"]):
                    raise PlanError(f"tensor '{source.name}' (Keras layer '{source.layer}'): {source.producer.op} "
                                    f"has the fixed range [{node.attrs['min']}, {node.attrs['max']}] of its integer "
                                    f"kernel; the plan's {entry['range']} cannot change it")
                continue
            node.attrs["min"], node.attrs["max"] = float(entry["range"][0]), float(entry["range"][1])
            ranges += 1
        counters = {"ranges-set": ranges, "per-tensor": per_tensor, "unused": len(entries) - len(used)}
        return PassResult(ranges > 0 or per_tensor > 0, {k: v for k, v in counters.items() if v})

    def _path(self) -> str:
        from qcompiler.quant.plan import PlanError

        if not self.plan:
            raise PlanError("apply-plan needs a plan: apply-plan{plan=plan.json}")
        return self.plan
