"""The quantization plan: every quantized tensor's range, dtype, granularity and bits, in an editable JSON file.

    plan = make_plan("model.keras", "calib.npy", mode="int8")    # calibrates once; qcompiler calibrate -o plan.json
    plan["tensors"][3]["range"] = [-1.0, 1.0]                    # the user edits it
    plan["layers"]["conv2"]["keep_float"] = True
    tflite = compile_plan("model.keras", plan)                   # no calibration run: exactly the plan

Compiling an unedited plan gives the bytes of the direct compile with the same options: the plan's ranges are
the `calibrate` pass's fake_quant ranges, written as JSON floats (which round-trip exactly), and `apply-plan`
puts them back in their place. Schema: schemas/quant-plan.schema.json; a plan is validated on load and every
error names the entry.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph

FORMAT = "qcompiler-quant-plan/1"
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "quant-plan.schema.json"
_BITS = {"i8": 8, "u8": 8, "i16": 16}


class PlanError(QCompilerError):
    pass


def file_samples(path: Union[str, Path], count: int) -> dict:
    """The sample set as the plan records it: file name, sha256 of its bytes, number of samples."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"file": Path(path).name, "sha256": digest, "count": int(count)}


def make_plan(model: Any, calibration: Union[str, Path], mode: str = "int8", *, io: Optional[str] = None,
              observer: str = "minmax", observer_options: Optional[Mapping] = None, per_channel: bool = True,
              executor: Optional[str] = None, batch_size: int = 32, policy: Optional[str] = None,
              keep_float: tuple = ()) -> dict:
    """Calibrate `model` on the .npy/.npz file `calibration` and return the plan (a JSON-ready dict)."""
    from qcompiler.api import DEFAULT_POLICY, _IO_CHOICES, _passes, import_keras, run_passes
    from dataclasses import replace

    from qcompiler.passes.calibrate import (DEFAULT_EXECUTOR, Calibrate, CalibrationStats, _histogram_sample,
                                            apply_ranges, calibration_points, collect_statistics, get_executor,
                                            load_calibration_data)

    if mode not in ("int8", "int16x8"):
        raise PlanError(f"a quantization plan is for mode int8 or int16x8, not '{mode}'")
    policy = policy or DEFAULT_POLICY
    io = io or _IO_CHOICES[mode][0]
    executor = executor or DEFAULT_EXECUTOR
    passes = _passes(mode, str(calibration), io=io, observer=observer, observer_options=observer_options,
                     per_channel=per_channel, executor=executor, batch_size=batch_size, policy=policy,
                     keep_float=tuple(keep_float))
    cut = next(i for i, p in enumerate(passes) if isinstance(p, Calibrate))
    calibrate = passes[cut]
    graph = import_keras(model) if not isinstance(model, Graph) else model.clone()
    run_passes(graph, passes[:cut])  # the float pipeline and insert-fake-quant
    data = load_calibration_data(calibration)
    count = (next(iter(data.values())) if isinstance(data, Mapping) else data).shape[0]
    spare = _every_activation_marked(graph)  # one run of the data gives the statistics of every activation
    stats = collect_statistics(spare, data, batch_size=batch_size, executor=get_executor(executor),
                               histogram_sample=_histogram_sample(observer), policy=policy)
    wanted = {n.operands[0].name for n in calibration_points(graph)}
    own = CalibrationStats({k: v for k, v in stats.items() if k in wanted})
    own.samples, own.inplace_unions = stats.samples, stats.inplace_unions
    run_passes(graph, [replace(calibrate, stats=own)])
    apply_ranges(spare, stats, observer, policy=policy, **calibrate.parsed_observer_options())
    samples = file_samples(calibration, count)
    keep = set(keep_float)
    layers = {n.layer: {"keep_float": n.layer in keep} for n in graph.nodes
              if n.layer and n.op not in ("fake_quant", "const")}
    return {"format": FORMAT, "model": Path(str(model)).name if isinstance(model, (str, Path)) else graph.name,
            "mode": mode, "policy": policy,
            "options": {"io": io, "per_channel": per_channel, "observer": observer,
                        "observer_options": dict(calibrate.parsed_observer_options()), "executor": executor,
                        "batch_size": batch_size},
            "samples": samples, "layers": layers,
            "tensors": _tensor_entries(graph, observer, samples) + _spare_entries(graph, spare, observer, samples)}


def _every_activation_marked(graph: Graph) -> Graph:
    """A float copy of `graph` with a fake_quant on every activation: its statistics also give the ranges a
    keep_float edit may need (the borders of a layer that shared its parameters before)."""
    from qcompiler.ir.ops import NOT_ACTIVATION, OPS
    from qcompiler.passes.calibrate import float_graph_of

    spare = float_graph_of(graph)
    dtype = next(n.attrs["dtype"] for n in graph.find("fake_quant"))
    values = [v for v in spare.inputs if v.type.is_float]
    for node in spare.nodes:
        definition = OPS.get(node.op)
        if (len(node.results) == 1 and node.result.type.is_float and definition is not None
                and definition.quant.output != NOT_ACTIVATION and not definition.converts_dtype):
            values.append(node.result)
    first = spare.nodes[0] if spare.nodes else None
    for value in values:
        users = list(value.uses)
        marked = spare.op("fake_quant", value, name=f"{value.name}.spare", layer=value.layer, dtype=dtype,
                          **({"before": first} if value.producer is None else {"after": value.producer}))
        for use in users:
            use.node.set_operand(use.index, marked)
        spare.outputs = [marked if v is value else v for v in spare.outputs]
    return spare


def _spare_entries(graph: Graph, spare: Graph, observer: str, samples: dict) -> list[dict]:
    """Entries for activations this plan does not quantize on their own (shared or fixed), marked `spare`."""
    used = {n.operands[0].name for n in graph.find("fake_quant") if not n.attrs["weights"]}
    entries = []
    for node in spare.find("fake_quant"):
        source = node.operands[0]
        if source.name in used or node.attrs["min"] is None:
            continue
        dtype = node.attrs["dtype"]
        entries.append({"tensor": source.name, "layer": source.layer, "dtype": dtype, "bits": _BITS[dtype],
                        "kind": "activation", "granularity": "per-tensor",
                        "range": [node.attrs["min"], node.attrs["max"]], "observer": observer, "samples": samples,
                        "spare": True})
    return entries


def _tensor_entries(graph: Graph, observer: str, samples: dict) -> list[dict]:
    entries = []
    for node in graph.find("fake_quant"):
        source = node.operands[0]
        dtype = node.attrs["dtype"]
        entry = {"tensor": source.name, "layer": source.layer or node.layer, "dtype": dtype, "bits": _BITS[dtype]}
        if node.attrs["weights"]:
            axis = node.attrs["axis"]
            entry.update(kind="weights", granularity="per-tensor" if axis is None else "per-channel", axis=axis,
                         range=None, observer="weights")
        else:
            fixed = source.producer is not None and source.producer.op != "fake_quant" and _is_fixed(node)
            entry.update(kind="activation", granularity="per-tensor", range=[node.attrs["min"], node.attrs["max"]],
                         observer=f"fixed:{source.producer.op}" if fixed else observer)
            if not fixed:
                entry["samples"] = samples
        entries.append(entry)
    return entries


def _is_fixed(fake_quant) -> bool:
    from qcompiler.quant.spec import FIXED, quant_spec

    spec = quant_spec(fake_quant.operands[0].producer.op, fake_quant.attrs["dtype"])
    return spec is not None and spec.output == FIXED


# ----------------------------------------------------------------------------------------------------
# loading and checking
# ----------------------------------------------------------------------------------------------------
def load_plan(path_or_plan: Union[str, Path, Mapping]) -> dict:
    """Read and validate a plan: JSON Schema first (the error names the entry), then the rules the schema cannot
    say (ranges finite and ordered, one activation dtype per model)."""
    if isinstance(path_or_plan, Mapping):
        plan, where = dict(path_or_plan), "plan"
    else:
        where = f"plan '{path_or_plan}'"
        try:
            plan = json.loads(Path(path_or_plan).read_text())
        except OSError as err:
            raise PlanError(f"cannot read {where}: {err.strerror}") from None
        except json.JSONDecodeError as err:
            raise PlanError(f"{where} is not JSON: {err}") from None
    _validate_schema(plan, where)
    act_dtype = "i16" if plan["mode"] == "int16x8" else "i8"
    for i, entry in enumerate(plan["tensors"]):
        name = f"{where}: tensors[{i}] (tensor '{entry['tensor']}', Keras layer '{entry['layer']}')"
        if _BITS[entry["dtype"]] != entry["bits"]:
            raise PlanError(f"{name}: bits {entry['bits']} do not match dtype {entry['dtype']}")
        if entry["kind"] == "activation":
            if entry["dtype"] != act_dtype:
                raise PlanError(f"{name}: dtype {entry['dtype']} in a {plan['mode']} plan; lowering gives every "
                                f"activation of a model the same dtype ({act_dtype}): mixed int8/int16 activations "
                                "are not supported. Use mode int16x8 for the whole model, or keep_float for the layer")
            rng = entry["range"]
            if rng is None or not all(math.isfinite(v) for v in rng) or rng[0] > rng[1]:
                raise PlanError(f"{name}: range must be [min, max] with finite min <= max, got {rng}")
        elif entry["range"] is not None:
            raise PlanError(f"{name}: weights take their range from the weights; set range to null")
        elif entry["dtype"] != "i8":
            raise PlanError(f"{name}: weights are int8 in both modes, not {entry['dtype']}")
    return plan


def _validate_schema(plan: Any, where: str) -> None:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(plan), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.path) or " (top level)"
        entry = ""
        if len(err.path) >= 2 and err.path[0] == "tensors" and isinstance(plan, dict):
            item = plan["tensors"][err.path[1]]
            if isinstance(item, dict):
                entry = f" (tensor '{item.get('tensor')}', Keras layer '{item.get('layer')}')"
        raise PlanError(f"{where}: {path.lstrip('.')}{entry}: {err.message}")


def keep_float_layers(plan: Mapping) -> tuple[str, ...]:
    return tuple(sorted(name for name, layer in plan["layers"].items() if layer["keep_float"]))


def plan_passes(plan: Mapping, plan_path: str = "", keep_float: tuple = ()) -> list:
    """The passes `compile --plan` runs: the float pipeline, insert-fake-quant, apply-plan (in place of
    calibrate) and lower-to-int with the plan's options."""
    from dataclasses import replace

    from qcompiler.api import _passes
    from qcompiler.passes.apply_plan import ApplyPlan
    from qcompiler.passes.calibrate import Calibrate

    options = plan["options"]
    keep = tuple(sorted(set(keep_float_layers(plan)) | set(keep_float)))
    passes = _passes(plan["mode"], "plan", io=options["io"], per_channel=options["per_channel"],
                     policy=plan["policy"], keep_float=keep)
    index = next(i for i, p in enumerate(passes) if isinstance(p, Calibrate))
    passes[index] = ApplyPlan(plan=plan_path, contents=plan)
    return passes


def compile_plan(model: Any, plan: Union[str, Path, Mapping], keep_float: tuple = ()) -> bytes:
    """Compile `model` exactly as the plan says (no calibration run)."""
    from qcompiler.api import import_keras, run_passes
    from qcompiler.backend.tflite_writer import write_tflite

    loaded = load_plan(plan)
    passes = plan_passes(loaded, "" if isinstance(plan, Mapping) else str(plan), keep_float)
    graph = model.clone() if isinstance(model, Graph) else import_keras(model)
    return write_tflite(run_passes(graph, passes))


def write_plan(plan: Mapping, path: Union[str, Path]) -> None:
    from qcompiler.files import atomic_write

    atomic_write(path, (json.dumps(plan, indent=1) + "\n").encode())
