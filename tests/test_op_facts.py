"""The op table (qcompiler/ir/ops.py OPS) is the one source of each op's facts; these tests fail when a new op
forgets one (a TFLite writer, a version rule, a quantization rule) or when a pass keeps a private list."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from tflite.BuiltinOperator import BuiltinOperator as B

from qcompiler.backend.opcodes import has_version_rule
from qcompiler.backend.tflite_writer import EMITTERS, builtin_code
from qcompiler.ir.attrs import REQUIRED, Attr
from qcompiler.ir.ops import FIXED, FLOAT_ONLY, NOT_ACTIVATION, OPS, OWN, SAME, QuantRule
from qcompiler.quant.spec import quant_spec

ROOT = Path(__file__).resolve().parents[1]


def test_every_op_the_writer_can_reach_has_an_emitter_and_nothing_else_does():
    written = {name for name, d in OPS.items() if d.tflite is not None}
    assert written == set(EMITTERS), (
        f"OpDefs with a tflite builtin but no emitter: {sorted(written - set(EMITTERS))}; "
        f"emitters without a tflite builtin in their OpDef: {sorted(set(EMITTERS) - written)}")


@pytest.mark.parametrize("name", sorted(n for n, d in OPS.items() if d.tflite is not None))
def test_tflite_builtin_exists_and_has_a_version_rule(name):
    assert hasattr(B, OPS[name].tflite), f"{name}: BuiltinOperator has no {OPS[name].tflite}"
    assert has_version_rule(builtin_code(name)), (
        f"{name}: {OPS[name].tflite} needs a rule in opcodes._RULES (or VERSION_1_BUILTINS)")


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_declares_its_quantization(name):
    d = OPS[name]
    assert isinstance(d.quant, QuantRule)
    assert d.quant.output in (OWN, SAME, FIXED, FLOAT_ONLY, NOT_ACTIVATION)
    if d.quant.output == FIXED:
        assert d.quant.fixed_i8 is not None and d.quant.fixed_i16 is not None
    if d.quant.quantizable:
        assert d.tflite is not None, f"{name} has an integer rule but is never written"
        assert quant_spec(name) is not None
    else:
        assert quant_spec(name) is None
    if d.weights is not None:
        assert d.weights.operand < (d.max_operands or 99)
        assert d.weights.bias is None or d.weights.bias < (d.max_operands or 99)


@pytest.mark.parametrize("name", sorted(OPS))
def test_attributes_are_typed(name):
    for key, attr in OPS[name].signature.items():
        assert isinstance(attr, Attr), f"{name}.{key}"
        if attr.default is not None and attr.default is not REQUIRED:
            attr.check(key, attr.default)  # a default must pass its own declaration
    assert OPS[name].attrs == {k: a.default for k, a in OPS[name].signature.items()}


def test_quant_spec_reads_the_table():
    conv = quant_spec("conv2d")
    assert (conv.output, conv.weight_operand, conv.weight_axis, conv.bias_operand) == (OWN, 1, 0, 2)
    assert quant_spec("depthwise_conv2d").weight_axis == 3
    assert quant_spec("slice").param_operands == 2
    assert quant_spec("softmax").fixed_range("i8") == (0.0, 255.0 / 256.0)
    assert quant_spec("batch_norm") is None and quant_spec("no_such_op") is None


def _string_tuples(tree: ast.AST) -> list[set[str]]:
    """Every literal tuple/list/set/dict-key collection of two or more strings in a module."""
    found = []
    for node in ast.walk(tree):
        elements = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if not isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) or not elements:
            continue
        names = {e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        if len(names) >= 2:
            found.append(names)
    return found


@pytest.mark.parametrize("path", ["passes/fold_batchnorm.py", "passes/fold_affine.py", "passes/fold_pad.py",
                                  "passes/fold_constants.py", "passes/quantize_weights.py",
                                  "passes/insert_fake_quant.py", "passes/lower_to_int.py", "passes/calibrate.py",
                                  "quant/spec.py", "backend/opcodes.py"])
def test_passes_keep_no_private_op_lists(path):
    """A literal collection naming two or more ops that carry weights, quantization or TFLite facts means a pass
    keeps its own copy of a fact the op table holds."""
    weighted = {name for name, d in OPS.items() if d.weights is not None or d.tflite is not None}
    tree = ast.parse((ROOT / "qcompiler" / path).read_text())
    # fold-affine's patterns (the ops it folds, not a fact about them); fold-pad's messages on pooling
    allowed = {frozenset({"mul", "add"}), frozenset({"mul", "add", "sub"}),
               frozenset({"max_pool2d", "avg_pool2d"})}
    for names in _string_tuples(tree):
        ops = frozenset(names & weighted)
        if len(ops) >= 2 and ops not in allowed:
            pytest.fail(f"{path} lists ops {sorted(ops)} itself; read the fact from OPS instead")


def test_derived_tables_match_the_converter_facts():
    """What the passes derive from the table (pinned, so an edit to the table is a visible decision)."""
    from qcompiler.passes import fold_affine, fold_batchnorm, fold_constants, fold_pad, quantize_weights

    assert set(fold_batchnorm.FOLDABLE_PRODUCERS) >= {"conv2d", "depthwise_conv2d", "fully_connected"}
    assert set(fold_affine.LAYERS) == set(fold_batchnorm.FOLDABLE_PRODUCERS)
    assert set(fold_pad.FOLDING_OPS) >= {"conv2d", "depthwise_conv2d"}
    assert quantize_weights.HYBRID_WEIGHTS.items() >= {"conv2d": (1, 0), "depthwise_conv2d": (1, 3),
                                                       "fully_connected": (1, 0)}.items()
    from qcompiler.backend.tflite_arena import DATA_UNMODIFIED, kernel_flags, shareable_operands
    from qcompiler.ir.ops import OPS

    changing = {op: shareable_operands(op) for op in OPS if kernel_flags(op) and not kernel_flags(op) & DATA_UNMODIFIED}
    assert changing == {"add": (0, 1), "sub": (0, 1), "mul": (0, 1), "softmax": (0,)}
    assert {op for op in OPS if kernel_flags(op) & DATA_UNMODIFIED} == {"flatten", "reshape"}
    assert fold_constants.KEPT_OPS == {"const", "fake_quant", "quantize", "dequantize"}


def test_param_operands_count_the_constants_the_writer_adds():
    """QuantRule.param_operands (what the converter's same-scale rule counts) is the number of TFLite inputs the
    writer adds beyond the IR operands (shape, axes, paddings, begin/size), for every SAME op the backend tests
    write."""
    import tflite

    from qcompiler.backend.tflite_writer import write_tflite
    from tests.test_backend import FLOAT_CASES

    checked = set()
    for build in FLOAT_CASES.values():
        graph = build()
        model = tflite.Model.GetRootAs(write_tflite(graph), 0)
        sub = model.Subgraphs(0)
        by_output = {}
        for i in range(sub.OperatorsLength()):
            op = sub.Operators(i)
            by_output[sub.Tensors(op.Outputs(0)).Name().decode()] = op.InputsLength()
        for node in graph.nodes:
            spec = quant_spec(node.op)
            if spec is None or spec.output != SAME or node.result.name not in by_output:
                continue
            if node.attrs.get("activation", "none") != "none":
                continue  # written as the op plus an activation op that produces the result
            assert by_output[node.result.name] - len(node.operands) == spec.param_operands, node.op
            checked.add(node.op)
    assert checked >= {"reshape", "pad", "slice", "resize_nearest", "reduce_max", "reduce_min", "max_pool2d",
                       "maximum"}
