"""Per-layer quantization error: which tensors lose the most when the model goes to integers.

The calibrated fake-quant graph is lowered (lower-to-int with float I/O, what the writer turns into the .tflite)
and the integer graph runs in the integer interpreter (qcompiler/ir/int_kernels.py: TFLite's reference-kernel
arithmetic, bit-exact with BUILTIN_REF; ops without a bit-exact kernel are simulated in float and listed in
`simulated_ops`). Against the float model on the evaluation data, per quantized tensor (by name: lowering keeps
the value names):
  - the accumulated error: the integer model's value, dequantized, vs the float model's (what the output feels),
  - the local error: this tensor's own quantization of the float value (what this tensor's range costs).
A layer whose local error is small but whose accumulated error jumps is where precision is lost to an earlier
layer; a large local error points at this tensor's range (try another observer). The output SNR is the .tflite's:
tests/test_layer_report.py checks it against the model run in BUILTIN_REF.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

from qcompiler.ir import interpreter
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.passes.calibrate import check_calibration_data
from qcompiler.quant import math as qmath
from qcompiler.quant.policy import DEFAULT_POLICY

REPORT_FORMAT = "qcompiler-layer-report/1"
SIMULATOR = "integer-interpreter"  # what computes the quantized values (report.json's "simulator")


@dataclass(frozen=True)
class TensorError:
    tensor: str
    layer: Optional[str]
    op: str
    dtype: str
    scale: float
    zero_point: int
    range_min: float
    range_max: float
    snr_db: float
    cosine: float
    mse: float
    local_snr_db: float
    clipped_fraction: float


@dataclass(frozen=True)
class LayerReport:
    observer: str
    samples: int
    tensors: tuple[TensorError, ...]
    output_snr_db: float
    simulated_ops: tuple[str, ...] = ()  # integer ops without a bit-exact kernel (simulated in float)

    def worst(self, count: int = 5) -> list[TensorError]:
        return sorted(self.tensors, key=lambda t: t.local_snr_db)[:count]

    def to_json(self) -> str:
        body: dict[str, Any] = {"format": REPORT_FORMAT, "observer": self.observer, "samples": self.samples,
                                "output_snr_db": _finite(self.output_snr_db), "simulator": SIMULATOR,
                                "simulated_ops": list(self.simulated_ops),
                                "tensors": [{k: _finite(v) for k, v in asdict(t).items()} for t in self.tensors]}
        return json.dumps(body, indent=2) + "\n"

    def table(self) -> str:
        lines = [f"{'tensor':<36}{'layer':<24}{'op':<18}{'scale':>12}{'SNR dB':>9}{'local':>9}{'cosine':>9}"
                 f"{'clipped':>9}"]
        for t in self.tensors:
            lines.append(f"{t.tensor[:35]:<36}{(t.layer or '-')[:23]:<24}{t.op[:17]:<18}{t.scale:>12.4g}"
                         f"{_db(t.snr_db):>9}{_db(t.local_snr_db):>9}{t.cosine:>9.5f}{t.clipped_fraction:>8.2%}")
        lines.append(f"output SNR {_db(self.output_snr_db)} dB over {self.samples} samples ({self.observer} ranges, "
                     f"{SIMULATOR}); worst local SNR: "
                     + ", ".join(f"%{t.tensor} {_db(t.local_snr_db)} dB" for t in self.worst(3)))
        if self.simulated_ops:
            lines.append("simulated in float (no bit-exact integer kernel): " + ", ".join(self.simulated_ops))
        return "\n".join(lines) + "\n"


def layer_report(graph: Graph, data: Any, observer: str = "minmax", policy: str = DEFAULT_POLICY) -> LayerReport:
    """`graph` is a calibrated fake-quant graph (insert-fake-quant + calibration); `data` the evaluation inputs.
    `policy` is the one it was calibrated with (lower-to-int takes it too)."""
    arrays = check_calibration_data(graph, data)
    points = [n for n in graph.find("fake_quant") if not n.attrs["weights"] and not n.operands[0].is_constant]
    uncalibrated = [n.operands[0].name for n in points if n.attrs["min"] is None]
    if uncalibrated:
        raise ValueError(f"tensors {uncalibrated} have no range yet: calibrate the graph before reporting")
    reference = _values_at(graph, arrays, points)
    lowered = lower_for_report(graph, policy)
    integer, quant_out = integer_values(lowered, arrays)
    rows = []
    for node in points:
        name = node.operands[0].name
        value = _integer_value(lowered, name)
        if value is not None and value.name in integer:
            rows.append(_tensor_error(node, value, reference[name], integer[value.name]))
    float_out = interpreter.run(graph, arrays, fake_quant=False)
    output_snr = min(_snr(f, q) for f, q in zip(float_out, quant_out))
    return LayerReport(observer, len(arrays[0]), tuple(rows), output_snr, simulated_ops(lowered))


def lower_for_report(graph: Graph, policy: str = DEFAULT_POLICY) -> Graph:
    """The integer graph of a calibrated fake-quant graph, with float I/O (a copy; `graph` is left as it is)."""
    from qcompiler.passes.dce import DeadCodeElimination
    from qcompiler.passes.lower_to_int import LowerToInt
    from qcompiler.passes.manager import run_passes

    return run_passes(graph.clone(), [LowerToInt(io="float", policy=policy), DeadCodeElimination()])


def integer_values(graph: Graph, arrays: Sequence[np.ndarray]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Run a lowered graph in the integer interpreter: every per-tensor-quantized activation, dequantized (float32),
    by value name; and the outputs."""
    seen: dict[str, np.ndarray] = {}

    def observe(value: Value, array: np.ndarray) -> None:
        q = value.type.quant
        if q is not None and not value.type.is_float and not value.is_constant and q.axis is None:
            seen[value.name] = qmath.dequantize(np.asarray(array), q)

    outputs = interpreter.run(graph, list(arrays), observe=observe)
    return seen, [np.asarray(o, np.float32) for o in outputs]


def simulated_ops(lowered: Graph) -> tuple[str, ...]:
    """The integer ops of `lowered` that the interpreter simulates in float (no bit-exact kernel), sorted."""
    return tuple(sorted({n.op for n in interpreter.inexact_nodes(lowered)}))


def _integer_value(lowered: Graph, name: str) -> Optional[Value]:
    """The lowered graph's integer tensor for the fake-quant point `name`: the value itself, or for a float graph
    input the QUANTIZE that reads it."""
    value = next((v for v in lowered.values() if v.name == name), None)
    if value is None:
        return None
    if value.type.is_float:
        return next((u.node.result for u in value.uses if u.node.op == "quantize"), None)
    return value


def _values_at(graph: Graph, arrays: Sequence[np.ndarray], points: list[Node]) -> dict:
    """The float model's value of each quantized tensor: the input of its fake_quant, with fake quantization off."""
    by_value = {id(n.operands[0]): n.operands[0].name for n in points}
    seen: dict[str, np.ndarray] = {}

    def observe(value, array: np.ndarray) -> None:
        name = by_value.get(id(value))
        if name is not None:
            seen[name] = np.asarray(array, np.float32)

    interpreter.run(graph, list(arrays), observe=observe, fake_quant=False)
    return seen


def _tensor_error(node: Node, value: Value, reference: np.ndarray, quantized: np.ndarray) -> TensorError:
    """One row: `quantized` is the integer model's (dequantized) value of `value`, `reference` the float model's.
    Scale, zero point and the local error are those of the integer tensor (the reference QUANTIZE kernel)."""
    source = node.operands[0]
    params, dtype = value.type.quant, value.type.dtype
    qmin, qmax = qmath.qrange(dtype)
    scale, zero_point = float(np.float32(params.scale[0])), int(params.zero_point[0])
    low, high = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    local = qmath.dequantize(qmath.quantize(reference, params, dtype), params)
    error = quantized.astype(np.float64) - reference
    return TensorError(
        tensor=source.name, layer=source.layer, op=source.producer.op if source.producer else "input",
        dtype=dtype, scale=scale, zero_point=zero_point, range_min=float(node.attrs["min"]),
        range_max=float(node.attrs["max"]), snr_db=_snr(reference, quantized), cosine=_cosine(reference, quantized),
        mse=float(np.mean(error ** 2)), local_snr_db=_snr(reference, local),
        clipped_fraction=float(np.mean((reference < low) | (reference > high))))


def _snr(reference: np.ndarray, other: np.ndarray) -> float:
    signal = float(np.sum(np.square(reference, dtype=np.float64)))
    noise = float(np.sum(np.square(other.astype(np.float64) - reference)))
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    norms = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    return float(a64 @ b64 / norms) if norms else 1.0


def _db(value: float) -> str:
    return "inf" if value == math.inf else "-inf" if value == -math.inf else f"{value:.1f}"


def _finite(value: Any) -> Any:
    """JSON has no infinity: an SNR of +inf (no error at all) or -inf (no signal) is written as a string."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value
