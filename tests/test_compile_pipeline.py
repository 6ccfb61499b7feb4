"""What `compile` does is a pipeline string: `qcompiler.pipeline_for` / `qcompiler compile --print-pipeline` print
it, and running that string (`run_passes`, `qcompiler dump MODEL --pipeline ...`) gives the same IR and, written,
the same bytes. Calibration data in a pipeline string is a file."""
from __future__ import annotations

import numpy as np
import pytest

import qcompiler
from qcompiler.backend.tflite_writer import write_tflite
from qcompiler.cli import main
from qcompiler.ir.printer import print_graph
from tests.zoo import residual_block, two_input_concat


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    model = residual_block()
    model.save(folder / "model.keras")
    calib = np.random.default_rng(0).normal(size=(12, *model.input_shape[1:])).astype(np.float32)
    np.save(folder / "calib.npy", calib)
    return folder / "model.keras", folder / "calib.npy", calib


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("options", [{}, {"policy": "plain", "executor": "fast"}, {"io": "float", "observer": "mse"},
                                     {"per_channel": False, "batch_size": 5}])
def test_compile_runs_the_printed_pipeline(saved, options):
    model, calib_path, calib = saved
    pipeline = qcompiler.pipeline_for("int8", str(calib_path), **options)
    assert f"calibrate{{data={calib_path}," in pipeline and pipeline.endswith("dce")
    replayed = write_tflite(qcompiler.run_passes(qcompiler.import_keras(model), pipeline))
    assert qcompiler.compile(model, "int8", str(calib_path), **options) == replayed
    # in-memory arrays run the same passes, with the data handed over directly instead of by file
    assert qcompiler.compile(model, "int8", calib, **options) == replayed


@pytest.mark.parametrize("mode", ["float32", "dynamic", "float16", "int16x8"])
def test_every_mode_is_a_pipeline(saved, mode):
    model, calib_path, _ = saved
    calibration = str(calib_path) if mode == "int16x8" else None
    pipeline = qcompiler.pipeline_for(mode, calibration)
    replayed = write_tflite(qcompiler.run_passes(qcompiler.import_keras(model), pipeline))
    assert qcompiler.compile(model, mode, calibration) == replayed


def test_cli_print_pipeline_and_dump_reproduce_compile(saved, tmp_path, capsys):
    model, calib_path, _ = saved
    code, printed, _ = _run(["compile", str(model), "--mode", "int8", "--calibration", str(calib_path),
                             "--policy", "plain", "--print-pipeline"], capsys)
    assert code == 0
    pipeline = printed.strip()
    assert pipeline == qcompiler.pipeline_for("int8", str(calib_path), policy="plain")
    assert "insert-fake-quant{activations=i8,per_channel=true,policy=plain}" in pipeline
    assert "calibrate{" in pipeline and "executor=exact" in pipeline and "lower-to-int{io=int8" in pipeline
    code, dumped, _ = _run(["dump", str(model), "--pipeline", pipeline], capsys)
    assert code == 0
    assert dumped == print_graph(qcompiler.quantize(model, "int8", str(calib_path), policy="plain"))
    out = tmp_path / "m.tflite"
    code, _, _ = _run(["compile", str(model), "-o", str(out), "--mode", "int8", "--calibration", str(calib_path),
                       "--policy", "plain"], capsys)
    assert code == 0
    assert out.read_bytes() == write_tflite(qcompiler.run_passes(qcompiler.import_keras(model), pipeline))


def test_a_pipeline_names_calibration_data_by_file():
    with pytest.raises(qcompiler.QCompilerError, match="names its calibration data by file"):
        qcompiler.pipeline_for("int8", np.zeros((2, 4), np.float32))


def test_multi_input_calibration_file(tmp_path):
    model = two_input_concat()
    arrays = {v.name: np.random.default_rng(1).normal(size=(6, *v.shape[1:])).astype(np.float32)
              for v in model.inputs}
    np.savez(tmp_path / "calib.npz", **arrays)
    pipeline = qcompiler.pipeline_for("int8", str(tmp_path / "calib.npz"))
    replayed = write_tflite(qcompiler.run_passes(qcompiler.import_keras(model), pipeline))
    assert qcompiler.compile(model, "int8", arrays) == replayed


def test_compile_without_output_says_what_to_give(saved, capsys):
    model, _, _ = saved
    code, _, err = _run(["compile", str(model)], capsys)
    assert code == 2 and "compile needs an output file: -o MODEL.tflite" in err


def test_verify_each_is_a_debug_option_with_the_same_result():
    """compile verifies once after the last pass by default; verify_each=True verifies after every pass: the same
    bytes. A wrong type is a TypeError, not an unknown option."""
    model = residual_block()
    assert qcompiler.compile(model, verify_each=True) == qcompiler.compile(model)
    with pytest.raises(TypeError, match="verify_each must be True or False"):
        qcompiler.compile(model, verify_each="yes")
