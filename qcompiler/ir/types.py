"""Frozen value types of the IR: element types, quantization parameters, tensor types."""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# IR dtype name -> numpy dtype. The short names are what the text format prints.
DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "f64": np.dtype(np.float64),
    "i8": np.dtype(np.int8),
    "i4": np.dtype(np.int8),  # TFLite INT4 (weights): values in [-8, 7], one per int8 in memory, packed in files
    "u8": np.dtype(np.uint8),
    "i16": np.dtype(np.int16),
    "i32": np.dtype(np.int32),
    "i64": np.dtype(np.int64),
    "bool": np.dtype(np.bool_),
}
_NUMPY_TO_IR = {v: k for k, v in DTYPES.items() if k != "i4"}


def dtype_name(dtype: np.dtype | type | str) -> str:
    """IR name ('f32', 'i8', ...) of a numpy dtype or IR dtype name."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    np_dtype = np.dtype(dtype)
    if np_dtype not in _NUMPY_TO_IR:
        raise TypeError(f"dtype {np_dtype} has no IR equivalent; supported: {sorted(DTYPES)}")
    return _NUMPY_TO_IR[np_dtype]


def format_float(value: float) -> str:
    """Shortest text that reads back as the same float32 (stable across platforms)."""
    f32 = np.float32(value)
    if float(f32) != float(value):  # not a float32: keep full float64 precision
        return repr(float(value))
    magnitude = abs(float(f32))
    if magnitude == 0 or 1e-4 <= magnitude < 1e7:
        return np.format_float_positional(f32, unique=True, trim="-")
    return np.format_float_scientific(f32, unique=True, trim="-")


@dataclass(frozen=True)
class QParams:
    """Affine quantization: real = scale * (q - zero_point).

    Per-tensor when `axis` is None (one scale, one zero point); per-channel along `axis` otherwise.
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: Optional[int] = None

    def __post_init__(self) -> None:
        # float32 values held as Python floats; one numpy conversion (per-channel params have thousands)
        scales = np.asarray(self.scale, np.float32).reshape(-1)
        object.__setattr__(self, "scale", tuple(scales.tolist()))
        object.__setattr__(self, "zero_point", tuple(np.asarray(self.zero_point).astype(np.int64).reshape(-1).tolist()))
        if len(self.scale) != len(self.zero_point):
            raise ValueError(f"QParams: {len(self.scale)} scales but {len(self.zero_point)} zero points")
        if not self.scale:
            raise ValueError("QParams needs at least one scale")
        if self.axis is None and len(self.scale) != 1:
            raise ValueError("per-tensor QParams must have exactly one scale; give `axis` for per-channel")
        if not (scales > 0).all():  # NaN too
            raise ValueError(f"QParams scales must be positive, got {self.scale}")

    @staticmethod
    def per_tensor(scale: float, zero_point: int) -> "QParams":
        return QParams((scale,), (zero_point,), None)

    @property
    def is_per_channel(self) -> bool:
        return self.axis is not None

    def scale_array(self, rank: int) -> np.ndarray:
        """Scales shaped to broadcast against a tensor of `rank` dimensions."""
        return self._broadcast(np.asarray(self.scale, np.float32), rank)

    def zero_point_array(self, rank: int) -> np.ndarray:
        return self._broadcast(np.asarray(self.zero_point, np.int64), rank)

    def _broadcast(self, values: np.ndarray, rank: int) -> np.ndarray:
        if self.axis is None:
            return values.reshape(())
        shape = [1] * rank
        shape[self.axis] = len(values)
        return values.reshape(shape)

    def __str__(self) -> str:
        scales = ",".join(format_float(s) for s in self.scale)
        zps = ",".join(str(z) for z in self.zero_point)
        if self.axis is None:
            return f"q<{scales}:{zps}>"
        return f"q<axis={self.axis} [{scales}]:[{zps}]>"


@dataclass(frozen=True)
class TensorType:
    """Shape (None for an unknown dimension, normally the batch) + element type + optional quantization."""

    shape: tuple[Optional[int], ...]
    dtype: str = "f32"
    quant: Optional[QParams] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(None if d is None or d < 0 else int(d) for d in self.shape))
        object.__setattr__(self, "dtype", dtype_name(self.dtype))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype in ("f32", "f16", "f64")

    @property
    def is_static(self) -> bool:
        return all(d is not None for d in self.shape)

    def num_elements(self) -> Optional[int]:
        return math.prod(self.shape) if self.is_static else None  # exact: np.prod wraps past 2**63

    def with_shape(self, shape: Sequence[Optional[int]]) -> "TensorType":
        return TensorType(tuple(shape), self.dtype, self.quant)

    def with_dtype(self, dtype: str, quant: Optional[QParams] = None) -> "TensorType":
        return TensorType(self.shape, dtype, quant)

    def with_quant(self, quant: Optional[QParams]) -> "TensorType":
        return TensorType(self.shape, self.dtype, quant)

    def matches(self, shape: Sequence[Optional[int]]) -> bool:
        """True when a concrete shape fits this type (unknown dimensions match anything)."""
        return len(shape) == self.rank and all(d is None or d == s for d, s in zip(self.shape, shape))

    def __str__(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        text = f"{self.dtype}[{dims}]"
        return f"{text} {self.quant}" if self.quant is not None else text
