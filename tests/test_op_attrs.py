"""Typed attributes and operand checks: hand-written or random IR gives an IRError naming the op, never a
Python exception from deep inside inference, a pass or the interpreter (issue 9)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompiler.errors import QCompilerError
from qcompiler.ir.attrs import REQUIRED, Attr
from qcompiler.ir.graph import Graph, IRError, Node
from qcompiler.ir.ops import OPS, infer_types
from qcompiler.ir.parser import parse
from qcompiler.ir.types import TensorType
from qcompiler.passes import run_passes
from qcompiler.passes.registry import DEFAULT_FLOAT_PIPELINE, PipelineError, parse_pipeline

_CONV = """graph @g(%x: f32[?,8,8,3]) {{
  %w = const f32[4,3,3,3] #000000
  %y = conv2d(%x, %w) {{{attrs}}} : f32[?,8,8,4]
  return %y
}}"""


def _one(op_line: str, x: str = "f32[?,8,8,3]") -> str:
    return f"graph @g(%x: {x}) {{\n  {op_line}\n  return %y\n}}"


HAND_WRITTEN = {
    "zero strides": (_CONV.format(attrs="strides=[0, 0]"), "strides"),
    "strides of length 3": (_CONV.format(attrs="strides=[1, 1, 1]"), "strides"),
    "fractional dilation": (_CONV.format(attrs="dilation=[1.5, 1]"), "dilation"),
    "unknown padding": (_CONV.format(attrs='padding="full"'), "padding"),
    "infinite reshape shape": (_one("%y = reshape(%x) {shape=[-1, 1e309]} : f32[?,192]"), "shape"),
    "NaN in reshape shape": (_one("%y = reshape(%x) {shape=[-1, nan]} : f32[?,192]"), "shape"),
    "reshape dim below -1": (_one("%y = reshape(%x) {shape=[-1, -4, -48]} : f32[?,192]"), "shape"),
    "infinite paddings": (_one("%y = pad(%x) {paddings=[[0, 0], [1e309, 0], [0, 0], [0, 0]]} : f32[?,9,8,3]"),
                          "paddings"),
    "negative paddings": (_one("%y = pad(%x) {paddings=[[0, 0], [-1, 0], [0, 0], [0, 0]]} : f32[?,7,8,3]"),
                          "paddings"),
    "paddings of the wrong length": (_one("%y = pad(%x) {paddings=[[0, 0], [1, 0]]} : f32[?,9,8,3]"), "pad"),
    "fractional concat axis": (_one("%y = concat(%x, %x) {axis=1.5} : f32[?,16,8,3]"), "axis"),
    "concat axis out of range": (_one("%y = concat(%x, %x) {axis=4} : f32[?,8,8,6]"), "axis"),
    "reduction axis out of range": (_one("%y = mean(%x) {axes=[7]} : f32[?,8,8]"), "axis"),
    "infinite reduction axis": (_one("%y = mean(%x) {axes=[1e309]} : f32[?,8,8]"), "axes"),
    "resize_nearest on rank 2": (_one("%y = resize_nearest(%x) {size=[4, 4]} : f32[?,4,4,8]", "f32[?,8]"),
                                 "rank 4"),
    "negative resize size": (_one("%y = resize_nearest(%x) {size=[-4, 4]} : f32[?,4,4,3]"), "size"),
    "resize size of length 3": (_one("%y = resize_nearest(%x) {size=[4, 4, 4]} : f32[?,4,4,3]"), "size"),
    "negative slice size": (_one("%y = slice(%x) {begin=[0, 0, 0, 0], size=[-1, -3, 2, 2]} : f32[?,2,2,2]"),
                            "size"),
    "slice begin past the end": (_one("%y = slice(%x) {begin=[0, 9, 0, 0], size=[-1, -1, 2, 2]} : f32[?,1,2,2]"),
                                 "begin"),
    "slice lists of the wrong length": (_one("%y = slice(%x) {begin=[0], size=[1]} : f32[1]"), "slice"),
    "NaN leaky_relu alpha": (_one("%y = leaky_relu(%x) {alpha=nan} : f32[?,8,8,3]"), "alpha"),
    "string softmax beta": (_one('%y = softmax(%x) {beta="big"} : f32[?,8,8,3]'), "beta"),
    "zero pool size": (_one("%y = max_pool2d(%x) {pool_size=[0, 2], strides=[1, 1]} : f32[?,8,7,3]"),
                       "pool_size"),
    "zero depth multiplier": (
        "graph @g(%x: f32[?,8,8,3]) {\n  %w = const f32[1,3,3,3] #000000\n"
        "  %y = depthwise_conv2d(%x, %w) {depth_multiplier=0} : f32[?,6,6,3]\n  return %y\n}", "depth_multiplier"),
    "unknown dimension in a weight shape": (
        "graph @g(%x: f32[?,8], %w: f32[4,?]) {\n"
        "  %y = fully_connected(%x, %w) : f32[?,4]\n  return %y\n}", "weights"),
    "unknown dimension in conv weights": (
        "graph @g(%x: f32[?,8,8,3], %w: f32[4,?,3,3]) {\n"
        "  %y = conv2d(%x, %w) : f32[?,8,8,4]\n  return %y\n}", "weights"),
    "fake_quant min NaN": (_one("%y = fake_quant(%x) {max=1.0, min=nan} : f32[?,8,8,3]"), "min"),
    "fake_quant axis 1.5": (_one("%y = fake_quant(%x) {axis=1.5, weights=true} : f32[?,8,8,3]"), "axis"),
    "batch_norm negative epsilon": (
        "graph @g(%x: f32[?,3]) {\n  %p = const f32[3] dense<[1.0, 1.0, 1.0]>\n"
        "  %y = batch_norm(%x, %p, %p, %p, %p) {epsilon=-1.0} : f32[?,3]\n  return %y\n}", "epsilon"),
}


@pytest.mark.parametrize("case", list(HAND_WRITTEN))
def test_hand_written_ir_gives_an_ir_error_naming_the_op(case):
    text, needle = HAND_WRITTEN[case]
    with pytest.raises(IRError) as info:
        graph = parse(text)
        run_passes(graph, DEFAULT_FLOAT_PIPELINE)  # only reached if parsing accepted it
    message = str(info.value)
    assert needle in message, message


def test_attribute_errors_say_what_was_expected():
    with pytest.raises(IRError, match=r"conv2d.*attribute 'strides' must be a list of integers of length 2, "
                                      r"each >= 1, got \[0, 0\]"):
        parse(_CONV.format(attrs="strides=[0, 0]"))


@pytest.mark.parametrize("pipeline", ["fold-constants{max_elements=-1}", "quantize-weights{min_elements=-5}",
                                      "lower-to-int{default_ranges=[nan,1]}", "lower-to-int{input_stats=[0,inf]}"])
def test_pass_options_refuse_negative_counts_and_non_finite_numbers(pipeline):
    with pytest.raises(PipelineError, match="must not be negative|must be a finite number"):
        parse_pipeline(pipeline)


# ----------------------------------------------------------------------------------------------------
# random attributes and operand types for every op
# ----------------------------------------------------------------------------------------------------
_SCALARS = st.one_of(
    st.integers(-3, 9), st.sampled_from([2**31, -(2**31) - 1, 2**40, 10**30]),
    st.sampled_from([0.0, 1.5, -2.0, math.inf, -math.inf, math.nan, 1e309, 3e38]),
    st.booleans(), st.none(),
    st.sampled_from(["same", "valid", "relu", "tanh", "i8", "i16", "f32", "bogus", ""]),
)
_HOSTILE = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=5), max_leaves=12)


def _well_typed(attr: Attr) -> st.SearchStrategy:
    """Values of the declared kind (often valid), so inference gets past the attribute checks."""
    low = attr.minimum if attr.minimum is not None else -4
    small = st.integers(low, 6)
    if attr.kind == "int":
        return small
    if attr.kind == "real":
        return st.floats(-4, 4)
    if attr.kind == "bool":
        return st.booleans()
    if attr.kind == "enum":
        return st.sampled_from(attr.choices)
    if attr.kind == "ints":
        return st.lists(small, min_size=attr.length or 0, max_size=attr.length or 5)
    if attr.kind == "int_pairs":
        return st.lists(st.tuples(small, small).map(list), max_size=5)
    return st.just(np.zeros((2, 3), np.float32))


_DIM = st.one_of(st.none(), st.integers(0, 9))
_TYPE = st.builds(TensorType, st.lists(_DIM, max_size=5).map(tuple),
                  st.sampled_from(["f32", "f32", "f32", "i8", "i32", "bool"]))


@st.composite
def _node_parts(draw, op: str) -> tuple[list[TensorType], dict]:
    definition = OPS[op]
    hi = definition.max_operands if definition.max_operands is not None else definition.min_operands + 3
    count = draw(st.integers(max(0, definition.min_operands - 1), hi + 1))
    types = [draw(_TYPE) for _ in range(count)]
    attrs = {}
    for key, attr in definition.signature.items():
        choice = draw(st.sampled_from(["omit", "typed", "typed", "typed", "hostile"]))
        if choice == "typed":
            attrs[key] = draw(_well_typed(attr))
        elif choice == "hostile":
            attrs[key] = draw(_HOSTILE)
    if draw(st.integers(0, 20)) == 0:
        attrs["bogus"] = 1
    return types, attrs


@pytest.mark.parametrize("op", sorted(set(OPS) - {"const"}))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_type_inference_raises_only_ir_errors(op, data):
    types, attrs = data.draw(_node_parts(op))
    graph = Graph("fuzz")
    operands = [graph.add_input(f"x{i}", t) for i, t in enumerate(types)]
    node = Node(op, operands, dict(attrs))
    try:
        results = infer_types(node)
    except QCompilerError:
        return
    assert all(isinstance(t, TensorType) for t in results)
    _check_compute_agrees(node, results)


def _check_compute_agrees(node: Node, results: list[TensorType]) -> None:
    """When inference accepts small, fully known float operands, the float semantics run and give the inferred
    shapes (or refuse with an IRError)."""
    types = [v.type for v in node.operands]
    if node.op in ("quantize", "dequantize", "cast", "fake_quant"):
        return
    if not all(t.is_static and t.dtype == "f32" for t in types + results):
        return
    if any(not 0 < t.num_elements() <= 4096 for t in types + results):
        return  # empty tensors: reductions such as softmax have nothing to reduce
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(t.shape).astype(np.float32) for t in types]
    try:
        out = OPS[node.op].compute(arrays, node.attrs)
    except IRError:
        return
    assert [tuple(a.shape) for a in out] == [t.shape for t in results], node.op


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_default_passes_its_declaration(op):
    for key, attr in OPS[op].signature.items():
        if attr.default is not REQUIRED:
            attr.check(key, attr.default)


# ----------------------------------------------------------------------------------------------------
# one attribute of a valid graph mutated, then verified, optimized and written
# ----------------------------------------------------------------------------------------------------
def _mutation_cases() -> dict:
    from tests.test_backend import FLOAT_CASES

    return FLOAT_CASES


@pytest.mark.parametrize("case", sorted(_mutation_cases()))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_attribute_gives_only_qcompiler_errors(case, data):
    from qcompiler.backend.tflite_writer import write_tflite
    from qcompiler.ir.verifier import verify

    graph = _mutation_cases()[case]()
    nodes = [n for n in graph.nodes if OPS[n.op].signature and n.op != "const"]
    if not nodes:
        return
    node = data.draw(st.sampled_from(nodes))
    key = data.draw(st.sampled_from(sorted(OPS[node.op].signature)))
    attr = OPS[node.op].signature[key]
    node.attrs[key] = data.draw(st.one_of(_well_typed(attr), _HOSTILE))
    try:
        verify(graph)
        run_passes(graph, DEFAULT_FLOAT_PIPELINE)
        write_tflite(graph)
    except QCompilerError:
        pass
