"""Keras model → qcompiler → float32 .tflite, checked against Keras in the TFLite interpreter."""
import numpy as np
import pytest

import qcompiler
from qcompiler.ir import interpreter
from qcompiler.ir.parser import parse
from qcompiler.ir.printer import print_graph
from tests.tflite_run import run_tflite
from tests.zoo import ZOO, random_batch

FAST = [name for name in ZOO if name != "mobilenet_v2_small"]


def _as_list(batch):
    return list(batch) if isinstance(batch, (list, tuple)) else [batch]


def _keras_outputs(model, xs):
    out = model(xs if len(xs) > 1 else xs[0], training=False)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


def _assert_close(got, want):
    for g, w in zip(got, want):
        err = np.max(np.abs(g.astype(np.float64) - w))
        assert err <= 1e-5 * np.max(np.abs(w)), f"max|err| {err:.3g} vs max|ref| {np.max(np.abs(w)):.3g}"


@pytest.mark.parametrize("name", FAST + [pytest.param("mobilenet_v2_small", marks=pytest.mark.slow)])
def test_float32_tflite_matches_keras(name):
    model = ZOO[name]()
    xs = _as_list(random_batch(model, 4, seed=1))
    data = qcompiler.compile(model, mode="float32")
    _assert_close(run_tflite(data, xs), _keras_outputs(model, xs))


@pytest.mark.parametrize("name", FAST)
def test_ir_interpreter_after_default_pipeline_matches_keras(name):
    model = ZOO[name]()
    xs = _as_list(random_batch(model, 3, seed=2))
    graph = qcompiler.import_keras(model)
    from qcompiler.passes.registry import DEFAULT_FLOAT_PIPELINE

    qcompiler.run_passes(graph, DEFAULT_FLOAT_PIPELINE)
    _assert_close(interpreter.run(graph, xs), _keras_outputs(model, xs))


@pytest.mark.parametrize("name", list(ZOO))
def test_dump_parse_round_trip(name):
    graph = qcompiler.import_keras(ZOO[name]())
    text = print_graph(graph)
    assert print_graph(parse(text)) == text


@pytest.mark.parametrize("name", ["seed_cnn", "residual_block"])
def test_compile_is_deterministic(name):
    model = ZOO[name]()
    assert qcompiler.compile(model) == qcompiler.compile(model)
