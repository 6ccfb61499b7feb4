"""Quantization policies (qcompiler/quant/policy.py): `tflite-2.21` (the default, the converter bit for bit) and
`plain` (textbook quantization: the policy the QAT work builds on).

`plain` is checked against the IR interpreter on generated models: the calibrated fake-quant graph and the graph
lower-to-int makes from it compute the same outputs (to rounding), and none of the converter-emulation rules
fires (every pass reports what it emulated in its counters). The `tflite-2.21` side is covered by the converter
tests (tests/test_int8_vs_converter.py, tests/test_calibrate.py); here it only has to show that its rules do
fire on the same models, so the two policies really differ.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import qcompiler
from qcompiler.ir import interpreter
from qcompiler.passes.calibrate import Calibrate
from qcompiler.passes.dce import DeadCodeElimination
from qcompiler.passes.fold_batchnorm import FoldBatchNorm
from qcompiler.passes.insert_fake_quant import InsertFakeQuant
from qcompiler.passes.lower_to_int import LowerToInt
from qcompiler.passes.manager import PassManager
from qcompiler.quant.policy import DEFAULT_POLICY, PLAIN, POLICIES, TFLITE_2_21, UnknownPolicyError, get_policy

# What each pass reports when a converter-emulation rule changed something.
EMULATION_COUNTERS = {"insert-fake-quant": {"shared-backwards"}, "calibrate": {"inplace-unions"},
                      "lower-to-int": {"propagated-backwards", "flt-min-floor", "bias-adjusted"}}
SEEDS = range(10)


# ----------------------------------------------------------------------------------------------------
# the policy objects
# ----------------------------------------------------------------------------------------------------
def test_two_named_policies_and_the_default():
    assert set(POLICIES) == {"tflite-2.21", "plain"} and DEFAULT_POLICY == "tflite-2.21"
    assert get_policy("plain") is PLAIN and get_policy(TFLITE_2_21) is TFLITE_2_21
    with pytest.raises(dataclasses.FrozenInstanceError):
        PLAIN.rsqrt = "tensorflow"  # type: ignore[misc]
    with pytest.raises(UnknownPolicyError, match="unknown quantization policy 'tflite'; choose one of tflite-2.21, "
                                                 "plain"):
        get_policy("tflite")


def test_plain_turns_every_emulation_rule_off():
    rules = [f.name for f in dataclasses.fields(PLAIN) if f.name not in ("name", "summary")]
    differing = [r for r in rules if getattr(PLAIN, r) != getattr(TFLITE_2_21, r)]
    # 16x8 propagation and its (absent) backward sharing are textbook in both
    assert sorted(differing) == sorted(set(rules) - {"propagation_i16", "backward_sharing_i16"})
    assert PLAIN.propagation("i8") == PLAIN.propagation("i16") == "forward"
    assert TFLITE_2_21.propagation("i8") == "mlir-driver" and TFLITE_2_21.shares_backwards("i8")


def test_passes_take_the_policy_as_an_option():
    text = "fold-batchnorm{policy=plain},insert-fake-quant{policy=plain},calibrate{data=x.npy,policy=plain}," \
           "lower-to-int{policy=plain}"
    passes = PassManager(text).passes
    assert [p.policy for p in passes] == ["plain"] * 4
    assert ",".join(str(p) for p in passes) == text
    with pytest.raises(Exception, match="option 'policy' of pass 'calibrate': expected one of tflite-2.21, plain"):
        PassManager("calibrate{data=x.npy,policy=exact}")


# ----------------------------------------------------------------------------------------------------
# generated models
# ----------------------------------------------------------------------------------------------------
def random_model(seed: int):
    """A small random CNN: conv/depthwise/batch-norm/pooling blocks joined by residual adds, concatenations and
    maxima (the ops whose quantization the policies treat differently), then a dense head."""
    import keras
    from keras import layers

    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3), name="image")
    x = layers.Conv2D(int(rng.integers(4, 9)), 3, padding="same", activation="relu", name="stem")(inputs)
    for i in range(int(rng.integers(3, 7))):
        kind = rng.choice(["conv", "depthwise", "bn", "residual", "concat", "maximum", "pool", "concat_input"])
        name = f"b{i}_{kind}"
        channels = x.shape[-1]
        if kind == "conv":
            x = layers.Conv2D(int(rng.integers(4, 12)), int(rng.choice([1, 3])), padding="same",
                              activation=str(rng.choice(["relu", "linear"])), name=name)(x)
        elif kind == "depthwise":
            x = layers.DepthwiseConv2D(3, padding="same", name=name)(x)
        elif kind == "bn":
            x = layers.BatchNormalization(name=name)(x)
        elif kind == "residual":
            branch = layers.Conv2D(channels, 1, name=f"{name}_conv")(x)
            x = layers.Add(name=name)([x, branch])
        elif kind == "concat":
            branch = layers.Conv2D(int(rng.integers(2, 6)), 3, padding="same", name=f"{name}_conv")(x)
            x = layers.Concatenate(name=name)([x, branch])
        elif kind == "maximum":
            branch = layers.Conv2D(channels, 1, name=f"{name}_conv")(x)
            x = layers.Maximum(name=name)([x, branch])
        elif kind == "pool":
            pool = layers.MaxPooling2D if rng.random() < 0.5 else layers.AveragePooling2D
            x = pool(2, padding="same", name=name)(x) if x.shape[1] > 3 else x
        else:  # the model input itself joins a concatenation
            resized = layers.Conv2D(3, 1, name=f"{name}_conv")(x) if x.shape[1] == 12 else None
            if resized is not None:
                x = layers.Concatenate(name=name)([resized, inputs])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(5, name="logits")(x)
    model = keras.Model(inputs, outputs, name=f"random_{seed}")
    for layer in model.layers:  # batch norms with real statistics, so folding has something to do
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
    return model


def _data(seed: int, n: int = 16) -> np.ndarray:
    return np.random.default_rng(100 + seed).uniform(-1, 1, (n, 12, 12, 3)).astype(np.float32)


def _fake_quant_and_lowered(model, data: np.ndarray, policy: str, activations: str = "i8"):
    """(calibrated fake-quant graph, the graph lower-to-int made of it, {pass name: counters})."""
    graph = qcompiler.float_graph(model, policy)
    manager = PassManager([InsertFakeQuant(activations=activations, policy=policy),
                           Calibrate(arrays=data, executor="numpy", policy=policy)])
    manager.run(graph)
    counters = {r.pass_.name: dict(r.result.counters) for r in manager.records}
    fake_quant = graph.clone()
    lower = PassManager([LowerToInt(io="float", policy=policy), DeadCodeElimination()])
    lower.run(graph)
    counters.update({r.pass_.name: dict(r.result.counters) for r in lower.records})
    return fake_quant, graph, counters


def _fired(counters: dict) -> dict:
    return {p: {k: v for k, v in c.items() if k in EMULATION_COUNTERS.get(p, ())} for p, c in counters.items()
            if any(k in EMULATION_COUNTERS.get(p, ()) for k in c)}


@pytest.mark.parametrize("seed,activations", [(s, "i8") for s in SEEDS] + [(s, "i16") for s in SEEDS[:3]])
def test_plain_lowering_computes_what_the_fake_quant_graph_does(seed: int, activations: str):
    model, data = random_model(seed), _data(seed)
    fake_quant, lowered, counters = _fake_quant_and_lowered(model, data, "plain", activations)
    assert _fired(counters) == {}, "plain must not emulate the converter"
    out = [n for n in fake_quant.find("fake_quant") if n.operands[0].name == "logits"][0].attrs
    # an int8 step of the output's range (int16 agrees to a few int16 steps per layer, far inside this)
    step = (max(out["max"], 0) - min(out["min"], 0)) / 255
    expected = interpreter.run(fake_quant, data)[0]
    got = interpreter.run(lowered, data)[0]
    # the same quantized model up to rounding: the integer interpreter runs TFLite's kernels (fixed-point
    # multipliers, int32 bias, pooling rounding, LUT softmax), which round each op's result once more than the
    # fake-quant simulation, never by more than a few steps
    assert np.max(np.abs(got - expected)) <= 3 * step + 1e-6
    assert np.mean(np.abs(got - expected) <= step + 1e-6) >= 0.75


def test_tflite_policy_rules_fire_on_the_same_models():
    """The converter's rules are not dead code: on these models tflite-2.21 shares concat/maximum parameters
    backwards and unites in-place ranges, and the fake-quant graph then no longer predicts the lowering."""
    fired = {}
    for seed in SEEDS:
        model, data = random_model(seed), _data(seed)
        _, _, counters = _fake_quant_and_lowered(model, data, "tflite-2.21")
        for name, values in _fired(counters).items():
            for key, value in values.items():
                fired[key] = fired.get(key, 0) + value
    assert fired.get("shared-backwards", 0) > 0 and fired.get("propagated-backwards", 0) > 0
    assert fired.get("inplace-unions", 0) > 0


def test_plain_bias_saturates_instead_of_widening_the_weights():
    """A channel with zero weights and a large bias: tflite-2.21 widens that weight scale (bias-adjusted),
    plain keeps scale = input * weight scale and saturates the int32 bias."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
    kernel, bias = model.layers[0].get_weights()
    kernel[:, 1] = 0.0
    bias[1] = 50.0
    model.layers[0].set_weights([kernel, bias])
    data = np.random.default_rng(0).uniform(-1, 1, (8, 4)).astype(np.float32)
    results = {}
    for policy in POLICIES:
        _, lowered, counters = _fake_quant_and_lowered(model, data, policy)
        fc = lowered.find("fully_connected")[0]
        results[policy] = (counters["lower-to-int"].get("bias-adjusted", 0), fc.operands[2].data[1])
    assert results["tflite-2.21"] == (1, 2**30)  # |b| / kBiasMax as the scale: 2^30 after float32 rounding
    assert results["plain"] == (0, 2**31 - 1)


def test_plain_folds_batch_norm_with_float32_rsqrt():
    model = random_model(3)
    plain = qcompiler.float_graph(model, "plain")
    portable = qcompiler.import_keras(model)
    qcompiler.run_passes(portable, qcompiler.pipeline_for("float32").replace("fold-batchnorm",
                                                                             "fold-batchnorm{rsqrt=f32}"))
    assert str(FoldBatchNorm(policy="plain")) == "fold-batchnorm{policy=plain}"
    for a, b in zip(plain.find("const"), portable.find("const")):
        np.testing.assert_array_equal(a.result.data, b.result.data)
