"""The fake-quant grid: TF's ops, the keras.ops version (other backends) and qcompiler/quant/math.py agree, and
lowering's parameters reproduce the grid's values."""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from qcompiler.qat.fake_quant_ops import fake_quant_keras
from qcompiler.quant import math as qmath


def _cases(seed: int, count: int = 60):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        channels = int(rng.integers(1, 6))
        x = (rng.standard_normal((40, channels)) * rng.uniform(0.1, 5)).astype(np.float32)
        lo = -rng.uniform(0, 3, channels).astype(np.float32)
        hi = rng.uniform(0.01, 4, channels).astype(np.float32)
        yield x, lo, hi, int(rng.integers(2, 9)), bool(rng.integers(0, 2))


def test_numpy_grid_equals_tensorflow_ops():
    for x, lo, hi, bits, narrow in _cases(0):
        per_tensor = tf.quantization.fake_quant_with_min_max_vars(x, lo[0], hi[0], num_bits=bits,
                                                                  narrow_range=narrow).numpy()
        np.testing.assert_array_equal(qmath.fake_quant(x, lo[0], hi[0], bits, narrow), per_tensor)
        per_channel = tf.quantization.fake_quant_with_min_max_vars_per_channel(x, lo, hi, num_bits=bits,
                                                                               narrow_range=narrow).numpy()
        np.testing.assert_array_equal(qmath.fake_quant(x, lo, hi, bits, narrow, axis=1), per_channel)


def test_keras_ops_grid_equals_numpy_grid():
    for x, lo, hi, bits, narrow in _cases(1):
        ours = np.asarray(fake_quant_keras(x, lo, hi, bits, narrow))
        np.testing.assert_array_equal(ours, qmath.fake_quant(x, lo, hi, bits, narrow, axis=1))


def test_keras_ops_gradient_is_straight_through_inside_the_range():
    x = tf.Variable(np.linspace(-3, 3, 61, dtype=np.float32))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(fake_quant_keras(x, -1.0, 2.0, 8, False))
    grad = tape.gradient(y, x).numpy()
    inside = (x.numpy() >= -1.0) & (x.numpy() <= 2.0)
    np.testing.assert_array_equal(grad[inside], 1.0)
    np.testing.assert_array_equal(grad[~inside], 0.0)


def test_lowering_parameters_reproduce_the_grid():
    for x, lo, hi, bits, narrow in _cases(2):
        params = qmath.fake_quant_qparams(lo, hi, bits, narrow, "i8", axis=1)
        stored = qmath.fake_quant_storage(x, lo, hi, bits, narrow, "i8", axis=1)
        np.testing.assert_array_equal(qmath.dequantize(stored, params), qmath.fake_quant(x, lo, hi, bits, narrow, 1))
        assert len(np.unique(stored[:, 0])) <= 2**bits - narrow


def test_symmetric_weight_grid_has_zero_point_zero():
    w = np.random.default_rng(3).standard_normal((8, 5)).astype(np.float32)
    for bits in (2, 4, 8):
        lo, hi = qmath.symmetric_weight_range(w, 1)
        params = qmath.fake_quant_qparams(lo, hi, bits, True, "i8", axis=1)
        assert set(params.zero_point) == {0}


def test_trained_activation_grid_differs_from_the_converter_rule_on_ties():
    """Plain lowering follows TF's fake-quant nudging; the converter's rule rounds this tie the other way."""
    assert qmath.fake_quant_qparams(-1.3, 2.1, 8).zero_point == (-30,)
    assert qmath.activation_qparams(-1.3, 2.1).zero_point == (-31,)
