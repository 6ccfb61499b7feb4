"""Input mutations for fuzzing qcompiler, shared by tests/test_fuzz.py (short, Hypothesis-driven) and
benchmarks/fuzz_inputs.py (long campaigns in a resource-limited subprocess).

Three kinds of input, each with its chain and the only exception it may raise (`QCompilerError`):
  ir     mutated IR text of real dumps   -> parse_ir -> (verifier) -> a pass pipeline -> write_tflite
  keras  a mutated .keras file           -> import_keras -> float pipeline -> write_tflite
  calib  a mutated .npy / .npz file      -> load_calibration_data -> check_calibration_data

A mutation is a list of small edits `(kind, position, payload)` with integers, so Hypothesis can shrink it and a
seeded `random.Random` can draw it the same way.
"""
from __future__ import annotations

import io
import json
import random
import re
import zipfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

SEEDS = Path(__file__).parent / "fuzz_seeds"

# Tokens that have broken parsers and shape inference before: extreme and non-finite numbers, unknown dims,
# wrong kinds of literal, names that do not exist, structure characters.
INTERESTING = [
    "0", "-1", "1", "2", "3", "1.5", "-0.0", "1e309", "-1e309", "1e-320", "nan", "inf", "-inf",
    "2147483648", "99999999999999999999", "65536", "?", "%x", "%undefined", "@g", '"same"', '"valid"', '"bogus"',
    '"\\n"', '""', "[", "]", "{", "}", "(", ")", "<", ">", ",", ":", "=", "", "true", "false", "none", "f32", "f16",
    "i8", "u8", "i16", "i32", "i64", "bool", "q<0.5:3>", "q<axis=0 [0.5,0.25]:[0,0]>", "q<1e309:0>",
    "dense<[1.0]>", "dense<[]>", "dense<[[1]]>", "#abcdef", "#00", "[0,0]", "[1,1]", "[1e309]", "[?]", "[-1]",
    "[2147483648, 1]", "[]", "# layer x", "return", "graph", "const", "relu", "conv2d", "reshape", "pad", "concat",
    "fake_quant", "quantize", "dequantize", "resize_nearest", "batch_norm", "fully_connected", "mean", "slice",
]
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|%[\w./\-]+|@[\w./\-]+|#[0-9a-fA-F]+|[-+]?\d+\.?\d*(?:[eE][-+]?\d+)?|\w+|\S')

IR_EDITS = ("delete-line", "duplicate-line", "swap-lines", "replace-token", "copy-token", "delete-token",
            "insert-text", "truncate", "tweak-number", "drop-char")
BYTE_EDITS = ("flip-byte", "set-byte", "truncate", "delete-range", "duplicate-range", "insert-bytes")
Edit = tuple[str, int, int]


# ----------------------------------------------------------------------------------------------------
# seeds
# ----------------------------------------------------------------------------------------------------
def ir_seeds() -> list[str]:
    """The committed dumps in tests/fuzz_seeds (made by `make_seeds`)."""
    return [p.read_text() for p in sorted(SEEDS.glob("*.qir"))]


def seed_models():
    """Small Keras models covering the frontend's common layers (built fresh: needs keras)."""
    import keras

    keras.utils.set_random_seed(7)
    L = keras.layers
    x = keras.Input((12, 12, 3), name="image")
    y = L.Conv2D(4, 3, padding="same", name="conv")(x)
    y = L.BatchNormalization(name="bn")(y)
    y = L.ReLU(6.0, name="relu6")(y)
    z = L.DepthwiseConv2D(3, padding="same", name="dw")(y)
    y = L.Add(name="add")([y, z])
    y = L.MaxPooling2D(2, name="pool")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    y = L.Dense(5, activation="softmax", name="head")(y)
    branchy = keras.Model(x, y, name="branchy")

    x = keras.Input((8, 8, 2), name="pixels")
    y = L.Rescaling(1 / 127.5, offset=-1, name="rescale")(x)
    y = L.ZeroPadding2D(1, name="zpad")(y)
    y = L.Conv2D(3, 3, strides=2, name="down")(y)
    u = L.UpSampling2D(2, name="up")(y)
    u = L.Cropping2D(((0, 0), (0, 0)), name="crop")(u)
    c = L.Concatenate(name="cat")([u, L.Conv2D(3, 1, name="skip")(x)])
    c = L.AveragePooling2D(2, name="avg")(c)
    c = L.Flatten(name="flat")(c)
    c = L.Dense(4, activation="tanh", name="fc")(c)
    c = L.Reshape((2, 2), name="reshape")(c)
    shapes = keras.Model(x, c, name="shapes")
    for model in (branchy, shapes):  # non-trivial batch-norm statistics
        for layer in model.layers:
            if isinstance(layer, L.BatchNormalization):
                gamma, beta, mean, var = layer.get_weights()
                rng = np.random.default_rng(1)
                layer.set_weights([gamma * 1.3, beta + 0.1, rng.normal(size=mean.shape).astype(np.float32),
                                   rng.uniform(0.5, 2, size=var.shape).astype(np.float32)])
    return [branchy, shapes]


def make_seeds(folder: Path = SEEDS) -> list[Path]:
    """Write the IR seeds: each model's import (plain and full-constants), float pipeline, and quantized IR."""
    import qcompiler
    from qcompiler.ir.printer import print_graph

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for model in seed_models():
        graph = qcompiler.import_keras(model)
        variants = {"import": print_graph(graph), "import-full": print_graph(graph, full_constants=True),
                    "float": print_graph(qcompiler.float_graph(graph), full_constants=True)}
        for mode in ("int8", "int16x8"):
            variants[mode] = print_graph(qcompiler.quantize(graph, mode, default_ranges=(-6, 6)),
                                         full_constants=True)
        variants["dynamic"] = print_graph(qcompiler.run_passes(qcompiler.float_graph(graph), "quantize-weights"),
                                          full_constants=True)
        for name, text in variants.items():
            path = folder / f"{model.name}-{name}.qir"
            path.write_text(text)
            written.append(path)
    return written


# ----------------------------------------------------------------------------------------------------
# mutations
# ----------------------------------------------------------------------------------------------------
def random_edits(rng: random.Random, kinds: Sequence[str], max_edits: int = 4) -> list[Edit]:
    return [(rng.choice(kinds), rng.randrange(1 << 30), rng.randrange(1 << 30))
            for _ in range(rng.randint(1, max_edits))]


def mutate_ir(text: str, edits: Sequence[Edit]) -> str:
    for kind, a, b in edits:
        text = _IR_MUTATORS[kind](text, a, b)
    return text


def _lines_edit(fn: Callable[[list[str], int, int], None]) -> Callable[[str, int, int], str]:
    def edit(text: str, a: int, b: int) -> str:
        lines = text.split("\n")
        if lines:
            fn(lines, a % len(lines), b % len(lines))
        return "\n".join(lines)
    return edit


def _delete_line(lines: list[str], i: int, j: int) -> None:
    del lines[i]


def _duplicate_line(lines: list[str], i: int, j: int) -> None:
    lines.insert(j, lines[i])


def _swap_lines(lines: list[str], i: int, j: int) -> None:
    lines[i], lines[j] = lines[j], lines[i]


def _tokens(text: str) -> list[re.Match]:
    return list(_TOKEN.finditer(text))


def _replace_token(text: str, a: int, b: int) -> str:
    tokens = _tokens(text)
    if not tokens:
        return text
    t = tokens[a % len(tokens)]
    return text[:t.start()] + INTERESTING[b % len(INTERESTING)] + text[t.end():]


def _copy_token(text: str, a: int, b: int) -> str:
    tokens = _tokens(text)
    if not tokens:
        return text
    source, target = tokens[a % len(tokens)], tokens[b % len(tokens)]
    return text[:target.start()] + source.group() + text[target.end():]


def _delete_token(text: str, a: int, b: int) -> str:
    tokens = _tokens(text)
    if not tokens:
        return text
    t = tokens[a % len(tokens)]
    return text[:t.start()] + text[t.end():]


def _insert_text(text: str, a: int, b: int) -> str:
    pos = a % (len(text) + 1)
    return text[:pos] + INTERESTING[b % len(INTERESTING)] + text[pos:]


def _truncate(text: str, a: int, b: int) -> str:
    return text[:a % (len(text) + 1)]


def _tweak_number(text: str, a: int, b: int) -> str:
    numbers = [m for m in _tokens(text) if re.fullmatch(r"[-+]?\d+\.?\d*(?:[eE][-+]?\d+)?", m.group())]
    if not numbers:
        return text
    m = numbers[a % len(numbers)]
    value = float(m.group())
    change = [value + 1, value - 1, -value, value * 1000, value / 3, 0.0, value * 1e300][b % 7]
    new = str(int(change)) if "." not in m.group() and "e" not in m.group().lower() and abs(change) < 1e18 \
        else repr(change)
    return text[:m.start()] + new + text[m.end():]


def _drop_char(text: str, a: int, b: int) -> str:
    if not text:
        return text
    pos = a % len(text)
    return text[:pos] + text[pos + 1:]


_IR_MUTATORS: dict[str, Callable[[str, int, int], str]] = {
    "delete-line": _lines_edit(_delete_line),
    "duplicate-line": _lines_edit(_duplicate_line),
    "swap-lines": _lines_edit(_swap_lines),
    "replace-token": _replace_token,
    "copy-token": _copy_token,
    "delete-token": _delete_token,
    "insert-text": _insert_text,
    "truncate": _truncate,
    "tweak-number": _tweak_number,
    "drop-char": _drop_char,
}


def mutate_bytes(data: bytes, edits: Sequence[Edit]) -> bytes:
    buf = bytearray(data)
    for kind, a, b in edits:
        n = len(buf)
        if kind == "flip-byte" and n:
            buf[a % n] ^= 1 << (b % 8)
        elif kind == "set-byte" and n:
            buf[a % n] = [0, 0xFF, 0x7F, 0x80, ord("{"), ord("["), ord('"'), b % 256][b % 8]
        elif kind == "truncate":
            del buf[a % (n + 1):]
        elif kind == "delete-range" and n:
            start = a % n
            del buf[start:start + 1 + b % 64]
        elif kind == "duplicate-range" and n:
            start = a % n
            chunk = buf[start:start + 1 + b % 64]
            buf[start:start] = chunk
        elif kind == "insert-bytes":
            pos = a % (n + 1)
            buf[pos:pos] = random.Random(b).randbytes(1 + b % 16)
    return bytes(buf)


# ----------------------------------------------------------------------------------------------------
# .keras archives: mutate the zip, or mutate config.json inside a valid zip
# ----------------------------------------------------------------------------------------------------
CONFIG_EDITS = ("bytes", "value", "nest", "drop-key", "class-name")


def mutate_keras(archive: bytes, kind: str, edits: Sequence[Edit]) -> bytes:
    """`kind`: "zip" mutates the archive bytes; otherwise config.json is edited and the archive rebuilt."""
    if kind == "zip":
        return mutate_bytes(archive, edits)
    with zipfile.ZipFile(io.BytesIO(archive)) as source:
        members = {info.filename: source.read(info) for info in source.infolist()}
    config = members["config.json"]
    for edit in edits:
        config = _mutate_config(config, kind, edit)
    members["config.json"] = config
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name, data in members.items():
            target.writestr(name, data)
    return out.getvalue()


def _mutate_config(config: bytes, kind: str, edit: Edit) -> bytes:
    _, a, b = edit
    if kind == "bytes":
        return mutate_bytes(config, [(BYTE_EDITS[b % len(BYTE_EDITS)], a, b)])
    try:
        tree = json.loads(config)
    except ValueError:
        return config
    slots = _slots(tree)
    if not slots:
        return config
    parent, key = slots[a % len(slots)]
    if kind == "value":
        parent[key] = [None, -1, 0, 1e308, "bogus", [], {}, [1, 2, 3], True, 2 ** 40, "same", [None, None]][b % 12]
    elif kind == "nest":
        value = parent[key]
        for _ in range(1 + b % 200):
            value = [value]
        parent[key] = value
    elif kind == "drop-key" and isinstance(parent, dict):
        del parent[key]
    elif kind == "class-name":
        parent[key] = ["Lambda", "Dense", "Conv2D", "MyCustomLayer", "Functional", "Sequential",
                       "BatchNormalization", "__keras_tensor__"][b % 8]
    return json.dumps(tree).encode()


def _slots(tree) -> list[tuple[object, object]]:  # noqa: ANN001
    slots: list[tuple[object, object]] = []
    stack = [tree]
    while stack:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, value in pairs:
            slots.append((item, key))
            stack.append(value)
    return slots


# ----------------------------------------------------------------------------------------------------
# calibration files
# ----------------------------------------------------------------------------------------------------
def calibration_seeds() -> dict[str, bytes]:
    """Valid .npy / .npz bytes for the `branchy` seed model's input (12x12x3) and a two-array .npz."""
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(4, 12, 12, 3)).astype(np.float32)
    npy = io.BytesIO()
    np.save(npy, arr)
    npz = io.BytesIO()
    np.savez(npz, image=arr, other=np.arange(6, dtype=np.int16))
    fortran = io.BytesIO()
    np.save(fortran, np.asfortranarray(arr[:2]))
    return {".npy": npy.getvalue(), ".npz": npz.getvalue(), "-fortran.npy": fortran.getvalue()}


def npy_header(shape: tuple, descr: str = "<f4", payload: int = 64) -> bytes:
    """A .npy file whose header claims `shape` but which holds only `payload` bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * payload


# ----------------------------------------------------------------------------------------------------
# the chains
# ----------------------------------------------------------------------------------------------------
PIPELINES = [
    "",
    "dce,canonicalize,fold-pad,fold-constants,fold-batchnorm,fold-affine,fuse-activations,dce",
    "fold-constants{max_elements=64},canonicalize",
    "quantize-weights",
    "weights-to-f16",
    "dce,canonicalize,fold-batchnorm,fuse-activations,insert-fake-quant,lower-to-int{default_ranges=[-6,6]},dce",
    "insert-fake-quant{activations=i16},lower-to-int{io=float,default_ranges=[-4,4]}",
    "lower-to-int",
    "fold-affine,fold-pad,dce",
]


def internal_bug(err: BaseException) -> Optional[str]:
    """For a QCompilerError that wraps a non-qcompiler exception: the qcompiler file and line where that exception
    was raised (a safety net caught a bug there), else None. Wrapping a library's exception (zipfile, Keras,
    h5py, numpy called directly by the wrapper) is the intended translation, not a bug."""
    import traceback

    from qcompiler.errors import QCompilerError

    cause = err.__cause__
    if cause is None or isinstance(cause, QCompilerError):
        return None
    frames = traceback.extract_tb(cause.__traceback__)[1:]  # [0] is the frame that caught it
    ours = [f for f in frames if "/qcompiler/" in f.filename]
    return f"{ours[-1].filename}:{ours[-1].lineno}" if ours else None


def run_ir_chain(text: str, pipeline: str) -> Optional[bytes]:
    """parse -> verify -> passes -> write; returns the .tflite bytes when the IR makes it through."""
    import qcompiler
    from qcompiler.backend.tflite_writer import write_tflite

    graph = qcompiler.parse_ir(text)
    if pipeline:
        qcompiler.run_passes(graph, pipeline)
    return write_tflite(graph)


def run_keras_chain(path: Path) -> Optional[bytes]:
    import qcompiler

    return qcompiler.compile(str(path), mode="float32")


def run_calibration_chain(path: Path) -> None:
    import qcompiler
    from qcompiler.passes.calibrate import check_calibration_data, load_calibration_data

    data = load_calibration_data(path)
    graph = qcompiler.parse_ir("graph @g(%image: f32[?,12,12,3]) {\n  %r = relu(%image) : f32[?,12,12,3]\n"
                               "  return %r\n}\n")
    check_calibration_data(graph, data)
