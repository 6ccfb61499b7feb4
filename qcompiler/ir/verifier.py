"""Checks every invariant of a graph; raises `VerifyError` naming the node and the broken rule."""
from __future__ import annotations

from qcompiler.ir.graph import Graph, IRError, Node
from qcompiler.ir.ops import OPS, check_arity, check_attrs, infer_checked, op_def
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
            _check_name(value.name, names, node.describe())
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
    where = node.describe()
    if node.op not in OPS:
        raise VerifyError(f"{where}: unknown op '{node.op}'")
    if node.graph is not graph:
        raise VerifyError(f"{where}: node does not belong to graph @{graph.name}")
    try:
        check_arity(node)
    except IRError as err:
        raise VerifyError(f"{where}: {err}") from None
    missing = [k for k in op_def(node.op).attrs if k not in node.attrs]
    unknown = [k for k in node.attrs if k not in op_def(node.op).attrs]
    if missing or unknown:
        raise VerifyError(f"{where}: attributes missing {missing} / unknown {unknown}")
    try:
        check_attrs(node)
    except IRError as err:
        raise VerifyError(f"{where}: {err}") from None
    for i, value in enumerate(node.operands):
        if id(value) not in defined:
            raise VerifyError(f"{where}: operand {i} %{value.name} is used before it is defined "
                              "(nodes out of topological order, or a value from another graph)")
    for value in node.results:
        if value.producer is not node:
            raise VerifyError(f"{where}: result %{value.name} does not point back at its producer")
    if not node.results:
        raise VerifyError(f"{where}: node has no results")
    _verify_types(node, where)


def _verify_types(node: Node, where: str) -> None:
    if node.op in ("quantize",):
        return
    try:
        expected = infer_checked(node.op, [v.type for v in node.operands], node.attrs)
    except IRError as err:
        raise VerifyError(f"{where}: {err}") from None
    for value, want in zip(node.results, expected):
        if not _shape_compatible(value.type, want):
            raise VerifyError(f"{where}: result %{value.name} has type {value.type} but the op gives {want}")
        if value.type.quant is None and want.dtype != value.type.dtype and not value.type.is_float:
            raise VerifyError(f"{where}: result %{value.name} is {value.type.dtype} without quantization params")


def _shape_compatible(have: TensorType, want: TensorType) -> bool:
    if have.rank != want.rank:
        return False
    return all(a is None or b is None or a == b for a, b in zip(have.shape, want.shape))


def _verify_uses(graph: Graph) -> None:
    expected: dict[int, list[tuple[int, int]]] = {}
    for node in graph.nodes:
        for i, value in enumerate(node.operands):
            expected.setdefault(id(value), []).append((id(node), i))
    for value in graph.values():
        have = sorted((id(u.node), u.index) for u in value.uses)
        if have != sorted(expected.get(id(value), [])):
            raise VerifyError(f"use list of %{value.name} is out of date (a pass edited operands directly?)")
