"""Per-layer quantization error report: rows per quantized tensor, numbers that agree with the real int8 model."""
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import qcompiler
from qcompiler.cli import main
from tests.tflite_run import run_tflite
from tests.zoo import ZOO, random_batch

SCHEMA = json.loads((Path(__file__).parents[1] / "schemas" / "layer-report.schema.json").read_text())


def _snr(reference, other):
    reference = np.asarray(reference, np.float64)
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((np.asarray(other, np.float64) - reference) ** 2))


@pytest.fixture(scope="module")
def residual():
    model = ZOO["residual_block"]()
    calibration = random_batch(model, 32, seed=1)
    evaluation = random_batch(model, 24, seed=2)
    return model, calibration, evaluation, qcompiler.layer_report(model, calibration, evaluation)


def test_one_row_per_quantized_tensor_in_graph_order(residual):
    _, _, _, report = residual
    assert [t.tensor for t in report.tensors] == ["features", "conv_a", "conv_b", "residual", "gap", "head"]
    assert report.tensors[1].layer == "conv_a" and report.tensors[0].op == "input"
    assert report.samples == 24
    for row in report.tensors:
        assert 20 < row.snr_db < 80 and 0.99 < row.cosine <= 1 and row.mse > 0


def _float_reference(model, data):
    from qcompiler.ir.interpreter import run

    return run(qcompiler.float_graph(model), [data])


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_output_snr_is_the_real_tflite_models(residual, mode):
    """The report's output SNR is that of the compiled .tflite run in BUILTIN_REF (same float reference): the
    integer interpreter is bit-exact, so the two agree to rounding of the SNR arithmetic."""
    model, calibration, evaluation, report = residual
    if mode != "int8":
        report = qcompiler.layer_report(model, calibration, evaluation, mode=mode)
    assert report.simulated_ops == () and json.loads(report.to_json())["simulator"] == "integer-interpreter"
    tflite = qcompiler.compile(model, mode=mode, calibration_data=calibration, io="float")
    real = run_tflite(tflite, [evaluation])[0]
    reference = _float_reference(model, evaluation)[0]
    assert abs(_snr(reference, real) - report.output_snr_db) < 1e-9, (_snr(reference, real), report.output_snr_db)
    keras_snr = _snr(np.asarray(model(evaluation)), real)  # the IR's float graph is Keras within float rounding
    assert abs(keras_snr - report.output_snr_db) < 0.01


def test_html_report_numbers_are_the_real_tflite_models(residual):
    """`qcompiler report -o`: the lowered graph it measures, written and run in BUILTIN_REF, gives the outputs the
    report used, bit for bit (dequantized float outputs)."""
    from qcompiler.backend.tflite_writer import write_tflite
    from qcompiler.validate.html_report import build_report

    model, calibration, evaluation, _ = residual
    report = build_report(model, calibration, evaluation, mode="int8")
    assert report["simulator"] == "integer-interpreter" and report["simulated_ops"] == []
    real = run_tflite(write_tflite(report["_graph"]), [evaluation])
    for ours, theirs in zip(report["_outputs"], real):
        np.testing.assert_array_equal(ours, theirs)
    reference = _float_reference(model, evaluation)[0]
    assert abs(_snr(reference, real[0]) - report["output_snr_db"]) < 1e-9


def test_clipping_observer_shows_clipped_values():
    model = ZOO["seed_mlp"]()
    data = random_batch(model, 64, seed=3)
    clipped = qcompiler.layer_report(model, data, observer="percentile", observer_options={"percentile": 90.0})
    exact = qcompiler.layer_report(model, data)
    assert max(t.clipped_fraction for t in clipped.tensors) > 0.02
    # minmax ranges cover the data they came from, up to the half step lost when the zero point is rounded
    assert all(t.clipped_fraction < 0.005 for t in exact.tensors)


def test_json_follows_the_schema(residual):
    jsonschema.validate(json.loads(residual[3].to_json()), SCHEMA)


def test_cli_report_prints_a_table_and_writes_json(tmp_path, capsys):
    model = ZOO["seed_mlp"]()
    model_path = tmp_path / "mlp.keras"
    model.save(model_path)
    np.save(tmp_path / "calib.npy", random_batch(model, 16, seed=4))
    out = tmp_path / "report.json"
    assert main(["report", str(model_path), "--calibration", str(tmp_path / "calib.npy"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "hidden" in text and "output SNR" in text
    jsonschema.validate(json.loads(out.read_text()), SCHEMA)


def test_cli_report_bad_data_is_one_line(tmp_path, capsys):
    model = ZOO["seed_mlp"]()
    model_path = tmp_path / "mlp.keras"
    model.save(model_path)
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), np.float32))
    assert main(["report", str(model_path), "--calibration", str(tmp_path / "bad.npy")]) == 2
    assert "shape" in capsys.readouterr().err
