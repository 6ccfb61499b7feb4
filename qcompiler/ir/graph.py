"""The mutable graph: values with use-def links, nodes, and the graph that orders them.

A `Value` knows the node that produces it (None for a graph input) and every (node, operand index) that
uses it. Nodes are kept in topological order in a doubly linked list (as in torch.fx), so inserting before or
after a node and removing one take constant time whatever the graph's size; `Graph.nodes` is that order as a
list, built again only after the order changed. `Graph.verify()` checks every invariant.

Every algorithm here is iterative and linear in the graph's size: nothing recurses along use chains (a
3,000-layer model works at Python's default recursion limit).
"""
from __future__ import annotations

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
        """The array of a constant value (a lazy product, see `stored`, is computed here once)."""
        from qcompiler.ir.layout import LazyProduct

        stored = self.stored
        return stored.array() if isinstance(stored, LazyProduct) else stored

    @property
    def stored(self) -> Any:
        """What the constant node holds: its array, or a `qcompiler.ir.layout.LazyProduct` not computed yet (a
        folded kernel the writer computes straight into the file). Has shape, dtype and nbytes either way."""
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
        self._prev: Optional[_Link] = None  # neighbours in the graph's node order; None when not in a graph
        self._next: Optional[_Link] = None
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


class _Root:
    """The sentinel of a graph's circular node list: its `_next` is the first node, its `_prev` the last."""

    def __init__(self) -> None:
        self._prev: _Link = self
        self._next: _Link = self


_Link = Any  # a Node or the graph's _Root


class NodeList(list):
    """`Graph.nodes`: the node order as a plain list. Editing it (`nodes.reverse()`, `insert`, `pop`, ...)
    reorders the graph, as editing the list did when the graph kept one; prefer the Graph methods, which take
    constant time. A list read before the graph changed is a snapshot: editing it no longer touches the graph."""

    def __init__(self, graph: Optional["Graph"], nodes: Iterable[Node] = ()) -> None:
        super().__init__(nodes)
        self._graph = graph

    def _edited(self) -> None:
        if self._graph is not None:
            self._graph._adopt_order(self)

    def append(self, node: Node) -> None:
        super().append(node)
        self._edited()

    def extend(self, nodes: Iterable[Node]) -> None:
        super().extend(nodes)
        self._edited()

    def insert(self, index: int, node: Node) -> None:
        super().insert(index, node)
        self._edited()

    def pop(self, index: int = -1) -> Node:
        node = super().pop(index)
        self._edited()
        return node

    def remove(self, node: Node) -> None:
        super().remove(node)
        self._edited()

    def clear(self) -> None:
        super().clear()
        self._edited()

    def reverse(self) -> None:
        super().reverse()
        self._edited()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        super().sort(*args, **kwargs)
        self._edited()

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        self._edited()

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self._edited()

    def __iadd__(self, nodes: Iterable[Node]) -> "NodeList":
        super().extend(nodes)
        self._edited()
        return self

    def __reduce__(self) -> Any:  # copies and pickles as a plain list
        return (list, (list(self),))


class Graph:
    """A function-like graph: named inputs, nodes in topological order, outputs."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self._root = _Root()
        self._order: Optional[NodeList] = NodeList(self)  # the node order as a list; None when out of date
        self._by_name: Optional[dict[str, Value]] = None  # name -> value, built on the first `value()` call
        self._names: set[str] = set()
        self._counter = 0
        # node.layer names that are keras.ops calls, not layers (the Keras frontend fills it): TensorFlow names
        # their ops outside any layer scope, which orders them differently (qcompiler/quant/op_order.py)
        self.op_calls: set[str] = set()
        # node.layer names of Keras layers with variables (weights, BN statistics): TensorFlow reads them from
        # resource arguments, not Const nodes, which orders their ops differently (qcompiler/quant/op_order.py)
        self.variable_layers: set[str] = set()

    # ----- the node order -----------------------------------------------------------------------
    @property
    def nodes(self) -> NodeList:
        """The nodes in order, as a list (rebuilt only after the order changed)."""
        if self._order is None:
            order: list[Node] = []
            root, node = self._root, self._root._next
            while node is not root:
                order.append(node)
                node = node._next
            self._order = NodeList(self, order)
        return self._order

    @nodes.setter
    def nodes(self, nodes: Iterable[Node]) -> None:
        self._adopt_order(list(nodes))

    def _adopt_order(self, nodes: list[Node]) -> None:
        """Relink the graph in the order of `nodes` (after an edit of the `nodes` list)."""
        seen: set[int] = set()
        for node in nodes:
            if id(node) in seen:
                raise IRError(f"{node.describe()} appears twice in the node list of graph @{self.name}")
            seen.add(id(node))
        node = self._root._next
        while node is not self._root:
            following = node._next
            if id(node) not in seen:
                node._prev = node._next = None
            node = following
        previous: _Link = self._root
        for node in nodes:
            previous._next, node._prev = node, previous
            previous = node
        previous._next, self._root._prev = self._root, previous
        edited = isinstance(nodes, NodeList) and nodes._graph is self
        self._order_changed()
        if edited:  # the list that was edited is the order now
            nodes._graph, self._order = self, nodes

    def _order_changed(self) -> None:
        if self._order is not None:
            self._order._graph = None  # a list handed out earlier is now a snapshot
            self._order = None

    def _link(self, node: Node, previous: _Link) -> None:
        following = previous._next
        node._prev, node._next = previous, following
        previous._next = following._prev = node
        self._order_changed()

    def _unlink(self, node: Node) -> None:
        node._prev._next, node._next._prev = node._next, node._prev
        node._prev = node._next = None
        self._order_changed()

    def contains(self, node: Node) -> bool:
        """Whether `node` is in this graph's node order (constant time)."""
        return node.graph is self and node._prev is not None

    def _require(self, node: Node) -> None:
        if not self.contains(node):
            raise IRError(f"{node.describe()} is not in graph @{self.name}")

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
        self._named(value)

    def _named(self, value: Value) -> None:
        if self._by_name is not None:
            self._by_name[value.name] = value

    # ----- building -----------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(self.unique_name(name), type)
        self.inputs.append(value)
        self._named(value)
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

        anchor = before if before is not None else after
        if anchor is not None:
            self._require(anchor)
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
        for value in node.results:
            self._named(value)
        return node

    def op(self, op: str, *operands: Value, name: Optional[str] = None, layer: Optional[str] = None,
           before: Optional[Node] = None, after: Optional[Node] = None, **attrs: Any) -> Value:
        """Shorthand for a single-result node: `g.op("add", a, b, activation="relu")`."""
        return self.add_node(op, operands, attrs, names=[name], layer=layer, before=before, after=after).result

    def const(self, array: np.ndarray, name: Optional[str] = None, layer: Optional[str] = None,
              before: Optional[Node] = None, dtype: Optional[str] = None) -> Value:
        """A constant holding `array` (as `dtype`). The array is kept, not copied, when it already has that dtype
        and is contiguous or a contiguous array with permuted axes (a folded 100 MB weight is not copied again; a
        kernel transposed lazily stays a view, see qcompiler/ir/layout.py), and it is made read-only: hand over
        an array nothing else writes to."""
        from qcompiler.ir.layout import LazyProduct, is_permuted_contiguous
        from qcompiler.ir.types import DTYPES, dtype_name

        if isinstance(array, LazyProduct) and (dtype is None or DTYPES[dtype] == array.dtype):
            array.base.setflags(write=False)  # the writer computes the products from it later
        else:
            array = np.asarray(array)
            if dtype is not None:
                array = array.astype(DTYPES[dtype], copy=False)
            if not is_permuted_contiguous(array):
                array = np.ascontiguousarray(array).reshape(array.shape)  # ascontiguousarray makes a scalar 1-D
            array.setflags(write=False)
        try:  # the type is the array's: no inference (a model has more constants than ops)
            result_type = TensorType(array.shape, dtype_name(array.dtype))
        except (TypeError, ValueError) as err:
            where = f" (Keras layer '{layer}')" if layer else ""
            raise IRError(f"const{where}: the value is not a tensor of a supported dtype: {err}") from None
        return self.add_node("const", [], {"value": array}, [result_type], names=[name], layer=layer,
                             before=before).result

    def _insert(self, node: Node, before: Optional[Node], after: Optional[Node]) -> None:
        """Link `node` in just before `before`, just after `after`, or at the end (constant time)."""
        if before is not None:
            self._require(before)
            previous = before._prev
        elif after is not None:
            self._require(after)
            previous = after
        else:
            previous = self._root._prev
        node.graph = self
        self._link(node, previous)

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
        self._require(node)
        node.drop_operands()
        self._unlink(node)
        for value in node.results:
            self._names.discard(value.name)
        node.graph = None

    def replace_node(self, node: Node, new_values: Sequence[Value]) -> None:
        """Replace each result of `node` by the matching new value, then remove `node`."""
        for old, new in zip(node.results, new_values):
            self.replace_all_uses(old, new)
        self.remove(node)

    def move_before(self, node: Node, anchor: Node) -> None:
        self._require(node)
        self._require(anchor)
        if node is anchor:
            return
        self._unlink(node)
        self._link(node, anchor._prev)

    # ----- queries ------------------------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        yield from self.inputs
        for node in self.nodes:
            yield from node.results

    def value(self, name: str) -> Value:
        """The value called `name` (a dictionary look-up; the dictionary is rebuilt when it went stale)."""
        if self._by_name is not None:
            value = self._by_name.get(name)
            if value is not None and self._holds(value, name):
                return value
        self._by_name = {v.name: v for v in self.values()}
        value = self._by_name.get(name)
        if value is None:
            raise KeyError(f"no value %{name} in graph @{self.name}")
        return value

    def _holds(self, value: Value, name: str) -> bool:
        if value.name != name:
            return False
        if value.producer is None:
            return any(v is value for v in self.inputs)
        return self.contains(value.producer)

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
        """Reorder nodes topologically, keeping the current order where it is already valid: each node goes
        where it is, unless an operand's producer comes later, which is then moved up just before it.
        Linear time, with an explicit stack (no recursion)."""
        nodes = list(self.nodes)
        members = {id(n) for n in nodes}
        state: dict[int, int] = {}  # id(node) -> 1 while its producers are being placed, 2 once placed
        ordered: list[Node] = []
        for start in nodes:
            if state.get(id(start)) == 2:
                continue
            stack = [(start, iter(start.operands))]
            state[id(start)] = 1
            while stack:
                node, operands = stack[-1]
                for value in operands:
                    producer = value.producer
                    if producer is None or state.get(id(producer)) == 2:
                        continue
                    if id(producer) not in members:
                        raise IRError(f"{node.describe()} uses %{value.name}, whose producer is not in graph "
                                      f"@{self.name}")
                    if state.get(id(producer)) == 1:
                        raise IRError(f"graph @{self.name} has a cycle through {producer.describe()}")
                    state[id(producer)] = 1
                    stack.append((producer, iter(producer.operands)))
                    break
                else:
                    stack.pop()
                    state[id(node)] = 2
                    ordered.append(node)
        self._adopt_order(ordered)

    def verify(self) -> None:
        from qcompiler.ir.verifier import verify

        verify(self)

    def clone(self) -> "Graph":
        """An independent copy made in one walk over the nodes with a value map (torch.fx's graph_copy).

        Names, the name counter, layers, types (immutable) and the order of every use list are kept; attribute
        lists and dicts are copied, so editing the copy never changes the original. Constant arrays are shared
        (they are read-only); any other writable array attribute is copied.
        """
        copy = Graph(self.name)
        copy._names, copy._counter = set(self._names), self._counter
        copy.op_calls = set(self.op_calls)
        copy.variable_layers = set(self.variable_layers)
        value_map: dict[int, Value] = {}
        for value in self.inputs:
            value_map[id(value)] = Value(value.name, value.type)
        copy.inputs = [value_map[id(v)] for v in self.inputs]
        nodes = self.nodes
        node_map: dict[int, Node] = {}
        for node in nodes:  # results first: operands may refer forward in a graph that is out of order
            attrs = {k: v if node.op == "const" and k == "value" else _copy_attr(v) for k, v in node.attrs.items()}
            twin = Node(node.op, (), attrs, node.layer)
            twin.results = [Value(v.name, v.type, twin) for v in node.results]
            for old, new in zip(node.results, twin.results):
                value_map[id(old)] = new
            node_map[id(node)] = twin
        outside: dict[int, Value] = {}  # used but defined nowhere in the graph (a graph verify() rejects)

        def mapped(value: Value) -> Value:
            found = value_map.get(id(value))
            if found is None:
                found = outside.get(id(value))
                if found is None:
                    found = outside[id(value)] = Value(value.name, value.type)
            return found

        previous: _Link = copy._root
        for node in nodes:
            twin = node_map[id(node)]
            twin.operands = [mapped(v) for v in node.operands]
            twin.graph, twin._prev, previous._next = copy, previous, twin
            previous = twin
        previous._next, copy._root._prev = copy._root, previous
        copy._order = None
        for value in [*self.inputs, *(r for n in nodes for r in n.results)]:
            value_map[id(value)].uses = [Use(node_map[id(u.node)], u.index) for u in value.uses
                                         if id(u.node) in node_map]
        strays = {id(v) for v in outside.values()}
        for twin in node_map.values() if strays else ():
            for index, value in enumerate(twin.operands):
                if id(value) in strays:
                    value.uses.append(Use(twin, index))
        copy.outputs = [mapped(v) for v in self.outputs]
        return copy

    def __deepcopy__(self, memo: dict) -> "Graph":
        return self.clone()  # copy.deepcopy would recurse along the use chains

    def __str__(self) -> str:
        from qcompiler.ir.printer import print_graph

        return print_graph(self)


def _copy_attr(value: Any) -> Any:
    """An attribute value that shares nothing mutable with `value` (read-only arrays are shared)."""
    if isinstance(value, list):
        return [_copy_attr(v) for v in value]  # depth of the attribute's nesting, not of the graph
    if isinstance(value, tuple):
        return tuple(_copy_attr(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy_attr(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.flags.writeable:
        return value.copy()
    return value


def producers_first(values: Iterable[Value]) -> list[Node]:
    """Producing nodes of `values` (skipping graph inputs), deduplicated, in given order."""
    seen: dict[int, Node] = {}
    for value in values:
        if value.producer is not None:
            seen.setdefault(id(value.producer), value.producer)
    return list(seen.values())
