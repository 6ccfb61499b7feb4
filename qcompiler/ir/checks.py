"""Checks on constant *values* (the verifier checks structure and types): weights are finite, batch-norm
statistics are valid, and values that were never read (digest-only constants of a short dump) are not used.

Run where values enter qcompiler (the Keras import, the IR parser) and where they leave it (the TFLite writer),
so a NaN weight is an error naming its Keras layer instead of a model that outputs NaN.
"""
from __future__ import annotations

import weakref
from typing import Iterable

import numpy as np

from qcompiler.ir.graph import Graph, IRError, Node, Value
from qcompiler.ir.printer import ElidedArray


# Read-only float arrays already found finite, by id (the entry goes when the array does; `is` makes sure the id
# is still that array's).
_FINITE: "weakref.WeakValueDictionary[int, np.ndarray]" = weakref.WeakValueDictionary()


class ConstantValueError(IRError):
    """A constant holds values no model should have (NaN, inf, a negative variance)."""


class UnknownValuesError(IRError):
    """A constant whose values were never read (a dump without --full-constants) reached code that needs them."""




def _where(node: Node) -> str:
    layer = f" of Keras layer '{node.layer}'" if node.layer else ""
    return f"constant %{node.result.name}{layer}" if node.results else f"a constant{layer}"


def is_unknown(value: Value) -> bool:
    """True for a constant read from a digest-only dump (`#9f3a1c`): its shape is known, its values are not."""
    return value.is_constant and isinstance(value.data, ElidedArray)


def unknown_values_error(values: Iterable[Value], what: str) -> UnknownValuesError:
    names = [f"%{v.name}" + (f" (Keras layer '{v.layer}')" if v.layer else "") for v in values]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return UnknownValuesError(f"{what} needs the values of {shown}, but the IR was read from a dump that shows only "
                              "their digests; dump the model with --full-constants (qcompiler dump MODEL "
                              "--full-constants > model.qir) and use that file")


def check_known_values(graph: Graph, what: str) -> None:
    """Refuse a graph with digest-only constants that are still used."""
    unknown = [n.result for n in graph.nodes if n.op == "const" and is_unknown(n.result)
               and (n.result.uses or graph.is_output(n.result))]
    if unknown:
        raise unknown_values_error(unknown, what)


def check_constant_values(node: Node) -> None:
    """NaN/inf in a float constant, or a batch norm whose constant variance is negative: an error naming the layer."""
    if node.op == "const":
        array = node.attrs.get("value")
        if isinstance(array, ElidedArray) or not isinstance(array, np.ndarray):
            return
        if not np.issubdtype(array.dtype, np.floating) or not array.size or _FINITE.get(id(array)) is array:
            return
        # NaN and inf make the sum non-finite: one pass without a mask; only then (or on overflow) look closer
        if np.isfinite(np.sum(array)):
            if not array.flags.writeable:  # constants are read-only: checked once, by the import or a pass's
                _FINITE[id(array)] = array  # output, not again by the writer (VGG16: 12 ms of ~0.2 s)
        else:
            finite = np.isfinite(array)
            if not finite.all():
                bad = int(array.size - np.count_nonzero(finite))
                first = tuple(int(i) for i in np.argwhere(~finite)[0])
                kind = "NaN" if np.isnan(array).any() else "inf"
                raise ConstantValueError(f"{_where(node)} has {bad} non-finite value(s) ({kind}, first at index "
                                  f"{list(first)}); the model's weights are broken: retrain or fix them before "
                                  "compiling")
    elif node.op == "batch_norm" and len(node.operands) == 5:
        variance = node.operands[4]
        if not variance.is_constant or is_unknown(variance):
            return
        data = np.asarray(variance.data)
        if data.size and (data < 0).any():
            layer = f"Keras layer '{node.layer}'" if node.layer else f"batch_norm %{node.result.name}"
            channel = int(np.argwhere(data < 0)[0][0])
            raise ConstantValueError(f"{layer}: moving variance is negative ({float(data.flat[channel])} in channel "
                              f"{channel}); batch-norm statistics must be >= 0: retrain or fix the layer's "
                              "moving_variance")


def check_values(graph: Graph) -> None:
    """`check_constant_values` for every node of the graph."""
    for node in graph.nodes:
        if node.op in ("const", "batch_norm"):
            check_constant_values(node)
