"""Issue 9: no bad input gives a wrong model, a lost file or a traceback. One test (or more) per item."""
from __future__ import annotations

import io
import os
import resource
import stat
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import qcompiler
from qcompiler.cli import main
from qcompiler.errors import QCompilerError
from qcompiler.files import OutputPathError, atomic_write, check_output_path
from qcompiler.ir.checks import ConstantValueError, UnknownValuesError
from qcompiler.ir.parser import ParseError
from qcompiler.ir.printer import print_graph
from tests import fuzz_mutations as fm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, name="conv"),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.ReLU(name="relu"),
                              keras.layers.Flatten(name="flat"), keras.layers.Dense(4, name="dense")], name="tiny")
    path = tmp_path_factory.mktemp("m") / "tiny.keras"
    model.save(path)
    return path


def _cli(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code, err, context: int = 0):
    """The error line; `context`: how many indented lines may follow it (a parse error quotes its source line)."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 1 + context and lines[0].startswith("qcompiler: error: "), err
    assert all(line.startswith("  ") for line in lines[1:]), err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------------------------------
# 1-2. output paths
# ----------------------------------------------------------------------------------------------------
def test_output_that_is_the_model_is_refused(model_path, tmp_path, capsys):
    before = model_path.read_bytes()
    line = _one_line_error(*_cli(["compile", model_path, "-o", model_path], capsys)[::2])
    assert "is the input" in line and model_path.read_bytes() == before
    alias = tmp_path / "alias.keras"
    os.link(model_path, alias)  # a hard link is the same file under another name
    line = _one_line_error(*_cli(["compile", model_path, "-o", alias], capsys)[::2])
    assert "is the input" in line and model_path.read_bytes() == before


def test_output_that_is_the_calibration_file_is_refused(model_path, tmp_path, capsys):
    data = tmp_path / "calib.npy"
    np.save(data, np.zeros((2, 6, 6, 2), np.float32))
    before = data.read_bytes()
    code, _, err = _cli(["compile", model_path, "-o", data, "--mode", "int8", "--calibration", data], capsys)
    assert "is the input" in _one_line_error(code, err) and data.read_bytes() == before


def test_opt_output_that_is_its_input_is_refused(tmp_path, capsys):
    qir = tmp_path / "g.qir"
    qir.write_text(fm.ir_seeds()[0])
    code, _, err = _cli(["opt", qir, "-o", tmp_path / "." / "g.qir"], capsys)
    assert "is the input" in _one_line_error(code, err)


@pytest.mark.parametrize("kind", ["fifo", "symlink", "dangling-symlink", "directory", "chardev"])
def test_special_files_are_refused_and_left_alone(model_path, tmp_path, capsys, kind):
    target = tmp_path / "out.tflite"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        (tmp_path / "real.tflite").write_bytes(b"old")
        target.symlink_to(tmp_path / "real.tflite")
    elif kind == "dangling-symlink":
        target.symlink_to(tmp_path / "nowhere.tflite")
    elif kind == "directory":
        target.mkdir()
    else:
        try:
            os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null, but in tmp
        except PermissionError:
            pytest.skip("creating a device node needs root")
    mode = os.lstat(target).st_mode
    line = _one_line_error(*_cli(["compile", model_path, "-o", target], capsys)[::2])
    assert "regular files" in line
    assert os.lstat(target).st_mode == mode  # the node itself is untouched
    if kind == "symlink":
        assert (tmp_path / "real.tflite").read_bytes() == b"old"


@pytest.mark.parametrize("output, words", [("", "empty"), (".", "folder"), ("..", "folder"), ("sub/", "folder")])
def test_empty_and_folder_outputs_are_refused_clearly(model_path, capsys, output, words):
    line = _one_line_error(*_cli(["compile", model_path, "-o", output], capsys)[::2])
    assert words in line and "busy" not in line


def test_atomic_write_checks_again_just_before_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    real_chmod = os.chmod

    def chmod_then_plant_symlink(path, mode):  # something appears at the target while we write
        real_chmod(path, mode)
        if not target.exists():
            target.symlink_to(tmp_path)

    monkeypatch.setattr(os, "chmod", chmod_then_plant_symlink)
    with pytest.raises(OutputPathError, match="symbolic link"):
        atomic_write(target, b"data")
    assert target.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_check_output_path_types():
    with pytest.raises(TypeError):
        check_output_path(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        atomic_write("x", "text")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------
# 3. digest-only constants
# ----------------------------------------------------------------------------------------------------
def test_plain_dump_cannot_be_compiled_in_any_mode(model_path):
    text = print_graph(qcompiler.import_keras(model_path))  # no --full-constants: kernels are digests
    for mode, options in [("float32", {}), ("dynamic", {}), ("float16", {}), ("int8", {"default_ranges": (-6, 6)}),
                          ("int16x8", {"default_ranges": (-6, 6)})]:
        with pytest.raises(QCompilerError, match="--full-constants") as info:
            qcompiler.compile(qcompiler.parse_ir(text), mode=mode, **options)
        assert "conv" in str(info.value)


def test_digest_constants_do_not_become_int8_constants():
    text = fm.ir_seeds()[[p.name for p in sorted(fm.SEEDS.glob("*.qir"))].index("branchy-import.qir")]
    graph = qcompiler.parse_ir(text)
    with pytest.raises(QCompilerError, match="--full-constants"):
        qcompiler.run_passes(graph, "canonicalize,fold-batchnorm,insert-fake-quant,"
                                    "lower-to-int{default_ranges=[-6,6]}")


def test_digest_constant_of_37_gib_is_never_allocated():
    text = ("graph @big(%x: f32[1,100000]) {\n  %w = const f32[100000,100000] #abcdef\n"
            "  %y = fully_connected(%x, %w) : f32[1,100000]\n  return %y\n}\n")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); import qcompiler\n"
            "from qcompiler.backend.tflite_writer import write_tflite\n"
            f"text = {text!r}\n"
            "for step in ('insert-fake-quant,lower-to-int{default_ranges=[-6,6]}', 'fold-constants', "
            "'quantize-weights', 'weights-to-f16', 'write', 'interpret'):\n"
            "    g = qcompiler.parse_ir(text)\n"
            "    try:\n"
            "        if step == 'write': write_tflite(g)\n"
            "        elif step == 'interpret':\n"
            "            from qcompiler.ir import interpreter; interpreter.run(g, [__import__('numpy').zeros((1, 100000), 'f4')])\n"
            "        else: qcompiler.run_passes(g, step); write_tflite(g)\n"
            "        print(step, 'NO ERROR')\n"
            "    except qcompiler.QCompilerError as e: print(step, 'full-constants' in str(e))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    assert results == {k: "True" for k in ("insert-fake-quant,lower-to-int{default_ranges=[-6,6]}", "fold-constants",
                                           "quantize-weights", "weights-to-f16", "write", "interpret")}, done.stdout


def test_digest_constants_refuse_numpy_arithmetic():
    graph = qcompiler.parse_ir("graph @g(%x: f32[1,16]) {\n  %w = const f32[4,16] #abcdef\n"
                               "  %y = fully_connected(%x, %w) : f32[1,4]\n  return %y\n}\n")
    w = graph.value("w").data
    assert w.shape == (4, 16)
    for use in (lambda: w * 2, lambda: np.add(w, 1), lambda: w.tobytes(), lambda: np.sum(w), lambda: w.astype("f2")):
        with pytest.raises(QCompilerError, match="full-constants"):
            use()


def test_cli_compile_of_a_plain_dump_says_to_use_full_constants(model_path, tmp_path, capsys):
    assert main(["dump", str(model_path)]) == 0
    qir = tmp_path / "plain.qir"
    qir.write_text(capsys.readouterr().out)
    code, _, err = _cli(["opt", qir, "--pipeline",
                         "canonicalize,fold-batchnorm,insert-fake-quant,lower-to-int{default_ranges=[-6,6]}"], capsys)
    assert "--full-constants" in _one_line_error(code, err)


# ----------------------------------------------------------------------------------------------------
# 4. non-finite weights, invalid batch-norm statistics, huge calibration values
# ----------------------------------------------------------------------------------------------------
def _tiny_with(layer: str, index: int, value: float, model_path):
    model = keras.models.load_model(model_path)
    weights = model.get_layer(layer).get_weights()
    weights[index].flat[1] = value
    model.get_layer(layer).set_weights(weights)
    return model


@pytest.mark.parametrize("layer, index, value", [("conv", 0, np.nan), ("dense", 0, np.inf), ("dense", 1, -np.inf),
                                                 ("bn", 0, np.nan)])
def test_non_finite_weights_are_an_error_naming_the_layer(model_path, layer, index, value):
    model = _tiny_with(layer, index, value, model_path)
    for mode in ("float32", "dynamic", "float16"):
        with pytest.raises(ConstantValueError, match=f"Keras layer '{layer}'"):
            qcompiler.compile(model, mode=mode)


def test_negative_batch_norm_variance_is_an_error_naming_the_layer(model_path):
    model = _tiny_with("bn", 3, -0.25, model_path)
    with pytest.raises(ConstantValueError, match="Keras layer 'bn'.*variance is negative"):
        qcompiler.compile(model, mode="float32")


@pytest.mark.parametrize("constant", ["dense<[1.0, nan]>", "dense<[inf, 1.0]>", "dense<[1.0, 1e309]>"])
def test_hand_written_non_finite_constants_are_refused_at_their_line(constant):
    text = (f"graph @g(%x: f32[1,2]) {{\n  %c = const f32[2] {constant}  # layer scale\n"
            "  %y = mul(%x, %c) : f32[1,2]\n  return %y\n}\n")
    with pytest.raises(ParseError, match=r"line 2: constant %c of Keras layer 'scale' has 1 non-finite"):
        qcompiler.parse_ir(text)


def test_hand_written_negative_variance_is_refused_at_its_line():
    text = ("graph @g(%x: f32[1,2]) {\n  %g = const f32[2] dense<[1.0, 1.0]>\n  %b = const f32[2] dense<[0.0, 0.0]>\n"
            "  %v = const f32[2] dense<[1.0, -2.0]>\n"
            "  %y = batch_norm(%x, %g, %b, %b, %v) {epsilon=0.001} : f32[1,2]  # layer bn\n  return %y\n}\n")
    with pytest.raises(ParseError, match="line 5: Keras layer 'bn': moving variance is negative"):
        qcompiler.parse_ir(text)


def test_writer_refuses_non_finite_constants_built_through_the_api():
    from qcompiler.backend.tflite_writer import write_tflite
    from qcompiler.ir.graph import Graph
    from qcompiler.ir.types import TensorType

    g = Graph("g")
    x = g.add_input("x", TensorType((1, 2)))
    g.outputs = [g.op("add", x, g.const(np.array([1.0, np.nan], np.float32), "c", layer="bias"))]
    with pytest.raises(ConstantValueError, match="Keras layer 'bias'"):
        write_tflite(g)


@pytest.mark.parametrize("value", [3e38, -3e38])
def test_huge_calibration_values_get_a_true_message(model_path, value):
    data = np.full((2, 6, 6, 2), value, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            qcompiler.compile(str(model_path), mode="int8", calibration_data=data)
        except QCompilerError as err:
            assert "saw no calibration data" not in str(err)
            assert "overflows float32" in str(err) and "Keras layer" in str(err)


# ----------------------------------------------------------------------------------------------------
# 5. names and the text format
# ----------------------------------------------------------------------------------------------------
HOSTILE_NAMES = ['d\n  return %x\n}', 'a "quoted" name', "back\\slash", "# layer x", "tab\there", "  padded  ",
                 "ünïcødé ✓", "line\u2028separator", "x\x0by\x1cz\x85", '"', "}", "{x}", "#abc"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_layer_names_round_trip_exactly(name):
    from qcompiler.ir.graph import Graph
    from qcompiler.ir.types import TensorType

    g = Graph("g")
    x = g.add_input("x", TensorType((1, 4)))
    y = g.op("relu", x, layer=name)
    g.outputs = [g.op("add", y, x, layer=name + "2")]
    text = print_graph(g)
    back = qcompiler.parse_ir(text)
    assert [n.layer for n in back.nodes] == [name, name + "2"]
    assert [n.op for n in back.nodes] == ["relu", "add"] and print_graph(back) == text


def test_string_attributes_round_trip_exactly():
    from qcompiler.ir.printer import format_value
    from qcompiler.ir.parser import _Line, _parse_literal

    for value in ["same", 'quo"te', "new\nline", "back\\", "ünï", "\x00"]:
        line = _Line(f"{format_value(value)}", 1)
        assert _parse_literal(line) == value


@pytest.mark.parametrize("tail", ["junk\n", "}\n", "graph @h(%x: f32[1]) {\n", "  return %x\n"])
def test_text_after_the_closing_brace_is_refused(tail):
    text = "graph @g(%x: f32[1]) {\n  %y = relu(%x) : f32[1]\n  return %y\n}\n"
    assert qcompiler.parse_ir(text + "\n// a trailing comment is fine\n\n")
    with pytest.raises(ParseError, match="line 5: unexpected text after the closing"):
        qcompiler.parse_ir(text + tail)


def test_missing_closing_brace_is_refused():
    with pytest.raises(QCompilerError, match="closing"):
        qcompiler.parse_ir("graph @g(%x: f32[1]) {\n  return %x\n")


@pytest.mark.parametrize("line, words", [
    ("%q = const i8[1] q<1.0:1e309> dense<[1]>", "zero point"),
    ("%q = const i8[1] q<1e309:0> dense<[1]>", "finite"),
    ("%q = const i32[1] dense<[1e309]>", "non-integer"),
    ("%q = const i32[1] dense<[nan]>", "non-integer"),
    ("%q = const i8[1] dense<[300]>", "do not fit i8"),
    ("%q = const i32[2] dense<[1, [2]]>", "rectangular"),
    ("%q = const f32[99999999999] #abcdef", "too large"),
    ("%q = const i8[1] q<axis=1.5 [1.0]:[0]> dense<[1]>", "axis"),
    ("%q = relu(%x, %x, %x) : f32[1]", "operands"),
    ("%q, %r = relu(%x) : f32[1]", "results"),
])
def test_parse_errors_carry_the_line_number(line, words):
    text = f"graph @g(%x: f32[1]) {{\n  // comment\n  {line}\n  return %q\n}}\n"
    with pytest.raises(ParseError, match="^line 3: ") as info:
        qcompiler.parse_ir(text)
    assert words in str(info.value)


def test_unexpected_exceptions_while_building_a_node_become_line_numbered(monkeypatch):
    from qcompiler.ir import ops

    def broken(*args):
        raise ZeroDivisionError("integer division or modulo by zero")

    import dataclasses

    monkeypatch.setitem(ops.OPS, "relu", dataclasses.replace(ops.OPS["relu"], infer=broken))
    with pytest.raises(ParseError, match="^line 2: ZeroDivisionError") as info:
        qcompiler.parse_ir("graph @g(%x: f32[1]) {\n  %y = relu(%x) : f32[1]\n  return %y\n}\n")
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_non_utf8_qir_names_the_file(tmp_path, capsys):
    qir = tmp_path / "latin1.qir"
    qir.write_bytes(b"graph @g(%x: f32[1]) {\n  // caf\xe9\n  return %x\n}\n")
    line = _one_line_error(*_cli(["opt", qir], capsys)[::2])
    assert "latin1.qir: line 2: not UTF-8" in line


def test_opt_reads_standard_input_and_names_it_in_errors(monkeypatch, capsys):
    good = "graph @g(%x: f32[1]) {\n  %y = relu(%x) : f32[1]\n  return %y\n}\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(good.encode())))
    code, out, _ = _cli(["opt", "-"], capsys)
    assert code == 0 and out == good
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(good.encode() + b"junk\n")))
    line = _one_line_error(*_cli(["opt", "-"], capsys)[::2], context=1)
    assert "<stdin>: line 5: unexpected text after the closing" in line


def test_opt_parse_error_names_file_and_line(tmp_path, capsys):
    qir = tmp_path / "bad.qir"
    qir.write_text("graph @g(%x: f32[1,4,4,1]) {\n  %w = const f32[1,1,1,1] dense<[[[[1.0]]]]>\n"
                   "  %y = conv2d(%x, %w) {strides=[0, 0]} : f32[1,4,4,1]\n  return %y\n}\n")
    line = _one_line_error(*_cli(["opt", qir], capsys)[::2], context=1)
    assert "bad.qir: line 3: " in line and "strides" in line


# ----------------------------------------------------------------------------------------------------
# crashes: deep configs, lying .npy headers, API misuse
# ----------------------------------------------------------------------------------------------------
def test_config_nested_100000_deep_is_one_line(tmp_path, capsys):
    path = tmp_path / "deep.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "[" * 100_000 + "]" * 100_000)
    line = _one_line_error(*_cli(["compile", path, "-o", tmp_path / "o.tflite"], capsys)[::2])
    assert "deep.keras" in line and "nests 100000 levels" in line


def test_config_size_is_limited(tmp_path, monkeypatch):
    from qcompiler.frontend import keras as frontend

    monkeypatch.setattr(frontend, "MAX_CONFIG_BYTES", 1000)
    path = tmp_path / "big.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", '{"a": "' + "x" * 5000 + '"}')
    with pytest.raises(QCompilerError, match="big.keras.*more than"):
        qcompiler.import_keras(path)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_npy_header_claiming_16_tib_is_refused_without_allocating(model_path, tmp_path, capsys, suffix):
    path = tmp_path / f"claims{suffix}"
    header = fm.npy_header((2 ** 36, 8, 8, 1), payload=64)
    if suffix == ".npy":
        path.write_bytes(header)
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("input.npy", header)
    assert len(path.read_bytes()) < 400
    code, _, err = _cli(["compile", model_path, "-o", tmp_path / "o.tflite", "--mode", "int8",
                         "--calibration", path], capsys)
    line = _one_line_error(code, err)
    assert f"claims{suffix}" in line and "header claims shape [68719476736, 8, 8, 1]" in line


def test_pickled_calibration_data_is_refused(tmp_path):
    from qcompiler.passes.calibrate import load_calibration_data

    path = tmp_path / "pickle.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(QCompilerError, match="pickle"):
        load_calibration_data(path)


@pytest.mark.parametrize("call, error, words", [
    (lambda g: qcompiler.parse_ir(None), TypeError, "str"),
    (lambda g: qcompiler.parse_ir(b"graph @g() {"), TypeError, "decode"),
    (lambda g: qcompiler.run_passes(g, [42]), TypeError, "pipeline"),
    (lambda g: qcompiler.run_passes(g, None), TypeError, "pipeline"),
    (lambda g: qcompiler.run_passes(None, "dce"), TypeError, "Graph"),
    (lambda g: qcompiler.compile(g, "int8", observr="mse"), TypeError, "did you mean 'observer'"),
    (lambda g: qcompiler.compile(g, "int8", batch_size="8", default_ranges=(-6, 6)), TypeError, "batch_size"),
    (lambda g: qcompiler.compile(g, "int8", batch_size=0, default_ranges=(-6, 6)), QCompilerError, "batch_size"),
    (lambda g: qcompiler.compile(g, "int8", default_ranges="-6,6"), TypeError, "two numbers"),
    (lambda g: qcompiler.compile(g, "int8", default_ranges=(-6, float("nan"))), QCompilerError, "finite"),
    (lambda g: qcompiler.compile(g, "int8", observer=None, default_ranges=(-6, 6)), TypeError, "observer"),
    (lambda g: qcompiler.compile(g, "int8", observer="bogus", default_ranges=(-6, 6)), QCompilerError, "observer"),
    (lambda g: qcompiler.compile(g, "INT8"), QCompilerError, "did you mean 'int8'"),
    (lambda g: qcompiler.compile(None), TypeError, "keras.Model"),
    (lambda g: qcompiler.quantize(g, "int8", per_channel="yes", default_ranges=(-6, 6)), TypeError, "per_channel"),
    (lambda g: qcompiler.quantize(g, "int8", io=8, default_ranges=(-6, 6)), TypeError, "io"),
    (lambda g: qcompiler.calibration_statistics(g, np.zeros((1, 1)), batch_size=2.5), TypeError, "batch_size"),
])
def test_api_misuse_says_what_was_expected(call, error, words):
    graph = qcompiler.parse_ir("graph @g(%x: f32[?,4]) {\n  %y = relu(%x) : f32[?,4]\n  return %y\n}\n")
    with pytest.raises(error, match=words):
        call(graph)


# ----------------------------------------------------------------------------------------------------
# messages
# ----------------------------------------------------------------------------------------------------
def _run_cli(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "ABSL"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "qcompiler.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def test_no_tensorflow_log_lines_on_cli_paths(model_path, tmp_path):
    """`opt` with fold-batchnorm (TensorFlow's rsqrt) and with a .keras input used to print TF's start-up log."""
    qir = tmp_path / "tiny.qir"
    done = _run_cli("dump", model_path, "--full-constants")
    qir.write_text(done.stdout)
    runs = [done, _run_cli("opt", qir, "--pipeline", "fold-batchnorm,fuse-activations"),
            _run_cli("opt", model_path), _run_cli("compile", model_path, "-o", tmp_path / "t.tflite")]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert run.stderr == "", run.stderr


@pytest.mark.parametrize("flags, words", [
    (["--mode", "uint8", "--input-stats", "nan,1"], "finite"),
    (["--mode", "uint8", "--input-stats", "0,inf"], "finite"),
    (["--mode", "uint8", "--input-stats=0,-1", "--default-ranges=-1,1"], "STD must be positive"),
    (["--mode", "INT8"], "did you mean int8"),
    (["--mode", "int8", "--observer", "bogus", "--default-ranges=-6,6"], "--observer bogus"),
    (["--mode", "int8", "--default-ranges=1,6"], "must contain 0"),
    (["--mode", "int8", "--batch-size", "0", "--default-ranges=-6,6"], "--batch-size"),
    (["--mode", "int8", "--percentile", "120", "--observer", "percentile"], "--percentile"),
    (["--mode", "int8", "--io", "int16"], "--io int16"),
    (["--bogus-flag"], "unrecognized arguments"),
    (["--batch-size", "eight"], "invalid int value"),
])
def test_flag_values_are_checked_before_any_work(model_path, tmp_path, capsys, monkeypatch, flags, words):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the flags were checked")

    monkeypatch.setattr(qcompiler.api, "compile", no_work)
    monkeypatch.setattr(qcompiler.api, "import_keras", no_work)
    code, _, err = _cli(["compile", model_path, "-o", tmp_path / "o.tflite", *flags], capsys)
    line = _one_line_error(code, err)
    assert words in line, line
    assert "usage:" not in err


def test_argparse_errors_are_one_line(capsys):
    line = _one_line_error(*_cli(["compile", "m.keras", "--bogus"], capsys)[::2])
    assert "unrecognized arguments: --bogus" in line and "--help" in line
    line = _one_line_error(*_cli(["compile", "m.keras"], capsys)[::2])
    assert "-o MODEL.tflite" in line
    line = _one_line_error(*_cli(["nonsense"], capsys)[::2])
    assert "invalid choice" in line


def test_unregistered_custom_layer_gives_the_reason_first(tmp_path, capsys):
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2

    model = keras.Sequential([keras.Input((4,)), Doubler(name="double"), keras.layers.Dense(2)])
    path = tmp_path / "custom.keras"
    model.save(path)
    line = _one_line_error(*_cli(["compile", path, "-o", tmp_path / "o.tflite"], capsys)[::2])
    assert line.startswith("qcompiler: error: Keras layer 'double' (Doubler): is a custom class")
    assert "config" not in line and len(line) < 400


def test_keras_errors_do_not_dump_configs():
    from qcompiler.frontend.keras import _short

    message = "Could not locate class 'X'. Make sure ... Full object config: {'module': None, 'class_name': 'X'}"
    assert _short(message) == "Could not locate class 'X'. Make sure ..."
    assert len(_short("y" * 5000)) < 400


def test_lower_to_int_before_insert_fake_quant_is_refused(capsys, tmp_path):
    qir = tmp_path / "f.qir"
    qir.write_text("graph @g(%x: f32[?,4]) {\n  %y = relu(%x) : f32[?,4]\n  return %y\n}\n")
    line = _one_line_error(*_cli(["opt", qir, "--pipeline", "lower-to-int"], capsys)[::2])
    assert "insert-fake-quant" in line and "print-ir-after" not in line


@pytest.mark.parametrize("policy, widened", [("plain", True), ("tflite-2.21", False)])
def test_all_zero_calibration_warns_naming_tensor_and_layer(model_path, policy, widened):
    """Both policies warn; plain widens the range to a sane scale, tflite-2.21 keeps the converter's tiny one."""
    data = np.zeros((4, 6, 6, 2), np.float32)
    for mode in ("int8", "int16x8"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            graph = qcompiler.quantize(str(model_path), mode, calibration_data=data, policy=policy)
        messages = [str(w.message) for w in caught if "degenerate" in str(w.message)]
        assert any("%conv (Keras layer 'conv')" in m for m in messages), messages
        scales = [s for v in graph.values() if v.type.quant is not None and v.type.quant.axis is None
                  for s in v.type.quant.scale]
        assert (min(scales) > 1e-6) == widened, scales


def test_cli_prints_the_degenerate_range_warning(model_path, tmp_path, capsys):
    data = tmp_path / "zeros.npy"
    np.save(data, np.zeros((2, 6, 6, 2), np.float32))
    code, out, err = _cli(["compile", model_path, "-o", tmp_path / "z.tflite", "--mode", "int8",
                           "--calibration", data], capsys)
    assert code == 0 and "qcompiler: warning: tensor %conv (Keras layer 'conv'): calibration saw only" in err
