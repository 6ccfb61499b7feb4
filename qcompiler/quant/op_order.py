"""The order in which TFLiteConverter's QuantizationDriver meets the ops (policy tflite-2.21, `op_order="tf-import"`).

The driver (tfl_quantization_driver.cc) pushes every op of the function onto its work list in block order
(`fn.walk` in `SetupAllStates`) and pops from the back. The block order is the float model's operator order, and
that is the order in which TensorFlow's graph importer created the ops: `ImporterBase::PrepareConvert`
(tensorflow/compiler/mlir/tensorflow/translate/import_model.cc) takes `GetReversePostOrder(graph, &nodes,
[](n1, n2) { return n1->name() < n2->name(); })`, and the later passes replace a matched chain by one op at the
place of its root (the last op: a conv + BiasAdd + Relu becomes one CONV_2D where the Relu was), so they keep it.

GetReversePostOrder (tensorflow/core/graph/algorithm.cc `DFSFromHelper`) walks depth first from the graph's
source node with an explicit stack: a node's successors are sorted by name and pushed in that order, so the one
with the LARGEST name is explored first, and the reverse of the finishing order is the result. The source's
successors are the nodes without inputs: the function's arguments (the model's inputs, named by their Keras
names, and one resource argument per variable read, `<model>_1_<layer>_1_<op>_readvariableop_resource`) and the
`Const` nodes (`<model>_1/<layer>_1/Const`). '_' sorts after '/', so every weight's resource is explored before
every constant, layers by descending name: an op and everything below it lands in the block of the first
(largest-named) root that reaches it, and the blocks come out in ascending order. Within a block, a tensor's
users come out by ascending name. TensorFlow names an op `<model>_1/<layer>_1/<Op>`, and a keras.ops call
outside any layer `<model>_1/<Op>` (its TensorFlow op type, capitalized, so it sorts before the lowercase layer
names).

`converter_op_order` replays that walk on qcompiler's graph: each node stands for its Keras layer's ops (a fused
node for the chain it replaced), its weights for the layer's resource arguments, its other constants for `Const`
nodes. Only the relative order of the ops matters (the driver's work list and its tie breaks), so names are
compared, never printed.
"""
from __future__ import annotations

import re
from typing import Optional

from qcompiler.ir.graph import Graph, Node
from qcompiler.ir.ops import OPS

_KERAS_OP_NAME = re.compile(r"^([a-z][a-z0-9]*(?:_[a-z][a-z0-9]*)*)(?:_(\d+))?$")


# keras.ops calls the frontend translates (frontend/keras_ops.py OPERATIONS, by Keras' snake_case operation name)
# -> the TensorFlow op type their TF backend creates (the first op of the call: its name is what sorts). A node
# whose layer is such a name (plus Keras' `_N` suffix) came from a keras.ops call, named outside any layer scope.
KERAS_OPS_TF_NAMES: dict[str, str] = {
    "abs": "Abs", "absolute": "Abs", "add": "Add", "cast": "Cast", "clip": "clip_by_value", "concatenate": "concat",
    "divide": "truediv", "elu": "Elu", "exp": "Exp", "expand_dims": "ExpandDims", "gelu": "Gelu",
    "get_item": "strided_slice", "hard_sigmoid": "hard_sigmoid", "hard_silu": "hard_silu", "leaky_relu": "LeakyRelu",
    "matmul": "MatMul", "max": "Max", "maximum": "Maximum", "mean": "Mean", "minimum": "Minimum",
    "multiply": "Mul", "negative": "Neg", "pad": "Pad", "relu": "Relu", "relu6": "Relu6", "reshape": "Reshape",
    "rsqrt": "Rsqrt", "sigmoid": "Sigmoid", "silu": "silu", "softmax": "Softmax", "sqrt": "Sqrt",
    "square": "Square", "squeeze": "Squeeze", "subtract": "Sub", "sum": "Sum", "tanh": "Tanh",
    "transpose": "transpose", "true_divide": "truediv",
}


def _tf_scope(model: str, layer: Optional[str]) -> str:
    """The TensorFlow name prefix of the ops a Keras layer (or keras.ops call) creates in the converter's graph."""
    if layer is None:
        return f"{model}_1/"
    match = _KERAS_OP_NAME.match(layer)
    if match and match.group(1) in KERAS_OPS_TF_NAMES:  # a keras.ops call: TensorFlow's op type, e.g. Minimum
        return f"{model}_1/{KERAS_OPS_TF_NAMES[match.group(1)]}" + (f"_{match.group(2)}" if match.group(2) else "")
    return f"{model}_1/{layer}_1/"


def _resource_root(model: str, layer: Optional[str], index: int) -> str:
    """The name of a weight's resource argument: the variable-reading op's name, sanitized (lowercase, '/' -> '_')."""
    scope = f"{model}_1_{layer or ''}_1_".lower()
    return f"{scope}{index:06d}_readvariableop_resource"


def converter_op_order(graph: Graph) -> dict[int, int]:
    """node id -> its position in the converter's op order (TensorFlow's reverse post-order by name)."""
    model = graph.name
    names: dict[int, str] = {}
    for index, node in enumerate(graph.nodes):
        names[id(node)] = f"{_tf_scope(model, node.layer)}{index:08d}"
    # the source's successors: inputs, one resource argument per weighted op, one Const per other constant use
    roots: list[tuple[str, list[Node]]] = [(value.name, value.users) for value in graph.inputs]
    for index, node in enumerate(graph.nodes):
        if node.op == "const":
            continue
        spec = OPS[node.op].weights if node.op in OPS else None
        weights = set() if spec is None else {spec.operand, spec.bias}
        for operand_index, operand in enumerate(node.operands):
            if not operand.is_constant:
                continue
            if operand_index in weights:
                roots.append((_resource_root(model, node.layer, index), [node]))
            else:
                roots.append((f"{_tf_scope(model, node.layer)}Const{index:08d}_{operand_index}", [node]))
    return _reverse_post_order(roots, names)


def _reverse_post_order(roots: list[tuple[str, list[Node]]], names: dict[int, str]) -> dict[int, int]:
    """tensorflow/core/graph/algorithm.cc DFSFromHelper from the source node, successors sorted by name (pushed in
    ascending order, so the largest is explored first), then reversed."""
    finished: list[Node] = []
    visited: set[int] = set()
    # a root (an argument or Const, not an IR node) is its list of users, explored when it is popped
    stack: list[tuple[object, bool]] = [(users, False) for _, users in sorted(roots, key=lambda r: r[0])]
    while stack:
        item, leave = stack.pop()
        if leave:
            finished.append(item)  # type: ignore[arg-type]
            continue
        if isinstance(item, list):  # a root (not an IR node): explore its users
            for child in sorted(item, key=lambda n: names[id(n)]):
                if id(child) not in visited:
                    stack.append((child, False))
            continue
        node = item
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        children = [u for v in node.results for u in v.users]
        for child in sorted(children, key=lambda n: names[id(n)]):
            if id(child) not in visited:
                stack.append((child, False))
    return {id(node): rank for rank, node in enumerate(reversed(finished))}
