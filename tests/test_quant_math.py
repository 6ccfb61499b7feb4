"""qcompiler/quant/math.py against what TFLiteConverter and the TFLite reference kernels really produce.

Tiny Keras models are converted with full-integer post-training quantization (and, for the activation ranges,
with `_experimental_calibrate_only` to read the calibrated min/max the quantizer starts from); every scale, zero
point and quantized value we compute must equal the converter's bit for bit.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.ir.types import QParams
from qcompiler.quant.math import (FLT_MIN, activation_qparams, bias_qparams, dequantize, effective_scale,
                                  multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_int64, quantize,
                                  quantize_bias, quantize_constant, quantize_multiplier, quantize_weights,
                                  round_half_away, weight_qparams, weight_qparams_16x8)

# ----------------------------------------------------------------------------------------------------
# converter helpers
# ----------------------------------------------------------------------------------------------------
_NP = {"INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FLOAT32": np.float32}


def _convert(model, samples, calibrate_only: bool = False, mode: str = "int8", float_io: bool = False) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([np.asarray(x, np.float32) for x in s] for s in samples)
    if mode == "16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        io_type = tf.int16
    else:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = tf.int8
    if not float_io:
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    converter._experimental_calibrate_only = calibrate_only
    return converter.convert()


class _Tflite:
    """Tensors (name, type, quantization, constant data) and operators of a .tflite flatbuffer."""

    def __init__(self, content: bytes) -> None:
        import tflite
        from tflite.BuiltinOperator import BuiltinOperator

        op_names = {v: k for k, v in BuiltinOperator.__dict__.items() if not k.startswith("_")}
        type_names = {v: k for k, v in tflite.TensorType.__dict__.items() if not k.startswith("_")}
        model = tflite.Model.GetRootAsModel(content, 0)
        graph = model.Subgraphs(0)
        self.tensors = []
        for i in range(graph.TensorsLength()):
            t = graph.Tensors(i)
            q = t.Quantization()
            buf = model.Buffers(t.Buffer())
            rec = {"name": t.Name().decode(), "type": type_names[t.Type()],
                   "shape": tuple(t.ShapeAsNumpy().tolist()) if t.ShapeLength() else (),
                   "scale": q.ScaleAsNumpy().astype(np.float32) if q is not None and q.ScaleLength() else None,
                   "zp": q.ZeroPointAsNumpy().astype(np.int64) if q is not None and q.ZeroPointLength() else None,
                   "axis": q.QuantizedDimension() if q is not None else 0,
                   "min": float(q.MinAsNumpy()[0]) if q is not None and q.MinLength() else None,
                   "max": float(q.MaxAsNumpy()[0]) if q is not None and q.MaxLength() else None,
                   "data": None}
            if buf is not None and buf.DataLength() and rec["type"] in _NP:
                rec["data"] = buf.DataAsNumpy().view(_NP[rec["type"]]).reshape(rec["shape"])
            self.tensors.append(rec)
        self.operators = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = op_names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
            self.operators.append((name, op.InputsAsNumpy().tolist(), op.OutputsAsNumpy().tolist()))

    def by_name(self) -> dict:
        return {t["name"]: t for t in self.tensors}

    def ops(self, name: str) -> list[tuple[dict, ...]]:
        return [tuple(self.tensors[i] for i in ins + outs) for op, ins, outs in self.operators if op == name]


def _qparams(t: dict) -> QParams:
    if len(t["scale"]) == 1:
        return QParams.per_tensor(float(t["scale"][0]), int(t["zp"][0]))
    return QParams(tuple(float(s) for s in t["scale"]), tuple(int(z) for z in t["zp"]), t["axis"])


def _assert_qparams_equal(ours: QParams, theirs: dict, what: str) -> None:
    np.testing.assert_array_equal(np.asarray(ours.scale, np.float32), theirs["scale"], err_msg=f"{what}: scale")
    np.testing.assert_array_equal(np.asarray(ours.zero_point), theirs["zp"], err_msg=f"{what}: zero point")
    if len(theirs["scale"]) > 1:
        assert ours.axis == theirs["axis"], what


# ----------------------------------------------------------------------------------------------------
# model A: many inputs with chosen ranges, each feeding its own dense layer
# ----------------------------------------------------------------------------------------------------
_EDGE_RANGES = [(-1.5, 253.5), (-0.5, 254.5), (-2.5, 252.5), (0.0, 0.0), (-3.0, -1.0), (2.0, 5.0), (0.0, 1e-7),
                (-1e-7, 3e-7), (-5e-7, 5e-7), (-1.0, 1.0), (0.0, 1.0), (-1.0, 0.0), (-127.5, 127.5),
                (-128.0, 127.0), (-1e-3, 7e4)]


def _ranges(n: int, seed: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    out = list(_EDGE_RANGES)
    while len(out) < n:
        lo = -math.exp(rng.uniform(-9, 5)) * int(rng.integers(0, 2))
        hi = math.exp(rng.uniform(-9, 5)) * int(rng.integers(0, 2))
        out.append((float(np.float32(lo)), float(np.float32(hi))))
    return out


@pytest.fixture(scope="module")
def model_a():
    import keras

    rng = np.random.default_rng(11)
    ranges = _ranges(30, seed=12)
    inputs = [keras.Input((2,), name=f"in{i:02d}") for i in range(len(ranges))]
    layers = [keras.layers.Dense(4, name=f"fc{i:02d}") for i in range(len(ranges))]
    model = keras.Model(inputs, [layer(x) for layer, x in zip(layers, inputs)])
    weights = {}
    for i, layer in enumerate(layers):
        kernel = rng.normal(size=(2, 4)).astype(np.float32) * np.float32(10.0 ** rng.uniform(-2, 1))
        kernel[:, 1] = 0  # an all-zero channel with a bias: the converter widens its weight scale
        kernel[:, 2] *= 1e-4  # tiny weights, big bias: bias / scale near the int32 limit
        bias = np.asarray([rng.normal(), 0.3, 5.0, 0.0], np.float32)
        layer.set_weights([kernel, bias])
        weights[f"in{i:02d}"] = (kernel.T.copy(), bias)  # TFLite layout [out, in]
    samples = [[np.asarray([[lo, hi]], np.float32) for lo, hi in ranges]]
    calibrated = _Tflite(_convert(model, samples, calibrate_only=True)).by_name()
    return {"weights": weights, "calibrated": calibrated,
            "int8": _Tflite(_convert(model, samples)), "16x8": _Tflite(_convert(model, samples, mode="16x8"))}


def _input_name(fc_input: dict) -> str:
    return fc_input["name"].split("serving_default_")[1].split(":")[0]


def test_activation_qparams_equal_converter_int8(model_a):
    checked = 0
    for t in model_a["int8"].tensors:
        stats = model_a["calibrated"].get(t["name"])
        if t["data"] is not None or t["scale"] is None or stats is None or stats["min"] is None:
            continue
        _assert_qparams_equal(activation_qparams(stats["min"], stats["max"]), t, t["name"])
        checked += 1
    assert checked >= 60  # 30 inputs and 30 dense outputs


def test_activation_qparams_equal_converter_int16(model_a):
    checked = 0
    for t in model_a["16x8"].tensors:
        stats = model_a["calibrated"].get(t["name"])
        if t["data"] is not None or t["scale"] is None or stats is None or stats["min"] is None:
            continue
        assert t["type"] == "INT16"
        _assert_qparams_equal(activation_qparams(stats["min"], stats["max"], "i16"), t, t["name"])
        checked += 1
    assert checked >= 60


def test_calibrator_records_flt_min_as_max_of_non_positive_tensors(model_a):
    # A list-style representative dataset is fed in the flatbuffer's input order, which for a multi-input Keras
    # model is not the Keras order: find the input that received (-3, -1) by its minimum.
    inputs = [t for name, t in model_a["calibrated"].items() if name.startswith("serving_default_in")]
    (stats,) = [t for t in inputs if t["min"] == -3.0]
    assert stats["max"] == FLT_MIN  # the logger starts max at FLT_MIN, so max(-1, FLT_MIN) is recorded


def test_weights_and_bias_equal_converter_int8(model_a):
    fcs = model_a["int8"].ops("FULLY_CONNECTED")
    assert len(fcs) == 30
    adjusted = 0
    for x, w, b, _ in fcs:
        kernel, bias = model_a["weights"][_input_name(x)]
        wq = weight_qparams(kernel, axis=0)
        bq, wq_final = bias_qparams(bias, float(x["scale"][0]), wq)
        adjusted += wq_final != wq
        _assert_qparams_equal(wq_final, w, w["name"])
        _assert_qparams_equal(bq, b, b["name"])
        np.testing.assert_array_equal(quantize_weights(kernel, wq_final), w["data"], err_msg=w["name"])
        np.testing.assert_array_equal(quantize_bias(bias, bq), b["data"], err_msg=b["name"])
    assert adjusted >= 10  # the zero channel with bias 0.3 overflows 2^30 (and is widened) for small input scales


def test_weights_and_bias_equal_converter_16x8(model_a):
    for x, w, b, _ in model_a["16x8"].ops("FULLY_CONNECTED"):
        kernel, bias = model_a["weights"][_input_name(x)]
        wq, values = weight_qparams_16x8(kernel, axis=0, bias=bias, input_scale=float(x["scale"][0]))
        expected_scale = np.where(w["scale"] == 0, np.float32(FLT_MIN), w["scale"])  # we keep scales > 0
        np.testing.assert_array_equal(np.asarray(wq.scale, np.float32), expected_scale, err_msg=w["name"])
        np.testing.assert_array_equal(values, w["data"], err_msg=w["name"])
        assert b["type"] == "INT64"
        if x["scale"][0] < 1e-30:  # an all-zero int16 input: scale FLT_MIN/32767, inf/0 weight scales; skip
            continue
        bq, _ = bias_qparams(bias, float(x["scale"][0]), wq, "i64")
        _assert_qparams_equal(bq, b, b["name"])
        np.testing.assert_array_equal(quantize_bias(bias, bq, "i64"), b["data"], err_msg=b["name"])


# ----------------------------------------------------------------------------------------------------
# model B: conv / depthwise / dense weights with rounding ties, zero and tiny channels
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_b():
    import keras

    rng = np.random.default_rng(3)
    inp = keras.Input((6, 6, 4))
    conv = keras.layers.Conv2D(6, 3, padding="same", name="conv")
    dw = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")
    dense = keras.layers.Dense(5, name="dense")
    model = keras.Model(inp, dense(keras.layers.Flatten()(dw(conv(inp)))))
    w_conv = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
    ties = np.asarray([127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.5], np.float32)
    w_conv[..., 0] = 0
    w_conv.reshape(-1, 6)[:10, 0] = ties  # scale exactly 1: x.5 values show the rounding mode
    w_conv[..., 1] = 0  # all-zero channel (bias 0: no widening)
    w_conv[..., 2] = rng.normal(size=(3, 3, 4)) * 1e-7  # range below 1e-6
    w_conv[..., 3] *= 1e-3
    b_conv = (rng.normal(size=6) * 0.1).astype(np.float32)
    b_conv[1] = 0
    conv.set_weights([w_conv, b_conv])
    w_dw = rng.normal(size=(3, 3, 6, 2)).astype(np.float32)
    w_dw[..., 1, 1] = 0
    b_dw = rng.normal(size=12).astype(np.float32)
    dw.set_weights([w_dw, b_dw])
    w_dense = rng.normal(size=(6 * 6 * 12, 5)).astype(np.float32)
    b_dense = (rng.normal(size=5) * 10).astype(np.float32)
    dense.set_weights([w_dense, b_dense])
    samples = [[rng.normal(size=(1, 6, 6, 4)).astype(np.float32)] for _ in range(4)]
    expected = {"CONV_2D": (np.transpose(w_conv, (3, 0, 1, 2)), 0, b_conv),
                "DEPTHWISE_CONV_2D": (w_dw.reshape(1, 3, 3, 12), 3, b_dw),
                "FULLY_CONNECTED": (w_dense.T.copy(), 0, b_dense)}
    return expected, _Tflite(_convert(model, samples))


@pytest.mark.parametrize("op", ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"])
def test_conv_weights_and_bias_equal_converter(model_b, op):
    expected, converted = model_b
    kernel, axis, bias = expected[op]
    (x, w, b, _), = converted.ops(op)
    wq = weight_qparams(kernel, axis=axis)
    bq, wq_final = bias_qparams(bias, float(x["scale"][0]), wq)
    assert wq_final == wq
    _assert_qparams_equal(wq, w, op)
    _assert_qparams_equal(bq, b, op + " bias")
    np.testing.assert_array_equal(quantize_weights(kernel, wq), w["data"], err_msg=op)
    np.testing.assert_array_equal(quantize_bias(bias, bq), b["data"], err_msg=op + " bias")


def test_weight_rounding_is_half_away_from_zero_and_tiny_channels_get_1e6_range(model_b):
    _, converted = model_b
    (_, w, _, _), = converted.ops("CONV_2D")
    np.testing.assert_array_equal(w["data"][0].reshape(-1)[:10], [127, 1, 2, 3, -1, -2, -3, 127, -127, 4])
    assert w["scale"][0] == 1.0
    assert w["scale"][1] == w["scale"][2] == np.float32(1e-6 / 254)


# ----------------------------------------------------------------------------------------------------
# model C: float constants that are not weights
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_c():
    import keras

    rng = np.random.default_rng(5)
    add_c = np.asarray([[2.5, -0.7, 0.1]] * 4, np.float32) * np.arange(1, 5, dtype=np.float32)[:, None]
    mul_c = np.asarray([0.5, -2.0, 3.0], np.float32)
    inp = keras.Input((4, 3))
    y = keras.layers.Lambda(lambda t: t + add_c, name="addc")(inp)
    y = keras.layers.Lambda(lambda t: t * mul_c, name="mulc")(y)
    y = keras.layers.Lambda(lambda t: keras.ops.maximum(t, np.float32(0.3)), name="maxc")(y)
    y = keras.layers.Lambda(lambda t: keras.ops.concatenate([t, np.full((1, 4, 1), 7.0, np.float32)], axis=-1),
                            name="catc")(y)
    samples = [[rng.uniform(-1, 1, size=(1, 4, 3)).astype(np.float32)] for _ in range(4)]
    return {"ADD": add_c, "MUL": mul_c, "MAXIMUM": np.float32(0.3), "CONCATENATION": np.full((1, 4, 1), 7.0)}, \
        _Tflite(_convert(keras.Model(inp, y), samples))


def test_non_weight_constants_are_asymmetric_per_tensor(model_c):
    constants, converted = model_c
    for op in ("ADD", "MUL"):
        (_, c, _), = converted.ops(op)
        qp = weight_qparams(constants[op], axis=None, narrow_range=False)
        _assert_qparams_equal(qp, c, op)
        np.testing.assert_array_equal(quantize_constant(constants[op], qp), c["data"], err_msg=op)


def test_constants_of_same_scale_ops_take_the_op_params(model_c):
    constants, converted = model_c
    for op in ("MAXIMUM", "CONCATENATION"):
        (x, c, out), = converted.ops(op)
        assert _qparams(x) == _qparams(c) == _qparams(out)
        np.testing.assert_array_equal(quantize_constant(constants[op], _qparams(c)), c["data"], err_msg=op)


# ----------------------------------------------------------------------------------------------------
# model D: float in/out — the QUANTIZE, FULLY_CONNECTED and DEQUANTIZE reference kernels
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_d():
    import keras

    rng = np.random.default_rng(7)
    inp = keras.Input((32,))
    dense = keras.layers.Dense(64)
    model = keras.Model(inp, dense(inp))
    kernel = rng.normal(size=(32, 64)).astype(np.float32)
    kernel[:, :8] *= 1e-3
    dense.set_weights([kernel, rng.normal(size=64).astype(np.float32)])
    samples = [[rng.uniform(-1, 1.3, size=(1, 32)).astype(np.float32)] for _ in range(8)]
    return _convert(model, samples, float_io=True)


def _run_ref(content: bytes, x: np.ndarray):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=content, experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                         experimental_preserve_all_tensors=True)
    detail = interp.get_input_details()[0]
    interp.resize_tensor_input(detail["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(detail["index"], x)
    interp.invoke()
    return interp


def test_reference_kernels_quantize_requantize_dequantize(model_d):
    converted = _Tflite(model_d)
    assert [op for op, _, _ in converted.operators] == ["QUANTIZE", "FULLY_CONNECTED", "DEQUANTIZE"]
    (_, _, q_out), (_, fc_in, fc_out), _ = converted.operators
    x_t, w_t, b_t, y_t = (converted.tensors[i] for i in fc_in + fc_out)
    x_qp, y_qp = _qparams(x_t), _qparams(y_t)
    rng = np.random.default_rng(8)
    k = rng.integers(-140, 140, size=16 * 512).astype(np.float32)
    s = np.float32(x_qp.scale[0])
    ties = (k + np.float32(0.5)) * s  # exact x.5 multiples of the scale (in float32)
    x = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), rng.uniform(-1.5, 1.5, 16 * 512)])
    x = x.astype(np.float32).reshape(-1, 32)
    interp = _run_ref(model_d, x)
    x_q = interp.get_tensor(q_out[0])
    np.testing.assert_array_equal(quantize(x, x_qp), x_q)

    acc = (x_q.astype(np.int64) - x_qp.zero_point[0]) @ w_t["data"].astype(np.int64).T + b_t["data"]
    reals = effective_scale(x_qp.scale[0], w_t["scale"], y_qp.scale[0])
    mults, shifts = zip(*(quantize_multiplier(float(r)) for r in reals))
    y = multiply_by_quantized_multiplier(acc, np.asarray(mults), np.asarray(shifts)) + y_qp.zero_point[0]
    y_q = interp.get_tensor(fc_out[0])
    np.testing.assert_array_equal(np.clip(y, -128, 127), y_q)
    # the gemmlowp double rounding differs somewhere: ai-edge-litert is built with TFLITE_SINGLE_ROUNDING
    y_double = multiply_by_quantized_multiplier(acc, np.asarray(mults), np.asarray(shifts), single_rounding=False)
    assert np.any(np.clip(y_double + y_qp.zero_point[0], -128, 127) != y_q)

    out = interp.get_tensor(interp.get_output_details()[0]["index"])
    np.testing.assert_array_equal(dequantize(y_q, y_qp), out)


# ----------------------------------------------------------------------------------------------------
# pure arithmetic
# ----------------------------------------------------------------------------------------------------
def test_activation_qparams_known_values():
    assert activation_qparams(-1.0, 1.0) == QParams.per_tensor(float(np.float32(2 / 255)), -1)
    tiny = (np.float32(1e-6) - np.float32(-1e-6)) / np.float32(255)  # widened by 1e-6 each side
    assert activation_qparams(0.0, 0.0) == QParams.per_tensor(float(tiny), 0)
    assert activation_qparams(-1.5, 253.5) == QParams.per_tensor(1.0, -127)  # zp -126.5 rounds away from 0
    assert activation_qparams(2.0, 5.0).zero_point == (-128,)  # range widened to include 0
    assert activation_qparams(-1.0, 1.0, "i16") == QParams.per_tensor(float(np.float32(1 / 32767)), 0)
    assert activation_qparams(0.0, 0.0, "i16").scale[0] == float(np.float32(FLT_MIN / 32767))
    with pytest.raises(ValueError, match="not finite"):
        activation_qparams(-1.0, float("inf"))


def test_round_half_away():
    np.testing.assert_array_equal(round_half_away(np.asarray([-2.5, -0.5, 0.5, 1.5, 2.4999], np.float32)),
                                  [-3, -1, 1, 2, 2])
    big = np.asarray([11064153.0, -11064153.0, 2.0**23 + 1, 0.49999997], np.float32)  # |x| + 0.5 would round
    np.testing.assert_array_equal(round_half_away(big), [11064153.0, -11064153.0, 2.0**23 + 1, 0.0])
    assert round_half_away(np.float64(2.0**52 + 1)) == 2.0**52 + 1


@pytest.mark.parametrize("shape, axis", [((300, 3, 3, 80), 0), ((1, 3, 3, 40000), 3), ((7, 30000), 0),
                                         ((5, 4, 3, 2), 1), ((200000,), None), ((1, 1), 0)])
def test_quantize_weights_blockwise_equals_the_whole_array_expression(shape, axis):
    """quantize_weights works block by block (WEIGHT_BLOCK elements); the values must be those of the one-line
    formula over the whole array, ties (x.5 after scaling) included, whichever axis and block boundaries."""
    rng = np.random.default_rng(sum(shape))
    w = (rng.standard_normal(shape) * rng.uniform(1e-3, 2.0, shape[axis or 0])
         .reshape([-1 if i == (axis or 0) else 1 for i in range(len(shape))])).astype(np.float32)

    def inverse_scales(params: QParams) -> np.ndarray:  # f32(1 / scale) per channel, f32(127 / max|w|) per tensor
        if params.axis is None:
            return np.float32(np.float32(127) / np.float32(np.abs(w).max()))
        shape = [-1 if i == params.axis else 1 for i in range(w.ndim)]
        return (1.0 / np.asarray(params.scale, np.float64)).astype(np.float32).reshape(shape)

    inv = np.broadcast_to(inverse_scales(weight_qparams(w, axis)), w.shape).reshape(-1)
    flat = w.reshape(-1)
    flat[1::5] = (np.round(flat[1::5] * inv[1::5] * 2) / 2 / inv[1::5]).astype(np.float32)  # near or on ties
    inv = inverse_scales(weight_qparams(w, axis))
    expected = np.clip(round_half_away((w * inv).astype(np.float32)), -127, 127).astype(np.int8)
    assert w.size < 10 or np.any(np.abs((w * inv).astype(np.float32) % 1) == 0.5)  # some exact ties
    np.testing.assert_array_equal(quantize_weights(w, weight_qparams(w, axis)), expected)


def test_quantize_multiplier_known_values():
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(2.0**-40) == (0, 0)  # shift below -31 flushes to zero
    assert quantize_multiplier(1 - 2.0**-40) == (1 << 30, 1)  # rounds up to 2^31: halved, shift + 1
    assert quantize_multiplier(2.0**40) == ((1 << 31) - 1, 30)  # single-rounding build saturates the shift
    assert quantize_multiplier(2.0**40, single_rounding=False) == (1 << 30, 41)
    m, shift = quantize_multiplier(0.1234)
    assert 1 << 30 <= m < 1 << 31 and abs(m * 2.0 ** (shift - 31) - 0.1234) < 2.0**-31


def _exact_single(x: int, m: int, shift: int) -> int:
    total = 31 - shift
    return (x * m + (1 << (total - 1))) >> total  # Python ints: exact floor


def _gemmlowp(x: int, m: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    a = x * (1 << left)
    a = ((a + 2**31) % 2**32) - 2**31
    if a == m == -(2**31):
        high = 2**31 - 1
    else:
        ab = a * m
        nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
        high = int(Fraction(ab + nudge, 1 << 31))  # truncation toward zero like C++
    mask = (1 << right) - 1
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if (high & mask) > threshold else 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=20),
       st.floats(min_value=1e-9, max_value=0.99))
def test_multiply_by_quantized_multiplier_matches_scalar_reference(xs, real):
    m, shift = quantize_multiplier(real)
    got = multiply_by_quantized_multiplier(np.asarray(xs), m, shift)
    assert got.tolist() == [_exact_single(x, m, shift) for x in xs]
    got = multiply_by_quantized_multiplier(np.asarray(xs), m, shift, single_rounding=False)
    assert got.tolist() == [_gemmlowp(x, m, shift) for x in xs]


def test_multiply_by_quantized_multiplier_per_channel_broadcast_and_ties():
    acc = np.asarray([[5, -5, 6], [7, -7, 1 << 20]])
    mults = np.asarray([1 << 30, 1 << 30, 1 << 30])
    shifts = np.asarray([-1, -1, 0])  # x / 4, x / 4, x / 2
    got = multiply_by_quantized_multiplier(acc, mults, shifts)
    np.testing.assert_array_equal(got, [[1, -1, 3], [2, -2, 1 << 19]])  # 1.25, -1.25, 3, 1.75, -1.75
    ties = multiply_by_quantized_multiplier(np.asarray([2, -2, 6, -6]), 1 << 30, -1)  # x / 4: 0.5, -0.5, ...
    np.testing.assert_array_equal(ties, [1, 0, 2, -1])  # single rounding: ties toward +inf
    ties = multiply_by_quantized_multiplier(np.asarray([2, -2, 6, -6]), 1 << 30, -1, single_rounding=False)
    np.testing.assert_array_equal(ties, [1, -1, 2, -2])  # gemmlowp: ties away from zero
    with pytest.raises(ValueError, match="int32"):
        multiply_by_quantized_multiplier(np.asarray([2**40]), 1 << 30, 0)


def test_multiply_by_quantized_multiplier_int64():
    m, shift = quantize_multiplier(0.3)
    x = np.asarray([0, 1000, -1000, 2**40, -(2**40)], np.int64)
    reduced = (m + (1 << 15)) >> 16
    expected = [(((int(v) * reduced + (1 << (14 - shift))) >> (15 - shift)) + 2**31) % 2**32 - 2**31 for v in x]
    np.testing.assert_array_equal(multiply_by_quantized_multiplier_int64(x, m, shift), expected)


def test_quantize_dequantize_per_channel_and_saturation():
    qp = QParams((0.5, 0.25), (0, 10), axis=1)
    x = np.asarray([[1.0, 1.0], [100.0, -100.0], [0.25, 0.125]], np.float32)
    q = quantize(x, qp)
    np.testing.assert_array_equal(q, [[2, 14], [127, -128], [1, 11]])  # 0.5 -> 1, 0.5 -> 1 (+10)
    np.testing.assert_array_equal(dequantize(q, qp), [[1.0, 1.0], [63.5, -34.5], [0.5, 0.25]])


def test_bias_saturates_and_weight_params_validate():
    bq, wq = bias_qparams(np.asarray([1e30], np.float32), 1.0, QParams.per_tensor(1.0, 0))
    assert wq.scale[0] > 1.0  # per-tensor widening: the bias fits again
    assert abs(int(quantize_bias(np.asarray([1e30], np.float32), bq)[0])) <= 2**30
    sat = quantize_bias(np.asarray([1e30, -1e30], np.float32), QParams.per_tensor(1.0, 0))
    np.testing.assert_array_equal(sat, [2**31 - 1, -(2**31 - 1)])
    with pytest.raises(ValueError, match="16x8"):
        weight_qparams(np.ones((2, 2)), 0, dtype="i16")
    zero = weight_qparams(np.zeros((3, 2), np.float32), axis=0)
    assert zero.scale == (float(np.float32(1e-6 / 254)),) * 3 and zero.zero_point == (0, 0, 0)
    np.testing.assert_array_equal(quantize_weights(np.zeros((3, 2), np.float32), zero), np.zeros((3, 2)))


def test_int64_accumulator_rescale_wraps_like_the_kernels_int32_cast() -> None:
    # 16x8 conv/depthwise/FC: static_cast<int32_t> of the rescaled int64 accumulator. A result past int32 (a tiny
    # output scale) wraps around (BUILTIN_REF gave -32768 where a saturating rescale gives 32767 after the clamp).
    multiplier, shift = 1 << 30, 0  # 0.5: (x * 2^14 + 2^14) >> 15 = (x + 1) >> 1
    x = np.array([(1 << 33) + 10, 100, -((1 << 33) + 10)], np.int64)
    result = multiply_by_quantized_multiplier_int64(x, multiplier, shift)
    assert result.tolist() == [5, 50, -5]


def test_single_rounding_rescale_wraps_like_the_kernels_int32_cast() -> None:
    # a multiplier >= 1 on a large int32 accumulator: TFLite's static_cast<int32_t> wraps (16x8 FULLY_CONNECTED,
    # found by Hypothesis: 32767 where BUILTIN_REF gives -32768)
    result = multiply_by_quantized_multiplier(np.asarray([2**31 - 1, 100]), 1 << 30, 2)  # x * 2.0
    assert result.tolist() == [-2, 200]
