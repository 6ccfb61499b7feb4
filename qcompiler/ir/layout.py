"""Memory layouts of constant arrays: C-contiguous, or a permutation of a C-contiguous array (a lazy transpose).

A Keras kernel is stored HWIO (Dense: [in, out]) and TFLite wants OHWI ([out, in]). The frontend keeps
`variable.transpose(perm)`, a view of the weights in their Keras layout, instead of copying it
into the TFLite layout: the TFLite writer copies it into the output file in that layout anyway, so the values
are moved once instead of twice (on the benchmark VM a fresh 4 KiB page costs ~2 µs to map, more than copying
it: VGG16's 218 MB of transposed kernels took ~0.1 s of CPU in page faults alone). Numpy computes on such a view
like on any array (a batch norm folded into it is computed in the view's memory order), so only code that reads
an array's raw memory has to care, through `copy_into` and `is_permuted_contiguous`.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

# Rows of the source matrix copied per step of a transposing copy: a 16-row block of a [4608, 4096] matrix is
# 256 KiB, read once in cache while its columns become 16-float runs of the destination rows.
_BLOCK_ROWS = 16
_SMALL = 1 << 18  # bytes; arrays up to this size are copied by numpy in one call


def is_permuted_contiguous(array: np.ndarray) -> bool:
    """True if `array` is a C-contiguous array with its axes permuted (C-contiguous arrays included)."""
    if array.flags.c_contiguous:
        return True
    order = sorted(range(array.ndim), key=lambda axis: array.strides[axis], reverse=True)
    return array.transpose(order).flags.c_contiguous and all(s > 0 for s in array.strides)


def transposed_matrix(array: np.ndarray) -> Optional[np.ndarray]:
    """`array` seen as a matrix [p, q] whose transpose [q, p] is C-contiguous (HWIO viewed as OHWI is
    [O, H*W*I] over [H*W*I, O]), or None if it is not one."""
    for split in range(1, array.ndim):
        shape = (int(np.prod(array.shape[:split])), int(np.prod(array.shape[split:])))
        try:
            matrix = array.reshape(shape, copy=False)
        except ValueError:  # no view of that shape
            continue
        if matrix.strides == (array.itemsize, shape[0] * array.itemsize):
            return matrix
    return None


def copy_into(target: np.ndarray, array: np.ndarray) -> None:
    """Copy `array`'s values in C order into `target` (a flat uint8 buffer of exactly `array.nbytes` bytes).

    A transposed matrix is copied in blocks of source rows (numpy's element-wise strided copy of a transposed
    [4608, 4096] matrix took 140 ms of CPU, the blocks 23 ms)."""
    if array.flags.c_contiguous:
        target[:] = np.frombuffer(array, np.uint8) if array.ndim else array.reshape(1).view(np.uint8)
        return
    out = target.view(array.dtype).reshape(array.shape)
    matrix = transposed_matrix(array) if array.nbytes > _SMALL else None
    if matrix is None:  # numpy's strided copy: fast enough in cache
        np.copyto(out, array)
        return
    out_matrix = out.reshape(matrix.shape)
    for start in range(0, matrix.shape[1], _BLOCK_ROWS):
        out_matrix[:, start:start + _BLOCK_ROWS] = matrix[:, start:start + _BLOCK_ROWS]


_PARALLEL_BYTES = 1 << 20  # products from this size are computed by two threads


def multiply(array: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """`array * factor` in `array`'s dtype and memory order (float32 stays float32: each element is the one IEEE
    product numpy computes), a large one by two threads on the two halves of its outermost axis in memory.

    The product is fresh memory, and mapping it costs more than multiplying (~2 µs a 4 KiB page on the benchmark
    VM); numpy releases the GIL while it multiplies, so two threads map and fill the halves on two cores."""
    factor = np.asarray(factor)
    if factor.dtype != array.dtype:  # numpy's own promotion, then back to the array's dtype
        return (array * factor).astype(array.dtype, copy=False)
    out = np.empty_like(array)  # same layout: a lazily transposed kernel stays a permutation
    axis = max((a for a in range(array.ndim) if array.shape[a] > 1), key=lambda a: array.strides[a], default=None)
    if array.nbytes < _PARALLEL_BYTES or axis is None or (os.cpu_count() or 1) < 2:
        np.multiply(array, factor, out=out)
        return out
    factor = np.broadcast_to(factor, array.shape)
    middle = array.shape[axis] // 2
    halves = [tuple(slice(None) if a != axis else part for a in range(array.ndim))
              for part in (slice(0, middle), slice(middle, None))]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for done in [pool.submit(np.multiply, array[h], factor[h], out=out[h]) for h in halves]:
            done.result()
    return out
