"""Calibration statistics and observers (qcompiler/quant/observers.py) on synthetic distributions."""
from __future__ import annotations

import numpy as np
import pytest

from qcompiler.quant.math import activation_qparams, dequantize, quantize
from qcompiler.quant.observers import (OBSERVERS, KLObserver, MinMaxObserver, MovingAverageObserver, MseObserver,
                                       PercentileObserver, TensorStats, make_observer)


def _gaussian_with_outliers(n: int = 200_000, outliers: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n).astype(np.float32)
    x[rng.choice(n, outliers, replace=False)] = rng.uniform(-60, 60, size=outliers).astype(np.float32)
    return x


def _stats(x: np.ndarray, batches: int = 10, bins: int = 2048) -> TensorStats:
    stats = TensorStats(bins=bins, name="t")
    for batch in np.array_split(x, batches):
        stats.update(batch)
    return stats


def _int8_mse(x: np.ndarray, lo: float, hi: float) -> float:
    qp = activation_qparams(lo, hi)
    return float(np.mean((dequantize(quantize(x, qp), qp) - x) ** 2))


# ----------------------------------------------------------------------------------------------------
# TensorStats
# ----------------------------------------------------------------------------------------------------
def test_minmax_is_exact_global_min_max_over_batches():
    x = _gaussian_with_outliers()
    stats = _stats(x, batches=7)
    assert MinMaxObserver().range(stats) == (float(x.min()), float(x.max()))
    assert stats.count == x.size and stats.num_batches == 7


def test_merging_batches_equals_one_big_batch():
    x = _gaussian_with_outliers(seed=1)
    one = _stats(x, batches=1)
    streamed = _stats(x, batches=13)
    for a, b in zip(one.histogram(), streamed.histogram()):
        np.testing.assert_array_equal(a, b)
    assert (one.min, one.max, one.count) == (streamed.min, streamed.max, streamed.count)
    # merge() of two separately gathered halves gives the same too
    left, right = _stats(x[: x.size // 2], 3), _stats(x[x.size // 2:], 4)
    left.merge(right)
    for a, b in zip(one.histogram(), left.histogram()):
        np.testing.assert_array_equal(a, b)
    assert left.num_batches == 7 and MinMaxObserver().range(left) == MinMaxObserver().range(one)


def test_histogram_consistent_under_range_growth_in_any_order():
    rng = np.random.default_rng(2)
    pieces = [rng.normal(0, 0.01, 1000), rng.normal(3, 1, 1000), rng.uniform(-500, -400, 10), np.zeros(5),
              rng.normal(0, 1e-4, 100)]
    reference = _stats(np.concatenate(pieces).astype(np.float32), batches=1)
    for order in ([0, 1, 2, 3, 4], [3, 4, 0, 2, 1], [2, 1, 0, 4, 3]):
        stats = TensorStats(name="t")
        for i in order:
            stats.update(pieces[i])
        for a, b in zip(reference.histogram(), stats.histogram()):
            np.testing.assert_array_equal(a, b)


def test_histogram_counts_every_finite_value_once_and_edges_cover_range():
    x = _gaussian_with_outliers(seed=3)
    counts, edges = _stats(x).histogram()
    assert counts.sum() == x.size
    assert edges[0] <= x.min() and edges[-1] > x.max()
    width = np.diff(edges)
    assert np.all(width == width[0]) and np.log2(width[0]) == int(np.log2(width[0]))  # power-of-two width
    # every value lies in the bin its index says
    idx = np.searchsorted(edges, x.astype(np.float64), side="right") - 1
    np.testing.assert_array_equal(np.bincount(idx, minlength=len(counts)), counts)


def test_constant_tensor_then_growth():
    stats = TensorStats(name="t")
    stats.update(np.full(100, 2.5, np.float32))
    counts, _ = stats.histogram()
    assert counts.sum() == 100 and MinMaxObserver().range(stats) == (2.5, 2.5)
    stats.update(np.asarray([-1.0, 7.0], np.float32))
    reference = _stats(np.concatenate([np.full(100, 2.5), [-1.0, 7.0]]).astype(np.float32), batches=1)
    for a, b in zip(reference.histogram(), stats.histogram()):
        np.testing.assert_array_equal(a, b)


def test_nan_is_skipped_and_inf_reaches_minmax_only():
    stats = TensorStats(name="t")
    stats.update(np.asarray([1.0, np.nan, -2.0, np.inf], np.float32))
    assert stats.nan_count == 1 and stats.count == 3
    assert MinMaxObserver().range(stats) == (-2.0, float("inf"))
    assert stats.histogram()[0].sum() == 2


def test_empty_stats_error_names_tensor():
    with pytest.raises(ValueError, match="'conv1'"):
        MinMaxObserver().range(TensorStats(name="conv1"))


# ----------------------------------------------------------------------------------------------------
# observers
# ----------------------------------------------------------------------------------------------------
def test_clipping_observers_clip_outliers():
    x = _gaussian_with_outliers(seed=4)
    stats = _stats(x)
    full_lo, full_hi = MinMaxObserver().range(stats)
    for observer in (PercentileObserver(), KLObserver()):
        lo, hi = observer.range(stats)
        assert full_lo < lo < -2.5 and 2.5 < hi < full_hi, (observer, lo, hi)
        assert hi - lo < 0.25 * (full_hi - full_lo), (observer, lo, hi)
    lo, hi = PercentileObserver(percentile=99.9).range(stats)
    assert -3.6 < lo < -2.8 and 2.8 < hi < 3.6


def test_mse_observer_clips_rare_outliers_and_has_the_lowest_error():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=1_000_000), [40.0, -35.0]]).astype(np.float32)
    stats = _stats(x)
    lo, hi = MseObserver().range(stats)
    full = MinMaxObserver().range(stats)
    assert full[0] < lo < -3 and 3 < hi < 20
    assert _int8_mse(x, lo, hi) < 0.5 * _int8_mse(x, *full)
    for other in (PercentileObserver(), KLObserver()):  # best on its own criterion (up to histogram resolution)
        assert _int8_mse(x, lo, hi) <= 1.02 * _int8_mse(x, *other.range(stats))


def test_mse_observer_on_gaussian_matches_known_optimal_clipping():
    x = np.random.default_rng(9).normal(size=200_000).astype(np.float32)
    lo, hi = MseObserver().range(_stats(x))
    assert -4.3 < lo < -3.6 and 3.6 < hi < 4.3  # about 3.9 sigma is MSE-optimal for 8 bits (Banner et al.)


def test_observers_keep_full_range_of_uniform_data():
    x = np.random.default_rng(6).uniform(-1, 3, size=50_000).astype(np.float32)
    stats = _stats(x)
    for name in ("minmax", "moving_average", "mse", "kl"):
        lo, hi = make_observer(name).range(stats)
        assert lo == pytest.approx(-1, abs=0.05) and hi == pytest.approx(3, abs=0.05), name


def test_relu_like_data_keeps_lower_edge_at_zero():
    x = np.maximum(_gaussian_with_outliers(seed=7), 0)
    stats = _stats(x)
    for name in OBSERVERS:
        lo, hi = make_observer(name).range(stats)
        assert lo == 0.0 and 0 < hi <= x.max(), name


def test_moving_average_follows_batches():
    stats = TensorStats(name="t")
    for batch_max in (1.0, 3.0, 3.0):
        stats.update(np.asarray([-batch_max, batch_max], np.float32))
    lo, hi = MovingAverageObserver(averaging_constant=0.5).range(stats)
    assert (lo, hi) == (-2.5, 2.5)  # 1 -> 1 + 0.5 * 2 = 2 -> 2 + 0.5 * 1 = 2.5
    assert MovingAverageObserver(averaging_constant=1.0).range(stats) == (-3.0, 3.0)
    assert MovingAverageObserver().range(stats) == pytest.approx((-1.0399, 1.0399), abs=1e-4)


def test_rechoosing_an_observer_on_the_same_stats_equals_a_fresh_run():
    x = _gaussian_with_outliers(seed=8)
    stats = _stats(x)
    results = {name: make_observer(name).range(stats) for name in OBSERVERS}
    for name in OBSERVERS:  # in another order, and after every other observer has read the stats
        assert make_observer(name).range(stats) == results[name]
        assert make_observer(name).range(_stats(x)) == results[name]


def test_registry_and_options():
    assert set(OBSERVERS) == {"minmax", "moving_average", "percentile", "mse", "kl"}
    assert make_observer("percentile", percentile=99.0) == PercentileObserver(99.0)
    with pytest.raises(ValueError, match="unknown observer 'median'"):
        make_observer("median")
    with pytest.raises(ValueError, match="bad options"):
        make_observer("minmax", percentile=3)
    with pytest.raises(ValueError, match="percentile must be"):
        PercentileObserver(percentile=20).range(_stats(np.arange(10, dtype=np.float32), batches=1))


# ----------------------------------------------------------------------------------------------------
# sampled histograms, batches in pieces, in-place writes
# ----------------------------------------------------------------------------------------------------
def test_sampled_histogram_keeps_exact_minmax_and_visits_every_channel():
    # NHWC-like batches whose channel c holds the value c: a stride that is a multiple of the channel count
    # would see a single channel.
    channels = 8
    x = np.broadcast_to(np.arange(channels, dtype=np.float32), (64, 16, 16, channels)).copy()
    x[5, 3, 3, 2] = -40.0  # a lone outlier: min/max must see it even if the sample does not
    stats = TensorStats(name="t", sample_limit=100)
    for batch in np.array_split(x, 4):
        stats.update(batch)
    assert (stats.min, stats.max, stats.count) == (-40.0, 7.0, x.size)
    counts, edges = stats.histogram()
    assert counts.sum() <= 100 * 64
    per_channel = [counts[(edges[:-1] <= c) & (c < edges[1:])].sum() for c in range(channels)]
    assert min(per_channel) > 0.9 * max(per_channel), per_channel


def test_sampled_histogram_counts_zeros_of_the_sample():
    x = np.zeros((10, 1000), np.float32)
    x[:, ::2] = 1.0
    stats = TensorStats(name="t", sample_limit=10)
    stats.update(x)
    counts, _ = stats.histogram()
    assert 0 < stats.zero_count < counts.sum() <= 100
    assert MseObserver().range(stats) == (0.0, 1.0)


def test_sample_limit_must_not_be_negative():
    with pytest.raises(ValueError, match="sample_limit must be a number of values per sample"):
        TensorStats(sample_limit=-1)


def test_sample_limit_zero_keeps_min_max_only():
    x = _gaussian_with_outliers(seed=11)
    stats, full = TensorStats(sample_limit=0, name="conv"), _stats(x)
    for batch in np.array_split(x, 10):
        stats.update(batch)
    assert MinMaxObserver().range(stats) == MinMaxObserver().range(full) and stats.count == full.count
    assert make_observer("moving_average").range(stats) == make_observer("moving_average").range(full)
    with pytest.raises(ValueError, match="tensor 'conv': statistics were gathered without a histogram"):
        make_observer("percentile").range(stats)


def test_a_batch_in_pieces_is_one_batch():
    stats = TensorStats(name="t")
    stats.update(np.asarray([[-1.0, 2.0]], np.float32))
    stats.update(np.asarray([[-3.0, 1.0]], np.float32), new_batch=False)
    stats.update(np.asarray([[0.5, 0.75]], np.float32))
    assert stats.num_batches == 2 and list(stats.batch_mins) == [-3.0, 0.5] and list(stats.batch_maxs) == [2.0, 0.75]


def test_inplace_writes_widen_minmax_only():
    x = _gaussian_with_outliers(seed=10)
    stats, plain = _stats(x), _stats(x)
    stats.note_inplace_write(-1.0, 100.0)
    assert MinMaxObserver(inplace=True).range(stats) == (float(x.min()), 100.0) == stats.logged_range
    assert MinMaxObserver().range(stats) == MinMaxObserver(inplace=True).range(plain) == MinMaxObserver().range(plain)
    for name in ("moving_average", "percentile", "mse", "kl"):  # the tensor's own distribution
        assert make_observer(name).range(stats) == make_observer(name).range(plain), name
    other = _stats(x[:10])
    other.merge(stats)
    assert other.logged_range == (float(x.min()), 100.0)
