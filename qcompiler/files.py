"""Atomic file output: a reader never sees a half-written file, and a failed write leaves nothing behind.

Only regular files are written. An existing symlink, device, FIFO, socket or directory at the output path is
refused (replacing `/dev/stdout` or a symlink's target silently is never what the user meant), and so is an
output path that is one of the command's inputs (`-o model.keras` would destroy the model).
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from qcompiler.errors import QCompilerError

PathLike = Union[str, "os.PathLike[str]"]


class OutputPathError(QCompilerError):
    """The output path cannot or must not be written."""


def check_output_path(path: PathLike, inputs: Iterable[Optional[PathLike]] = ()) -> Path:
    """The output path as a Path, after refusing everything `atomic_write` must not replace."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"output path must be a str or os.PathLike, got {type(path).__name__}")
    text = os.fspath(path)
    if not text:
        raise OutputPathError("the output path is empty; give a file name, e.g. -o model.tflite")
    target = Path(text)
    if text.endswith(os.sep) or target.name in ("", ".", ".."):
        raise OutputPathError(f"output path '{text}' names a folder; give a file name, e.g. -o model.tflite")
    try:
        info = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):  # the folder check in atomic_write says which
        info = None
    except OSError as err:
        raise OutputPathError(f"cannot write '{text}': {err.strerror}") from None
    if info is not None:
        kind = _special_kind(info.st_mode)
        if kind is not None:
            raise OutputPathError(f"output path '{text}' is {kind}; qcompiler only writes regular files "
                                  "(choose another name, or remove it first)")
    for source in inputs:
        if source is not None and source != "-" and _same_file(target, Path(os.fspath(source))):
            raise OutputPathError(f"output path '{text}' is the input '{os.fspath(source)}'; writing it would "
                                  "destroy the input: choose another output name")
    return target


_SPECIAL_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def _special_kind(mode: int) -> Optional[str]:
    if stat.S_ISREG(mode):
        return None
    return next((kind for is_kind, kind in _SPECIAL_KINDS if is_kind(mode)), "not a regular file")


def _same_file(a: Path, b: Path) -> bool:
    """True when both paths reach the same file (same inode, or the same resolved path)."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):
        return False


def atomic_write(path: PathLike, data: bytes, inputs: Iterable[Optional[PathLike]] = ()) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`.

    `inputs`: paths the output must not be (the model, the calibration data). Refused before anything is
    written: an empty path, a folder, an existing symlink / device / FIFO / socket, an output equal to an input.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write writes bytes, got {type(data).__name__}")
    target = check_output_path(path, inputs)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise OutputPathError(f"cannot write '{target}': folder '{directory}' does not exist (or is not a folder)")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise OutputPathError(f"cannot write '{target}': {err.strerror} (is the folder writable?)") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        # Checked again just before the rename: something may have appeared at the path meanwhile.
        check_output_path(target, inputs)
        os.replace(tmp_name, target)
    except BaseException as err:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise OutputPathError(f"cannot write '{target}': {err.strerror}") from None
        raise
