"""Typed attribute declarations for the op table (`OpDef.signature`), and the one place that checks them.

    "strides": pair(1)            a list of two ints >= 1, default [1, 1]
    "padding": enum("same", "valid", default="valid")
    "epsilon": real(REQUIRED)     a finite float (ints accepted)

`Attr.check` runs for every node when its attributes are completed (`ops.complete_attrs`), so hand-written IR
with `strides=[0, 0]`, `axis=1.5`, `shape=[1e309]` or a NaN epsilon is an IRError naming the op and the
attribute, never a Python exception deeper down. What depends on the operands (an axis within the rank, a
paddings list with one pair per axis) is checked by the op's inference function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from qcompiler.ir.graph import IRError

REQUIRED: Any = object()  # the default of an attribute that must be given

# What a value of each kind is, in words (for error messages and the docs).
KINDS = {
    "int": "an integer",
    "real": "a finite number",
    "bool": "true or false",
    "enum": "one of the listed strings",
    "ints": "a list of integers",
    "int_pairs": "a list of [int, int] pairs",
    "array": "a tensor value",
}
_MAX_INT = 2**31 - 1  # TFLite stores shapes, strides, sizes and axes as int32


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, (float, np.floating))) and math.isfinite(float(value))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Attr:
    """One attribute: its kind, default (REQUIRED: must be given) and constraints.

    minimum: the smallest allowed int (for ints, and for every entry of ints / int_pairs).
    length: the exact length of an ints list. choices: the strings of an enum.
    optional: None is allowed as well (e.g. fake_quant's min before calibration).
    """

    kind: str
    default: Any = REQUIRED
    minimum: Optional[int] = None
    length: Optional[int] = None
    choices: tuple[str, ...] = ()
    optional: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown attribute kind '{self.kind}'; known: {sorted(KINDS)}")

    def describe(self) -> str:
        if self.kind == "enum":
            text = "one of " + ", ".join(f'"{c}"' for c in self.choices)
        else:
            text = KINDS[self.kind]
        if self.length is not None:
            text = f"{text} of length {self.length}"
        if self.minimum is not None:
            text = f"{text}, each >= {self.minimum}" if self.kind in ("ints", "int_pairs") else \
                f"{text} >= {self.minimum}"
        return f"{text} (or none)" if self.optional else text

    def check(self, name: str, value: Any) -> None:
        """Raise IRError unless `value` is a valid value of this attribute."""
        if value is None and self.optional:
            return
        if not self._valid(value):
            raise IRError(f"attribute '{name}' must be {self.describe()}, got {_short(value)}")

    def _valid(self, value: Any) -> bool:
        if self.kind == "array":
            return value is not None
        if self.kind == "bool":
            return isinstance(value, (bool, np.bool_))
        if self.kind == "real":
            return _is_real(value)
        if self.kind == "enum":
            return isinstance(value, str) and value in self.choices
        if self.kind == "int":
            return self._int_ok(value)
        if self.kind == "ints":
            return (isinstance(value, (list, tuple)) and (self.length is None or len(value) == self.length)
                    and all(self._int_ok(v) for v in value))
        # int_pairs
        return isinstance(value, (list, tuple)) and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(self._int_ok(v) for v in p) for p in value)

    def _int_ok(self, value: Any) -> bool:
        return (_is_int(value) and abs(int(value)) <= _MAX_INT
                and (self.minimum is None or int(value) >= self.minimum))


# ----- constructors that read like the table -----
def integer(default: Any = REQUIRED, minimum: Optional[int] = None, optional: bool = False) -> Attr:
    return Attr("int", default, minimum=minimum, optional=optional)


def real(default: Any = REQUIRED, optional: bool = False) -> Attr:
    return Attr("real", default, optional=optional)


def flag(default: Any = REQUIRED) -> Attr:
    return Attr("bool", default)


def enum(*choices: str, default: Any = REQUIRED) -> Attr:
    return Attr("enum", default, choices=tuple(choices))


def ints(default: Any = REQUIRED, minimum: Optional[int] = None, length: Optional[int] = None) -> Attr:
    return Attr("ints", default, minimum=minimum, length=length)


def pair(default: Any = REQUIRED) -> Attr:
    """Two positive ints (strides, dilation, pool and resize sizes)."""
    return Attr("ints", [default, default] if _is_int(default) else default, minimum=1, length=2)


def int_pairs(default: Any = REQUIRED, minimum: Optional[int] = None) -> Attr:
    return Attr("int_pairs", default, minimum=minimum)


def array() -> Attr:
    return Attr("array")
