"""Atomic file output: a reader never sees a half-written file, and a failed write leaves nothing behind."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

from qcompiler.errors import QCompilerError


def atomic_write(path: Union[str, Path], data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise QCompilerError(f"cannot write '{target}': folder '{directory}' does not exist (or is not a folder)")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise QCompilerError(f"cannot write '{target}': {err.strerror} (is the folder writable?)") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException as err:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise QCompilerError(f"cannot write '{target}': {err.strerror}") from None
        raise
