"""cse: common-subexpression elimination. Identical nodes on the same operands become one.

    %a = relu(%x) : ...                    %a = relu(%x) : ...
    %b = relu(%x) : ...          ->        %y = add(%a, %a) : ...
    %y = add(%a, %b) : ...

Two nodes are identical when they have the same op, the same attributes and the same operands, where two
constant operands count as the same when their dtype, shape and bytes are equal. With `constants=true` (the
default) equal constants are also merged into one node. TFLiteConverter's MLIR pipeline does the same (its CSE
and constant uniquing), which is why Keras NASNetMobile, applying one ReLU or pooling to a tensor in several
branches, has fewer operators in the converter's model than layers.

One walk in topological order: a node's key is (op, attributes, operand keys), looked up in a dict; a node whose
key is already there has its results replaced by the first one's, so later users see the merged values and a
chain of duplicates merges in the same walk. No recursion; linear in the nodes. Constant data is never hashed:
small constants are keyed by their bytes, large ones by dtype, shape and a sampled fingerprint, and compared byte
for byte only when those collide (hashing VGG16's 220 MB of weights took longer than the rest of the compile).

Not merged: constants without data (read from a digest-only dump), and a node whose result is a graph output
when the node it would merge into also produces a graph output (the outputs would repeat one tensor).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar, Hashable, Optional

import numpy as np

from qcompiler.ir.graph import Graph, Node
from qcompiler.ir.layout import LazyProduct
from qcompiler.ir.printer import ElidedArray
from qcompiler.passes.base import Pass, PassResult


def _frozen(value: Any) -> Hashable:
    """A hashable, type-exact stand-in for an attribute value (1 and 1.0 and True stay distinct)."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_frozen(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _frozen(v)) for k, v in value.items())))
    if isinstance(value, np.ndarray):
        return ("ndarray", _constant_key(value))
    if isinstance(value, np.generic):
        return (type(value).__name__, value.item())
    return (type(value).__name__, value)


def _contiguous(array: np.ndarray) -> np.ndarray:
    """`array` C-contiguous with its own shape: np.ascontiguousarray makes a rank-0 array 1-D, so a scalar and a
    one-element vector would get the same key and be merged (a [1] conv bias replaced by a rank-0 constant)."""
    return np.ascontiguousarray(array).reshape(np.shape(array))


def _constant_key(array: np.ndarray) -> Optional[Hashable]:
    """dtype, shape and a digest of the bytes; None for an array without data."""
    if isinstance(array, ElidedArray):
        return None
    data = _contiguous(array)
    return (data.dtype.str, data.shape, hashlib.blake2b(data.tobytes(), digest_size=16).digest())


_KEYED_BY_BYTES = 4096  # constants up to this many bytes are keyed by their bytes
_FINGERPRINT_SAMPLES = 256


class _ConstantKeys:
    """Keys equal exactly when two constants' dtype, shape and bytes are: small constants are keyed by their
    bytes; a large one by (dtype, shape, a sampled fingerprint, the index among the byte-wise different arrays
    with that fingerprint). Only arrays whose fingerprints collide are compared in full."""

    def __init__(self) -> None:
        self._large: dict[tuple, list[np.ndarray]] = {}  # (dtype, shape, fingerprint) -> distinct arrays

    def key(self, array: np.ndarray) -> Optional[Hashable]:
        if isinstance(array, ElidedArray):
            return None
        if isinstance(array, LazyProduct):  # a folded kernel: compared by its values
            array = array.array()
        if array.nbytes <= _KEYED_BY_BYTES:
            data = _contiguous(array)
            return (data.dtype.str, data.shape, data.tobytes())
        # a large array is compared in C order, in whatever layout it has (a lazily transposed kernel is not
        # copied: qcompiler/ir/layout.py), as unsigned integers of its item size: bit for bit
        values = np.asarray(array).view(np.dtype(f"u{array.itemsize}"))
        step = max(values.size // _FINGERPRINT_SAMPLES, 1)
        sample = values.flat[::step].tobytes() + values.flat[-16:].tobytes()
        coarse = (array.dtype.str, array.shape, sample)
        distinct = self._large.setdefault(coarse, [])
        for index, other in enumerate(distinct):
            if other is values or np.array_equal(other, values):
                return (*coarse, index)
        distinct.append(values)
        return (*coarse, len(distinct) - 1)


@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    name: ClassVar[str] = "cse"
    summary: ClassVar[str] = "merge identical nodes on the same operands (constants compared by value)"

    constants: bool = True  # merge equal constant nodes too

    def run(self, graph: Graph) -> PassResult:
        value_keys: dict[int, Hashable] = {}  # id(constant value) -> its dtype, shape and bytes
        constant_keys = _ConstantKeys()
        seen: dict[Hashable, Node] = {}
        merged: list[Node] = []
        for node in list(graph.nodes):
            key = self._key(node, value_keys, constant_keys)
            if key is None:
                continue
            first = seen.get(key)
            if first is None or not _can_merge(graph, node, first):
                seen.setdefault(key, node)
                continue
            for old, new in zip(node.results, first.results):
                graph.replace_all_uses(old, new)
            merged.append(node)
        for node in merged:
            graph.remove(node)
        if not merged:
            return PassResult.unchanged()
        constants = sum(1 for n in merged if n.op == "const")
        counters = {"nodes-erased": len(merged)}
        if constants:
            counters["constants-merged"] = constants
        if len(merged) > constants:
            counters["ops-merged"] = len(merged) - constants
        return PassResult(True, counters)

    def _key(self, node: Node, value_keys: dict[int, Hashable], constant_keys: _ConstantKeys
             ) -> Optional[Hashable]:
        """What identifies the node (None: never merged); records how its results compare as operands."""
        if node.op == "const":
            data_key = constant_keys.key(node.attrs["value"])
            if data_key is None:
                return None
            value_keys[id(node.result)] = ("const", data_key)  # users compare it by value
            return ("const", data_key) if self.constants else ("const", data_key, id(node))
        operands = tuple(value_keys.get(id(v), id(v)) for v in node.operands)
        attrs = tuple(sorted((k, _frozen(v)) for k, v in node.attrs.items()))
        return (node.op, attrs, operands, tuple(r.type for r in node.results))


def _can_merge(graph: Graph, node: Node, first: Node) -> bool:
    return not (any(graph.is_output(r) for r in node.results) and any(graph.is_output(r) for r in first.results))


__all__ = ["CommonSubexpressionElimination"]
