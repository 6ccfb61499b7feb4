"""qcompiler: Keras 3 models → readable graph IR → passes → TFLite flatbuffers."""
from qcompiler.api import compile, import_keras, parse_ir, run_passes
from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph

__all__ = ["compile", "import_keras", "parse_ir", "run_passes", "Graph", "QCompilerError"]
__version__ = "0.1.0"
