"""The command-line parts of issue 11 (quantization plan, keep-float, --explain, dump --format dot, the HTML
report), kept out of cli.py so that its edits stay small: `add_arguments` extends the parser, the handlers run
the commands."""
from __future__ import annotations

import argparse
import sys

from qcompiler.errors import QCompilerError


def _layer_list(text: str) -> tuple[str, ...]:
    layers = tuple(part.strip() for part in text.split(",") if part.strip())
    if not layers:
        raise argparse.ArgumentTypeError("give Keras layer names separated by commas: --keep-float conv1,conv2")
    return layers


def add_arguments(sub, compile_cmd: argparse.ArgumentParser, dump: argparse.ArgumentParser) -> None:
    compile_cmd.add_argument("--plan", metavar="PLAN.json",
                             help="compile exactly this quantization plan (from `qcompiler calibrate`), no calibration")
    compile_cmd.add_argument("--keep-float", metavar="LAYER,...", type=_layer_list, default=(),
                             help="Keras layers to keep in float (DEQUANTIZE/QUANTIZE at their borders)")
    compile_cmd.add_argument("--explain", action="store_true",
                             help="print why tensors share parameters or have fixed ranges and why ops stay float")
    dump.add_argument("--format", choices=("ir", "dot"), default="ir",
                      help="ir (default): the IR text; dot: Graphviz DOT (ops as nodes, edges with shape, dtype, "
                           "quantization parameters)")
    calibrate = sub.add_parser("calibrate", help="calibrate a model and write its editable quantization plan (JSON)")
    calibrate.add_argument("model", help=".keras or .h5 file")
    calibrate.add_argument("--calibration", required=True, metavar="DATA", help="calibration samples (.npy/.npz)")
    calibrate.add_argument("-o", "--output", required=True, help="plan file to write (plan.json)")
    calibrate.add_argument("--mode", default="int8", choices=("int8", "int16x8"))
    calibrate.add_argument("--io", help="int8 (default) or float for int8; int16 or float for int16x8")
    calibrate.add_argument("--observer", default="minmax", help="minmax, moving_average, percentile, mse, kl")
    calibrate.add_argument("--per-tensor", action="store_true", help="per-tensor instead of per-channel weights")
    calibrate.add_argument("--batch-size", type=int, default=32)
    calibrate.add_argument("--executor", default=None, help="exact (default), fast or numpy")
    calibrate.add_argument("--policy", default=None, help="quantization policy (default tflite-2.21)")
    calibrate.add_argument("--keep-float", metavar="LAYER,...", type=_layer_list, default=(),
                           help="Keras layers the plan keeps in float")
    calibrate.set_defaults(handler=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from qcompiler.quant.plan import make_plan, write_plan

    plan = make_plan(args.model, args.calibration, args.mode, io=args.io, observer=args.observer,
                     per_channel=not args.per_tensor, executor=args.executor, batch_size=args.batch_size,
                     policy=args.policy, keep_float=args.keep_float)
    write_plan(plan, args.output)
    print(f"wrote {args.output} ({len(plan['tensors'])} tensors, {len(plan['layers'])} layers, "
          f"{plan['samples']['count']} samples)")
    return 0


def compile_with_plan(args: argparse.Namespace) -> bytes:
    """`compile --plan`: the plan fixes mode, options and ranges; calibration options are refused."""
    from qcompiler.quant.plan import compile_plan, load_plan

    clash = [flag for flag, given in (("--calibration", args.calibration), ("--observer", args.observer != "minmax"),
                                      ("--default-ranges", args.default_ranges), ("--io", args.io),
                                      ("--per-tensor", args.per_tensor), ("--policy", args.policy))
             if given]
    if clash:
        raise QCompilerError(f"{', '.join(clash)} cannot go with --plan: the plan fixes them (edit the plan instead)")
    plan = load_plan(args.plan)
    if args.mode != "float32" and args.mode != plan["mode"]:
        raise QCompilerError(f"--mode {args.mode} does not match the plan's mode {plan['mode']}; leave --mode out")
    return compile_plan(args.model, plan, keep_float=tuple(args.keep_float))


def check_explain(args: argparse.Namespace) -> None:
    """--explain is for integer models: refused before any work for a float mode without a plan."""
    if args.explain and not args.plan and args.mode not in ("int8", "int16x8"):
        raise QCompilerError(f"--explain is for integer modes (int8, int16x8), not --mode {args.mode}")


def print_explanation(args: argparse.Namespace) -> None:
    from qcompiler.quant.explain import explain_model, explanation_text
    from qcompiler.quant.plan import keep_float_layers, load_plan

    mode, policy, keep = args.mode, args.policy or "tflite-2.21", tuple(args.keep_float)
    if args.plan:
        plan = load_plan(args.plan)
        mode, policy, keep = plan["mode"], plan["policy"], keep + keep_float_layers(plan)
    if mode not in ("int8", "int16x8"):
        raise QCompilerError(f"--explain is for integer modes (int8, int16x8), not --mode {mode}")
    sys.stdout.write(explanation_text(explain_model(args.model, mode, policy, keep)))


def dump_dot(graph) -> str:
    from qcompiler.ir.dot import graph_to_dot

    return graph_to_dot(graph)


def add_report_arguments(report: argparse.ArgumentParser) -> None:
    report.add_argument("-o", "--output", metavar="DIR",
                        help="write DIR/report.html (self-contained) and DIR/report.json instead of the table")
    report.add_argument("--plan", metavar="PLAN.json", help="report on this quantization plan's ranges")
    report.add_argument("--keep-float", metavar="LAYER,...", type=_layer_list, default=(),
                        help="Keras layers kept float")


def cmd_html_report(args: argparse.Namespace, calibration, evaluation) -> int:
    from pathlib import Path

    from qcompiler.validate.html_report import build_report, write_report

    if args.observer != "minmax":
        raise QCompilerError("the HTML report uses minmax ranges (or a --plan's); --observer goes with the table")
    report = build_report(args.model, calibration, evaluation, mode=args.mode, policy=args.policy, plan=args.plan,
                          keep_float=args.keep_float)
    write_report(report, Path(args.output))
    suggestion = report["keep_float_suggestion"]
    print(f"wrote {args.output}/report.html and report.json: output SQNR {report['output_snr_db']:.2f} dB; "
          f"suggested --keep-float {','.join(suggestion['layers']) or '(none)'} -> "
          f"{suggestion['output_snr_db']:.2f} dB")
    return 0
