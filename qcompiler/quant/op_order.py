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


# keras.ops calls the frontend translates (frontend/keras_ops.py OPERATIONS, by Keras' snake_case operation name,
# which names the node's layer, plus Keras' `_N` suffix) -> the TensorFlow op type their TF backend creates (the
# first op of the call: its name is what sorts); others are capitalized. Graph.op_calls says which layers are calls.
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


# IR ops whose TensorFlow ops read a constant tensor that qcompiler keeps as an attribute (Reshape's shape,
# Transpose's perm, ConcatV2's axis, Pad's paddings, a reduction's axes, Slice/StridedSlice bounds, the resize
# size, SpaceToBatchND/BatchToSpaceND's block and paddings), or that TensorFlow builds from several ops with
# constant operands (clip_by_value, hard_silu, gelu): the Const is a root of the walk of its own.
TF_CONSTANT_INPUT_OPS = frozenset({
    "reshape", "flatten", "transpose", "concat", "pad", "mean", "sum", "reduce_max", "reduce_min", "slice",
    "resize_nearest", "space_to_batch", "batch_to_space", "relu_n1_to_1", "hard_swish", "gelu",
})


def _tf_scopes(graph: Graph) -> dict[Optional[str], str]:
    """node.layer -> the TensorFlow name prefix of the ops that Keras layer (or keras.ops call) creates in the
    converter's graph: `<model>_1/<layer>_1/`, or for a keras.ops call (`Graph.op_calls`) its TensorFlow op type,
    numbered per type in call order as TensorFlow uniquifies names (`Minimum`, `Minimum_1`, ...; Keras' own
    `_N` suffix counts every model built in the process)."""
    model = graph.name
    scopes: dict[Optional[str], str] = {None: f"{model}_1/"}
    calls_of: dict[str, int] = {}
    for node in graph.nodes:
        layer = node.layer
        if layer in scopes:
            continue
        match = _KERAS_OP_NAME.match(layer)
        if layer in graph.op_calls and match:
            base = match.group(1)
            tf_name = KERAS_OPS_TF_NAMES.get(base, "".join(part.capitalize() for part in base.split("_")))
            count = calls_of.get(tf_name, 0)
            calls_of[tf_name] = count + 1
            scopes[layer] = f"{model}_1/{tf_name}" + (f"_{count}" if count else "")
        else:
            scopes[layer] = f"{model}_1/{layer}_1/"
    return scopes


def _resource_root(model: str, layer: Optional[str], index: int) -> str:
    """The name of a weight's resource argument: the variable-reading op's name, sanitized (lowercase, '/' -> '_')."""
    scope = f"{model}_1_{layer or ''}_1_".lower()
    return f"{scope}{index:06d}_readvariableop_resource"


class _HiddenReshape:
    """The RESHAPE of Keras' tensordot in front of a fully_connected on a rank > 2 input: a vertex of its own. It
    reads the input (through TRANSPOSE and SHAPE) and the tensordot's shape constants, not the kernel, so it is
    reached apart from the FULLY_CONNECTED (which the kernel's resource reaches), usually much earlier."""

    def __init__(self, node: Node) -> None:
        self.node = node


def _batched_fc(node: Node) -> bool:
    return node.op == "fully_connected" and node.operands[0].type.rank > 2


def converter_op_order(graph: Graph) -> dict[int, int]:
    """node id -> its position in the converter's op order (TensorFlow's reverse post-order by name). A
    fully_connected on a rank > 2 input takes its hidden RESHAPE's position: that SAME op is what the driver
    meets for it (lower_to_int.ConverterPropagation)."""
    model = graph.name
    scope = _tf_scopes(graph)
    names: dict[int, str] = {}
    hidden: dict[int, _HiddenReshape] = {}
    for index, node in enumerate(graph.nodes):
        names[id(node)] = f"{scope[node.layer]}{index:08d}"
        if _batched_fc(node):
            hidden[id(node)] = reshape = _HiddenReshape(node)
            names[id(reshape)] = f"{scope[node.layer]}Tensordot{index:08d}"

    def entry(node: Node) -> object:  # where an edge into `node` from its activation operand arrives
        return hidden.get(id(node), node)

    # the source's successors: inputs, one resource argument per weighted op, one Const per other constant use
    roots: list[tuple[str, list[object]]] = [(value.name, [entry(u) for u in value.users]) for value in graph.inputs]
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
            elif node.layer in graph.variable_layers:  # e.g. a folded batch norm's scale: its variables
                roots.append((_resource_root(model, node.layer, index) + f"_{operand_index}", [entry(node)]))
            else:
                roots.append((f"{scope[node.layer]}Const{index:08d}_{operand_index}", [entry(node)]))
        if node.op in TF_CONSTANT_INPUT_OPS:  # a parameter qcompiler keeps as an attribute: a Const in TensorFlow
            roots.append((f"{scope[node.layer]}Const{index:08d}", [entry(node)]))
        if id(node) in hidden:  # the tensordot's shape constants
            roots.append((f"{scope[node.layer]}Tensordot/Const{index:08d}", [hidden[id(node)]]))

    def successors(vertex: object) -> list[object]:
        if isinstance(vertex, _HiddenReshape):
            return [vertex.node]
        return [entry(u) for v in vertex.results for u in v.users]  # type: ignore[attr-defined]

    finished = _reverse_post_order(roots, names, successors)
    rank = {id(v): i for i, v in enumerate(reversed(finished))}
    return {id(node): rank[id(hidden.get(id(node), node))] for node in graph.nodes if id(node) in rank}


def _reverse_post_order(roots: list[tuple[str, list[object]]], names: dict[int, str], successors) -> list[object]:
    """tensorflow/core/graph/algorithm.cc DFSFromHelper from the source node, successors sorted by name (pushed in
    ascending order, so the largest is explored first): the vertices in finishing order (reverse it for the
    reverse post-order)."""
    finished: list[object] = []
    visited: set[int] = set()
    # a root (an argument or Const, not an IR node) is its list of users, explored when it is popped
    stack: list[tuple[object, bool]] = [(users, False) for _, users in sorted(roots, key=lambda r: r[0])]
    while stack:
        item, leave = stack.pop()
        if leave:
            finished.append(item)
            continue
        if isinstance(item, list):  # a root: explore its users
            for child in sorted(item, key=lambda v: names[id(v)]):
                if id(child) not in visited:
                    stack.append((child, False))
            continue
        if id(item) in visited:
            continue
        visited.add(id(item))
        stack.append((item, True))
        for child in sorted(successors(item), key=lambda v: names[id(v)]):
            if id(child) not in visited:
                stack.append((child, False))
    return finished
