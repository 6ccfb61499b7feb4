"""Muting TensorFlow's chatter, which ignores TF_CPP_MIN_LOG_LEVEL and writes straight to file descriptors."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator, Sequence


@contextmanager
def native_output_silenced(fds: Sequence[int] = (2,)) -> Iterator[None]:
    """Point the given file descriptors (2: stderr, 1: stdout) at /dev/null for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)
