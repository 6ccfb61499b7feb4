"""Test helper: one-op integer IR graphs with given quantization parameters, run by the integer interpreter and
by ai-edge-litert's reference kernels (BUILTIN_REF)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from qcompiler.backend.tflite_writer import write_tflite
from qcompiler.ir.graph import Graph
from qcompiler.ir.interpreter import run
from qcompiler.ir.ops import infer_checked
from qcompiler.ir.types import QParams, TensorType
from qcompiler.quant import math as qm
from tests.tflite_run import run_tflite


def qtype(shape: Sequence[Optional[int]], dtype: str, qp: QParams) -> TensorType:
    return TensorType(tuple(shape), dtype, qp)


def add_const(g: Graph, array: np.ndarray, dtype: str, qp: QParams, name: str):
    value = g.const(array.astype(qm.np_int_dtype(dtype)), name=name)
    value.type = TensorType(value.type.shape, dtype, qp)
    return value


def one_op_graph(op: str, inputs: Sequence[TensorType], out_q: QParams, attrs: Optional[dict] = None,
                 consts: Sequence[tuple[np.ndarray, str, QParams]] = (), out_dtype: Optional[str] = None) -> Graph:
    """`op` on graph inputs of the given types, then constant operands (array, dtype, params); the result has
    the inferred shape, the first input's dtype (or `out_dtype`) and `out_q`."""
    g = Graph("one_op")
    operands = [g.add_input(f"x{i}", t) for i, t in enumerate(inputs)]
    operands += [add_const(g, a, dt, qp, f"c{i}") for i, (a, dt, qp) in enumerate(consts)]
    attrs = dict(attrs or {})
    float_types = [TensorType(v.type.shape, "f32") for v in operands]
    from qcompiler.ir.graph import Node
    from qcompiler.ir.ops import complete_attrs

    probe = Node(op, [], attrs)
    complete_attrs(probe)
    (shape_type,) = infer_checked(op, float_types, probe.attrs)
    result = qtype(shape_type.shape, out_dtype or inputs[0].dtype, out_q)
    node = g.add_node(op, operands, probe.attrs, result_types=[result], names=["y"])
    g.outputs = [node.result]
    return g


def random_codes(t: TensorType, batch: int, rng: np.random.Generator) -> np.ndarray:
    lo, hi = qm.qrange(t.dtype)
    shape = [batch if d is None else d for d in t.shape]
    return rng.integers(lo, hi + 1, size=shape).astype(t.np_dtype)


def run_both(g: Graph, inputs: Sequence[np.ndarray], **resolver) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(integer interpreter outputs, BUILTIN_REF outputs) for the same raw inputs (`resolver=`: another one)."""
    return run(g, list(inputs)), run_tflite(write_tflite(g), list(inputs), **resolver)
