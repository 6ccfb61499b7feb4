"""The converter's op order (qcompiler/quant/op_order.py): TensorFlow's GraphDef import order, replayed on our graph.

The differential checks are in tests/passes/lower-to-int.qir (input_two_same_scale_users) and
tests/test_converter_rules.py (op_order); these tests pin the walk itself and its inputs."""
from __future__ import annotations

import re

from qcompiler.ir.parser import parse
from qcompiler.quant.op_order import KERAS_OPS_TF_NAMES, converter_op_order


def _ordered_layers(text: str) -> list[str]:
    graph = parse(text)
    rank = converter_op_order(graph)
    nodes = sorted((n for n in graph.nodes if id(n) in rank), key=lambda n: rank[id(n)])
    return [n.layer for n in nodes]


def test_users_of_a_tensor_come_out_by_ascending_layer_name() -> None:
    # Probed on TF 2.21: three Conv2D layers on one input named zz, aa, mm (in that call order) are CONV_2D aa, mm,
    # zz in the converter's float model, then the concat.
    text = """graph @net(%x: f32[?,8,8,3]) {
  %w0 = const f32[4,3,3,3] #000001
  %a = conv2d(%x, %w0) {padding="same"} : f32[?,8,8,4]  # layer zz
  %w1 = const f32[4,3,3,3] #000002
  %b = conv2d(%x, %w1) {padding="same"} : f32[?,8,8,4]  # layer aa
  %w2 = const f32[4,3,3,3] #000003
  %c = conv2d(%x, %w2) {padding="same"} : f32[?,8,8,4]  # layer mm
  %y = concat(%a, %b, %c) {axis=3} : f32[?,8,8,12]  # layer cat
  return %y
}"""
    assert _ordered_layers(text) == ["aa", "mm", "zz", "cat"]


def test_a_weighted_layer_reaches_its_users_first() -> None:
    # Probed on TF 2.21 (the same Keras model, named net): FULLY_CONNECTED aa, CONCATENATION, FULLY_CONNECTED zz,
    # MAXIMUM. Roots go from the largest name down, here the input "x" first ("x" > "net_1..."): its users by
    # descending name, so zz's branch (zz, then the maximum) finishes first and comes last; the concat, reached
    # through aa, comes before it although its name sorts last (random seed 1119's MAXIMUM/CONCATENATION).
    text = """graph @net(%x: f32[?,4]) {
  %w0 = const f32[4,4] #000001
  %a = fully_connected(%x, %w0) : f32[?,4]  # layer zz
  %m = maximum(%x, %a) : f32[?,4]  # layer b_max
  %w1 = const f32[4,4] #000002
  %b = fully_connected(%x, %w1) : f32[?,4]  # layer aa
  %c = concat(%x, %b) {axis=1} : f32[?,8]  # layer z_cat
  return %m, %c
}"""
    assert _ordered_layers(text) == ["aa", "z_cat", "zz", "b_max"]


def test_every_keras_operation_the_frontend_translates_has_its_tensorflow_name() -> None:
    from qcompiler.frontend.keras_ops import OPERATIONS

    snake = {re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower() for cls in OPERATIONS}
    assert snake <= set(KERAS_OPS_TF_NAMES), sorted(snake - set(KERAS_OPS_TF_NAMES))


def test_the_frontend_records_keras_ops_calls() -> None:
    import keras

    import qcompiler

    x = keras.Input((4,), name="x")
    y = keras.layers.Dense(4, name="dense")(x)
    model = keras.Model(x, keras.ops.minimum(y, 1.0))
    graph = qcompiler.import_keras(model)
    calls = {n.layer for n in graph.nodes if n.op == "minimum"}
    assert calls and calls <= graph.op_calls and "dense" not in graph.op_calls
    assert graph.clone().op_calls == graph.op_calls
    assert graph.variable_layers == {"dense"} and graph.clone().variable_layers == graph.variable_layers


def test_a_constant_kept_as_an_attribute_is_a_root_of_its_own() -> None:
    # Random seed 2015, probed on TF 2.21 (the calibrated float model): ELU, TANH, MAXIMUM, RESHAPE, GELU. The
    # keras.ops.reshape's shape is a Const node ("random_2015_1/Reshape/shape") that the walk explores before the
    # graph input, so RESHAPE (and the GELU after it) finish first and come after the MAXIMUM, although "Reshape"
    # sorts before "m2015_maximum_10" among the tanh's users.
    text = """graph @random_2015(%in1: f32[?,9,6]) {
  %e = elu(%in1) : f32[?,9,6]  # layer elu_1
  %t = tanh(%e) : f32[?,9,6]  # layer m2015_act_1
  %m = maximum(%t, %in1) : f32[?,9,6]  # layer m2015_maximum_10
  %r = reshape(%t) {shape=[-1, 6, 9]} : f32[?,6,9]  # layer reshape_1
  %g = gelu(%r) : f32[?,6,9]  # layer gelu_1
  return %m, %g
}"""
    graph = parse(text)
    graph.op_calls |= {"elu_1", "reshape_1", "gelu_1"}
    rank = converter_op_order(graph)
    layers = [n.layer for n in sorted((n for n in graph.nodes if id(n) in rank), key=lambda n: rank[id(n)])]
    assert layers == ["elu_1", "m2015_act_1", "m2015_maximum_10", "reshape_1", "gelu_1"]


def test_a_layer_with_variables_is_reached_from_resources() -> None:
    # Probed on TF 2.21 (this Keras model, named net; fresh BatchNormalization, so its ADD of a zero shift is gone):
    # FULLY_CONNECTED a_dense, MUL b_bn, MAXIMUM, RELU. The folded batch norm's constants are its variables,
    # resource arguments explored before every Const: as Consts (explored after a_dense's kernel) b_bn would come
    # first.
    text = """graph @net(%in0: f32[?,4]) {
  %s = const f32[4] dense<[0.5, 1.0, 1.5, 2.0]>
  %b = mul(%in0, %s) : f32[?,4]  # layer b_bn
  %w = const f32[4,4] #000001
  %a = fully_connected(%in0, %w) : f32[?,4]  # layer a_dense
  %m = maximum(%a, %b) : f32[?,4]  # layer m_max
  %r = relu(%b) : f32[?,4]  # layer r_relu
  return %m, %r
}"""
    graph = parse(text)
    graph.variable_layers |= {"a_dense", "b_bn"}
    rank = converter_op_order(graph)
    layers = [n.layer for n in sorted((n for n in graph.nodes if id(n) in rank), key=lambda n: rank[id(n)])]
    assert layers == ["a_dense", "b_bn", "m_max", "r_relu"]
