"""benchmarks/zoo.py: a model's row is measured in a process of its own, and a crash becomes a failure row.

Not timed: the assertions are on op counts, identity and errors, which do not depend on the machine's load.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from benchmarks import zoo
from benchmarks.zoo import (Recorder, Settings, StepCrash, compare_int8, grouped_failures, io_difference, markdown,
                            merge_documents, merge_rows, op_differences, percent, run_isolated, run_models,
                            run_tflite_isolated)

BUILDER = "tests.test_zoo_benchmark:"


def toy_classifier(size: int):
    """A small Functional CNN with randomized batch norm and a 10-class softmax head (the zoo's builder signature)."""
    import keras

    from tests.zoo import randomize_batchnorm

    keras.utils.set_random_seed(11)
    layers = keras.layers
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.Add(name="residual")([x, layers.Conv2D(8, 1, strides=2, name="skip")(inputs)])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(10, activation="softmax", name="head")(x)
    return randomize_batchnorm(keras.Model(inputs, outputs, name="toy_classifier"), seed=11)


def aborting_builder(size: int):
    """Dies like the reference int8 softmax did on 1000-class models."""
    os.abort()


def test_abort_becomes_a_failure_row(tmp_path):
    row = run_isolated(BUILDER + "aborting_builder", Settings(timeout=120), tmp_path)
    assert row["model"] == BUILDER + "aborting_builder"
    assert len(row["failures"]) == 1
    assert row["failures"][0].startswith("build: the model's process was killed by SIGABRT")
    assert "float32" not in row
    table = markdown([row], _header(), Settings(), jobs=1)
    assert "| tests.test_zoo_benchmark:aborting_builder | build: the model's process was killed by SIGABRT" in table


def test_interpreter_failure_is_a_step_crash(tmp_path):
    model, inputs = tmp_path / "broken.tflite", tmp_path / "inputs.npy"
    model.write_bytes(b"not a flatbuffer")
    np.save(inputs, np.zeros((1, 4), np.float32))
    with pytest.raises(StepCrash, match="^the BUILTIN_REF interpreter exited with code 1: .*"):
        run_tflite_isolated(model, inputs, timeout=120)


@pytest.mark.slow  # a process that imports TensorFlow and runs the converter 6 times: ~30 s on an idle 2-core machine
def test_toy_model_row(tmp_path):
    settings = Settings(size=16, samples=8, eval_samples=4, latency_runs=1, latency_processes=2, timeout=600,
                        warm_up=False, compile_repeats=2)
    row = run_isolated(BUILDER + "toy_classifier", settings, tmp_path)
    assert row["failures"] == [], row["failures"]
    assert row["step"] == "done"
    assert row["input"] == [16, 16, 3]

    float32 = row["float32"]
    for tool in ("qcompiler", "converter"):
        assert float32[tool]["max_error_rel"] < 1e-5
        assert float32[tool]["bytes"] > 0 and float32[tool]["seconds"] > 0 and float32[tool]["latency_ms"] > 0
        assert len(float32[tool]["seconds_each"]) == 2  # compile_repeats: the median of both is shown
        assert len(float32[tool]["latency_processes_ms"]) == 2
    assert float32["latency_ratio"] > 0
    assert float32["qcompiler"]["ops"] == float32["converter"]["ops"]
    assert float32["qcompiler"]["op_types"] == float32["converter"]["op_types"]

    logits = row["logits"]
    assert logits["values"] == 4 * 10
    assert logits["qcompiler_fast"]["seconds"] > 0 and logits["qcompiler_fast"]["bytes"] > 0  # timed only
    assert logits["identical_pct"] == 100.0 and logits["max_lsb"] == 0
    assert logits["qcompiler"]["op_types"] == logits["converter"]["op_types"]
    ours, theirs = logits["io"]["qcompiler"], logits["io"]["converter"]
    assert [(dtype, zero_point) for dtype, _, zero_point in ours] == [(d, z) for d, _, z in theirs]
    assert [dtype for dtype, _, _ in ours] == ["int8", "int8"]
    assert ours[0] == theirs[0]  # the input's range is the calibration data's, bit for bit
    assert ours[1][1] == pytest.approx(theirs[1][1], rel=1e-6)  # the default executor may be an ulp off
    assert logits["io_equal"] == (ours == theirs) and logits["io_equal"] == (logits["io_difference"] == "")

    outputs = row["outputs"]  # the softmax model: one op more, fixed output quantization (1/256, -128)
    for tool in ("qcompiler", "converter"):
        assert outputs[tool]["op_types"] == dict(logits[tool]["op_types"], SOFTMAX=1)
        assert outputs["io"][tool][1] == ["int8", 1 / 256, -128]
    assert outputs["values"] == 4 * 10 and outputs["max_lsb"] <= 1

    table = markdown([row], _header(), settings, jobs=1)
    assert "| tests.test_zoo_benchmark:toy_classifier | logits |" in table
    assert "100.00% | 0 |" in table
    assert "## Failures" not in table


def test_report_helpers():
    assert percent(100.0) == "100.00%" and percent(99.999) == "99.99%" and percent(0.001) == "0.01%"
    entry = {"qcompiler": {"op_types": {"RELU": 112, "SLICE": 2, "ADD": 3}},
             "converter": {"op_types": {"RELU": 48, "STRIDED_SLICE": 2, "ADD": 3}}}
    assert op_differences(entry) == "RELU 112 vs 48, SLICE 2 vs 0, STRIDED_SLICE 0 vs 2"
    assert op_differences({"qcompiler": {}}) == ""
    scale = 0.0025790734216570854
    next_up = float(np.nextafter(np.float32(scale), np.float32(1)))
    ours = [["int8", 0.5, 3], ["int8", scale, -18]]
    assert io_difference(ours, ours) == ""
    assert io_difference(ours, [["int8", 0.5, 3], ["int8", next_up, -18]]) == "output 0: scale 1 ulp"
    assert io_difference(ours, [["int8", 0.5, 2], ["int8", scale, -18]]) == "input 0: zero point 3 vs 2"
    assert grouped_failures(["build: x", "float32: qcompiler compile: E", "logits: qcompiler compile: E"]) == [
        "build: x", "float32/logits: qcompiler compile: E"]
    assert [r["model"] for r in merge_rows([{"model": "b"}], [{"model": "a"}, {"model": "c"}])] == ["a", "b", "c"]

    def document(date, modes, rows):
        settings = dict(vars(Settings()), modes=list(modes))
        return {"header": dict(_header(), date=date, commit="c" + date[-1]), "settings": settings, "jobs": 1,
                "rows": rows}
    merged = merge_documents([document("d1", ["float32"], [{"model": "a", "n": 1}, {"model": "b", "n": 1}]),
                              document("d2", ["logits"], [{"model": "a", "n": 2}])])
    assert [(r["model"], r["n"], r["commit"]) for r in merged["rows"]] == [("a", 2, "c2"), ("b", 1, "c1")]
    assert merged["settings"]["modes"] == ["float32", "logits"] and merged["header"]["date"] == "d1 to d2"
    with pytest.raises(SystemExit, match="different settings \\(samples\\)"):
        other = document("d3", ["float32"], [])
        other["settings"]["samples"] = 5
        merge_documents([other, document("d4", ["float32"], [])])


def test_latency_in_processes_alternates_the_load_order_and_takes_medians(monkeypatch, tmp_path):
    """Each process's figures go back to their model whatever the load order; the ratio is the median of the
    per-process ratios, not the ratio of the medians."""
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    cpu = {a: iter([10.0, 12.0, 11.0]), b: iter([10.0, 10.0, 12.0])}  # per process: ratios 1.0, 1.2, 11/12
    orders = []

    def fake(paths, inputs_path, runs, timeout=1200.0):
        orders.append(paths)
        times = [next(cpu[path]) for path in paths]
        return {"cpu": times, "wall": [2 * t for t in times]}

    monkeypatch.setattr(zoo, "latency_isolated", fake)
    result = zoo.latency_in_processes([a, b], tmp_path / "x.npy", runs=1, processes=3)
    assert orders == [[a, b], [b, a], [a, b]]
    assert result["cpu_processes"] == [[10.0, 12.0, 11.0], [10.0, 10.0, 12.0]]
    assert result["cpu"] == [11.0, 10.0] and result["wall"] == [22.0, 20.0]
    assert result["cpu_ratio"] == 1.0
    entry = {"qcompiler": {"latency_ms": 11.0}, "converter": {"latency_ms": 10.0}}
    assert zoo._latency_ratio(entry) == 1.1
    assert zoo._latency_ratio(dict(entry, latency_ratio=result["cpu_ratio"])) == 1.0


@pytest.mark.parametrize("head", ["dense", "activation"])
def test_logits_model_is_the_softmax_input(head):
    import keras

    from tests.zoo import logits_model

    inputs = keras.Input((6,))
    if head == "dense":
        outputs = keras.layers.Dense(5, activation="softmax")(inputs)
    else:
        outputs = keras.layers.Activation("softmax")(keras.layers.Dense(5)(inputs))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    logits = np.asarray(logits_model(model)(x))
    assert np.allclose(np.asarray(keras.activations.softmax(logits)), np.asarray(model(x)), atol=1e-6)
    assert not np.allclose(logits.sum(-1), 1.0)


def test_logits_model_refuses_other_heads():
    import keras

    from tests.zoo import logits_model

    inputs = keras.Input((6,))
    with pytest.raises(ValueError, match="does not end in a softmax .* class Dense"):
        logits_model(keras.Model(inputs, keras.layers.Dense(5, activation="relu", name="head")(inputs)))


def test_reference_softmax_abort_falls_back_to_default_kernels(tmp_path):
    """A near-uniform int8 softmax over 1000 classes (sum of exponentials >= 512) stops the BUILTIN_REF process;
    both tools' models then run with the default kernels and the row says so instead of failing."""
    import keras

    import qcompiler

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    head = keras.layers.Dense(1000, activation="softmax",
                              kernel_initializer=keras.initializers.RandomNormal(stddev=1e-3))
    model = keras.Model(inputs, head(inputs))
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    data = qcompiler.compile(model, mode="int8", calibration_data=x)
    for tool in ("qcompiler", "converter"):  # the same model twice: only the run is under test
        (tmp_path / f"outputs-{tool}.tflite").write_bytes(data)
    np.save(tmp_path / "inputs.npy", x[:2])
    rec = Recorder({"model": "uniform", "failures": [], "step": "start", "step_seconds": {}}, tmp_path / "row.json")
    entry: dict = {"qcompiler": {}, "converter": {}}
    outputs: dict = {}
    io: dict = {}
    run_models(rec, "outputs", ["qcompiler", "converter"], entry, tmp_path, tmp_path / "inputs.npy", outputs, io)
    assert rec.row["failures"] == []
    assert entry["kernels"] == "default"
    assert all("killed by SIGABRT" in entry["reference_crash"][tool] for tool in ("qcompiler", "converter"))
    assert entry["qcompiler"]["ops"] == 2 and outputs["qcompiler"][0].shape == (2, 1000)
    entry.update(compare_int8(outputs["qcompiler"], outputs["converter"]), io_equal=True, io_difference="", io=io)
    assert entry["identical_pct"] == 100.0
    row = dict(rec.row, outputs=entry, step="done")
    table = markdown([row], _header(), Settings(modes=("outputs",)), jobs=1)
    assert "| uniform | outputs |" in table and "100.00% †" in table
    assert "## BUILTIN_REF aborts" in table and "| uniform | outputs | qcompiler | the BUILTIN_REF interpreter" in table


def _header() -> dict:
    return {"date": "2026-11-30 00:00 UTC", "commit": "test", "cpus": 2, "cpu": "cpu", "system": "Linux",
            "python": "3", "tensorflow": "2", "keras": "3", "ai_edge_litert": "2"}


if __name__ == "__main__":
    pytest.main([__file__])


def _deep_residual(depth: int):
    """`depth` conv -> batch norm -> swish blocks with residual additions, as EfficientNet stacks them."""
    import keras

    keras.utils.set_random_seed(5)
    layers = keras.layers
    inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(16, 1)(inputs)
    for i in range(depth):
        y = layers.BatchNormalization(name=f"bn{i}")(layers.Conv2D(16, 3, padding="same")(x))
        x = layers.Add()([x, layers.Activation("swish")(y)])
    return keras.Model(inputs, layers.GlobalAveragePooling2D()(x))


def test_batchnorm_from_data_normalizes_each_layer_on_its_inputs():
    """Every batch norm, in inference mode on the data it was set from, outputs per channel mean beta and standard
    deviation gamma * sqrt(v / (v + 1 + eps)) for its input's variance v (its moving statistics are measured on its
    input with the earlier layers' statistics final); the activations of a deep residual stack stay O(1), where
    randomize_batchnorm's grow with depth."""
    import keras

    from tests.zoo import batchnorm_from_data, randomize_batchnorm

    x = np.random.default_rng(0).standard_normal((8, 8, 8, 4)).astype(np.float32)
    model = batchnorm_from_data(_deep_residual(12), x, seed=3)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    outputs = keras.Model(model.input, [layer.output for layer in norms])(x, training=False)
    for layer, y in zip(norms, outputs):
        y = np.asarray(y, np.float64).reshape(-1, y.shape[-1])
        gamma, beta = np.asarray(layer.gamma), np.asarray(layer.beta)
        np.testing.assert_allclose(y.mean(0), beta, atol=2e-3, err_msg=layer.name)
        variance = np.asarray(layer.moving_variance, np.float64) - 1.0  # the input's variance
        np.testing.assert_allclose(y.std(0), np.abs(gamma) * np.sqrt(variance / (variance + 1.0 + layer.epsilon)),
                                   rtol=2e-3, atol=1e-3, err_msg=layer.name)
    data_scale = float(np.abs(model(x)).max())
    random_scale = float(np.abs(randomize_batchnorm(_deep_residual(12), seed=3)(x)).max())
    print(f"max |output|: {data_scale:.3g} (statistics from the data), {random_scale:.3g} (random statistics)")
    assert data_scale < 10 < random_scale, (data_scale, random_scale)
