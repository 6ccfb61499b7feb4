"""The registry and the pipeline syntax: option parsing with type conversion and clear errors."""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import pytest

from qcompiler.ir.graph import Graph
from qcompiler.passes import (DEFAULT_FLOAT_PIPELINE, PASSES, Pass, PassResult, PipelineError, parse_pipeline,
                              pipeline_text)
from qcompiler.passes.fuse_activations import FuseActivations
from qcompiler.passes.registry import describe_passes


@dataclass(frozen=True)
class InsertFakeQuant(Pass):
    """Stand-in with options of every supported type (the real pass is added by the quantizer)."""

    name: ClassVar[str] = "toy-quant"
    bits: int = 8
    per_channel: bool = True
    momentum: float = 0.9
    scheme: Literal["minmax", "percentile"] = "minmax"
    percentile: Optional[float] = None
    skip: tuple[str, ...] = ()
    tag: str = "fq"

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 16:
            raise ValueError(f"bits must be in 2..16, got {self.bits}")

    def run(self, graph: Graph) -> PassResult:
        return PassResult.unchanged()


REGISTRY = {**PASSES, "toy-quant": InsertFakeQuant}


def test_options_are_converted_to_field_types() -> None:
    passes = parse_pipeline(
        "fold-batchnorm, toy-quant{bits=4, per_channel=false, momentum=0.5, scheme=percentile,"
        "percentile=99.9, skip=[conv1,dense_2], tag='x y'}", REGISTRY)
    assert [p.name for p in passes] == ["fold-batchnorm", "toy-quant"]
    assert passes[1] == InsertFakeQuant(bits=4, per_channel=False, momentum=0.5, scheme="percentile",
                                        percentile=99.9, skip=("conv1", "dense_2"), tag="x y")


def test_defaults_and_none() -> None:
    (p,) = parse_pipeline("toy-quant{percentile=none}", REGISTRY)
    assert p == InsertFakeQuant()
    assert parse_pipeline("", REGISTRY) == []


def test_pipeline_text_round_trips() -> None:
    text = "canonicalize,toy-quant{bits=4,per_channel=false,skip=[a,b]},dce"
    passes = parse_pipeline(text, REGISTRY)
    assert pipeline_text(passes) == text
    assert parse_pipeline(pipeline_text(passes), REGISTRY) == passes


@pytest.mark.parametrize("text,expected", [
    ("fold-batchnrom", "unknown pass 'fold-batchnrom'; known passes: apply-plan, calibrate, canonicalize, "),
    ("toy-quant{bitz=4}", "pass 'toy-quant' has no option 'bitz'; its options: bits: int, "),
    ("toy-quant{bits=four}", "option 'bits' of pass 'toy-quant': expected an integer, got 'four'"),
    ("toy-quant{per_channel=maybe}", "expected true or false, got 'maybe'"),
    ("toy-quant{scheme=mse}", "expected one of minmax, percentile, got 'mse'"),
    ("toy-quant{skip=conv1}", "expected a bracketed list"),
    ("toy-quant{bits=1}", "bits must be in 2..16, got 1"),
    ("toy-quant{bits}", "needs the form key=value"),
    ("toy-quant{bits=4", "unclosed"),
    ("dce,,canonicalize", "empty entry"),
    ("dce}", "unbalanced"),
])
def test_errors_say_what_is_wrong(text: str, expected: str) -> None:
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, REGISTRY)
    assert expected in str(info.value)


def test_the_default_registry_does_not_know_test_passes() -> None:
    with pytest.raises(PipelineError, match="known passes: " + ", ".join(sorted(PASSES)) + "$"):
        parse_pipeline("toy-quant")


def test_registered_passes_follow_the_conventions() -> None:
    for name, cls in PASSES.items():
        assert cls.name == name
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, name
        module = importlib.import_module(f"qcompiler.passes.{name.replace('-', '_')}")
        assert getattr(module, cls.__name__) is cls, f"pass {name} must live in a file named after it"
        assert cls.summary, f"pass {name} needs a one-line summary"
        assert parse_pipeline(name) == [cls()]


def test_default_float_pipeline_parses() -> None:
    names = [p.name for p in parse_pipeline(DEFAULT_FLOAT_PIPELINE)]
    assert {"canonicalize", "fold-batchnorm", "fuse-activations", "fold-constants", "dce"} <= set(names)


def test_describe_lists_options() -> None:
    text = describe_passes()
    assert "fuse-activations{tanh: bool = false, concat: bool = false}" in text
    assert parse_pipeline("fuse-activations{tanh=yes}") == [FuseActivations(tanh=True)]
