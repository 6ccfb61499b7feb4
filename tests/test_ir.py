"""IR core: graph editing invariants, verifier errors, text round trip, interpreter semantics."""
import numpy as np
import pytest

from qcompiler.ir import interpreter
from qcompiler.ir.graph import Graph, IRError
from qcompiler.ir.parser import ParseError, parse
from qcompiler.ir.printer import print_graph
from qcompiler.ir.types import QParams, TensorType
from qcompiler.ir.verifier import VerifyError


def small_graph() -> Graph:
    rng = np.random.default_rng(0)
    g = Graph("small")
    x = g.add_input("x", TensorType((None, 8, 8, 3)))
    w = g.const(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w", layer="conv")
    b = g.const(rng.normal(size=(4,)).astype(np.float32), "b", layer="conv")
    c = g.op("conv2d", x, w, b, padding="same", strides=[2, 2], activation="relu", name="c", layer="conv")
    d = g.op("depthwise_conv2d", c, g.const(rng.normal(size=(1, 3, 3, 8)).astype(np.float32)), depth_multiplier=2,
             padding="same", name="dw")
    m = g.op("mean", d, axes=[1, 2], name="gap")
    f = g.op("fully_connected", m, g.const(rng.normal(size=(5, 8)).astype(np.float32)), name="fc")
    g.outputs = [g.op("softmax", f, name="probs")]
    return g


def test_types_are_inferred_and_printed():
    g = small_graph()
    assert str(g.value("c").type) == "f32[?,4,4,4]"
    assert str(g.value("dw").type) == "f32[?,4,4,8]"
    assert str(g.value("probs").type) == "f32[?,5]"


def test_use_def_links_follow_edits():
    g = small_graph()
    c = g.value("c")
    assert [u.node.op for u in c.uses] == ["depthwise_conv2d"]
    relu = g.op("relu", c, name="r", after=c.producer)
    g.replace_all_uses(c, relu)
    relu.producer.set_operand(0, c)  # replace_all_uses also rewired relu's own operand
    g.verify()
    assert [u.node.op for u in c.uses] == ["relu"]
    with pytest.raises(IRError, match="still used by"):
        g.remove(c.producer)


def test_remove_refuses_graph_outputs():
    g = small_graph()
    with pytest.raises(IRError, match="graph outputs"):
        g.remove(g.outputs[0].producer)


def test_verifier_catches_out_of_order_nodes():
    g = small_graph()
    g.nodes.reverse()
    with pytest.raises(VerifyError, match="used before it is defined"):
        g.verify()
    g.topo_sort()
    g.verify()


def test_verifier_catches_wrong_result_type():
    g = small_graph()
    g.value("gap").type = TensorType((None, 9))
    with pytest.raises(VerifyError, match="gap"):
        g.verify()


def test_verifier_catches_stale_use_lists():
    g = small_graph()
    node = g.value("fc").producer
    node.operands[0] = g.value("c")  # bypasses set_operand: use lists go stale
    with pytest.raises(VerifyError):
        g.verify()


def test_shape_errors_name_the_layer():
    g = Graph()
    x = g.add_input("x", TensorType((None, 8, 8, 3)))
    w = g.const(np.zeros((4, 3, 3, 5), np.float32))
    with pytest.raises(IRError, match=r"conv2d \(Keras layer 'my_conv'\).*5 input channels"):
        g.op("conv2d", x, w, layer="my_conv")
    assert not x.uses  # the failed node left nothing behind


def test_round_trip_prints_identically():
    g = small_graph()
    text = print_graph(g)
    assert print_graph(parse(text)) == text


def test_full_constants_round_trip_runs_identically():
    g = small_graph()
    text = print_graph(g, full_constants=True)
    g2 = parse(text)
    x = np.random.default_rng(1).normal(size=(3, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(interpreter.run(g, x)[0], interpreter.run(g2, x)[0])
    assert print_graph(g2) == print_graph(g)


def test_elided_constants_need_their_data_to_run():
    g = small_graph()
    g2 = parse(print_graph(g))
    with pytest.raises(IRError, match="digest"):
        interpreter.run(g2, np.zeros((1, 8, 8, 3), np.float32))
    constants = {}
    from qcompiler.ir.printer import constant_digest
    for node in g.find("const"):
        constants[constant_digest(node.attrs["value"])] = node.attrs["value"]
    g3 = parse(print_graph(g), constants=constants)
    x = np.ones((1, 8, 8, 3), np.float32)
    np.testing.assert_array_equal(interpreter.run(g, x)[0], interpreter.run(g3, x)[0])


def test_quantized_types_round_trip():
    g = Graph("q")
    x = g.add_input("x", TensorType((None, 4)))
    t = TensorType((None, 4), "i8", QParams.per_tensor(0.0235, -128))
    q = g.add_node("quantize", [x], {}, result_types=[t], names=["q"]).result
    w = g.const(np.arange(-6, 6, dtype=np.int8).reshape(3, 4), "w")
    w.type = w.type.with_quant(QParams((0.1, 0.2, 0.3), (0, 0, 0), axis=0))
    g.outputs = [q, w]
    text = print_graph(g)
    assert "q<axis=0 [0.1,0.2,0.3]:[0,0,0]>" in text and "q<0.0235:-128>" in text
    assert print_graph(parse(text)) == text


def test_parse_errors_point_at_the_line():
    text = "graph @g(%x: f32[?,4]) {\n  %y = relu(%z) : f32[?,4]\n  return %y\n}\n"
    with pytest.raises(ParseError, match="line 2: use of undefined value %z"):
        parse(text)
    with pytest.raises(ParseError, match="unknown op 'frobnicate'"):
        parse(text.replace("relu(%z)", "frobnicate(%x)"))
    with pytest.raises(IRError, match="ended before"):
        parse("graph @g(%x: f32[4]) {\n")


def test_interpreter_conv_matches_direct_loop():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
    w = rng.normal(size=(5, 3, 2, 3)).astype(np.float32)
    g = Graph()
    xi = g.add_input("x", TensorType((None, 7, 6, 3)))
    g.outputs = [g.op("conv2d", xi, g.const(w), padding="same", strides=[2, 1], dilation=[1, 2])]
    got = interpreter.run(g, x)[0]
    # direct definition: SAME padding puts the extra pixel after; dilation 2 on width
    eff_w = 3
    oh, ow = 4, 6
    pad_h = max((oh - 1) * 2 + 3 - 7, 0)
    pad_w = max((ow - 1) * 1 + eff_w - 6, 0)
    xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    want = np.zeros((2, oh, ow, 5), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * 2:i * 2 + 3, j:j + 3:2, :]  # kh=3, kw=2 dilated by 2
            want[:, i, j, :] = np.einsum("nhwc,ohwc->no", patch, w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_avg_pool_same_ignores_padding():
    g = Graph()
    x = g.add_input("x", TensorType((1, 3, 3, 1)))
    g.outputs = [g.op("avg_pool2d", x, pool_size=[2, 2], strides=[2, 2], padding="same")]
    out = interpreter.run(g, np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1))[0]
    np.testing.assert_allclose(out[0, :, :, 0], [[2.0, 3.5], [6.5, 8.0]])


def test_interpreter_rejects_wrong_input_shape():
    g = small_graph()
    with pytest.raises(ValueError, match="expects f32"):
        interpreter.run(g, np.zeros((1, 9, 8, 3), np.float32))
