"""`qcompiler compile --mode ...` with calibration data: happy paths and clear errors with nothing written."""
import numpy as np
import pytest

from qcompiler.cli import main
from tests.tflite_run import run_tflite
from tests.zoo import seed_mlp


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quant")
    model = seed_mlp()
    path = folder / "mlp.keras"
    model.save(path)
    calib = np.random.default_rng(0).normal(size=(40, *model.input_shape[1:])).astype(np.float32)
    np.save(folder / "calib.npy", calib)
    return path, folder, model, calib


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_int8_compile_runs_and_tracks_keras(mlp, tmp_path, capsys):
    path, folder, model, calib = mlp
    out = tmp_path / "m.tflite"
    code, stdout, _ = _run(["compile", str(path), "-o", str(out), "--mode", "int8",
                            "--calibration", str(folder / "calib.npy")], capsys)
    assert code == 0 and "int8" in stdout
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_content=out.read_bytes()).get_input_details()[0]
    assert detail["dtype"] == np.int8
    scale, zero_point = detail["quantization"]
    x = calib[:8]
    q = np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)
    y = run_tflite(out.read_bytes(), [q])[0]
    out_detail = Interpreter(model_content=out.read_bytes()).get_output_details()[0]
    o_scale, o_zero = out_detail["quantization"]
    probs = (y.astype(np.float32) - o_zero) * o_scale
    np.testing.assert_allclose(probs, np.asarray(model(x)), atol=0.05)


def test_float_io_takes_float_inputs(mlp, tmp_path, capsys):
    path, folder, model, calib = mlp
    out = tmp_path / "m.tflite"
    code, _, _ = _run(["compile", str(path), "-o", str(out), "--mode", "int8", "--io", "float",
                       "--calibration", str(folder / "calib.npy")], capsys)
    assert code == 0
    y = run_tflite(out.read_bytes(), [calib[:4]])[0]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, np.asarray(model(calib[:4])), atol=0.05)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 3, 3), np.float32), "shape"),
    (np.zeros((0, 8, 8), np.float32), "empty"),
    (np.array([["a"]]), "dtype"),
])
def test_bad_calibration_data_is_refused(mlp, tmp_path, capsys, bad, message):
    path, *_ = mlp
    data = tmp_path / "bad.npy"
    np.save(data, bad)
    out = tmp_path / "m.tflite"
    code, _, err = _run(["compile", str(path), "-o", str(out), "--mode", "int8", "--calibration", str(data)], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_calibration_data_is_refused(mlp, tmp_path, capsys, value):
    path, folder, model, calib = mlp
    bad = calib[:5].copy()
    bad[2, 0, 0] = value
    data = tmp_path / "bad.npy"
    np.save(data, bad)
    code, _, err = _run(["compile", str(path), "-o", str(tmp_path / "m.tflite"), "--mode", "int8",
                         "--calibration", str(data)], capsys)
    assert code == 2 and "non-finite" in err and "sample 2" in err


def test_missing_calibration_file_and_unknown_format(mlp, tmp_path, capsys):
    path, *_ = mlp
    code, _, err = _run(["compile", str(path), "-o", str(tmp_path / "m.tflite"), "--mode", "int8",
                         "--calibration", str(tmp_path / "nope.npy")], capsys)
    assert code == 2 and "nope.npy" in err
    (tmp_path / "data.csv").write_text("1,2,3")
    code, _, err = _run(["compile", str(path), "-o", str(tmp_path / "m.tflite"), "--mode", "int8",
                         "--calibration", str(tmp_path / "data.csv")], capsys)
    assert code == 2 and ".npy or .npz" in err


def test_no_calibration_says_how_to_fix(mlp, tmp_path, capsys):
    path, *_ = mlp
    code, _, err = _run(["compile", str(path), "-o", str(tmp_path / "m.tflite"), "--mode", "int8"], capsys)
    assert code == 2 and "--calibration" in err and "--default-ranges" in err


def test_default_ranges_warn_per_tensor(mlp, tmp_path, capsys):
    path, *_ = mlp
    out = tmp_path / "m.tflite"
    code, _, err = _run(["compile", str(path), "-o", str(out), "--mode", "int8", "--default-ranges=-4,4"], capsys)
    assert code == 0 and out.exists()
    assert "warning" in err and "hidden" in err and "(model input)" in err


def test_quant_flags_refused_in_float_mode(mlp, tmp_path, capsys):
    path, folder, *_ = mlp
    code, _, err = _run(["compile", str(path), "-o", str(tmp_path / "m.tflite"),
                         "--calibration", str(folder / "calib.npy")], capsys)
    assert code == 2 and "--calibration" in err


def test_io_must_fit_the_mode(mlp, tmp_path, capsys):
    path, folder, *_ = mlp
    code, _, err = _run(["compile", str(path), "-o", str(tmp_path / "m.tflite"), "--mode", "int8", "--io", "int16",
                         "--calibration", str(folder / "calib.npy")], capsys)
    assert code == 2 and "--io int16" in err
