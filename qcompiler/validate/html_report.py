"""`qcompiler report MODEL --calibration DATA --data EVAL -o report/`: report.html (self-contained: PNG plots as
data URIs, the graph as inline SVG) and report.json (schemas/layer-report.schema.json).

The SQNR comes from running the *lowered* integer graph (what the writer turns into the .tflite, with float
I/O) in the integer interpreter (qcompiler/ir/int_kernels.py, TFLite's reference-kernel arithmetic, bit-exact with
BUILTIN_REF) against the float graph on the evaluation data, tensor by tensor (lowering keeps the value names);
`simulator: "integer-interpreter"`, and `simulated_ops` lists the ops without a bit-exact kernel (simulated in
float), if the model has any.

Per tensor: `snr_db` (accumulated: the integer model's value against the float model's), `local_snr_db` (the
float value rounded to this tensor's own grid: what its range costs); layers are ranked by local SNR. The
suggested --keep-float set: each of the worst layers is kept float alone and the output SNR measured; the
layers that bought the most are added greedily while the output SNR still improves, and the set is measured.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from qcompiler.errors import QCompilerError
from qcompiler.ir import interpreter
from qcompiler.ir.graph import Graph
from qcompiler.passes.calibrate import check_calibration_data
from qcompiler.quant import math as qmath
from qcompiler.validate.layer_report import (REPORT_FORMAT, SIMULATOR, _cosine, _finite, _snr, integer_values,
                                             simulated_ops)

WORST_TENSORS = 3  # worst tensors whose layers are tried as keep-float candidates
MAX_SUGGESTED = 4  # layers in the suggested set at most
HISTOGRAMS = 4


# ----------------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------------
def _float_values(graph: Graph, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float32) for k, v in interpreter.run(graph, list(arrays), keep=True).items()}


def measure(lowered: Graph, float_graph: Graph, arrays: Sequence[np.ndarray],
            reference: Optional[dict] = None) -> dict:
    """Per-tensor errors of the lowered graph against the float graph on `arrays`."""
    reference = reference if reference is not None else _float_values(float_graph, arrays)
    values, outputs = integer_values(lowered, arrays)
    float_outputs = [reference[v.name] if v.name in reference else None for v in float_graph.outputs]
    rows = []
    for value in lowered.values():
        if value.name not in values or value.name not in reference or value.is_constant:
            continue
        ref, got, q = reference[value.name], values[value.name], value.type.quant
        if ref.shape != got.shape:
            continue
        qmin, qmax = qmath.qrange(value.type.dtype)
        scale, zp = float(q.scale[0]), int(q.zero_point[0])
        low, high = (qmin - zp) * scale, (qmax - zp) * scale
        local = (np.clip(np.round(ref.astype(np.float64) / scale) + zp, qmin, qmax) - zp) * scale
        producer = value.producer
        rows.append({"tensor": value.name, "layer": value.layer, "op": producer.op if producer else "input",
                     "dtype": value.type.dtype, "scale": scale, "zero_point": zp, "range_min": low,
                     "range_max": high, "snr_db": _snr(ref, got), "cosine": _cosine(ref, got),
                     "mse": float(np.mean((got.astype(np.float64) - ref) ** 2)), "local_snr_db": _snr(ref, local),
                     "clipped_fraction": float(np.mean((ref < low) | (ref > high)))})
    out_snr = min(_snr(f, o) for f, o in zip(float_outputs, outputs) if f is not None)
    return {"tensors": rows, "output_snr_db": out_snr, "outputs": outputs, "float_outputs": float_outputs,
            "reference": reference}


def suggest_keep_float(rows: list[dict], baseline: float, lower: Callable[[tuple], Graph], float_graph: Graph,
                       arrays: Sequence[np.ndarray], reference: dict, keepable: set) -> dict:
    """For each of the worst tensors (by local SQNR) try keeping float its producer's layer, and its producer's
    and readers' layers together (only then does the tensor itself stay float); rank the tries by output SQNR
    gained per layer kept float, add the best greedily while the output SQNR still improves, and measure the
    set. Every number is measured on the evaluation data."""
    groups: list[tuple[str, ...]] = []
    for row in sorted(rows, key=lambda r: r["local_snr_db"])[:WORST_TENSORS]:
        own = tuple(layer for layer in [row["layer"]] if layer in keepable)
        both = tuple(sorted({*own, *(l for l in candidate_consumers(float_graph, row["tensor"]) if l in keepable)}))
        for group in (own, both):
            if group and group not in groups:
                groups.append(group)
    candidates = []
    for group in groups:
        try:
            snr = measure(lower(group), float_graph, arrays, reference)["output_snr_db"]
        except QCompilerError:  # e.g. a plan without the ranges this layer's float borders need
            continue
        gain = _gain(snr, baseline)
        candidates.append({"layers": list(group), "output_snr_db": snr, "gain_db": gain,
                           "gain_per_layer_db": gain / len(group)})
    candidates.sort(key=lambda c: -c["gain_per_layer_db"])
    chosen: list[str] = []
    best = baseline
    for candidate in candidates:
        if candidate["gain_db"] <= 0 or len(chosen) >= MAX_SUGGESTED:
            break
        trial_layers = sorted(set(chosen) | set(candidate["layers"]))
        if trial_layers == sorted(chosen) or len(trial_layers) > MAX_SUGGESTED:
            continue
        trial = measure(lower(tuple(trial_layers)), float_graph, arrays, reference)
        if _gain(trial["output_snr_db"], best) > 0:
            chosen, best = trial_layers, trial["output_snr_db"]
    return {"baseline_output_snr_db": baseline, "candidates": candidates, "layers": chosen,
            "output_snr_db": best, "gain_db": _gain(best, baseline)}


def candidate_consumers(graph: Graph, tensor: str) -> list[str]:
    """Layers reading `tensor`: keeping its producer float still quantizes it at the island's border, keeping
    its readers float too leaves it float."""
    try:
        value = graph.value(tensor)
    except Exception:  # a lowering-only name
        return []
    return [u.node.layer for u in value.uses if u.node.layer]


def _gain(snr: float, baseline: float) -> float:
    if snr == baseline:
        return 0.0
    if math.isinf(snr) or math.isinf(baseline):
        return 1e9 if snr > baseline else -1e9
    return snr - baseline


# ----------------------------------------------------------------------------------------------------
# building the report
# ----------------------------------------------------------------------------------------------------
def build_report(model: Any, calibration: Any, evaluation: Any = None, *, mode: str = "int8",
                 policy: Optional[str] = None, plan: Any = None, keep_float: Sequence[str] = ()) -> dict:
    """The report as a dict (report.json's content plus the arrays the plots need under private keys)."""
    from qcompiler.api import DEFAULT_POLICY, _passes, float_graph, import_keras, run_passes
    from qcompiler.passes.lower_to_int import LowerToInt
    from qcompiler.quant.explain import explain
    from qcompiler.quant.plan import keep_float_layers, load_plan, plan_passes
    from qcompiler.ir.ops import OPS, SAME
    from qcompiler.quant.spec import can_keep_float

    loaded = load_plan(plan) if plan is not None else None
    policy = loaded["policy"] if loaded else (policy or DEFAULT_POLICY)
    mode = loaded["mode"] if loaded else mode
    base_keep = tuple(keep_float) + (keep_float_layers(loaded) if loaded else ())
    source = import_keras(model) if not isinstance(model, Graph) else model

    def lower(extra: tuple) -> Graph:
        keep = tuple(sorted(set(base_keep) | set(extra)))
        if loaded is not None:
            passes = plan_passes(loaded, keep_float=keep)
        else:
            passes = _passes(mode, calibration, policy=policy, keep_float=keep)
        passes = [replace(p, io="float") if isinstance(p, LowerToInt) else p for p in passes]
        return run_passes(source.clone(), passes)

    fgraph = float_graph(source, policy)
    data = calibration if evaluation is None else evaluation
    arrays = check_calibration_data(fgraph, data)
    lowered = lower(())
    base = measure(lowered, fgraph, arrays)
    keepable = {n.layer for n in fgraph.nodes  # layers that compute (a float reshape or pool buys nothing)
                if n.layer and can_keep_float(n.op) and OPS[n.op].quant.output != SAME} - set(base_keep)
    suggestion = suggest_keep_float(base["tensors"], base["output_snr_db"], lower, fgraph, arrays,
                                    base["reference"], keepable)
    act = "i16" if mode == "int16x8" else "i8"
    explanation = explain(fgraph, act, policy, frozenset(base_keep))
    return {"format": REPORT_FORMAT, "observer": loaded["options"]["observer"] if loaded else "minmax",
            "samples": int(arrays[0].shape[0]), "output_snr_db": base["output_snr_db"],
            "tensors": base["tensors"], "mode": mode, "policy": policy, "simulator": SIMULATOR,
            "simulated_ops": list(simulated_ops(lowered)),
            "keep_float": list(base_keep), "keep_float_suggestion": suggestion, "explanation": explanation,
            "_reference": base["reference"], "_outputs": base["outputs"], "_float_outputs": base["float_outputs"],
            "_graph": lowered}


def report_json(report: Mapping) -> str:
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not k.startswith("_")}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return _finite(value)

    return json.dumps(clean(dict(report)), indent=2) + "\n"


# ----------------------------------------------------------------------------------------------------
# plots and HTML
# ----------------------------------------------------------------------------------------------------
def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _plots(report: Mapping) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    plots = {}
    rows = report["tensors"]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.25 * len(rows))))
    names = [r["tensor"] for r in rows][::-1]
    ax.barh(names, [_clip_db(r["snr_db"]) for r in rows][::-1], color="#4c72b0", label="SQNR (accumulated)")
    ax.barh(names, [_clip_db(r["local_snr_db"]) for r in rows][::-1], color="#dd8452", alpha=0.6,
            label="local SQNR (own rounding)")
    ax.set_xlabel("dB")
    ax.legend(loc="lower right")
    plots["sqnr"] = _png(fig)
    plt.close(fig)
    for row in worst(rows, HISTOGRAMS):
        values = report["_reference"][row["tensor"]].reshape(-1)
        fig, ax = plt.subplots(figsize=(5, 2.6))
        ax.hist(values, bins=100, color="#4c72b0")
        ax.axvline(row["range_min"], color="#c44e52", linestyle="--", label="clipping range")
        ax.axvline(row["range_max"], color="#c44e52", linestyle="--")
        ax.set_title(f"%{row['tensor']}: local SQNR {_db_text(row['local_snr_db'])} dB", fontsize=9)
        ax.legend(fontsize=7)
        plots[f"hist:{row['tensor']}"] = _png(fig)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(4, 4))
    for f, q in zip(report["_float_outputs"], report["_outputs"]):
        if f is not None:
            ax.scatter(f.reshape(-1), q.reshape(-1), s=4, alpha=0.5)
    ax.set_xlabel("float output")
    ax.set_ylabel(f"{report['mode']} output")
    plots["scatter"] = _png(fig)
    plt.close(fig)
    return plots


def worst(rows: Sequence[Mapping], count: int) -> list[Mapping]:
    return sorted(rows, key=lambda r: r["local_snr_db"])[:count]


def _clip_db(value: float) -> float:
    return 100.0 if value == math.inf else -20.0 if value == -math.inf else value


def _db_text(value: float) -> str:
    return "inf" if value == math.inf else "-inf" if value == -math.inf else f"{value:.2f}"


def _svg_graph(report: Mapping) -> tuple[Optional[str], str]:
    """The lowered graph as inline SVG with nodes coloured by local SQNR, or None and a note how to get it."""
    from qcompiler.ir.dot import graph_to_dot

    if shutil.which("dot") is None:
        return None, ("The graph picture needs Graphviz: install it (`apt-get install graphviz`, `brew install "
                      "graphviz`) and run the report again, or render `qcompiler dump MODEL --format dot` yourself.")
    fill, tips = {}, {}
    for row in report["tensors"]:
        fill[row["tensor"]] = _colour(row["local_snr_db"])
        tips[row["tensor"]] = f"local SQNR {_db_text(row['local_snr_db'])} dB, SQNR {_db_text(row['snr_db'])} dB"
    dot = graph_to_dot(report["_graph"], fill, tips)
    done = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return None, f"Graphviz failed: {done.stderr.strip()[:300]}"
    svg = done.stdout
    return svg[svg.index("<svg"):], "Nodes coloured by local SQNR: red below 20 dB, yellow 20-35 dB, green above."


def _colour(db: float) -> str:
    return "#f4a6a6" if db < 20 else "#f7e3a1" if db < 35 else "#b8e0b8"


def render_html(report: Mapping) -> str:
    plots = _plots(report)
    svg, note = _svg_graph(report)
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(r['tensor'])}</td><td>{esc(r['layer'] or '-')}</td><td>{esc(r['op'])}</td>"
        f"<td>{r['scale']:.6g}</td><td>{r['zero_point']}</td><td class=num>{_db_text(r['snr_db'])}</td>"
        f"<td class=num>{_db_text(r['local_snr_db'])}</td><td>{r['clipped_fraction']:.4f}</td></tr>"
        for r in report["tensors"])
    suggestion = report["keep_float_suggestion"]
    cands = "".join(f"<tr><td>{esc(','.join(c['layers']))}</td><td class=num>{_db_text(c['output_snr_db'])}</td>"
                    f"<td class=num>{c['gain_db']:.2f}</td><td class=num>{c['gain_per_layer_db']:.2f}</td></tr>"
                    for c in suggestion["candidates"])
    hists = "".join(f'<figure><img alt="histogram of {esc(k[5:])}" src="{v}"></figure>'
                    for k, v in plots.items() if k.startswith("hist:"))
    explained = report["explanation"]
    reasons = "".join(f"<li><code>%{esc(t['tensor'])}</code>: {esc(t['reason'])}</li>" for t in explained["tensors"])
    reasons += "".join(f"<li>float <code>%{esc(f['tensor'])} = {esc(f['op'])}</code>: {esc(f['reason'])}</li>"
                       for f in explained["float_ops"])
    keep = ",".join(suggestion["layers"])
    graph_part = svg if svg is not None else ""
    simulated = (" except " + esc(", ".join(report["simulated_ops"])) + ", simulated in float"
                 if report.get("simulated_ops") else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>qcompiler quantization report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}figure{{display:inline-block;margin:4px}}
.num{{text-align:right}}</style></head><body>
<h1>Quantization report ({esc(report['mode'])}, policy {esc(report['policy'])})</h1>
<p>{report['samples']} evaluation samples; output SQNR <b id="output-snr">{_db_text(report['output_snr_db'])}</b> dB.
SQNR computed by running the lowered integer graph in qcompiler's interpreter ({esc(report['simulator'])}, bit-exact
with TFLite's reference kernels{simulated}).</p>
<h2>Per-layer SQNR</h2><img alt="per-layer SQNR" src="{plots['sqnr']}">
<table id="tensors"><thead><tr><th>tensor</th><th>layer</th><th>op</th><th>scale</th><th>zero point</th>
<th>SQNR dB</th><th>local SQNR dB</th><th>clipped</th></tr></thead><tbody>{rows}</tbody></table>
<h2>Worst layers: value histograms and the clipping range</h2>{hists}
<h2>Float vs {esc(report['mode'])} outputs</h2><img alt="float vs integer outputs" src="{plots['scatter']}">
<h2>Suggested --keep-float</h2>
<p>Suggestion: <code id="suggestion">{esc(keep) or '(none: no layer kept float improved the output)'}</code>,
output SQNR <b id="suggestion-snr">{_db_text(suggestion['output_snr_db'])}</b> dB
(baseline {_db_text(suggestion['baseline_output_snr_db'])} dB).</p>
<table id="candidates"><thead><tr><th>layers kept float</th><th>output SQNR dB</th><th>gain dB</th>
<th>gain per layer dB</th></tr>
</thead><tbody>{cands}</tbody></table>
<h2>Why (reason codes)</h2><ul>{reasons}</ul>
<h2>Graph</h2><p id="graph-note">{esc(note)}</p>{graph_part}
</body></html>
"""


def write_report(report: Mapping, folder: Path) -> None:
    from qcompiler.files import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "report.json", report_json(report).encode())
    atomic_write(folder / "report.html", render_html(report).encode())
