"""What a pass is: a small frozen dataclass whose fields are its options, with a `name` and a `run`.

    @dataclass(frozen=True)
    class InsertFakeQuant(Pass):
        name: ClassVar[str] = "insert-fake-quant"
        bits: int = 8
        per_channel: bool = True

        def run(self, graph: Graph) -> PassResult:
            ...
            return PassResult(modified=True, counters={"inserted": 12})

To add a pass: write it in its own file named after it, then add one line to `registry.PASSES`.
`insert-fake-quant{bits=4,per_channel=false}` in a pipeline builds `InsertFakeQuant(bits=4, per_channel=False)`.
"""
from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph


class PassOptionError(QCompilerError, ValueError):
    """A pass option has a value no pass can use (a negative count, a NaN or infinite number)."""


@dataclass(frozen=True)
class PassResult:
    """What a pass did. `counters` are pass-specific tallies; `notes` say why rewrites did not apply."""

    modified: bool
    counters: Mapping[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @staticmethod
    def unchanged() -> "PassResult":
        return PassResult(False)


@dataclass(frozen=True)
class Pass(ABC):
    """Base of every pass. Subclasses are frozen dataclasses; their fields are the pass options."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def __post_init__(self) -> None:
        """The rules all options share: int options are counts or sizes (never negative), numbers are finite. A pass with
        further rules overrides this and calls super().__post_init__()."""
        for f in option_fields(self):
            _check_option(self.name, f.name, getattr(self, f.name))

    @abstractmethod
    def run(self, graph: Graph) -> PassResult:
        """Transform `graph` in place and report whether anything changed."""

    def __str__(self) -> str:
        """The pipeline text that builds this pass (options that differ from their defaults only)."""
        return self.text()

    def text(self, explicit: bool = False) -> str:
        """Pipeline text; `explicit` also spells out options at their defaults (empty and none values aside)."""
        shown = [f"{f.name}={format_option(getattr(self, f.name))}" for f in option_fields(self)
                 if not _is_default(f, getattr(self, f.name))
                 or (explicit and getattr(self, f.name) not in (None, (), [], ""))]
        return f"{self.name}{{{','.join(shown)}}}" if shown else self.name


# Metadata of a dataclass field that is not a pipeline option: something only Python can hand over (in-memory
# calibration data, a progress stream). It never appears in pipeline text and the registry does not parse it.
NOT_AN_OPTION = {"option": False}


def option_fields(pass_or_class: Any) -> list[dataclasses.Field]:
    """The fields of a pass that are pipeline options."""
    return [f for f in dataclasses.fields(pass_or_class) if f.metadata.get("option", True)]


def _check_option(pass_name: str, key: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise PassOptionError(f"option '{key}' of pass '{pass_name}' must not be negative, got {value}")
    values = value if isinstance(value, (list, tuple, frozenset, set)) else [value]
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise PassOptionError(f"option '{key}' of pass '{pass_name}' must be a finite number, got {v}")


def _is_default(f: dataclasses.Field, value: Any) -> bool:
    if f.default is not dataclasses.MISSING:
        return value == f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return value == f.default_factory()  # type: ignore[misc]
    return False


def format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple, frozenset, set)):
        return "[" + ",".join(format_option(v) for v in value) + "]"
    return str(value)
