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


# Modules whose first import prints native start-up logs (oneDNN, CUDA, absl "before InitializeLog") to fd 2.
_NOISY_MODULES = frozenset({"tensorflow", "keras", "ai_edge_litert", "tflite_runtime"})


class _QuietImporter:
    """A meta-path finder that runs the first import of a noisy module with stderr pointed at /dev/null.

    Installed once by the command line (`silence_tensorflow_imports`), so every path that reaches TensorFlow
    (a .keras input, fold-batchnorm's TF rsqrt, calibration executors) is quiet without each one knowing it.
    """

    def find_spec(self, fullname: str, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if fullname not in _NOISY_MODULES:
            return None
        import importlib.machinery

        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


class _QuietLoader:
    def __init__(self, loader) -> None:  # noqa: ANN001
        self.loader = loader

    def create_module(self, spec):  # noqa: ANN001
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: ANN001
        with native_output_silenced():
            self.loader.exec_module(module)
        _quiet_python_loggers()

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


def _quiet_python_loggers() -> None:
    import logging

    for name in ("absl", "tensorflow", "keras"):
        logging.getLogger(name).setLevel(logging.ERROR)


def silence_tensorflow_imports() -> None:
    """Quiet TensorFlow's start-up logs for this process: environment first (read when TF loads), then an import
    hook that runs its first import with stderr silenced. Idempotent."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if not any(isinstance(f, _QuietImporter) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImporter())
    if any(name in sys.modules for name in _NOISY_MODULES):
        _quiet_python_loggers()
