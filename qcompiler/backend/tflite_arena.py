"""TFLite's arena planner, as far as calibration sees it: which kernels write their output into an input's buffer.

TFLiteConverter's calibrator (tools/optimize/calibration: calibration_logger.cc, logging_op_resolver.cc) logs
each op's inputs before *and after* the kernel runs. When the runtime lets a kernel share an input's buffer with
its output, the input is logged a second time holding the output's values, so the converter records the input's
range as the union of both. Reproducing that (the `tflite-2.21` policy's in-place range unions) needs the same
sharing decisions, which this module makes on the IR graph with the runtime's own rule:

  * each kernel registration declares `TfLiteRegistration::inplace_operator` flags: `kTfLiteInplaceOpInputNShared`
    (input N may share the first output's buffer) and `kTfLiteInplaceOpDataUnmodified` (the output is the input's
    data, e.g. RESHAPE). The op table holds them for the builtin each IR op is written as (`OpDef.tflite`):
    `OpDef.inplace_operands` are the shared inputs of a kernel that changes the data (TF 2.21: ADD, SUB, MUL
    inputs 0 and 1, SOFTMAX input 0), `OpDef.shares_input_buffer` marks input 0 shared with data unmodified
    (RESHAPE); `kernel_flags` turns them back into the runtime's flags.
  * `ArenaPlanner::IdentifyInPlaceTensors` walks the ops in execution order; for each op with flags it takes the
    first flagged input that `InputTensorCanBeShared`: not a graph input, the op's output not a graph output,
    input in the read-write arena (constants are not), and, unless the data is unmodified, as many bytes as the
    output and more than 4 (`kScalarTensorBytes`), and a reference count of 1 (uses by ops, plus one if a graph
    output). The output then shares the buffer of that input's own buffer owner (`FindSharedTensor`), unless
    the data changes and the owner's reference count is above 1.
  * a fully_connected on a rank > 2 input produces a dynamic tensor in the converter's model (never shared), after
    the elementwise ops that the converter moves above its RESHAPE;
  * a Keras Flatten/Reshape layer on an unknown batch is a RESHAPE whose target is computed at run time (SHAPE,
    STRIDED_SLICE, PACK; `runtime_batch_reshape`). Its SHAPE op reads the input too (one more reference). Its
    Prepare cannot size the output, so TFLite prepares and allocates the ops after it only once it ran; if its
    output does not alias its input (a graph input, a graph output, or an input whose own buffer owner became
    dynamic), the kernel makes the output dynamic, and `CalculateAllocations` drops every sharing planned
    onto that buffer: no later kernel writes in place into it, along the whole chain planned on it (random seeds
    2142, 1213). Otherwise it aliases its input, and a later in-place kernel may write into the buffer even though
    a tensor along the chain has other readers: TFLite checks the reference count of the chain's first tensor only.
  * bytes are counted at batch 1: the calibrator resizes the inputs to each representative sample and qcompiler
    feeds one sample per run.

An output written into an input's buffer with changed data is an in-place write: `inplace_writes` returns
those (input, output) pairs. A kernel with an unfused activation the backend writes as a separate op (e.g. tanh)
writes a tensor the IR has no value for; such ops are left out.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.ops import OPS

# TfLiteInPlaceOp flags (tensorflow/lite/core/c/common.h).
DATA_UNMODIFIED = 1
INPUT0_SHARED = 4
INPUT1_SHARED = 8
INPUT2_SHARED = 16
MAX_SHARABLE_INPUTS = 3  # kTfLiteMaxSharableOpInputs
SCALAR_TENSOR_BYTES = 4  # kScalarTensorBytes in arena_planner.cc

# Fused activations TFLite applies inside the kernel (others become a separate op after it).
_IN_KERNEL_ACTIVATIONS = ("none", "relu", "relu6", "relu_n1_to_1")


def kernel_flags(op: str) -> int:
    """The inplace_operator flags of the TFLite kernel the IR op `op` is written as (0: never in place), from the
    op table's in-place facts."""
    definition = OPS.get(op)
    if definition is None or definition.tflite is None:
        return 0
    flags = 0
    for index in definition.inplace_operands:
        flags |= INPUT0_SHARED << index
    if definition.shares_input_buffer:
        flags |= INPUT0_SHARED | DATA_UNMODIFIED
    return flags


def shareable_operands(op: str) -> tuple[int, ...]:
    """Operand indices whose buffer the op's kernel may take for its output, in the order TFLite tries them."""
    flags = kernel_flags(op)
    return tuple(i for i in range(MAX_SHARABLE_INPUTS) if flags & (INPUT0_SHARED << i))


def runtime_batch_reshape(node: Node) -> bool:
    """A reshape the converter writes with a target computed at run time: a Keras Flatten or Reshape layer (whose
    TensorFlow graph packs the input's batch, ops.shape(x)[0], with the other dimensions) on an unknown batch."""
    return (node.op == "flatten" or node.op == "reshape" and node.attrs["runtime_batch"]) and \
        node.operands[0].type.shape[0] is None


def inplace_writes(graph: Graph) -> list[tuple[Value, Value]]:
    """(input, output) pairs of a float graph where TFLite writes `output`'s values into `input`'s buffer when the
    converter's calibrator runs it: the converter records `input` with the union of both ranges. The buffer may
    hold other tensors too (aliases along the sharing chain, e.g. the input of a Flatten whose output the kernel
    overwrites): each one computed before the write that an op reads after it is logged with the written values
    as well, and comes as a pair of its own (random seed 1213: a GlobalMaxPool after the ADD reads the Rescaling output)."""
    planner = _Planner(graph)
    order = {id(node): i for i, node in enumerate(graph.nodes)}
    writes: list[tuple[Value, Value, int]] = []
    for node in graph.nodes:
        shared = planner.identify(node)
        if shared is not None and not kernel_flags(node.op) & DATA_UNMODIFIED:
            writes.append((shared, node.result, order[id(node)]))
    aliases: dict[int, list[Value]] = {}
    for value in graph.values():
        root = planner.owner.get(id(value))
        if root is not None and id(root) not in planner.dynamic:
            aliases.setdefault(id(root), [root]).append(value)
    pairs = []
    for shared, result, position in writes:
        pairs.append((shared, result))
        root = planner.owner[id(result)]
        for alias in aliases.get(id(root), []):
            made_before = alias.producer is None or order.get(id(alias.producer), position) < position
            if alias is not shared and made_before and any(order[id(use.node)] > position for use in alias.uses):
                pairs.append((alias, result))
    return pairs


class _Planner:
    """IdentifyInPlaceTensors over the IR: `owner` maps a value to the value whose buffer it uses."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.inputs = {id(v) for v in graph.inputs}
        self.owner: dict[int, Value] = {}
        self.dynamic: set[int] = set()  # outputs of runtime-shaped reshapes that TFLite makes dynamic

    def identify(self, node: Node) -> Optional[Value]:
        """The operand whose buffer `node`'s result takes, or None."""
        flags = kernel_flags(node.op)
        if not flags or len(node.results) != 1 or node.attrs.get("activation", "none") not in _IN_KERNEL_ACTIVATIONS:
            return None
        changed = not flags & DATA_UNMODIFIED
        chosen = None
        for index in shareable_operands(node.op):
            if index < len(node.operands) and self._can_share(node.operands[index], node.result, changed):
                chosen = node.operands[index]
                break
        root = None if chosen is None else self.owner.get(id(chosen), chosen)
        if root is not None and changed and self._refcount(root) > 1:
            root = None
        if root is not None:
            self.owner[id(node.result)] = root  # planned; dropped later if the root is dynamic
        if root is None or id(root) in self.dynamic:
            if runtime_batch_reshape(node):
                self.dynamic.add(id(node.result))
            return None
        return chosen

    def _can_share(self, operand: Value, result: Value, changed: bool) -> bool:
        if changed:
            size = _bytes_at_batch_1(operand)
            if size != _bytes_at_batch_1(result) or size <= SCALAR_TENSOR_BYTES or self._refcount(operand) > 1:
                return False
        return (id(operand) not in self.inputs and not self.graph.is_output(result) and not operand.is_constant
                and not _dynamic_in_converter_model(operand))

    def _refcount(self, value: Value) -> int:
        shape_reads = sum(1 for use in value.uses if use.index == 0 and runtime_batch_reshape(use.node))
        return len(value.uses) + shape_reads + sum(1 for output in self.graph.outputs if output is value)


# Elementwise ops the converter's optimize pass moves above a RESHAPE whose result has one use
# (ReorderElementwiseAndMoveOperations: value op of a move op -> move op of the value op); measured on TF 2.21 after
# a rank > 2 Dense: LOGISTIC, TANH, EXP, SQUARE, NEG and the clamps move, ABS, LEAKY_RELU, SOFTMAX, ELU, GELU and
# HARD_SWISH do not.
MOVED_ABOVE_RESHAPE = frozenset({"relu", "relu6", "relu_n1_to_1", "sigmoid", "tanh", "exp", "square", "neg", "sqrt"})


def _dynamic_in_converter_model(value: Value) -> bool:
    """The result of Keras' tensordot (a fully_connected on a rank > 2 input with a dynamic batch): the converter's
    model ends it with a RESHAPE whose shape is computed at run time (SHAPE, GATHER, PACK), so the tensor is
    dynamic, allocated outside the arena, and never shared (found by random-model testing). That RESHAPE comes
    after the single-use chain of MOVED_ABOVE_RESHAPE ops that follow the fully_connected (a sigmoid then a relu6
    run on the 2-D product), so the dynamic tensor is the chain's last result."""
    if _moves_above_reshape(value):
        return False  # the RESHAPE comes after the op that consumes `value`
    while value.producer is not None and value.producer.op in MOVED_ABOVE_RESHAPE:
        value = value.producer.operands[0]
        if not _moves_above_reshape(value):
            return False
    producer = value.producer
    return (producer is not None and producer.op == "fully_connected" and producer.operands[0].type.rank > 2
            and producer.operands[0].type.shape[0] is None)


def _moves_above_reshape(value: Value) -> bool:
    """`value`'s only user is an elementwise op the converter moves above the RESHAPE that would follow `value`."""
    if len(value.uses) != 1 or value.producer is None or value.producer.graph.is_output(value):
        return False
    user = value.uses[0].node
    return user.op in MOVED_ABOVE_RESHAPE and len(user.results) == 1


def _bytes_at_batch_1(value: Value) -> int:
    elements = int(np.prod([1 if d is None else d for d in value.type.shape], dtype=np.int64))
    return elements * value.type.np_dtype.itemsize
