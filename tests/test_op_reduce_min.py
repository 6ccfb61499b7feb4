"""reduce_min, the worked example of docs/architecture.md "Adding an op": one OpDef, one writer entry, one
version rule. Checked in every mode against the IR interpreter, with TFLite's reference kernels."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import tflite
from tflite.BuiltinOperator import BuiltinOperator as B

import qcompiler
from qcompiler.backend.tflite_writer import write_tflite
from qcompiler.ir.graph import Graph
from qcompiler.ir.interpreter import run
from qcompiler.ir.parser import parse
from qcompiler.ir.printer import print_graph
from qcompiler.ir.types import TensorType
from tests.tflite_run import run_tflite


def _graph(seed: int = 0) -> Graph:
    """conv2d -> reduce_min over height and width -> fully_connected: the min shares the conv's parameters."""
    rng = np.random.default_rng(seed)
    g = Graph("reduce_min")
    x = g.add_input("x", TensorType((None, 6, 5, 3), "f32"))
    w = g.const(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    b = g.const(rng.standard_normal(8).astype(np.float32), "b")
    h = g.op("conv2d", x, w, b, padding="same", name="conv")
    m = g.op("reduce_min", h, axes=[1, 2], keepdims=False, name="min")
    w2 = g.const(rng.standard_normal((4, 8)).astype(np.float32), "w2")
    g.outputs = [g.op("fully_connected", m, w2, name="fc")]
    return g


def _data(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 6, 5, 3)).astype(np.float32)


def _opcode_versions(model: bytes) -> dict[int, int]:
    m = tflite.Model.GetRootAs(model, 0)
    return {m.OperatorCodes(i).BuiltinCode(): m.OperatorCodes(i).Version() for i in range(m.OperatorCodesLength())}


def test_reduce_min_prints_parses_and_evaluates():
    g = _graph()
    text = print_graph(g)
    assert "reduce_min(%conv) {axes=[1, 2]}" in text
    assert print_graph(parse(text)) == text
    x = _data(2, 1)
    h = run(_graph(), [x])  # the float semantics: min over the two spatial axes of the conv output
    assert h[0].shape == (2, 4)


@pytest.mark.parametrize("mode,version", [("float32", 1), ("dynamic", 1), ("float16", 1)])
def test_reduce_min_float_modes_match_the_interpreter(mode, version):
    data = qcompiler.compile(_graph(), mode=mode)
    assert _opcode_versions(data)[B.REDUCE_MIN] == version
    x = _data(3, 2)
    (got,) = run_tflite(data, [x])
    (want,) = run(_graph(), [x])
    assert np.allclose(got, want, rtol=1e-2 if mode != "float32" else 1e-5, atol=1e-2 if mode != "float32" else 1e-5)


@pytest.mark.parametrize("mode,version", [("int8", 2), ("int16x8", 3)])
def test_reduce_min_integer_modes_match_the_interpreter(mode, version):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = qcompiler.quantize(_graph(), mode, _data(32, 3), io="float")
    node = graph.find("reduce_min")[0]
    # the SAME rule: the min keeps its operand's dtype and parameters
    result, operand = node.result.type, node.operands[0].type
    assert (result.dtype, result.quant) == (operand.dtype, operand.quant)
    assert result.dtype == {"int8": "i8", "int16x8": "i16"}[mode]
    data = write_tflite(graph)
    assert _opcode_versions(data)[B.REDUCE_MIN] == version
    x = _data(5, 4)
    (got,), (want,) = run_tflite(data, [x]), run(graph, [x])
    out_scale = graph.outputs[0].producer.operands[0].type.quant.scale[0]
    assert np.max(np.abs(got - want)) <= out_scale * 1.01  # within one step of the output
