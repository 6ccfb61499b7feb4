"""`qcompiler compare A B`: run two models on the same inputs and say where they differ.

A and B are each a Keras model (.keras / .h5), a TFLite flatbuffer (.tflite) or an IR graph (.qir). Keras models
run as their imported IR graph in qcompiler's interpreter (intermediate tensors named after IR values);
.qir files run in the interpreter (integer graphs with the bit-exact integer kernels); .tflite files run in
ai-edge-litert's reference kernels (BUILTIN_REF) with every intermediate tensor preserved. qcompiler's writer
names each tensor after its IR value, so a .qir and the .tflite written from it align tensor by tensor.

Outputs align by position, intermediate tensors (constants included) by name where both models have one.
Values compare in real numbers (integer tensors dequantized with their own parameters); integer tensors with
the same dtype and parameters also report the share of identical codes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from qcompiler.errors import QCompilerError
from qcompiler.ir.types import QParams
from qcompiler.quant import math as qm


class CompareError(QCompilerError):
    """A model or input file compare cannot use."""


@dataclass
class Tensor:
    """One named tensor of a run: raw values and, for integer tensors, their quantization."""

    name: str
    values: np.ndarray
    quant: Optional[QParams] = None

    def real(self) -> np.ndarray:
        if self.quant is None or not np.issubdtype(self.values.dtype, np.integer):
            return self.values.astype(np.float64)
        return qm.dequantize(self.values, self.quant).astype(np.float64)


@dataclass
class Run:
    """The result of running one model: outputs in order, every named tensor in topological order."""

    outputs: list[Tensor]
    tensors: dict[str, Tensor]  # insertion order = topological order


@dataclass
class TensorDiff:
    name: str
    kind: str  # "output" or "tensor"
    shape: tuple[int, ...]
    max_abs: float
    mse: float
    sqnr_db: float
    identical: Optional[float]  # share of identical integer codes (same dtype and parameters), else None

    def exceeds(self, tolerance: float) -> bool:
        return self.max_abs > tolerance

    def row(self) -> str:
        identical = "-" if self.identical is None else f"{100 * self.identical:.2f}%"
        sqnr = "inf" if math.isinf(self.sqnr_db) else f"{self.sqnr_db:.2f}"
        return f"{self.kind:7s} {self.name[:48]:48s} {self.max_abs:12.6g} {identical:>9s} {self.mse:12.6g} {sqnr:>9s}"


@dataclass
class Comparison:
    outputs: list[TensorDiff]
    tensors: list[TensorDiff]  # intermediates both models name, in A's topological order
    tolerance: float
    skipped: list[str] = field(default_factory=list)  # names found in both but of different shapes

    @property
    def first_divergence(self) -> Optional[TensorDiff]:
        for diff in self.tensors + self.outputs:
            if diff.exceeds(self.tolerance):
                return diff
        return None

    @property
    def within_tolerance(self) -> bool:
        return not any(d.exceeds(self.tolerance) for d in self.outputs)

    def table(self) -> str:
        head = f"{'':7s} {'tensor':48s} {'max |a-b|':>12s} {'identical':>9s} {'MSE':>12s} {'SQNR dB':>9s}"
        lines = [head] + [d.row() for d in self.tensors] + [d.row() for d in self.outputs]
        first = self.first_divergence
        lines.append(f"first divergence: {first.name}" if first else
                     f"no divergence (tolerance {self.tolerance:g}) in {len(self.tensors)} shared tensors and "
                     f"{len(self.outputs)} outputs")
        if self.skipped:
            lines.append(f"skipped (shapes differ): {', '.join(self.skipped)}")
        return "\n".join(lines) + "\n"


def diff(a: Tensor, b: Tensor, kind: str) -> TensorDiff:
    ra, rb = a.real(), b.real()
    err = ra - rb
    signal = float(np.sum(ra * ra))
    noise = float(np.sum(err * err))
    sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    identical = None
    if (np.issubdtype(a.values.dtype, np.integer) and a.values.dtype == b.values.dtype and a.quant == b.quant):
        identical = float(np.mean(a.values == b.values)) if a.values.size else 1.0
    return TensorDiff(a.name, kind, tuple(a.values.shape), float(np.max(np.abs(err))) if err.size else 0.0,
                      float(np.mean(err * err)) if err.size else 0.0, sqnr, identical)


def compare_runs(a: Run, b: Run, tolerance: float = 0.0) -> Comparison:
    if len(a.outputs) != len(b.outputs):
        raise CompareError(f"the models have {len(a.outputs)} and {len(b.outputs)} outputs; compare needs the same")
    outputs = []
    for i, (x, y) in enumerate(zip(a.outputs, b.outputs)):
        if x.values.shape != y.values.shape:
            raise CompareError(f"output {i} ('{x.name}' / '{y.name}') has shapes {x.values.shape} and "
                               f"{y.values.shape}")
        outputs.append(diff(x, y, "output"))
    output_names = {t.name for t in a.outputs}
    tensors, skipped = [], []
    for name, x in a.tensors.items():
        y = b.tensors.get(name)
        if y is None or name in output_names:
            continue
        if x.values.shape != y.values.shape:
            skipped.append(name)
            continue
        tensors.append(diff(x, y, "tensor"))
    return Comparison(outputs, tensors, tolerance, skipped)


# ----------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------
@dataclass
class InputSpec:
    name: str
    shape: tuple[Optional[int], ...]
    dtype: np.dtype
    quant: Optional[QParams]


class Model:
    """A model compare can run: its input signature and a `run(float_inputs)`."""

    inputs: list[InputSpec]

    def run(self, inputs: Sequence[np.ndarray]) -> Run:
        raise NotImplementedError


def _feed(spec: InputSpec, x: np.ndarray) -> np.ndarray:
    """A real-valued input as the model takes it: quantized with the input's parameters when integer."""
    if np.issubdtype(spec.dtype, np.integer):
        if np.issubdtype(x.dtype, np.integer):
            return x.astype(spec.dtype)
        if spec.quant is None:
            raise CompareError(f"input '{spec.name}' is {spec.dtype} without quantization parameters; pass "
                               "--inputs with integer values")
        dtype = {np.dtype(np.int8): "i8", np.dtype(np.uint8): "u8", np.dtype(np.int16): "i16"}[np.dtype(spec.dtype)]
        return qm.quantize(x, spec.quant, dtype)
    return x.astype(spec.dtype)


class GraphModel(Model):
    def __init__(self, graph) -> None:
        self.graph = graph
        self.inputs = [InputSpec(v.name, v.type.shape, v.type.np_dtype, v.type.quant) for v in graph.inputs]

    def run(self, inputs: Sequence[np.ndarray]) -> Run:
        from qcompiler.ir.interpreter import run

        fed = [_feed(s, x) for s, x in zip(self.inputs, inputs)]
        kept = run(self.graph, fed, keep=True)
        tensors: dict[str, Tensor] = {}
        for v in self.graph.inputs:
            tensors[v.name] = Tensor(v.name, kept[v.name], v.type.quant)
        for node in self.graph.nodes:
            for v in node.results:
                tensors[v.name] = Tensor(v.name, kept[v.name], v.type.quant)
        return Run([tensors[v.name] for v in self.graph.outputs], tensors)


class TFLiteModel(Model):
    def __init__(self, content: bytes, path: str) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        try:
            self.interpreter = Interpreter(model_content=content, experimental_preserve_all_tensors=True,
                                           experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        except (ValueError, RuntimeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CompareError(f"'{path}' is not a TFLite model ai-edge-litert can load: {first}") from None
        self.path = path
        self.inputs = [InputSpec(d["name"], tuple(int(x) for x in d["shape_signature"]), np.dtype(d["dtype"]),
                                 _quant_of(d)) for d in self.interpreter.get_input_details()]

    def run(self, inputs: Sequence[np.ndarray]) -> Run:
        interp = self.interpreter
        details = interp.get_input_details()
        for detail, x in zip(details, inputs):
            interp.resize_tensor_input(detail["index"], list(x.shape))
        try:
            interp.allocate_tensors()
            for detail, spec, x in zip(details, self.inputs, inputs):
                interp.set_tensor(detail["index"], _feed(spec, x))
            interp.invoke()
        except (ValueError, RuntimeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CompareError(f"'{self.path}' failed to run: {first}") from None
        by_index = {d["index"]: d for d in interp.get_tensor_details()}
        tensors: dict[str, Tensor] = {}

        def add(index: int) -> None:
            d = by_index.get(index)
            if d is None or d["name"] in tensors:
                return
            try:
                tensors[d["name"]] = Tensor(d["name"], interp.get_tensor(index).copy(), _quant_of(d))
            except ValueError:  # tensors without data (scratch)
                pass

        for d in details:
            add(d["index"])
        for op in interp._get_ops_details():  # execution order
            for index in list(op["inputs"]) + list(op["outputs"]):
                if index >= 0:
                    add(int(index))
        outputs = [Tensor(d["name"], interp.get_tensor(d["index"]).copy(), _quant_of(d))
                   for d in interp.get_output_details()]
        return Run(outputs, tensors)


def _quant_of(detail: dict) -> Optional[QParams]:
    params = detail.get("quantization_parameters") or {}
    scales, zero_points = params.get("scales"), params.get("zero_points")
    if scales is None or len(scales) == 0:
        return None
    if len(scales) == 1:
        return QParams.per_tensor(float(scales[0]), int(zero_points[0]))
    return QParams(tuple(float(s) for s in scales), tuple(int(z) for z in zero_points),
                   int(params.get("quantized_dimension", 0)))


def load_model(path: str) -> Model:
    """A .tflite, .qir or Keras model file; a one-line CompareError for anything else."""
    p = Path(path)
    if not p.is_file():
        raise CompareError(f"'{path}' does not exist or is not a file")
    suffix = p.suffix.lower()
    if suffix == ".tflite":
        content = p.read_bytes()
        if len(content) < 8 or content[4:8] != b"TFL3":
            raise CompareError(f"'{path}' is not a TFLite flatbuffer (no TFL3 identifier)")
        return TFLiteModel(content, path)
    if suffix == ".qir":
        from qcompiler.api import parse_ir

        return GraphModel(parse_ir(p.read_text()))
    if suffix in (".keras", ".h5"):
        from qcompiler.api import import_keras

        return GraphModel(import_keras(str(p)))
    raise CompareError(f"'{path}': compare takes .keras, .h5, .tflite or .qir files, not '{suffix or p.name}'")


# ----------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------
def generated_inputs(model: Model, batch: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Standard-normal float inputs from the input signature (unknown dimensions: `batch`), seeded."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in model.inputs:
        shape = [batch if (d is None or d < 0) else d for d in spec.shape]
        arrays.append(rng.standard_normal(shape).astype(np.float32))
    return arrays


def load_inputs(path: str, model: Model) -> list[np.ndarray]:
    """A .npy (one input) or .npz (inputs by name, else in order)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CompareError(f"cannot read inputs '{path}': {err}") from None
    if isinstance(data, np.ndarray):
        arrays = [data]
    else:
        names = list(data.files)
        wanted = [s.name for s in model.inputs]
        arrays = [data[n] for n in wanted] if set(wanted) <= set(names) else [data[n] for n in names]
    if len(arrays) != len(model.inputs):
        raise CompareError(f"'{path}' holds {len(arrays)} arrays; the model takes {len(model.inputs)} inputs")
    return arrays


def compare_files(path_a: str, path_b: str, inputs: Optional[str] = None, tolerance: float = 0.0,
                  batch: int = 4, seed: int = 0) -> Comparison:
    a, b = load_model(path_a), load_model(path_b)
    if len(a.inputs) != len(b.inputs):
        raise CompareError(f"'{path_a}' takes {len(a.inputs)} inputs and '{path_b}' {len(b.inputs)}")
    arrays = load_inputs(inputs, a) if inputs else generated_inputs(a, batch, seed)
    return compare_runs(a.run(arrays), b.run(arrays), tolerance)
