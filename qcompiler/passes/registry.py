"""The pass registry (an explicit table) and the pipeline text syntax.

    pipeline := pass ("," pass)*
    pass     := NAME ["{" option ("," option)* "}"]
    option   := KEY "=" value
    value    := WORD | "[" [value ("," value)*] "]"       e.g. bits=4  per_channel=false  skip=[conv1,conv2]

Option text is converted to the type of the pass's dataclass field: bool (true/false/1/0/yes/no/on/off), int,
float, str, Literal[...], Optional[...] ("none"), tuple[...] / list[...] (bracketed lists).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Mapping, Sequence, Union

from qcompiler.errors import QCompilerError
from qcompiler.passes.base import Pass, PassOptionError, format_option, option_fields
from qcompiler.passes.apply_plan import ApplyPlan
from qcompiler.passes.calibrate import Calibrate
from qcompiler.passes.canonicalize import Canonicalize
from qcompiler.passes.cse import CommonSubexpressionElimination
from qcompiler.passes.dce import DeadCodeElimination
from qcompiler.passes.fold_affine import FoldAffine
from qcompiler.passes.fold_batchnorm import FoldBatchNorm
from qcompiler.passes.fold_constants import FoldConstants
from qcompiler.passes.fold_pad import FoldPad
from qcompiler.passes.fuse_activations import FuseActivations
from qcompiler.passes.insert_fake_quant import InsertFakeQuant
from qcompiler.passes.insert_missing_fake_quant import InsertMissingFakeQuant
from qcompiler.passes.lower_to_int import LowerToInt
from qcompiler.passes.move_binary_reshapes import MoveBinaryReshapes
from qcompiler.passes.move_reshapes import MoveReshapes
from qcompiler.passes.move_transposes import MoveTransposes
from qcompiler.passes.quantize_weights import QuantizeWeights
from qcompiler.passes.space_to_batch_dilation import SpaceToBatchDilation
from qcompiler.passes.weights_to_f16 import WeightsToF16

# One line per pass. Keep alphabetical.
PASSES: dict[str, type[Pass]] = {
    "apply-plan": ApplyPlan,
    "calibrate": Calibrate,
    "canonicalize": Canonicalize,
    "cse": CommonSubexpressionElimination,
    "dce": DeadCodeElimination,
    "fold-affine": FoldAffine,
    "fold-batchnorm": FoldBatchNorm,
    "fold-constants": FoldConstants,
    "fold-pad": FoldPad,
    "fuse-activations": FuseActivations,
    "insert-fake-quant": InsertFakeQuant,
    "insert-missing-fake-quant": InsertMissingFakeQuant,
    "lower-to-int": LowerToInt,
    "move-binary-reshapes": MoveBinaryReshapes,
    "move-reshapes": MoveReshapes,
    "move-transposes": MoveTransposes,
    "quantize-weights": QuantizeWeights,
    "space-to-batch-dilation": SpaceToBatchDilation,
    "weights-to-f16": WeightsToF16,
}

# dce first as well as last: a dead user would make a producer look shared and block folding and fusion.
# fold-constants before fold-batchnorm so batch-norm parameters computed from constants are constants.
# fold-pad needs nothing but dce before it (a dead user would make a pad look shared).
# move-reshapes after fuse-activations: the converter moves a reshape after a relu once its fusions are done.
# move-binary-reshapes before fold-affine: a mul/add by a constant moved above a reshape folds into the layer before.
DEFAULT_FLOAT_PIPELINE = "dce,space-to-batch-dilation,canonicalize,move-transposes,cse,fold-pad,fold-constants,fold-batchnorm,canonicalize,move-binary-reshapes,fold-affine,fuse-activations,move-reshapes,dce"


class PipelineError(QCompilerError, ValueError):
    """A pipeline string names an unknown pass or option, or gives an option a value of the wrong type."""


def known_passes(registry: Mapping[str, type[Pass]] = PASSES) -> str:
    return ", ".join(sorted(registry))


def describe_passes(registry: Mapping[str, type[Pass]] = PASSES) -> str:
    """One line per pass with its options and defaults (for `--help`-style listings)."""
    lines = []
    for name in sorted(registry):
        cls = registry[name]
        opts = ", ".join(f"{f.name}: {_type_name(t)} = {format_option(f.default)}" for f, t in _fields(cls))
        lines.append(f"{name}{{{opts}}}  {cls.summary}" if opts else f"{name}  {cls.summary}")
    return "\n".join(lines)


def get_pass(name: str, registry: Mapping[str, type[Pass]] = PASSES) -> type[Pass]:
    if name not in registry:
        raise PipelineError(f"unknown pass '{name}'; known passes: {known_passes(registry)}")
    return registry[name]


def parse_pipeline(text: str, registry: Mapping[str, type[Pass]] = PASSES) -> list[Pass]:
    """`"fold-batchnorm,insert-fake-quant{bits=4,per_channel=false}"` -> [FoldBatchNorm(), InsertFakeQuant(...)]."""
    passes = []
    for item in _split_top(text, text):
        name, _, rest = item.partition("{")
        name = name.strip()
        if not name:
            raise PipelineError(f"empty pass name in pipeline '{text}'")
        cls = get_pass(name, registry)
        options: dict[str, str] = {}
        if rest:
            if not rest.rstrip().endswith("}"):
                raise PipelineError(f"options of '{name}' must end with '}}' in pipeline '{text}'")
            for option in _split_top(rest.rstrip()[:-1], text):
                key, eq, value = option.partition("=")
                if not eq:
                    raise PipelineError(f"option '{option}' of '{name}' needs the form key=value")
                options[key.strip()] = value.strip()
        passes.append(build_pass(cls, options))
    return passes


def build_pass(cls: type[Pass], options: Mapping[str, str]) -> Pass:
    """Instantiate `cls` from option strings, converting each to its field's type."""
    fields = {f.name: t for f, t in _fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, text in options.items():
        if key not in fields:
            known = ", ".join(f"{k}: {_type_name(t)}" for k, t in fields.items()) or "none"
            raise PipelineError(f"pass '{cls.name}' has no option '{key}'; its options: {known}")
        try:
            kwargs[key] = convert_option(text, fields[key])
        except ValueError as err:
            raise PipelineError(f"option '{key}' of pass '{cls.name}': {err}") from None
    try:
        return cls(**kwargs)
    except PassOptionError as err:
        raise PipelineError(str(err)) from None
    except (TypeError, ValueError) as err:
        raise PipelineError(f"pass '{cls.name}': {err}") from None


def pipeline_text(passes: Sequence[Pass]) -> str:
    """The inverse of `parse_pipeline` (options at their defaults are left out)."""
    return ",".join(str(p) for p in passes)


# ----------------------------------------------------------------------------------------------------
# option conversion
# ----------------------------------------------------------------------------------------------------
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def convert_option(text: str, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert_option(text, arg)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        for choice in args:
            if str(choice) == text or (isinstance(choice, bool) and text.lower() in (_TRUE if choice else _FALSE)):
                return choice
        raise ValueError(f"expected one of {', '.join(str(a) for a in args)}, got '{text}'")
    if origin in (tuple, list, frozenset, set):
        items = _parse_list(text)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ValueError(f"expected {len(args)} values, got {len(items)} in '{text}'")
            return tuple(convert_option(i, a) for i, a in zip(items, args))
        item_type = args[0] if args else str
        return origin(convert_option(i, item_type) for i in items)
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"expected true or false, got '{text}'")
    if tp is int:
        try:
            return int(text, 0)
        except ValueError:
            raise ValueError(f"expected an integer, got '{text}'") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got '{text}'") from None
    if tp is str:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return text
    raise ValueError(f"the pipeline syntax cannot express options of type {_type_name(tp)}")


def _parse_list(text: str) -> list[str]:
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise ValueError(f"expected a bracketed list like [a,b], got '{text}'")
    inner = text[1:-1].strip()
    return [item.strip() for item in _split_top(inner, text)] if inner else []


def _split_top(text: str, whole: str) -> list[str]:
    """Split on commas that are not inside {} or []."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced '{ch}' in pipeline '{whole}'")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise PipelineError(f"unclosed '{{' or '[' in pipeline '{whole}'")
    parts.append(text[start:])
    parts = [p.strip() for p in parts]
    if parts == [""]:
        return []
    if any(not p for p in parts):
        raise PipelineError(f"empty entry (two commas in a row?) in pipeline '{whole}'")
    return parts


def _fields(cls: type[Pass]) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in option_fields(cls)]


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
