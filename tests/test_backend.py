"""TFLite backend: hand-built IR graphs → our flatbuffer writer → ai-edge-litert reference kernels, compared with
the IR interpreter; plus the file's structure (buffers, opcodes, versions, signature, names) and atomic writes."""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np
import pytest
import tflite
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from tflite.BuiltinOperator import BuiltinOperator as B

from qcompiler.backend.opcodes import OpSig, TensorSig, op_version
from qcompiler.backend.tflite_writer import BackendError, write_tflite, write_tflite_file
from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph, Value
from qcompiler.ir.interpreter import run
from qcompiler.ir.types import QParams, TensorType
from tests.tflite_run import run_tflite

RNG = np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Each test draws the same numbers whichever tests ran before it."""
    global RNG
    RNG = np.random.default_rng(1234)


def _rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _graph(*input_shapes: tuple, dtype: str = "f32") -> tuple[Graph, list[Value]]:
    g = Graph("test")
    xs = [g.add_input(f"x{i}", TensorType((None,) + tuple(s), dtype)) for i, s in enumerate(input_shapes)]
    return g, xs


def _inputs(g: Graph, batch: int) -> list[np.ndarray]:
    arrays = []
    for value in g.inputs:
        shape = [batch if d is None else d for d in value.type.shape]
        arrays.append(_rand(*shape, scale=2.0).astype(value.type.np_dtype))
    return arrays


def _run_optimized(model: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """For ops the reference resolver lacks (ELU): the builtin kernels, without XNNPACK."""
    interp = Interpreter(model_content=model,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    for detail, array in zip(interp.get_input_details(), inputs):
        interp.resize_tensor_input(detail["index"], list(array.shape))
    interp.allocate_tensors()
    for detail, array in zip(interp.get_input_details(), inputs):
        interp.set_tensor(detail["index"], array)
    interp.invoke()
    return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]


def _assert_matches_ir(g: Graph, batches: tuple[int, ...] = (1, 3), reference_kernels: bool = True) -> bytes:
    g.verify()
    data = write_tflite(g)
    runner = run_tflite if reference_kernels else _run_optimized
    for batch in batches:
        xs = _inputs(g, batch)
        got, want = runner(data, xs), run(g, xs)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
            err = np.max(np.abs(a.astype(np.float64) - b), initial=0.0)
            assert err <= 1e-5 * max(np.max(np.abs(b), initial=0.0), 1e-30), f"batch {batch}: max|err| {err:.3g}"
    return data


def _model(data: bytes) -> "tflite.Model":
    return tflite.Model.GetRootAs(data, 0)


def _opcodes(data: bytes) -> list[tuple[str, int]]:
    m = _model(data)
    codes = [m.OperatorCodes(i) for i in range(m.OperatorCodesLength())]
    return [(tflite.opcode2name(c.BuiltinCode()), c.Version()) for c in codes]


# ----------------------------------------------------------------------------------------------------
# every op, float32, against the IR interpreter at batch 1 and 3
# ----------------------------------------------------------------------------------------------------
def _conv(padding: str, strides: list, dilation: list, activation: str, bias: bool) -> Callable[[], Graph]:
    def build() -> Graph:
        g, (x,) = _graph((9, 10, 3))
        operands = [x, g.const(_rand(5, 3, 3, 3), "w")] + ([g.const(_rand(5), "b")] if bias else [])
        g.outputs = [g.op("conv2d", *operands, padding=padding, strides=strides, dilation=dilation,
                          activation=activation, name="conv", layer="conv2d")]
        return g

    return build


def _depthwise(mult: int, dilation: list, bias: bool, padding: str = "same") -> Callable[[], Graph]:
    def build() -> Graph:
        g, (x,) = _graph((8, 7, 4))
        operands = [x, g.const(_rand(1, 3, 3, 4 * mult), "w")] + ([g.const(_rand(4 * mult), "b")] if bias else [])
        g.outputs = [g.op("depthwise_conv2d", *operands, padding=padding, strides=[1, 2], dilation=dilation,
                          depth_multiplier=mult, activation="relu6")]
        return g

    return build


def _fc(shape: tuple, bias: bool, activation: str = "none") -> Callable[[], Graph]:
    def build() -> Graph:
        g, (x,) = _graph(shape)
        operands = [x, g.const(_rand(6, shape[-1]), "w")] + ([g.const(_rand(6), "b")] if bias else [])
        g.outputs = [g.op("fully_connected", *operands, activation=activation)]
        return g

    return build


def _binary(op: str, activation: Optional[str] = None, const_rhs: bool = True) -> Callable[[], Graph]:
    def build() -> Graph:
        g, xs = _graph(*[(4, 5, 6)] * (1 if const_rhs else 2))
        rhs = g.const(_rand(6), "c") if const_rhs else xs[1]
        attrs = {"activation": activation} if activation else {}
        g.outputs = [g.op(op, xs[0], rhs, **attrs)]
        return g

    return build


def _unary(op: str, **attrs) -> Callable[[], Graph]:
    def build() -> Graph:
        g, (x,) = _graph((5, 7))
        g.outputs = [g.op(op, x, **attrs)]
        return g

    return build


def _single(op: str, in_shape: tuple = (8, 9, 3), **attrs) -> Callable[[], Graph]:
    def build() -> Graph:
        g, (x,) = _graph(in_shape)
        g.outputs = [g.op(op, x, **attrs)]
        return g

    return build


def _space_then_batch() -> Graph:
    """batch_to_space needs a batch that is a multiple of the block: feed it a space_to_batch result."""
    g, (x,) = _graph((7, 9, 3))
    spaced = g.op("space_to_batch", x, block=[2, 2], paddings=[[1, 2], [0, 1]])
    g.outputs = [g.op("batch_to_space", g.op("relu", spaced), block=[2, 2], crops=[[0, 1], [1, 0]])]
    return g


def _select() -> Graph:
    g, (x, y) = _graph((4, 6), (4, 6))
    cond = g.op("greater", x, g.const(np.float32(0.25).reshape(()), "threshold"))
    g.outputs = [g.op("select", cond, x, y), cond]
    return g


def _concat(activation: str) -> Callable[[], Graph]:
    def build() -> Graph:
        g, (x, y) = _graph((4, 3), (4, 5))
        g.outputs = [g.op("concat", x, g.op("relu6", y), axis=-1, activation=activation)]
        return g

    return build


def _cast() -> Graph:
    g, (x,) = _graph((3, 4))
    as_int = g.op("cast", x, dtype="i32")
    g.outputs = [as_int, g.op("cast", as_int, dtype="f32")]
    return g


def _quantize_round_trip() -> Graph:
    g, (x,) = _graph((3, 4))
    q = g.add_node("quantize", [x], result_types=[TensorType((None, 3, 4), "i8", QParams.per_tensor(0.05, 3))],
                   names=["q"]).result
    g.outputs = [g.op("dequantize", q)]
    return g


def _float16_weights() -> Graph:
    g, (x,) = _graph((6, 6, 2))
    w16 = g.const(_rand(3, 3, 3, 2).astype(np.float16), "w_f16")
    b16 = g.const(_rand(3).astype(np.float16), "b_f16")
    w, b = g.op("dequantize", w16, name="w"), g.op("dequantize", b16, name="b")
    g.outputs = [g.op("conv2d", x, w, b, padding="same")]
    return g


def _elementwise_math() -> Graph:
    """abs, sqrt, rsqrt, exp, squared_difference, a tensor division (positive operands where needed), neg,
    square and pow (x**3, as an approximate GELU's arithmetic has it)."""
    g, (x, y) = _graph((5, 7), (5, 7))
    positive = g.op("add", g.op("abs", x), g.const(np.float32(0.5).reshape(()), "half"))
    root = g.op("sqrt", positive)
    g.outputs = [g.op("rsqrt", positive), g.op("exp", y), g.op("squared_difference", x, root),
                 g.op("div", y, root, activation="relu"), g.op("neg", x), g.op("square", y),
                 g.op("pow", y, g.const(np.float32(3.0).reshape(()), "three"))]
    return g


def _chain() -> Graph:
    """A small CNN through most layout ops, with the batch unknown throughout."""
    g, (x,) = _graph((8, 8, 3))
    h = g.op("pad", x, paddings=[[0, 0], [1, 1], [0, 2], [0, 0]])
    h = g.op("conv2d", h, g.const(_rand(4, 3, 3, 3), "w1"), g.const(_rand(4), "b1"), activation="relu")
    h = g.op("resize_nearest", h, size=[12, 14])
    h = g.op("slice", h, begin=[0, 1, 2, 0], size=[-1, 8, 10, 3])
    h = g.op("max_pool2d", h, pool_size=[2, 2], strides=[2, 2])
    h = g.op("reshape", h, shape=[-1, 4, 15])
    h = g.op("fully_connected", h, g.const(_rand(5, 15), "w2"), g.const(_rand(5), "b2"))
    h = g.op("flatten", h)
    g.outputs = [g.op("softmax", h)]
    return g


FLOAT_CASES: dict[str, Callable[[], Graph]] = {
    "conv2d_same_relu": _conv("same", [1, 1], [1, 1], "relu", True),
    "conv2d_valid_stride2_relu6": _conv("valid", [2, 2], [1, 1], "relu6", True),
    "conv2d_dilated_relu_n1_to_1": _conv("same", [1, 1], [2, 2], "relu_n1_to_1", True),
    "conv2d_tanh_no_bias": _conv("same", [2, 1], [1, 1], "tanh", False),
    "depthwise_mult2": _depthwise(2, [1, 1], True),
    "depthwise_dilated_no_bias": _depthwise(1, [2, 2], False),
    "depthwise_valid": _depthwise(3, [1, 1], True, padding="valid"),
    "fc_rank2": _fc((7,), True, "relu"),
    "fc_rank3_keep_dims": _fc((3, 7), True),
    "fc_rank4_no_bias": _fc((2, 3, 7), False, "tanh"),
    "add_relu": _binary("add", "relu"),
    "sub_tensor": _binary("sub", const_rhs=False),
    "mul_relu6": _binary("mul", "relu6"),
    "maximum": _binary("maximum"),
    "minimum": _binary("minimum", const_rhs=False),
    "greater_select": _select,
    "relu": _unary("relu"),
    "relu6": _unary("relu6"),
    "relu_n1_to_1": _unary("relu_n1_to_1"),
    "leaky_relu": _unary("leaky_relu", alpha=0.2),
    "sigmoid": _unary("sigmoid"),
    "neg": _unary("neg"),
    "tanh": _unary("tanh"),
    "softmax": _unary("softmax", beta=0.7),
    "elu": _unary("elu"),
    "hard_swish": _unary("hard_swish"),
    "gelu": _unary("gelu", approximate=False),
    "gelu_tanh": _unary("gelu", approximate=True),
    "max_pool_same": _single("max_pool2d", pool_size=[3, 3], strides=[2, 2], padding="same"),
    "avg_pool_same_relu": _single("avg_pool2d", pool_size=[3, 2], strides=[2, 2], padding="same", activation="relu"),
    "avg_pool_valid": _single("avg_pool2d", pool_size=[2, 2], strides=[1, 1], padding="valid"),
    "mean_hw": _single("mean", axes=[1, 2], keepdims=False),
    "mean_keepdims": _single("mean", axes=[-1, 1], keepdims=True),
    "reduce_max": _single("reduce_max", axes=[2], keepdims=False),
    "reduce_min": _single("reduce_min", axes=[1, -1], keepdims=True),
    "flatten": _single("flatten"),
    "reshape": _single("reshape", shape=[-1, 24, 9]),
    "pad": _single("pad", paddings=[[0, 0], [2, 1], [0, 0], [1, 3]]),
    "slice": _single("slice", begin=[0, 1, 2, 1], size=[-1, 5, -1, 2]),
    "space_to_batch": _single("space_to_batch", block=[2, 3], paddings=[[1, 1], [2, 1]]),
    "space_then_batch": lambda: _space_then_batch(),
    "resize_nearest_up": _single("resize_nearest", size=[16, 20]),
    "resize_nearest_down": _single("resize_nearest", size=[5, 4]),
    "concat_relu": _concat("relu"),
    "concat_tanh": _concat("tanh"),
    "cast": _cast,
    "quantize_dequantize": _quantize_round_trip,
    "float16_weights": _float16_weights,
    "chain": _chain,
    "elementwise_math": _elementwise_math,
    "transpose": _single("transpose", perm=[0, 2, 3, 1]),
    "sum_keepdims": _single("sum", axes=[1, -1], keepdims=True),
}


NOT_IN_REFERENCE_RESOLVER = {"elu"}  # ai-edge-litert's BUILTIN_REF resolver has no ELU kernel


@pytest.mark.parametrize("case", list(FLOAT_CASES))
def test_op_matches_ir_interpreter(case):
    _assert_matches_ir(FLOAT_CASES[case](), reference_kernels=case not in NOT_IN_REFERENCE_RESOLVER)


def test_every_backend_op_is_covered():
    from qcompiler.backend.tflite_writer import SUPPORTED_OPS

    covered = set()
    for build in FLOAT_CASES.values():
        covered.update(n.op for n in build().nodes)
    assert SUPPORTED_OPS <= covered, SUPPORTED_OPS - covered


# ----------------------------------------------------------------------------------------------------
# quantized graphs
# ----------------------------------------------------------------------------------------------------
def _qparams(array: np.ndarray, dtype: str = "i8") -> QParams:
    lo, hi = min(float(array.min()), 0.0), max(float(array.max()), 0.0)
    if dtype == "i16":  # symmetric, zero point 0 (TFLite's int16 kernels require it)
        return QParams.per_tensor(max(abs(lo), hi) / 32767, 0)
    scale = (hi - lo) / 255
    return QParams.per_tensor(scale, int(round(-128 - lo / scale)))


def _per_channel_weights(g: Graph, w: np.ndarray, axis: int, name: str) -> tuple[Value, np.ndarray]:
    """Symmetric per-channel int8 weights; returns the value and the scales."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scales = np.abs(w).max(axis=reduce) / 127
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scales.reshape(shape)), -127, 127).astype(np.int8)
    value = g.const(q, name)
    value.type = value.type.with_quant(QParams(tuple(scales), (0,) * len(scales), axis))
    return value, scales


def _bias(g: Graph, b: np.ndarray, scales: np.ndarray, name: str, dtype: str = "i32") -> Value:
    scales = np.asarray([np.float32(s) for s in scales], np.float64)
    value = g.const(np.round(b / scales).astype(np.int32 if dtype == "i32" else np.int64), name)
    axis = 0 if len(scales) > 1 else None
    value.type = value.type.with_quant(QParams(tuple(scales), (0,) * len(scales), axis))
    return value


def _quantize(g: Graph, x: Value, q: QParams, dtype: str = "i8") -> Value:
    return g.add_node("quantize", [x], result_types=[x.type.with_dtype(dtype, q)], names=[f"{x.name}_q"]).result


def _assert_quantized_close(g: Graph, out_scale: float, lsb: float = 1.0) -> bytes:
    g.verify()
    data = write_tflite(g)
    for batch in (1, 4):
        xs = _inputs(g, batch)
        (got,), (want,) = run_tflite(data, xs), run(g, xs)
        assert got.shape == want.shape
        err_in_lsb = np.max(np.abs(got.astype(np.float64) - want)) / out_scale
        assert err_in_lsb <= lsb + 0.01, f"batch {batch}: {err_in_lsb:.3f} LSB"  # + float32 rounding of outputs
    return data


def test_int8_conv_per_channel_runs_and_matches_ir():
    g, (x,) = _graph((8, 8, 3))
    calib = [_rand(16, 8, 8, 3, scale=2.0)]
    in_q = _qparams(calib[0])
    xq = _quantize(g, x, in_q)
    w_float, b_float = _rand(6, 3, 3, 3), _rand(6)
    w, w_scales = _per_channel_weights(g, w_float, 0, "w")
    b = _bias(g, b_float, w_scales * in_q.scale[0], "b")
    conv = g.op("conv2d", xq, w, b, padding="same", strides=[1, 1], activation="relu", name="conv")
    # Output params from the float conv's range on the calibration batch.
    float_out = run(_float_conv(w_float, b_float), calib)[0]
    conv.type = conv.type.with_quant(_qparams(float_out))
    g.outputs = [g.op("dequantize", conv, name="y")]

    data = _assert_quantized_close(g, conv.type.quant.scale[0])
    assert dict(_opcodes(data)) == {"QUANTIZE": 1, "CONV_2D": 3, "DEQUANTIZE": 2}
    weights = _tensor(data, "w")
    q = weights.Quantization()
    assert weights.Type() == tflite.TensorType.INT8 and q.ScaleLength() == 6 and q.QuantizedDimension() == 0
    assert list(q.ZeroPointAsNumpy()) == [0] * 6
    assert _tensor(data, "b").Type() == tflite.TensorType.INT32


def _float_conv(w: np.ndarray, b: np.ndarray) -> Graph:
    g, (x,) = _graph((8, 8, 3))
    g.outputs = [g.op("conv2d", x, g.const(w), g.const(b), padding="same", activation="relu")]
    return g


def _int8_op(op: str, in_shapes: list[tuple], consts: tuple = (), out: str = "calibrated", lsb: float = 1.0,
             act: str = "i8", **attrs) -> Callable[[], tuple[Graph, float, float]]:
    """quantize -> one quantized op -> dequantize, activations `act` (i8, or i16 with int8 weights).

    `consts`: ("weights", array, axis) | ("bias", array) | ("tensor", array).
    `out`: "calibrated" (from the float op's range), "input" (TFLite wants the input's params), or a QParams.
    """

    def build() -> tuple[Graph, float, float]:
        calib = [_rand(16, *shape, scale=2.0) for shape in in_shapes]
        g, xs = _graph(*in_shapes)
        in_qs = [_qparams(c, act) for c in calib]
        if out == "input":  # TFLite's kernel does not rescale: every input shares the output's params
            in_qs = [_qparams(np.concatenate([c.ravel() for c in calib]), act)] * len(calib)
        operands = [_quantize(g, x, q, act) for x, q in zip(xs, in_qs)]
        w_scales = None
        for i, (kind, array, *axis) in enumerate(consts):
            if kind == "weights":
                value, w_scales = _per_channel_weights(g, array, axis[0], f"w{i}")
            elif kind == "bias":
                value = _bias(g, array, w_scales * in_qs[0].scale[0], f"b{i}", "i64" if act == "i16" else "i32")
            else:
                q = _qparams(array)
                value = g.const(np.round(array / q.scale[0] + q.zero_point[0]).astype(np.int8), f"c{i}")
                value.type = value.type.with_quant(q)
            operands.append(value)
        if op == "quantize":  # int8 -> int8 requantize: the result type is the op's whole content
            y = g.add_node(op, operands, result_types=[operands[0].type.with_quant(out)], names=["y"]).result
        else:
            y = g.op(op, *operands, name="y", **attrs)
        if isinstance(out, QParams):
            y.type = y.type.with_quant(out)
        elif out == "input":
            y.type = y.type.with_quant(in_qs[0])
        else:
            y.type = y.type.with_quant(QParams.per_tensor(1.0, 0))  # placeholder so the float twin sees it
            y.type = y.type.with_quant(_qparams(run(_float_twin(g), calib, keep=True)["y"], act))
        g.outputs = [g.op("dequantize", y, name="out")]
        return g, y.type.quant.scale[0], lsb

    return build


QUANT_CASES: dict[str, Callable[[], tuple[Graph, float, float]]] = {
    "depthwise_no_bias": _int8_op("depthwise_conv2d", [(6, 6, 4)], (("weights", _rand(1, 3, 3, 8), 3),),
                                  padding="same", depth_multiplier=2),
    "fc_rank4_per_channel": _int8_op("fully_connected", [(2, 3, 8)],
                                     (("weights", _rand(5, 8), 0), ("bias", _rand(5))), activation="relu"),
    "fc_no_bias": _int8_op("fully_connected", [(8,)], (("weights", _rand(5, 8), 0),)),
    "add_relu6": _int8_op("add", [(4, 6), (4, 6)], activation="relu6"),
    "sub_const": _int8_op("sub", [(4, 6)], (("tensor", _rand(6)),)),
    "mul": _int8_op("mul", [(4, 6), (4, 6)]),
    "maximum": _int8_op("maximum", [(4, 6), (4, 6)], out="input"),
    "avg_pool": _int8_op("avg_pool2d", [(6, 7, 3)], out="input", pool_size=[3, 3], strides=[2, 2], padding="same"),
    "max_pool": _int8_op("max_pool2d", [(6, 7, 3)], out="input", pool_size=[2, 2], strides=[2, 2]),
    "mean": _int8_op("mean", [(5, 6, 3)], axes=[1, 2], keepdims=True),
    "reshape": _int8_op("reshape", [(4, 6)], out="input", shape=[-1, 2, 12]),
    "pad": _int8_op("pad", [(4, 6)], out="input", paddings=[[0, 0], [1, 0], [2, 2]]),
    "slice": _int8_op("slice", [(4, 6)], out="input", begin=[0, 1, 2], size=[-1, 2, 3]),
    "resize_nearest": _int8_op("resize_nearest", [(3, 4, 2)], out="input", size=[6, 5]),
    "concat_relu": _int8_op("concat", [(4, 3), (4, 3)], out="input", axis=1, activation="relu"),
    "relu": _int8_op("relu", [(4, 6)]),
    "leaky_relu": _int8_op("leaky_relu", [(4, 6)], alpha=0.3),
    "hard_swish": _int8_op("hard_swish", [(4, 6)]),
    "sigmoid": _int8_op("sigmoid", [(4, 6)], out=QParams.per_tensor(1 / 256, -128)),
    "tanh": _int8_op("tanh", [(4, 6)], out=QParams.per_tensor(1 / 128, 0)),
    "softmax": _int8_op("softmax", [(10,)], out=QParams.per_tensor(1 / 256, -128)),
    "requantize": _int8_op("quantize", [(4, 6)], out=QParams.per_tensor(0.03, -5)),
    "int16_conv": _int8_op("conv2d", [(6, 6, 3)], (("weights", _rand(4, 3, 3, 3), 0), ("bias", _rand(4))),
                           act="i16", padding="same", activation="relu"),
    "int16_depthwise": _int8_op("depthwise_conv2d", [(6, 6, 3)], (("weights", _rand(1, 3, 3, 3), 3),),
                                act="i16", padding="valid"),
    "int16_fc": _int8_op("fully_connected", [(3, 8)], (("weights", _rand(5, 8), 0), ("bias", _rand(5))), act="i16"),
    "int16_add": _int8_op("add", [(4, 6), (4, 6)], act="i16"),
    "int16_mean": _int8_op("mean", [(5, 6, 3)], act="i16", axes=[1, 2], keepdims=False),
    "int16_max_pool": _int8_op("max_pool2d", [(6, 7, 3)], out="input", act="i16", pool_size=[2, 2], strides=[2, 2]),
}


@pytest.mark.parametrize("case", list(QUANT_CASES))
def test_quantized_op_matches_ir(case):
    g, out_scale, lsb = QUANT_CASES[case]()
    _assert_quantized_close(g, out_scale, lsb)


def test_int16_versions():
    versions = {}
    for case in ("int16_conv", "int16_depthwise", "int16_fc", "int16_add", "int16_mean", "int16_max_pool"):
        versions.update(_opcodes(write_tflite(QUANT_CASES[case]()[0])))
    assert versions == {"QUANTIZE": 2, "DEQUANTIZE": 3, "CONV_2D": 4, "DEPTHWISE_CONV_2D": 5,
                        "FULLY_CONNECTED": 5, "ADD": 3, "MEAN": 3, "MAX_POOL_2D": 3}


def test_int8_network_runs_and_matches_ir():
    """depthwise, avg pool, concat with relu, fc keep_num_dims, add, mean in one graph; opcode versions."""
    g, (x,) = _graph((6, 6, 4))
    calib = [_rand(16, 6, 6, 4, scale=2.0)]
    in_q = _qparams(calib[0])
    xq = _quantize(g, x, in_q)
    dw, dw_scales = _per_channel_weights(g, _rand(1, 3, 3, 4), 3, "dw")
    h = g.op("depthwise_conv2d", xq, dw, padding="same", depth_multiplier=1, name="dw_out")
    pooled = g.op("avg_pool2d", h, pool_size=[2, 2], strides=[2, 2], name="pool")
    both = g.op("concat", pooled, pooled, axis=-1, activation="relu", name="cat")
    fc_w, fc_scales = _per_channel_weights(g, _rand(5, 8), 0, "fc_w")
    fc = g.op("fully_connected", both, fc_w, name="fc")
    total = g.op("add", fc, g.const(np.zeros((5,), np.int8), "zero"), name="sum")
    out = g.op("mean", total, axes=[1, 2], keepdims=False, name="mean")
    g.outputs = [g.op("dequantize", out, name="y")]

    # Calibrate on the float twin: quantize/dequantize are identities there.
    float_twin = _float_twin(g)
    kept = run(float_twin, calib, keep=True)
    for name in ("dw_out", "cat", "fc", "sum", "mean"):
        value = g.value(name)
        value.type = value.type.with_quant(_qparams(kept[name]))
    # TFLite's int8 pooling and concatenation keep their input's params
    for name in ("pool", "cat"):
        g.value(name).type = g.value(name).type.with_quant(h.type.quant)
    g.value("zero").type = g.value("zero").type.with_quant(QParams.per_tensor(0.01, 0))
    # Each op is within 1 LSB of the IR (test_quantized_op_matches_ir); over six requantizations that compounds.
    data = _assert_quantized_close(g, g.value("mean").type.quant.scale[0], lsb=6.0)
    versions = dict(_opcodes(data))
    assert versions["DEPTHWISE_CONV_2D"] == 3 and versions["FULLY_CONNECTED"] == 5 and versions["ADD"] == 2
    assert versions["AVERAGE_POOL_2D"] == 2 and versions["CONCATENATION"] == 2 and versions["MEAN"] == 2
    assert versions["RELU"] == 2


def _float_twin(g: Graph) -> Graph:
    """The graph with every quantized value made f32 and integer constants dequantized."""
    twin = g.clone()
    for node in list(twin.nodes):
        if node.op in ("quantize", "dequantize"):
            twin.replace_node(node, [node.operands[0]])
            continue
        t = node.result.type
        if t.quant is not None and not t.is_float:
            if node.op == "const":
                q = t.quant
                node.attrs["value"] = ((node.attrs["value"].astype(np.float64) - q.zero_point_array(t.rank))
                                       * q.scale_array(t.rank)).astype(np.float32)
            node.result.type = TensorType(t.shape, "f32")
    return twin


def test_int16x8_fully_connected_and_add():
    g, (x,) = _graph((7,))
    calib = [_rand(32, 7, scale=2.0)]
    in_q = _qparams(calib[0], "i16")
    xq = _quantize(g, x, in_q, "i16")
    w, w_scales = _per_channel_weights(g, _rand(5, 7), 0, "w")
    b = _bias(g, _rand(5), w_scales * in_q.scale[0], "b", dtype="i64")
    fc = g.op("fully_connected", xq, w, b, name="fc")
    total = g.op("add", fc, fc, name="sum")
    g.outputs = [g.op("dequantize", total, name="y")]
    kept = run(_float_twin(g), calib, keep=True)
    for name in ("fc", "sum"):
        g.value(name).type = g.value(name).type.with_quant(_qparams(kept[name], "i16"))
    data = _assert_quantized_close(g, g.value("sum").type.quant.scale[0], lsb=2.0)
    versions = dict(_opcodes(data))
    assert versions["QUANTIZE"] == 2 and versions["ADD"] == 3 and versions["DEQUANTIZE"] == 3


# ----------------------------------------------------------------------------------------------------
# file structure
# ----------------------------------------------------------------------------------------------------
def _tensor(data: bytes, name: str) -> "tflite.Tensor":
    sub = _model(data).Subgraphs(0)
    for i in range(sub.TensorsLength()):
        if sub.Tensors(i).Name().decode() == name:
            return sub.Tensors(i)
    raise KeyError(name)


def _two_convs() -> Graph:
    g, (x,) = _graph((6, 6, 2))
    w = _rand(2, 3, 3, 2)
    h = g.op("conv2d", x, g.const(w, "w1", layer="conv_a"), g.const(np.zeros(2, np.float32), "b1"),
             padding="same", name="conv_a", layer="conv_a")
    h = g.op("conv2d", h, g.const(w.copy(), "w2", layer="conv_b"), g.const(np.zeros(2, np.float32), "b2"),
             padding="same", activation="relu", name="conv_b", layer="conv_b")
    h = g.op("mean", h, axes=[1, 2], name="m1")
    g.outputs = [g.op("relu", h, name="out")]
    return g


def test_buffer_zero_empty_and_constants_deduplicated():
    data = _assert_matches_ir(_two_convs())
    m = _model(data)
    assert m.Buffers(0).DataLength() == 0
    # one buffer for w1 == w2, one for b1 == b2, one for the mean axes, plus the empty buffer 0
    assert m.BuffersLength() == 4
    assert _tensor(data, "w1").Buffer() == _tensor(data, "w2").Buffer() != 0
    assert _tensor(data, "b1").Buffer() == _tensor(data, "b2").Buffer() != 0
    assert _tensor(data, "conv_a").Buffer() == 0
    for i in range(1, m.BuffersLength()):
        assert m.Buffers(i).DataLength() > 0


def test_same_bytes_different_dtype_are_not_merged():
    g, (x,) = _graph((4,))
    a = g.const(np.zeros(4, np.float32), "a")
    b = g.const(np.zeros(4, np.int32), "b")
    g.outputs = [g.op("add", x, a), g.op("cast", g.op("add", g.op("cast", x, dtype="i32"), b), dtype="f32")]
    data = _assert_matches_ir(g)
    assert _tensor(data, "a").Buffer() != _tensor(data, "b").Buffer()


def test_opcodes_deduplicated_with_codes_and_versions():
    g = _two_convs()
    data = write_tflite(g)
    assert _opcodes(data) == [("CONV_2D", 1), ("MEAN", 1), ("RELU", 1)]
    assert len(_model(data).Subgraphs(0).Operators(0).InputsAsNumpy()) == 3

    g, (x,) = _graph((3, 5))
    g.outputs = [g.op("fully_connected", g.op("gelu", x), g.const(_rand(2, 5)))]
    data = write_tflite(g)
    codes = {tflite.opcode2name(c.BuiltinCode()): c for c in
             (_model(data).OperatorCodes(i) for i in range(_model(data).OperatorCodesLength()))}
    gelu, fc = codes["GELU"], codes["FULLY_CONNECTED"]
    assert gelu.BuiltinCode() == 150 and gelu.DeprecatedBuiltinCode() == 127 and gelu.Version() == 1
    assert fc.DeprecatedBuiltinCode() == fc.BuiltinCode() == 9 and fc.Version() == 5  # keep_num_dims


def test_missing_biases_and_float16_weights():
    data = write_tflite(FLOAT_CASES["fc_rank4_no_bias"]())
    assert list(_model(data).Subgraphs(0).Operators(0).InputsAsNumpy())[2] == -1  # FC's optional bias
    data = write_tflite(FLOAT_CASES["conv2d_tanh_no_bias"]())
    bias = _tensor(data, "conv/zero_bias")  # TFLite's conv kernels insist on a bias
    assert bias.Type() == tflite.TensorType.FLOAT32 and _model(data).Buffers(bias.Buffer()).DataLength() == 20
    data = write_tflite(FLOAT_CASES["float16_weights"]())
    assert _tensor(data, "w_f16").Type() == tflite.TensorType.FLOAT16
    assert dict(_opcodes(data))["DEQUANTIZE"] == 3


def _t(dtype: str, shape: tuple = (4,), scales: Optional[tuple] = None) -> TensorSig:
    quant = None if scales is None else QParams(scales, (0,) * len(scales), 0 if len(scales) > 1 else None)
    return TensorSig(dtype, shape, quant)


def _sig(builtin: int, inputs: list, outputs: list, **options) -> OpSig:
    return OpSig(builtin, tuple(inputs), tuple(outputs), options)


F32, I8 = _t("f32"), _t("i8")


@pytest.mark.parametrize("sig, version", [
    (_sig(B.CONV_2D, [F32, _t("i8", (2, 3, 3, 1), (0.1, 0.2)), F32], [F32]), 5),  # hybrid, per-channel
    (_sig(B.CONV_2D, [F32, _t("i8", (2, 3, 3, 1), (0.1,)), F32], [F32]), 2),  # hybrid, per-tensor
    (_sig(B.MUL, [_t("i8", scales=(2.0,)), _t("i8", scales=(1.0,))], [_t("i8", scales=(1.0,))]), 3),  # rescale >= 1
    (_sig(B.MUL, [_t("i8", scales=(0.1,)), _t("i8", scales=(0.1,))], [_t("i8", scales=(1.0,))]), 2),
    (_sig(B.SUB, [_t("f32", (1, 2, 3, 4, 5)), _t("f32", (5,))], [F32]), 3),  # 5-D broadcast
    (_sig(B.FULLY_CONNECTED, [I8, I8], [I8]), 6),  # no bias slot at all
    (_sig(B.DEPTHWISE_CONV_2D, [F32, F32, F32], [F32], dilation=(2, 2)), 2),
    (_sig(B.DEQUANTIZE, [_t("i8", scales=(0.1, 0.2))], [F32]), 5),  # per-channel
    (_sig(B.QUANTIZE, [F32], [_t("i8", scales=(0.1, 0.2))]), 3),
    (_sig(B.CAST, [F32], [I8]), 3),
    (_sig(B.RESHAPE, [I8, _t("i32")], [I8]), 1),
])
def test_op_version_rules(sig, version):
    assert op_version(sig) == version


def test_deterministic_bytes_also_for_a_clone():
    g = FLOAT_CASES["chain"]()
    first = write_tflite(g)
    assert write_tflite(g) == first
    assert write_tflite(g.clone()) == first


def test_signature_and_tensor_names():
    g = _two_convs()
    data = write_tflite(g)
    interp = Interpreter(model_content=data, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    assert interp.get_signature_list() == {"serving_default": {"inputs": ["x0"], "outputs": ["out"]}}
    runner = interp.get_signature_runner("serving_default")
    x = _rand(1, 6, 6, 2)
    np.testing.assert_allclose(runner(x0=x)["out"], run(g, x)[0], rtol=1e-5, atol=1e-6)
    names = {d["name"] for d in interp.get_tensor_details()}
    assert {"x0", "w1", "b1", "conv_a", "conv_b", "m1", "out", "m1/axes"} <= names
    detail = interp.get_input_details()[0]
    assert list(detail["shape"]) == [1, 6, 6, 2] and list(detail["shape_signature"]) == [-1, 6, 6, 2]
    assert _model(data).Description().decode() == "qcompiler"


def test_backend_tensor_names_never_take_an_ir_name():
    g, (x,) = _graph((4, 5))
    h = g.op("relu", x, name="m/axes")
    g.outputs = [g.op("mean", h, axes=[1], name="m")]
    names = [d["name"] for d in Interpreter(model_content=write_tflite(g)).get_tensor_details()]
    assert sorted(names) == ["m", "m/axes", "m/axes_1", "x0"]


def test_static_batch_has_no_shape_signature():
    g = Graph("static")
    x = g.add_input("x", TensorType((2, 3)))
    g.outputs = [g.op("relu", x)]
    tensor = _tensor(write_tflite(g), "x")
    assert list(tensor.ShapeAsNumpy()) == [2, 3] and tensor.ShapeSignatureLength() == 0


@pytest.mark.parametrize("op, attrs", [("identity", {}), ("batch_norm", {"epsilon": 1e-3}),
                                       ("fake_quant", {"min": -1.0, "max": 1.0})])
def test_unsupported_op_names_node_layer_and_fix(op, attrs):
    g, (x,) = _graph((4,))
    operands = [x] + [g.const(np.ones(4, np.float32)) for _ in range(4 if op == "batch_norm" else 0)]
    g.outputs = [g.op(op, *operands, name="y", layer="dropout_3", **attrs)]
    with pytest.raises(BackendError, match=r"dropout_3.*fold-batchnorm") as info:
        write_tflite(g)
    assert isinstance(info.value, QCompilerError) and op in str(info.value)


def test_fused_tanh_on_quantized_op_is_rejected():
    g, (x,) = _graph((4,))
    xq = _quantize(g, x, QParams.per_tensor(0.1, 0))
    y = g.op("add", xq, xq, activation="tanh", name="y", layer="add_1")
    y.type = y.type.with_quant(QParams.per_tensor(1 / 128, 0))
    g.outputs = [g.op("dequantize", y)]
    with pytest.raises(BackendError, match="add_1.*tanh"):
        write_tflite(g)


# ----------------------------------------------------------------------------------------------------
# atomic file writing
# ----------------------------------------------------------------------------------------------------
def test_write_file_atomically(tmp_path):
    g = _two_convs()
    path = write_tflite_file(g, tmp_path / "model.tflite")
    assert path.read_bytes() == write_tflite(g)
    assert os.listdir(tmp_path) == ["model.tflite"]


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "model.tflite"
    target.write_bytes(b"old")
    bad, (x,) = _graph((4,))
    bad.outputs = [bad.op("identity", x)]
    with pytest.raises(BackendError):
        write_tflite_file(bad, target)

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(QCompilerError, match="No space left"):
        write_tflite_file(_two_convs(), target)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.tflite"]


def test_unwritable_directory_is_a_clear_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(QCompilerError, match="does not exist"):
        write_tflite_file(_two_convs(), not_a_dir / "model.tflite")
    with pytest.raises(QCompilerError, match="does not exist"):
        write_tflite_file(_two_convs(), tmp_path / "missing" / "model.tflite")


def test_join_bytes_equals_bytes_join():
    """The writer's large-file join (uninitialized bytes object, filled in place) is exactly b"".join, for a large
    result (the in-place path) and a small one, with pieces of every buffer kind and element type."""
    from qcompiler.backend.join_bytes import LARGE, join_bytes

    rng = np.random.default_rng(0)
    big = rng.standard_normal(LARGE // 4 + 12345).astype(np.float32)
    pieces = [b"TFL3", memoryview(big), bytes(7), np.arange(5, dtype=np.int8), bytearray(b"xyz"), b"",
              rng.integers(-9, 9, (3, 4)).astype(np.int64), np.float16([1.5, -2.0])]
    for chosen in (pieces, [p for p in pieces if p is not pieces[1]]):
        out = join_bytes(chosen)
        expected = b"".join(p.tobytes() if isinstance(p, np.ndarray) else bytes(p) for p in chosen)
        assert type(out) is bytes and out == expected


def test_float32_compile_writes_keras_flatten_with_a_constant_target():
    """qcompiler.compile in float32 writes a Keras Flatten/Reshape as one RESHAPE to a constant [-1, ...] (the
    converter's SHAPE/STRIDED_SLICE/PACK dropped: the same outputs, three ops fewer, XNNPACK keeps one partition;
    benchmarks/results/zoo_float32_flatten.json); write_tflite's default (calibration, int8) keeps the run-time
    target. Both compute the same values, at batch 1 and after resizing the batch to 3."""
    import keras

    import qcompiler
    from qcompiler.api import float_graph

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Reshape((4, 16))(x)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Dense(5)(x)))
    model = keras.Model(inputs, outputs)
    constant, runtime = qcompiler.compile(model), write_tflite(float_graph(model))
    names = [{name for name, _ in _opcodes(data)} for data in (constant, runtime)]
    assert "SHAPE" not in names[0] and "PACK" not in names[0] and "RESHAPE" in names[0]
    assert {"SHAPE", "STRIDED_SLICE", "PACK"} <= names[1]
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 6, 6, 2)).astype(np.float32)
        (got,), (want,) = run_tflite(constant, [x]), run_tflite(runtime, [x])
        assert np.array_equal(got, want)
        np.testing.assert_allclose(got, np.asarray(model(x)), rtol=1e-5, atol=1e-5)
