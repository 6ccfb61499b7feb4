"""Per-layer quantization error: which tensors lose the most when the model goes to integers.

The calibrated fake-quant graph simulates the integer model in float: every quantized tensor is rounded to its
int8 (or int16) grid. Running evaluation data through it with and without the rounding gives, per tensor,
  - the accumulated error: the quantized model's value vs the float model's (what the output will feel),
  - the local error: this tensor's own rounding of the float value (what this tensor's range costs).
A layer whose local error is small but whose accumulated error jumps is where precision is lost to an earlier
layer; a large local error points at this tensor's range (try another observer).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

from qcompiler.ir import interpreter
from qcompiler.ir.graph import Graph, Node
from qcompiler.ir.ops import fake_quant_array
from qcompiler.passes.calibrate import check_calibration_data
from qcompiler.quant import math as qmath

REPORT_FORMAT = "qcompiler-layer-report/1"


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

    def worst(self, count: int = 5) -> list[TensorError]:
        return sorted(self.tensors, key=lambda t: t.local_snr_db)[:count]

    def to_json(self) -> str:
        body: dict[str, Any] = {"format": REPORT_FORMAT, "observer": self.observer, "samples": self.samples,
                                "output_snr_db": _finite(self.output_snr_db),
                                "tensors": [{k: _finite(v) for k, v in asdict(t).items()} for t in self.tensors]}
        return json.dumps(body, indent=2) + "\n"

    def table(self) -> str:
        lines = [f"{'tensor':<36}{'layer':<24}{'op':<18}{'scale':>12}{'SNR dB':>9}{'local':>9}{'cosine':>9}"
                 f"{'clipped':>9}"]
        for t in self.tensors:
            lines.append(f"{t.tensor[:35]:<36}{(t.layer or '-')[:23]:<24}{t.op[:17]:<18}{t.scale:>12.4g}"
                         f"{_db(t.snr_db):>9}{_db(t.local_snr_db):>9}{t.cosine:>9.5f}{t.clipped_fraction:>8.2%}")
        lines.append(f"output SNR {_db(self.output_snr_db)} dB over {self.samples} samples ({self.observer} ranges); "
                     "worst local SNR: " + ", ".join(f"%{t.tensor} {_db(t.local_snr_db)} dB" for t in self.worst(3)))
        return "\n".join(lines) + "\n"


def layer_report(graph: Graph, data: Any, observer: str = "minmax") -> LayerReport:
    """`graph` is a calibrated fake-quant graph (insert-fake-quant + calibration); `data` the evaluation inputs."""
    arrays = check_calibration_data(graph, data)
    points = [n for n in graph.find("fake_quant") if not n.attrs["weights"] and not n.operands[0].is_constant]
    uncalibrated = [n.operands[0].name for n in points if n.attrs["min"] is None]
    if uncalibrated:
        raise ValueError(f"tensors {uncalibrated} have no range yet: calibrate the graph before reporting")
    reference = _values_at(graph, arrays, points, fake_quant=False)
    quantized = _values_at(graph, arrays, points, fake_quant=True)
    rows = tuple(_tensor_error(node, reference[node.operands[0].name], quantized[node.operands[0].name])
                 for node in points)
    float_out = interpreter.run(graph, arrays, fake_quant=False)
    quant_out = interpreter.run(graph, arrays, fake_quant=True)
    output_snr = min(_snr(f, q) for f, q in zip(float_out, quant_out))
    return LayerReport(observer, len(arrays[0]), rows, output_snr)


def _values_at(graph: Graph, arrays: Sequence[np.ndarray], points: list[Node], fake_quant: bool) -> dict:
    """The value of each quantized tensor: the float input of its fake_quant, or (fake_quant=True) what the
    quantized model carries, i.e. the fake_quant's output."""
    by_value = {id(n.result if fake_quant else n.operands[0]): n.operands[0].name for n in points}
    seen: dict[str, np.ndarray] = {}

    def observe(value, array: np.ndarray) -> None:
        name = by_value.get(id(value))
        if name is not None:
            seen[name] = np.asarray(array, np.float32)

    interpreter.run(graph, list(arrays), observe=observe, fake_quant=fake_quant)
    return seen


def _tensor_error(node: Node, reference: np.ndarray, quantized: np.ndarray) -> TensorError:
    value = node.operands[0]
    attrs = node.attrs
    params = qmath.activation_qparams(attrs["min"], attrs["max"], attrs["dtype"])
    qmin, qmax = qmath.qrange(attrs["dtype"])
    scale, zero_point = params.scale[0], params.zero_point[0]
    low, high = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    local = fake_quant_array(reference, attrs)
    error = quantized.astype(np.float64) - reference
    return TensorError(
        tensor=value.name, layer=value.layer, op=value.producer.op if value.producer else "input",
        dtype=attrs["dtype"], scale=scale, zero_point=zero_point, range_min=float(attrs["min"]),
        range_max=float(attrs["max"]), snr_db=_snr(reference, quantized), cosine=_cosine(reference, quantized),
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
