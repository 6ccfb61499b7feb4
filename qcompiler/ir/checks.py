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
from qcompiler.ir.layout import LazyProduct
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
    return value.is_constant and isinstance(value.stored, ElidedArray)


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
        if isinstance(array, LazyProduct):  # a folded kernel: computed only when no bound shows it finite
            _bound_finite(array)
            if array.finite:
                return
            array = array.array()
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


def _bound_finite(product: LazyProduct) -> None:
    """Notes a lazy product finite when that follows without computing it: a finite base times finite factors of
    magnitude at most 1 (each product rounds to at most its base element's magnitude)."""
    if product.finite is None and _is_known_finite(product.base) and np.isfinite(np.sum(product.factor)) \
            and np.max(np.abs(product.factor), initial=0) <= 1:
        product.note_finite(True)


def _is_known_finite(array: np.ndarray) -> bool:
    if _FINITE.get(id(array)) is array:
        return True
    if array.flags.writeable or not np.isfinite(np.sum(array)):
        return False
    _FINITE[id(array)] = array
    return True


def check_values(graph: Graph, defer_lazy: bool = False) -> None:
    """`check_constant_values` for every node of the graph. `defer_lazy`: the caller (the TFLite writer) checks
    the lazy products not known finite yet itself, as it computes them into the file (`check_computed`)."""
    for node in graph.nodes:
        if defer_lazy and node.op == "const" and isinstance(node.attrs.get("value"), LazyProduct):
            _bound_finite(node.attrs["value"])
            if node.attrs["value"].finite is not False:
                continue
        if node.op in ("const", "batch_norm"):
            check_constant_values(node)


def check_computed(product: LazyProduct, computed: np.ndarray, where: str) -> None:
    """After the writer computed a lazy product into `computed` (its values, any layout) without finding it
    finite on the way: an error naming the constant `where` if it holds NaN or inf (a product overflowed)."""
    if product.finite is None:
        finite = np.isfinite(computed)
        if not finite.all():
            bad = int(computed.size - np.count_nonzero(finite))
            first = tuple(int(i) for i in np.argwhere(~finite.reshape(product.shape))[0])
            raise ConstantValueError(f"{where} has {bad} non-finite value(s) (inf, first at index {list(first)}): "
                                     "a batch norm folded into it overflowed float32; the model's weights or "
                                     "batch-norm statistics are broken: retrain or fix them before compiling")
        product.note_finite(True)
