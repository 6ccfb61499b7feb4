"""Graph code that scales: a 3,000-layer Keras model compiles in every mode at Python's default recursion limit,
and the graph operations behind it (clone, insert, remove, topological sort) are iterative and correct on deep
graphs. Timing is not asserted here; benchmarks/scaling.py shows the time is linear in the depth.

Importing TensorFlow raises the recursion limit to 3000 (jedi, pulled in by its imports, calls
sys.setrecursionlimit(3000)); these tests put it back to Python's default of 1000 (lowering it, never raising).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import qcompiler
from qcompiler.backend.tflite_writer import BackendError, write_tflite
from qcompiler.ir.graph import Graph, IRError
from qcompiler.ir.interpreter import run
from qcompiler.ir.types import TensorType
from tests.deep_models import count_layers, deep_inputs, deep_model
from tests.tflite_run import run_tflite

DEFAULT_RECURSION_LIMIT = 1000
DEPTH = 3000


@pytest.fixture(scope="module", autouse=True)
def default_recursion_limit():
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(min(previous, DEFAULT_RECURSION_LIMIT))
    yield
    sys.setrecursionlimit(previous)


@pytest.fixture(scope="module")
def deep():
    assert sys.getrecursionlimit() == DEFAULT_RECURSION_LIMIT
    model = deep_model(DEPTH)
    x = deep_inputs(16, seed=1)
    return model, x, np.asarray(model(x))


# ----------------------------------------------------------------------------------------------------
# the 3,000-layer model in every mode
# ----------------------------------------------------------------------------------------------------
def test_deep_model_is_deep_and_input_dependent(deep):
    model, x, reference = deep
    assert count_layers(model) == DEPTH
    assert reference.std(axis=0).mean() > 0.05 * np.abs(reference).mean()  # the input still matters


def test_deep_model_imports_as_one_deep_graph(deep):
    model, x, reference = deep
    graph = qcompiler.import_keras(model)
    assert sys.getrecursionlimit() == DEFAULT_RECURSION_LIMIT
    assert len([n for n in graph.nodes if n.op != "const"]) >= DEPTH
    assert _longest_chain(graph) >= DEPTH  # flattened: the nested stages make one chain
    np.testing.assert_allclose(run(graph, x)[0], reference, rtol=0, atol=1e-5 * np.abs(reference).max())


def _longest_chain(graph: Graph) -> int:
    depth: dict[int, int] = {}
    for node in graph.nodes:
        depth[id(node)] = 1 + max((depth.get(id(v.producer), 0) for v in node.operands if v.producer), default=0)
    return max(depth.values())


# mode -> (bound on max error relative to max|Keras|, bound on correlation) on 16 random inputs; the integer modes
# requantize ~600 times along the chain and are calibrated on 8 other samples, hence the loose bounds
_BOUNDS = {"float32": (1e-5, 0.9999), "dynamic": (0.03, 0.999), "float16": (0.01, 0.9999),
           "int16x8": (0.3, 0.99), "int8": (1.5, 0.9)}


@pytest.mark.parametrize("mode", list(_BOUNDS))
def test_deep_model_compiles_and_runs_in_every_mode(deep, mode):
    model, x, reference = deep
    options = {"calibration_data": deep_inputs(8, seed=2)} if mode in ("int8", "int16x8") else {}
    model_bytes = qcompiler.compile(model, mode, **options)
    assert sys.getrecursionlimit() == DEFAULT_RECURSION_LIMIT
    got = _run_float(model_bytes, x)
    error = np.abs(got - reference).max() / np.abs(reference).max()
    correlation = np.corrcoef(got.ravel(), reference.ravel())[0, 1]
    max_error, min_correlation = _BOUNDS[mode]
    assert error <= max_error and correlation >= min_correlation, (mode, error, correlation)


def _run_float(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Run with float inputs/outputs, quantizing and dequantizing at an integer model's boundary."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
    y = run_tflite(model_bytes, [x])[0]
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y


# ----------------------------------------------------------------------------------------------------
# graph operations on deep graphs
# ----------------------------------------------------------------------------------------------------
def _chain(length: int) -> Graph:
    """x -> fully_connected -> relu -> add(., previous) -> ... : `length` nodes after the constants."""
    g = Graph("chain")
    x = g.add_input("x", TensorType((None, 4)))
    w = g.const(np.eye(4, dtype=np.float32) * 0.5, name="w")
    previous = value = x
    for i in range(length // 3):
        h = g.op("fully_connected", value, w, name=f"fc{i}")
        h = g.op("relu", h, name=f"relu{i}")
        previous, value = value, g.op("add", h, previous, name=f"add{i}", activation="relu6")
    g.outputs = [value]
    g.verify()
    return g


def test_clone_of_a_deep_graph_is_faithful_and_independent():
    g = _chain(6000)
    copy = g.clone()
    assert str(copy) == str(g)
    copy.verify()
    assert copy._names == g._names and copy._counter == g._counter
    for a, b in zip(g.nodes, copy.nodes):
        assert a is not b and a.attrs == b.attrs and a.attrs is not b.attrs
        assert [(u.node.results[0].name, u.index) for u in a.results[0].uses] == \
               [(u.node.results[0].name, u.index) for u in b.results[0].uses]
    assert copy.value("w").data is g.value("w").data  # constants shared (read-only)
    # editing the copy leaves the original alone, attribute lists included
    original_weights = g.value("w").data
    copy.value("w").producer.attrs["value"] = np.zeros((4, 4), np.float32)
    copy.value("add7").producer.attrs["activation"] = "none"
    fc = copy.value("fc3").producer
    copy.replace_all_uses(fc.result, copy.inputs[0])
    copy.remove(fc)
    assert g.value("w").data is original_weights and g.value("fc3").producer.graph is g
    assert g.value("add7").producer.attrs["activation"] == "relu6"
    g.verify()
    copy.verify()
    assert copy.unique_name("fresh") == "fresh" and "fresh" not in g._names


def test_clone_copies_nested_attribute_lists():
    g = Graph()
    x = g.add_input("x", TensorType((None, 4, 4, 2)))
    g.outputs = [g.op("pad", x, paddings=[[0, 0], [1, 1], [1, 1], [0, 0]])]
    copy = g.clone()
    copy.nodes[0].attrs["paddings"][1][0] = 7
    assert g.nodes[0].attrs["paddings"][1][0] == 1


def test_insert_remove_and_move_keep_the_order_on_a_deep_graph():
    g = _chain(3000)
    relus = g.find("relu")
    for relu in relus:  # a clamp after every relu, then one before it: 2,000 insertions in the middle
        after = g.add_node("relu6", [relu.result], after=relu)
        before = g.add_node("identity", [relu.operands[0]], before=relu)
        relu.set_operand(0, before.result)
        for use in list(relu.result.uses):
            if use.node is not after:
                use.node.set_operand(use.index, after.result)
    g.verify()
    order = {id(n): i for i, n in enumerate(g.nodes)}
    for relu in relus:
        assert order[id(relu.operands[0].producer)] == order[id(relu)] - 1
        assert order[id(relu.result.uses[0].node)] == order[id(relu)] + 1
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    before_removal = run(g, x)[0]
    for node in g.find("identity"):
        g.replace_node(node, [node.operands[0]])
    g.verify()
    np.testing.assert_array_equal(run(g, x)[0], before_removal)
    first, last = g.nodes[0], g.nodes[-1]
    g.move_before(last, first)  # now out of order; topo_sort repairs it
    with pytest.raises(IRError):
        g.verify()
    g.topo_sort()
    g.verify()


def test_editing_the_node_list_reorders_the_graph():
    g = _chain(30)
    g.nodes.reverse()
    with pytest.raises(IRError, match="used before it is defined"):
        g.verify()
    g.topo_sort()
    g.verify()
    snapshot = g.nodes
    g.remove(g.add_node("relu", [g.inputs[0]]))  # the graph changed: `snapshot` is now a plain copy
    snapshot.reverse()
    g.verify()
    with pytest.raises(IRError, match="appears twice"):
        g.nodes = [g.nodes[0]] * 2


def test_topo_sort_of_a_reversed_deep_graph():
    g = _chain(9000)
    expected = str(g)
    g.nodes = list(reversed(g.nodes))
    g.topo_sort()
    g.verify()
    assert sorted(str(g).splitlines()) == sorted(expected.splitlines())


def test_value_lookup_follows_edits():
    g = _chain(300)
    assert g.value("fc10").producer.op == "fully_connected"
    node = g.value("add5").producer
    g.rename(node.result, "renamed")
    assert g.value("renamed") is node.result
    with pytest.raises(KeyError):
        g.value("add5")
    new = g.op("relu", g.value("renamed"), name="add5")
    assert g.value("add5") is new
    g.remove(new.producer)
    with pytest.raises(KeyError):
        g.value("add5")


# ----------------------------------------------------------------------------------------------------
# the writer: extra outputs instead of a graph clone, shared and aligned constants
# ----------------------------------------------------------------------------------------------------
def test_extra_outputs_are_written_without_changing_the_graph():
    g = _chain(30)
    text = str(g)
    inner = [g.value("relu3"), g.value("fc5"), g.outputs[0], g.inputs[0]]  # an output and an input are skipped
    model = write_tflite(g, extra_outputs=inner)
    assert str(g) == text
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    outputs = run_tflite(model, [x])
    values = run(g, x, keep=True)
    assert len(outputs) == 3
    for got, name in zip(outputs, [g.outputs[0].name, "relu3", "fc5"]):
        np.testing.assert_allclose(got, values[name], rtol=1e-6, atol=1e-6)
    with pytest.raises(BackendError, match="not a value of graph"):
        write_tflite(g, extra_outputs=[_chain(3).outputs[0]])


def test_large_constants_are_deduplicated_and_aligned():
    import tflite

    g = Graph("big")
    x = g.add_input("x", TensorType((None, 300)))
    rng = np.random.default_rng(2)
    w1 = rng.normal(size=(300, 300)).astype(np.float32)
    w2 = w1.copy()
    w2[150, 7] += 1.0  # same size and fingerprint region mostly, different data
    a = g.op("fully_connected", x, g.const(w1, name="w1"))
    b = g.op("fully_connected", a, g.const(w1.copy(), name="w1_again"))
    c = g.op("fully_connected", b, g.const(w2, name="w2"))
    g.outputs = [c]
    data = write_tflite(g)
    model = tflite.Model.GetRootAsModel(data, 0)
    sizes = []
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            offset = buffer.DataAsNumpy().ctypes.data - np.frombuffer(data, np.uint8).ctypes.data
            assert offset % 16 == 0
            sizes.append(buffer.DataLength())
    assert sorted(sizes) == [w1.nbytes, w2.nbytes]  # w1 twice is stored once; w2 differs in one value
    inp = rng.normal(size=(2, 300)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(data, [inp])[0], run(g, inp)[0], rtol=1e-4, atol=1e-3)
