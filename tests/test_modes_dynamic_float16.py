"""The `dynamic` and `float16` modes, checked against TFLiteConverter's same-mode models (TF 2.21).

Reference models: `optimizations=[Optimize.DEFAULT]` without a representative dataset (dynamic), plus
`target_spec.supported_types=[tf.float16]` (float16). What the converter does there, confirmed on the zoo and a
probe model, and what qcompiler replicates:

dynamic  only the weights (operand 1) of CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED, when they have >= 1024
         elements, become int8: symmetric [-127, 127], per channel (dimension 0; 3 for depthwise), values divided by
         the double-precision scale. Biases and all other constants stay float32. Hybrid FULLY_CONNECTED ops get
         asymmetric_quantize_inputs=true, float ones false; op versions CONV_2D 5, DEPTHWISE_CONV_2D 6,
         FULLY_CONNECTED 12. Weights shared by two ops are one int8 tensor.
float16  every float32 constant (weights, biases, the constants of MUL/ADD, scalars), whatever its size, becomes
         float16 (clamped to ±65504, round to nearest even) with one DEQUANTIZE (version 3) per constant.

Measured on the zoo: our outputs equal the converter's bit for bit in both modes (BUILTIN_REF kernels), and every
int8 / float16 constant equals the converter's, except that we keep Keras' all-zero Dense biases, which the
converter drops. Our files are smaller (shorter tensor names, RESHAPE for Flatten instead of SHAPE/STRIDED_SLICE/
PACK), so the size check is: no larger than the converter's file, and the same ratio to our float32 file.
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import pytest
import tflite
from tflite.BuiltinOperator import BuiltinOperator as B

import qcompiler
from qcompiler.backend.tflite_writer import BackendError, write_tflite
from qcompiler.errors import QCompilerError
from qcompiler.ir import interpreter
from qcompiler.ir.graph import Graph
from qcompiler.ir.types import QParams, TensorType
from qcompiler.passes import PASSES, run_passes
from qcompiler.passes.quantize_weights import QuantizeWeights, dynamic_range_quantize
from qcompiler.passes.weights_to_f16 import WeightsToF16, to_float16
from tests.tflite_run import run_tflite
from tests.zoo import ZOO, random_batch

MODES = ("dynamic", "float16")
FAST = [name for name in ZOO if name != "mobilenet_v2_small"]
ALL = FAST + [pytest.param("mobilenet_v2_small", marks=pytest.mark.slow)]  # ~7 s per converter run

# Our file size / our float32 file size, as measured. The converter's own ratios are up to 0.07 higher on the
# small models, where its longer tensor names weigh more. residual_block: no weights reach 1024 elements.
SIZE_RATIO = {
    "seed_cnn": {"dynamic": 0.265, "float16": 0.505},
    "seed_mlp": {"dynamic": 0.520, "float16": 0.665},  # float32: no zero Dense biases, a Flatten with a constant
    # target (dynamic/float16 keep the converter's SHAPE/STRIDED_SLICE/PACK)
    "residual_block": {"dynamic": 1.0, "float16": 0.724},
    "mobilenet_v2_small": {"dynamic": 0.334, "float16": 0.514},
    "two_input_concat": {"dynamic": 0.328, "float16": 0.551},
}

_NP = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
       tflite.TensorType.INT8: np.int8, tflite.TensorType.INT32: np.int32}


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def converter_model(name: str, mode: str) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(ZOO[name]())
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


@functools.lru_cache(maxsize=None)
def our_model(name: str, mode: str) -> bytes:
    return qcompiler.compile(ZOO[name](), mode=mode)


def _as_list(batch) -> list[np.ndarray]:
    return list(batch) if isinstance(batch, (list, tuple)) else [batch]


def _subgraph(data: bytes):
    model = tflite.Model.GetRootAsModel(data, 0)
    return model, model.Subgraphs(0)


def _constants(data: bytes) -> list[dict]:
    """Every tensor with data: name, array, quantization (scales, dimension) or None."""
    model, sg = _subgraph(data)
    out = []
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        buffer = model.Buffers(t.Buffer())
        if not buffer.DataLength():
            continue
        array = np.frombuffer(buffer.DataAsNumpy().tobytes(), _NP[t.Type()]).reshape(t.ShapeAsNumpy())
        q = t.Quantization()
        quant = (tuple(q.ScaleAsNumpy()), q.QuantizedDimension()) if q is not None and q.ScaleLength() else None
        out.append({"name": t.Name().decode(), "array": array, "quant": quant})
    return out


def _opcode_versions(data: bytes) -> dict[str, int]:
    model, _ = _subgraph(data)
    return {tflite.opcode2name(model.OperatorCodes(i).BuiltinCode()): model.OperatorCodes(i).Version()
            for i in range(model.OperatorCodesLength())}


def _fully_connected_ops(data: bytes) -> list[tuple[str, bool]]:
    """(weights dtype, asymmetric_quantize_inputs) of every FULLY_CONNECTED, in order."""
    model, sg = _subgraph(data)
    found = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        if model.OperatorCodes(op.OpcodeIndex()).BuiltinCode() != B.FULLY_CONNECTED:
            continue
        options = tflite.FullyConnectedOptions()
        options.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
        weights = sg.Tensors(op.Inputs(1))
        found.append((np.dtype(_NP[weights.Type()]).name, bool(options.AsymmetricQuantizeInputs())))
    return found


def _same_arrays(ours: list[np.ndarray], theirs: list[np.ndarray]) -> Optional[str]:
    """None when both hold the same arrays, except all-zero ones only we have (Keras' zero Dense biases, which
    the converter drops); else what differs."""
    remaining = list(ours)
    for array in theirs:
        match = next((i for i, a in enumerate(remaining) if a.shape == array.shape and np.array_equal(a, array)),
                     None)
        if match is None:
            return f"converter array {array.dtype}{list(array.shape)} has no equal in ours"
        remaining.pop(match)
    extra = [a for a in remaining if np.any(a)]
    return f"{len(extra)} arrays only in ours: {[f'{a.dtype}{list(a.shape)}' for a in extra]}" if extra else None


# ----------------------------------------------------------------------------------------------------
# zoo models against the converter
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ALL)
def test_outputs_equal_converter_in_reference_kernels(name, mode):
    """Tolerance 0: with the converter's weights and bit-equal float activations, the hybrid kernels (which quantize
    their input on the fly) and the float16-dequantized weights give exactly the converter's outputs."""
    xs = _as_list(random_batch(ZOO[name](), 8, seed=11))
    ours, theirs = run_tflite(our_model(name, mode), xs), run_tflite(converter_model(name, mode), xs)
    for got, want in zip(ours, theirs):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ALL)
def test_constants_equal_converter(name, mode):
    ours, theirs = _constants(our_model(name, mode)), _constants(converter_model(name, mode))
    for dtype in (np.int8, np.float16, np.float32):
        problem = _same_arrays([c["array"] for c in ours if c["array"].dtype == dtype],
                               [c["array"] for c in theirs if c["array"].dtype == dtype])
        assert problem is None, f"{np.dtype(dtype).name} constants: {problem}"
    quant = sorted(c["quant"] for c in ours if c["quant"] is not None)
    assert quant == sorted(c["quant"] for c in theirs if c["quant"] is not None)  # scales, quantized dimension


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ALL)
def test_size(name, mode):
    data, reference = our_model(name, mode), converter_model(name, mode)
    ratio = len(data) / len(our_model(name, "float32"))
    assert ratio == pytest.approx(SIZE_RATIO[name][mode], abs=0.02)
    assert len(data) <= 1.01 * len(reference)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", FAST)
def test_ops_options_and_versions_match_converter(name, mode):
    ours, theirs = our_model(name, mode), converter_model(name, mode)
    our_versions, their_versions = _opcode_versions(ours), _opcode_versions(theirs)
    shared = set(our_versions) & set(their_versions)
    assert {op: our_versions[op] for op in shared} == {op: their_versions[op] for op in shared}
    assert _fully_connected_ops(ours) == _fully_connected_ops(theirs)
    if mode == "float16":  # one DEQUANTIZE per constant, shared by all its users
        for data in (ours, theirs):
            assert _count_ops(data, B.DEQUANTIZE) == sum(c["array"].dtype == np.float16 for c in _constants(data))


def _count_ops(data: bytes, builtin: int) -> int:
    model, sg = _subgraph(data)
    return sum(model.OperatorCodes(sg.Operators(i).OpcodeIndex()).BuiltinCode() == builtin
               for i in range(sg.OperatorsLength()))


@pytest.mark.parametrize("name", ["seed_cnn", pytest.param("mobilenet_v2_small", marks=pytest.mark.slow)])
def test_weight_quantization_is_bit_exact(name):
    """From the converter's own float32 weights, `dynamic_range_quantize` gives its int8 weights and scales.
    mobilenet_v2_small has a weight at w / scale = -111.50000044 in float32 but -111.49999967 with the double
    scale: the converter writes -111, so it divides by the double scale."""
    floats = {c["name"]: c["array"] for c in _constants(converter_model(name, "float32"))}
    checked = 0
    for c in _constants(converter_model(name, "dynamic")):
        if c["array"].dtype != np.int8:
            continue
        params, q = dynamic_range_quantize(floats[c["name"]], axis=c["quant"][1])
        np.testing.assert_array_equal(q, c["array"], err_msg=c["name"])
        assert params.scale == c["quant"][0] and params.axis == c["quant"][1]
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("name", FAST)
def test_float16_model_matches_ir_interpreter(name):
    """The IR after weights-to-f16 is the semantics of the float16 file: float32 math on f16-rounded constants."""
    model = ZOO[name]()
    xs = _as_list(random_batch(model, 3, seed=4))
    graph = run_passes(qcompiler.api.float_graph(model), "weights-to-f16")
    for got, want in zip(run_tflite(write_tflite(graph), xs), interpreter.run(graph, xs)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(want))))


# ----------------------------------------------------------------------------------------------------
# the passes on hand-built graphs
# ----------------------------------------------------------------------------------------------------
def _fc_graph(*shapes: tuple[int, int]) -> Graph:
    g = Graph("fc")
    rng = np.random.default_rng(0)
    for i, (out, inp) in enumerate(shapes):
        x = g.add_input(f"x{i}", TensorType((None, inp)))
        w = g.const(rng.normal(size=(out, inp)).astype(np.float32), f"w{i}")
        g.outputs.append(g.op("fully_connected", x, w, g.const(np.zeros(out, np.float32), f"b{i}")))
    return g


def test_default_threshold_is_1024_elements():
    g = _fc_graph((32, 32), (33, 31))
    result = QuantizeWeights().run(g)
    assert [g.value(n).type.dtype for n in ("w0", "w1", "b0")] == ["i8", "f32", "f32"]
    assert result.counters == {"weights": 1, "kept-float": 1}
    assert "1023 elements" in result.notes[0] and "min_elements=1024" in result.notes[0]


def test_passes_are_registered_and_idempotent():
    assert PASSES["quantize-weights"] is QuantizeWeights and PASSES["weights-to-f16"] is WeightsToF16
    g = _fc_graph((32, 32))
    assert QuantizeWeights().run(g).modified and not QuantizeWeights().run(g).modified
    assert WeightsToF16().run(g).modified and not WeightsToF16().run(g).modified
    g.verify()


def test_dynamic_range_quantize_edge_cases():
    w = np.zeros((2, 3), np.float32)
    w[1] = [0.5, -1.0, 0.25]
    params, q = dynamic_range_quantize(w, axis=0)
    assert params.scale == (np.float32(1e-6 / 254), np.float32(2.0 / 254))  # all-zero channel: range 1e-6
    np.testing.assert_array_equal(q, [[0, 0, 0], [64, -127, 32]])  # 63.5 rounds half away from zero


def test_float16_clamps_instead_of_overflowing():
    np.testing.assert_array_equal(to_float16(np.float32([1e5, -1e9, 65519.0])), np.float16([65504, -65504, 65504]))


# ----------------------------------------------------------------------------------------------------
# backend: hybrid kernels
# ----------------------------------------------------------------------------------------------------
def _hybrid_cases() -> dict[str, Graph]:
    rng = np.random.default_rng(5)

    def r(*shape: int) -> np.ndarray:
        return rng.normal(size=shape).astype(np.float32)

    cases = {}
    g = Graph("conv")
    x = g.add_input("x", TensorType((None, 7, 7, 4)))
    g.outputs = [g.op("conv2d", x, g.const(r(6, 3, 3, 4)), padding="same", dilation=[2, 2], activation="relu")]
    cases["conv_dilated_no_bias"] = g
    g = Graph("depthwise")
    x = g.add_input("x", TensorType((None, 6, 6, 3)))
    g.outputs = [g.op("depthwise_conv2d", x, g.const(r(1, 3, 3, 6)), g.const(r(6)), depth_multiplier=2,
                      strides=[2, 2], padding="same")]
    cases["depthwise_multiplier"] = g
    g = Graph("fc3d")
    x = g.add_input("x", TensorType((None, 5, 8)))
    g.outputs = [g.op("fully_connected", x, g.const(r(4, 8)), g.const(r(4)), activation="relu6")]
    cases["fc_keep_num_dims"] = g
    return cases


@pytest.mark.parametrize("case", list(_hybrid_cases()))
def test_hybrid_ops_run_in_reference_kernels(case):
    """Hybrid kernels quantize their input per batch/row on the fly: the float interpreter (dequantized weights,
    float input) agrees to within that activation quantization, ~1% of the output range."""
    g = _hybrid_cases()[case]
    run_passes(g, [QuantizeWeights(min_elements=1)])
    assert all(n.operands[1].type.dtype == "i8" for n in g.nodes if n.op != "const")
    xs = [np.random.default_rng(1).normal(size=(2,) + tuple(g.inputs[0].type.shape[1:])).astype(np.float32)]
    (got,), (want,) = run_tflite(write_tflite(g), xs), interpreter.run(g, xs)
    np.testing.assert_allclose(got, want, atol=0.02 * float(np.max(np.abs(want))))


def test_hybrid_versions_and_fc_option():
    g = _hybrid_cases()["fc_keep_num_dims"]
    run_passes(g, [QuantizeWeights(min_elements=1)])
    data = write_tflite(g)
    assert _opcode_versions(data) == {"FULLY_CONNECTED": 12}
    assert _fully_connected_ops(data) == [("int8", True)]
    for case, builtin, version in [("conv_dilated_no_bias", "CONV_2D", 5), ("depthwise_multiplier",
                                                                           "DEPTHWISE_CONV_2D", 6)]:
        g = _hybrid_cases()[case]
        run_passes(g, [QuantizeWeights(min_elements=1)])
        assert _opcode_versions(write_tflite(g))[builtin] == version


def test_per_tensor_hybrid_fully_connected_is_version_9():
    """Not what quantize-weights writes (always per channel, version 12), but a hand-built per-tensor hybrid FC
    with asymmetric_quantize_inputs needs version 9 (op_version.cc)."""
    g = Graph("fc")
    x = g.add_input("x", TensorType((None, 3)))
    w = g.const(np.int8([[1, -2, 3], [4, 5, -6]]), "w")
    w.type = w.type.with_quant(QParams.per_tensor(0.1, 0))
    g.outputs = [g.op("fully_connected", x, w, g.const(np.zeros(2, np.float32)))]
    data = write_tflite(g)
    assert _opcode_versions(data) == {"FULLY_CONNECTED": 9} and _fully_connected_ops(data) == [("int8", True)]
    xs = [np.float32([[1.0, 2.0, -0.5]])]
    np.testing.assert_allclose(run_tflite(data, xs)[0], interpreter.run(g, xs)[0], atol=0.02)


def test_int8_operand_of_op_without_hybrid_kernel_is_rejected():
    g = Graph("add")
    x = g.add_input("x", TensorType((None, 4)))
    c = g.const(np.int8([1, 2, 3, 4]), "c", layer="add_1")
    c.type = c.type.with_quant(QParams.per_tensor(0.5, 0))
    g.outputs = [g.op("add", x, c, name="y", layer="add_1")]
    with pytest.raises(BackendError, match=r"add_1.*conv2d, depthwise_conv2d and fully_connected"):
        write_tflite(g)


# ----------------------------------------------------------------------------------------------------
# API
# ----------------------------------------------------------------------------------------------------
def test_modes_are_listed_and_take_no_quantization_options():
    assert {"dynamic", "float16"} <= set(qcompiler.api.MODES)
    assert not {"dynamic", "float16"} & set(qcompiler.api.CALIBRATED_MODES)
    model = ZOO["seed_mlp"]()
    with pytest.raises(QCompilerError, match="dynamic.*calibration"):
        qcompiler.compile(model, mode="dynamic", calibration_data=np.zeros((1, 8, 8), np.float32))
    with pytest.raises(QCompilerError, match="float16.*per_channel"):
        qcompiler.compile(model, mode="float16", per_channel=False)
