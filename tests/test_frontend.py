"""Keras 3 importer: every translated model must compute what Keras computes (numpy IR interpreter vs model(x))."""
from __future__ import annotations

import zipfile
from typing import Optional, Sequence

import keras
import numpy as np
import pytest

from qcompiler.errors import QCompilerError
from qcompiler.frontend.errors import ModelLoadError, UnsupportedLayerError
from qcompiler.frontend.keras import import_keras
from qcompiler.ir import interpreter
from qcompiler.ir.graph import Graph
from tests.zoo import ZOO, random_batch, randomize_batchnorm

layers = keras.layers


def _as_list(outputs) -> list[np.ndarray]:
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [keras.ops.convert_to_numpy(o) for o in outputs]


def assert_matches_keras(model: keras.Model, xs=None, rtol: float = 1e-5, graph: Optional[Graph] = None,
                         scale: float = 1.0) -> Graph:
    """Import (unless given), verify, and compare the IR interpreter with Keras on a random batch."""
    graph = graph if graph is not None else import_keras(model)
    graph.verify()
    if xs is None:
        xs = random_batch(model, 3, seed=0)
        xs = [x * scale for x in xs] if isinstance(xs, list) else xs * scale
    want = _as_list(model(xs, training=False))
    got = interpreter.run(graph, xs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        err = np.max(np.abs(g.astype(np.float64) - w))
        assert err <= rtol * max(np.max(np.abs(w)), 1e-30), f"max|err| {err:.3g} vs max|ref| {np.max(np.abs(w)):.3g}"
    return graph


def single_layer_model(layer: keras.layers.Layer, shape: Sequence[int], name: str = "x") -> keras.Model:
    inputs = keras.Input(tuple(shape), name=name)
    return keras.Model(inputs, layer(inputs))


def ops_of(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes if n.op != "const"]


# ----------------------------------------------------------------------------------------------------
# the zoo
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_matches_keras(name):
    model = ZOO[name]()
    graph = import_keras(model)
    for seed in (0, 1):
        assert_matches_keras(model, random_batch(model, 4, seed=seed), graph=graph)
    assert [v.name for v in graph.inputs] == [t._keras_history.operation.name for t in model.inputs]


def test_zoo_batchnorm_statistics_are_randomized():
    bn = ZOO["seed_cnn"]().get_layer("block1_bn")
    assert np.std(np.asarray(bn.moving_mean)) > 0.1
    assert np.min(np.asarray(bn.moving_variance)) >= 0.5 and np.max(np.asarray(bn.moving_variance)) <= 2.0


def test_seed_cnn_structure_and_names():
    graph = import_keras(ZOO["seed_cnn"]())
    assert graph.name == "seed_cnn"
    assert [v.name for v in graph.inputs] == ["image"]
    assert [v.name for v in graph.outputs] == ["logits"]
    conv = graph.value("block1_conv").producer
    assert conv.op == "conv2d" and conv.layer == "block1_conv"
    assert conv.operands[1].type.shape == (32, 3, 3, 1)
    assert graph.value("block1_bn").producer.op == "batch_norm"
    assert graph.value("fc1").producer.op == "relu"
    assert graph.value("fc1/fully_connected").producer.operands[1].type.shape == (64, 7 * 7 * 32)
    assert all(n.layer for n in graph.nodes)
    assert all(v.type.dtype == "f32" for v in graph.values())


# ----------------------------------------------------------------------------------------------------
# convolutions and dense
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    dict(strides=1, padding="same"),
    dict(strides=2, padding="same"),
    dict(strides=2, padding="valid"),
    dict(strides=(1, 2), padding="valid", kernel_size=(3, 2)),
    dict(dilation_rate=2, padding="same"),
    dict(dilation_rate=(2, 1), padding="valid"),
    dict(use_bias=False, activation="relu6"),
    dict(activation="tanh", padding="same"),
])
def test_conv2d(kwargs):
    kwargs = {"kernel_size": 3, **kwargs}
    conv = layers.Conv2D(6, bias_initializer="random_normal", name="conv", **kwargs)
    model = single_layer_model(conv, (9, 10, 3))
    graph = assert_matches_keras(model)
    node = graph.find("conv2d")[0]
    assert node.operands[1].type.shape[0] == 6 and node.operands[1].type.shape[3] == 3
    assert len(node.operands) == (2 if kwargs.get("use_bias") is False else 3)


def test_conv2d_groups_refused():
    model = single_layer_model(layers.Conv2D(4, 3, groups=2, name="grouped"), (8, 8, 4))
    with pytest.raises(UnsupportedLayerError, match="grouped.*groups=2"):
        import_keras(model)


def test_channels_first_refused():
    model = single_layer_model(layers.Conv2D(4, 3, data_format="channels_first", name="nchw"), (3, 8, 8))
    with pytest.raises(UnsupportedLayerError, match="nchw.*channels_first"):
        import_keras(model)


@pytest.mark.parametrize("kwargs", [
    dict(depth_multiplier=1, padding="same"),
    dict(depth_multiplier=2, strides=2, padding="same", activation="relu"),
    dict(depth_multiplier=3, padding="valid", use_bias=False),
    dict(dilation_rate=2, padding="same"),
])
def test_depthwise_conv2d(kwargs):
    layer = layers.DepthwiseConv2D(3, bias_initializer="random_normal", name="dw", **kwargs)
    graph = assert_matches_keras(single_layer_model(layer, (9, 9, 4)))
    weights = graph.find("depthwise_conv2d")[0].operands[1]
    assert weights.type.shape == (1, 3, 3, 4 * kwargs.get("depth_multiplier", 1))


@pytest.mark.parametrize("kwargs", [
    dict(padding="same"),
    dict(depth_multiplier=2, strides=2, padding="valid", activation="relu"),
    dict(use_bias=False, padding="same"),
])
def test_separable_conv2d(kwargs):
    layer = layers.SeparableConv2D(5, 3, bias_initializer="random_normal", name="sep", **kwargs)
    graph = assert_matches_keras(single_layer_model(layer, (10, 10, 3)))
    assert ops_of(graph)[:2] == ["depthwise_conv2d", "conv2d"]
    assert graph.find("conv2d")[0].operands[1].type.shape == (5, 1, 1, 3 * kwargs.get("depth_multiplier", 1))


@pytest.mark.parametrize("shape", [(7,), (4, 7), (3, 4, 7)])
def test_dense_any_rank(shape):
    layer = layers.Dense(5, activation="sigmoid", bias_initializer="random_normal", name="fc")
    graph = assert_matches_keras(single_layer_model(layer, shape))
    assert graph.find("fully_connected")[0].operands[1].type.shape == (5, 7)
    assert graph.outputs[0].type.shape == (None, *shape[:-1], 5)


def test_dense_without_bias():
    graph = assert_matches_keras(single_layer_model(layers.Dense(3, use_bias=False), (6,)))
    assert len(graph.find("fully_connected")[0].operands) == 2


# ----------------------------------------------------------------------------------------------------
# batch normalization
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale,center", [(True, True), (False, True), (True, False), (False, False)])
def test_batchnorm(scale, center):
    inputs = keras.Input((5, 5, 6))
    model = keras.Model(inputs, layers.BatchNormalization(scale=scale, center=center, epsilon=1e-2)(inputs))
    randomize_batchnorm(model, seed=7)
    graph = assert_matches_keras(model)
    node = graph.find("batch_norm")[0]
    assert len(node.operands) == 5 and node.attrs["epsilon"] == pytest.approx(1e-2)


def test_batchnorm_on_other_axis_refused():
    model = single_layer_model(layers.BatchNormalization(axis=1, name="bn_axis1"), (4, 5, 6))
    with pytest.raises(UnsupportedLayerError, match="bn_axis1.*last"):
        import_keras(model)


# ----------------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------------
ACTIVATIONS = ["relu", "relu6", "sigmoid", "tanh", "softmax", "swish", "silu", "hard_sigmoid", "hard_swish",
               "hard_silu", "gelu", "linear", "elu", "leaky_relu", "hard_tanh"]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_layer(name):
    assert_matches_keras(single_layer_model(layers.Activation(name), (4, 9)), scale=4.0)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_fused_activation_becomes_separate_node(name):
    graph = assert_matches_keras(single_layer_model(layers.Dense(6, activation=name, name="fc"), (5,)), scale=3.0)
    fc = graph.find("fully_connected")[0]
    assert fc.attrs["activation"] == "none"
    assert (graph.outputs[0].producer is fc) == (name == "linear")


def test_swish_and_hard_swish_ops():
    swish = import_keras(single_layer_model(layers.Activation("swish"), (4,)))
    assert ops_of(swish) == ["sigmoid", "mul"]
    hard = import_keras(single_layer_model(layers.Activation("hard_swish"), (4,)))
    assert ops_of(hard) == ["hard_swish"]
    gelu = import_keras(single_layer_model(layers.Activation("gelu"), (4,)))
    assert gelu.find("gelu")[0].attrs["approximate"] is False


def test_unknown_activation_refused():
    model = single_layer_model(layers.Dense(3, activation="softplus", name="soft"), (4,))
    with pytest.raises(UnsupportedLayerError, match="soft.*softplus"):
        import_keras(model)


RELU_VARIANTS = [
    dict(),
    dict(max_value=6.0),
    dict(max_value=3.5),
    dict(max_value=0.0),
    dict(negative_slope=0.1),
    dict(negative_slope=0.1, max_value=6.0),
    dict(negative_slope=0.3, max_value=2.5),
    dict(threshold=1.0),
    dict(threshold=0.5, max_value=6.0),
    dict(threshold=0.5, negative_slope=0.2),
    dict(threshold=1.5, negative_slope=0.25, max_value=4.0),
]


@pytest.mark.parametrize("kwargs", RELU_VARIANTS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "plain")
def test_relu_layer_variants(kwargs):
    model = single_layer_model(layers.ReLU(**kwargs, name="act"), (6, 7))
    graph = assert_matches_keras(model, scale=5.0)
    # values exactly at the threshold and the clip points
    edges = np.array([[-6, -1.5, -0.5, 0, 0.5, 1.0, 1.5]] * 6, np.float32)[None] + np.zeros((2, 6, 7), np.float32)
    edges[1] = np.array([2.5, 3.5, 4.0, 6.0, 7.0, 100, -100], np.float32)
    assert_matches_keras(model, edges, graph=graph)
    assert graph.outputs[0].name == "act"


def test_relu_layer_simple_forms_map_to_single_ops():
    assert ops_of(import_keras(single_layer_model(layers.ReLU(), (4,)))) == ["relu"]
    assert ops_of(import_keras(single_layer_model(layers.ReLU(max_value=6), (4,)))) == ["relu6"]
    assert ops_of(import_keras(single_layer_model(layers.ReLU(negative_slope=0.1), (4,)))) == ["leaky_relu"]


def test_relu_layer_max_value_clips_as_tensorflow_does():
    """relu, then clip(0, max_value) = minimum then maximum (tf.clip_by_value): the maximum is TFLiteConverter's
    RELU after the MINIMUM, which has its own range in int8 models (tests/passes/default-float-pipeline.qir)."""
    graph = import_keras(single_layer_model(layers.ReLU(max_value=4.0), (4,)))
    assert ops_of(graph) == ["relu", "minimum", "maximum"]


def test_relu_layer_negative_part_is_tensorflows():
    """relu(-x) with threshold 0 is Neg + Relu in TensorFlow's graph (a NEG the converter keeps as a float island);
    relu(-x + t) is Sub(t, x) once TensorFlow's canonicalizer has run (random seed 4094)."""
    graph = import_keras(single_layer_model(layers.ReLU(negative_slope=0.2, max_value=6.0), (4,)))
    assert ops_of(graph) == ["neg", "relu", "relu6", "mul", "sub"]
    graph = import_keras(single_layer_model(layers.ReLU(negative_slope=0.2, threshold=0.5), (4,)))
    assert ops_of(graph)[:2] == ["sub", "relu"] and "neg" not in ops_of(graph)


@pytest.mark.parametrize("slope", [0.3, 0.01, 1.5])
def test_leaky_relu_layer(slope):
    assert_matches_keras(single_layer_model(layers.LeakyReLU(negative_slope=slope), (8,)), scale=3.0)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
def test_elu_layer(alpha):
    graph = assert_matches_keras(single_layer_model(layers.ELU(alpha=alpha), (8,)), scale=3.0)
    assert ("select" in ops_of(graph)) == (alpha != 1.0)


@pytest.mark.parametrize("axis", [-1, 2])
def test_softmax_layer(axis):
    assert_matches_keras(single_layer_model(layers.Softmax(axis=axis), (4, 6)), scale=3.0)


def test_softmax_on_other_axis_refused():
    with pytest.raises(UnsupportedLayerError, match="sm.*last axis"):
        import_keras(single_layer_model(layers.Softmax(axis=1, name="sm"), (4, 6)))


# ----------------------------------------------------------------------------------------------------
# pooling and shapes
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [layers.MaxPooling2D, layers.AveragePooling2D])
@pytest.mark.parametrize("kwargs", [dict(pool_size=2), dict(pool_size=3, strides=2, padding="same"),
                                    dict(pool_size=(2, 3), strides=1, padding="valid")])
def test_pooling(cls, kwargs):
    assert_matches_keras(single_layer_model(cls(**kwargs), (7, 9, 3)))


@pytest.mark.parametrize("cls,op", [(layers.GlobalAveragePooling2D, "mean"), (layers.GlobalMaxPooling2D, "reduce_max")])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling(cls, op, keepdims):
    graph = assert_matches_keras(single_layer_model(cls(keepdims=keepdims), (5, 6, 3)))
    node = graph.find(op)[0]
    assert node.attrs["axes"] == [1, 2] and node.attrs["keepdims"] is keepdims
    assert graph.outputs[0].type.shape == ((None, 1, 1, 3) if keepdims else (None, 3))


@pytest.mark.parametrize("shape", [(4, 5, 3), (6,)])
def test_flatten(shape):
    graph = assert_matches_keras(single_layer_model(layers.Flatten(), shape))
    assert ops_of(graph) == ["flatten"]


@pytest.mark.parametrize("target", [(12, 5), (-1, 6), (2, -1, 3)])
def test_reshape(target):
    graph = assert_matches_keras(single_layer_model(layers.Reshape(target), (4, 5, 3)))
    shape = graph.find("reshape")[0].attrs["shape"]
    assert shape[0] == -1 and -1 not in shape[1:]


def test_zero_padding_and_cropping():
    inputs = keras.Input((8, 9, 2))
    x = layers.ZeroPadding2D(((1, 2), (3, 0)))(inputs)
    x = layers.Cropping2D(((2, 1), (0, 4)))(x)
    x = layers.Cropping2D(1)(x)
    graph = assert_matches_keras(keras.Model(inputs, x))
    assert ops_of(graph) == ["pad", "slice", "slice"]


@pytest.mark.parametrize("size", [2, (2, 3), (1, 2)])
def test_upsampling_nearest(size):
    graph = assert_matches_keras(single_layer_model(layers.UpSampling2D(size), (3, 4, 2)))
    assert ops_of(graph) == ["resize_nearest"]


def test_upsampling_bilinear_refused():
    with pytest.raises(UnsupportedLayerError, match="up.*bilinear"):
        import_keras(single_layer_model(layers.UpSampling2D(2, interpolation="bilinear", name="up"), (3, 4, 2)))


@pytest.mark.parametrize("scale,offset", [(1 / 255, 0.0), (1 / 127.5, -1.0), ([0.5, 2.0, 3.0], [0.1, 0.0, -0.2])])
def test_rescaling(scale, offset):
    graph = assert_matches_keras(single_layer_model(layers.Rescaling(scale, offset), (4, 4, 3)), scale=50.0)
    assert ops_of(graph) == (["mul"] if offset == 0.0 else ["mul", "add"])


@pytest.mark.parametrize("layer", [layers.Dropout(0.5), layers.SpatialDropout2D(0.3), layers.GaussianNoise(1.0),
                                   layers.GaussianDropout(0.4), layers.AlphaDropout(0.2)],
                         ids=lambda layer: type(layer).__name__)
def test_inference_noops_become_identity(layer):
    graph = assert_matches_keras(single_layer_model(layer, (4, 4, 3)))
    assert ops_of(graph) == ["identity"]


@pytest.mark.parametrize("cls,shape", [(layers.SpatialDropout1D, (5, 3)), (layers.SpatialDropout3D, (2, 3, 4, 3))])
def test_spatial_dropout_1d_3d(cls, shape):
    assert ops_of(assert_matches_keras(single_layer_model(cls(0.5), shape))) == ["identity"]


# ----------------------------------------------------------------------------------------------------
# merging
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,op,n", [(layers.Add, "add", 2), (layers.Add, "add", 3), (layers.Subtract, "sub", 2),
                                      (layers.Multiply, "mul", 3), (layers.Maximum, "maximum", 3),
                                      (layers.Minimum, "minimum", 2), (layers.Average, "add", 3)])
def test_merge_layers(cls, op, n):
    inputs = [keras.Input((4, 5), name=f"in{i}") for i in range(n)]
    model = keras.Model(inputs, cls(name="merge")(inputs))
    graph = assert_matches_keras(model)
    assert ops_of(graph).count(op) == n - 1
    assert [v.name for v in graph.inputs] == [f"in{i}" for i in range(n)]


@pytest.mark.parametrize("axis", [-1, 1, 2])
def test_concatenate(axis):
    a, b = keras.Input((3, 4, 2), name="a"), keras.Input((3, 4, 2), name="b")
    c = keras.Input((3, 4, 2), name="c")
    model = keras.Model([a, b, c], layers.Concatenate(axis=axis)([a, c, b]))
    graph = assert_matches_keras(model)
    node = graph.find("concat")[0]
    assert [v.name for v in node.operands] == ["a", "c", "b"] and node.attrs["axis"] == axis % 4


# ----------------------------------------------------------------------------------------------------
# graph structure: shared layers, nesting, inputs and outputs
# ----------------------------------------------------------------------------------------------------
def test_shared_layer_called_twice():
    a, b = keras.Input((6,), name="query"), keras.Input((6,), name="key")
    shared = layers.Dense(4, activation="relu", name="shared")
    model = keras.Model([a, b], layers.Subtract()([shared(b), shared(a)]))
    graph = assert_matches_keras(model)
    fcs = graph.find("fully_connected")
    assert len(fcs) == 2 and {n.layer for n in fcs} == {"shared"}
    assert fcs[0].operands[1] is fcs[1].operands[1]  # one weight constant for both calls
    assert [fcs[0].operands[0].name, fcs[1].operands[0].name] == ["key", "query"]
    sub = graph.find("sub")[0]
    assert [v.name for v in sub.operands] == ["shared", "shared_1"]


def test_layers_called_with_keyword_inputs():
    x = keras.Input((4,), name="x")
    y = layers.Dense(3, name="fc")(inputs=x)
    model = keras.Model(x, layers.Add(name="sum")(inputs=[y, y]))
    assert ops_of(assert_matches_keras(model)) == ["fully_connected", "add"]


def test_multi_output_order_and_names():
    x = keras.Input((5,), name="x")
    h = layers.Dense(4, name="h")(x)
    first = layers.Dense(2, name="first")(h)
    second = layers.Activation("tanh", name="second")(h)
    model = keras.Model(x, [second, first, h])
    graph = assert_matches_keras(model)
    assert [v.name for v in graph.outputs] == ["second", "first", "h"]


def test_functional_built_on_base_model_output():
    base_in = keras.Input((8, 8, 3), name="pixels")
    base_out = layers.Conv2D(4, 3, activation="relu", name="base_conv")(base_in)
    base = keras.Model(base_in, base_out, name="base")
    head = keras.Sequential([layers.GlobalAveragePooling2D(name="gap"), layers.Dense(3, name="cls")], name="head")
    model = keras.Model(inputs=base.input, outputs=head(base.output))
    graph = assert_matches_keras(model)
    assert [v.name for v in graph.inputs] == ["pixels"]
    assert [n.layer for n in graph.nodes if n.op != "const"] == ["base_conv", "base_conv", "gap", "cls"]
    assert graph.outputs[0].name == "head/cls"


def test_model_used_as_layer_twice_inside_functional():
    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, layers.Dense(6, activation="tanh", name="inner_fc")(inner_in), name="block")
    x = keras.Input((6,), name="x")
    y = inner(inner(x))
    model = keras.Model(x, layers.Add()([x, y]))
    graph = assert_matches_keras(model)
    fcs = graph.find("fully_connected")
    assert len(fcs) == 2 and fcs[0].operands[1] is fcs[1].operands[1]
    assert [fc.layer for fc in fcs] == ["inner_fc", "inner_fc"]


def test_sequential_inside_functional_inside_sequential():
    inner = keras.Sequential([layers.Dense(5, activation="relu"), layers.Dropout(0.1)], name="inner_seq")
    x = keras.Input((4,))
    middle = keras.Model(x, layers.Dense(3)(inner(x)), name="middle")
    model = keras.Sequential([keras.Input((4,), name="features"), middle, layers.Softmax()], name="outer")
    graph = assert_matches_keras(model)
    assert [v.name for v in graph.inputs] == ["features"]
    assert graph.name == "outer"
    assert any(v.name.startswith("middle/inner_seq/") for v in graph.values())


def test_sequential_without_input_refused():
    model = keras.Sequential([layers.Dense(3)], name="unbuilt")
    with pytest.raises(UnsupportedLayerError, match="unbuilt.*input shape"):
        import_keras(model)


def test_subclassed_model_refused():
    class Custom(keras.Model):
        def __init__(self):
            super().__init__(name="custom")
            self.fc = layers.Dense(2)

        def call(self, x):
            return self.fc(x)

    with pytest.raises(UnsupportedLayerError, match="subclassed"):
        import_keras(Custom())


def test_unsupported_keras_op_names_op_class_and_supported_set():
    x = keras.Input((4,))
    model = keras.Model(x, keras.ops.sin(x))
    with pytest.raises(UnsupportedLayerError) as info:
        import_keras(model)
    message = str(info.value)
    assert "keras.ops operation 'sin'" in message and "keras.src.ops.numpy.Sin" in message
    assert "numpy.Add" in message and "nn.Sigmoid" in message


def test_unsupported_layer_names_layer_and_class():
    model = single_layer_model(layers.GroupNormalization(groups=1, name="my_norm"), (5,))
    with pytest.raises(UnsupportedLayerError) as info:
        import_keras(model)
    message = str(info.value)
    assert "my_norm" in message and "GroupNormalization" in message and "Conv2D" in message
    assert info.value.layer_name == "my_norm" and info.value.class_name == "GroupNormalization"
    assert isinstance(info.value, QCompilerError)


def test_layer_subclass_refused():
    class MyDense(layers.Dense):
        pass

    with pytest.raises(UnsupportedLayerError, match="mine.*subclasses Dense"):
        import_keras(single_layer_model(MyDense(3, name="mine"), (4,)))


def test_lambda_refused_without_running_it():
    model = single_layer_model(layers.Lambda(lambda t: t * 2.0, name="doubler"), (4,))
    with pytest.raises(UnsupportedLayerError, match="doubler.*Lambda.*never executes"):
        import_keras(model)


# ----------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_file_round_trip(tmp_path, suffix):
    model = ZOO["residual_block"]()
    path = tmp_path / f"model{suffix}"
    model.save(path)
    graph = import_keras(path)
    assert_matches_keras(model, random_batch(model, 2, seed=3), graph=graph)
    assert_matches_keras(model, random_batch(model, 2, seed=3), graph=import_keras(str(path)))
    assert [v.name for v in graph.inputs] == ["features"]


def test_lambda_in_saved_file_refused(tmp_path):
    model = single_layer_model(layers.Lambda(lambda t: t + 1.0, name="plus_one"), (3,))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(UnsupportedLayerError, match="plus_one.*Lambda"):
        import_keras(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        import_keras(tmp_path / "nope.keras")


def test_unknown_extension(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelLoadError, match="extension '.onnx'"):
        import_keras(path)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"this is not a model" * 10)
    with pytest.raises(ModelLoadError, match="not a valid"):
        import_keras(path)


def test_keras_archive_without_weights_is_a_load_error(tmp_path):
    model = ZOO["seed_mlp"]()
    good = tmp_path / "good.keras"
    model.save(good)
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            if not item.filename.endswith(".h5"):
                dst.writestr(item, src.read(item))
    with pytest.raises(ModelLoadError, match="broken.keras"):
        import_keras(broken)


def test_weights_only_h5_is_a_load_error(tmp_path):
    path = tmp_path / "only.weights.h5"
    ZOO["seed_mlp"]().save_weights(path)
    with pytest.raises(ModelLoadError, match="no model config"):
        import_keras(path)


def test_not_a_model():
    with pytest.raises(ModelLoadError, match="keras.Model"):
        import_keras(42)
