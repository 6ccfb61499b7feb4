"""Issue 11 items 3, 4, 6: the editable quantization plan (`qcompiler calibrate`, `compile --plan`), keep-float
layers as float islands, `--explain` reason codes, and `dump --format dot`."""
import json
import re
import shutil
import subprocess

import jsonschema
import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import qcompiler
from qcompiler.cli import main
from qcompiler.ir.ops import FIXED, OPS, SAME
from qcompiler.quant.explain import explain
from qcompiler.quant.plan import SCHEMA_PATH, PlanError, compile_plan, load_plan, make_plan
from tests.tflite_run import run_tflite


def _branchy_model(seed: int = 0) -> keras.Model:
    """conv -> (conv, identity) -> concat -> max-pool -> dense -> softmax: shared, fixed and own ranges."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    y = keras.layers.Conv2D(4, 3, padding="same", name="c2")(x)
    z = keras.layers.Concatenate(name="cat")([x, y])
    z = keras.layers.MaxPooling2D(name="pool")(z)
    z = keras.layers.Flatten(name="flat")(z)
    out = keras.layers.Dense(5, activation="softmax", name="d")(z)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan")
    model = _branchy_model()
    model.save(folder / "m.keras")
    calib = np.random.default_rng(0).normal(size=(24, 8, 8, 3)).astype(np.float32)
    np.save(folder / "calib.npy", calib)
    return folder, model, calib


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _plan_file(folder, capsys, *extra):
    out = folder / "plan.json"
    code, stdout, err = _run(["calibrate", folder / "m.keras", "--calibration", folder / "calib.npy", "-o", out,
                              *extra], capsys)
    assert code == 0, err
    return out, json.loads(out.read_text())


def _quant_of(tflite: bytes, name: str):
    interp = Interpreter(model_content=tflite)
    found = [d for d in interp.get_tensor_details() if d["name"] == name]
    assert found, f"no tensor {name}: {[d['name'] for d in interp.get_tensor_details()]}"
    return found[0]


def test_unedited_plan_compiles_to_the_same_bytes(files, tmp_path, capsys):
    folder, _, _ = files
    plan_path, plan = _plan_file(folder, capsys)
    jsonschema.validate(plan, json.loads(SCHEMA_PATH.read_text()))
    entry = next(t for t in plan["tensors"] if t["kind"] == "activation" and t["observer"] == "minmax")
    assert entry["samples"]["file"] == "calib.npy" and entry["samples"]["count"] == 24
    assert re.fullmatch("[0-9a-f]{64}", entry["samples"]["sha256"])
    assert {t["granularity"] for t in plan["tensors"] if t["kind"] == "weights"} == {"per-channel"}
    assert plan["options"]["observer"] == "minmax" and plan["policy"] == "tflite-2.21"
    direct, planned = tmp_path / "direct.tflite", tmp_path / "planned.tflite"
    assert _run(["compile", folder / "m.keras", "-o", direct, "--mode", "int8", "--calibration",
                 folder / "calib.npy"], capsys)[0] == 0
    assert _run(["compile", folder / "m.keras", "-o", planned, "--plan", plan_path], capsys)[0] == 0
    assert direct.read_bytes() == planned.read_bytes()


@pytest.mark.parametrize("mode,observer", [("int16x8", "minmax"), ("int8", "percentile")])
def test_unedited_plan_matches_other_modes_and_observers(files, mode, observer):
    folder, _, _ = files
    plan = make_plan(folder / "m.keras", folder / "calib.npy", mode, observer=observer, per_channel=False)
    direct = qcompiler.compile(str(folder / "m.keras"), mode, str(folder / "calib.npy"), observer=observer,
                               per_channel=False)
    assert compile_plan(str(folder / "m.keras"), json.loads(json.dumps(plan))) == direct


def test_edited_range_shows_in_the_tflite(files, tmp_path, capsys):
    folder, _, _ = files
    _, plan = _plan_file(folder, capsys)
    entry = next(t for t in plan["tensors"] if t["tensor"] == "cat")
    entry["range"] = [-1.5, 3.5]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(plan))
    out = tmp_path / "e.tflite"
    assert _run(["compile", folder / "m.keras", "-o", out, "--plan", edited], capsys)[0] == 0
    scale, zero_point = _quant_of(out.read_bytes(), "cat")["quantization"]
    assert scale == pytest.approx(5.0 / 255, rel=1e-6)
    assert zero_point == round(-128 + 1.5 / (5.0 / 255))


def test_keep_float_plan_entry_makes_a_float_island_that_runs(files, tmp_path, capsys):
    folder, model, calib = files
    _, plan = _plan_file(folder, capsys)
    plan["layers"]["c2"]["keep_float"] = True
    tflite = compile_plan(str(folder / "m.keras"), plan)
    assert _quant_of(tflite, "c2/kernel")["dtype"] == np.float32
    assert _quant_of(tflite, "c2")["dtype"] == np.float32
    ops = _op_names(tflite)
    assert "DEQUANTIZE" in ops and "QUANTIZE" in ops
    interp = Interpreter(model_content=tflite)
    detail = interp.get_input_details()[0]
    scale, zp = detail["quantization"]
    x = calib[:8]
    q = np.clip(np.round(x / scale + zp), -128, 127).astype(np.int8)
    out_detail = interp.get_output_details()[0]
    y = run_tflite(tflite, [q])[0]
    o_scale, o_zp = out_detail["quantization"]
    probs = (y.astype(np.float32) - o_zp) * o_scale
    assert np.abs(probs - model.predict(x, verbose=0)).max() < 0.05
    # --keep-float on the command line gives the same bytes as the plan entry
    cli = tmp_path / "k.tflite"
    assert _run(["compile", folder / "m.keras", "-o", cli, "--mode", "int8", "--calibration", folder / "calib.npy",
                 "--keep-float", "c2"], capsys)[0] == 0
    assert cli.read_bytes() == tflite


def _op_names(tflite: bytes) -> list[str]:
    interp = Interpreter(model_content=tflite)
    return [op["op_name"] for op in interp._get_ops_details()]


def test_plan_errors_name_the_entry(files, capsys, tmp_path):
    folder, _, _ = files
    _, plan = _plan_file(folder, capsys)
    index = next(i for i, t in enumerate(plan["tensors"]) if t["tensor"] == "cat")
    bad = json.loads(json.dumps(plan))
    bad["tensors"][index]["range"] = ["a", 1]
    with pytest.raises(PlanError, match=r"tensors\[%d\].*tensor 'cat'" % index):
        load_plan(bad)
    int16 = json.loads(json.dumps(plan))
    int16["tensors"][index].update(dtype="i16", bits=16)
    with pytest.raises(PlanError, match="tensor 'cat'.*mixed int8/int16 activations are not supported"):
        load_plan(int16)
    reversed_range = json.loads(json.dumps(plan))
    reversed_range["tensors"][index]["range"] = [2.0, 1.0]
    with pytest.raises(PlanError, match="tensor 'cat'.*min <= max"):
        load_plan(reversed_range)
    fixed = json.loads(json.dumps(plan))
    entry = next(t for t in fixed["tensors"] if t["observer"] == "fixed:softmax")
    entry["range"] = [0.0, 0.5]
    with pytest.raises(qcompiler.errors.QCompilerError, match="tensor 'd'.*softmax has the fixed range"):
        compile_plan(str(folder / "m.keras"), fixed)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(int16))
    code, _, err = _run(["compile", folder / "m.keras", "-o", tmp_path / "x.tflite", "--plan", path], capsys)
    assert code == 2 and "tensor 'cat'" in err and not (tmp_path / "x.tflite").exists()


def test_keep_float_unknown_layer_is_an_error(files):
    folder, _, _ = files
    with pytest.raises(qcompiler.errors.QCompilerError, match="no Keras layer 'nope'.*c1"):
        qcompiler.compile(str(folder / "m.keras"), "int8", str(folder / "calib.npy"), keep_float=["nope"])


def test_explain_reason_codes(files, tmp_path, capsys):
    folder, _, _ = files
    code, out, _ = _run(["compile", folder / "m.keras", "-o", tmp_path / "m.tflite", "--mode", "int8",
                         "--calibration", folder / "calib.npy", "--keep-float", "c2", "--explain"], capsys)
    assert code == 0
    assert "tensor %c1/conv2d (Keras layer 'c1'): shared-with-output:concat %cat" in out
    assert "fixed-range:softmax" in out
    assert re.search(r"tensor %pool .*shared-with-input:max_pool2d %cat", out)
    assert "float %c2 = conv2d (Keras layer 'c2'): keep-float:user" in out


def _random_model(rng: np.random.Generator) -> keras.Model:
    inp = keras.Input((6, 6, 3))
    x = inp
    for i in range(int(rng.integers(2, 5))):
        choice = rng.integers(0, 5)
        if choice == 0:
            x = keras.layers.Conv2D(int(rng.integers(2, 5)), 3, padding="same", name=f"conv{i}")(x)
        elif choice == 1:
            x = keras.layers.Activation(["sigmoid", "tanh", "relu"][rng.integers(0, 3)], name=f"act{i}")(x)
        elif choice == 2:
            y = keras.layers.Conv2D(x.shape[-1], 1, name=f"side{i}")(x)
            x = keras.layers.Concatenate(name=f"cat{i}")([x, y])
        elif choice == 3:
            x = keras.layers.MaxPooling2D(1, name=f"pool{i}")(x)
        else:
            x = keras.layers.Add(name=f"add{i}")([x, keras.layers.Conv2D(x.shape[-1], 1, name=f"res{i}")(x)])
    return keras.Model(inp, keras.layers.Softmax(name="out")(keras.layers.Flatten(name="flat")(x)))


@pytest.mark.parametrize("seed", range(4))
def test_explain_follows_the_op_table_on_random_models(seed):
    """Every op whose table rule is FIXED explains its output; every SAME op with one activation operand
    explains its result as shared with that operand; every kept-float layer is listed with keep-float:user."""
    rng = np.random.default_rng(seed)
    graph = qcompiler.float_graph(_random_model(rng))
    layers = sorted({n.layer for n in graph.nodes if n.layer and n.op not in ("const",)})
    keep = frozenset(rng.choice(layers, size=1))
    explained = explain(graph, "i8", keep_float=keep)
    reasons = {t["tensor"]: t["reason"] for t in explained["tensors"]}
    floats = {f["tensor"]: f["reason"] for f in explained["float_ops"]}
    for node in graph.nodes:
        rule = OPS[node.op].quant.output
        if node.layer in keep and node.op != "const":
            assert floats[node.result.name] == "keep-float:user"
            continue
        if rule == FIXED:
            assert reasons[node.result.name] == f"fixed-range:{node.op}"
        elif rule == SAME and sum(1 for v in node.operands if v.type.is_float and not v.is_constant) == 1:
            assert reasons[node.result.name].startswith(f"shared-with-input:{node.op} %")
        elif rule == SAME:  # concat: its operands take its parameters (tflite-2.21 int8 backward sharing)
            for operand in node.operands:
                producer = operand.producer
                if (producer is not None and producer.layer not in keep and producer.op != "const"
                        and OPS[producer.op].quant.output != SAME):
                    assert reasons.get(operand.name, "").startswith("shared-with-output:")


def test_dump_dot_structure_and_graphviz(files, tmp_path, capsys):
    folder, _, _ = files
    pipeline = qcompiler.pipeline_for("int8", str(folder / "calib.npy"))
    code, dot, err = _run(["dump", folder / "m.keras", "--format", "dot", "--pipeline", pipeline], capsys)
    assert code == 0, err
    graph = qcompiler.run_passes(qcompiler.import_keras(str(folder / "m.keras")), pipeline)
    ops = [n for n in graph.nodes if n.op != "const"]
    uses = sum(1 for n in ops for v in n.operands if not v.is_constant)
    assert len(re.findall(r"^  (?:n|in|out)\d+ \[", dot, re.M)) == len(ops) + len(graph.inputs) + len(graph.outputs)
    assert len(re.findall(r" -> ", dot)) == uses + len(graph.outputs)
    assert re.search(r'label="%cat\\ni8\[\?,8,8,8\] scale=[0-9.e-]+ zp=-?\d+"', dot)
    if shutil.which("dot") is None:
        pytest.skip("graphviz `dot` is not installed (apt-get install graphviz): structure checked only")
    done = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "<svg" in done.stdout


def test_explain_lists_ops_without_an_integer_kernel(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    x = keras.layers.Dense(4, name="num")(inp)
    y = keras.layers.Dense(4, activation="sigmoid", name="den")(inp)
    out = keras.layers.Dense(2, name="out")(keras.ops.divide(x, y + 1.0))
    model = keras.Model(inp, out)
    explained = explain(qcompiler.float_graph(model), "i8")
    reasons = [(f["op"], f["reason"]) for f in explained["float_ops"]]
    assert ("div", "no-integer-kernel") in reasons
    with pytest.warns(UserWarning, match="stay float"):
        tflite = qcompiler.compile(model, "int8", np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    assert "DIV" in _op_names(tflite) and "DEQUANTIZE" in _op_names(tflite)


def test_explain_lists_the_converters_float_ops():
    """tflite-2.21: ELU stays float (the converter never quantizes it) and so does a concat reading its output,
    which lost its range to the concat; plain keeps both in int8."""
    inp = keras.Input((4, 4, 2))
    e = keras.layers.ELU(name="elu")(keras.layers.Conv2D(3, 1, name="a")(inp))
    cat = keras.layers.Concatenate(name="cat")([e, keras.layers.Conv2D(3, 1, name="b")(inp)])
    model = keras.Model(inp, keras.layers.Conv2D(2, 1, name="out")(cat))
    graph = qcompiler.float_graph(model)
    reasons = {f["op"]: f["reason"] for f in explain(graph, "i8")["float_ops"]}
    assert reasons == {"elu": "converter-keeps-float", "concat": "float-operand %elu"}
    assert explain(graph, "i8", policy="plain")["float_ops"] == []


def test_cli_refusals_with_plan_and_explain(files, tmp_path, capsys):
    folder, _, _ = files
    plan_path, _ = _plan_file(folder, capsys)
    out = tmp_path / "x.tflite"
    code, _, err = _run(["compile", folder / "m.keras", "-o", out, "--plan", plan_path, "--mode", "int16x8"], capsys)
    assert code == 2 and "does not match the plan's mode int8" in err
    code, _, err = _run(["compile", folder / "m.keras", "-o", out, "--plan", plan_path, "--calibration",
                         folder / "calib.npy"], capsys)
    assert code == 2 and "--calibration cannot go with --plan" in err
    code, _, err = _run(["compile", folder / "m.keras", "-o", out, "--explain"], capsys)
    assert code == 2 and "--explain is for integer modes" in err
    assert not out.exists()


def test_plan_keeps_spare_ranges_for_keep_float_edits(files, capsys):
    """Keeping the concat float un-shares its operands: their own ranges come from the plan's spare entries."""
    folder, model, calib = files
    _, plan = _plan_file(folder, capsys)
    spare = {t["tensor"] for t in plan["tensors"] if t.get("spare")}
    assert {"c1/conv2d", "c2"} <= spare
    plan["layers"]["cat"]["keep_float"] = True
    tflite = compile_plan(str(folder / "m.keras"), plan)
    assert _quant_of(tflite, "cat")["dtype"] == np.float32
    entry = next(t for t in plan["tensors"] if t["tensor"] == "c2")
    scale, _ = _quant_of(tflite, "c2")["quantization"]
    lo, hi = min(entry["range"][0], 0.0), max(entry["range"][1], 0.0)
    assert scale == pytest.approx((hi - lo) / 255, rel=1e-5)
