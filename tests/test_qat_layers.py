"""qcompiler.qat layers and transforms, checked on numbers: quant_delay, EMA ranges, freeze_bn_delay, strip,
save/load, bit widths, Add/Concatenate placement."""
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from qcompiler.qat import FakeQuant, QuantConv2D, quantize_model, strip
from qcompiler.quant import math as qmath

L = keras.layers


def _small_cnn(seed: int = 0, softmax: bool = True) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1), name="image")
    x = L.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(12, activation="relu", name="hidden")(x)
    outputs = L.Dense(10, activation="softmax" if softmax else None, name="probs")(x)
    return keras.Model(inputs, outputs, name="small")


def _data(n: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 8, 8, 1)).astype(np.float32)


def test_fake_quant_passes_values_through_during_quant_delay_then_quantizes():
    layer = FakeQuant(bits=4, quant_delay=3, ema_decay=0.5)
    x = np.random.default_rng(0).normal(size=(16, 5)).astype(np.float32)
    for step in range(5):
        y = np.asarray(layer(x, training=True))
        lo, hi = min(float(layer.range_min.numpy()), 0.0), max(float(layer.range_max.numpy()), 0.0)
        if step < 3:
            np.testing.assert_array_equal(y, x)
        else:
            np.testing.assert_array_equal(y, qmath.fake_quant(x, lo, hi, 4))
            assert len(np.unique(y)) <= 16
    assert int(layer.step.numpy()) == 5


def test_fake_quant_tracks_an_exponential_moving_average_from_the_first_batch():
    layer = FakeQuant(ema_decay=0.9)
    a = np.array([[-3.0, 4.0]], np.float32)
    b = np.array([[-1.0, 2.0]], np.float32)
    layer(a, training=True)
    assert (float(layer.range_min.numpy()), float(layer.range_max.numpy())) == (-3.0, 4.0)
    layer(b, training=True)
    np.testing.assert_allclose([layer.range_min.numpy(), layer.range_max.numpy()], [-2.8, 3.8], rtol=1e-6)
    layer(b, training=False)  # inference does not move the range
    layer(b, training=True, observe=False)  # nor does a second use of the same quantizer
    np.testing.assert_allclose([layer.range_min.numpy(), layer.range_max.numpy()], [-2.8, 3.8], rtol=1e-6)


def test_ema_range_widens_at_once_to_hold_a_batch_beyond_it_so_no_value_loses_its_gradient():
    import tensorflow as tf

    layer = FakeQuant(ema_decay=0.99)
    layer(np.array([[-1.0, 1.0]], np.float32), training=True)  # the first batch: [-1, 1]
    x = tf.constant(np.linspace(-3, 5, 33, dtype=np.float32)[None])  # grown 3-5x, as in Adam's first steps
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
    # a plain 0.99 average would sit at [-1.02, 1.04] and clip 29 of these 33 values with gradient 0
    assert (float(layer.range_min.numpy()), float(layer.range_max.numpy())) == (-3.0, 5.0)
    grid = qmath.fake_quant_grid(-3.0, 5.0)  # TF's nudging (0 on a level) may leave one edge value out
    inside = (x.numpy() >= grid.nudged_min) & (x.numpy() <= grid.nudged_max)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), inside.astype(np.float32))
    assert inside.sum() >= 32
    np.testing.assert_array_equal(y.numpy(), qmath.fake_quant(x.numpy(), -3.0, 5.0, 8))
    layer(np.array([[-1.0, 1.0]], np.float32), training=True)  # smaller batches: it shrinks as an average
    np.testing.assert_allclose([layer.range_min.numpy(), layer.range_max.numpy()],
                               [0.99 * -3 + 0.01 * -1, 0.99 * 5 + 0.01 * 1], rtol=1e-6)


def test_quantized_softmax_output_keeps_the_logits_gradient_of_a_confidently_wrong_image():
    import tensorflow as tf

    inputs = keras.Input((4,))
    logits = L.Dense(3, use_bias=False, name="logits")(inputs)
    probs = L.Activation("softmax", name="probs")(logits)
    model = keras.Model(inputs, FakeQuant(mode="fixed", min=0.0, max=255 / 256, name="probs_quant")(probs))
    model.get_layer("logits").set_weights([np.array([[8.0, 0, -8], [0] * 3, [0] * 3, [0] * 3], np.float32)])
    x, label = np.array([[1.0, 0, 0, 0]], np.float32), np.array([2])  # p(label) = e^-16 / ... ~ 1e-7
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    kernel = model.get_layer("logits").kernel
    with tf.GradientTape() as tape:
        y = model(x, training=True)
        loss = loss_fn(label, y)
    assert float(y[0, 2]) == 0.0 and float(y[0, 0]) == 255 / 256  # the output is on the 1/256 grid
    p = tf.nn.softmax(np.array([[8.0, 0, -8]], np.float32)).numpy()[0]
    # the loss is the logits' cross-entropy (16 nats), not -log(1e-7) of the rounded 0 with gradient 0
    np.testing.assert_allclose(float(loss), -np.log(p[2]), rtol=1e-4)
    np.testing.assert_allclose(tape.gradient(loss, kernel).numpy()[0], p - [0, 0, 1], rtol=1e-4, atol=1e-6)


def test_initial_range_starts_every_tracked_range_and_the_ema_moves_from_it():
    qat = quantize_model(_small_cnn(), initial_range=(-6.0, 6.0), ema_decay=0.75)
    hidden = qat.get_layer("hidden_quant")
    assert (float(hidden.range_min.numpy()), float(hidden.range_max.numpy())) == (-6.0, 6.0)
    assert qat.get_layer("probs_softmax_quant").init_max == 255 / 256  # fixed ranges keep the kernel's range
    x = _data(16)
    values = np.asarray(keras.Model(qat.inputs, qat.get_layer("hidden").output)(x, training=True))
    hidden(values, training=True)
    np.testing.assert_allclose([hidden.range_min.numpy(), hidden.range_max.numpy()],
                               [0.75 * -6.0 + 0.25 * values.min(), 0.75 * 6.0 + 0.25 * values.max()], rtol=1e-4)


def test_quantized_layer_is_float_before_quant_delay():
    model = _small_cnn(softmax=False)
    qat = quantize_model(model, quant_delay=2)
    x = _data(16)
    expected = model(x, training=True)  # batch statistics, as the QAT model uses while training
    np.testing.assert_allclose(np.asarray(qat(x, training=True)), np.asarray(expected), rtol=1e-4, atol=1e-5)
    qat(x, training=True)
    quantized = np.asarray(qat(x, training=True))  # third step: quantization on
    assert not np.allclose(quantized, np.asarray(model(x, training=True)), atol=1e-6)
    hidden = qat.get_layer("hidden_quant")
    assert int(hidden.step.numpy()) == 3


def _batch_folded_conv(layer: QuantConv2D, x: np.ndarray, use_batch: bool) -> np.ndarray:
    """The folded layer in numpy: statistics of the float conv ("float") or of the conv with the kernel on its
    per-channel 8-bit grid ("quantized"), folded into the kernel, the folded kernel quantized."""
    inner, bn = layer.inner, layer.bn
    kernel = np.asarray(inner.kernel.numpy(), np.float32)
    if layer.bn_statistics == "quantized":
        lo, hi = qmath.symmetric_weight_range(kernel, 3)
        y = np.asarray(keras.ops.conv(x, qmath.fake_quant(kernel, lo, hi, 8, True, axis=3), padding="same"))
    else:
        y = np.asarray(keras.ops.conv(x, kernel, padding="same"))
    if use_batch:
        mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
    else:
        mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    folded = kernel * (bn.gamma.numpy() / np.sqrt(var + bn.epsilon))
    lo, hi = qmath.symmetric_weight_range(folded, 3)
    q = qmath.fake_quant(folded, lo, hi, 8, True, axis=3)
    bias = bn.beta.numpy() - mean * bn.gamma.numpy() / np.sqrt(var + bn.epsilon)
    return np.maximum(np.asarray(keras.ops.conv(x, q, padding="same")) + bias, 0)


@pytest.mark.parametrize("bn_statistics", ["quantized", "float"])
def test_freeze_bn_delay_switches_from_batch_to_moving_statistics(bn_statistics):
    qat = quantize_model(_small_cnn(), freeze_bn_delay=2, bn_statistics=bn_statistics)
    conv = qat.get_layer("conv")
    x = _data(32)
    before = conv.bn.moving_mean.numpy().copy()
    y0 = np.asarray(conv(x, training=True))
    np.testing.assert_allclose(y0, _batch_folded_conv(conv, x, True), rtol=1e-3, atol=1e-4)
    assert not np.allclose(conv.bn.moving_mean.numpy(), before)  # batch statistics update the moving ones
    conv(x * 2, training=True)
    frozen = conv.bn.moving_mean.numpy().copy(), conv.bn.moving_variance.numpy().copy()
    y2 = np.asarray(conv(x, training=True))  # step 2: frozen
    np.testing.assert_allclose(y2, _batch_folded_conv(conv, x, False), rtol=1e-3, atol=1e-4)
    assert not np.allclose(y2, y0, atol=1e-3)
    np.testing.assert_array_equal(conv.bn.moving_mean.numpy(), frozen[0])
    np.testing.assert_array_equal(conv.bn.moving_variance.numpy(), frozen[1])


@pytest.mark.parametrize("bits", [8, 4])
def test_one_conv_training_equals_the_layer_folded_with_the_quantized_conv_statistics(bits):
    """bn_statistics="quantized": conv(x, q(W)) * s + beta - mean * s is the folded layer conv(x, q(W * s)) +
    folded bias (per-channel quantization commutes with s), for Conv2D, DepthwiseConv2D and Dense + BN."""
    from qcompiler.qat import fold_batch_norm

    ops = keras.ops
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3), name="image")
    h = L.BatchNormalization(name="conv_bn")(L.Conv2D(4, 3, name="conv")(inputs))
    h = L.BatchNormalization(name="dw_bn")(L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(h))
    h = L.BatchNormalization(name="dense_bn")(L.Dense(5, name="dense")(L.Flatten(name="flat")(h)))
    model = keras.Model(inputs, h)
    for layer in model.layers:  # batch norms with non-trivial parameters
        if isinstance(layer, L.BatchNormalization):
            rng = np.random.default_rng(len(layer.name))
            layer.gamma.assign(rng.uniform(-2, 2, layer.gamma.shape))
            layer.beta.assign(rng.normal(size=layer.beta.shape))
    qat = quantize_model(model, weight_bits=bits, bn_statistics="quantized")
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype(np.float32)
    for name in ("conv", "dw", "dense"):
        layer = qat.get_layer(name)
        assert layer.bn is not None and layer.bn_statistics == "quantized"
        h = keras.Model(qat.inputs, layer.input)(x, training=False) if name != "conv" else x
        kernel, bn = layer.inner.kernel, layer.bn
        y = layer._linear(h, layer.quantized_kernel(kernel)) + layer.inner.bias
        mean, variance = ops.moments(y, axes=tuple(range(len(y.shape) - 1)))
        folded, bias = fold_batch_norm(ops, kernel, layer.inner.bias, bn.gamma, bn.beta, mean, variance, bn.epsilon,
                                       layer._channel_shape())
        expected = np.asarray(layer._linear(h, layer.quantized_kernel(folded)) + bias)
        got = np.asarray(layer(h, training=True))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_strip_gives_back_the_float_model_and_its_weights():
    model = _small_cnn()
    x = _data(32)
    np.testing.assert_array_equal(np.asarray(strip(quantize_model(model))(x)), np.asarray(model(x)))
    qat = quantize_model(model)
    qat.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    qat.fit(x, np.arange(32) % 10, epochs=1, batch_size=16, verbose=0)
    stripped = strip(qat)
    assert [layer.name for layer in stripped.layers] == [layer.name for layer in model.layers]
    conv = qat.get_layer("conv")
    np.testing.assert_array_equal(stripped.get_layer("conv").kernel.numpy(), conv.inner.kernel.numpy())
    np.testing.assert_array_equal(stripped.get_layer("bn").moving_variance.numpy(), conv.bn.moving_variance.numpy())
    assert not any(isinstance(layer, FakeQuant) for layer in stripped.layers)
    # the stripped model is the float computation of the QAT model's weights: QAT with quantization off
    off = quantize_model(stripped, quant_delay=10**9)
    np.testing.assert_allclose(np.asarray(off(x, training=True)), np.asarray(stripped(x, training=True)),
                               rtol=1e-4, atol=1e-5)


def test_saved_qat_model_loads_with_identical_outputs(tmp_path):
    qat = quantize_model(_small_cnn(), quant_delay=1, freeze_bn_delay=3, weight_bits=4)
    x = _data(32)
    qat.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    qat.fit(x, np.arange(32) % 10, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(qat(x)))
    conv = loaded.get_layer("conv")
    assert (conv.weight_bits, conv.freeze_bn_delay, conv.quant_delay, int(conv.step.numpy())) == (4, 3, 1, 4)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_bits_limit_the_levels_of_each_channel(bits):
    qat = quantize_model(_small_cnn(), weight_bits=bits)
    for name in ("conv", "hidden", "probs"):
        layer = qat.get_layer(name)
        kernel, _ = layer.folded_weights()
        q = np.asarray(layer.quantized_kernel(kernel)).reshape(-1, kernel.shape[-1])
        for channel in q.T:
            assert len(np.unique(channel)) <= 2**bits - 1
        if bits <= 4 and name == "hidden":  # 72 weights per channel: every level is used
            assert max(len(np.unique(c)) for c in q.T) == 2**bits - 1


def test_activation_bits_limit_the_levels():
    qat = quantize_model(_small_cnn(softmax=False), activation_bits=3)
    x = _data(64)
    qat(x, training=True)
    hidden = keras.Model(qat.inputs, qat.get_layer("hidden_quant").output)
    assert len(np.unique(np.asarray(hidden(x)))) <= 8


def test_add_relu_and_concatenate_get_one_fake_quant_each_where_tflite_has_one_scale():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="x")
    a = L.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(4, 1, name="b")(inputs)
    s = L.ReLU(name="sum_relu")(L.Add(name="sum")([a, b]))
    c = L.Concatenate(name="cat")([L.Conv2D(2, 1, name="c")(s), L.AveragePooling2D(1, name="avg")(s)])
    out = L.GlobalAveragePooling2D(name="gap")(c)
    qat = quantize_model(keras.Model(inputs, out))
    names = {layer.name for layer in qat.layers if isinstance(layer, FakeQuant)}
    assert names == {"x_quant", "a_quant", "b_quant", "sum_relu_quant", "cat_quant", "gap_quant"}
    # average pooling re-applies its input's quantizer (same grid), without a range of its own
    avg_input = qat.get_layer("sum_relu_quant")
    assert len(avg_input._inbound_nodes) == 2


def test_learned_ranges_are_trainable_and_receive_gradients_from_clipped_values():
    import tensorflow as tf

    layer = FakeQuant(mode="learned")
    x = np.linspace(-2, 2, 41, dtype=np.float32)[None]
    layer(x[:, 10:31], training=True)  # the first batch starts the range: [-1, 1]
    assert {w.name for w in layer.trainable_weights} == {"min", "max"}
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True))
    grads = dict(zip([w.name for w in layer.trainable_weights], tape.gradient(loss, layer.trainable_weights)))
    grid = qmath.fake_quant_grid(float(layer.range_min.numpy()), float(layer.range_max.numpy()))
    assert float(grads["min"]) == np.sum(x < grid.nudged_min) >= 10  # the values clipped at each end
    assert float(grads["max"]) == np.sum(x > grid.nudged_max) >= 9


def test_sequential_and_nested_models_are_flattened_into_one_qat_model():
    keras.utils.set_random_seed(0)
    block = keras.Sequential([keras.Input((8, 8, 4)), L.Conv2D(4, 3, padding="same"), L.BatchNormalization(),
                              L.ReLU()], name="block")
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 1), block, L.GlobalAveragePooling2D(),
                              L.Dense(3)])
    qat = quantize_model(model)
    kinds = [type(layer).__name__ for layer in qat.layers]
    assert kinds.count("QuantConv2D") == 2 and "BatchNormalization" not in kinds and "Sequential" not in kinds
    x = _data(8)
    np.testing.assert_allclose(np.asarray(strip(qat)(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)


def test_hand_placed_fake_quant_layers_compile_with_their_ranges():
    import qcompiler

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), name="x")
    h = FakeQuant(mode="fixed", min=-1.0, max=1.0, name="in_q")(inputs)
    h = FakeQuant(mode="fixed", min=0.0, max=4.0, name="hidden_q")(L.Dense(5, activation="relu", name="hidden")(h))
    outputs = FakeQuant(mode="fixed", min=-3.0, max=3.0, name="out_q")(L.Dense(2, name="out")(h))
    model = keras.Model(inputs, outputs)
    graph = qcompiler.quantize(model, "int8")
    assert graph.inputs[0].type.quant.scale[0] == pytest.approx(2 / 255)
    assert graph.outputs[0].type.quant.scale[0] == pytest.approx(6 / 255)
