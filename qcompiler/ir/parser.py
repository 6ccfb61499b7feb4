"""Reads the IR text format written by `printer.print_graph` back into a `Graph`.

`parse(print_graph(g))` prints identically. Constants shown only by digest (`#9f3a1c`) come back as
shape-only placeholders unless their arrays are passed in `constants` (digest -> array); running such a
graph in the interpreter is an error that says so.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from qcompiler.ir.checks import check_constant_values
from qcompiler.ir.graph import Graph, IRError, Node, Value
from qcompiler.ir.ops import OPS, REQUIRED
from qcompiler.ir.printer import constant_digest, elided_array
from qcompiler.ir.types import DTYPES, QParams, TensorType


MAX_DIMENSION = 1 << 31  # TFLite stores dimensions as int32


class ParseError(IRError):
    def __init__(self, message: str, line_no: int, line: str) -> None:
        super().__init__(f"line {line_no}: {message}\n    {line.strip()}")


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#\s.*$)
  | (?P<digest>\#[0-9a-fA-F]+)
  | (?P<value>%[A-Za-z0-9_.\-/]+)
  | (?P<graph>@[A-Za-z0-9_.\-/]+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
  | (?P<word>-?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[(){}\[\]<>,=:?])
""", re.VERBOSE)


@dataclass
class Token:
    kind: str
    text: str


class _Line:
    """Tokens of one line, with the trailing `# layer NAME` comment split off."""

    def __init__(self, text: str, line_no: int) -> None:
        self.text, self.line_no = text, line_no
        self.tokens: list[Token] = []
        self.comment: Optional[str] = None
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise ParseError(f"unexpected character {text[pos]!r}", line_no, text)
            pos = m.end()
            kind = m.lastgroup
            if kind == "ws":
                continue
            if kind == "comment":
                self.comment = m.group()[1:].strip()
                continue
            self.tokens.append(Token(kind, m.group()))
        self.pos = 0

    def error(self, message: str) -> ParseError:
        return ParseError(message, self.line_no, self.text)

    def peek(self, offset: int = 0) -> Optional[Token]:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def next(self) -> Token:
        token = self.peek()
        if token is None:
            raise self.error("unexpected end of line")
        self.pos += 1
        return token

    def expect(self, text: str) -> Token:
        token = self.next()
        if token.text != text:
            raise self.error(f"expected '{text}', found '{token.text}'")
        return token

    def accept(self, text: str) -> bool:
        token = self.peek()
        if token is not None and token.text == text:
            self.pos += 1
            return True
        return False

    def expect_kind(self, kind: str) -> Token:
        token = self.next()
        if token.kind != kind:
            raise self.error(f"expected a {kind}, found '{token.text}'")
        return token

    def done(self) -> None:
        if self.peek() is not None:
            raise self.error(f"unexpected '{self.peek().text}' at end of line")


def parse(text: str, constants: Optional[Mapping[str, np.ndarray]] = None) -> Graph:
    if not isinstance(text, str):
        hint = " (decode it first: data.decode('utf-8'))" if isinstance(text, (bytes, bytearray)) else ""
        raise TypeError(f"parse_ir takes IR text as a str, got {type(text).__name__}{hint}")
    if constants is not None and not isinstance(constants, Mapping):
        raise TypeError(f"constants must map digests to arrays, got {type(constants).__name__}")
    lines = [(i + 1, raw) for i, raw in enumerate(text.splitlines()) if raw.strip() and not raw.strip().startswith("//")]
    if not lines:
        raise IRError("empty IR text: expected 'graph @name(...) {'")
    graph, env = _guarded(_Line, lines[0][1], lines[0][0], then=_parse_header)
    for index, (line_no, raw) in enumerate(lines[1:], start=1):
        line = _guarded(_Line, raw, line_no)
        if not line.tokens:
            continue
        if line.peek().text == "return":
            _guarded_at(line, _parse_return, line, graph, env)
            _parse_closing(lines[index + 1:])
            _guarded_at(line, graph.verify)
            return graph
        _guarded_at(line, _parse_node, line, graph, env, constants or {})
    raise IRError("IR text ended before 'return ...' and the closing '}'")


def _parse_return(line: _Line, graph: Graph, env: dict[str, Value]) -> None:
    line.next()
    graph.outputs = _parse_value_list(line, env)
    line.done()


def _parse_closing(rest: list[tuple[int, str]]) -> None:
    """After `return`: exactly one `}`, then nothing but blank lines and comments."""
    lines = [_guarded(_Line, raw, line_no) for line_no, raw in rest]
    lines = [line for line in lines if line.tokens]
    if not lines:
        raise IRError("IR text ended without the closing '}' after 'return'")
    lines[0].expect("}")
    lines[0].done()
    if len(lines) > 1:
        raise lines[1].error("unexpected text after the closing '}' of the graph (one graph per file)")


def _guarded(make, raw: str, line_no: int, then=None):  # noqa: ANN001, ANN202
    """Tokenize a line (and optionally parse it with `then`); any failure becomes a ParseError at that line."""
    try:
        line = make(raw, line_no)
    except ParseError:
        raise
    except Exception as err:  # noqa: BLE001 - the safety net: never an exception without the line
        raise ParseError(f"{type(err).__name__}: {err}", line_no, raw) from err
    return line if then is None else _guarded_at(line, then, line)


def _guarded_at(line: "_Line", fn, *args):  # noqa: ANN001, ANN202
    """Run `fn(*args)` for `line`: an error without a line number (from the graph, the op table or numpy while
    building the node) is reported as a ParseError for this line."""
    try:
        return fn(*args)
    except ParseError:
        raise
    except RecursionError:
        raise line.error("nested too deeply") from None
    except Exception as err:  # noqa: BLE001 - generic safety net, in addition to the specific messages
        if isinstance(err, IRError):
            raise line.error(str(err)) from None
        raise line.error(f"{type(err).__name__}: {err}") from err  # keeps the cause: a bug to fix where it arose


def _parse_header(line: _Line) -> tuple[Graph, dict[str, Value]]:
    line.expect("graph")
    graph = Graph(line.expect_kind("graph").text[1:])
    env: dict[str, Value] = {}
    line.expect("(")
    while not line.accept(")"):
        name = line.expect_kind("value").text[1:]
        line.expect(":")
        value = graph.add_input(name, _parse_type(line))
        if value.name != name:
            raise line.error(f"graph input %{name} is declared twice")
        env[name] = value
        if not line.accept(","):
            line.expect(")")
            break
    line.expect("{")
    line.done()
    return graph, env


def _parse_value_list(line: _Line, env: dict[str, Value]) -> list[Value]:
    values = []
    while line.peek() is not None:
        token = line.expect_kind("value")
        if token.text[1:] not in env:
            raise line.error(f"use of undefined value {token.text}")
        values.append(env[token.text[1:]])
        if not line.accept(","):
            break
    return values


def _parse_node(line: _Line, graph: Graph, env: dict[str, Value], constants: Mapping[str, np.ndarray]) -> None:
    names = [line.expect_kind("value").text[1:]]
    while line.accept(","):
        names.append(line.expect_kind("value").text[1:])
    line.expect("=")
    op = line.expect_kind("word").text
    if op not in OPS:
        raise line.error(f"unknown op '{op}'")
    layer = _layer_from_comment(line)
    if op == "const":
        result_type = _parse_type(line)
        array = _parse_constant_body(line, result_type, constants)
        line.done()
        node = graph.add_node("const", [], {"value": array}, result_types=[result_type], names=names, layer=layer)
    else:
        line.expect("(")
        operands = [] if line.accept(")") else _parse_operands(line, env)
        attrs = _parse_attrs(line) if line.peek() is not None and line.peek().text == "{" else {}
        line.expect(":")
        types = [_parse_type(line)]
        while line.accept(","):
            types.append(_parse_type(line))
        line.done()
        if len(types) != len(names):
            raise line.error(f"{len(names)} results but {len(types)} types")
        _fill_defaults(op, attrs, line)
        node = graph.add_node(op, operands, attrs, result_types=types, names=names, layer=layer)
    for name, value in zip(names, node.results):
        if value.name != name:
            raise line.error(f"value %{name} is defined twice")
        env[name] = value
    _check_node(node)


def _check_node(node: Node) -> None:
    """The checks the verifier makes on this node, now, so that an error points at its line."""
    from qcompiler.ir.verifier import verify_node_types

    verify_node_types(node)
    check_constant_values(node)  # NaN/inf constants, a batch norm's negative variance


def _layer_from_comment(line: _Line) -> Optional[str]:
    if not (line.comment and line.comment.startswith("layer ")):
        return None
    name = line.comment[len("layer "):].strip()
    if name.startswith('"'):
        return _string(name, line)
    return name


def _string(text: str, line: _Line) -> str:
    """A quoted string as the printer writes it (JSON escapes)."""
    try:
        value = json.loads(text)
    except ValueError as err:
        raise line.error(f"bad string {text}: {err}") from None
    if not isinstance(value, str):
        raise line.error(f"expected a quoted string, found {text}")
    return value


def _parse_operands(line: _Line, env: dict[str, Value]) -> list[Value]:
    operands = []
    while True:
        token = line.expect_kind("value")
        if token.text[1:] not in env:
            raise line.error(f"use of undefined value {token.text}")
        operands.append(env[token.text[1:]])
        if line.accept(")"):
            return operands
        line.expect(",")


def _fill_defaults(op: str, attrs: dict[str, Any], line: _Line) -> None:
    for key, default in OPS[op].attrs.items():
        if key not in attrs:
            if default is REQUIRED:
                raise line.error(f"{op} needs attribute '{key}'")
            attrs[key] = list(default) if isinstance(default, list) else default
    unknown = set(attrs) - set(OPS[op].attrs)
    if unknown:
        raise line.error(f"{op} has no attribute(s) {sorted(unknown)}; known: {sorted(OPS[op].attrs)}")


def _parse_attrs(line: _Line) -> dict[str, Any]:
    line.expect("{")
    attrs: dict[str, Any] = {}
    if line.accept("}"):
        return attrs
    while True:
        key = line.expect_kind("word").text
        line.expect("=")
        attrs[key] = _parse_literal(line)
        if line.accept("}"):
            return attrs
        line.expect(",")


def _parse_literal(line: _Line) -> Any:
    token = line.next()
    if token.text == "[":
        items: list[Any] = []
        if line.accept("]"):
            return items
        while True:
            items.append(_parse_literal(line))
            if line.accept("]"):
                return items
            line.expect(",")
    if token.kind == "string":
        return _string(token.text, line)
    if token.kind == "number":
        return _number(token.text)
    keywords = {"true": True, "false": False, "none": None, "nan": float("nan"), "inf": float("inf"),
                "-inf": float("-inf")}
    if token.text in keywords:
        return keywords[token.text]
    raise line.error(f"expected a value, found '{token.text}'")


def _number(text: str) -> int | float:
    if any(c in text for c in ".eE"):
        return float(text)
    return int(text)


def _parse_type(line: _Line) -> TensorType:
    dtype = line.expect_kind("word").text
    if dtype not in DTYPES:
        raise line.error(f"unknown element type '{dtype}'; expected one of {sorted(DTYPES)}")
    line.expect("[")
    dims: list[Optional[int]] = []
    while not line.accept("]"):
        token = line.next()
        if token.text == "?":
            dims.append(None)
        elif token.kind == "number" and token.text.isdigit():
            if len(token.text) > 10 or int(token.text) >= MAX_DIMENSION:
                raise line.error(f"dimension {token.text} is too large (TFLite dimensions are int32)")
            dims.append(int(token.text))
        else:
            raise line.error(f"expected a dimension or '?', found '{token.text}'")
        if not line.accept(","):
            line.expect("]")
            break
    quant = None
    if line.peek() is not None and line.peek().text == "q" and line.peek(1) and line.peek(1).text == "<":
        quant = _parse_qparams(line)
        _check_qparams(quant, dtype, dims, line)
    return TensorType(tuple(dims), dtype, quant)


def _check_qparams(quant: QParams, dtype: str, dims: list[Optional[int]], line: _Line) -> None:
    """Zero points the storage type can hold; a per-channel axis inside the shape, with one scale per channel."""
    np_dtype = DTYPES[dtype]
    info = np.iinfo(np_dtype) if np.issubdtype(np_dtype, np.integer) else np.iinfo(np.int64)
    bad = [z for z in quant.zero_point if not info.min <= z <= info.max]
    if bad:
        raise line.error(f"zero point {bad[0]} does not fit {dtype} [{info.min}, {info.max}]")
    if quant.axis is not None:
        if not 0 <= quant.axis < len(dims):
            raise line.error(f"quantization axis {quant.axis} is outside a rank-{len(dims)} tensor")
        if dims[quant.axis] is not None and dims[quant.axis] != len(quant.scale):
            raise line.error(f"{len(quant.scale)} scales for {dims[quant.axis]} channels on axis {quant.axis}")


def _parse_qparams(line: _Line) -> QParams:
    line.expect("q")
    line.expect("<")
    axis = None
    if line.accept("axis"):
        line.expect("=")
        axis = _integer(line, "a quantization axis")
        line.expect("[")
        scales = _number_list(line, "]")
        line.expect(":")
        line.expect("[")
        zero_points = _number_list(line, "]")
    else:
        scales = [float(line.expect_kind("number").text)]
        line.expect(":")
        zero_points = [_integer(line, "a zero point")]
    line.expect(">")
    if not all(isinstance(z, int) for z in zero_points):
        raise line.error(f"zero points must be integers, got {zero_points}")
    if not all(math.isfinite(s) for s in scales):
        raise line.error(f"scales must be finite, got {scales}")
    try:
        return QParams(tuple(scales), tuple(int(z) for z in zero_points), axis)
    except ValueError as err:
        raise line.error(str(err)) from None


def _integer(line: _Line, what: str) -> int:
    token = line.expect_kind("number")
    if not re.fullmatch(r"[-+]?\d+", token.text):
        raise line.error(f"expected {what} (an integer), found '{token.text}'")
    return int(token.text)


def _number_list(line: _Line, closing: str) -> list[float]:
    values: list[float] = []
    while not line.accept(closing):
        values.append(_number(line.expect_kind("number").text))
        if not line.accept(","):
            line.expect(closing)
            break
    return values


def _parse_constant_body(line: _Line, t: TensorType, constants: Mapping[str, np.ndarray]) -> np.ndarray:
    if not t.is_static:
        raise line.error("a constant needs a fully known shape")
    token = line.next()
    if token.kind == "digest":
        digest = token.text[1:]
        if digest in constants:
            array = np.asarray(constants[digest])
            if array.shape != t.shape or array.dtype != t.np_dtype:
                raise line.error(f"constant #{digest} given as {array.dtype}{list(array.shape)}, expected {t}")
            if constant_digest(array) != digest:
                raise line.error(f"array given for #{digest} has digest #{constant_digest(array)}")
            return array
        return elided_array(t.shape, t.np_dtype, digest)
    if token.text != "dense":
        raise line.error(f"expected 'dense<...>' or '#digest' for a constant, found '{token.text}'")
    line.expect("<")
    literal = _parse_literal(line)
    line.expect(">")
    array = _constant_array(literal, t, line)
    if array.shape != t.shape:
        raise line.error(f"constant data has shape {list(array.shape)}, its type says {t}")
    return array


def _constant_array(literal: Any, t: TensorType, line: _Line) -> np.ndarray:
    """The `dense<...>` literal as an array of the constant's type; values the type cannot hold are errors."""
    try:
        raw = np.asarray(literal)
    except ValueError:
        raise line.error("constant data is not a rectangular nested list of numbers") from None
    if raw.dtype == object or not (raw.dtype == np.bool_ or np.issubdtype(raw.dtype, np.number)):
        raise line.error("constant data must be numbers (or true/false)")
    target = t.np_dtype
    if np.issubdtype(target, np.integer):
        if raw.dtype != np.bool_ and not np.issubdtype(raw.dtype, np.integer):
            if not (np.isfinite(raw).all() and (raw == np.round(raw)).all()):
                raise line.error(f"an {t.dtype} constant holds non-integer values")
        info = np.iinfo(target)
        if raw.size and (raw.min() < info.min or raw.max() > info.max):
            raise line.error(f"constant values [{raw.min()}, {raw.max()}] do not fit {t.dtype} "
                             f"[{info.min}, {info.max}]")
    return raw.astype(target)
