"""The pass manager: verification after each pass names the culprit; IR printing; timing; run_passes."""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from qcompiler.ir.graph import Graph
from qcompiler.ir.types import TensorType
from qcompiler.passes import DEFAULT_FLOAT_PIPELINE, Pass, PassFailure, PassManager, PassResult, run_passes
from qcompiler.passes.canonicalize import Canonicalize
from qcompiler.passes.dce import DeadCodeElimination


@dataclass(frozen=True)
class BreakTopologicalOrder(Pass):
    """Deliberately broken: moves the last node to the front, before the values it uses."""

    name: ClassVar[str] = "break-order"

    def run(self, graph: Graph) -> PassResult:
        graph.nodes.insert(0, graph.nodes.pop())
        return PassResult(True)


@dataclass(frozen=True)
class EditOperandsBehindTheGraphsBack(Pass):
    """Deliberately broken: rewires an operand without updating use lists."""

    name: ClassVar[str] = "stale-uses"

    def run(self, graph: Graph) -> PassResult:
        node = graph.find("relu")[0]
        node.operands[0] = graph.inputs[0]
        return PassResult(True)


@dataclass(frozen=True)
class Explode(Pass):
    name: ClassVar[str] = "explode"

    def run(self, graph: Graph) -> PassResult:
        raise KeyError("no such tensor")


def small_graph() -> Graph:
    g = Graph("small")
    x = g.add_input("x", TensorType((None, 4)))
    i = g.op("identity", x, name="i")
    r = g.op("relu", i, name="r")
    g.outputs = [g.op("tanh", r, name="t")]
    return g


def test_verifier_failure_names_the_pass_and_those_before() -> None:
    with pytest.raises(PassFailure) as info:
        PassManager([DeadCodeElimination(), Canonicalize(), BreakTopologicalOrder(), DeadCodeElimination()]).run(
            small_graph())
    err = info.value
    assert err.pass_name == "break-order"
    assert err.before == ["dce", "canonicalize"]
    assert "used before it is defined" in err.reason
    message = str(err)
    assert "pass 'break-order' failed" in message and "dce -> canonicalize" in message
    assert err.graph_text is not None and "graph @small" in err.graph_text


def test_stale_use_lists_are_caught() -> None:
    with pytest.raises(PassFailure, match="stale-uses") as info:
        PassManager([EditOperandsBehindTheGraphsBack()]).run(small_graph())
    assert "use list" in info.value.reason


def test_exception_inside_a_pass_names_it() -> None:
    with pytest.raises(PassFailure) as info:
        PassManager([Canonicalize(), Explode()]).run(small_graph())
    assert info.value.pass_name == "explode" and info.value.before == ["canonicalize"]
    assert "KeyError" in info.value.reason
    assert isinstance(info.value.__cause__, KeyError)


def test_invalid_input_graph_is_reported_before_any_pass() -> None:
    g = small_graph()
    g.nodes.reverse()
    with pytest.raises(PassFailure, match="before any pass") as info:
        run_passes(g, "dce")
    assert info.value.pass_name is None


def test_without_verify_each_the_end_result_is_still_verified() -> None:
    with pytest.raises(PassFailure, match="verify_each off") as info:
        PassManager([DeadCodeElimination(), BreakTopologicalOrder()], verify_each=False).run(small_graph())
    assert info.value.pass_name == "break-order" and info.value.before == ["dce"]


def test_run_passes_is_in_place_and_records_results() -> None:
    g = small_graph()
    manager = PassManager("canonicalize,dce")
    assert manager.run(g) is g
    assert [str(r.pass_) for r in manager.records] == ["canonicalize", "dce"]
    assert manager.records[0].result.modified and not manager.records[1].result.modified
    assert manager.records[0].result.counters["rule:remove-identity"] == 1
    assert manager.modified
    assert run_passes(g, ["canonicalize", DeadCodeElimination()]) is g
    assert g.op_counts() == {"relu": 1, "tanh": 1}


def test_print_ir_after() -> None:
    stream = io.StringIO()
    run_passes(small_graph(), "dce,canonicalize", print_ir_after={"canonicalize"}, stream=stream)
    text = stream.getvalue()
    assert "// ----- IR after canonicalize (modified) -----" in text
    assert "IR after dce" not in text
    assert "%r = relu(%x)" in text

    stream = io.StringIO()
    run_passes(small_graph(), "dce,canonicalize", print_ir_after_all=True, stream=stream)
    assert "IR after dce (unchanged)" in stream.getvalue()


def test_print_ir_after_a_pass_not_in_the_pipeline_is_an_error() -> None:
    with pytest.raises(ValueError, match="fold-batchnorm"):
        PassManager("dce", print_ir_after={"fold-batchnorm"})


def test_timing_report() -> None:
    stream = io.StringIO()
    run_passes(small_graph(), DEFAULT_FLOAT_PIPELINE, timing=True, stream=stream)
    report = stream.getvalue()
    assert "pass timing report" in report
    for name in ("canonicalize", "fold-batchnorm", "fuse-activations", "fold-constants", "dce", "(verifier)",
                 "total"):
        assert name in report
    assert "rule:remove-identity=1" in report


def test_default_float_pipeline_runs_on_a_graph_with_nothing_to_do() -> None:
    g = Graph("noop")
    x = g.add_input("x", TensorType((None, 3)))
    w = g.const(np.eye(3, dtype=np.float32), "w")
    g.outputs = [g.op("fully_connected", x, w, name="y")]
    manager = PassManager(DEFAULT_FLOAT_PIPELINE)
    manager.run(g)
    assert not manager.modified


def test_print_ir_after_shows_the_output_of_a_pass_that_breaks_the_graph() -> None:
    stream = io.StringIO()
    with pytest.raises(PassFailure, match="--print-ir-after=break-order"):
        run_passes(small_graph(), [BreakTopologicalOrder()], print_ir_after={"break-order"}, stream=stream)
    assert "IR after break-order (modified)" in stream.getvalue()
    assert stream.getvalue().index("%t = tanh") < stream.getvalue().index("%r = relu")
