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
from typing import Any, Optional

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


def copy_into(target: np.ndarray, array: "np.ndarray | LazyProduct") -> None:
    """Copy `array`'s values in C order into `target` (a flat uint8 buffer of exactly `array.nbytes` bytes); a
    `LazyProduct` is computed into it (`fill_product`), unless computed already.

    A transposed matrix is copied in blocks of source rows (numpy's element-wise strided copy of a transposed
    [4608, 4096] matrix took 140 ms of CPU, the blocks 23 ms)."""
    if isinstance(array, LazyProduct):
        if array.computed is None:
            fill_product(target.view(array.dtype).reshape(array.shape), array)
            return
        array = array.computed
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


class LazyProduct:
    """`array * factor` (float32 products, `factor` broadcast along some axes of `array`) not computed yet: a
    batch norm folded into a kernel. The fold used to compute the product into fresh memory and the writer then
    copied it into the output file; mapping that fresh memory and moving the values once more took as long as
    writing the file (InceptionV3: ~90 ms of ~370 ms of CPU). Now the writer computes the products straight into
    the file (`copy_into`), each element the same single IEEE product numpy computes, so the bytes are the same.

    A constant node may hold one instead of an ndarray (`Value.stored`); `Value.data`, and numpy on it
    (`np.asarray`), compute the product once and keep it (`array()`), so code that reads values never sees the
    difference. Code that only needs the shape and dtype reads them here.
    """

    __slots__ = ("base", "factor", "shape", "dtype", "_value", "_finite")

    def __init__(self, base: np.ndarray, factor: np.ndarray) -> None:
        if base.dtype != factor.dtype or factor.ndim != base.ndim or np.broadcast_shapes(base.shape, factor.shape) \
                != base.shape:
            raise ValueError(f"a lazy product needs a factor of the base's dtype broadcasting to its shape; got "
                             f"{base.dtype}{list(base.shape)} * {factor.dtype}{list(factor.shape)}")
        self.base, self.factor = base, factor
        self.shape: tuple[int, ...] = base.shape
        self.dtype: np.dtype = base.dtype
        self._value: Optional[np.ndarray] = None
        self._finite: Optional[bool] = None  # None: not known yet

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return self.base.size

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.base.nbytes

    @property
    def computed(self) -> Optional[np.ndarray]:
        """The product if something computed it already, else None."""
        return self._value

    def array(self) -> np.ndarray:
        """The product (read-only), computed on first use in `base`'s memory order."""
        if self._value is None:
            value = multiply(self.base, self.factor)
            value.setflags(write=False)
            self._value = value
        return self._value

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        value = self.array()
        return value if dtype is None else value.astype(dtype, copy=False)

    def at(self, index: tuple[np.ndarray, ...]) -> np.ndarray:
        """The products at the given (numpy fancy) index, without computing the rest."""
        factor = np.broadcast_to(self.factor, self.shape)
        return np.multiply(self.base[index], factor[index])

    @property
    def finite(self) -> Optional[bool]:
        """Whether every product is finite, once someone found out (`note_finite`: qcompiler.ir.checks, or the
        writer after computing the products into the file); None before."""
        return self._finite

    def note_finite(self, finite: bool) -> None:
        self._finite = finite

    def __repr__(self) -> str:
        return f"LazyProduct({self.dtype}{list(self.shape)})"


def lazy_multiply(array: np.ndarray, factor: np.ndarray) -> "LazyProduct | np.ndarray":
    """`multiply(array, factor)`, left to the writer when that gives the same bits (a float array and a factor of
    its dtype broadcasting to its shape, the array a permutation of a contiguous one); else computed now."""
    factor = np.asarray(factor)
    if (array.dtype.kind == "f" and factor.dtype == array.dtype and factor.ndim == array.ndim
            and np.broadcast_shapes(array.shape, factor.shape) == array.shape and is_permuted_contiguous(array)):
        return LazyProduct(array, factor)
    return multiply(array, factor)


def fill_product(out: np.ndarray, product: LazyProduct) -> None:
    """Compute `product` into `out` (an array of its shape and dtype, C-contiguous): a transposed base in blocks
    of source rows, as `copy_into` copies one."""
    base, factor = product.base, product.factor
    matrix = transposed_matrix(base) if not base.flags.c_contiguous and base.nbytes > _SMALL else None
    if matrix is not None:
        try:
            factors = np.broadcast_to(factor, base.shape).reshape(matrix.shape, copy=False)
        except ValueError:  # no strided view of the factor in the matrix's shape
            matrix = None
    if matrix is None:
        np.multiply(base, factor, out=out)
        return
    out_matrix = out.reshape(matrix.shape)
    for start in range(0, matrix.shape[1], _BLOCK_ROWS):
        block = slice(start, start + _BLOCK_ROWS)
        np.multiply(matrix[:, block], factors[:, block], out=out_matrix[:, block])
