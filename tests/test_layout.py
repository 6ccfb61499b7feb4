"""Lazily transposed constants (qcompiler/ir/layout.py): a constant may be a C-contiguous array with permuted axes
(a large Keras kernel viewed in TFLite's layout); the graph keeps it as it is, CSE and the writer's deduplication
compare it by value, and the writer copies it into the file in C order: the same bytes as a contiguous copy."""
from __future__ import annotations

import numpy as np
import pytest

from qcompiler.backend.join_bytes import LARGE, join_bytes
from qcompiler.backend.tflite_writer import write_tflite
from qcompiler.ir.graph import Graph
from qcompiler.ir.layout import copy_into, is_permuted_contiguous, transposed_matrix
from qcompiler.ir.types import TensorType
from qcompiler.passes.cse import CommonSubexpressionElimination
from tests.tflite_run import run_tflite


def _random(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape, perm", [((3, 3, 40, 24), (3, 0, 1, 2)), ((300, 70), (1, 0)), ((2, 5, 7), (2, 0, 1)),
                                         ((4, 6, 5), (1, 0, 2)), ((8, 3, 3, 1), (0, 3, 1, 2))])
def test_copy_into_writes_c_order_of_any_permutation(shape, perm):
    """Transposed matrices (HWIO viewed as OHWI, [in, out] as [out, in]) take the blocked copy, other
    permutations numpy's; either way the bytes are those of the contiguous copy."""
    view = _random(*shape).transpose(perm)
    assert is_permuted_contiguous(view)
    target = np.zeros(view.nbytes, np.uint8)
    copy_into(target, view)
    assert target.tobytes() == np.ascontiguousarray(view).tobytes()


def test_transposed_matrix_finds_the_split():
    kernel = _random(3, 3, 16, 8)  # HWIO
    matrix = transposed_matrix(kernel.transpose(3, 0, 1, 2))  # OHWI
    assert matrix is not None and matrix.shape == (8, 3 * 3 * 16)
    assert np.shares_memory(matrix, kernel)
    assert transposed_matrix(_random(4, 6, 5).transpose(1, 0, 2)) is None  # not a matrix transpose
    assert not is_permuted_contiguous(_random(6, 6)[::2])  # strided, not permuted: the graph copies it


def test_join_bytes_copies_permuted_arrays_in_c_order():
    big = _random(LARGE // 4 // 64 + 3, 64).T  # larger than LARGE: the in-place path
    small = _random(5, 7).T
    for pieces in ([b"TFL3", big, bytes(3), small], [b"x", small]):
        expected = b"".join(np.ascontiguousarray(p).tobytes() if isinstance(p, np.ndarray) else p for p in pieces)
        assert join_bytes(pieces) == expected


def test_join_bytes_fills_a_very_large_result_in_two_halves():
    """From PARALLEL bytes on, two threads each map and fill about half: the result is still b"".join's."""
    from qcompiler.backend.join_bytes import PARALLEL

    half = _random(PARALLEL // 4 // 512 // 2 + 7, 512)
    pieces = [b"TFL3", half.T, bytes(9), half, b"", half[:, :100].T, b"end"]
    expected = b"".join(np.ascontiguousarray(p).tobytes() if isinstance(p, np.ndarray) else p for p in pieces)
    assert sum(len(np.ascontiguousarray(p).tobytes()) if isinstance(p, np.ndarray) else len(p)
               for p in pieces) >= PARALLEL
    assert join_bytes(pieces) == expected


def test_graph_keeps_a_permuted_constant_and_copies_a_strided_one():
    g = Graph("layout")
    kernel = _random(3, 3, 4, 8)
    view = kernel.transpose(3, 0, 1, 2)
    kept = g.const(view)
    assert np.shares_memory(kept.data, kernel) and not kept.data.flags.writeable
    strided = g.const(_random(8, 8)[::2])
    assert strided.data.flags.c_contiguous


def _conv_graph(weights: list[np.ndarray]) -> Graph:
    """Convolutions of one input, one per kernel [out, 3, 3, 4], all outputs."""
    g = Graph("convs")
    x = g.add_input("x", TensorType((1, 6, 6, 4)))
    g.outputs = [g.op("conv2d", x, g.const(w, f"w{i}"), g.const(np.zeros(w.shape[0], np.float32), f"b{i}"),
                      padding="same", name=f"conv{i}") for i, w in enumerate(weights)]
    return g


def test_writer_output_is_the_same_for_a_lazily_transposed_kernel():
    """A graph whose kernels are transposed views writes exactly the bytes of the same graph with contiguous
    kernels (large enough to be written as views, small ones are copied first); the model computes the
    convolutions of the contiguous kernels."""
    lazy = [_random(3, 3, 4, 40, seed=s).transpose(3, 0, 1, 2) for s in (1, 2, 1)]  # the third equals the first
    contiguous = [np.ascontiguousarray(w) for w in lazy]
    mixed = [lazy[0], contiguous[1], lazy[2]]
    outputs = {write_tflite(_conv_graph(ws)) for ws in (lazy, contiguous, mixed)}
    assert len(outputs) == 1
    x = _random(1, 6, 6, 4, seed=3)
    results = run_tflite(outputs.pop(), [x])
    expected = [_conv_same(x, w) for w in contiguous]
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _conv_same(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """3x3 stride-1 'same' convolution, NHWC input, OHWI kernel, in float64."""
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros(x.shape[:3] + (w.shape[0],))
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy:dy + x.shape[1], dx:dx + x.shape[2], :] @ w[:, dy, dx, :].T.astype(np.float64)
    return out


def test_writer_deduplicates_large_kernels_across_layouts():
    """Large buffers (past the byte-keyed limit) are compared by value: a view and a contiguous copy of the same
    kernel share a buffer; a kernel differing in one value between the fingerprint's samples does not."""
    w = _random(3, 3, 4, 64, seed=4)  # 2,304 values: fingerprinted, not keyed by bytes
    other = w.copy()
    other[1, 1, 1, 1] += 1.0
    views = [w.transpose(3, 0, 1, 2), np.ascontiguousarray(w.transpose(3, 0, 1, 2)), other.transpose(3, 0, 1, 2)]
    g = Graph("dedup")
    x = g.add_input("x", TensorType((1, 6, 6, 4)))
    outs = [g.op("conv2d", x, g.const(v, f"w{i}"), g.const(np.zeros(64, np.float32), f"b{i}"), padding="same",
                 name=f"conv{i}") for i, v in enumerate(views)]
    g.outputs = outs
    from tests.test_backend import _model, _tensor

    data = write_tflite(g)
    buffers = [_tensor(data, f"w{i}").Buffer() for i in range(3)]
    assert buffers[0] == buffers[1] != buffers[2]
    assert _model(data).Buffers(buffers[0]).DataAsNumpy().tobytes() == views[1].tobytes()


def test_cse_merges_equal_constants_across_layouts():
    w = _random(3, 3, 4, 64, seed=5)
    g = Graph("cse")
    x = g.add_input("x", TensorType((1, 6, 6, 4)))
    consts = [g.const(w.transpose(3, 0, 1, 2)), g.const(np.ascontiguousarray(w.transpose(3, 0, 1, 2)))]
    g.outputs = [g.op("conv2d", x, c, g.const(np.zeros(64, np.float32)), padding="same") for c in consts]
    result = CommonSubexpressionElimination().run(g)
    assert result.counters["constants-merged"] == 2  # the kernel and the zero bias
    first, second = (n for n in g.nodes if n.op == "conv2d")
    assert first.operands[1] is second.operands[1]


def test_keras_kernels_are_written_transposed():
    """Conv2D/Dense kernels stay views of the Keras variables (HWIO / [in, out]) and are transposed on the way into
    the file, small and large (past the writer's block-copy size): the model computes what Keras does, and the
    variables are untouched (the views are read-only)."""
    import keras

    import qcompiler

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 40))
    x = keras.layers.Conv2D(1700, 2, name="wide_conv")(inputs)  # 2*2*40*1700 values: 1 MiB
    x = keras.layers.Conv2D(8, 3, padding="same", name="small_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(40, name="dense")(keras.layers.Dense(600, name="wide_dense")(x))
    model = keras.Model(inputs, outputs)
    before = [np.array(v) for v in model.weights]
    graph = qcompiler.float_graph(model)
    kernels = [v.data for v in graph.values() if v.is_constant and v.data.ndim >= 2]
    assert len(kernels) == 4 and all(not k.flags.c_contiguous and not k.flags.writeable for k in kernels)
    x = _random(2, 4, 4, 40, seed=7)
    (got,) = run_tflite(qcompiler.compile(model), [x])
    np.testing.assert_allclose(got, np.asarray(model(x)), rtol=1e-4, atol=1e-4)
    assert all(np.array_equal(b, np.array(v)) for b, v in zip(before, model.weights))


@pytest.mark.parametrize("shape, perm", [((3, 3, 64, 512), (3, 0, 1, 2)), ((1, 1, 1024, 300), (3, 0, 1, 2)),
                                         ((700, 400), (1, 0)), ((3, 3, 4, 8), (3, 0, 1, 2))])
def test_multiply_is_numpys_product_in_the_arrays_layout(shape, perm):
    """fold-batchnorm's product (by two threads from 1 MiB): the same float32 bits as `w * inv`, in w's layout."""
    from qcompiler.ir.layout import multiply

    w = _random(*shape).transpose(perm)
    inv = _random(w.shape[0], seed=1).reshape([-1] + [1] * (w.ndim - 1))
    got, want = multiply(w, inv), w * inv
    assert got.dtype == np.float32
    assert [s for s, n in zip(got.strides, w.shape) if n > 1] == [s for s, n in zip(want.strides, w.shape) if n > 1]
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("shape, perm, axis", [((3, 3, 64, 512), (3, 0, 1, 2), 0), ((700, 400), (1, 0), 0),
                                               ((1, 3, 3, 96), None, 3), ((3, 3, 4, 8), (3, 0, 1, 2), 0)])
def test_lazy_product_is_written_as_numpys_product(shape, perm, axis):
    """A batch norm folded into a kernel (fold-batchnorm's LazyProduct) is computed by the writer straight into
    the file: the same bytes as `w * inv` computed first, for transposed and contiguous kernels; `np.asarray`
    computes the same values, and the fingerprint used for deduplication is the computed array's."""
    from qcompiler.backend.tflite_writer import _fingerprint
    from qcompiler.ir.layout import LazyProduct, lazy_multiply

    w = _random(*shape)
    w = w if perm is None else w.transpose(perm)
    inv = _random(w.shape[axis], seed=1).reshape([-1 if a == axis else 1 for a in range(w.ndim)])
    lazy, want = lazy_multiply(w, inv), w * inv
    assert isinstance(lazy, LazyProduct) and lazy.computed is None
    target = np.zeros(lazy.nbytes, np.uint8)
    copy_into(target, lazy)
    assert lazy.computed is None  # nothing computed on the side
    assert target.tobytes() == np.ascontiguousarray(want).tobytes()
    assert _fingerprint(lazy) == _fingerprint(np.ascontiguousarray(want).reshape(-1).view(np.uint8))
    assert np.array_equal(np.asarray(lazy).view(np.uint32), want.view(np.uint32))
    assert join_bytes([b"TFL3", lazy, b"end"]) == b"TFL3" + np.ascontiguousarray(want).tobytes() + b"end"


def _folded_conv_graph(kernel: np.ndarray, variance: np.ndarray) -> Graph:
    """conv2d (OHWI kernel view of an HWIO array) -> batch_norm with unit gamma, run through fold-batchnorm."""
    from qcompiler.passes.manager import run_passes

    g = Graph("folded")
    x = g.add_input("x", TensorType((1, 6, 6, kernel.shape[2])))
    out = kernel.shape[3]
    conv = g.op("conv2d", x, g.const(kernel.transpose(3, 0, 1, 2), "w"), padding="same", name="conv")
    ones, zeros = np.ones(out, np.float32), np.zeros(out, np.float32)
    g.outputs = [g.op("batch_norm", conv, g.const(ones, "gamma"), g.const(zeros, "beta"), g.const(zeros, "mean"),
                      g.const(variance, "var"), epsilon=1e-3, name="bn")]
    return run_passes(g, "fold-batchnorm")


def test_folded_kernel_stays_lazy_and_reads_as_its_values():
    """fold-batchnorm keeps the folded kernel as a LazyProduct (`Value.stored`), whose shape and dtype the
    verifier reads without computing it; `Value.data` computes it (once) for any pass that reads values."""
    from qcompiler.ir.layout import LazyProduct

    kernel = _random(3, 3, 4, 64, seed=2)
    g = _folded_conv_graph(kernel, np.full(64, 0.25, np.float32))
    weights = next(n for n in g.nodes if n.op == "conv2d").operands[1]
    assert isinstance(weights.stored, LazyProduct) and weights.stored.computed is None
    g.verify()
    assert weights.stored.computed is None
    data = weights.data
    assert isinstance(data, np.ndarray) and not data.flags.writeable and weights.data is data
    scale = (np.float32(1) / np.sqrt(np.float32(0.25) + np.float32(1e-3))).astype(np.float32)
    np.testing.assert_allclose(data, kernel.transpose(3, 0, 1, 2) * scale, rtol=1e-6)


@pytest.mark.parametrize("cin, channels", [(64, 2048), (4, 64), (4, 2)])  # into a large file, a small one, a small kernel
def test_folded_kernel_that_overflows_is_an_error_naming_it(cin, channels):
    """A batch norm whose scale overflows a finite kernel to inf: the writer finds it as it computes the products
    and names the constant, as it names a NaN weight."""
    from qcompiler.ir.checks import ConstantValueError

    kernel = _random(3, 3, cin, channels, seed=3) * np.float32(1e37)
    variance = np.full(channels, 1e-6, np.float32)  # scale ~32: some of 1e37 * N(0, 1) * 32 overflow
    g = _folded_conv_graph(kernel, variance)
    with pytest.raises(ConstantValueError, match=r"%w.*non-finite"):
        write_tflite(g)
