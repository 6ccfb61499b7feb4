"""qcompiler: Keras 3 models → readable graph IR → passes → TFLite flatbuffers."""
from qcompiler.api import (calibration_statistics, compile, float_graph, import_keras, layer_report, parse_ir,
                           pipeline_for, quantize, run_passes)
from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph

__all__ = ["calibration_statistics", "compile", "float_graph", "import_keras", "layer_report", "parse_ir",
           "pipeline_for", "quantize", "run_passes", "Graph", "QCompilerError"]
__version__ = "0.1.0"
