"""Fuzzing in the test suite: mutated real inputs may only raise QCompilerError.

A short, derandomized Hypothesis budget here; `python benchmarks/fuzz_inputs.py --minutes 10` runs the same
mutations for longer, in a subprocess with a memory limit and a per-case timeout.
"""
from __future__ import annotations

import functools
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompiler.errors import QCompilerError
from tests import fuzz_mutations as fm

SHORT = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

edits_of = lambda kinds: st.lists(st.tuples(st.sampled_from(kinds), st.integers(0, 1 << 30),  # noqa: E731
                                            st.integers(0, 1 << 30)), min_size=1, max_size=4)


def _assert_only_qcompiler_errors(fn, *args) -> None:
    """Run `fn`; anything but a QCompilerError fails, and so does a QCompilerError that wraps a Python exception
    raised inside qcompiler's own code (a safety net caught a bug: the parser's, the writer's, the pass manager's).
    Wrapping a library's exception (zipfile, Keras, h5py) is the intended translation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn(*args)
        except QCompilerError as err:
            bug = fm.internal_bug(err)
            assert bug is None, f"a bug at {bug} wrapped in: {err}"


@functools.lru_cache(maxsize=None)
def ir_seeds() -> tuple[str, ...]:
    seeds = tuple(fm.ir_seeds())
    assert len(seeds) >= 10
    return seeds


@functools.lru_cache(maxsize=None)
def keras_seed() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "seed.keras"
        fm.seed_models()[1].save(path)
        return path.read_bytes()


def test_seeds_go_through_every_chain_unchanged():
    """The unmutated seeds are valid: the fuzzing starts from inputs that work."""
    for path in sorted(fm.SEEDS.glob("*.qir")):
        if path.name.endswith("-import.qir"):
            continue  # a digest-only dump cannot be written (tested in test_hardening)
        assert fm.run_ir_chain(path.read_text(), fm.PIPELINES[1])


@SHORT
@given(seed=st.integers(0, 1000), edits=edits_of(fm.IR_EDITS), pipeline=st.sampled_from(fm.PIPELINES))
def test_mutated_ir_dumps_raise_only_qcompiler_errors(seed, edits, pipeline):
    text = fm.mutate_ir(ir_seeds()[seed % len(ir_seeds())], edits)
    _assert_only_qcompiler_errors(fm.run_ir_chain, text, pipeline)


@settings(SHORT, max_examples=60)
@given(seed=st.integers(0, 1000), edits=edits_of(fm.BYTE_EDITS))
def test_byte_mutated_ir_raises_only_qcompiler_errors(seed, edits):
    data = fm.mutate_bytes(ir_seeds()[seed % len(ir_seeds())].encode(), edits)
    text = data.decode("utf-8", errors="replace")
    _assert_only_qcompiler_errors(fm.run_ir_chain, text, fm.PIPELINES[1])


# ----------------------------------------------------------------------------------------------------
# .keras files
# ----------------------------------------------------------------------------------------------------
@settings(SHORT, max_examples=12)
@given(kind=st.sampled_from(("zip",) + fm.CONFIG_EDITS), edits=edits_of(fm.BYTE_EDITS))
def test_malformed_keras_files_raise_only_qcompiler_errors(tmp_path_factory, kind, edits):
    path = tmp_path_factory.mktemp("k") / "mutated.keras"
    path.write_bytes(fm.mutate_keras(keras_seed(), kind, edits))
    _assert_only_qcompiler_errors(fm.run_keras_chain, path)


@pytest.mark.parametrize("cut", [0, 1, 22, 100, 0.5, 0.9, -1])
def test_truncated_keras_file(tmp_path, cut):
    size = len(keras_seed())
    end = int(size * cut) if isinstance(cut, float) else (size + cut if cut < 0 else cut)
    path = tmp_path / "cut.keras"
    path.write_bytes(keras_seed()[:end])
    with pytest.raises(QCompilerError, match="cut.keras"):
        fm.run_keras_chain(path)


def test_random_bytes_keras_file(tmp_path):
    path = tmp_path / "noise.keras"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(QCompilerError, match="noise.keras"):
        fm.run_keras_chain(path)


@pytest.mark.parametrize("config", [b"[]", b"{}", b"null", b'{"class_name": "Sequential"}', b"\xff\xfe",
                                    b'{"class_name": "Functional", "config": {"layers": 5}}'])
def test_bad_keras_config(tmp_path, config):
    path = tmp_path / "bad.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", config)
    with pytest.raises(QCompilerError, match="bad.keras"):
        fm.run_keras_chain(path)


# ----------------------------------------------------------------------------------------------------
# calibration files
# ----------------------------------------------------------------------------------------------------
@settings(SHORT, max_examples=80)
@given(which=st.sampled_from(sorted(fm.calibration_seeds())), edits=edits_of(fm.BYTE_EDITS))
def test_malformed_calibration_files_raise_only_qcompiler_errors(tmp_path_factory, which, edits):
    suffix = ".npz" if which.endswith(".npz") else ".npy"
    path = tmp_path_factory.mktemp("c") / f"data{suffix}"
    path.write_bytes(fm.mutate_bytes(fm.calibration_seeds()[which], edits))
    _assert_only_qcompiler_errors(fm.run_calibration_chain, path)


@settings(SHORT, max_examples=60)
@given(shape=st.lists(st.integers(0, 1 << 40), min_size=0, max_size=5),
       descr=st.sampled_from(["<f4", "<f8", ">i2", "|u1", "|b1", "<c8", "|O", "<U3", "V8"]),
       payload=st.integers(0, 256))
def test_npy_headers_are_checked_before_allocating(tmp_path_factory, shape, descr, payload):
    path = tmp_path_factory.mktemp("h") / "claims.npy"
    path.write_bytes(fm.npy_header(tuple(shape), descr, payload))
    _assert_only_qcompiler_errors(fm.run_calibration_chain, path)
