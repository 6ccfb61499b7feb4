"""Executes any IR graph with numpy, batched. The semantic reference for every pass.

Float values are computed with the op table's float semantics. Integer values that carry quantization
params are simulated: inputs are dequantized, the op runs in float, the result is requantized (round half to
even, clamp to the dtype's range). That is close to, not bit-exact with, TFLite's integer kernels.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from qcompiler.ir.graph import Graph, IRError, Node, Value
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
    if node.op in ("quantize", "dequantize", "const", "cast"):
        if node.op == "quantize" and _is_quantized(node.operands[0].type):
            return [quantize_array(dequantize_array(args[0], node.operands[0].type), node.result.type)]
        return compute(node, args)
    quantized_in = [_is_quantized(v.type) for v in node.operands]
    quantized_out = [_is_quantized(v.type) for v in node.results]
    if not any(quantized_in) and not any(quantized_out):
        return compute(node, args)
    float_args = [dequantize_array(a, v.type) if q else a for a, v, q in zip(args, node.operands, quantized_in)]
    results = compute(node, float_args)
    return [quantize_array(r, v.type) if _is_quantized(v.type) else r.astype(v.type.np_dtype)
            for r, v in zip(results, node.results)]


def quantize_array(x: np.ndarray, t: TensorType) -> np.ndarray:
    q = t.quant
    info = np.iinfo(t.np_dtype)
    scaled = np.asarray(x, np.float64) / q.scale_array(x.ndim) + q.zero_point_array(x.ndim)
    return np.clip(np.rint(scaled), info.min, info.max).astype(t.np_dtype)
