"""Calibration statistics and the observers that turn them into a float range (pure numpy).

`TensorStats` is fed batch by batch and keeps everything any observer needs, so the observer can be chosen (or
changed) after the data has run:
  * exact running min/max over all values (what the converter's calibrator keeps) and the value count,
  * the range of values a TFLite kernel later wrote in place into the tensor's buffer (`note_inplace_write`):
    the converter's calibration logger records those too, so the minmax observer can include them (`inplace`),
  * per-batch min/max (for the moving-average observer),
  * a histogram of `bins` bins (2048 by default) whose bin width is a power of two and whose edges are multiples
    of the width. When the range grows, the width doubles as often as needed and bins merge exactly in pairs, so
    streaming any split of the data in any order gives exactly the histogram of one big batch: it depends only on
    the data's final min/max (width = the smallest power of two with floor(max/w) - floor(min/w) < bins; window
    starts at floor(min/w)). While every value seen is identical the histogram is kept as a (value, count) pair.
  * `sample_limit=0` keeps no histogram (min/max statistics only: all the minmax and moving-average observers
    need). With `sample_limit`, a batch holding more than `sample_limit` values per sample (leading axis) contributes
    only a deterministic strided sample of them to the histogram (min/max, counts and per-batch ranges stay
    exact). Histogramming is then cheap (calibrating MobileNetV2 at 224x224 reads ~7M values per image), at the
    price of a sampled histogram: percentile/mse/kl see an estimate of the distribution whose far tails (rarer
    than about one value in the sample) are noisy, and the histogram depends on how the data was split into
    batches. `zero_count` counts the zeros of the sample, so it stays consistent with the histogram. The kl
    observer is the most sensitive to sampling noise (its window search can jump): give it exact histograms.

Observers are small frozen dataclasses (options are fields) with `range(stats) -> (min, max)`; OBSERVERS maps the
names used on the command line and in pass options to their classes. docs/quantization-notes.md describes each.
NaN values are skipped (as the converter's calibration logger does); infinities reach min/max but not the
histogram.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np


class TensorStats:
    """Batch-wise statistics of one tensor."""

    def __init__(self, bins: int = 2048, name: str = "", sample_limit: Optional[int] = None) -> None:
        if bins < 256:
            raise ValueError(f"TensorStats needs at least 256 histogram bins (one per int8 level), got {bins}")
        if sample_limit is not None and sample_limit < 0:
            raise ValueError(f"sample_limit must be a number of values per sample (0: no histogram), got {sample_limit}")
        self.bins = bins
        self.name = name
        self.sample_limit = sample_limit
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.nan_count = 0
        self.zero_count = 0  # histogrammed values exactly 0 (quantized without error whatever the range)
        self.inplace_min = math.inf  # range of values kernels wrote in place into this tensor's buffer
        self.inplace_max = -math.inf
        self._batch_mins: list[float] = []
        self._batch_maxs: list[float] = []
        self._finite_min = math.inf
        self._finite_max = -math.inf
        self._single: Optional[tuple[float, int]] = None  # (value, count) while all finite values are equal
        self._counts: Optional[np.ndarray] = None
        self._exponent = 0  # bin width = 2 ** exponent
        self._offset = 0  # bin i covers [(offset + i) * w, (offset + i + 1) * w)

    # ------------------------------------------------------------------ feeding
    def update(self, values: np.ndarray, new_batch: bool = True) -> None:
        """Add one batch (any shape, leading axis = samples; values are taken as float32, like the float model's
        tensors). The array is only read during the call: it may be a view into a buffer that is reused later.
        `new_batch=False`: the values continue the batch of the previous call (a batch fed in pieces)."""
        x = np.asarray(values, np.float32)
        samples = x.shape[0] if x.ndim else 1
        per_sample = x.size // samples if samples else 1
        x = x.reshape(-1)
        if x.size == 0:
            return
        batch_min, batch_max = x.min(), x.max()  # NaN propagates: the common case needs no isnan pass
        if np.isnan(batch_min) or np.isnan(batch_max):
            nan = np.isnan(x)
            self.nan_count += int(nan.sum())
            x = x[~nan]
            if x.size == 0:
                return
            batch_min, batch_max = x.min(), x.max()
        batch_min, batch_max = float(batch_min), float(batch_max)
        self.min, self.max = min(self.min, batch_min), max(self.max, batch_max)
        self.count += int(x.size)
        if new_batch or not self._batch_mins:
            self._batch_mins.append(batch_min)
            self._batch_maxs.append(batch_max)
        else:
            self._batch_mins[-1] = min(self._batch_mins[-1], batch_min)
            self._batch_maxs[-1] = max(self._batch_maxs[-1], batch_max)
        if self.sample_limit == 0:  # min/max statistics only
            return
        sample = self._histogram_sample(x, per_sample, samples)
        if not (math.isfinite(batch_min) and math.isfinite(batch_max)):
            sample = sample[np.isfinite(sample)]
        if sample.size:
            self.zero_count += int(np.count_nonzero(sample == 0))
            self._add_to_histogram(sample.astype(np.float64))

    def _histogram_sample(self, x: np.ndarray, per_sample: int, samples: int) -> np.ndarray:
        """All of `x`, or every k-th value when there are more than `sample_limit` per sample. k is made coprime
        with the number of values per sample, so the sample visits every channel and position instead of a fixed
        subset (with k a multiple of the channel count, NHWC data would be sampled from one channel only)."""
        limit = None if self.sample_limit is None else self.sample_limit * samples
        if limit is None or x.size <= limit:
            return x
        stride = -(-x.size // limit)
        while math.gcd(stride, per_sample) != 1:
            stride += 1
        return x[::stride]

    def note_inplace_write(self, lo: float, hi: float) -> None:
        """A TFLite kernel writes its output, with values in [lo, hi], into this tensor's buffer. TFLite's
        calibration logger logs an op's inputs again after the kernel has run, so the converter records the union
        of this tensor's range and [lo, hi] (`logged_range`)."""
        self.inplace_min = min(self.inplace_min, float(lo))
        self.inplace_max = max(self.inplace_max, float(hi))

    def merge(self, other: "TensorStats") -> None:
        """Fold in statistics gathered separately (e.g. on another shard); batches of `other` come after ours."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge statistics with {other.bins} bins into {self.bins} bins")
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.inplace_min = min(self.inplace_min, other.inplace_min)
        self.inplace_max = max(self.inplace_max, other.inplace_max)
        self.count += other.count
        self.nan_count += other.nan_count
        self.zero_count += other.zero_count
        self._batch_mins.extend(other._batch_mins)
        self._batch_maxs.extend(other._batch_maxs)
        if other._single is not None:
            value, count = other._single
            self._add_to_histogram(np.full(1, value), weight=count)
        elif other._counts is not None:
            widths = other._offset + np.arange(other.bins)
            nonzero = other._counts > 0
            self._add_bins(widths[nonzero], other._exponent, other._counts[nonzero],
                           other._finite_min, other._finite_max)

    # ------------------------------------------------------------------ reading
    @property
    def logged_range(self) -> tuple[float, float]:
        """(min, max) as TFLiteConverter's calibrator records them: the tensor's own values plus whatever a kernel
        wrote in place into its buffer (see `note_inplace_write`)."""
        return min(self.min, self.inplace_min), max(self.max, self.inplace_max)

    @property
    def batch_mins(self) -> np.ndarray:
        return np.asarray(self._batch_mins, np.float64)

    @property
    def batch_maxs(self) -> np.ndarray:
        return np.asarray(self._batch_maxs, np.float64)

    @property
    def num_batches(self) -> int:
        return len(self._batch_mins)

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts[bins] int64, edges[bins + 1] float64). Needs at least one finite value."""
        if self.sample_limit == 0:
            raise ValueError(f"tensor '{self.name}': statistics were gathered without a histogram (sample_limit=0); "
                             "gather them again with histograms for this observer")
        if self._single is not None:
            value, count = self._single
            # A degenerate histogram: everything in one bin of (arbitrary) width around the value.
            width = max(abs(value), 1.0) * 2.0**-20
            edges = value - width / 2 + width * np.arange(self.bins + 1) - width * (self.bins // 2)
            counts = np.zeros(self.bins, np.int64)
            counts[self.bins // 2] = count
            return counts, edges
        if self._counts is None:
            raise ValueError(f"tensor '{self.name}': no finite values were observed; feed calibration data first")
        width = 2.0**self._exponent
        return self._counts.copy(), (self._offset + np.arange(self.bins + 1)) * width

    # ------------------------------------------------------------------ histogram internals
    def _add_to_histogram(self, finite: np.ndarray, weight: int = 1) -> None:
        lo, hi = float(finite.min()), float(finite.max())
        if self._counts is None and (self._single is None or self._single[0] == lo) and lo == hi:
            previous = self._single[1] if self._single is not None else 0
            self._single = (lo, previous + int(finite.size) * weight)
            self._finite_min, self._finite_max = lo, hi
            return
        new_min, new_max = min(self._finite_min, lo), max(self._finite_max, hi)
        self._ensure_window(new_min, new_max)
        idx = np.floor(finite / 2.0**self._exponent).astype(np.int64) - self._offset
        self._counts += np.bincount(idx, minlength=self.bins).astype(np.int64) * weight

    def _add_bins(self, abs_index: np.ndarray, exponent: int, counts: np.ndarray, lo: float, hi: float) -> None:
        """Add counts given as absolute bin indices at width 2**exponent (merge of another histogram)."""
        new_min, new_max = min(self._finite_min, lo), max(self._finite_max, hi)
        self._ensure_window(new_min, new_max, at_least=exponent)
        shifted = abs_index >> (self._exponent - exponent)
        self._counts += np.bincount(shifted - self._offset, weights=counts, minlength=self.bins).astype(np.int64)

    def _fits(self, exponent: int, lo: float, hi: float) -> bool:
        width = 2.0**exponent
        return math.floor(hi / width) - math.floor(lo / width) < self.bins

    def _ensure_window(self, lo: float, hi: float, at_least: Optional[int] = None) -> None:
        """Make the histogram cover [lo, hi] (the new global finite min/max), re-binning exactly if needed."""
        if self._counts is None:
            exponent = math.frexp((hi - lo) / self.bins)[1] - 1  # first guess, refined below
            while not self._fits(exponent, lo, hi):
                exponent += 1
            while self._fits(exponent - 1, lo, hi):
                exponent -= 1
            if at_least is not None:
                exponent = max(exponent, at_least)
            self._exponent, self._offset = exponent, math.floor(lo / 2.0**exponent)
            self._counts = np.zeros(self.bins, np.int64)
            pending, self._single = self._single, None
            self._finite_min, self._finite_max = lo, hi
            if pending is not None:
                value, count = pending
                self._counts[math.floor(value / 2.0**exponent) - self._offset] += count
            return
        exponent = self._exponent if at_least is None else max(self._exponent, at_least)
        while not self._fits(exponent, lo, hi):
            exponent += 1
        new_offset = math.floor(lo / 2.0**exponent)
        if exponent != self._exponent or new_offset != self._offset:
            old_index = self._offset + np.arange(self.bins)
            nonzero = self._counts > 0
            merged = old_index[nonzero] >> (exponent - self._exponent)
            counts = np.bincount(merged - new_offset, weights=self._counts[nonzero], minlength=self.bins)
            self._counts = counts.astype(np.int64)
            self._exponent, self._offset = exponent, new_offset
        self._finite_min, self._finite_max = lo, hi


# ----------------------------------------------------------------------------------------------------
# observers
# ----------------------------------------------------------------------------------------------------
def _require_data(stats: TensorStats, observer: str) -> None:
    if stats.count == 0 and stats.nan_count:
        raise ValueError(f"{observer} observer: tensor '{stats.name}' saw only NaN values ({stats.nan_count}): the "
                         "calibration data overflows float32 inside the model (values too large?); scale the data "
                         "as the model expects it")
    if stats.count == 0:
        raise ValueError(f"{observer} observer: tensor '{stats.name}' saw no calibration data")


@dataclass(frozen=True)
class MinMaxObserver:
    """Exact global min/max over every value of every batch: the tensor's own range, or with `inplace` what
    TFLiteConverter's calibrator records, which includes the values a kernel running in place wrote into the
    tensor's buffer (`calibrate` sets `inplace` from the quantization policy's in-place range unions)."""

    inplace: bool = False

    def range(self, stats: TensorStats) -> tuple[float, float]:
        _require_data(stats, "minmax")
        lo, hi = stats.logged_range if self.inplace else (stats.min, stats.max)
        return float(lo), float(hi)


@dataclass(frozen=True)
class MovingAverageObserver:
    """Exponential moving average of per-batch min/max: the first batch initialises, then
    m <- m + c * (batch - m). c = 0.01 like PyTorch's MovingAverageMinMaxObserver (TF's MovingAvgQuantize uses
    decay 0.999 = c 0.001 starting from [-6, 6], which suits training, not a few calibration batches)."""

    averaging_constant: float = 0.01

    def range(self, stats: TensorStats) -> tuple[float, float]:
        _require_data(stats, "moving_average")
        if not 0 < self.averaging_constant <= 1:
            raise ValueError(f"moving_average: averaging_constant must be in (0, 1], got {self.averaging_constant}")
        mins, maxs = stats.batch_mins, stats.batch_maxs
        lo, hi = float(mins[0]), float(maxs[0])
        for batch_min, batch_max in zip(mins[1:], maxs[1:]):
            lo += self.averaging_constant * (float(batch_min) - lo)
            hi += self.averaging_constant * (float(batch_max) - hi)
        return lo, hi


def _histogram_quantile(counts: np.ndarray, edges: np.ndarray, fraction: float) -> float:
    """Value below which `fraction` of the histogram mass lies (linear inside a bin)."""
    cdf = np.cumsum(counts, dtype=np.float64)
    target = fraction * cdf[-1]
    i = int(np.searchsorted(cdf, target, side="left"))
    i = min(i, len(counts) - 1)
    below = cdf[i - 1] if i > 0 else 0.0
    inside = (target - below) / counts[i] if counts[i] > 0 else 0.0
    return float(edges[i] + inside * (edges[i + 1] - edges[i]))


@dataclass(frozen=True)
class PercentileObserver:
    """Two-sided percentile from the histogram (linear inside a bin): max = the `percentile`-th percentile,
    min = the (100 - percentile)-th; a percentile falling in the first/last occupied bin gives the exact min/max."""

    percentile: float = 99.99

    def range(self, stats: TensorStats) -> tuple[float, float]:
        _require_data(stats, "percentile")
        if not 50 < self.percentile <= 100:
            raise ValueError(f"percentile: percentile must be in (50, 100], got {self.percentile}")
        counts, edges = stats.histogram()
        fraction = self.percentile / 100.0
        lo = _histogram_quantile(counts, edges, 1.0 - fraction)
        hi = _histogram_quantile(counts, edges, fraction)
        occupied = np.nonzero(counts)[0]
        if lo < edges[occupied[0] + 1]:  # inside the first occupied bin: the histogram cannot do better
            lo = float(stats.min)
        if hi >= edges[occupied[-1]]:
            hi = float(stats.max)
        return max(lo, float(stats.min)), min(hi, float(stats.max))


def _quantization_mse(centers: np.ndarray, counts: np.ndarray, lows: np.ndarray, highs: np.ndarray,
                      qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """Mean squared error of quantizing weighted sample points with each candidate range (one row each)."""
    lows = np.minimum(lows, 0.0)[:, None]
    highs = np.maximum(highs, 0.0)[:, None]
    scale = np.maximum(highs - lows, 1e-30) / (qmax - qmin)
    zero_point = np.clip(np.round(qmin - lows / scale), qmin, qmax)
    q = np.clip(np.round(centers[None, :] / scale) + zero_point, qmin, qmax)
    error = (centers[None, :] - (q - zero_point) * scale) ** 2
    return (error * counts[None, :]).sum(axis=1) / max(counts.sum(), 1)


@dataclass(frozen=True)
class MseObserver:
    """Clipping range minimising the int8 (asymmetric, 256 levels) quantization MSE of the histogram.

    Coarse search over a geometric grid of (min, max) shrink factors (2^(-k/4), k = 0..steps), then a fine linear
    search around the best pair. Each bin's mass is taken as uniform inside the bin (`subsamples` points per bin),
    exact zeros are left out (they quantize without error at any range)."""

    steps: int = 32
    refine: int = 8
    subsamples: int = 8

    def range(self, stats: TensorStats) -> tuple[float, float]:
        _require_data(stats, "mse")
        counts, edges = _histogram_without_zeros(stats)  # exact zeros quantize without error at any range
        keep = counts > 0
        if not keep.any():
            return float(stats.min), float(stats.max)
        # Each bin's mass is spread over `subsamples` evenly spaced points (uniform inside the bin).
        width = edges[1] - edges[0]
        fractions = (np.arange(self.subsamples) + 0.5) / self.subsamples
        centers = (edges[:-1][keep][:, None] + fractions[None, :] * width).ravel()
        weights = np.repeat(counts[keep].astype(np.float64) / self.subsamples, self.subsamples)
        full_lo, full_hi = min(float(stats.min), 0.0), max(float(stats.max), 0.0)
        factors = 2.0 ** (-np.arange(self.steps + 1) / 4.0)
        lo_c, hi_c = self._grid(full_lo * factors, full_hi * factors)
        best = self._best(centers, weights, lo_c, hi_c)
        lo, hi = float(lo_c[best]), float(hi_c[best])
        step_lo, step_hi = abs(lo) * (2**0.25 - 1), abs(hi) * (2**0.25 - 1)
        offsets = np.linspace(-1.0, 1.0, 2 * self.refine + 1)
        lo_f = np.clip(lo + offsets * step_lo, full_lo, 0.0)
        hi_f = np.clip(hi + offsets * step_hi, 0.0, full_hi)
        lo_c, hi_c = self._grid(lo_f, hi_f)
        best = self._best(centers, weights, lo_c, hi_c)
        return float(lo_c[best]), float(hi_c[best])

    @staticmethod
    def _grid(lows: np.ndarray, highs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lows, highs = np.unique(lows), np.unique(highs)
        lo_grid, hi_grid = np.meshgrid(lows, highs, indexing="ij")
        lo_c, hi_c = lo_grid.ravel(), hi_grid.ravel()
        valid = hi_c - lo_c > 0
        if not valid.any():  # all-zero data: nothing to clip
            return lo_c[:1], hi_c[:1]
        return lo_c[valid], hi_c[valid]

    @staticmethod
    def _best(centers: np.ndarray, weights: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> int:
        errors = np.concatenate([_quantization_mse(centers, weights, lows[i:i + 256], highs[i:i + 256])
                                 for i in range(0, len(lows), 256)])
        return int(np.argmin(errors))  # the first minimum: deterministic


def _kl_divergence(hist: np.ndarray, start: int, stop: int, levels: int) -> float:
    """TensorRT's entropy criterion for the window hist[start:stop] quantized to `levels` levels."""
    window = hist[start:stop].astype(np.float64)
    reference = window.copy()
    reference[0] += hist[:start].sum()
    reference[-1] += hist[stop:].sum()
    n = stop - start
    bounds = (np.arange(levels) * n) // levels
    group_sum = np.add.reduceat(window, bounds)
    nonzero = (window > 0).astype(np.float64)
    group_nonzero = np.add.reduceat(nonzero, bounds)
    group_of_bin = np.repeat(np.arange(levels), np.diff(np.append(bounds, n)))
    per_bin = np.where(group_nonzero > 0, group_sum / np.maximum(group_nonzero, 1), 0.0)
    expanded = per_bin[group_of_bin] * nonzero
    p = reference / reference.sum()
    q_total = expanded.sum()
    if q_total == 0:
        return math.inf
    q = expanded / q_total
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))


@dataclass(frozen=True)
class KLObserver:
    """TensorRT-style entropy calibration adapted to asymmetric int8.

    TensorRT searches a symmetric threshold over a |x| histogram with 128 levels. Here a window [lo, hi] of the
    signed histogram (always reaching 0) is quantized to 256 levels; P is the window with the mass outside folded
    into its edge bins, Q merges the window into 256 groups and spreads each group's mass over its non-empty bins;
    the window minimising KL(P || Q) wins. Exact zeros are left out (0 is always exactly representable, and a ReLU
    spike at 0 would otherwise dominate the divergence). Search: a `grid` x `grid` grid of (lower, upper) edges,
    then a finer grid around the best pair. A window narrower than 256 bins cannot be judged at the histogram's
    resolution, so the range shrinks to at most 256/bins of the observed span (1/8 with 2048 bins), like
    TensorRT's 128/2048; use more bins for finer clipping."""

    grid: int = 24
    levels: int = 256

    def range(self, stats: TensorStats) -> tuple[float, float]:
        _require_data(stats, "kl")
        counts, edges = _histogram_without_zeros(stats)
        occupied = np.nonzero(counts)[0]
        if occupied.size == 0:
            return float(stats.min), float(stats.max)
        first, last = int(occupied[0]), int(occupied[-1]) + 1
        if last - first <= self.levels:
            return float(stats.min), float(stats.max)
        zero_bin = int(np.searchsorted(edges, 0.0, side="right")) - 1  # may lie outside [first, last)
        low_limit = min(max(zero_bin, first), last - 1)  # the window's start may not pass 0 ...
        high_limit = max(min(zero_bin + 1, last), first + 1)  # ... nor its stop
        starts = np.unique(np.linspace(first, low_limit, self.grid).round().astype(int))
        stops = np.unique(np.linspace(high_limit, last, self.grid).round().astype(int))
        start, stop = self._best(counts, starts, stops)
        step_start = max(int(np.diff(starts).max(initial=1)), 1)
        step_stop = max(int(np.diff(stops).max(initial=1)), 1)
        starts = np.unique(np.clip(start + np.linspace(-step_start, step_start, 9).round().astype(int),
                                   first, low_limit))
        stops = np.unique(np.clip(stop + np.linspace(-step_stop, step_stop, 9).round().astype(int),
                                  high_limit, last))
        start, stop = self._best(counts, starts, stops)
        lo = float(edges[start]) if start > first else float(stats.min)
        hi = float(edges[stop]) if stop < last else float(stats.max)
        return max(lo, float(stats.min)), min(hi, float(stats.max))

    def _best(self, counts: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> tuple[int, int]:
        windows = [(int(s), int(e)) for s in starts for e in stops if e - s >= self.levels]
        if not windows:  # nothing wide enough: the narrowest allowed window around the data
            s = int(starts[0])
            return s, min(s + self.levels, int(stops[-1]))
        divergences = [_kl_divergence(counts, s, e, self.levels) for s, e in windows]
        return windows[int(np.argmin(divergences))]


def _histogram_without_zeros(stats: TensorStats) -> tuple[np.ndarray, np.ndarray]:
    counts, edges = stats.histogram()
    if stats.zero_count:
        zero_bin = int(np.searchsorted(edges, 0.0, side="right")) - 1
        if 0 <= zero_bin < len(counts):
            counts[zero_bin] -= stats.zero_count
    return counts, edges


OBSERVERS: dict[str, type] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageObserver,
    "percentile": PercentileObserver,
    "mse": MseObserver,
    "kl": KLObserver,
}


def make_observer(name: str, **options):
    """An observer by registry name with options, e.g. make_observer("percentile", percentile=99.9)."""
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer '{name}'; choose one of {sorted(OBSERVERS)}")
    try:
        return OBSERVERS[name](**options)
    except TypeError as err:
        raise ValueError(f"observer '{name}': bad options {options}: {err}") from None
