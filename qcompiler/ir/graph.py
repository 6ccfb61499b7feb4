"""The mutable graph: values with use-def links, nodes, and the graph that orders them.

A `Value` knows the node that produces it (None for a graph input) and every (node, operand index) that
uses it. Nodes are kept in a list in topological order; `Graph.verify()` checks every invariant.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from qcompiler.errors import QCompilerError
from qcompiler.ir.types import TensorType

_NAME_OK = re.compile(r"^[A-Za-z0-9_.\-/]+$")
_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.\-/]")


class IRError(QCompilerError):
    """A graph was built or changed in a way that breaks an IR invariant."""


@dataclass(frozen=True)
class Use:
    node: "Node"
    index: int


class Value:
    """An SSA value: a graph input or one result of a node."""

    def __init__(self, name: str, type: TensorType, producer: Optional["Node"] = None) -> None:
        self.name = name
        self.type = type
        self.producer = producer
        self.uses: list[Use] = []

    @property
    def users(self) -> list["Node"]:
        """Distinct nodes using this value, in order of first use."""
        seen: dict[int, Node] = {}
        for use in self.uses:
            seen.setdefault(id(use.node), use.node)
        return list(seen.values())

    @property
    def is_constant(self) -> bool:
        return self.producer is not None and self.producer.op == "const"

    @property
    def data(self) -> np.ndarray:
        """The array of a constant value."""
        if not self.is_constant:
            raise IRError(f"%{self.name} is not a constant")
        return self.producer.attrs["value"]

    @property
    def layer(self) -> Optional[str]:
        return self.producer.layer if self.producer is not None else None

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One operation. `attrs` are plain Python values (ints, floats, strings, lists, numpy arrays for const)."""

    def __init__(
        self,
        op: str,
        operands: Sequence[Value],
        attrs: Optional[dict[str, Any]] = None,
        layer: Optional[str] = None,
    ) -> None:
        self.op = op
        self.operands: list[Value] = []
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.results: list[Value] = []
        self.layer = layer
        self.graph: Optional[Graph] = None
        for value in operands:
            self._append_operand(value)

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise IRError(f"{self.op} has {len(self.results)} results, not one")
        return self.results[0]

    def _append_operand(self, value: Value) -> None:
        value.uses.append(Use(self, len(self.operands)))
        self.operands.append(value)

    def set_operand(self, index: int, value: Value) -> None:
        old = self.operands[index]
        old.uses = [u for u in old.uses if not (u.node is self and u.index == index)]
        self.operands[index] = value
        value.uses.append(Use(self, index))

    def set_operands(self, values: Sequence[Value]) -> None:
        self.drop_operands()
        for value in values:
            self._append_operand(value)

    def drop_operands(self) -> None:
        for value in self.operands:
            value.uses = [u for u in value.uses if u.node is not self]
        self.operands = []

    def describe(self) -> str:
        """Short human description for error messages: op, first result and Keras layer."""
        name = f"%{self.results[0].name} = " if self.results else ""
        layer = f" (Keras layer '{self.layer}')" if self.layer else ""
        return f"{name}{self.op}{layer}"

    def __repr__(self) -> str:
        return f"<Node {self.describe()}>"


class Graph:
    """A function-like graph: named inputs, nodes in topological order, outputs."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        self._counter = 0

    # ----- naming -------------------------------------------------------------------------------
    def unique_name(self, hint: Optional[str] = None) -> str:
        base = _NAME_BAD_CHARS.sub("_", hint) if hint else ""
        if base and base not in self._names:
            self._names.add(base)
            return base
        prefix = base or "v"
        while True:
            candidate = f"{prefix}_{self._counter}" if base else f"{prefix}{self._counter}"
            self._counter += 1
            if candidate not in self._names:
                self._names.add(candidate)
                return candidate

    def rename(self, value: Value, name: str) -> None:
        if name == value.name:
            return
        if not _NAME_OK.match(name):
            raise IRError(f"invalid value name '{name}'")
        if name in self._names:
            raise IRError(f"value name '%{name}' is already used")
        self._names.discard(value.name)
        self._names.add(name)
        value.name = name

    # ----- building -----------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(self.unique_name(name), type)
        self.inputs.append(value)
        return value

    def add_node(
        self,
        op: str,
        operands: Sequence[Value],
        attrs: Optional[dict[str, Any]] = None,
        result_types: Optional[Sequence[TensorType]] = None,
        names: Optional[Sequence[Optional[str]]] = None,
        layer: Optional[str] = None,
        before: Optional[Node] = None,
        after: Optional[Node] = None,
    ) -> Node:
        """Create a node, infer its result types from the op table unless given, and insert it.

        Inserted at the end, or just before `before` / just after `after`.
        """
        from qcompiler.ir.ops import infer_types  # ops imports this module

        node = Node(op, operands, attrs, layer)
        if result_types is None:
            try:
                result_types = infer_types(node)
            except IRError:
                node.drop_operands()
                raise
        names = list(names or [])
        for i, rtype in enumerate(result_types):
            hint = names[i] if i < len(names) else None
            node.results.append(Value(self.unique_name(hint), rtype, node))
        self._insert(node, before, after)
        return node

    def op(self, op: str, *operands: Value, name: Optional[str] = None, layer: Optional[str] = None,
           before: Optional[Node] = None, after: Optional[Node] = None, **attrs: Any) -> Value:
        """Shorthand for a single-result node: `g.op("add", a, b, activation="relu")`."""
        return self.add_node(op, operands, attrs, names=[name], layer=layer, before=before, after=after).result

    def const(self, array: np.ndarray, name: Optional[str] = None, layer: Optional[str] = None,
              before: Optional[Node] = None, dtype: Optional[str] = None) -> Value:
        from qcompiler.ir.types import DTYPES

        array = np.asarray(array)
        if dtype is not None:
            array = array.astype(DTYPES[dtype])
        array = np.ascontiguousarray(array)
        array.setflags(write=False)
        return self.add_node("const", [], {"value": array}, names=[name], layer=layer, before=before).result

    def _insert(self, node: Node, before: Optional[Node], after: Optional[Node]) -> None:
        node.graph = self
        if before is not None:
            self.nodes.insert(self._index(before), node)
        elif after is not None:
            self.nodes.insert(self._index(after) + 1, node)
        else:
            self.nodes.append(node)

    def _index(self, node: Node) -> int:
        for i, candidate in enumerate(self.nodes):
            if candidate is node:
                return i
        raise IRError(f"{node.describe()} is not in graph @{self.name}")

    # ----- editing ------------------------------------------------------------------------------
    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Point every use of `old` (including graph outputs) at `new`."""
        if old is new:
            return
        for use in list(old.uses):
            use.node.set_operand(use.index, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def remove(self, node: Node) -> None:
        """Remove a node whose results are unused; refuses otherwise."""
        for value in node.results:
            if value.uses or any(v is value for v in self.outputs):
                users = ", ".join(u.describe() for u in value.users) or "the graph outputs"
                raise IRError(f"cannot remove {node.describe()}: %{value.name} is still used by {users}")
        index = self._index(node)
        node.drop_operands()
        del self.nodes[index]
        for value in node.results:
            self._names.discard(value.name)
        node.graph = None

    def replace_node(self, node: Node, new_values: Sequence[Value]) -> None:
        """Replace each result of `node` by the matching new value, then remove `node`."""
        for old, new in zip(node.results, new_values):
            self.replace_all_uses(old, new)
        self.remove(node)

    def move_before(self, node: Node, anchor: Node) -> None:
        del self.nodes[self._index(node)]
        self.nodes.insert(self._index(anchor), node)

    # ----- queries ------------------------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        yield from self.inputs
        for node in self.nodes:
            yield from node.results

    def value(self, name: str) -> Value:
        for value in self.values():
            if value.name == name:
                return value
        raise KeyError(f"no value %{name} in graph @{self.name}")

    def find(self, op: str) -> list[Node]:
        return [n for n in self.nodes if n.op == op]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return counts

    def is_output(self, value: Value) -> bool:
        return any(v is value for v in self.outputs)

    def topo_sort(self) -> None:
        """Reorder nodes topologically, keeping the current order where it is already valid."""
        placed: set[int] = {id(v) for v in self.inputs}
        remaining = list(self.nodes)
        ordered: list[Node] = []
        while remaining:
            progress = False
            rest = []
            for node in remaining:
                if all(id(v) in placed for v in node.operands):
                    ordered.append(node)
                    placed.update(id(r) for r in node.results)
                    progress = True
                else:
                    rest.append(node)
            if not progress:
                raise IRError(f"graph @{self.name} has a cycle through {rest[0].describe()}")
            remaining = rest
        self.nodes = ordered

    def verify(self) -> None:
        from qcompiler.ir.verifier import verify

        verify(self)

    def clone(self) -> "Graph":
        """A deep copy; constant arrays are shared (they are read-only)."""
        memo: dict[int, Any] = {}
        for node in self.nodes:
            if node.op == "const":
                memo[id(node.attrs["value"])] = node.attrs["value"]
        return copy.deepcopy(self, memo)

    def __str__(self) -> str:
        from qcompiler.ir.printer import print_graph

        return print_graph(self)


def producers_first(values: Iterable[Value]) -> list[Node]:
    """Producing nodes of `values` (skipping graph inputs), deduplicated, in given order."""
    seen: dict[int, Node] = {}
    for value in values:
        if value.producer is not None:
            seen.setdefault(id(value.producer), value.producer)
    return list(seen.values())
