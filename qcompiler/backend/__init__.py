"""TFLite backend: writes IR graphs as .tflite flatbuffers (our own writer, no TFLiteConverter)."""
from qcompiler.backend.tflite_writer import BackendError, write_tflite, write_tflite_file

__all__ = ["BackendError", "write_tflite", "write_tflite_file"]
