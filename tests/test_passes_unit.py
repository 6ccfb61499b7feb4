"""Edge cases of individual passes that text tests cannot express (elided data, shared weights, options)."""
from __future__ import annotations

import numpy as np

from qcompiler.ir.graph import Graph
from qcompiler.ir.parser import parse
from qcompiler.ir.printer import print_graph
from qcompiler.ir.types import QParams, TensorType
from qcompiler.passes import run_passes
from qcompiler.passes.fold_affine import FoldAffine
from qcompiler.passes.fold_batchnorm import FoldBatchNorm
from qcompiler.passes.fold_constants import FoldConstants
from tests.test_passes_text import assert_same_outputs

RNG = np.random.default_rng(0)


def _f32(*shape: int, lo: float | None = None) -> np.ndarray:
    data = RNG.uniform(lo, 1.5, size=shape) if lo is not None else RNG.normal(size=shape)
    return data.astype(np.float32)


def _bn(g: Graph, x, channels: int, name: str = "bn"):
    params = [g.const(_f32(channels, lo=0.5)), g.const(_f32(channels)), g.const(_f32(channels)),
              g.const(_f32(channels, lo=0.5))]
    return g.op("batch_norm", x, *params, epsilon=1e-3, name=name, layer=name)


def test_batch_norm_after_a_fully_connected_is_left_to_fold_affine() -> None:
    """fold-batchnorm lowers it to mul + add; fold-affine folds those into the layer, the same float32 bits as
    folding the batch norm directly (inv, then beta - mean * inv)."""
    g = Graph("dense")
    x = g.add_input("x", TensorType((None, 4)))
    fc = g.op("fully_connected", x, g.const(_f32(3, 4)), g.const(_f32(3)), name="fc")
    g.outputs = [_bn(g, fc, 3)]
    reference = g.clone()
    assert "rule:fold-into-producer" not in FoldBatchNorm().run(g).counters
    FoldAffine().run(g)
    assert g.op_counts() == {"const": 2, "fully_connected": 1}
    assert_same_outputs(reference, g)


def test_fully_connected_on_a_rank_3_input_does_not_fold() -> None:
    """The converter reshapes a rank-3 input to 2-D around its FULLY_CONNECTED and folds nothing across the
    reshapes (docs/quantization-notes.md §10): the batch norm becomes mul + add."""
    g = Graph("seq")
    x = g.add_input("x", TensorType((None, 5, 4)))
    fc = g.op("fully_connected", x, g.const(_f32(3, 4)), g.const(_f32(3)), name="fc")
    g.outputs = [_bn(g, fc, 3)]
    reference = g.clone()
    result = FoldBatchNorm().run(g)
    assert result.modified and "rule:fold-into-producer" not in result.counters
    assert g.op_counts() == {"const": 4, "fully_connected": 1, "mul": 1, "add": 1}
    assert_same_outputs(reference, g)


def test_weights_shared_by_two_convolutions_are_copied_not_changed() -> None:
    g = Graph("shared")
    x = g.add_input("x", TensorType((None, 4, 4, 2)))
    w = g.const(_f32(2, 3, 3, 2), "w")
    a = g.op("conv2d", x, w, padding="same", name="a")
    b = g.op("conv2d", x, w, padding="same", name="b")
    g.outputs = [_bn(g, a, 2), b]
    reference = g.clone()
    FoldBatchNorm().run(g)
    assert g.value("b").producer.operands[1] is w
    assert g.value("bn").producer.operands[1] is not w
    assert_same_outputs(reference, g)


def test_weights_elided_in_a_dump_are_not_folded() -> None:
    g = Graph("elided")
    x = g.add_input("x", TensorType((None, 4, 4, 2)))
    conv = g.op("conv2d", x, g.const(_f32(2, 3, 3, 2)), name="conv")
    g.outputs = [_bn(g, conv, 2)]
    dumped = parse(print_graph(g))  # digest only for the 36 weights; the 2-element BN parameters are inline
    result = FoldBatchNorm().run(dumped)
    assert dumped.op_counts() == {"const": 3, "conv2d": 1, "mul": 1, "add": 1}
    assert result.notes == ("fold-into-producer did not apply to %bn = batch_norm (Keras layer 'bn'): "
                            "conv2d weights are not a constant with known data",)


def test_batch_norm_with_non_constant_parameters_is_left_alone() -> None:
    g = Graph("inputs")
    x = g.add_input("x", TensorType((None, 2)))
    params = [g.add_input(f"p{i}", TensorType((2,))) for i in range(4)]
    g.outputs = [g.op("batch_norm", x, *params, epsilon=1e-3)]
    run_passes(g, "fold-batchnorm")
    assert g.op_counts() == {"batch_norm": 1}


def test_fold_constants_skips_quantized_values_and_respects_max_elements() -> None:
    g = Graph("q")
    x = g.add_input("x", TensorType((None, 4)))
    q = g.add_node("const", [], {"value": np.array([1, 2, 3, 4], np.int8)},
                   result_types=[TensorType((4,), "i8", QParams.per_tensor(0.5, 0))]).result
    deq = g.op("dequantize", q)
    big = g.op("add", g.const(np.ones(4, np.float32)), g.const(np.ones(4, np.float32)), name="big")
    g.outputs = [g.op("add", g.op("mul", x, deq), big)]

    result = FoldConstants(max_elements=2).run(g)
    assert not result.modified
    assert any("max_elements=2" in n for n in result.notes)
    assert FoldConstants().run(g).modified
    assert g.value("big").is_constant and g.op_counts()["dequantize"] == 1


def test_counters_report_what_fold_batchnorm_did() -> None:
    g = Graph("two")
    x = g.add_input("x", TensorType((None, 4, 4, 3)))
    first = _bn(g, x, 3, "first")  # nothing to fold into
    conv = g.op("conv2d", first, g.const(_f32(3, 1, 1, 3)), name="conv")
    g.outputs = [_bn(g, conv, 3, "second")]
    result = FoldBatchNorm().run(g)
    assert result.counters["rule:fold-into-producer"] == 1
    assert result.counters["rule:lower-to-mul-add"] == 1
    # lowering: 2 constants + mul + add; folding: new weights + new bias
    assert result.counters["nodes-inserted"] == 6
    assert result.counters["nodes-replaced"] == 2
    assert g.op_counts() == {"const": 4, "mul": 1, "add": 1, "conv2d": 1}


def test_cse_compares_large_constants_byte_for_byte_without_hashing() -> None:
    """Large constants are keyed by a sampled fingerprint: equal ones merge; ones whose sampled bytes agree but
    whose other bytes differ (one value, or 0.0 against -0.0) stay apart."""
    from qcompiler.passes.cse import CommonSubexpressionElimination

    g = Graph("large")
    x = g.add_input("x", TensorType((None, 3000)))
    base = _f32(3000)
    other = base.copy()
    other[1] += 1.0  # between the fingerprint's samples
    signed = base.copy()
    signed[1], base[1] = -0.0, 0.0
    consts = [g.const(a.copy()) for a in (base, base, other, signed)]
    y = x
    for c in consts:
        y = g.op("add", y, c)
    g.outputs = [y]
    result = CommonSubexpressionElimination().run(g)
    assert result.counters == {"nodes-erased": 1, "constants-merged": 1}
    assert g.op_counts() == {"const": 3, "add": 4}
