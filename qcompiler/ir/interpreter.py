"""Executes any IR graph with numpy, batched. The semantic reference for every pass.

Float values are computed with the op table's float semantics. Nodes on quantized integer values (a lowered
int8 or int16x8 graph) run the integer kernels of qcompiler/ir/int_kernels.py: bit for bit what TFLite's
reference kernels (BUILTIN_REF) compute. An op without an exact integer kernel for its dtypes (see
`inexact_nodes`) is simulated: inputs dequantized, the op run in float, the result quantized.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from qcompiler.quant import math as qmath

from qcompiler.ir.graph import Graph, IRError, Node, Value
from qcompiler.ir.int_kernels import INT_KERNELS
from qcompiler.ir.ops import compute, dequantize_array
from qcompiler.ir.printer import ElidedArray
from qcompiler.ir.types import TensorType

Inputs = Union[np.ndarray, Sequence[np.ndarray], Mapping[str, np.ndarray]]
Observer = Callable[[Value, np.ndarray], None]


def run(graph: Graph, inputs: Inputs, observe: Optional[Observer] = None, keep: bool = False,
        fake_quant: bool = True) -> Union[list[np.ndarray], dict[str, np.ndarray]]:
    """Run the graph; returns the outputs in order (or every value by name when `keep`).

    `observe(value, array)` is called for every value computed (used by calibration).
    `fake_quant=False` runs fake_quant nodes as the identity: the float model they were inserted into.
    """
    env: dict[int, np.ndarray] = {}
    for value, array in zip(graph.inputs, _bind_inputs(graph, inputs)):
        env[id(value)] = array
        if observe:
            observe(value, array)
    remaining_uses = {id(v): len(v.uses) for v in graph.values()}
    pinned = {id(v) for v in graph.outputs}
    kept: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        try:
            args = [env[id(v)] for v in node.operands]
        except KeyError as err:
            raise IRError(f"{node.describe()}: operand not computed yet (graph not in topological order)") from err
        results = args[:1] if node.op == "fake_quant" and not fake_quant else _run_node(node, args)
        for value, array in zip(node.results, results):
            env[id(value)] = array
            if observe:
                observe(value, array)
            if keep:
                kept[value.name] = array
        if not keep:
            for value in node.operands:
                remaining_uses[id(value)] -= 1
                if remaining_uses[id(value)] == 0 and id(value) not in pinned:
                    env.pop(id(value), None)
    if keep:
        kept.update({v.name: env[id(v)] for v in graph.inputs})
        return kept
    return [env[id(v)] for v in graph.outputs]


def _bind_inputs(graph: Graph, inputs: Inputs) -> list[np.ndarray]:
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    if isinstance(inputs, Mapping):
        missing = [v.name for v in graph.inputs if v.name not in inputs]
        if missing:
            raise ValueError(f"missing graph inputs {missing}; the graph takes {[v.name for v in graph.inputs]}")
        inputs = [inputs[v.name] for v in graph.inputs]
    inputs = list(inputs)
    if len(inputs) != len(graph.inputs):
        raise ValueError(f"graph @{graph.name} takes {len(graph.inputs)} inputs, got {len(inputs)}")
    bound = []
    for value, array in zip(graph.inputs, inputs):
        array = np.asarray(array)
        if not value.type.matches(array.shape):
            raise ValueError(f"input %{value.name} expects {value.type}, got an array of shape {array.shape}")
        bound.append(array.astype(value.type.np_dtype, copy=False))
    return bound


def _is_quantized(t: TensorType) -> bool:
    return t.quant is not None and not t.is_float


def _run_node(node: Node, args: list[np.ndarray]) -> list[np.ndarray]:
    if node.op == "const" and isinstance(node.attrs["value"], ElidedArray):
        from qcompiler.ir.checks import unknown_values_error

        raise unknown_values_error([node.result], "the interpreter")
    if node.op == "const" or not any(_is_quantized(v.type) for v in list(node.operands) + list(node.results)):
        return compute(node, args)
    if not _is_integer_node(node):  # hybrid: float activations, integer weights
        return _simulate_in_float(node, args)
    kernel = INT_KERNELS.get(node.op)
    if kernel is not None:
        try:
            return kernel(node, args)
        except NotImplementedError:
            pass
    return _simulate_in_float(node, args)


def _is_integer_node(node: Node) -> bool:
    """A node on integer activations (its results are quantized integers; or it dequantizes them). Hybrid nodes
    (float activations, integer weights) run in float with dequantized weights."""
    if node.op == "dequantize":
        return _is_quantized(node.operands[0].type)
    if any(_is_quantized(v.type) for v in node.results):
        return True
    # a comparison of integer operands: its bool result has no parameters
    return not any(v.type.is_float for v in node.results) and any(_is_quantized(v.type) for v in node.operands)


def _simulate_in_float(node: Node, args: list[np.ndarray]) -> list[np.ndarray]:
    """Dequantize, run the float op, quantize: close to, not bit-exact with, an integer kernel."""
    quantized_in = [_is_quantized(v.type) for v in node.operands]
    float_args = [dequantize_array(a, v.type) if q else a for a, v, q in zip(args, node.operands, quantized_in)]
    results = compute(node, float_args)
    return [qmath.quantize(r, v.type.quant, v.type.dtype) if _is_quantized(v.type) else r.astype(v.type.np_dtype)
            for r, v in zip(results, node.results)]


def inexact_nodes(graph: Graph) -> list[Node]:
    """Integer nodes the interpreter simulates in float (no bit-exact kernel for that op and dtype)."""
    from qcompiler.ir.int_kernels import EXACT_DTYPES

    found = []
    for node in graph.nodes:
        if node.op == "const" or not _is_integer_node(node):
            continue
        dtypes = EXACT_DTYPES.get(node.op)
        dtype = next((v.type.dtype for v in list(node.operands) + list(node.results) if _is_quantized(v.type)), None)
        if node.op not in INT_KERNELS or (dtypes is not None and dtype not in dtypes):
            found.append(node)
    return found
