"""Quantization arithmetic shared by passes, observers and the backend (pure numpy)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

ArrayLike = Union[float, Sequence[float], np.ndarray]


def nudge_range(qmin: int, qmax: int, rmin: np.ndarray, rmax: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TensorFlow's FakeQuant nudging: shift [rmin, rmax] so that real 0 lands exactly on an integer.

    Returns (nudged_min, nudged_max, scale) in float32, element-wise over per-channel ranges.
    """
    rmin = np.asarray(rmin, np.float32)
    rmax = np.asarray(rmax, np.float32)
    scale = ((rmax - rmin) / np.float32(qmax - qmin)).astype(np.float32)
    safe_scale = np.where(scale > 0, scale, np.float32(1))
    zero_point_from_min = np.float32(qmin) - rmin / safe_scale
    nudged_zero_point = np.where(
        zero_point_from_min < qmin, qmin,
        np.where(zero_point_from_min > qmax, qmax, _round_half_away(zero_point_from_min)))
    nudged_min = ((np.float32(qmin) - nudged_zero_point) * scale).astype(np.float32)
    nudged_max = ((np.float32(qmax) - nudged_zero_point) * scale).astype(np.float32)
    return nudged_min, nudged_max, scale


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def fake_quant(x: np.ndarray, rmin: ArrayLike, rmax: ArrayLike, bits: int = 8, narrow_range: bool = False,
               axis: Optional[int] = None) -> np.ndarray:
    """tf.quantization.fake_quant_with_min_max_vars(_per_channel) in float32."""
    qmin = 1 if narrow_range else 0
    qmax = (1 << bits) - 1
    nudged_min, nudged_max, scale = nudge_range(qmin, qmax, np.atleast_1d(rmin), np.atleast_1d(rmax))
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        nudged_min, nudged_max, scale = (a.reshape(shape) for a in (nudged_min, nudged_max, scale))
    else:
        nudged_min, nudged_max, scale = (a.reshape(()) for a in (nudged_min, nudged_max, scale))
    x = x.astype(np.float32)
    clamped = np.clip(x, nudged_min, nudged_max)
    safe_scale = np.where(scale > 0, scale, np.float32(1))
    steps = np.floor((clamped - nudged_min) / safe_scale + np.float32(0.5))
    out = steps * scale + nudged_min
    return np.where(scale > 0, out, clamped).astype(np.float32)
