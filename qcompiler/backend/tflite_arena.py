"""TFLite's arena planner: which kernels write their output into an input's buffer, and what that overwrites.

One model of the runtime's rule, `buffer_sharing`, decides which buffer each output ends up in, on a list of
operators (`RuntimeOp`) and what the planner knows of the tensors (`RuntimeTensors`). Two callers use it:

  * calibration (the `tflite-2.21` policy's in-place range unions): TFLiteConverter's calibrator
    (tools/optimize/calibration: calibration_logger.cc, logging_op_resolver.cc) logs each op's inputs before *and
    after* the kernel runs. When the runtime lets a kernel share an input's buffer with its output, the input is
    logged a second time holding the output's values, so the converter records the input's range as the union of
    both. `inplace_writes` runs the planner on the converter's model of an IR graph (`converter_model`).
  * the writer (qcompiler/backend/tflite_writer.py): on the operators it wrote, `clobbered_reads` finds the
    in-place writes into a buffer another tensor still needs, and `safe_operator_order` an order without them.

Both read the writes from `inplace_overwrites`. The runtime's rule (TF 2.21, tensorflow/lite/arena_planner.cc):

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

The last three points are facts about the converter's model that `converter_model` states as operators and
tensors: a dynamic tensor (`RuntimeTensors.dynamic`), a SHAPE operator, a RESHAPE with `shape_at_run_time`; the
writer states the same facts of its own model (it writes run-time-shaped RESHAPEs the same way).
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
    as well, and comes as a pair of its own (random seed 1213: a GlobalMaxPool after the ADD reads the Rescaling
    output).
    The decisions are `buffer_sharing`'s on the converter's model of the graph (`converter_model`)."""
    model = converter_model(graph)
    pairs = []
    for write in inplace_overwrites(model.ops, model.tensors):
        result = model.values[write.output]
        pairs.append((model.values[write.input], result))
        pairs += [(model.values[tensor], result) for tensor in write.clobbered]
    return pairs


@dataclass(frozen=True)
class ConverterModel:
    """The operators and tensors of the model TFLiteConverter writes for a float graph, as the arena planner sees
    them; `values[i]` is the IR value of tensor i (None for a tensor the IR has no value for)."""
    ops: tuple["RuntimeOp", ...]
    tensors: "RuntimeTensors"
    values: tuple[Optional[Value], ...]


def converter_model(graph: Graph) -> ConverterModel:
    """The converter's model of `graph` in the graph's order: one operator per node, with the flags of the kernel
    it is written as, except where the converter's kernel writes a tensor the IR has no value for (an op with
    several results, or a fused activation TFLite runs as an op of its own: never shared here); a SHAPE operator
    before each reshape whose target is computed at run time (it reads the input once more); and the dynamic
    tensors of Keras' tensordot (`dynamic_in_converter_model`) outside the arena."""
    values: list[Optional[Value]] = list(graph.values())
    index = {id(v): i for i, v in enumerate(values)}
    ops = []
    for node in graph.nodes:
        if node.op == "const":
            continue
        operands = tuple(index[id(v)] for v in node.operands)
        at_run_time = runtime_batch_reshape(node)
        if at_run_time:
            values.append(None)
            ops.append(RuntimeOp(0, operands[:1], (len(values) - 1,)))
        in_kernel = len(node.results) == 1 and node.attrs.get("activation", "none") in _IN_KERNEL_ACTIVATIONS
        ops.append(RuntimeOp(kernel_flags(node.op) if in_kernel else 0, operands,
                             tuple(index[id(v)] for v in node.results), at_run_time))
    tensors = RuntimeTensors(
        nbytes=tuple(0 if v is None else _bytes_at_batch_1(v) for v in values),
        constant=frozenset(i for i, v in enumerate(values) if v is not None and v.is_constant),
        inputs=frozenset(index[id(v)] for v in graph.inputs), outputs=frozenset(index[id(v)] for v in graph.outputs),
        dynamic=frozenset(i for i, v in enumerate(values) if v is not None and dynamic_in_converter_model(v)))
    return ConverterModel(tuple(ops), tensors, tuple(values))


# Elementwise ops the converter's optimize pass moves above a RESHAPE whose result has one use
# (ReorderElementwiseAndMoveOperations: value op of a move op -> move op of the value op); measured on TF 2.21 after
# a rank > 2 Dense: LOGISTIC, TANH, EXP, SQUARE, NEG and the clamps move, ABS, LEAKY_RELU, SOFTMAX, ELU, GELU and
# HARD_SWISH do not.
MOVED_ABOVE_RESHAPE = frozenset({"relu", "relu6", "relu_n1_to_1", "sigmoid", "tanh", "exp", "square", "neg", "sqrt"})


def dynamic_in_converter_model(value: Value) -> bool:
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
    (-1: an omitted optional input); `shape_at_run_time`: a RESHAPE whose target is a tensor computed at run time
    (SHAPE, STRIDED_SLICE, PACK), whose output TFLite cannot size when it prepares the op."""
    flags: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    shape_at_run_time: bool = False


@dataclass(frozen=True)
class RuntimeTensors:
    """What the planner knows of the tensors: bytes at batch 1, which are constants (read-only, never shared),
    the model's inputs and outputs, and the tensors that are dynamic from the start (allocated outside the arena,
    never shared)."""
    nbytes: tuple[int, ...]
    constant: frozenset[int]
    inputs: frozenset[int]
    outputs: frozenset[int]
    dynamic: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Sharing:
    """Where an op's output lives when the runtime lets it share an input's buffer: `input`, the op input whose
    buffer it takes; `owner`, that buffer's first tensor (`FindSharedTensor`); `changed`, whether the kernel
    writes new values into it (not kTfLiteInplaceOpDataUnmodified)."""
    input: int
    owner: int
    changed: bool


def buffer_sharing(ops: Sequence[RuntimeOp], tensors: RuntimeTensors) -> dict[int, Sharing]:
    """TFLite 2.21's decision of which buffer each output ends up in (outputs not listed get their own):
    `ArenaPlanner::IdentifyInPlaceTensors` in the order of `ops`, then what execution drops.

    Reference counts are per tensor (one per op input, one for a model input or output). An op with flags takes
    the first flagged input that `InputTensorCanBeShared` (`_can_share`); its output then shares that input's
    buffer owner, unless the data changes and the owner's reference count is above 1: the check looks only at the
    buffer's first owner, not at the tensors in between. A RESHAPE whose target is computed at run time makes its
    output dynamic when the output does not alias its input (no sharing planned, or planned onto a dynamic
    buffer), and `CalculateAllocations` then drops every sharing planned onto a dynamic buffer. The result is the
    same for every topological order of `ops`: an op's decision depends only on its operands' decisions."""
    refcount = [0] * len(tensors.nbytes)
    for index in (*tensors.outputs, *tensors.inputs):
        refcount[index] += 1
    for op in ops:
        for index in op.inputs:
            if index >= 0:
                refcount[index] += 1
    planned: dict[int, Sharing] = {}
    dynamic: set[int] = set()  # outputs of run-time-shaped RESHAPEs that the kernel makes dynamic
    for op in ops:
        sharing = _identify(op, planned, refcount, tensors)
        if sharing is not None:
            planned[op.outputs[0]] = sharing
        if op.shape_at_run_time and (sharing is None or sharing.owner in dynamic):
            dynamic.add(op.outputs[0])
    return {tensor: sharing for tensor, sharing in planned.items() if sharing.owner not in dynamic}


def _identify(op: RuntimeOp, planned: dict[int, Sharing], refcount: list[int],
              tensors: RuntimeTensors) -> Optional[Sharing]:
    """One op's step of `IdentifyInPlaceTensors`."""
    if not op.flags or not op.outputs:
        return None
    changed = not op.flags & DATA_UNMODIFIED
    out = op.outputs[0]
    for position in range(min(MAX_SHARABLE_INPUTS, len(op.inputs))):
        index = op.inputs[position]
        if index < 0 or not op.flags & (INPUT0_SHARED << position):
            continue
        if _can_share(index, out, changed, refcount, tensors):
            owner = planned[index].owner if index in planned else index
            return None if changed and refcount[owner] > 1 else Sharing(index, owner, changed)
    return None


def _can_share(index: int, out: int, changed: bool, refcount: list[int], tensors: RuntimeTensors) -> bool:
    """`ArenaPlanner::InputTensorCanBeShared` (constants and dynamic tensors live outside the read-write arena)."""
    if changed and (tensors.nbytes[index] != tensors.nbytes[out] or tensors.nbytes[index] <= SCALAR_TENSOR_BYTES
                    or refcount[index] > 1):
        return False
    return (index not in tensors.inputs and out not in tensors.outputs and index not in tensors.constant
            and index not in tensors.dynamic)


def _buffers(sharing: dict[int, Sharing]) -> dict[int, list[int]]:
    """Buffer owner -> the tensors in its buffer (the owner first, then by index)."""
    members: dict[int, list[int]] = {}
    for tensor in sorted(sharing):
        members.setdefault(sharing[tensor].owner, [sharing[tensor].owner]).append(tensor)
    return members


@dataclass(frozen=True)
class InPlaceWrite:
    """Op `position` writes new values for `output` into the buffer of its input `input`; `clobbered`: the other
    tensors of that buffer computed before the write and read by a later op (they read the written values)."""
    position: int
    input: int
    output: int
    clobbered: tuple[int, ...]


def inplace_overwrites(ops: Sequence[RuntimeOp], tensors: RuntimeTensors,
                       sharing: Optional[dict[int, Sharing]] = None) -> list[InPlaceWrite]:
    """Every write of changed data into a shared buffer (`buffer_sharing`), in op order. The calibrator logs
    `input` again after the kernel ran, holding `output`'s values, and every clobbered tensor too; TFLite's runtime
    computes wrong values where a later op reads a clobbered tensor."""
    sharing = buffer_sharing(ops, tensors) if sharing is None else sharing
    buffers = _buffers(sharing)
    producer = {index: position for position, op in enumerate(ops) for index in op.outputs}
    last_read: dict[int, int] = {}
    for position, op in enumerate(ops):
        for index in op.inputs:
            last_read[index] = position
    writes = []
    for position, op in enumerate(ops):
        entry = sharing.get(op.outputs[0]) if op.outputs else None
        if entry is None or not entry.changed:
            continue
        out = op.outputs[0]
        clobbered = tuple(tensor for tensor in buffers[entry.owner] if tensor != out and tensor != entry.input
                          and producer.get(tensor, -1) < position < last_read.get(tensor, -1))
        writes.append(InPlaceWrite(position, entry.input, out, clobbered))
    return writes


def clobbered_reads(ops: Sequence[RuntimeOp], tensors: RuntimeTensors) -> list[tuple[int, int, int]]:
    """(writer, reader, tensor) positions in `ops` where TFLite computes a wrong result: op `writer` writes its
    output in place into a buffer that another tensor still uses (the runtime checked only the buffer owner's
    reference count, e.g. through a RESHAPE of a SOFTMAX output that was itself written in place), and op `reader`,
    later in the order, reads `tensor` from that buffer (`inplace_overwrites`)."""
    readers: dict[int, list[int]] = {}
    for position, op in enumerate(ops):
        for index in set(op.inputs):
            readers.setdefault(index, []).append(position)
    return sorted((write.position, reader, tensor) for write in inplace_overwrites(ops, tensors)
                  for tensor in write.clobbered for reader in readers[tensor] if reader > write.position)


def safe_operator_order(ops: Sequence[RuntimeOp], tensors: RuntimeTensors) -> list[int]:
    """A topological order of `ops` (indices, as close to the given order as possible) in which no in-place
    write clobbers a tensor that is read later (`clobbered_reads`), wherever an order can avoid it: every op
    that reads another tensor of the written buffer, and does not need the write's result, runs before the
    write. Writes whose clobbered readers need their result stay as they are (no order helps them)."""
    sharing = buffer_sharing(ops, tensors)
    writes = [write for write in inplace_overwrites(ops, tensors, sharing) if write.clobbered]
    if not writes:
        return list(range(len(ops)))
    producer = {index: position for position, op in enumerate(ops) for index in op.outputs}
    preds = [{producer[i] for i in op.inputs if i in producer} for op in ops]
    readers: dict[int, set[int]] = {}
    for position, op in enumerate(ops):
        for index in op.inputs:
            readers.setdefault(index, set()).add(position)
    buffers = _buffers(sharing)
    extra: list[set[int]] = [set() for _ in ops]
    for write in writes:
        writer, out = write.position, write.output
        after = _descendants(writer, ops, producer)
        before = {reader for tensor in buffers[sharing[out].owner]
                  if tensor != out and producer.get(tensor) not in after
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
