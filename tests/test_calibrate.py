"""Calibration (qcompiler/passes/calibrate.py) against the converter's own calibrator, plus data checks.

The reference is TF's calibrator (tensorflow.lite.python.optimize.calibrator.Calibrator, what TFLiteConverter runs
before quantizing) on the float .tflite qcompiler writes, fed one sample at a time. It records, per float tensor,
the min/max of the values it saw, including values an in-place kernel wrote into the tensor's buffer. We check:
  - the in-place rule (`inplace_writes`): own ranges computed in TF's TFLite runtime configured like the
    calibrator, plus the rule's unions, equal the calibrator's record bit for bit for every float tensor;
  - `calibration_statistics` + the minmax observer: equal to the calibrator at every calibration point, bit for
    bit with calibrate_with="tensorflow", and to within 1e-5 of the range's span (a few float32 ulps, 1/400 of
    an int8 step) with the default XNNPACK executor and with numpy;
on the test zoo and on small graphs built to probe each condition of the rule.
"""
from __future__ import annotations

import functools
import io
import warnings
from typing import Callable, Optional

import numpy as np
import pytest

from qcompiler.api import calibration_statistics, float_graph, quantize, run_passes
from qcompiler.backend.tflite_executor import tensorflow_executor
from qcompiler.backend.tflite_writer import write_tflite
from qcompiler.ir.graph import Graph, Value
from qcompiler.ir.types import TensorType
from qcompiler.passes.calibrate import (CalibrationError, apply_ranges, collect_statistics, float_graph_of,
                                        inplace_writes, load_calibration_data, numpy_executor)
from qcompiler.passes.insert_fake_quant import InsertFakeQuant
from qcompiler.quant.math import FLT_MIN
from qcompiler.quant.observers import OBSERVERS, MinMaxObserver, make_observer
from tests.zoo import ZOO, random_batch, residual_block

SAMPLES = 6
SPAN_TOLERANCE = 1e-5


# ----------------------------------------------------------------------------------------------------
# the reference: TF's calibrator
# ----------------------------------------------------------------------------------------------------
def tf_calibrator_ranges(plain: Graph, arrays: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    """Tensor name -> (min, max) recorded by TF's calibrator on our float .tflite, one sample per step. The model
    keeps the graph's operator order (`operator_order="graph"`), as the converter's model does: the writer's default
    order, which keeps TFLite's runtime from overwriting a buffer still to be read, would hide the in-place unions
    the converter's calibrator records."""
    import tflite
    from tensorflow.lite.python.optimize import calibrator

    def samples():
        for i in range(len(arrays[0])):
            yield [a[i:i + 1] for a in arrays]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = write_tflite(plain, operator_order="graph")
        calibrated = calibrator.Calibrator(model).calibrate(samples)
    subgraph = tflite.Model.GetRootAsModel(calibrated, 0).Subgraphs(0)
    ranges = {}
    for i in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(i)
        q = tensor.Quantization()
        if q is not None and q.MinLength():
            ranges[tensor.Name().decode()] = (float(q.MinAsNumpy()[0]), float(q.MaxAsNumpy()[0]))
    return ranges


def own_ranges(plain: Graph, arrays: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    """Exact min/max of every float tensor (no in-place unions), computed like the calibrator computes them."""
    names = [v.name for v in plain.values() if not v.is_constant and v.type.is_float]
    runner = tensorflow_executor(plain, names)
    ranges: dict[str, tuple[float, float]] = {}
    for i in range(len(arrays[0])):
        values = runner([a[i:i + 1] for a in arrays])
        for name in names:
            lo, hi = float(values[name].min()), float(values[name].max())
            old = ranges.get(name, (lo, hi))
            ranges[name] = (min(old[0], lo), max(old[1], hi))
        del values
    return ranges


def recorded(lo: float, hi: float) -> tuple[float, float]:
    """The calibration logger starts max at FLT_MIN."""
    return lo, max(hi, FLT_MIN)


# ----------------------------------------------------------------------------------------------------
# models: the zoo and small IR graphs probing the in-place rule
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def zoo_case(name: str) -> tuple[Graph, list[np.ndarray]]:
    """(float graph, calibration arrays in graph input order); cached: tests must not change the graph."""
    model = ZOO[name]()
    graph = float_graph(model)
    batch = random_batch(model, SAMPLES, seed=5)
    arrays = batch if isinstance(batch, list) else [batch]
    if len(arrays) == 1:
        return graph, arrays
    by_name = dict(zip([t.name for t in model.inputs], arrays))
    return graph, [by_name[v.name] for v in graph.inputs]


class _Builder:
    """Small float graphs on x: [?, 6, 6, 4] with deterministic weights."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.g = Graph("probe")
        self.x = self.g.add_input("x", TensorType((None, 6, 6, 4)))

    def conv(self, name: str, offset: float = 0.0, source: Optional[Value] = None) -> Value:
        """A 1x1 conv of x (or `source`) whose output is spread around `offset`."""
        source = source if source is not None else self.x
        w = self.rng.normal(0, 0.5, (4, 1, 1, source.type.shape[-1])).astype(np.float32)
        b = np.full(4, offset, np.float32)
        return self.g.op("conv2d", source, self.g.const(w, f"{name}_w"), self.g.const(b, f"{name}_b"),
                         padding="same", strides=[1, 1], name=name)

    def fc(self, name: str, source: Value, units: int, offset: float = 0.0) -> Value:
        w = self.g.const(self.rng.normal(size=(units, source.type.shape[-1])).astype(np.float32), f"{name}_w")
        b = self.g.const(np.full(units, offset, np.float32), f"{name}_b")
        return self.g.op("fully_connected", source, w, b, name=name)

    def done(self, *outputs: Value) -> Graph:
        self.g.outputs = list(outputs)
        self.g.verify()
        return self.g


def _binary(op: str) -> Callable[[_Builder], Graph]:
    def build(b: _Builder) -> Graph:
        y = b.g.op(op, b.conv("a", 3.0), b.conv("b", -1.0), name="y")
        return b.done(b.conv("out", source=y))
    return build


def _graph_input_first(b: _Builder) -> Graph:
    return b.done(b.conv("out", source=b.g.op("add", b.x, b.conv("c", 3.0), name="y")))


def _broadcast(op: str, small_first: bool) -> Callable[[_Builder], Graph]:
    def build(b: _Builder) -> Graph:
        a = b.conv("a", 3.0)
        m = b.g.op("mean", b.conv("m0", 2.0), axes=[1, 2], keepdims=True, name="m")
        y = b.g.op(op, *((m, a) if small_first else (a, m)), name="y")
        return b.done(b.conv("out", source=y))
    return build


def _result_is_output(b: _Builder) -> Graph:
    return b.done(b.g.op("add", b.conv("a", 3.0), b.conv("c", -1.0), name="y"))


def _operand_is_output(b: _Builder) -> Graph:
    a = b.conv("a", 3.0)
    return b.done(b.conv("out", source=b.g.op("add", a, b.conv("c", -1.0), name="y")), a)


def _same_operand_twice(b: _Builder) -> Graph:
    a = b.conv("a", 3.0)
    return b.done(b.conv("out", source=b.g.op("mul", a, a, name="y")))


def _const_operand(first: bool) -> Callable[[_Builder], Graph]:
    def build(b: _Builder) -> Graph:
        k = b.g.const(np.full(4, 2.5, np.float32), "k")
        a = b.conv("a", 3.0)
        return b.done(b.conv("out", source=b.g.op("sub", *((k, a) if first else (a, k)), name="y")))
    return build


def _two_uses(later: bool) -> Callable[[_Builder], Graph]:
    def build(b: _Builder) -> Graph:
        a, c = b.conv("a", 3.0), b.conv("c", -1.0)
        other = None if later else b.conv("other", source=a)
        y = b.g.op("add", a, c, name="y")
        other = b.conv("other", source=a) if later else other
        return b.done(b.conv("out", source=y), other)
    return build


def _both_used_twice(b: _Builder) -> Graph:
    a, c = b.conv("a", 3.0), b.conv("c", -1.0)
    y = b.g.op("add", a, c, name="y")
    return b.done(b.conv("out", source=y), b.conv("o1", source=a), b.conv("o2", source=c))


def _reshaped(root_shared: bool) -> Callable[[_Builder], Graph]:
    def build(b: _Builder) -> Graph:
        a, c = b.conv("a", 3.0), b.conv("c", -1.0)
        y = b.g.op("add", b.g.op("reshape", a, shape=[-1, 6, 24], name="ra"),
                   b.g.op("reshape", c, shape=[-1, 6, 24], name="rc"), name="y")
        outputs = [b.fc("out", y, 3)] + ([b.conv("other", source=a)] if root_shared else [])
        return b.done(*outputs)
    return build


def _chain(b: _Builder) -> Graph:
    a, c, d = b.conv("a", 3.0), b.conv("c", 4.0), b.conv("d", 6.0)
    y1 = b.g.op("add", a, c, activation="relu", name="y1")
    y2 = b.g.op("mul", d, y1, name="y2")  # d, the first single-use operand, is overwritten, not y1
    y3 = b.g.op("sub", y2, c, name="y3")  # c has two uses: y2 is overwritten
    return b.done(b.conv("out", source=y3))


def _tiny_add(units: int) -> Callable[[_Builder], Graph]:
    def build(b: _Builder) -> Graph:
        flat = b.g.op("flatten", b.x, name="flat")
        y = b.g.op("add", b.fc("a", flat, units, 3.0), b.fc("c", flat, units, -1.0), name="y")
        return b.done(b.fc("out", y, 2))
    return build


def _softmax(into_conv: bool) -> Callable[[_Builder], Graph]:
    def build(b: _Builder) -> Graph:
        s = b.g.op("softmax", b.conv("a", 20.0), name="s")
        return b.done(b.conv("out", source=s) if into_conv else s)
    return build


def _softmax_chain(runtime_batch: bool) -> Callable[[_Builder], Graph]:
    """x -> reshape (a Keras Flatten with runtime_batch: SHAPE/STRIDED_SLICE/PACK in the .tflite) -> softmax ->
    softmax -> reshape -> sub, the second softmax read again after the sub. With a constant target every kernel
    of the chain writes into the flat tensor's buffer (TFLite checks the chain root's reference count only), so
    the sub overwrites the second softmax's values before its other reader, which then computes from them (no
    range union describes that: test_the_chain_root_decides below). A Keras Flatten of a graph input is a
    dynamic tensor: nothing is shared along that chain (random seed 2142)."""
    def build(b: _Builder) -> Graph:
        flat = b.g.op("reshape", b.x, shape=[-1, 144], runtime_batch=runtime_batch, name="flat")
        s2 = b.g.op("softmax", b.g.op("softmax", flat, name="s1"), name="s2")
        r = b.g.op("reshape", s2, shape=[-1, 2, 72], name="r")
        y = b.g.op("sub", r, b.g.const(np.linspace(-1, 1, 72).astype(np.float32), "k"), name="y")
        return b.done(b.fc("out", y, 3), b.fc("out2", s2, 3))
    return build


def _flatten_then_add(b: _Builder) -> Graph:
    """conv -> Rescaling mul -> Flatten -> add, and a global max pool of the mul's output after the add: the add
    writes into the buffer the Flatten shares with the mul's output, which the pool reads afterwards (seed 1213)."""
    m = b.g.op("mul", b.conv("a", 1.0), b.g.const(np.array(2.0, np.float32), "scale"), name="m")
    flat = b.g.op("reshape", m, shape=[-1, 144], runtime_batch=True, name="flat")
    y = b.g.op("add", flat, b.g.const(np.linspace(2, 5, 144).astype(np.float32), "k"), name="y")
    return b.done(b.fc("out", y, 3), b.g.op("reduce_max", m, axes=[1, 2], name="g"))


# name -> (builder, expected in-place (input, output) pairs)
PROBES: dict[str, tuple[Callable[[_Builder], Graph], list[tuple[str, str]]]] = {
    "add": (_binary("add"), [("a", "y")]),
    "sub": (_binary("sub"), [("a", "y")]),
    "mul": (_binary("mul"), [("a", "y")]),
    "maximum (never in place)": (_binary("maximum"), []),
    "minimum (never in place)": (_binary("minimum"), []),
    "add(graph input, c)": (_graph_input_first, [("c", "y")]),
    "add(full, broadcast)": (_broadcast("add", False), [("a", "y")]),
    "add(broadcast, full)": (_broadcast("add", True), [("a", "y")]),
    "mul(broadcast, full)": (_broadcast("mul", True), [("a", "y")]),
    "add -> graph output": (_result_is_output, []),
    "add(a also a graph output, c)": (_operand_is_output, [("c", "y")]),
    "mul(a, a)": (_same_operand_twice, []),
    "sub(a, const)": (_const_operand(False), [("a", "y")]),
    "sub(const, a)": (_const_operand(True), [("a", "y")]),
    "add(a used earlier too, c)": (_two_uses(False), [("c", "y")]),
    "add(a used later too, c)": (_two_uses(True), [("c", "y")]),
    "add, both operands used twice": (_both_used_twice, []),
    "add(reshape a, reshape c)": (_reshaped(False), [("ra", "y")]),
    "add(reshape a, reshape c), a used twice": (_reshaped(True), []),
    "chain add-relu, mul, sub": (_chain, [("a", "y1"), ("d", "y2"), ("y2", "y3")]),
    "add of one value per sample": (_tiny_add(1), []),
    "add of two values per sample": (_tiny_add(2), [("a", "y")]),
    "softmax -> graph output": (_softmax(False), []),
    "softmax -> conv": (_softmax(True), [("a", "s")]),
    "Keras Flatten of a graph input -> softmax chain -> reshape -> sub": (_softmax_chain(True), []),
}


@functools.lru_cache(maxsize=None)
def probe_case(name: str) -> tuple[Graph, list[np.ndarray]]:
    builder = _Builder(seed=sum(map(ord, name)))
    graph = PROBES[name][0](builder)
    x = np.random.default_rng(7).normal(0, 2, (SAMPLES, 6, 6, 4)).astype(np.float32)
    return graph, [x]


CASES = [("zoo", name) for name in ZOO] + [("probe", name) for name in PROBES]
CASE_IDS = [name for _, name in CASES]


def case(kind: str, name: str) -> tuple[Graph, list[np.ndarray]]:
    return zoo_case(name) if kind == "zoo" else probe_case(name)


@functools.lru_cache(maxsize=None)
def reference(kind: str, name: str) -> dict[str, tuple[float, float]]:
    return tf_calibrator_ranges(*case(kind, name))


# ----------------------------------------------------------------------------------------------------
# the in-place rule
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PROBES))
def test_inplace_rule_picks_the_expected_operands(name: str) -> None:
    graph, _ = probe_case(name)
    assert [(a.name, y.name) for a, y in inplace_writes(graph)] == PROBES[name][1]


@pytest.mark.parametrize("kind,name", CASES, ids=CASE_IDS)
def test_own_ranges_plus_inplace_unions_equal_the_calibrators_record(kind: str, name: str) -> None:
    graph, arrays = case(kind, name)
    theirs = reference(kind, name)
    own = own_ranges(graph, arrays)
    expected = {name: recorded(*r) for name, r in own.items()}
    for a, y in inplace_writes(graph):
        expected[a.name] = recorded(min(own[a.name][0], own[y.name][0]), max(own[a.name][1], own[y.name][1]))
    assert set(theirs) == set(expected)
    assert expected == theirs
    if kind == "probe":  # each union matters here: it changes the recorded range
        for a, y in inplace_writes(graph):
            assert theirs[a.name] != recorded(*own[a.name]), (a.name, y.name)


def test_the_chain_root_decides():
    """TFLite checks the reference count of the sharing chain's first tensor only: with a constant reshape target
    the sub writes into the buffer the second softmax (three readers) shares with the flat tensor (one), and that
    softmax's later reader sees the sub's values: the calibrator records them for it."""
    graph = _softmax_chain(False)(_Builder(seed=3))
    assert [(a.name, y.name) for a, y in inplace_writes(graph)] == [("flat", "s1"), ("s1", "s2"), ("r", "y"),
                                                                    ("s2", "y")]


def test_an_inplace_write_reaches_the_aliases_read_after_it():
    """mul -> Keras Flatten (aliases the mul's output) -> add in place, then a max pool of the mul's output: the pool
    reads the add's values, so the calibrator records the mul's output with the union (random seed 1213). The
    pool's own result is computed from the overwritten values, which own ranges cannot reproduce: not compared."""
    graph = _flatten_then_add(_Builder(seed=4))
    x = np.random.default_rng(7).normal(0, 2, (SAMPLES, 6, 6, 4)).astype(np.float32)
    assert [(a.name, y.name) for a, y in inplace_writes(graph)] == [("a", "m"), ("flat", "y"), ("m", "y")]
    own, theirs = own_ranges(graph, [x]), tf_calibrator_ranges(graph, [x])
    union = recorded(min(own["m"][0], own["y"][0]), max(own["m"][1], own["y"][1]))
    assert theirs["m"] == union != recorded(*own["m"])


def test_residual_block_records_the_union_with_the_add():
    graph, arrays = zoo_case("residual_block")
    own = own_ranges(graph, arrays)
    assert [(a.name, y.name) for a, y in inplace_writes(graph)] == [("conv_b", "residual")]
    assert reference("zoo", "residual_block")["conv_b"] == (own["conv_b"][0], own["residual"][1])  # relu(add)


def test_a_rank3_dense_is_dynamic_after_the_ops_the_converter_moves_above_its_reshape():
    """Keras' tensordot ends with a RESHAPE computed at run time; the converter moves single-use sigmoid / relu6
    above it, so the tensor after them (the batch norm's MUL input) is dynamic and never shared (seed 1008), while
    an abs is not moved: the fully_connected's own result is the dynamic one then, and the abs writes in place."""
    from qcompiler.backend.tflite_arena import inplace_writes as arena_writes
    from qcompiler.ir.parser import parse

    def writes(unary: str) -> list[tuple[str, str]]:
        weights = [[0.5] * 5] * 6
        graph = parse(f"""graph @g(%x: f32[?,4,5]) {{
  %w = const f32[6,5] dense<{weights}>
  %f = fully_connected(%x, %w) : f32[?,4,6]
  %s = sigmoid(%f) : f32[?,4,6]
  %r = relu6(%s) : f32[?,4,6]
  %u = {unary}(%r) : f32[?,4,6]
  %c = const f32[6] dense<{[1.5] * 6}>
  %m = mul(%u, %c) : f32[?,4,6]
  %d = const f32[6] dense<{[0.5] * 6}>
  %a = add(%m, %d) : f32[?,4,6]
  %e = tanh(%a) : f32[?,4,6]
  return %e
}}""")
        return [(a.name, y.name) for a, y in arena_writes(graph)]

    assert writes("relu") == [("m", "a")]  # the mul's input %u is the RESHAPE's dynamic result
    assert writes("abs") == [("u", "m"), ("m", "a")]  # the RESHAPE is before the abs: %u is an arena tensor


# ----------------------------------------------------------------------------------------------------
# calibration_statistics + minmax against the calibrator
# ----------------------------------------------------------------------------------------------------
def _calibrated(graph: Graph) -> Graph:
    quantized = graph.clone()
    run_passes(quantized, [InsertFakeQuant()])
    return quantized


@pytest.mark.parametrize("calibrate_with", ["tensorflow", "tflite", "numpy"])
@pytest.mark.parametrize("kind,name", CASES, ids=CASE_IDS)
def test_minmax_ranges_equal_the_calibrators(kind: str, name: str, calibrate_with: str) -> None:
    graph, arrays = case(kind, name)
    quantized = _calibrated(graph)
    assert write_tflite(float_graph_of(quantized)) == write_tflite(graph)  # what the reference calibrated
    stats = calibration_statistics(quantized, arrays, batch_size=4, calibrate_with=calibrate_with)
    assert stats and set(stats) <= set(reference(kind, name))
    for tensor, tensor_stats in stats.items():
        ours, theirs = recorded(*MinMaxObserver(inplace=True).range(tensor_stats)), reference(kind, name)[tensor]
        if calibrate_with == "tensorflow":
            assert ours == theirs, tensor
        else:
            span = theirs[1] - theirs[0]
            assert np.allclose(ours, theirs, rtol=0, atol=SPAN_TOLERANCE * span), (tensor, ours, theirs)


def test_minmax_without_inplace_gives_the_tensors_own_range():
    graph, arrays = zoo_case("residual_block")
    stats = calibration_statistics(_calibrated(graph), arrays, calibrate_with="tensorflow")
    own = own_ranges(graph, arrays)
    assert MinMaxObserver().range(stats["conv_b"]) == own["conv_b"]
    assert MinMaxObserver(inplace=True).range(stats["conv_b"]) == (own["conv_b"][0], own["residual"][1])
    assert make_observer("minmax", inplace=False) == MinMaxObserver(inplace=False)
    # the plain policy records no in-place writes: its minmax is the tensor's own range whatever the observer says
    plain = calibration_statistics(_calibrated(graph), arrays, calibrate_with="exact", policy="plain")
    assert plain.inplace_unions == 0 and stats.inplace_unions == 1
    assert MinMaxObserver(inplace=True).range(plain["conv_b"]) == own["conv_b"]


# TfLiteRegistration::inplace_operator of TF 2.21's builtin kernels: ADD, SUB and RESHAPE as their registrations
# declare them (tensorflow/lite/kernels/{add,sub,reshape}.cc), MUL and SOFTMAX as TF's calibrator shows them
# behaving on the probes above. Every other builtin qcompiler writes is kTfLiteInplaceOpNone.
KERNEL_REGISTRATIONS = {"ADD": 4 | 8, "SUB": 4 | 8, "MUL": 4 | 8, "SOFTMAX": 4, "RESHAPE": 4 | 1}


def test_the_op_tables_inplace_facts_are_the_kernel_registrations():
    from qcompiler.backend.tflite_arena import kernel_flags
    from qcompiler.ir.ops import OPS

    for name, definition in OPS.items():
        assert kernel_flags(name) == KERNEL_REGISTRATIONS.get(definition.tflite, 0), (name, definition.tflite)


# ----------------------------------------------------------------------------------------------------
# statistics collection
# ----------------------------------------------------------------------------------------------------
class _CountingRunner:
    """The numpy runner, asking for at most `max_batch` samples per call."""

    def __init__(self, graph: Graph, names, max_batch: Optional[int]) -> None:
        self.inner, self.max_batch, self.calls = numpy_executor(graph, names), max_batch, 0

    def __call__(self, batch):
        self.calls += 1
        return self.inner(batch)


def _stats_in_pieces(max_batch: Optional[int], data: np.ndarray, batch_size: int):
    runners = []

    def executor(graph, names):
        runners.append(_CountingRunner(graph, names, max_batch))
        return runners[-1]

    stats = collect_statistics(_calibrated(zoo_case("seed_mlp")[0]), data, batch_size=batch_size, executor=executor)
    return stats, runners[0].calls


def test_a_batch_fed_in_pieces_keeps_its_statistics():
    data = np.random.default_rng(3).normal(size=(23, 8, 8)).astype(np.float32)
    whole, whole_calls = _stats_in_pieces(None, data, batch_size=8)
    pieces, piece_calls = _stats_in_pieces(3, data, batch_size=8)
    assert (whole_calls, piece_calls) == (3, 9)  # batches of 8, 8, 7 samples; pieces of 3, 3, 2 / 3, 3, 1
    for name in whole:
        a, b = whole[name], pieces[name]
        assert (a.min, a.max, a.count) == (b.min, b.max, b.count) and a.num_batches == b.num_batches == 3
        np.testing.assert_array_equal(a.batch_mins, b.batch_mins)
        np.testing.assert_array_equal(a.batch_maxs, b.batch_maxs)


def test_sampled_histograms_keep_exact_minmax_and_close_percentiles():
    graph, arrays = zoo_case("seed_cnn")
    quantized = _calibrated(graph)
    data = np.random.default_rng(4).normal(size=(40, 28, 28, 1)).astype(np.float32)
    sampled = collect_statistics(quantized, data, batch_size=16, histogram_sample=64)
    full = collect_statistics(quantized, data, batch_size=16, histogram_sample=None)
    for name in full:
        assert MinMaxObserver().range(sampled[name]) == MinMaxObserver().range(full[name])
        assert sampled[name].count == full[name].count
        assert sampled[name].histogram()[0].sum() <= min(64 * 40, full[name].histogram()[0].sum())
        lo_s, hi_s = make_observer("percentile", percentile=99.0).range(sampled[name])
        lo_f, hi_f = make_observer("percentile", percentile=99.0).range(full[name])
        span = full[name].max - full[name].min
        assert abs(lo_s - lo_f) < 0.1 * span and abs(hi_s - hi_f) < 0.1 * span, name


def test_switching_observers_needs_no_data():
    graph, _ = zoo_case("residual_block")
    quantized = _calibrated(graph)
    data = np.random.default_rng(6).normal(size=(20, 16, 16, 8)).astype(np.float32)
    stats = collect_statistics(quantized, data, batch_size=8)
    for observer in OBSERVERS:
        once, fresh = quantized.clone(), quantized.clone()
        assert apply_ranges(once, stats, observer) == len(stats)
        apply_ranges(fresh, collect_statistics(fresh, data, batch_size=8), observer)
        ranges = [(n.attrs["min"], n.attrs["max"]) for n in once.find("fake_quant") if not n.attrs["weights"]]
        assert ranges == [(n.attrs["min"], n.attrs["max"]) for n in fresh.find("fake_quant")
                          if not n.attrs["weights"]], observer
    # quantize() with the statistics of an earlier run: no calibration data at all
    stats = calibration_statistics(_calibrated(float_graph(residual_block())), data, calibrate_with="numpy")
    for observer in ("minmax", "percentile"):
        lowered = quantize(residual_block(), "int8", calibration_stats=stats, observer=observer)
        assert not lowered.find("fake_quant")


def test_calibrate_with_must_be_known():
    graph, arrays = zoo_case("seed_mlp")
    with pytest.raises(Exception, match="unknown calibration executor 'xnnpack'; choose one of exact, fast, numpy"):
        calibration_statistics(_calibrated(graph), arrays, calibrate_with="xnnpack")


# ----------------------------------------------------------------------------------------------------
# data validation
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp() -> Graph:
    return _calibrated(zoo_case("seed_mlp")[0])  # input 'digits': [?, 8, 8]


@pytest.fixture(scope="module")
def two_inputs() -> Graph:
    return _calibrated(zoo_case("two_input_concat")[0])  # inputs 'left' [?, 16, 16, 3], 'right' [?, 16, 16, 1]


def _digits(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("data,message", [
    (np.zeros((4, 8, 9), np.float32), r"input 'digits' has shape \[4, 8, 9\]; the model expects \[N, 8, 8\]"),
    (np.zeros((4, 64), np.float32), r"input 'digits' has shape \[4, 64\]; the model expects \[N, 8, 8\]"),
    (np.zeros((0, 8, 8), np.float32), r"input 'digits' is empty: give at least one sample"),
    (np.full((4, 8, 8), "a"), r"input 'digits' has dtype <U1; give float32 samples"),
    (np.zeros((4, 8, 8), np.complex64), r"input 'digits' has dtype complex64; give float32 samples"),
    (np.asarray(3.0), r"input 'digits' has shape \[\]; the model expects \[N, 8, 8\]"),
    ([_digits(), _digits()], r"got 2 calibration arrays for 1 model inputs \['digits'\]"),
])
def test_bad_data_is_rejected_with_a_clear_message(mlp: Graph, data, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        collect_statistics(mlp, data)


@pytest.mark.parametrize("bad,kind", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_values_are_rejected_naming_the_first_sample(mlp: Graph, bad: float, kind: str) -> None:
    data = _digits(6)
    data[4, 2, 3] = bad
    with pytest.raises(CalibrationError, match=rf"input 'digits' contains 1 non-finite values \({kind}\), first in "
                                               r"sample 4; clean the data"):
        collect_statistics(mlp, data)


def test_a_single_sample_without_batch_axis_and_integer_data_are_accepted(mlp: Graph) -> None:
    assert collect_statistics(mlp, _digits(1)[0]).samples == 1
    assert collect_statistics(mlp, np.arange(128).reshape(2, 8, 8)).samples == 2


def test_multi_input_data_by_name_list_or_position(two_inputs: Graph, tmp_path) -> None:
    rng = np.random.default_rng(1)
    left, right = rng.normal(size=(3, 16, 16, 3)), rng.normal(size=(3, 16, 16, 1))
    by_name = collect_statistics(two_inputs, {"right": right, "left": left})
    by_list = collect_statistics(two_inputs, [left, right])
    assert {k: v.max for k, v in by_name.items()} == {k: v.max for k, v in by_list.items()}
    np.savez(tmp_path / "positional.npz", left, right)  # arr_0, arr_1
    assert collect_statistics(two_inputs, load_calibration_data(tmp_path / "positional.npz")).samples == 3
    with pytest.raises(CalibrationError, match=r"different sample counts \[2, 3\]"):
        collect_statistics(two_inputs, [left, right[:2]])
    with pytest.raises(CalibrationError, match=r"got 1 calibration arrays for 2 model inputs \['left', 'right'\]"):
        collect_statistics(two_inputs, left)


def test_npz_with_wrong_names_is_rejected(two_inputs: Graph, tmp_path) -> None:
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "named.npz", image=rng.normal(size=(2, 16, 16, 3)), mask=rng.normal(size=(2, 16, 16, 1)))
    with pytest.raises(CalibrationError, match=r"calibration data has arrays \['image', 'mask'\]; name them after the "
                                               r"model's inputs \['left', 'right'\]"):
        collect_statistics(two_inputs, load_calibration_data(tmp_path / "named.npz"))


def test_calibration_files(mlp: Graph, tmp_path) -> None:
    np.save(tmp_path / "digits.npy", _digits(5))
    assert collect_statistics(mlp, load_calibration_data(tmp_path / "digits.npy")).samples == 5
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration_data(tmp_path / "missing.npy")
    (tmp_path / "digits.csv").write_text("1,2,3")
    with pytest.raises(CalibrationError, match=r"must be a .npy or .npz file, not '.csv'"):
        load_calibration_data(tmp_path / "digits.csv")
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(CalibrationError, match="cannot read calibration data"):
        load_calibration_data(tmp_path / "broken.npy")


# ----------------------------------------------------------------------------------------------------
# progress bar
# ----------------------------------------------------------------------------------------------------
class _Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_bar_on_a_given_stream(mlp: Graph) -> None:
    stream = io.StringIO()
    collect_statistics(mlp, _digits(10), batch_size=4, progress=stream)
    lines = stream.getvalue().split("\r")
    assert [line.split("] ")[1].split(" samples")[0] for line in lines[1:]] == ["4/10", "8/10", "10/10"]
    assert lines[-1].startswith("calibrating [" + "#" * 30 + "]") and stream.getvalue().endswith("\n")


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bar_only_on_a_terminal(mlp: Graph, monkeypatch, tty: bool) -> None:
    stderr = _Terminal(tty)
    monkeypatch.setattr("sys.stderr", stderr)
    collect_statistics(mlp, _digits(3), batch_size=2)
    assert ("3/3 samples" in stderr.getvalue()) == tty
    if not tty:
        assert stderr.getvalue() == ""
