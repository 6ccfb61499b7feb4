"""Runs a pipeline of passes over a graph, verifying the input and the graph after each pass that changed it
(a pass reporting `modified=False` is trusted, as MLIR's pass manager trusts a pass that preserved everything).

    run_passes(graph, "canonicalize,fold-batchnorm", timing=True)
    PassManager(DEFAULT_FLOAT_PIPELINE, print_ir_after={"fold-batchnorm"}).run(graph)

When the graph fails verification after a pass (or a pass raises), `PassFailure` names that pass, the passes
that ran before it and the reason.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence, TextIO, Union

from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph, IRError
from qcompiler.ir.printer import print_graph
from qcompiler.passes.base import Pass, PassResult
from qcompiler.passes.registry import DEFAULT_FLOAT_PIPELINE, PASSES, parse_pipeline

__all__ = ["DEFAULT_FLOAT_PIPELINE", "PassFailure", "PassManager", "PassRecord", "run_passes"]

Pipeline = Union[str, Sequence[Union[Pass, str]]]  # "a,b{x=1}" or [A(), "b{x=1}"]


class PassFailure(QCompilerError):
    """A pass raised, or left a graph that does not verify.

    pass_name is None when the graph was already invalid before the first pass.
    """

    def __init__(self, pass_name: Optional[str], before: Sequence[str], reason: str,
                 graph_text: Optional[str] = None, user_error: bool = False) -> None:
        self.pass_name, self.before, self.reason, self.graph_text = pass_name, list(before), reason, graph_text
        history = " -> ".join(self.before) if self.before else "(none)"
        if user_error:  # the pass refused the model or its options: the reason is the message
            message = f"{pass_name}: {reason}"
        elif pass_name is None:
            message = f"the input graph is invalid before any pass ran: {reason}"
        else:
            message = (f"pass '{pass_name}' failed: {reason}\n"
                       f"  passes that ran before it: {history}\n"
                       f"  to see the IR it produced: --print-ir-after={pass_name} (print_ir_after={{'{pass_name}'}})")
        super().__init__(message)


@dataclass(frozen=True)
class PassRecord:
    """One pass execution: what it reported and how long it and the verifier after it took."""

    pass_: Pass
    result: PassResult
    seconds: float
    verify_seconds: float


class PassManager:
    def __init__(self, pipeline: Pipeline, verify_each: bool = True, print_ir_after_all: bool = False,
                 print_ir_after: Iterable[str] = (), timing: bool = False, stream: Optional[TextIO] = None,
                 registry: Mapping[str, type[Pass]] = PASSES, verify_input: bool = True) -> None:
        """`verify_input=False` skips verifying the graph before the first pass: for a graph that was verified
        already (qcompiler.compile chains several pipelines on one graph). `verify_each=False` verifies once,
        after the last pass, instead of after every pass that changed the graph (what qcompiler.compile does)."""
        self.passes = _to_passes(pipeline, registry)
        self.verify_each = verify_each
        self.verify_input = verify_input
        self.print_ir_after_all = print_ir_after_all
        self.print_ir_after = set(print_ir_after)
        self.timing = timing
        self._stream = stream
        self.records: list[PassRecord] = []
        names = {p.name for p in self.passes}
        unknown = sorted(self.print_ir_after - names)
        if unknown:
            raise ValueError(f"print_ir_after names {unknown}, which are not in the pipeline "
                             f"({', '.join(p.name for p in self.passes) or 'empty'})")

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def run(self, graph: Graph) -> Graph:
        """Run every pass in order on `graph` (in place); returns it."""
        self.records = []
        if self.verify_input:  # with or without verify_each: an invalid input is not blamed on a pass
            self._verify(graph, None, [])
        done: list[str] = []
        for p in self.passes:
            start = time.perf_counter()
            try:
                result = p.run(graph)
            except QCompilerError as err:  # a refusal with its own message, not a broken pass
                raise PassFailure(str(p), done, str(err), user_error=True) from err
            except Exception as err:  # whatever went wrong, say which pass it was
                raise PassFailure(str(p), done, f"it raised {type(err).__name__}: {err}") from err
            if not isinstance(result, PassResult):
                raise PassFailure(str(p), done, f"run() returned {type(result).__name__}, not a PassResult")
            elapsed = time.perf_counter() - start
            if self.print_ir_after_all or p.name in self.print_ir_after:  # before verifying: show broken IR too
                state = "modified" if result.modified else "unchanged"
                text = _safe_print(graph) or "(the graph cannot be printed)\n"
                self.stream.write(f"// ----- IR after {p} ({state}) -----\n{text}\n")
            verify_start = time.perf_counter()
            if self.verify_each and result.modified:  # as MLIR: a pass that changed nothing is not re-verified
                self._verify(graph, str(p), done)
            self.records.append(PassRecord(p, result, elapsed, time.perf_counter() - verify_start))
            done.append(str(p))
        if not self.verify_each and done:
            self._verify(graph, done[-1], done[:-1], "with verify_each off any of these passes may be the culprit; ")
        if self.timing:
            self.stream.write(self.timing_report())
        return graph

    def _verify(self, graph: Graph, pass_name: Optional[str], before: Sequence[str], hint: str = "") -> None:
        try:
            graph.verify()
        except IRError as err:
            raise PassFailure(pass_name, before, f"{hint}the graph does not verify: {err}",
                              _safe_print(graph)) from err

    @property
    def modified(self) -> bool:
        return any(r.result.modified for r in self.records)

    def timing_report(self) -> str:
        """A table: time per pass and of the verifier, share of the total, whether it changed the graph."""
        total = sum(r.seconds + r.verify_seconds for r in self.records) or 1e-12
        width = max([len(str(r.pass_)) for r in self.records] + [10])
        lines = [f"===== pass timing report (total {total * 1e3:.3f} ms) =====",
                 f"{'ms':>9} {'%':>6}  {'pass':<{width}}  changed  counters"]
        for r in self.records:
            counters = ", ".join(f"{k}={v}" for k, v in r.result.counters.items())
            changed = "yes" if r.result.modified else "no"
            lines.append(f"{r.seconds * 1e3:9.3f} {100 * r.seconds / total:5.1f}%  {str(r.pass_):<{width}}  "
                         f"{changed:<7}  {counters}".rstrip())
        verify = sum(r.verify_seconds for r in self.records)
        if self.verify_each:
            lines.append(f"{verify * 1e3:9.3f} {100 * verify / total:5.1f}%  (verifier)")
        lines.append(f"{total * 1e3:9.3f} {100.0:5.1f}%  total")
        return "\n".join(lines) + "\n"


def _to_passes(pipeline: Pipeline, registry: Mapping[str, type[Pass]]) -> list[Pass]:
    if isinstance(pipeline, str):
        return parse_pipeline(pipeline, registry)
    passes: list[Pass] = []
    for item in pipeline:
        passes.extend(parse_pipeline(item, registry) if isinstance(item, str) else [item])
    return passes


def _safe_print(graph: Graph) -> Optional[str]:
    try:
        return print_graph(graph)
    except Exception:  # a broken graph may not even print; the failure message matters more
        return None


def run_passes(graph: Graph, pipeline: Pipeline, **options) -> Graph:
    """Run `pipeline` on `graph` in place and return it. `options` go to `PassManager`."""
    return PassManager(pipeline, **options).run(graph)
