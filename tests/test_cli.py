"""The command line: happy paths and one clear error line (exit 2, nothing written) for bad input."""
import subprocess
import sys

import keras
import numpy as np
import pytest

from qcompiler.cli import main
from tests.tflite_run import run_tflite


@pytest.fixture(scope="module")
def small_model_path(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    path = tmp_path_factory.mktemp("models") / "small.keras"
    model.save(path)
    return path, model


def test_compile_writes_a_runnable_file(small_model_path, tmp_path, capsys):
    path, model = small_model_path
    out = tmp_path / "small.tflite"
    assert main(["compile", str(path), "-o", str(out)]) == 0
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 2)).astype(np.float32)
    got = run_tflite(out.read_bytes(), [x])[0]
    np.testing.assert_allclose(got, model(x), rtol=1e-5, atol=1e-5)
    assert "wrote" in capsys.readouterr().out


def test_dump_prints_ir_with_layer_names(small_model_path, capsys):
    path, _ = small_model_path
    assert main(["dump", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("graph @") and "conv2d(" in out and "# layer" in out


def _error_of(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_missing_model_file(tmp_path, capsys):
    code, err = _error_of(["compile", str(tmp_path / "nope.keras"), "-o", str(tmp_path / "o.tflite")], capsys)
    assert code == 2 and "nope.keras" in err and "Traceback" not in err
    assert not (tmp_path / "o.tflite").exists()


def test_corrupt_model_file(tmp_path, capsys):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"this is not a zip archive")
    code, err = _error_of(["compile", str(bad), "-o", str(tmp_path / "o.tflite")], capsys)
    assert code == 2 and "bad.keras" in err and len(err.strip().splitlines()) <= 3
    assert not (tmp_path / "o.tflite").exists()


def test_unknown_model_format(tmp_path, capsys):
    odd = tmp_path / "model.onnx"
    odd.write_bytes(b"\0")
    code, err = _error_of(["compile", str(odd), "-o", str(tmp_path / "o.tflite")], capsys)
    assert code == 2 and ".onnx" in err


def test_unwritable_output_path(small_model_path, tmp_path, capsys):
    path, _ = small_model_path
    code, err = _error_of(["compile", str(path), "-o", str(tmp_path / "no" / "such" / "dir" / "o.tflite")], capsys)
    assert code == 2 and "does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_unsupported_layer_names_layer_and_class(tmp_path, capsys):
    model = keras.Sequential([keras.Input((4, 3)), keras.layers.LSTM(2, name="my_lstm")])
    path = tmp_path / "lstm.keras"
    model.save(path)
    code, err = _error_of(["compile", str(path), "-o", str(tmp_path / "o.tflite")], capsys)
    assert code == 2 and "my_lstm" in err and "LSTM" in err
    assert not (tmp_path / "o.tflite").exists()


def test_opt_reads_and_writes_ir(tmp_path, capsys):
    qir = tmp_path / "g.qir"
    qir.write_text("graph @g(%x: f32[?,4]) {\n  %y = identity(%x) : f32[?,4]\n  %z = relu(%y) : f32[?,4]\n"
                   "  return %z\n}\n")
    assert main(["opt", str(qir), "--pipeline", "canonicalize"]) == 0
    out = capsys.readouterr().out
    assert "identity" not in out and "relu(%x)" in out


def test_bad_ir_points_at_the_line(tmp_path, capsys):
    qir = tmp_path / "g.qir"
    qir.write_text("graph @g(%x: f32[?,4]) {\n  %z = relu(%nope) : f32[?,4]\n  return %z\n}\n")
    code, err = _error_of(["opt", str(qir)], capsys)
    assert code == 2 and "line 2" in err and "%nope" in err


def test_subprocess_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "qcompiler.cli", "compile", str(tmp_path / "x.h5"), "-o",
                           str(tmp_path / "o.tflite")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("qcompiler: error:") and "Traceback" not in proc.stderr
