"""The `qcompiler` command line. Errors print one line and exit with code 2 (`--traceback` shows more)."""
from __future__ import annotations

import argparse
import difflib
import math
import sys
import traceback
from pathlib import Path
from typing import NoReturn, Optional, Sequence

from qcompiler import cli_plan  # issue 11: plan, keep-float, explain, dot, html report
from qcompiler.errors import QCompilerError
from qcompiler.quiet import silence_tensorflow_imports

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


class UsageError(QCompilerError):
    """A command-line flag or argument is wrong; raised before any work starts."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    silence_tensorflow_imports()  # the one place: every path that imports TensorFlow is quiet
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        _print_error(err)
        return EXIT_USER_ERROR
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        _check_arguments(args)
        return args.handler(args)
    except (QCompilerError, ValueError, OSError) as err:
        if args.traceback:
            traceback.print_exc()
        _print_error(err)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("qcompiler: interrupted", file=sys.stderr)
        return 130
    except (RecursionError, MemoryError) as err:
        if args.traceback:
            traceback.print_exc()
        what = "nests too deeply" if isinstance(err, RecursionError) else "needs more memory than is available"
        _print_error(QCompilerError(f"{_inputs_of(args)}: the input {what} ({type(err).__name__})"))
        return EXIT_USER_ERROR
    except Exception as err:  # a bug in qcompiler: still one line, and --traceback shows where
        if args.traceback:
            traceback.print_exc()
        _print_error(QCompilerError(f"internal error on {_inputs_of(args)}: {type(err).__name__}: {err} "
                                    "(a qcompiler bug: please report it with the --traceback output)"))
        return EXIT_INTERNAL_ERROR


def _inputs_of(args: argparse.Namespace) -> str:
    names = [getattr(args, k, None) for k in ("model", "input", "calibration", "data")]
    return ", ".join(f"'{n}'" for n in names if n) or "the input"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the reason and where to find the usage, not a usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _print_error(err: Exception) -> None:
    """One line for the error; a message may carry more lines (e.g. the offending IR line), indented."""
    lines = str(err).splitlines() or [type(err).__name__]
    print(f"qcompiler: error: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"  {line.strip()}", file=sys.stderr)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qcompiler", description="Keras → qcompiler IR → TFLite")
    parser.add_argument("--traceback", action="store_true", help="show the Python traceback on errors")
    sub = parser.add_subparsers(dest="command")

    compile_cmd = sub.add_parser("compile", help="compile a Keras model to .tflite")
    compile_cmd.add_argument("model", help=".keras or .h5 file")
    compile_cmd.add_argument("-o", "--output", help="output .tflite path")
    compile_cmd.add_argument("--mode", default="float32",
                             help="float32 (default), int8, uint8, int16x8, dynamic, float16")
    compile_cmd.add_argument("--calibration", metavar="DATA", help="calibration samples: .npy, or .npz by input name")
    compile_cmd.add_argument("--io", help="int8 (default) or float for --mode int8; int16 or float for int16x8")
    compile_cmd.add_argument("--observer", default="minmax",
                             help="how calibration ranges are chosen: minmax (default, as the converter), "
                                  "moving_average, percentile, mse, kl")
    compile_cmd.add_argument("--percentile", type=float, help="percentile for --observer percentile (99.99)")
    compile_cmd.add_argument("--default-ranges", metavar="MIN,MAX", type=_number_pair,
                             help="range for tensors calibration did not reach, each listed in a warning "
                                  "(write --default-ranges=-6,6: the value starts with a minus)")
    compile_cmd.add_argument("--input-stats", metavar="MEAN,STD", type=_number_pair,
                             help="uint8 mode: input quantization as real = (q - MEAN) / STD")
    compile_cmd.add_argument("--per-tensor", action="store_true", help="per-tensor instead of per-channel weights")
    compile_cmd.add_argument("--batch-size", type=int, default=32, help="calibration batch size (default 32)")
    compile_cmd.add_argument("--executor", "--calibrate-with", dest="executor",
                             choices=("exact", "fast", "numpy", "tensorflow", "tflite"), default=None,
                             help="what runs the float model over the calibration data: exact (default; "
                                  "TensorFlow's TFLite runtime set up as TFLiteConverter's calibrator: its ranges "
                                  "bit for bit), fast (XNNPACK, ~2x faster calibration, ranges a few ulps off), "
                                  "numpy (the IR interpreter); tensorflow and tflite are the older names of exact "
                                  "and fast")
    compile_cmd.add_argument("--policy", default=None, choices=_policy_names(),
                             help="quantization policy: tflite-2.21 (default: TFLiteConverter bit for bit) or "
                                  "plain (textbook quantization, no converter emulation)")
    compile_cmd.add_argument("--print-pipeline", action="store_true",
                             help="print the pass pipeline this compile runs (for `qcompiler dump MODEL "
                                  "--pipeline ...`) and exit")
    compile_cmd.set_defaults(handler=_cmd_compile)

    dump = sub.add_parser("dump", help="print a model's IR, optionally after a pass pipeline")
    dump.add_argument("model", help=".keras, .h5 or .qir file")
    _add_pipeline_options(dump)
    dump.set_defaults(handler=_cmd_dump)
    cli_plan.add_arguments(sub, compile_cmd, dump)

    opt = sub.add_parser("opt", help="run passes on IR text: .qir in, IR text out")
    opt.add_argument("input", help=".qir file, or - for standard input")
    opt.add_argument("-o", "--output", help="write the result here instead of standard output")
    _add_pipeline_options(opt)
    opt.set_defaults(handler=_cmd_opt)

    passes = sub.add_parser("passes", help="list the passes and their options")
    passes.set_defaults(handler=_cmd_passes)

    report = sub.add_parser("report", help="per-layer quantization error of a model (SNR, cosine, clipping)")
    report.add_argument("model", help=".keras or .h5 file")
    report.add_argument("--calibration", required=True, metavar="DATA", help="calibration samples (.npy/.npz)")
    report.add_argument("--data", metavar="DATA", help="evaluation samples (default: the calibration samples)")
    report.add_argument("--mode", default="int8", help="int8 (default) or int16x8")
    report.add_argument("--observer", default="minmax", help="minmax, moving_average, percentile, mse, kl")
    report.add_argument("--policy", default="tflite-2.21", choices=_policy_names(),
                        help="quantization policy: tflite-2.21 (default) or plain")
    report.add_argument("--json", metavar="OUT", help="also write the report as JSON (schemas/layer-report.schema.json)")
    cli_plan.add_report_arguments(report)
    report.set_defaults(handler=_cmd_report)

    _add_compare_parser(sub)

    demo = sub.add_parser("demo", help="train a small CNN on scikit-learn's digits and compile it")
    demo.add_argument("--out", default="out", help="folder for the .tflite files (default: ./out)")
    demo.add_argument("--epochs", type=int, default=4)
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _add_compare_parser(sub) -> None:
    cmd = sub.add_parser("compare", help="run two models (.keras, .tflite, .qir) on the same inputs; per-tensor "
                                         "differences and the first tensor where they diverge")
    cmd.add_argument("a", help="model A (the reference for SQNR)")
    cmd.add_argument("b", help="model B")
    cmd.add_argument("--inputs", help=".npy (one input) or .npz (by input name) of float inputs; default: "
                                      "standard-normal inputs from A's signature, seeded")
    cmd.add_argument("--tolerance", type=float, default=0.0,
                     help="largest allowed |A - B| of an output in real values (default 0: identical); exit 1 above")
    cmd.add_argument("--batch", type=int, default=4, help="batch size of generated inputs (default 4)")
    cmd.add_argument("--seed", type=int, default=0, help="seed of generated inputs (default 0)")
    cmd.set_defaults(handler=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    from qcompiler.validate.compare import compare_files

    result = compare_files(args.a, args.b, args.inputs, args.tolerance, args.batch, args.seed)
    sys.stdout.write(result.table())
    return 0 if result.within_tolerance else 1


def _add_pipeline_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--pipeline", default="", help='comma-separated passes, e.g. "fold-batchnorm,fuse-activations"')
    cmd.add_argument("--print-ir-after-all", action="store_true")
    cmd.add_argument("--print-ir-after", action="append", default=[], metavar="PASS")
    cmd.add_argument("--pass-timing", action="store_true")
    cmd.add_argument("--full-constants", action="store_true", help="print every constant's values")


def _policy_names() -> list[str]:
    from qcompiler.quant.policy import POLICIES

    return list(POLICIES)


def _number_pair(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers separated by a comma, e.g. -6,6; got '{text}'")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected two finite numbers, got '{text}'")
    return values  # type: ignore[return-value]


def _check_arguments(args: argparse.Namespace) -> None:
    """Every flag value, and the output path, checked before any work starts."""
    from qcompiler.files import check_output_path

    if args.command == "compile":
        _check_quant_flags(args)
        if args.output is not None:
            check_output_path(args.output, inputs=[args.model, args.calibration])
        elif not args.print_pipeline:
            raise UsageError("compile needs an output file: -o MODEL.tflite (or --print-pipeline)")
    elif args.command == "report":
        _check_choice("--mode", args.mode, ("int8", "int16x8"))
        _check_observer(args.observer)
        if args.json:
            check_output_path(args.json, inputs=[args.model, args.calibration, args.data])
    elif args.command == "opt" and args.output:
        check_output_path(args.output, inputs=[args.input])
    elif args.command == "demo" and args.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {args.epochs}")


def _check_choice(flag: str, value: str, choices: Sequence[str]) -> None:
    if value in choices:
        return
    near = [c for c in choices if c.lower() == value.lower()] or difflib.get_close_matches(value, choices, n=1)
    hint = f"; did you mean {near[0]}?" if near else ""
    raise UsageError(f"{flag} {value} is not one of {', '.join(choices)}{hint}")


def _check_observer(name: str) -> None:
    from qcompiler.quant.observers import OBSERVERS

    _check_choice("--observer", name, tuple(OBSERVERS))


def _check_quant_flags(args: argparse.Namespace) -> None:
    from qcompiler.api import _IO_CHOICES, MODES

    _check_choice("--mode", args.mode, MODES)
    _check_observer(args.observer)
    if args.io is not None and args.mode in _IO_CHOICES:
        _check_choice("--io", args.io, _IO_CHOICES[args.mode])
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.percentile is not None and not 50 < args.percentile <= 100:
        raise UsageError(f"--percentile must be in (50, 100], got {args.percentile}")
    if args.default_ranges is not None:
        lo, hi = args.default_ranges
        if not lo <= 0 <= hi or lo == hi:
            raise UsageError(f"--default-ranges {lo},{hi} must contain 0 and not be empty, e.g. -6,6")
    if args.input_stats is not None:
        mean, std = args.input_stats
        if not std > 0:
            raise UsageError(f"--input-stats {mean},{std}: STD must be positive (real = (q - MEAN) / STD)")
        if args.io != "uint8" and args.mode != "uint8":
            raise UsageError("--input-stats describes uint8 inputs: use it with --mode uint8")


def _quant_options(args: argparse.Namespace) -> dict:
    from qcompiler.api import CALIBRATED_MODES

    given = {"--calibration": args.calibration, "--io": args.io, "--default-ranges": args.default_ranges,
             "--input-stats": args.input_stats, "--percentile": args.percentile,
             "--per-tensor": args.per_tensor or None, "--executor": args.executor,
             "--observer": None if args.observer == "minmax" else args.observer}
    policy = {} if args.policy is None else {"policy": args.policy}
    if args.mode not in CALIBRATED_MODES:
        extra = [flag for flag, value in given.items() if value is not None]
        if extra:
            raise QCompilerError(f"{', '.join(extra)} only apply to calibrated modes ({', '.join(CALIBRATED_MODES)}), "
                                 f"not --mode {args.mode}")
        return policy
    from qcompiler.passes.calibrate import load_calibration_data

    options = {"observer": args.observer, "per_channel": not args.per_tensor, "batch_size": args.batch_size,
               "executor": args.executor, "default_ranges": args.default_ranges, "input_stats": args.input_stats,
               "io": args.io, **policy}
    if args.percentile is not None:
        if args.observer != "percentile":
            raise QCompilerError("--percentile goes with --observer percentile")
        options["observer_options"] = {"percentile": args.percentile}
    if args.calibration:
        load_calibration_data(args.calibration)  # a missing or unreadable file is reported before any work
        options["calibration_data"] = args.calibration  # the pipeline names the file (compile --print-pipeline)
    return options


def _cmd_compile(args: argparse.Namespace) -> int:
    import warnings

    from qcompiler.api import compile as compile_model
    from qcompiler.files import atomic_write

    cli_plan.check_explain(args)
    if args.plan and args.print_pipeline:
        raise QCompilerError("--print-pipeline cannot go with --plan")
    options = {} if args.plan else _quant_options(args)
    if args.keep_float and not args.plan:
        options["keep_float"] = tuple(args.keep_float)
    if args.print_pipeline:
        from qcompiler.api import CALIBRATED_MODES, has_trained_ranges, pipeline_for

        trained = args.mode in CALIBRATED_MODES and has_trained_ranges(args.model)  # a QAT model: no calibration
        print(pipeline_for(args.mode, options.pop("calibration_data", None), trained=trained, **options))
        return 0
    if not args.output:
        raise QCompilerError("compile needs an output file: -o MODEL.tflite")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = (cli_plan.compile_with_plan(args) if args.plan
                else compile_model(args.model, mode=args.mode, **options))
    for warning in caught:
        if issubclass(warning.category, UserWarning) and "qcompiler" in type(warning.message).__module__:
            print(f"qcompiler: warning: {warning.message}", file=sys.stderr)
    atomic_write(args.output, data, inputs=[args.model, args.calibration, args.plan])
    print(f"wrote {args.output} ({len(data):,} bytes, {'plan ' + args.plan if args.plan else args.mode})")
    if args.explain:
        cli_plan.print_explanation(args)
    return 0


def _load_graph(path: str):
    from qcompiler.api import import_keras, parse_ir

    from qcompiler.ir.graph import IRError

    if path == "-" or path.endswith(".qir"):
        name = "<stdin>" if path == "-" else path
        try:
            data = _read_stdin() if path == "-" else Path(path).read_bytes()
        except OSError as err:
            raise QCompilerError(f"cannot read IR file '{path}': {err.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            raise QCompilerError(f"{name}: line {line}: not UTF-8 text (byte {data[err.start]:#04x} at offset "
                                 f"{err.start}); a .qir file is UTF-8 IR text") from None
        try:
            return parse_ir(text)
        except IRError as err:
            raise QCompilerError(f"{name}: {err}") from None
    return import_keras(path)


def _read_stdin() -> bytes:
    stream = getattr(sys.stdin, "buffer", None)
    return stream.read() if stream is not None else sys.stdin.read().encode()


def _run_pipeline(graph, args: argparse.Namespace):
    from qcompiler.api import run_passes

    if args.pipeline or args.print_ir_after_all or args.print_ir_after or args.pass_timing:
        run_passes(graph, args.pipeline, print_ir_after_all=args.print_ir_after_all,
                   print_ir_after=set(args.print_ir_after), timing=args.pass_timing)
    return graph


def _cmd_dump(args: argparse.Namespace) -> int:
    from qcompiler.ir.printer import print_graph

    graph = _run_pipeline(_load_graph(args.model), args)
    if args.format == "dot":
        sys.stdout.write(cli_plan.dump_dot(graph))
        return 0
    sys.stdout.write(print_graph(graph, full_constants=args.full_constants))
    return 0


def _cmd_opt(args: argparse.Namespace) -> int:
    from qcompiler.files import atomic_write
    from qcompiler.ir.printer import print_graph

    graph = _run_pipeline(_load_graph(args.input), args)
    text = print_graph(graph, full_constants=args.full_constants)
    if args.output:
        atomic_write(args.output, text.encode(), inputs=[args.input])
    else:
        sys.stdout.write(text)
    return 0


def _cmd_passes(args: argparse.Namespace) -> int:
    from qcompiler.passes.registry import describe_passes

    print(describe_passes())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from qcompiler.api import layer_report
    from qcompiler.files import atomic_write
    from qcompiler.passes.calibrate import load_calibration_data

    calibration = load_calibration_data(args.calibration)
    evaluation = load_calibration_data(args.data) if args.data else None
    if args.output:
        return cli_plan.cmd_html_report(args, calibration, evaluation)
    report = layer_report(args.model, calibration, evaluation, mode=args.mode, observer=args.observer,
                          policy=args.policy)
    sys.stdout.write(report.table())
    if args.json:
        atomic_write(args.json, report.to_json().encode(), inputs=[args.model, args.calibration, args.data])
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from qcompiler.demo import run_demo

    run_demo(Path(args.out), epochs=args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
