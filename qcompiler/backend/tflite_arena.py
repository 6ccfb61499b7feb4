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

from dataclasses import dataclass
from typing import Optional, Sequence

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


# ----------------------------------------------------------------------------------------------------
# the runtime's own plan of a written model, and the order of its operators
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuntimeOp:
    """An operator as the arena planner sees it: its kernel's inplace_operator flags and tensor indices
    (-1: an omitted optional input)."""
    flags: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class RuntimeTensors:
    """What the planner knows of the tensors: bytes at batch 1, which are constants (read-only, never shared),
    and the model's inputs and outputs."""
    nbytes: tuple[int, ...]
    constant: frozenset[int]
    inputs: frozenset[int]
    outputs: frozenset[int]


def runtime_buffer_owners(ops: Sequence[RuntimeOp], tensors: RuntimeTensors) -> dict[int, tuple[int, bool]]:
    """`ArenaPlanner::IdentifyInPlaceTensors` of TF 2.21 on a written model: output tensor -> (the tensor whose
    buffer it uses, whether its kernel changes the data there). Reference counts are per tensor (one per op
    input, one for a model input or output) and the final check looks only at the buffer's first owner
    (`FindSharedTensor`), not at the tensors in between. The result is the same for every topological order
    of `ops`: an op's decision depends only on its operands' decisions."""
    refcount = [0] * len(tensors.nbytes)
    for index in (*tensors.outputs, *tensors.inputs):
        refcount[index] += 1
    for op in ops:
        for index in op.inputs:
            if index >= 0:
                refcount[index] += 1
    owners: dict[int, tuple[int, bool]] = {}
    for op in ops:
        if not op.flags or not op.outputs:
            continue
        changed = not op.flags & DATA_UNMODIFIED
        out = op.outputs[0]
        for position in range(min(MAX_SHARABLE_INPUTS, len(op.inputs))):
            index = op.inputs[position]
            if index < 0 or not op.flags & (INPUT0_SHARED << position):
                continue
            if _runtime_can_share(index, out, changed, refcount, tensors):
                root = owners.get(index, (index, False))[0]
                if not (changed and refcount[root] > 1):
                    owners[out] = (root, changed)
                break
    return owners


def _runtime_can_share(index: int, out: int, changed: bool, refcount: list[int], tensors: RuntimeTensors) -> bool:
    """`ArenaPlanner::InputTensorCanBeShared` (constants live outside the read-write arena)."""
    if changed and (tensors.nbytes[index] != tensors.nbytes[out] or tensors.nbytes[index] <= SCALAR_TENSOR_BYTES
                    or refcount[index] > 1):
        return False
    return index not in tensors.inputs and out not in tensors.outputs and index not in tensors.constant


def clobbered_reads(ops: Sequence[RuntimeOp], tensors: RuntimeTensors) -> list[tuple[int, int, int]]:
    """(writer, reader, tensor) positions in `ops` where TFLite computes a wrong result: op `writer` writes its
    output in place into a buffer that another tensor still uses (the runtime checked only the buffer owner's
    reference count, e.g. through a RESHAPE of a SOFTMAX output that was itself written in place), and op `reader`,
    later in the order, reads `tensor` from that buffer."""
    owners = runtime_buffer_owners(ops, tensors)
    group: dict[int, list[int]] = {}
    for tensor, (root, _) in owners.items():
        group.setdefault(root, [root]).append(tensor)
    readers: dict[int, list[int]] = {}
    for position, op in enumerate(ops):
        for index in set(op.inputs):
            if index >= 0:
                readers.setdefault(index, []).append(position)
    producer = {index: position for position, op in enumerate(ops) for index in op.outputs}
    found = []
    for position, op in enumerate(ops):
        entry = owners.get(op.outputs[0]) if op.outputs else None
        if entry is None or not entry[1]:
            continue
        for tensor in group[entry[0]]:  # the tensors in the buffer when the op writes it
            if tensor != op.outputs[0] and producer.get(tensor, -1) < position:
                found += [(position, later, tensor) for later in readers.get(tensor, ()) if later > position]
    return sorted(found)


def safe_operator_order(ops: Sequence[RuntimeOp], tensors: RuntimeTensors) -> list[int]:
    """A topological order of `ops` (indices, as close to the given order as possible) in which no in-place
    write clobbers a tensor that is read later (`clobbered_reads`), wherever an order can avoid it: every op
    that reads another tensor of the written buffer, and does not need the write's result, runs before the
    write. Writes whose clobbered readers need their result stay as they are (no order helps them)."""
    writers = sorted({writer for writer, _, _ in clobbered_reads(ops, tensors)})
    if not writers:
        return list(range(len(ops)))
    producer = {index: position for position, op in enumerate(ops) for index in op.outputs}
    preds = [{producer[i] for i in op.inputs if i in producer} for op in ops]
    readers: dict[int, set[int]] = {}
    for position, op in enumerate(ops):
        for index in op.inputs:
            readers.setdefault(index, set()).add(position)
    owners = runtime_buffer_owners(ops, tensors)
    group: dict[int, list[int]] = {}
    for tensor, (root, _) in owners.items():
        group.setdefault(root, [root]).append(tensor)
    extra: list[set[int]] = [set() for _ in ops]
    for writer in writers:
        out = ops[writer].outputs[0]
        after = _descendants(writer, ops, producer)
        before = {reader for tensor in group[owners[out][0]] if tensor != out and producer.get(tensor) not in after
                  for reader in readers.get(tensor, ()) if reader != writer}
        if before and not before & after:
            candidate = [set(e) for e in extra]
            candidate[writer] |= before
            if _topological(preds, candidate) is not None:
                extra = candidate
    order = _topological(preds, extra)
    return order if order is not None else list(range(len(ops)))


def _descendants(position: int, ops: Sequence[RuntimeOp], producer: dict[int, int]) -> set[int]:
    """Positions of the ops that read `position`'s results, directly or not (with `position` itself)."""
    users: dict[int, list[int]] = {}
    for p, op in enumerate(ops):
        for index in op.inputs:
            if index in producer:
                users.setdefault(producer[index], []).append(p)
    found, stack = {position}, [position]
    while stack:
        for user in users.get(stack.pop(), ()):
            if user not in found:
                found.add(user)
                stack.append(user)
    return found


def _topological(preds: Sequence[set[int]], extra: Sequence[set[int]]) -> Optional[list[int]]:
    """Kahn's order taking the lowest ready position first; None if the constraints form a cycle."""
    import heapq

    waiting = [len(p | e) for p, e in zip(preds, extra)]
    users: list[list[int]] = [[] for _ in preds]
    for position, (p, e) in enumerate(zip(preds, extra)):
        for before in p | e:
            users[before].append(position)
    ready = [p for p, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        position = heapq.heappop(ready)
        order.append(position)
        for user in users[position]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    return order if len(order) == len(preds) else None
