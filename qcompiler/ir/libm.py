"""The C library's float32 functions that TFLite's kernels call, vectorised.

TFLite's EXP (float, and the int8/int16 tables LUTPopulate builds) calls std::exp(float), i.e. the C library's
expf. glibc's expf is not correctly rounded (its double-precision result is within about 0.002 float ulp before
the final rounding), so exp computed in float64 and rounded to float32 differs from it on inputs whose exact value
lies near the midpoint of two floats (measured: 16 of 20,000 uniform inputs in [-80, 80]). `expf` rounds the
float64 value and asks the C library only for those near-ties.

GELU's tables call std::erfc(float) and std::tanh(float), glibc's erfcf and tanhf, which are further off: they
differ from the correctly rounded value on about 19% and 14% of normal(0, 3) inputs (an ulp, not only near ties),
enough to move an int16 table entry by one (tests/test_int_interpreter.py, the int16 GELU example). `erfcf` and
`tanhf` ask the C library for every value; they are meant for tables (a few hundred values), not for tensors.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Callable, Optional

import numpy as np

_NEAR_TIE = 2.0**-28  # relative distance to a float32 rounding midpoint below which the C library decides


@functools.lru_cache(maxsize=None)
def _load(function: str) -> Optional[Callable[[float], float]]:
    """A float32 -> float32 function of the C library (expf, tanhf, erff, ...), or None where there is none."""
    name = ctypes.util.find_library("m")
    if name is None:
        return None
    try:
        fn = getattr(ctypes.CDLL(name), function)
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return fn


_EXPF = _load("expf")


def expf(x: np.ndarray) -> np.ndarray:
    """std::exp on float32 values, as the C library computes it (float64 exp rounded to float32 where no C
    library is found)."""
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore", under="ignore"):
        exact = np.exp(x.astype(np.float64))
        rounded = exact.astype(np.float32)
    if _EXPF is None or not rounded.size:
        return rounded
    with np.errstate(over="ignore", invalid="ignore"):
        toward = np.nextafter(rounded, np.where(exact > rounded, np.float32(np.inf), np.float32(-np.inf)))
        midpoint = (rounded.astype(np.float64) + toward.astype(np.float64)) / 2.0
        near = np.isfinite(rounded) & (np.abs(exact - midpoint) <= _NEAR_TIE * np.abs(exact)) & (exact != rounded)
    if np.any(near):
        rounded = rounded.copy()
        rounded[near] = [_EXPF(float(v)) for v in x[near]]
    return rounded


def _every_value(function: str, fallback: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """The C library's float32 `function` on every element (`fallback`, a float64 computation rounded to float32,
    where no C library is found)."""
    def apply(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        fn = _load(function)
        if fn is None:
            with np.errstate(all="ignore"):
                return np.asarray(fallback(x.astype(np.float64)), np.float64).astype(np.float32)
        return np.array([fn(float(v)) for v in x.ravel()], np.float32).reshape(x.shape)

    return apply


def _erfc64(x: np.ndarray) -> np.ndarray:
    from scipy.special import erfc  # scipy ships with the test deps (ops.py's float GELU uses it too)

    return erfc(x)


erfcf = _every_value("erfcf", _erfc64)  # std::erfc(float)
tanhf = _every_value("tanhf", np.tanh)  # std::tanh(float)
