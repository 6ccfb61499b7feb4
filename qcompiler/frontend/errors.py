"""Errors raised while importing a model: the file could not be read, or a layer cannot be translated."""
from __future__ import annotations

from typing import Optional, Sequence

from qcompiler.errors import QCompilerError


class ModelLoadError(QCompilerError):
    """The model file is missing, unreadable, or not a Keras 3 `.keras` / `.h5` model."""


class UnsupportedLayerError(QCompilerError):
    """A Keras layer (or one of its settings) has no translation to the IR.

    Without `reason` the layer class itself is unknown and the message lists the supported classes.
    """

    def __init__(self, layer_name: str, class_name: str, supported: Sequence[str],
                 reason: Optional[str] = None) -> None:
        self.layer_name = layer_name
        self.class_name = class_name
        self.supported = tuple(supported)
        self.reason = reason
        if reason is None:
            message = (f"Keras layer '{layer_name}' of class {class_name} is not supported. "
                       f"Replace it with supported layers: {', '.join(self.supported)}")
        else:
            message = f"Keras layer '{layer_name}' ({class_name}): {reason}"
        super().__init__(message)
