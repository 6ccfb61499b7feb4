"""`qcompiler compare`: identical models are 100% identical; a weight moved by one LSB is found and named."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qcompiler import api
from qcompiler.backend.tflite_writer import write_tflite
from qcompiler.cli import main
from qcompiler.ir.printer import print_graph
from qcompiler.validate.compare import CompareError, compare_files
from tests import zoo


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """seed_mlp in int8 as .qir and .tflite, and the same with one weight moved by one LSB."""
    tmp = tmp_path_factory.mktemp("compare")
    model = zoo.seed_mlp()
    graph = api.quantize(model, "int8", zoo.random_batch(model, 32, 0))
    paths = {"a.qir": print_graph(graph, full_constants=True).encode(), "a.tflite": write_tflite(graph)}
    weights = next(n for n in graph.nodes if n.op == "const" and n.result.type.dtype == "i8"
                   and n.result.uses and n.result.uses[0].node.op == "fully_connected")
    values = np.array(weights.attrs["value"], order="C")  # a copy whose reshape(-1) is a view (kernels may be
    flat = values.reshape(-1)                               # lazily transposed: qcompiler/ir/layout.py)
    flat[7] = flat[7] + 1 if flat[7] < 127 else flat[7] - 1
    values.setflags(write=False)
    weights.attrs["value"] = values
    paths.update({"b.qir": print_graph(graph, full_constants=True).encode(), "b.tflite": write_tflite(graph)})
    out = {}
    for name, data in paths.items():
        (tmp / name).write_bytes(data)
        out[name] = tmp / name
    out["weight"] = weights.result.name
    return out


def test_a_graph_and_the_tflite_written_from_it_are_identical_tensor_by_tensor(models) -> None:
    result = compare_files(str(models["a.qir"]), str(models["a.tflite"]))
    assert result.first_divergence is None and result.within_tolerance
    assert len(result.tensors) >= 6  # inputs, weights, biases and every intermediate align by name
    assert all(d.identical == 1.0 and d.max_abs == 0 for d in result.tensors + result.outputs)


@pytest.mark.parametrize("a,b", [("a.qir", "b.qir"), ("a.tflite", "b.tflite"), ("a.qir", "b.tflite")])
def test_one_lsb_in_one_weight_is_the_first_divergence(models, a: str, b: str) -> None:
    result = compare_files(str(models[a]), str(models[b]))
    first = result.first_divergence
    assert first is not None and first.name == models["weight"]
    assert first.identical is not None and first.identical < 1.0 and first.max_abs > 0


def test_cli_exit_codes_and_table(models, capsys) -> None:
    assert main(["compare", str(models["a.qir"]), str(models["a.tflite"])]) == 0
    assert "no divergence" in capsys.readouterr().out
    code = main(["compare", str(models["a.tflite"]), str(models["b.tflite"])])
    out = capsys.readouterr().out
    assert f"first divergence: {models['weight']}" in out
    assert "SQNR" in out and "identical" in out
    moved = not compare_files(str(models["a.tflite"]), str(models["b.tflite"])).within_tolerance
    assert code == (1 if moved else 0)
    assert main(["compare", str(models["a.tflite"]), str(models["b.tflite"]), "--tolerance", "1e9"]) == 0


def test_inputs_from_a_file_and_generated_inputs_are_seeded(models, tmp_path) -> None:
    x = np.random.default_rng(3).standard_normal((5, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = compare_files(str(models["a.qir"]), str(models["a.tflite"]), inputs=str(tmp_path / "x.npy"))
    assert result.outputs[0].shape == (5, 10)
    one = compare_files(str(models["a.tflite"]), str(models["b.tflite"]), seed=1)
    two = compare_files(str(models["a.tflite"]), str(models["b.tflite"]), seed=1)
    assert [d.mse for d in one.outputs] == [d.mse for d in two.outputs]


@pytest.mark.parametrize("content", [b"", b"not a flatbuffer at all", b"\x10\x00\x00\x00TFL3" + b"\x00" * 40])
def test_malformed_tflite_is_one_line_and_exit_2(models, tmp_path, capsys, content: bytes) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(content)
    with pytest.raises(CompareError):
        compare_files(str(models["a.qir"]), str(bad))
    assert main(["compare", str(models["a.qir"]), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qcompiler: error:")
