"""Text tests for passes: tests/passes/*.qir.

Each file holds cases separated by `// -----` lines. A case is IR text, a `// RUN: <pipeline>` line (a case
without one uses the file's first RUN line; `$DEFAULT_FLOAT_PIPELINE` expands to that constant) and
`// CHECK...` lines matched against the printed result (see tests/filecheck.py). Every case is also checked
for numbers: the input and output graphs run in the numpy interpreter on the same random inputs and must agree.
`// NUMERICS: off` skips that for a case. A case whose result is an integer graph (lower-to-int) is checked
against TFLite instead: the integer interpreter's outputs must equal the written .tflite's under BUILTIN_REF.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from qcompiler.ir.interpreter import run
from qcompiler.ir.parser import parse
from qcompiler.ir.printer import print_graph
from qcompiler.passes import DEFAULT_FLOAT_PIPELINE, PassManager
from qcompiler.backend.tflite_writer import write_tflite
from tests.filecheck import filecheck, parse_checks
from tests.tflite_run import run_tflite

TEST_DIR = Path(__file__).parent / "passes"
_RUN = re.compile(r"^\s*//\s*RUN:\s*(.*)$", re.MULTILINE)
_SPLIT = re.compile(r"^\s*//\s*-----\s*$", re.MULTILINE)


def _cases() -> list[tuple[str, int, str, int]]:
    """(file name, case index, case text, first line number)."""
    cases = []
    for path in sorted(TEST_DIR.glob("*.qir")):
        text = path.read_text()
        line = 1
        for i, chunk in enumerate(_SPLIT.split(text)):
            cases.append((path.name, i, chunk, line))
            line += chunk.count("\n")
    return cases


def _pipeline(file_name: str, chunk: str) -> str:
    found = _RUN.search(chunk) or _RUN.search((TEST_DIR / file_name).read_text())
    assert found, f"{file_name}: no '// RUN: <pipeline>' line"
    return found.group(1).strip().replace("$DEFAULT_FLOAT_PIPELINE", DEFAULT_FLOAT_PIPELINE)


def random_inputs(graph, seed: int = 0, batch: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for value in graph.inputs:
        shape = [batch if d is None else d for d in value.type.shape]
        arrays.append((rng.normal(size=shape) * 2).astype(value.type.np_dtype))
    return arrays


def assert_same_outputs(before, after, seed: int = 0, rtol: float = 1e-4) -> None:
    inputs = random_inputs(before, seed)
    expected, got = run(before, inputs), run(after, inputs)
    assert len(expected) == len(got)
    for i, (e, g) in enumerate(zip(expected, got)):
        assert e.shape == g.shape, f"output {i}: shape {g.shape} != {e.shape}"
        scale = max(1.0, float(np.max(np.abs(e)))) if e.size else 1.0
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * scale, err_msg=f"output {i}")


@pytest.mark.parametrize("file_name,index,chunk,first_line", _cases(),
                         ids=[f"{c[0]}:{c[1]}" for c in _cases()])
def test_pass_text(file_name: str, index: int, chunk: str, first_line: int) -> None:
    pipeline = _pipeline(file_name, chunk)
    reference = parse(chunk)
    graph = parse(chunk)
    PassManager(pipeline).run(graph)
    output = print_graph(graph)
    filecheck(output, parse_checks(chunk, first_line))

    full = print_graph(graph, full_constants=True)
    assert print_graph(parse(full), full_constants=True) == full, "output does not round-trip through the parser"
    if re.search(r"^\s*//\s*NUMERICS:\s*off", chunk, re.MULTILINE):
        return
    for seed in range(2):
        if _is_integer_graph(graph):
            assert_same_as_tflite(graph, seed)
        else:
            assert_same_outputs(reference, graph, seed)


def _is_integer_graph(graph) -> bool:
    """Integer activations (not only integer weights, as after quantize-weights)."""
    return any(v.type.quant is not None and not v.type.is_float and not v.is_constant for v in graph.values())


def assert_same_as_tflite(graph, seed: int = 0) -> None:
    """The integer interpreter and BUILTIN_REF give identical outputs on random codes (or floats at float inputs).
    Batch 3, or 1 when a constant is concatenated with activations (it fixes the batch)."""
    rng = np.random.default_rng(seed)
    fixed = any(v.is_constant for n in graph.find("concat") for v in n.operands)
    batch = 1 if fixed else 3
    inputs = []
    for value in graph.inputs:
        shape = [batch if d is None else d for d in value.type.shape]
        if value.type.is_float:
            inputs.append((rng.normal(size=shape) * 2).astype(value.type.np_dtype))
        else:
            info = np.iinfo(value.type.np_dtype)
            inputs.append(rng.integers(info.min, info.max + 1, size=shape).astype(value.type.np_dtype))
    ours, theirs = run(graph, inputs), run_tflite(write_tflite(graph), inputs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        np.testing.assert_array_equal(a, b, err_msg=f"output {i}: integer interpreter != BUILTIN_REF")


def test_filecheck_itself() -> None:
    output = "graph @g {\n  %a = relu(%x)\n  %b = tanh(%a)\n  return %b\n}\n"

    def fails(checks: str) -> bool:
        try:
            filecheck(output, parse_checks(checks))
        except AssertionError:
            return True
        return False

    assert not fails("// CHECK: relu\n// CHECK-NEXT: %b = tanh({{%[a-z]}})\n// CHECK-NOT: relu\n// CHECK: return")
    assert not fails("// CHECK: %a =\n// CHECK-SAME: relu")
    assert fails("// CHECK: relu\n// CHECK-NEXT: return")  # not the next line
    assert fails("// CHECK: tanh\n// CHECK: relu")  # order matters
    assert fails("// CHECK: graph\n// CHECK-NOT: tanh\n// CHECK: return")  # excluded text in between
    assert fails("// CHECK: tanh\n// CHECK-NOT: return")  # trailing CHECK-NOT runs to the end
    assert fails("")  # a test without checks checks nothing
