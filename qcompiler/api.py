"""The public Python API: import, run passes, compile. Everything here composes the lower layers."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph
from qcompiler.ir.parser import parse

ModelLike = Union[str, Path, Any]  # a keras.Model or a path to .keras / .h5
MODES = ("float32",)


def import_keras(model_or_path: ModelLike) -> Graph:
    """Import a Keras 3 model (object or .keras/.h5 path) into a verified IR graph."""
    from qcompiler.frontend.keras import import_keras as _import

    return _import(model_or_path)


def parse_ir(text: str, constants: Optional[dict] = None) -> Graph:
    """Parse IR text (as printed by `print(graph)`)."""
    return parse(text, constants=constants)


def run_passes(graph: Graph, pipeline: Union[str, list], **options: Any) -> Graph:
    """Run a pass pipeline ("fold-batchnorm,fuse-activations") on `graph` in place and return it."""
    from qcompiler.passes.manager import run_passes as _run

    return _run(graph, pipeline, **options)


def compile(model_or_path: Union[ModelLike, Graph], mode: str = "float32", **options: Any) -> bytes:
    """Compile a Keras model (or an IR graph) to TFLite flatbuffer bytes."""
    if mode not in MODES:
        raise QCompilerError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    from qcompiler.backend.tflite_writer import write_tflite
    from qcompiler.passes.registry import DEFAULT_FLOAT_PIPELINE

    graph = model_or_path.clone() if isinstance(model_or_path, Graph) else import_keras(model_or_path)
    run_passes(graph, DEFAULT_FLOAT_PIPELINE)
    return write_tflite(graph)
