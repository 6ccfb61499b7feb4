"""Checks every invariant of a graph; raises `VerifyError` naming the node and the broken rule."""
from __future__ import annotations

from qcompiler.ir.graph import Graph, IRError, Node
from qcompiler.ir.ops import OPS, check_arity, check_attrs, infer_checked
from qcompiler.ir.types import TensorType


class VerifyError(IRError):
    pass


def verify(graph: Graph) -> None:
    defined: set[int] = set()
    names: set[str] = set()
    for value in graph.inputs:
        _check_name(value.name, names, "graph input")
        if value.producer is not None:
            raise VerifyError(f"graph input %{value.name} claims a producer")
        defined.add(id(value))
    nodes_seen: set[int] = set()
    for node in graph.nodes:
        if id(node) in nodes_seen:
            raise VerifyError(f"{node.describe()} appears twice in the node list")
        nodes_seen.add(id(node))
        _verify_node(graph, node, defined)
        for value in node.results:
            if value.name in names:
                _check_name(value.name, names, node.describe())
            names.add(value.name)
            defined.add(id(value))
    for value in graph.outputs:
        if id(value) not in defined:
            raise VerifyError(f"graph output %{value.name} is not defined in the graph")
    _verify_uses(graph)


def _check_name(name: str, names: set[str], where: str) -> None:
    if name in names:
        raise VerifyError(f"value name %{name} is defined twice ({where})")
    names.add(name)


def _verify_node(graph: Graph, node: Node, defined: set[int]) -> None:
    # Hot path (every node, after every pass): the node's description is only made for an error message.
    definition = OPS.get(node.op)
    if definition is None:
        raise VerifyError(f"{node.describe()}: unknown op '{node.op}'")
    if node.graph is not graph:
        raise VerifyError(f"{node.describe()}: node does not belong to graph @{graph.name}")
    try:
        check_arity(node)
    except IRError as err:
        raise VerifyError(f"{node.describe()}: {err}") from None
    if node.attrs.keys() != definition.attrs.keys():
        missing = [k for k in definition.attrs if k not in node.attrs]
        unknown = [k for k in node.attrs if k not in definition.attrs]
        raise VerifyError(f"{node.describe()}: attributes missing {missing} / unknown {unknown}")
    try:
        check_attrs(node)
    except IRError as err:
        raise VerifyError(f"{node.describe()}: {err}") from None
    for i, value in enumerate(node.operands):
        if id(value) not in defined:
            raise VerifyError(f"{node.describe()}: operand {i} %{value.name} is used before it is defined "
                              "(nodes out of topological order, or a value from another graph)")
    for value in node.results:
        if value.producer is not node:
            raise VerifyError(f"{node.describe()}: result %{value.name} does not point back at its producer")
    if not node.results:
        raise VerifyError(f"{node.describe()}: node has no results")
    _verify_types(node)


def verify_node_types(node: Node) -> None:
    """The per-node checks of `verify` that need no graph context: arity, attributes, result types."""
    where = node.describe()
    try:
        check_arity(node)
        check_attrs(node)
    except IRError as err:
        raise VerifyError(f"{where}: {err}") from None
    _verify_types(node)


def _verify_types(node: Node) -> None:
    if node.op in ("quantize",):
        return
    try:
        expected = infer_checked(node.op, [v.type for v in node.operands], node.attrs)
    except IRError as err:
        raise VerifyError(f"{node.describe()}: {err}") from None
    for value, want in zip(node.results, expected):
        if not _shape_compatible(value.type, want):
            raise VerifyError(f"{node.describe()}: result %{value.name} has type {value.type} but the op gives "
                              f"{want}")
        if value.type.quant is None and want.dtype != value.type.dtype and not value.type.is_float:
            raise VerifyError(f"{node.describe()}: result %{value.name} is {value.type.dtype} without "
                              "quantization params")


def _shape_compatible(have: TensorType, want: TensorType) -> bool:
    if have.shape == want.shape:
        return True
    if have.rank != want.rank:
        return False
    for a, b in zip(have.shape, want.shape):
        if a is not None and b is not None and a != b:
            return False
    return True


def _verify_uses(graph: Graph) -> None:
    """Each value's use list holds exactly the (node, operand index) pairs that read it."""
    expected: dict[int, list[tuple[int, int]]] = {}
    for node in graph.nodes:
        for i, value in enumerate(node.operands):
            pairs = expected.get(id(value))
            if pairs is None:
                expected[id(value)] = [(id(node), i)]
            else:
                pairs.append((id(node), i))
    for value in graph.values():
        want = expected.get(id(value), ())
        uses = value.uses
        if len(uses) == len(want) == 1:
            use = uses[0]
            if id(use.node) == want[0][0] and use.index == want[0][1]:
                continue
        if sorted((id(u.node), u.index) for u in uses) != sorted(want):
            raise VerifyError(f"use list of %{value.name} is out of date (a pass edited operands directly?)")
