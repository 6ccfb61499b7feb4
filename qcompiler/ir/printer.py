"""The IR text format (MLIR-like): one op per line, sorted attributes, constants as shape + short hash.

    graph @mnist(%x: f32[?,28,28,1]) {
      %w0 = const f32[32,3,3,1] #9f3a1c  # layer conv2d
      %c0 = conv2d(%x, %w0, %b0) {activation="relu", padding="same"} : f32[?,28,28,32]  # layer conv2d
      return %c0
    }

Attributes equal to the op's default are left out. Constants with at most `INLINE_LIMIT` elements are printed
in full (`dense<[1.0, 2.0]>`); larger ones as `#` + a digest of dtype, shape and bytes, unless
`full_constants=True`. `parser.parse` reads all of it back.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import numpy as np

from qcompiler.ir.graph import Graph, Node
from qcompiler.ir.ops import OPS
from qcompiler.ir.types import TensorType, format_float

INLINE_LIMIT = 8
DIGEST_CHARS = 6


class ElidedArray(np.ndarray):
    """Stand-in for a constant read from a dump that showed only its digest: right shape, values unknown.

    It is a zero-strided view (no memory for any shape). Computing with it or serializing it raises instead of
    silently using zeros; code that needs values checks `qcompiler.ir.checks.is_unknown` first.
    """

    digest: str = ""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):  # noqa: ANN001, ANN204
        raise _unknown(self, f"numpy {ufunc.__name__}")

    def __array_function__(self, func, types, args, kwargs):  # noqa: ANN001, ANN204
        if func in (np.shape, np.ndim, np.size, np.result_type):
            return super().__array_function__(func, types, args, kwargs)
        raise _unknown(self, f"numpy {func.__name__}")

    def tobytes(self, order: str = "C") -> bytes:  # noqa: D102
        raise _unknown(self, "serializing")

    def astype(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201, D102
        raise _unknown(self, "converting")


def _unknown(array: "ElidedArray", what: str) -> Exception:
    from qcompiler.ir.graph import IRError

    return IRError(f"{what} needs the values of constant #{array.digest}, which was read from a dump that shows "
                   "only its digest; dump the model with --full-constants and use that file")


def elided_array(shape: tuple[int, ...], dtype: np.dtype, digest: str) -> ElidedArray:
    base = np.broadcast_to(np.zeros((), dtype), shape)
    array = base.view(ElidedArray)
    array.digest = digest
    return array


def constant_digest(array: np.ndarray) -> str:
    if isinstance(array, ElidedArray):
        return array.digest
    h = hashlib.sha1()
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:DIGEST_CHARS]


def print_graph(graph: Graph, full_constants: bool = False) -> str:
    args = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines = [f"graph @{graph.name}({args}) {{"]
    lines += ["  " + print_node(node, full_constants) for node in graph.nodes]
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"


def print_node(node: Node, full_constants: bool = False) -> str:
    results = ", ".join(f"%{v.name}" for v in node.results)
    layer = f"  # layer {format_layer_name(node.layer)}" if node.layer else ""
    if node.op == "const":
        return f"{results} = const {node.result.type} {format_constant(node.attrs['value'], full_constants)}{layer}"
    operands = ", ".join(f"%{v.name}" for v in node.operands)
    attrs = format_attrs(node)
    types = ", ".join(str(v.type) for v in node.results)
    return f"{results} = {node.op}({operands}){attrs} : {types}{layer}"


def format_attrs(node: Node) -> str:
    defaults = OPS[node.op].attrs if node.op in OPS else {}
    shown = {k: v for k, v in node.attrs.items() if not (k in defaults and _equal(defaults[k], v))}
    if not shown:
        return ""
    return " {" + ", ".join(f"{k}={format_value(shown[k])}" for k in sorted(shown)) + "}"


def _equal(default: Any, value: Any) -> bool:
    if isinstance(default, (list, tuple)) or isinstance(value, (list, tuple, np.ndarray)):
        try:
            return np.array_equal(np.asarray(default, dtype=object), np.asarray(value, dtype=object))
        except (ValueError, TypeError):
            return False
    return type(default) is type(value) and default == value


def format_value(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _format_attr_float(float(value))
    if isinstance(value, str):
        return json.dumps(value)  # escapes quotes, backslashes, control and non-ASCII characters
    if isinstance(value, np.ndarray):
        return format_value(value.tolist())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    raise TypeError(f"cannot print attribute value {value!r} of type {type(value).__name__}")


def _format_attr_float(value: float) -> str:
    if np.isnan(value):
        return "nan"
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = format_float(value)
    return text if any(c in text for c in ".en") else text + ".0"


_PLAIN_LAYER_NAME = re.compile(r"[A-Za-z0-9_.\-/:+@ ]*[A-Za-z0-9_.\-/:+@]")


def format_layer_name(name: str) -> str:
    """A Keras layer name as the `# layer` comment shows it: as is when plain, else quoted with JSON escapes
    (so a name holding a newline, a quote or `}` cannot change the lines around it)."""
    if _PLAIN_LAYER_NAME.fullmatch(name) and not name.startswith(" "):
        return name
    return json.dumps(name)


def format_constant(array: np.ndarray, full: bool = False) -> str:
    array = array if isinstance(array, np.ndarray) else np.asarray(array)  # a LazyProduct: its values
    if isinstance(array, ElidedArray) or (array.size > INLINE_LIMIT and not full):
        return "#" + constant_digest(array)
    if array.dtype == np.bool_:
        return "dense<" + format_value(array.tolist()) + ">"
    if np.issubdtype(array.dtype, np.floating):
        return "dense<" + format_value(_nested_floats(array)) + ">"
    return "dense<" + format_value(array.astype(np.int64).tolist()) + ">"


def _nested_floats(array: np.ndarray) -> Any:
    if array.ndim == 0:
        return float(array)
    return [_nested_floats(a) for a in array]


def type_text(t: TensorType) -> str:
    return str(t)
