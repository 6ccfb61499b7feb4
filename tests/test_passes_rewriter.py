"""The pattern rewriter: matching, captures, checks with reasons, the worklist driver and its counts."""
from __future__ import annotations

import numpy as np
import pytest

from qcompiler.ir.graph import Graph, IRError
from qcompiler.ir.interpreter import run
from qcompiler.ir.types import TensorType
from qcompiler.passes.rewriter import Const, Match, Pat, Rewriter, Rule, Var, apply_rules, constant_scalar


def conv_relu_graph(extra_user: bool = False) -> Graph:
    g = Graph("g")
    x = g.add_input("x", TensorType((None, 4, 4, 2)))
    w = g.const(np.ones((3, 1, 1, 2), np.float32), "w")
    c = g.op("conv2d", x, w, name="conv", layer="conv2d")
    r = g.op("relu", c, name="act")
    g.outputs = [r, g.op("tanh", c, name="other")] if extra_user else [r]
    return g


def _fuse(m: Match, rw: Rewriter) -> None:
    rw.set_attr(m["conv"], "activation", "relu")
    rw.replace_value(m["act"], m["conv"].result)


FUSE = Rule("fuse", Pat("relu", Pat("conv2d", capture="conv", one_use=True), capture="act"), _fuse,
            check=lambda m: None if m["conv"].attrs["activation"] == "none" else "conv already has an activation")


def test_match_captures_nodes_and_values() -> None:
    g = conv_relu_graph()
    pattern = Pat("relu", Pat("conv2d", Var("x"), Const("w"), capture="conv"), capture="act")
    m = Rule("r", pattern, _fuse).match(g.find("relu")[0])
    assert m is not None
    assert m["act"].op == "relu" and m["conv"].op == "conv2d"
    assert m["x"] is g.inputs[0] and m["w"].is_constant
    assert Rule("r", Pat("relu", Pat("conv2d", Const("x"))), _fuse).match(g.find("relu")[0]) is None


def test_counts_of_a_fusion() -> None:
    g = conv_relu_graph()
    stats = apply_rules(g, [FUSE])
    assert stats.applied == {"fuse": 1}
    assert (stats.inserted, stats.erased, stats.replaced, stats.attrs_changed) == (0, 1, 1, 1)
    assert g.op_counts() == {"const": 1, "conv2d": 1}
    assert g.outputs[0].name == "act"  # the conv result took over the output name
    g.verify()


def test_one_use_predicate_blocks_shared_producers() -> None:
    g = conv_relu_graph(extra_user=True)
    stats = apply_rules(g, [FUSE])
    assert not stats.applied and not stats.modified
    assert g.op_counts()["relu"] == 1


def test_check_failures_are_collected_with_reasons() -> None:
    g = conv_relu_graph()
    g.find("conv2d")[0].attrs["activation"] = "relu6"
    stats = apply_rules(g, [FUSE])
    assert not stats.applied
    assert [str(f) for f in stats.failures] == [
        "fuse did not apply to %act = relu: conv already has an activation"]


def test_commutative_and_repeated_captures() -> None:
    g = Graph("g")
    x = g.add_input("x", TensorType((None, 3)))
    y = g.add_input("y", TensorType((None, 3)))
    zero = g.const(np.zeros((), np.float32), "zero")
    a = g.op("maximum", zero, x, name="a")
    sq = g.op("mul", x, x, name="sq")
    xy = g.op("mul", x, y, name="xy")
    g.outputs = [a, sq, xy]

    relu = Pat("maximum", "v", Const(where=lambda v: constant_scalar(v) == 0.0), commutative=True)
    square = Pat("mul", "v", "v")
    assert Rule("r", relu, _fuse).match(a.producer)["v"] is x
    assert Rule("s", square, _fuse).match(sq.producer)["v"] is x
    assert Rule("s", square, _fuse).match(xy.producer) is None


def test_new_nodes_are_revisited_and_counted() -> None:
    """tanh(x) -> relu(mul(x, 1)) -> relu(x): three rules chaining through the worklist."""
    g = Graph("g")
    x = g.add_input("x", TensorType((None, 3)))
    g.outputs = [g.op("tanh", x, name="t")]

    def to_mul_relu(m: Match, rw: Rewriter) -> None:
        one = rw.const(np.ones((), np.float32), name="one")
        rw.replace_value(m.root, rw.op("relu", rw.op("mul", m["x"], one)))

    def drop_mul_one(m: Match, rw: Rewriter) -> None:
        rw.replace_value(m.root, m["x"])

    rules = [
        Rule("tanh-to-relu", Pat("tanh", "x"), to_mul_relu),
        Rule("mul-one", Pat("mul", "x", Const(where=lambda v: constant_scalar(v) == 1.0)), drop_mul_one),
    ]
    stats = apply_rules(g, rules)
    assert stats.applied == {"tanh-to-relu": 1, "mul-one": 1}
    assert stats.inserted == 3  # const, mul, relu
    assert stats.erased == 3  # tanh, mul, and the constant left without users
    assert stats.replaced == 2
    assert g.op_counts() == {"relu": 1}
    assert g.outputs[0].name == "t" and g.outputs[0].producer.operands[0] is x
    g.verify()


def test_rules_that_undo_each_other_are_stopped() -> None:
    g = Graph("g")
    x = g.add_input("x", TensorType((None, 3)))
    g.outputs = [g.op("relu", g.op("tanh", x), name="r")]

    def swap(to: str):
        return lambda m, rw: rw.replace_value(m.root, rw.op(to, m["x"]))

    rules = [Rule("a", Pat("tanh", "x"), swap("sigmoid")), Rule("b", Pat("sigmoid", "x"), swap("tanh"))]
    with pytest.raises(IRError, match="did not settle"):
        apply_rules(g, rules, max_rewrites=50)


def test_any_op_pattern_and_erasing_dead_operands() -> None:
    g = Graph("g")
    x = g.add_input("x", TensorType((None, 2)))
    a = g.const(np.array([1.0, 2.0], np.float32), "a")
    b = g.const(np.array([3.0, 4.0], np.float32), "b")
    s = g.op("add", a, b, name="s")
    g.outputs = [g.op("mul", x, s, name="y")]

    def fold(m: Match, rw: Rewriter) -> None:
        rw.replace_value(m.root, rw.const(run_single(m.root)))

    all_const = Pat(None, where=lambda n: n.op != "const" and all(v.is_constant for v in n.operands))
    stats = apply_rules(g, [Rule("fold", all_const, fold)])
    assert stats.applied == {"fold": 1} and stats.erased == 3 and stats.inserted == 1
    assert g.value("s").is_constant
    np.testing.assert_array_equal(g.value("s").data, [4.0, 6.0])
    out = run(g, [np.ones((1, 2), np.float32)])[0]
    np.testing.assert_array_equal(out, [[4.0, 6.0]])


def run_single(node) -> np.ndarray:
    from qcompiler.ir.ops import compute

    return compute(node, [v.data for v in node.operands])[0]
