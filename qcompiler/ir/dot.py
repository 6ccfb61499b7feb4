"""The IR as a Graphviz DOT picture: one node per op (constants are listed in their user's label, not drawn),
one per graph input and output, and an edge per activation use labelled with the value's name, shape, dtype and
quantization parameters (`%c1 f32[?,8,8,4]`, `i8[?,8,8,4] q<0.0235:-128>`).

    qcompiler dump model.keras --format dot --pipeline "$(qcompiler compile model.keras --mode int8 \
        --calibration c.npy --print-pipeline)" > model.dot && dot -Tsvg model.dot -o model.svg

`fill` colours nodes by the name of their result (the HTML report colours by SQNR); `tooltips` adds a tooltip.
"""
from __future__ import annotations

from typing import Mapping, Optional

from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.types import QParams

_MAX_QUANT_TEXT = 48  # per-channel parameter lists are shortened in edge labels


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _quant_text(q: Optional[QParams]) -> str:
    if q is None:
        return ""
    if q.axis is None:
        return f" scale={q.scale[0]:.6g} zp={q.zero_point[0]}"
    text = f" per-channel axis={q.axis} ({len(q.scale)} scales, {min(q.scale):.3g}..{max(q.scale):.3g})"
    return text[:_MAX_QUANT_TEXT]


def edge_label(value: Value) -> str:
    dims = ",".join("?" if d is None else str(d) for d in value.type.shape)
    return f"%{value.name}\n{value.type.dtype}[{dims}]{_quant_text(value.type.quant)}"


def _node_label(node: Node) -> str:
    lines = [node.op + (f" ({node.layer})" if node.layer else "")]
    for index, operand in enumerate(node.operands):
        if operand.is_constant:
            dims = ",".join(str(d) for d in operand.type.shape)
            lines.append(f"#{index}: {operand.type.dtype}[{dims}]{_quant_text(operand.type.quant)}")
    return "\n".join(lines)


def graph_to_dot(graph: Graph, fill: Optional[Mapping[str, str]] = None,
                 tooltips: Optional[Mapping[str, str]] = None) -> str:
    """DOT text of `graph`. `fill`: result value name -> a colour (e.g. "#ff8080"); `tooltips`: name -> text."""
    fill, tooltips = fill or {}, tooltips or {}
    lines = [f"digraph {_quote(graph.name or 'graph')} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8];']
    ids: dict[int, str] = {}  # value id -> the DOT node that produces it
    for i, value in enumerate(graph.inputs):
        ids[id(value)] = f"in{i}"
        lines.append(f'  in{i} [label={_quote("input %" + value.name)}, shape=ellipse, fillcolor="#e8f0ff"];')
    drawn = [n for n in graph.nodes if n.op != "const"]
    for i, node in enumerate(drawn):
        name = f"n{i}"
        for result in node.results:
            ids[id(result)] = name
        key = node.results[0].name if node.results else ""
        attrs = [f"label={_quote(_node_label(node))}"]
        if key in fill:
            attrs.append(f"fillcolor={_quote(fill[key])}")
        if key in tooltips:
            attrs.append(f"tooltip={_quote(tooltips[key])}")
        lines.append(f"  {name} [{', '.join(attrs)}];")
    for i, node in enumerate(drawn):
        for operand in node.operands:
            if operand.is_constant or id(operand) not in ids:
                continue
            lines.append(f"  {ids[id(operand)]} -> n{i} [label={_quote(edge_label(operand))}];")
    for i, value in enumerate(graph.outputs):
        lines.append(f'  out{i} [label={_quote("output %" + value.name)}, shape=ellipse, fillcolor="#e8ffe8"];')
        if id(value) in ids:
            lines.append(f"  {ids[id(value)]} -> out{i} [label={_quote(edge_label(value))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
