"""lower-to-int: turn a calibrated fake-quant graph into an integer graph that the backend writes as is.

  - every activation becomes an i8 (or i16) value with the converter's scale and zero point. A calibrated
    fake_quant fixes its tensor's parameters; softmax/logistic/tanh results get the kernel's fixed ones; the
    other activations get theirs through the ops that share parameters (SAME in qcompiler/quant/spec.py), by
    the quantization policy's propagation rule (`policy=`, qcompiler/quant/policy.py): `tflite-2.21` replays the
    MLIR quantizer's QuantizationDriver in int8 (a concat's output parameters flow back into its operands, graph
    inputs included) and the older quantizer in 16x8; `plain` (and that older quantizer) let parameters flow
    forward only, requantizing concat/maximum/minimum operands with other parameters;
  - where one tensor would need two parameter sets, a requantizing `quantize` (integer -> integer) is inserted,
    for the users that need the other set (or after a fixed-range op, for all its users), and folded into the
    producer when the producer computes its own output scale and has no other user;
  - weights become symmetric per-channel i8 constants, biases i32 (i64 for 16-bit activations) with
    scale = input scale × weight scale; constant operands of SAME ops take the op's parameters, other constant
    operands become per-tensor i8 constants;
  - graph inputs/outputs are integer (`io=int8`/`int16`), uint8 (`io=uint8`, TOCO-style), or float with
    quantize/dequantize at the edges (`io=float`).

The policy also decides the FLT_MIN floor of calibrated ranges and the bias-overflow adjustment of weight scales;
the counters `propagated-backwards`, `flt-min-floor` and `bias-adjusted` say how often each converter rule
applied (the plain policy never reports them).
A tensor without a range is an error naming the tensor and its Keras layer, unless `default_ranges` fills it.
docs/quantization-notes.md §5 describes the converter's rules and the experiments that confirmed them.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

import numpy as np

from qcompiler.backend.tflite_arena import dynamic_in_converter_model
from qcompiler.errors import QCompilerError
from qcompiler.ir.checks import check_known_values
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.ops import OPS
from qcompiler.ir.types import QParams, TensorType
from qcompiler.passes.base import Pass, PassResult
from qcompiler.passes.rewriter import batched_fc_reason
from qcompiler.quant import math as qmath
from qcompiler.quant.policy import DEFAULT_POLICY, PolicyName, QuantPolicy, get_policy
from qcompiler.quant.float_spread import FloatOps, float_ops
from qcompiler.quant.op_order import converter_op_order
from qcompiler.quant.spec import FIXED, FLOAT_ISLAND, OWN, SAME, OpQuantSpec, node_spec


# Ops whose int8 kernels in ai-edge-litert 2.3 load INT4 weights (OpDef.weights.int4): CONV_2D v7 and
# FULLY_CONNECTED v10, the versions TFLiteConverter writes. DEPTHWISE_CONV_2D needs v7, which that runtime does
# not register: int8 storage instead.
INT4_WEIGHT_OPS = frozenset(name for name, d in OPS.items() if d.weights is not None and d.weights.int4)


class MissingRangeError(QCompilerError):
    pass


class DefaultRangesWarning(UserWarning):
    pass


@dataclass(frozen=True)
class LowerToInt(Pass):
    name: ClassVar[str] = "lower-to-int"
    summary: ClassVar[str] = "replace fake_quant by integer types, quantize weights and biases, set I/O types"

    io: Literal["int8", "int16", "uint8", "float"] = "int8"
    default_ranges: Optional[tuple[float, float]] = None
    input_stats: Optional[tuple[float, float]] = None  # uint8 inputs: real = (q - mean) / std
    policy: PolicyName = DEFAULT_POLICY
    int4: bool = True  # trained weights of <= 4 bits as TFLite INT4 where the runtime accepts it (INT4_WEIGHT_OPS)
    keep_float: tuple[str, ...] = ()  # Keras layers left in float (as insert-fake-quant's keep_float)

    def run(self, graph: Graph) -> PassResult:
        fake_quants = graph.find("fake_quant")
        if not fake_quants:
            if any(v.type.quant is not None for v in graph.values()):
                return PassResult.unchanged()  # already lowered
            raise QCompilerError("lower-to-int found no fake_quant nodes: run insert-fake-quant (and calibrate, "
                                 "or give default ranges) before it, e.g. --pipeline "
                                 "\"insert-fake-quant,calibrate{data=samples.npy},lower-to-int\"")
        check_known_values(graph, "lower-to-int")
        lowered = next((v for v in graph.values() if v.type.quant is not None), None)
        if lowered is not None:
            raise QCompilerError(f"lower-to-int: the graph is partly integer already (%{lowered.name} is "
                                 f"{lowered.type}); run it once, on a float graph with fake_quant nodes")
        policy = get_policy(self.policy)
        act_dtype = _activation_dtype(fake_quants)
        self._check_io(act_dtype)
        self._fill_missing_ranges(graph, fake_quants)
        keep = frozenset(self.keep_float)
        marks = _erase_fake_quants(graph, fake_quants, policy, act_dtype, keep)
        marks.ranges.update(self._input_stats_ranges(graph))
        propagation = PROPAGATIONS[policy.propagation(act_dtype)](graph, marks.ranges, act_dtype, policy, keep)
        states = propagation.run()
        skipped = propagation.skipped() if policy.converter_float(act_dtype) and isinstance(
            propagation, ConverterPropagation) else set()
        _check_all_quantized(states, {id(n.result) for n in graph.nodes if id(n) in skipped})
        floats = float_ops(graph, set(marks.ranges), act_dtype, policy, keep, skipped)
        unread = _unread_inputs(graph) if policy.unread_inputs_float else set()
        floats.unquantized |= unread
        params, requantized, volatile = _insert_requantizations(graph, states, floats.unquantized, floats)
        unquantized = {key: states[key][1].params for key in floats.unquantized
                       if key not in floats.unparameterized}
        lowering = _ConstantLowering(graph, {**unquantized, **params}, marks.weight_axes, act_dtype, policy, keep)
        lowering.trained, lowering.int4, lowering.floats = marks.weight_grids, self.int4, floats
        weights = sum(lowering.lower(node) for node in list(graph.nodes))
        _retype_activations(graph, params, act_dtype)
        islands = _isolate_float_islands(graph, act_dtype, floats, unquantized, volatile)
        folded = _fold_trivial_requantizations(graph)
        _remove_dead_constants(graph)
        self._lower_io(graph)
        notes = tuple(f"float %{n.result.name} = {n.op}" + (f" (Keras layer '{n.layer}')" if n.layer else "")
                      + f": {floats.reasons[id(n)]}" for n in islands)
        counts = {"weights": weights, "requantize": requantized - folded, "requantize-folded": folded,
                  "fake-quant-erased": len(fake_quants), "propagated-backwards": propagation.backwards,
                  "flt-min-floor": marks.floored, "bias-adjusted": lowering.bias_adjusted, "float-ops": len(islands),
                  "float-inputs": len(unread)}
        return PassResult(True, {k: v for k, v in counts.items() if v}, notes)

    # ----- ranges ---------------------------------------------------------------------------------
    def _check_io(self, act_dtype: str) -> None:
        allowed = {"i8": ("int8", "uint8", "float"), "i16": ("int16", "float")}[act_dtype]
        if self.io not in allowed:
            raise QCompilerError(f"io={self.io} does not fit {act_dtype} activations; choose one of {allowed}")
        if self.input_stats is not None and self.io != "uint8":
            raise QCompilerError(f"input stats (mean, std) describe uint8 inputs; they do not apply to io={self.io}")

    def _fill_missing_ranges(self, graph: Graph, fake_quants: list[Node]) -> None:
        missing = [n for n in fake_quants if not n.attrs["weights"] and n.attrs["min"] is None]
        if not missing:
            return
        listing = ", ".join(_describe_tensor(n.operands[0]) for n in missing)
        if self.default_ranges is None and any(n.attrs["bits"] is not None for n in fake_quants):
            raise MissingRangeError(
                f"{len(missing)} tensor(s) of this quantization-aware-trained model have no trained range: {listing}. "
                "Training never saw them (a FakeQuant never called in training, or no FakeQuant where the int8 model "
                "needs a range): train with qcompiler.qat.quantize_model's layers, or fill them with --default-ranges "
                "MIN,MAX")
        if self.default_ranges is None:
            raise MissingRangeError(
                f"{len(missing)} tensor(s) have no calibrated range: {listing}. Calibrate with data that reaches "
                "them (--calibration DATA.npy), or fill them with --default-ranges MIN,MAX")
        lo, hi = self.default_ranges
        if not lo <= 0 <= hi or lo == hi:
            raise QCompilerError(f"default ranges [{lo}, {hi}] must contain 0 and not be empty")
        warnings.warn(f"default range [{lo}, {hi}] used for {len(missing)} uncalibrated tensor(s): {listing}",
                      DefaultRangesWarning, stacklevel=2)
        for node in missing:
            node.attrs["min"], node.attrs["max"] = float(lo), float(hi)

    # ----- I/O ------------------------------------------------------------------------------------
    def _lower_io(self, graph: Graph) -> None:
        if self.io == "float":
            for value in graph.inputs:
                if value.type.quant is not None:
                    _quantize_input(graph, value, value.type)
            graph.outputs = [_dequantize(graph, v) if v.type.quant is not None else v for v in graph.outputs]
        elif self.io == "uint8":
            for value in graph.inputs:
                if value.type.quant is not None:
                    self._uint8_input(graph, value)
            graph.outputs = [_to_uint8(graph, v) if v.type.quant is not None else v for v in graph.outputs]

    def _input_stats_ranges(self, graph: Graph) -> dict[int, QParams]:
        """TOCO-style uint8 input statistics, real = (q - mean) / std, as the inputs' int8 parameters inside."""
        if self.io != "uint8" or self.input_stats is None:
            return {}
        mean, std = self.input_stats
        if std <= 0:
            raise QCompilerError(f"input stats need a positive std, got {std}")
        zero_point = int(qmath.round_half_away(np.float64(mean)))
        if not 0 <= zero_point <= 255:
            raise QCompilerError(f"input stats mean {mean} is outside the uint8 range [0, 255]")
        params = QParams.per_tensor(1.0 / std, zero_point - 128)
        return {id(v): params for v in graph.inputs if v.type.is_float}

    @staticmethod
    def _uint8_input(graph: Graph, value: Value) -> None:
        q = value.type.quant
        uint8_type = TensorType(value.type.shape, "u8", QParams.per_tensor(q.scale[0], q.zero_point[0] + 128))
        _quantize_input(graph, value, value.type, input_type=uint8_type)


# ----------------------------------------------------------------------------------------------------
# fake_quant nodes -> what they said
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Marks:
    ranges: dict[int, QParams] = field(default_factory=dict)  # activation id -> calibrated parameters
    weight_axes: dict[tuple[int, int], Optional[int]] = field(default_factory=dict)  # (node id, operand) -> axis
    floored: int = 0  # ranges whose max the FLT_MIN floor raised
    weight_grids: dict[tuple[int, int], tuple[int, bool]] = field(default_factory=dict)  # trained: (bits, narrow)


def _erase_fake_quants(graph: Graph, fake_quants: list[Node], policy: QuantPolicy, act_dtype: str,
                       keep: frozenset = frozenset()) -> _Marks:
    """Record what each fake_quant says, then remove it: the activation ranges (fixed-range outputs excepted,
    the kernel fixes them) and the per-channel axis of each weight use."""
    marks = _Marks()
    for node in fake_quants:
        source = node.operands[0]
        if node.attrs["weights"]:
            for use in node.result.uses:
                marks.weight_axes[(id(use.node), use.index)] = node.attrs["axis"]
                if node.attrs["bits"] is not None:
                    marks.weight_grids[(id(use.node), use.index)] = (node.attrs["bits"], node.attrs["narrow_range"])
        elif (node.attrs["bits"] is not None and not source.is_constant
              and not _is_fixed_output(source, act_dtype, keep)):
            marks.ranges[id(source)] = _trained_params(node)  # QAT: the range as trained, whatever the policy
        elif not source.is_constant and not _is_fixed_output(source, act_dtype, keep):
            lo, hi = node.attrs["min"], node.attrs["max"]
            marks.ranges[id(source)] = qmath.activation_qparams(lo, hi, node.attrs["dtype"], policy.flt_min_floor)
            marks.floored += int(policy.flt_min_floor and float(np.float32(hi)) < qmath.FLT_MIN)
        graph.replace_node(node, [source])
    return marks


def _trained_params(fake_quant: Node) -> QParams:
    """A trained (QAT) range: its fake-quant grid (plain; no converter rule on top)."""
    attrs = fake_quant.attrs
    if attrs["bits"] != 8 or attrs["dtype"] != "i8":
        raise QCompilerError(
            f"{_describe_tensor(fake_quant.operands[0])} was trained with {attrs['bits']}-bit activations; int8 "
            "kernels clamp results to the 8-bit range only, so the integer model could not reproduce it. Train with "
            "activation_bits=8 (weights may have fewer bits)")
    return qmath.fake_quant_qparams(attrs["min"], attrs["max"], 8, attrs["narrow_range"], "i8")


def _is_fixed_output(value: Value, act_dtype: str, keep: frozenset = frozenset()) -> bool:
    spec = _spec_of(value.producer, act_dtype, keep)
    return spec is not None and spec.output == FIXED


def _spec_of(node: Optional[Node], act_dtype: str = "i8", keep: frozenset = frozenset()) -> Optional[OpQuantSpec]:
    """The quantization recipe of the node's op; None for graph inputs, constants, conversions (fake_quant,
    quantize, dequantize, cast) and ops without an integer kernel that do not compute activations. A float
    island (kept in float, converted at its edges) is FLOAT_ISLAND: an op with its own calibrated output."""
    if node is None:
        return None
    return node_spec(node, act_dtype, keep)


def _is_activation(value: Value, act_dtype: str = "i8", keep: frozenset = frozenset()) -> bool:
    if not value.type.is_float:
        return False
    return value.producer is None or _spec_of(value.producer, act_dtype, keep) is not None


# ----------------------------------------------------------------------------------------------------
# parameter propagation
# ----------------------------------------------------------------------------------------------------
@dataclass
class QuantState:
    """One activation's parameters. `requant_in`: parameters its producer must emit instead (a requantize to
    `params` then feeds every user); `requant_out`: (parameters, users) that need a requantized copy."""

    params: Optional[QParams] = None
    immutable: bool = False
    requant_in: list[QParams] = field(default_factory=list)
    requant_out: list[tuple[QParams, list[tuple[Node, int]]]] = field(default_factory=list)

    def requantize_for(self, params: QParams, user: Node, index: int) -> None:
        """Operand `index` of `user` needs a copy with `params` (one copy per parameter set)."""
        for existing, users in self.requant_out:
            if existing == params:
                users.append((user, index))
                return
        self.requant_out.append((params, [(user, index)]))


class _Propagation(ABC):
    """Gives every activation of the graph (graph inputs and results of quantizable ops) a QuantState: the
    calibrated ones start immutable, `run` fills the others and records the requantizations needed."""

    def __init__(self, graph: Graph, ranges: dict[int, QParams], act_dtype: str, policy: QuantPolicy,
                 keep: frozenset = frozenset()) -> None:
        self.graph = graph
        self.act_dtype = act_dtype
        self.keep = keep
        self.policy = policy
        self.backwards = 0  # activations that took their parameters from a user (pushed back)
        self.values: dict[int, Value] = {}
        self.states: dict[int, QuantState] = {}
        for value in graph.values():
            if _is_activation(value, act_dtype, keep):
                calibrated = ranges.get(id(value))
                self.values[id(value)] = value
                self.states[id(value)] = QuantState(calibrated, immutable=calibrated is not None)

    def fixed_params(self, spec: OpQuantSpec) -> QParams:
        lo, hi = spec.fixed_range(self.act_dtype)
        return qmath.activation_qparams(lo, hi, self.act_dtype, self.policy.flt_min_floor)

    def result(self) -> dict[int, tuple[Value, QuantState]]:
        return {key: (self.values[key], state) for key, state in self.states.items()}

    @abstractmethod
    def run(self) -> dict[int, tuple[Value, QuantState]]:
        """value id -> (value, its state) for every activation."""


def _hidden_reshapes(order: list[Node]) -> dict[int, Node]:
    """fully_connected ops on a rank > 2 input -> the first such op on the same operand. Keras' tensordot
    RESHAPEs of one tensor (and their SHAPE/GATHER/PACK shape computations) are identical ops, which the
    converter's CSE merges into the first one: one RESHAPE, visited by the driver at that op's place, decides
    for all of them whether they run in int8 (random seed 1088: the Dense on a graph input after a concat of it)."""
    first: dict[int, Node] = {}
    reshape_of: dict[int, Node] = {}
    for node in order:
        if batched_fc_reason(node) is not None:
            reshape_of[id(node)] = first.setdefault(id(node.operands[0]), node)
    return reshape_of


class ConverterPropagation(_Propagation):
    """The MLIR quantizer's QuantizationDriver (tfl_quantization_driver.cc), restricted to activations.

    A work list of all ops in program order is processed from the back. A SAME op picks one parameter set
    (GetQuantParamsForSameScaleConstraint: a sole immutable operand, else an immutable result, else the first
    immutable state, else the sole/first propagated one) and gives it to every activation operand and its
    result; a fixed-range op gives its result the kernel's parameters. A state that is empty takes the
    parameters (and the neighbour on the other side is queued); one that already has others keeps them and
    records a requantization instead.
    """

    def run(self) -> dict[int, tuple[Value, QuantState]]:
        order = [n for n in self.graph.nodes if _spec_of(n, self.act_dtype, self.keep) is not None]
        if self.policy.op_order == "tf-import":  # the converter's op order (TensorFlow's graph import)
            rank = converter_op_order(self.graph)
            order.sort(key=lambda n: rank.get(id(n), 0))
        self.position = {id(n): i for i, n in enumerate(order)}
        self.reshape_of = _hidden_reshapes(order)
        self.work = [n for n in order if self.reshape_of.get(id(n), n) is n]
        done: set[int] = set()
        self.done = done
        # The driver drops a SAME op it meets before anything around it is known and revisits it only when a
        # neighbour is set from its side: a value set backwards (SetOperandParams, by a concat/maximum/minimum
        # user) requeues its producer only (AddOperandToList), never its other users, and a graph input has no
        # producer. So a SAME user dropped earlier stays without parameters and the converter leaves it in float
        # (`skipped` below, float_spread.py), a graph output too (its model output is then float32).
        self._drain(done)
        return self.result()

    def skipped(self) -> set[int]:
        """Ids of the nodes the driver dropped and never revisited: SAME ops left without parameters, and
        fully_connected ops on a rank > 2 input whose hidden RESHAPE (Keras' tensordot, a SAME op the converter
        visits at the FULLY_CONNECTED's place) met an operand without parameters. They run in float."""
        ids: set[int] = set()
        dropped: set[int] = set()  # results of the dropped SAME ops: float values, known in that sense
        for node in self.graph.nodes:
            if id(node) not in self.position:
                continue
            known = any(self.states[id(v)].params is not None or id(v) in dropped
                        for v in node.operands if id(v) in self.states)  # else the range is just missing
            result = self.states.get(id(node.result))
            if (_spec_of(node, self.act_dtype, self.keep).output == SAME and result is not None
                    and result.params is None and known):
                ids.add(id(node))
                dropped.add(id(node.result))
            elif batched_fc_reason(node) is not None and id(self.reshape_of[id(node)]) not in self.done and known:
                ids.add(id(node))
        return ids

    def _hidden_reshape_waits(self, node: Node) -> bool:
        """A fully_connected on a rank > 2 input stands for the tensordot's RESHAPE before it: dropped (queued
        again when its operand's producer sets it) while that operand has no parameters."""
        if batched_fc_reason(node) is None:
            return False
        state = self.states.get(id(node.operands[0]))
        return state is not None and state.params is None

    def _drain(self, done: set[int]) -> None:
        while self.work:
            node = self.work.pop()
            if id(node) in done:
                continue
            done.add(id(node))
            spec = _spec_of(node, self.act_dtype, self.keep)
            if self._hidden_reshape_waits(node):
                done.discard(id(node))
                continue
            if spec.output == SAME:
                params = self._same_scale_params(node, spec)
                if params is None:  # nothing known around it yet: it is queued again when something is
                    done.discard(id(node))
                    continue
                for index, operand in enumerate(node.operands):
                    if id(operand) in self.states:
                        self._set_operand(node, index, params)
                self._set_result(node, params)
            elif spec.output == FIXED:
                self._set_result(node, self.fixed_params(spec))

    def _same_scale_params(self, node: Node, spec: OpQuantSpec) -> Optional[QParams]:
        operand_count = len(node.operands) + spec.param_operands  # the TFLite op's operands, as the driver counts
        operands = [self.states[id(v)] for v in node.operands if id(v) in self.states]
        immutable = [s for s in operands if s.immutable]
        propagated = [s for s in operands if not s.immutable and s.params is not None]
        result = self.states[id(node.result)]
        if operand_count == 1 and len(immutable) == 1:
            return immutable[0].params
        if result.immutable:
            return result.params
        if immutable:
            return immutable[0].params
        if operand_count == 1 and len(propagated) == 1:
            return propagated[0].params
        if result.params is not None:
            return result.params
        return propagated[0].params if propagated else None

    def _set_operand(self, node: Node, index: int, params: QParams) -> None:
        value = node.operands[index]
        state = self.states[id(value)]
        if state.params == params:
            return
        if state.params is not None:
            state.requantize_for(params, node, index)
            return
        state.params = params
        self.backwards += 1
        if value.producer is not None:
            self.work.append(value.producer)

    def _set_result(self, node: Node, params: QParams) -> None:
        state = self.states[id(node.result)]
        if state.params == params:
            return
        if state.params is not None:
            state.requant_in.append(params)
            return
        state.params = params
        # MLIR lists the most recent use first, so the earliest user ends on top of the work list.
        users = [u for u in node.result.users if id(u) in self.position]
        self.work.extend(sorted(users, key=lambda u: -self.position[id(u)]))


class ForwardPropagation(_Propagation):
    """Parameters only flow forward: textbook quantization (the plain policy), and what the converter's older
    quantizer does for 16x8 (tools/optimize/quantize_model.cc).

    A SAME op with one activation operand takes its parameters; concat/maximum/minimum keep their calibrated
    output and every operand with other parameters is requantized for them (ApplyConstraints).
    """

    def run(self) -> dict[int, tuple[Value, QuantState]]:
        for node in self.graph.nodes:
            spec = _spec_of(node, self.act_dtype, self.keep)
            if spec is None:
                continue
            result = self.states[id(node.result)]
            if spec.output == FIXED:
                result.params = self.fixed_params(spec)
            elif spec.output == SAME and result.params is None:
                source = next((v for v in node.operands if id(v) in self.states), None)
                if source is not None:
                    result.params = self.states[id(source)].params
            elif spec.output == SAME:
                self._requantize_operands(node, result.params)
        return self.result()

    def _requantize_operands(self, node: Node, params: QParams) -> None:
        for index, operand in enumerate(node.operands):
            state = self.states.get(id(operand))
            if state is not None and state.params is not None and state.params != params:
                state.requantize_for(params, node, index)


LegacyPropagation = ForwardPropagation  # its name before policies named the rule
# QuantPolicy.propagation(activations) -> the rule.
PROPAGATIONS: dict[str, type[_Propagation]] = {"mlir-driver": ConverterPropagation, "forward": ForwardPropagation}


# ----------------------------------------------------------------------------------------------------
# applying the parameters
# ----------------------------------------------------------------------------------------------------
States = dict[int, tuple[Value, QuantState]]  # value id -> (value, its state)


def _insert_requantizations(graph: Graph, states: States, unquantized: set[int] = frozenset(),
                            floats: Optional[FloatOps] = None) -> tuple[dict[int, QParams], int, set[int]]:
    """value id -> parameters for every activation, inserting the requantizing `quantize` nodes; the number
    inserted; the ids of the copies requantized after a producer that emits other parameters (the driver's
    requantize ON_INPUT: its own QUANTIZE after the op is the volatile one, the requantize the kept one). The
    `unquantized` values stay float: no parameters, no requantization (nothing quantizes them); `floats`: the ops
    that run in float."""
    params: dict[int, QParams] = {}
    volatile: set[int] = set()
    inserted = 0
    for value, state in list(states.values()):
        if state.params is None or id(value) in unquantized:
            continue
        if state.requant_in and state.requant_out:
            # The driver's RequantizeOpResult returns when a value's requantizations mix positions (ON_INPUT for
            # its producer, ON_OUTPUT for some users): no requantize at all. The producer (a fixed-range
            # LOGISTIC/TANH) writes the value with the parameters its SAME user gave it first (random seed 3118).
            # That is a valid model only if the users that wanted a copy run in float (they dequantize it);
            # an integer one breaks its same-scale constraint and the converter's quantizer fails.
            if not all(floats is not None and floats.is_float(user) for _, users in state.requant_out
                       for user, _ in users):
                raise QCompilerError(f"{_describe_tensor(value)} would need its producer requantized and another "
                                     "copy for some integer users; the converter fails here too. Insert a layer "
                                     "between them (e.g. an Activation('linear')) or keep the ops apart")
            params[id(value)] = state.params
            continue
        if state.requant_in:
            params[id(value)] = state.requant_in[0]
            users = [(u.node, u.index) for u in value.uses]
            requant = _requantize(graph, value, users, outputs_too=True)
            params[id(requant)] = state.params
            volatile.add(id(requant))
            inserted += 1
            continue
        params[id(value)] = state.params
        for target, users in state.requant_out:
            params[id(_requantize(graph, value, users))] = target
            inserted += 1
    return params, inserted, volatile


def _requantize(graph: Graph, value: Value, users: list[tuple[Node, int]], outputs_too: bool = False) -> Value:
    anchor = {"after": value.producer} if value.producer is not None else {"before": graph.nodes[0]}
    layer = value.layer or (users[0][0].layer if users else None)
    requant = graph.add_node("quantize", [value], {}, result_types=[TensorType(value.type.shape, "f32")],
                             names=[f"{value.name}.requant"], layer=layer, **anchor).result
    for node, index in users:
        node.set_operand(index, requant)
    if outputs_too:
        graph.outputs = [requant if v is value else v for v in graph.outputs]
    return requant


def _unread_inputs(graph: Graph) -> set[int]:
    """Ids of the float graph inputs that no op reads (only graph outputs are them): the converter never
    quantizes them, and they stay float32 in and out (QuantPolicy.unread_inputs_float; random seed 1201)."""
    return {id(v) for v in graph.inputs if v.type.is_float and not v.uses}


def _check_all_quantized(states: States, allowed: set[int] = frozenset()) -> None:
    """Every activation has parameters, except the `allowed` ones (which stay float)."""
    missing = [value for value, state in states.values() if state.params is None and id(value) not in allowed]
    if missing:
        listing = ", ".join(_describe_tensor(v) for v in missing)
        raise MissingRangeError(
            f"{len(missing)} tensor(s) got no quantization parameters: {listing}. Neither a calibrated "
            "fake_quant nor an op sharing parameters with them gives any; run insert-fake-quant and calibrate "
            "on the float graph (or give --default-ranges MIN,MAX)")


def _describe_tensor(value: Value) -> str:
    layer = f" (Keras layer '{value.layer}')" if value.layer else " (model input)" if value.producer is None else ""
    return f"%{value.name}{layer}"


def _activation_dtype(fake_quants: list[Node]) -> str:
    dtypes = {n.attrs["dtype"] for n in fake_quants if not n.attrs["weights"]}
    if len(dtypes) > 1:
        raise QCompilerError(f"mixed activation types {sorted(dtypes)} are not supported in one graph")
    return dtypes.pop() if dtypes else "i8"


def _quantized_const(graph: Graph, array: np.ndarray, qp: QParams, like: Value, before: Node) -> Value:
    new = graph.const(array, name=f"{like.name}.int", layer=like.layer, before=before)
    new.type = new.type.with_quant(qp)
    return new


class _ConstantLowering:
    """Quantizes the constant operands of each node: weights and bias of conv/depthwise/FC, other constants.
    `bias_adjusted` counts the weight channels whose scale the policy's bias adjustment widened."""

    def __init__(self, graph: Graph, params: dict[int, QParams], weight_axes: dict, act_dtype: str,
                 policy: QuantPolicy, keep: frozenset = frozenset()) -> None:
        self.graph, self.params, self.weight_axes, self.act_dtype = graph, params, weight_axes, act_dtype
        self.keep = keep
        self.adjust = policy.bias_adjustment
        self.bias_adjusted = 0
        self.trained: dict[tuple[int, int], tuple[int, bool]] = {}  # weights with a trained grid: (bits, narrow)
        self.int4 = True
        self.floats = FloatOps()  # the ops that run in float

    def lower(self, node: Node) -> int:
        spec = _spec_of(node, self.act_dtype, self.keep)
        if spec is None or spec is FLOAT_ISLAND or self.floats.is_float(node):  # float ops keep float constants
            return 0
        lowered = 0
        if spec.weight_operand is not None and spec.weight_operand < len(node.operands):
            self._weights_and_bias(node, spec)
            lowered += 1
        for index, operand in enumerate(node.operands):
            if (index in (spec.weight_operand, spec.bias_operand) or not operand.is_constant
                    or not operand.type.is_float):
                continue
            data = np.asarray(operand.data, np.float32)
            if spec.output == SAME:  # duplicated per use, with the op's parameters
                qp, dtype = self.params[id(node.result)], self.act_dtype
            elif self.act_dtype == "i16":  # 16x8: int16 kernels take int16 operands, symmetric as activations
                qp, dtype = qmath.activation_qparams(float(data.min()), float(data.max()), "i16"), "i16"
            else:
                qp, dtype = qmath.weight_qparams(data, None, narrow_range=False), "i8"
            node.set_operand(index, _quantized_const(self.graph, qmath.quantize_constant(data, qp, dtype), qp,
                                                     operand, node))
            lowered += 1
        return lowered

    def _weights_and_bias(self, node: Node, spec: OpQuantSpec) -> None:
        graph, params = self.graph, self.params
        weights = node.operands[spec.weight_operand]
        key = (id(node), spec.weight_operand)
        if key not in self.weight_axes:
            raise QCompilerError(f"{node.describe()}: weights %{weights.name} were not marked by insert-fake-quant")
        if not weights.is_constant:
            raise QCompilerError(f"{node.describe()}: weights %{weights.name} are not a constant")
        x = node.operands[0]
        if id(x) not in params:
            raise MissingRangeError(f"{node.describe()}: its input {_describe_tensor(x)} has no quantization")
        in_scale = params[id(x)].scale[0]
        w = np.asarray(weights.data, np.float32)
        axis = self.weight_axes[key]
        bias = None
        if spec.bias_operand is not None and spec.bias_operand < len(node.operands):
            bias = node.operands[spec.bias_operand]
            if not bias.is_constant:
                raise QCompilerError(f"{node.describe()}: bias %{bias.name} is not a constant")
        bias_data = None if bias is None else np.asarray(bias.data, np.float32)
        grid = self.trained.get(key)
        if grid is not None:
            self._trained_weights(node, spec, w, axis, grid, bias, bias_data, in_scale)
            return
        if self.act_dtype == "i16":
            channel_axis = axis if axis is not None else 0
            wq, w_int = qmath.weight_qparams_16x8(w, channel_axis, bias_data, in_scale, adjust=self.adjust)
            if self.adjust and bias_data is not None:
                plain, _ = qmath.weight_qparams_16x8(w, channel_axis, None, None)
                self.bias_adjusted += _changed(wq.scale, plain.scale)
            bias_dtype = "i64"
        else:
            wq = qmath.weight_qparams(w, axis)
            bias_dtype = "i32"
        if bias_data is not None:
            adjusted = qmath.bias_qparams(bias_data, in_scale, wq, dtype=bias_dtype, adjust=self.adjust)
            self.bias_adjusted += _changed(adjusted.weight.scale, wq.scale)
            wq = adjusted.weight
            b_int = qmath.quantize_bias(bias_data, adjusted.bias, dtype=bias_dtype)
            node.set_operand(spec.bias_operand, _quantized_const(graph, b_int, adjusted.bias, bias, node))
        if self.act_dtype != "i16":
            w_int = qmath.quantize_weights(w, wq)
        node.set_operand(spec.weight_operand, _quantized_const(graph, w_int, wq, weights, node))


    def _trained_weights(self, node: Node, spec: OpQuantSpec, w: np.ndarray, axis: Optional[int],
                         grid: tuple[int, bool], bias: Optional[Value], bias_data: Optional[np.ndarray],
                         in_scale: float) -> None:
        """QAT weights: the grid the training used (symmetric, from the weights' own range), INT4 storage for
        <= 4 bits where the runtime accepts it; the bias at input scale x weight scale, never adjusted."""
        if self.act_dtype != "i8":
            raise QCompilerError(f"{node.describe()}: trained (QAT) weights lower with int8 activations only")
        bits, narrow = grid
        lo, hi = qmath.symmetric_weight_range(w, axis)
        wq = qmath.fake_quant_qparams(lo, hi, bits, narrow, "i8", axis)
        w_int = qmath.fake_quant_storage(w, lo, hi, bits, narrow, "i8", axis)
        if bias_data is not None:
            adjusted = qmath.bias_qparams(bias_data, in_scale, wq, dtype="i32", adjust=False)
            b_int = qmath.quantize_bias(bias_data, adjusted.bias, dtype="i32")
            node.set_operand(spec.bias_operand, _quantized_const(self.graph, b_int, adjusted.bias, bias, node))
        weights = node.operands[spec.weight_operand]
        w_const = _quantized_const(self.graph, w_int, wq, weights, node)
        if bits <= 4 and self.int4 and node.op in INT4_WEIGHT_OPS:
            w_const.type = TensorType(w_const.type.shape, "i4", wq)
        node.set_operand(spec.weight_operand, w_const)


def _changed(scales: tuple[float, ...], before: tuple[float, ...]) -> int:
    return int(np.count_nonzero(np.asarray(scales) != np.asarray(before)))


def _retype_activations(graph: Graph, params: dict[int, QParams], act_dtype: str) -> None:
    for value in graph.values():
        qp = params.get(id(value))
        if qp is not None and value.type.is_float:
            value.type = TensorType(value.type.shape, act_dtype, qp)


class FloatOpsWarning(UserWarning):
    """Some ops stay float in an integer model (no integer kernel in TFLite for them)."""


def _isolate_float_islands(graph: Graph, act_dtype: str, floats: FloatOps, unquantized: dict[int, QParams],
                           volatile: set[int] = frozenset()) -> list[Node]:
    """Keep the float ops in float: each one's integer operands are dequantized before it and its result is
    computed in float and quantized after it for its integer users and the graph outputs (TFLiteConverter's
    DEQUANTIZE/QUANTIZE around ops without an integer kernel). Float users take the float result directly. An
    `unquantized` result (id -> the parameters propagation gave it) has integer users only behind the
    converter's hidden RESHAPE, which quantizes with those parameters. A float user of a `volatile` requantize
    (after a producer that emits other parameters) dequantizes the producer's own output instead: in the
    converter that requantize is its volatile QUANTIZE, which post-quantize's RemoveVolatileOps skips for a
    DEQUANTIZE. A requantize made for some users (the driver's ON_OUTPUT) is kept, and dequantized. Warns with
    the list of ops that stayed float for want of an integer kernel."""
    islands = [n for n in graph.nodes if floats.is_float(n)]
    for node in islands:
        result = node.result
        if id(result) in unquantized:
            int_type = TensorType(result.type.shape, act_dtype, unquantized[id(result)])
        elif result.type.is_float or result.type.quant is None:  # no integer parameters (e.g. a bool result)
            continue
        else:
            int_type, result.type = result.type, TensorType(result.type.shape, "f32")
        users = [(u.node, u.index) for u in result.uses if not floats.is_float(u.node)]
        if not users and not graph.is_output(result):
            continue
        requant = graph.add_node("quantize", [result], {}, result_types=[int_type], names=[f"{result.name}.quant"],
                                 layer=result.layer, after=node).result
        for user, index in users:
            user.set_operand(index, requant)
        graph.outputs = [requant if v is result else v for v in graph.outputs]
    dequantized: dict[int, Value] = {}
    for node in islands:
        for index, operand in enumerate(node.operands):
            if operand.type.is_float or operand.type.quant is None:
                continue
            if id(operand) in volatile and not _behind_tensordot_reshape(operand.producer.operands[0]):
                operand = _skip_requantize(graph, node, index)
            if id(operand) not in dequantized:
                dequantized[id(operand)] = graph.op("dequantize", operand, name=f"{operand.name}.float",
                                                    layer=operand.layer, before=node)
            node.set_operand(index, dequantized[id(operand)])
    no_kernel = [n for n in islands if floats.reasons[id(n)] == "no-integer-kernel"]
    if no_kernel:  # the layers the user kept float, and what the converter keeps float, are not warned about
        listing = ", ".join(f"{n.op} at %{n.result.name}" + (f" (Keras layer '{n.layer}')" if n.layer else "")
                            for n in no_kernel)
        warnings.warn(f"{len(no_kernel)} op(s) stay float in the {act_dtype} model, with DEQUANTIZE/QUANTIZE "
                      f"around them, because TFLite has no {act_dtype} kernel for them: {listing}",
                      FloatOpsWarning, stacklevel=3)
    return islands


def _behind_tensordot_reshape(value: Value) -> bool:
    """In the converter's model a RESHAPE follows `value` before its users: Keras' tensordot ends a fully_connected
    on a rank > 2 input with one, and TFLite's optimize pass moves a one-use chain of elementwise ops (a sigmoid)
    above it (ReorderElementwiseAndMoveOperations). A requantize of `value` then feeds that integer RESHAPE, which
    a float user reads through a DEQUANTIZE: the requantize stays (random seed 1280: the driver's requantize of a
    LOGISTIC for a MAXIMUM that runs in float)."""
    return dynamic_in_converter_model(value)


def _skip_requantize(graph: Graph, node: Node, index: int) -> Value:
    """Operand `index` of float op `node` is a volatile requantize: dequantize its source instead. The requantize
    goes when nothing else uses it."""
    operand = node.operands[index]
    requant = operand.producer
    source = requant.operands[0]
    node.set_operand(index, source)
    if not operand.uses and not graph.is_output(operand):
        graph.remove(requant)
    return source


def _fold_trivial_requantizations(graph: Graph) -> int:
    """FoldTrivalRequantizeOp (post_quantize.cc): an op that computes its own output scale (OWN) and whose
    result only feeds a requantize emits the requantized parameters directly."""
    folded = 0
    for node in list(graph.find("quantize")):
        source = node.operands[0]
        spec = _spec_of(source.producer)
        if (spec is None or spec.output != OWN or source.type.is_float or len(source.uses) != 1
                or graph.is_output(source)):
            continue
        source.type = node.result.type
        graph.replace_node(node, [source])
        folded += 1
    return folded


def _remove_dead_constants(graph: Graph) -> None:
    for node in list(graph.find("const")):
        if not node.result.uses and not graph.is_output(node.result):
            graph.remove(node)


def _quantize_input(graph: Graph, value: Value, internal: TensorType, input_type: Optional[TensorType] = None) -> None:
    """Make graph input `value` take `input_type` (float when None) and quantize it to `internal` inside."""
    users = list(value.uses)
    first = graph.nodes[0] if graph.nodes else None
    value.type = input_type if input_type is not None else TensorType(value.type.shape, "f32")
    q = graph.add_node("quantize", [value], {}, result_types=[internal], names=[f"{value.name}.quant"],
                       before=first).result
    for use in users:
        use.node.set_operand(use.index, q)


def _dequantize(graph: Graph, value: Value) -> Value:
    return graph.op("dequantize", value, name=f"{value.name}.float", layer=value.layer)


def _to_uint8(graph: Graph, value: Value) -> Value:
    q = value.type.quant
    out_type = TensorType(value.type.shape, "u8", QParams.per_tensor(q.scale[0], q.zero_point[0] + 128))
    return graph.add_node("quantize", [value], {}, result_types=[out_type], names=[f"{value.name}.u8"],
                          layer=value.layer).result
