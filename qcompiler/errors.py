"""The root of qcompiler's own exceptions, so callers can catch every user-facing failure at once."""
from __future__ import annotations


class QCompilerError(Exception):
    """A model, option or file that qcompiler cannot handle; the message says what to change."""
