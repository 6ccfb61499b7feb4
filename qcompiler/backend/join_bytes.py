"""`join_bytes(pieces)`: `b"".join(pieces)` for a model file of hundreds of megabytes, with fewer page-fault traps.

A .tflite of a large model is one bytes object as big as its weights (VGG19 at 96x96: 239 MB). Writing it, much of
the time goes not into copying but into the kernel mapping the fresh memory in, one 4 KiB page fault at a time
(58,000 for VGG19). Asking the kernel to map the whole range in one call (madvise MADV_POPULATE_WRITE, Linux 5.14+)
saves the trap of every fault: writing VGG19 took 100 ms of CPU instead of 140 ms on the 2-core benchmark VM.
(Transparent huge pages, MADV_HUGEPAGE, were faster in a loop but erratic in a fresh process, 40 to 500 ms: the
fresh 2 MiB pages were slow to come by; not used.)

So for a large result this allocates the bytes object uninitialized (`PyBytes_FromStringAndSize(NULL, n)`, the
C API's way to build a bytes object in place: it is filled before anyone else sees it), populates its memory, and
copies the pieces into it. The result is an ordinary `bytes`, equal to `b"".join(pieces)`. Anywhere this cannot be
done (not CPython on Linux), or for a small result, it is `b"".join(pieces)`; if the kernel refuses the advice the
copy is only slower.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import platform
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence

import numpy as np

from qcompiler.ir.layout import LazyProduct, copy_into

LARGE = 4 << 20  # bytes; below this the faults cost little
PARALLEL = 32 << 20  # bytes; from this size two threads fill the result
_PAGE = mmap.PAGESIZE
MADV_POPULATE_WRITE = 23  # <linux/mman.h>; not in Python 3.11's mmap module


def _c_functions() -> Optional[tuple[Callable[..., Any], Callable[..., Any]]]:
    """(PyBytes_FromStringAndSize, madvise) through ctypes, or None where either is unavailable."""
    if platform.python_implementation() != "CPython" or not sys.platform.startswith("linux"):
        return None
    try:
        new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (AttributeError, OSError):
        return None
    new_bytes.restype = ctypes.py_object
    new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
    madvise.restype = ctypes.c_int
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return new_bytes, madvise


_C = _c_functions()


def join_bytes(pieces: Sequence[Any]) -> bytes:
    """`b"".join(pieces)` (pieces: bytes, bytearray, memoryview or anything with the buffer protocol, C-contiguous),
    where a numpy array that is not C-contiguous (a lazily transposed kernel, qcompiler/ir/layout.py) stands for
    its values in C order: they are copied into the result in that order, without an intermediate copy; and a
    `LazyProduct` (a folded kernel) for its products, computed into the result (and noted finite or not)."""
    views = [p if isinstance(p, LazyProduct) or isinstance(p, np.ndarray) and not p.flags.c_contiguous else _raw(p)
             for p in pieces]
    total = sum(v.nbytes for v in views)
    if _C is None or total < LARGE:
        return b"".join(v if isinstance(v, np.ndarray) and v.flags.c_contiguous else _raw(np.ascontiguousarray(v))
                        for v in views)
    new_bytes, madvise = _C
    out = new_bytes(None, total)
    address = ctypes.cast(out, ctypes.c_void_p).value
    target = np.ctypeslib.as_array((ctypes.c_ubyte * total).from_address(address))
    placed, position = [], 0
    for view in views:
        placed.append((position, view))
        position += view.nbytes
    halves = _halves(placed, total) if total >= PARALLEL and (os.cpu_count() or 1) > 1 else [(0, total, placed)]

    def fill(start: int, end: int, items: list) -> None:
        first, last = -(-(address + start) // _PAGE) * _PAGE, (address + end) // _PAGE * _PAGE
        if last > first:  # if refused (EINVAL before Linux 5.14), just slower
            madvise(first, last - first, MADV_POPULATE_WRITE)
        for at, view in items:
            copy_into(target[at:at + view.nbytes], view)
            if isinstance(view, LazyProduct) and view.finite is None and \
                    np.isfinite(np.sum(target[at:at + view.nbytes].view(view.dtype))):  # summed while in cache
                view.note_finite(True)  # (else the writer looks closer: a sum may overflow where no product did)

    if len(halves) == 1:
        fill(*halves[0])
        return out
    # Two threads, each mapping and filling its half: madvise and numpy's copies release the GIL, so the page
    # faults and the copying of a large file run on two cores (VGG16's 218 MB: ~0.1 s instead of ~0.2 s of wall)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for done in [pool.submit(fill, *half) for half in halves]:
            done.result()
    return out


def _halves(placed: list, total: int) -> list[tuple[int, int, list]]:
    """The pieces split at the piece boundary nearest the middle: two (start, end, pieces) ranges."""
    split = next((i for i, (at, _) in enumerate(placed) if at >= total // 2), len(placed))
    cut = placed[split][0] if split < len(placed) else total
    return [(0, cut, placed[:split]), (cut, total, placed[split:])]


def _raw(piece: Any) -> np.ndarray:
    """A C-contiguous piece's raw bytes, whatever its element type."""
    return np.frombuffer(piece, np.uint8) if not isinstance(piece, np.ndarray) or piece.ndim else \
        piece.reshape(1).view(np.uint8)
