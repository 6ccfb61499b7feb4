"""TFLite's arena planner writes some outputs in place into a buffer another tensor still needs: it checks only the
reference count of the buffer's first owner (FindSharedTensor), so after SOFTMAX wrote its output into its input's
buffer and a RESHAPE aliases that output, a SUB on the RESHAPE overwrites the SOFTMAX output that other ops still
read (random-model seed 2142: float32 outputs 269 times off). The writer orders its operators so that every op
reading such a buffer runs before the write (backend/tflite_arena.py `safe_operator_order`); the reference kernels
must then compute what the IR interpreter computes, on hand-written and on generated graphs."""
from __future__ import annotations

import numpy as np
import pytest

from qcompiler.backend.tflite_arena import (DATA_UNMODIFIED, INPUT0_SHARED, INPUT1_SHARED, RuntimeOp, RuntimeTensors,
                                            buffer_sharing, clobbered_reads, safe_operator_order)
from qcompiler.backend.tflite_writer import write_tflite
from qcompiler.ir.graph import Graph
from qcompiler.ir.interpreter import run
from qcompiler.ir.parser import parse
from qcompiler.ir.types import TensorType
from tests.tflite_run import run_tflite

SOFTMAX, RESHAPE, SUB, OTHER = INPUT0_SHARED, INPUT0_SHARED | DATA_UNMODIFIED, INPUT0_SHARED | INPUT1_SHARED, 0


def _seed_2142_ops() -> tuple[list[RuntimeOp], RuntimeTensors]:
    """in 0 -> RESHAPE 1 -> SOFTMAX 2 -> SOFTMAX 3 -> {RESHAPE 4 -> SUB 5 (- const 9) -> FC 10, LEAKY 6,
    FC 7 -> SOFTMAX 8}: seed 2142's float model in qcompiler's order."""
    ops = [RuntimeOp(RESHAPE, (0,), (1,)), RuntimeOp(SOFTMAX, (1,), (2,)), RuntimeOp(SOFTMAX, (2,), (3,)),
           RuntimeOp(RESHAPE, (3,), (4,)), RuntimeOp(SUB, (4, 9), (5,)), RuntimeOp(OTHER, (5,), (10,)),
           RuntimeOp(OTHER, (3,), (6,)), RuntimeOp(OTHER, (3,), (7,)), RuntimeOp(SOFTMAX, (7,), (8,))]
    tensors = RuntimeTensors(nbytes=(520,) * 6 + (520, 44, 44, 260, 24), constant=frozenset({9}),
                             inputs=frozenset({0}), outputs=frozenset({10, 6, 8}))
    return ops, tensors


def test_the_planner_checks_only_the_buffer_owner() -> None:
    ops, tensors = _seed_2142_ops()
    # the first RESHAPE reads a model input: not shared; both SOFTMAXes, the second RESHAPE and the SUB use
    # tensor 1's buffer, although tensor 3 in it has two more readers; the last SOFTMAX writes a model output
    owners = {tensor: (s.owner, s.changed) for tensor, s in buffer_sharing(ops, tensors).items()}
    assert owners == {2: (1, True), 3: (1, True), 4: (1, False), 5: (1, True)}
    assert clobbered_reads(ops, tensors) == [(4, 6, 3), (4, 7, 3)]


def test_a_run_time_shaped_reshape_that_cannot_alias_drops_the_sharing_planned_onto_it() -> None:
    """in 0 -> RESHAPE (target 5 computed at run time) 1 -> SOFTMAX 2 -> SOFTMAX 6 -> SUB 3: the RESHAPE reads a model
    input, so its
    output does not alias it and becomes dynamic; the SOFTMAX planned onto it and the SUB along the chain lose their
    sharing (TFLite's CalculateAllocations). With a constant target the same RESHAPE output is an arena tensor."""
    ops = [RuntimeOp(RESHAPE, (0, 5), (1,), shape_at_run_time=True), RuntimeOp(SOFTMAX, (1,), (2,)),
           RuntimeOp(SOFTMAX, (2,), (6,)), RuntimeOp(SUB, (6, 4), (3,))]
    tensors = RuntimeTensors(nbytes=(40,) * 7, constant=frozenset({4}), inputs=frozenset({0}), outputs=frozenset({3}))
    assert buffer_sharing(ops, tensors) == {}
    constant_target = [RuntimeOp(RESHAPE, (0, 5), (1,))] + ops[1:]
    assert {t: s.owner for t, s in buffer_sharing(constant_target, tensors).items()} == {2: 1, 6: 1}


def test_safe_order_runs_the_readers_before_the_write() -> None:
    ops, tensors = _seed_2142_ops()
    order = safe_operator_order(ops, tensors)
    assert order == [0, 1, 2, 3, 6, 7, 4, 5, 8]
    assert clobbered_reads([ops[i] for i in order], tensors) == []


def test_a_reader_that_needs_the_write_keeps_the_order() -> None:
    """No order helps when the op reading the clobbered tensor also needs the write's result."""
    ops, tensors = _seed_2142_ops()
    ops[6] = RuntimeOp(OTHER, (3, 5), (6,))
    assert safe_operator_order(ops, tensors) == list(range(len(ops)))


SEED_2142_IR = """
graph @seed_2142(%x: f32[?,130]) {
  %x0 = relu(%x) : f32[?,130]
  %s1 = softmax(%x0) : f32[?,130]
  %s2 = softmax(%s1) : f32[?,130]
  %r = reshape(%s2) {shape=[-1, 2, 65]} : f32[?,2,65]
  %c = const f32[] dense<0.5>
  %d = sub(%r, %c) : f32[?,2,65]
  %e = relu(%d) : f32[?,2,65]
  %l = leaky_relu(%s2) {alpha=0.1} : f32[?,130]
  %m = mul(%s2, %s2) : f32[?,130]
  return %e, %l, %m
}
"""


def test_written_model_computes_what_the_ir_computes() -> None:
    """Seed 2142's pattern in IR text: the SUB is written after the ops that read the second softmax."""
    import tflite

    g = parse(SEED_2142_IR)
    data = write_tflite(g)
    x = np.random.default_rng(0).standard_normal((3, 130)).astype(np.float32) * 3
    for got, want in zip(run_tflite(data, [x]), run(g, [x])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    model = tflite.Model.GetRootAsModel(data, 0)
    codes = [model.OperatorCodes(model.Subgraphs(0).Operators(i).OpcodeIndex()).BuiltinCode()
             for i in range(model.Subgraphs(0).OperatorsLength())]
    B = tflite.BuiltinOperator
    assert codes == [B.RELU, B.SOFTMAX, B.SOFTMAX, B.RESHAPE, B.LEAKY_RELU, B.MUL, B.SUB, B.RELU]


def _random_graph(seed: int) -> Graph:
    """A float chain of ops TFLite runs in place (softmax, add/sub/mul with a constant or of two tensors) and
    RESHAPEs, each op on a random earlier tensor, so that buffers get aliases with several readers."""
    rng = np.random.default_rng(seed)
    g = Graph(f"inplace_{seed}")
    x = g.add_input("x", TensorType((None, 24), "f32"))
    values = [g.op("relu", x)]
    for step in range(int(rng.integers(4, 12))):
        v = values[-1] if rng.random() < 0.5 else values[int(rng.integers(len(values)))]
        kind = int(rng.integers(6))
        if kind == 0:
            y = g.op("softmax", v)
        elif kind == 1:
            y = g.op("reshape", v, shape=[-1, 24] if v.type.rank == 3 else [-1, 4, 6])
        elif kind in (2, 3):
            c = g.const(rng.normal(size=v.type.shape[-1:]).astype(np.float32))
            y = g.op(("add", "sub", "mul")[int(rng.integers(3))], v, c)
        elif kind == 4:
            others = [w for w in values if w.type.shape == v.type.shape]
            y = g.op("add", v, others[int(rng.integers(len(others)))])
        else:
            y = g.op("leaky_relu", v, alpha=0.2)
        values.append(y)
    g.outputs = [v for v in values if not v.uses][-3:] or [values[-1]]
    return g


@pytest.mark.parametrize("seed", range(40))
def test_generated_graphs_run_as_the_interpreter(seed: int) -> None:
    g = _random_graph(seed)
    x = np.random.default_rng(seed).standard_normal((4, 24)).astype(np.float32)
    for got, want in zip(run_tflite(write_tflite(g), [x]), run(g, [x])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_generated_graphs_hit_the_runtime_rule() -> None:
    """The generated graphs are worth testing: in several, the graph's own order would clobber a tensor."""
    hit = 0
    for seed in range(40):
        g = _random_graph(seed)
        x = np.random.default_rng(seed).standard_normal((4, 24)).astype(np.float32)
        got, want = run_tflite(write_tflite(g, operator_order="graph"), [x]), run(g, [x])
        hit += any(not np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(got, want))
    assert hit >= 3


def test_a_write_no_order_can_save_is_reported() -> None:
    """The SUB's result and the softmax it overwrites meet in one ADD: no order helps, the writer warns."""
    from qcompiler.backend.tflite_writer import InPlaceOverwriteWarning

    g = parse("""
graph @unsaved(%x: f32[?,12]) {
  %x0 = relu(%x) : f32[?,12]
  %s1 = softmax(%x0) : f32[?,12]
  %s2 = softmax(%s1) : f32[?,12]
  %r = reshape(%s2) {shape=[-1, 3, 4]} : f32[?,3,4]
  %c = const f32[] dense<0.5>
  %d = sub(%r, %c) : f32[?,3,4]
  %f = reshape(%d) {shape=[-1, 12]} : f32[?,12]
  %y = add(%f, %s2) : f32[?,12]
  return %y
}
""")
    with pytest.warns(InPlaceOverwriteWarning, match="%s2"):
        write_tflite(g)


def test_an_unknown_operator_order_is_refused() -> None:
    from qcompiler.backend.tflite_writer import BackendError

    with pytest.raises(BackendError, match="operator_order 'topological'.*runtime-safe, graph"):
        write_tflite(parse(SEED_2142_IR), operator_order="topological")


def test_graph_order_keeps_the_graphs_operators_in_place() -> None:
    """operator_order="graph" writes seed 2142's pattern as the graph orders it (the SUB right after its RESHAPE)."""
    import tflite

    model = tflite.Model.GetRootAsModel(write_tflite(parse(SEED_2142_IR), operator_order="graph"), 0)
    codes = [model.OperatorCodes(model.Subgraphs(0).Operators(i).OpcodeIndex()).BuiltinCode()
             for i in range(model.Subgraphs(0).OperatorsLength())]
    B = tflite.BuiltinOperator
    assert codes == [B.RELU, B.SOFTMAX, B.SOFTMAX, B.RESHAPE, B.SUB, B.RELU, B.LEAKY_RELU, B.MUL]
