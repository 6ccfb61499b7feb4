"""Differential check of one Keras model: qcompiler against TFLiteConverter (int8) and against Keras (float32).

Both tools calibrate on the same samples (the converter one at a time through `representative_dataset`,
qcompiler with its default settings unless an executor is given). The int8 models then run with the
reference kernels (BUILTIN_REF) on the same int8 inputs, quantized with the converter's input parameters.

`check(model, ...)` returns a `Verdict`: the measurements and, when the model misses the bar, the cause, one of
CAUSES. tests/test_random_models.py and benchmarks/fuzz_vs_converter.py both use it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import qcompiler
from qcompiler.demo import converter_float32, converter_int8
from qcompiler.ir.types import QParams
from qcompiler.quant import math as qmath
from tests.test_int8_vs_converter import _io_details, _params, _run_in_keras_order

MIN_IDENTICAL = 0.99
MAX_LSB = 1
SIZE_MARGIN = 1.01  # our .tflite at most 1% larger than the converter's
FLOAT_RTOL = 1e-4  # float32 outputs vs Keras, relative to the output's largest magnitude

# In the order they are tested: the first that applies is the model's cause.
CAUSES = ("import error", "compile error", "converter error", "converter model aborts", "keras error",
          "float32 mismatch", "float32 TFLite overwrite (converter too)", "I/O quant mismatch",
          "<99% identical", ">1 LSB", "size > converter + 1%", "runtime error", "crash")


@dataclass
class Verdict:
    cause: Optional[str] = None  # None: meets the bar
    detail: str = ""
    identical: list[float] = field(default_factory=list)  # per output, fraction of identical int8 values
    max_lsb: list[int] = field(default_factory=list)  # per output
    float_error: float = 0.0  # max |qcompiler float32 - Keras| / max |Keras|
    size_ratio: float = 0.0  # our int8 .tflite size / the converter's
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.cause is None

    def summary(self) -> str:
        identical = ", ".join(f"{v:.2%}" for v in self.identical)
        lsb = ", ".join(str(v) for v in self.max_lsb)
        head = "ok" if self.ok else self.cause
        return (f"{head}: identical [{identical}], max LSB [{lsb}], float error {self.float_error:.2e}, size "
                f"{self.size_ratio:.3f}x {self.detail}")


def run(models: Sequence[bytes], keras_model, arrays: list[np.ndarray],
        preserve_all_tensors: Sequence[bool] = ()) -> tuple[list[list[np.ndarray]], str]:
    """Outputs of each model in the Keras order, all with the same kernels: the reference kernels, or the default
    ones (XNNPACK) for all of them when one model holds an op the reference resolver lacks (ai-edge-litert's
    BUILTIN_REF has no ELU and no TILE version 3, which the converter writes for int8 UpSampling2D).

    XNNPACK refuses an int8 op whose requantization scale is >= 256, which a degenerate calibrated range (a dead
    ReLU: scale 2e-6/255) gives both tools' models alike, and ai-edge-litert 2.x then aborts the process in
    allocate_tensors (a double free). Such models run with TFLite's builtin kernels without XNNPACK instead (not
    always: those can differ from XNNPACK by a few LSB between two equivalent models, measured on layer seed 18).

    `preserve_all_tensors[i]`: run model i without in-place buffer sharing. TFLite's arena planner lets an op
    write in place through a RESHAPE into a buffer that another tensor still needs (it checks only the buffer
    owner's reference count), which corrupts some converter models when run on a batch (seed 2142: the
    converter's LEAKY_RELU after SOFTMAX, SOFTMAX and RESHAPE/SUB reads the SUB's values, 220 LSB off); the
    reference is what the converter's ops compute, so check() runs its model so. qcompiler's writer orders its
    ops so that this never happens (backend/tflite_arena.py safe_operator_order) and runs as users run it.
    """
    preserve = list(preserve_all_tensors) + [False] * (len(models) - len(preserve_all_tensors))
    try:
        return [_run_in_keras_order(m, keras_model, arrays, p) for m, p in zip(models, preserve)], "reference"
    except ValueError as err:
        if "Didn't find op for builtin opcode" not in str(err):
            raise
    from ai_edge_litert.interpreter import OpResolverType
    import tests.tflite_run as tflite_run

    degenerate = any(has_degenerate_scale(m) for m in models)
    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if degenerate else OpResolverType.AUTO
    try:  # run_tflite names the resolver; give it the fallback for these calls
        tflite_run.OpResolverType = type("Resolver", (), {"BUILTIN_REF": resolver})
        kernels = "builtin (no XNNPACK: a degenerate range)" if degenerate else "default"
        return [_run_in_keras_order(m, keras_model, arrays, p) for m, p in zip(models, preserve)], kernels
    finally:
        tflite_run.OpResolverType = OpResolverType


DEGENERATE_SCALE = 1e-7  # a collapsed range [0, 0] gives 2e-6 / 255 = 7.8e-9; real activations are far above


def has_degenerate_scale(model: bytes) -> bool:
    """Whether an integer activation (not a constant) of the .tflite has the scale of a collapsed range."""
    import tflite

    root = tflite.Model.GetRootAsModel(model, 0)
    for g in range(root.SubgraphsLength()):
        graph = root.Subgraphs(g)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            quant = tensor.Quantization()
            if quant is None or quant.ScaleLength() != 1 or root.Buffers(tensor.Buffer()).DataLength():
                continue
            if tensor.Type() in (tflite.TensorType.INT8, tflite.TensorType.INT16) and \
                    0 < quant.Scale(0) < DEGENERATE_SCALE:
                return True
    return False


def _as_list(batch) -> list[np.ndarray]:
    return batch if isinstance(batch, list) else [batch]


def keras_outputs(model, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The Keras model's outputs on `batch`; where TensorFlow's oneDNN kernels reject a valid layer, those of a
    process with oneDNN off."""
    try:
        return _as_list(model.predict(list(batch) if len(batch) > 1 else batch[0], verbose=0))
    except Exception as err:  # noqa: BLE001
        if not type(err).__module__.startswith("tensorflow"):
            raise
        try:
            return _keras_outputs_without_onednn(model, batch)
        except (subprocess.SubprocessError, OSError):
            raise err from None


_RUN_SAVED_MODEL = """
import sys
import numpy as np
import keras
folder = sys.argv[1]
model = keras.models.load_model(folder + "/model.keras", compile=False)
saved = np.load(folder + "/batch.npz")
batch = [saved[f"arr_{i}"] for i in range(len(saved.files))]
outputs = model.predict(batch if len(batch) > 1 else batch[0], verbose=0)
np.savez(folder + "/outputs.npz", *(outputs if isinstance(outputs, (list, tuple)) else [outputs]))
"""


def _keras_outputs_without_onednn(model, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
    """oneDNN cannot run some valid layers ("could not create a primitive descriptor for the reorder primitive" on a
    depthwise conv of a 1-channel input, random seeds 1175 and 2078); Eigen's kernels can. TensorFlow reads the
    switch when it loads, so the saved model runs in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        model.save(Path(folder) / "model.keras")
        np.savez(Path(folder) / "batch.npz", *batch)
        subprocess.run([sys.executable, "-c", _RUN_SAVED_MODEL, folder], check=True, capture_output=True,
                       timeout=900, env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"})
        saved = np.load(Path(folder) / "outputs.npz")
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def float_error(model, ours: bytes, batch: Sequence[np.ndarray]) -> float:
    """Largest relative difference between qcompiler's float32 model and Keras over all outputs."""
    expected = keras_outputs(model, batch)
    got = run([ours], model, list(batch))[0][0]
    worst = 0.0
    for g, e in zip(got, expected):
        scale = max(float(np.max(np.abs(e))), 1e-6)
        worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - e))) / scale)
    return worst


def check(model, calibration: Sequence[np.ndarray], test: Sequence[np.ndarray], executor: Optional[str] = None,
          check_float: bool = True) -> Verdict:
    """Compile `model` both ways and compare; never raises for a model-level failure (it becomes the cause)."""
    verdict = Verdict()
    by_name = {t.name: a for t, a in zip(model.inputs, calibration)}
    try:
        graph = qcompiler.import_keras(model)
    except Exception as err:  # noqa: BLE001 - every failure is a finding
        return _fail(verdict, "import error", err)
    try:
        start = time.perf_counter()
        ours_float = qcompiler.compile(graph, mode="float32") if check_float else None
        options = {} if executor is None else {"executor": executor}  # None: compile's default (exact)
        ours = qcompiler.compile(graph, mode="int8", calibration_data=by_name, **options)
        verdict.seconds["qcompiler"] = time.perf_counter() - start
    except Exception as err:  # noqa: BLE001
        return _fail(verdict, "compile error", err)
    try:
        start = time.perf_counter()
        reference = converter_int8(model, by_name)
        verdict.seconds["converter"] = time.perf_counter() - start
    except Exception as err:  # noqa: BLE001
        return _fail(verdict, "converter error", err)
    if ours_float is not None:
        try:
            verdict.float_error = float_error(model, ours_float, test)
        except Exception as err:  # noqa: BLE001 - TensorFlow cannot run the Keras model, oneDNN off or on
            if not type(err).__module__.startswith("tensorflow"):
                raise
            return _fail(verdict, "keras error", err)
        if not verdict.float_error <= FLOAT_RTOL:
            verdict.cause, verdict.detail = "float32 mismatch", f"relative error {verdict.float_error:.3g}"
            theirs = float_error(model, converter_float32(model), test)
            if theirs == verdict.float_error:
                # TFLite's in-place planner overwrites a buffer that a tensor of the sharing chain still needs (it
                # checks the chain root's reference count only; tflite_arena.py); the converter's float model
                # computes the same wrong values (seed 2142 at batch 64)
                verdict.cause = "float32 TFLite overwrite (converter too)"
                verdict.detail += ", the converter's float model the same"
            return verdict
    verdict.size_ratio = len(ours) / len(reference)
    our_io, ref_io = _io_details(ours, model), _io_details(reference, model)
    ours_params = [_params(d) for d in our_io[0] + our_io[1]]
    ref_params = [_params(d) for d in ref_io[0] + ref_io[1]]
    if [p[0] for p in ours_params] != [p[0] for p in ref_params]:
        # e.g. a graph input that only reaches an output (an identity Reshape between them) is float32 in the
        # converter's model (seed 1201): nothing to run on common inputs if the dtypes differ
        mismatched = [i for i, (a, b) in enumerate(zip(ours_params, ref_params)) if a[0] != b[0]]
        verdict.cause = "I/O quant mismatch"
        verdict.detail = f"tensors {mismatched} (inputs first): " + "; ".join(
            f"ours {ours_params[i][0].__name__} vs {ref_params[i][0].__name__}" for i in mismatched[:2])
        return verdict
    # int8 inputs quantized with the converter's parameters; a float32 input (one that only reaches outputs) as is
    quantized = [qmath.quantize(a, QParams.per_tensor(*d["quantization"]), "i8") if d["dtype"] == np.int8 else a
                 for a, d in zip(test, ref_io[0])]
    if has_degenerate_scale(reference) and aborts_when_run(reference):
        # TFLite's ADD aborts in Prepare on a degenerate output scale, which the converter writes (random seed
        # 3196); qcompiler writes a runnable equivalent with the same parameters: check that, and that it runs
        run([ours], model, quantized)
        verdict.cause = "converter model aborts" if ours_params == ref_params else "I/O quant mismatch"
        verdict.detail = ("the converter's int8 model aborts when run (TFLite's ADD on a degenerate output scale); "
                          f"ours runs, I/O parameters {'equal' if ours_params == ref_params else 'differ'}")
        return verdict
    try:
        (got, expected), kernels = run([ours, reference], model, quantized, preserve_all_tensors=(False, True))
    except RuntimeError as err:  # a kernel's Prepare refused the model (e.g. a dead HARD_SWISH, layer seed 46)
        failing = [name for name, m in (("ours", ours), ("the converter's", reference)) if _fails_to_run(m, model, quantized)]
        return _fail(verdict, "runtime error", RuntimeError(f"{' and '.join(failing) or 'a model'} model fails to run: {err}"))
    if kernels != "reference":
        verdict.detail = f"(run with the {kernels} kernels) "
    for g, e in zip(got, expected):
        if g.dtype != np.int8:  # a float32 pass-through output: equal or not, any difference counts as 2 LSB
            equal = g == e
            verdict.identical.append(float(np.mean(equal)))
            verdict.max_lsb.append(0 if equal.all() else MAX_LSB + 1)
            continue
        diff = np.abs(g.astype(np.int32) - e.astype(np.int32))
        verdict.identical.append(float(np.mean(diff == 0)))
        verdict.max_lsb.append(int(diff.max()) if diff.size else 0)
    if ours_params != ref_params:
        mismatched = [i for i, (a, b) in enumerate(zip(ours_params, ref_params)) if a != b]
        verdict.cause = "I/O quant mismatch"
        verdict.detail += f"tensors {mismatched} (inputs first): " + "; ".join(
            f"ours {ours_params[i][1:]} vs {ref_params[i][1:]}" for i in mismatched[:2])
    elif min(verdict.identical, default=1.0) < MIN_IDENTICAL:
        verdict.cause = "<99% identical"
    elif max(verdict.max_lsb, default=0) > MAX_LSB:
        verdict.cause = ">1 LSB"
    elif verdict.size_ratio > SIZE_MARGIN:
        verdict.cause = "size > converter + 1%"
    return verdict


_INVOKE_ZEROS = """
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
interpreter = Interpreter(model_path=sys.argv[1],
                          experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
interpreter.allocate_tensors()
for detail in interpreter.get_input_details():
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
interpreter.invoke()
"""


def aborts_when_run(flatbuffer: bytes) -> bool:
    """Whether running the .tflite kills the process (a kernel's Prepare check, e.g. TFLite's ADD on a degenerate
    output scale): run it on zeros in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.tflite"
        path.write_bytes(flatbuffer)
        done = subprocess.run([sys.executable, "-c", _INVOKE_ZEROS, str(path)], capture_output=True, timeout=900)
    return done.returncode < 0


def _fails_to_run(flatbuffer: bytes, keras_model, arrays: list[np.ndarray]) -> bool:
    try:
        run([flatbuffer], keras_model, arrays)
    except RuntimeError:
        return True
    return False


def _fail(verdict: Verdict, cause: str, err: BaseException) -> Verdict:
    verdict.cause = cause
    verdict.detail = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    return verdict
