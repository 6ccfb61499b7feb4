"""Keras 3 importer: a Sequential or Functional model, or a `.keras` / `.h5` file, becomes one IR graph.

The functional graph is walked through Keras 3's own records: every symbolic tensor carries a KerasHistory
(operation, node_index, tensor_index) naming the call (`operation._inbound_nodes[node_index]`) that produced it,
and each call node keeps its arguments. A shared layer therefore appears once per call, and a model used as a
layer is expanded in place, so nested models are flattened into the one graph.

Naming: graph inputs take the Keras Input names, each layer call's output value takes the layer name (prefixed
by the enclosing model names for nested models), helper values get `layer/<op>` names, and every node records
the Keras layer it came from in `node.layer`.
"""
from __future__ import annotations

import gc
import inspect
import json
import os
import re
import zipfile
from typing import Any, Sequence, Union

import keras
from keras.src.models.functional import Functional

from qcompiler.errors import QCompilerError
from qcompiler.frontend.errors import ModelLoadError, UnsupportedLayerError
from qcompiler.frontend.keras_layers import CONVERTERS, LAMBDA_REASON, LayerContext, read_weights, supported_layers
from qcompiler.frontend.keras_ops import OPERATIONS, UnsupportedOperationError, class_path, emit_operation
from qcompiler.frontend.keras_ops import substitute_tensors
from qcompiler.frontend.keras_qat import QAT_CONVERTERS
from qcompiler.ir.checks import check_values
from qcompiler.ir.graph import Graph, IRError, Value
from qcompiler.ir.types import TensorType

CONVERTERS = {**CONVERTERS, **QAT_CONVERTERS}  # qcompiler.qat's layers (their import registers them for loading)
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-/]")


def import_keras(model_or_path: Union[keras.Model, str, os.PathLike]) -> Graph:
    """Translate a Keras 3 model (or the path of a saved one) into a verified float32 IR graph."""
    if isinstance(model_or_path, (str, os.PathLike)):
        model = load_model(model_or_path)
    elif isinstance(model_or_path, keras.Model):
        model = model_or_path
    else:
        raise ModelLoadError(f"import_keras takes a keras.Model or the path of a .keras/.h5 file, "
                             f"got {type(model_or_path).__name__}")
    function = _functional_of(model)
    graph = Graph(_sanitize(model.name))
    inputs = [graph.add_input(_input_name(t), _input_type(t)) for t in function.inputs]
    with read_weights(model):
        graph.outputs = _Importer(graph).emit_model(model, inputs, prefix="")
    graph.verify()
    check_values(graph)  # NaN/inf weights, negative batch-norm variance: an error naming the layer
    return graph


# ----------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------
def load_model(path: Union[str, os.PathLike]) -> keras.Model:
    """Load a `.keras` or `.h5` model for inference, refusing Lambda layers before anything is deserialized."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a directory, not a model file" if os.path.isdir(path) else "does not exist"
        raise ModelLoadError(f"model file '{path}' {what}; pass the path of a .keras or .h5 file")
    suffix = os.path.splitext(path)[1]
    if suffix not in MODEL_SUFFIXES:
        raise ModelLoadError(f"'{path}' has the extension '{suffix}'; qcompiler reads Keras 3 models saved as "
                             f"{', '.join(MODEL_SUFFIXES)} (model.save('model.keras'))")
    _refuse_untranslatable(_read_config(path, suffix))
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # Keras raises many kinds; all mean the same thing to the user
        message = f"Keras could not load '{path}': {type(err).__name__}: {_short(str(err))}"
        del err
        # A failed load can leave h5py objects for the archive's weights in reference cycles; libhdf5 has been
        # seen to crash when they are collected during a later load, so they are closed now.
        gc.collect()
        raise ModelLoadError(message) from None


# Limits checked before Keras (or json) parses a config: a hostile file must not exhaust memory or the stack.
MAX_CONFIG_BYTES = 64 << 20  # MobileNetV2's config.json is ~120 KB
MAX_CONFIG_DEPTH = 100  # nesting of [ and {; real models stay under ~40 even with nested sub-models
MAX_ARCHIVE_BYTES = 4 << 30  # uncompressed size of everything in a .keras archive (config, weights)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _short(message: str, limit: int = 300) -> str:
    """Keras error text without the configs it appends (`Full object config: {...}`), at most `limit` chars."""
    for marker in (" Full object config:", "\n\nconfig=", " config={"):
        if marker in message:
            message = message[:message.index(marker)]
    message = " ".join(message.split())
    return message if len(message) <= limit else message[:limit] + "..."


def _check_config_text(path: str, text: bytes) -> None:
    if len(text) > MAX_CONFIG_BYTES:
        raise ModelLoadError(f"'{path}': the model config is {len(text):,} bytes, more than the "
                             f"{MAX_CONFIG_BYTES >> 20} MiB qcompiler accepts")
    import numpy as np

    stripped = _JSON_STRING.sub("", text.decode("utf-8", errors="replace")).encode()
    codes = np.frombuffer(stripped, np.uint8)
    delta = ((codes == ord("[")) | (codes == ord("{"))).astype(np.int32) \
        - ((codes == ord("]")) | (codes == ord("}"))).astype(np.int32)
    depth = int(np.cumsum(delta).max(initial=0))
    if depth > MAX_CONFIG_DEPTH:
        raise ModelLoadError(f"'{path}': the model config nests {depth} levels deep, more than the "
                             f"{MAX_CONFIG_DEPTH} qcompiler accepts; this is not a model Keras saved")


def _read_config(path: str, suffix: str) -> Any:
    """The model's JSON config, read without building any layer, after checking its size and nesting depth."""
    if suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as archive:
                total = sum(info.file_size for info in archive.infolist())
                if total > MAX_ARCHIVE_BYTES:
                    raise ModelLoadError(f"'{path}' unpacks to {total:,} bytes, more than the "
                                         f"{MAX_ARCHIVE_BYTES >> 30} GiB qcompiler accepts")
                if archive.getinfo("config.json").file_size > MAX_CONFIG_BYTES:
                    _check_config_text(path, b" " * (MAX_CONFIG_BYTES + 1))
                with archive.open("config.json") as member:
                    text = member.read(MAX_CONFIG_BYTES + 1)
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, NotImplementedError) as err:
            raise ModelLoadError(f"'{path}' is not a valid .keras archive ({type(err).__name__}: {err}); "
                                 "re-save the model with model.save('model.keras')") from err
        return _parse_config(path, text)
    import h5py  # a Keras dependency; only the legacy format needs it

    try:
        with h5py.File(path, "r") as f:
            text = f.attrs.get("model_config")
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"'{path}' is not a valid HDF5 file ({err}); re-save the model") from err
    if text is None:
        raise ModelLoadError(f"'{path}' holds no model config (only weights?); save the whole model with "
                             "model.save('model.keras')")
    return _parse_config(path, text if isinstance(text, bytes) else str(text).encode())


def _parse_config(path: str, text: bytes) -> Any:
    _check_config_text(path, text)
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ModelLoadError(f"'{path}' has an unreadable model config ({type(err).__name__}: {err}); "
                             "re-save the model with model.save('model.keras')") from err
    if not isinstance(config, dict):
        raise ModelLoadError(f"'{path}': the model config is a JSON {type(config).__name__}, not an object")
    return config


def _refuse_untranslatable(config: Any) -> None:
    """Refuse Lambda layers and custom (non-Keras) classes from the config, before Keras deserializes anything:
    loading them would run arbitrary Python code, and qcompiler could not translate them anyway."""
    stack = [config]
    while stack:  # iterative: the depth is limited already, but the walk need not rely on it
        item = stack.pop()
        if isinstance(item, dict):
            _refuse_object(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


# Classes a config may name: Keras's own, and qcompiler's quantization-aware-training layers (code we ship).
TRUSTED_MODULES = ("keras", "qcompiler.qat.")


def _refuse_object(config: dict) -> None:
    class_name = config.get("class_name")
    if not isinstance(class_name, str) or not isinstance(config.get("config"), (dict, type(None))):
        return
    name = str((config.get("config") or {}).get("name", "?"))
    if class_name == "Lambda":
        raise UnsupportedLayerError(name, "Lambda", supported_layers(), LAMBDA_REASON)
    module = config.get("module")
    registered = config.get("registered_name")
    if class_name.startswith("__"):  # Keras's own markers (__keras_tensor__, __tuple__, __numpy__ ...)
        return
    trusted = isinstance(module, str) and module.startswith(TRUSTED_MODULES)
    if module is None and registered is not None or isinstance(module, str) and not trusted:
        origin = f"module '{module}'" if module else f"registered as '{registered}'"
        raise UnsupportedLayerError(name, class_name, supported_layers(),
                                    f"is a custom class ({origin}), not a built-in Keras layer: qcompiler "
                                    "translates only built-in layers and does not run custom Python code from a "
                                    "model file; rebuild the model from built-in layers")


# ----------------------------------------------------------------------------------------------------
# walking the functional graph
# ----------------------------------------------------------------------------------------------------
class _Importer:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.weights: dict[tuple[int, str], Value] = {}

    def emit_model(self, model: keras.Model, inputs: Sequence[Value], prefix: str) -> list[Value]:
        """Emit every call of `model`'s graph on `inputs`; returns the values of model.outputs."""
        function = _functional_of(model)
        if len(inputs) != len(function.inputs):
            raise UnsupportedLayerError(model.name, type(model).__name__, supported_layers(),
                                        f"called with {len(inputs)} tensors but it has {len(function.inputs)} inputs")
        env: dict[int, Value] = {id(t): v for t, v in zip(function.inputs, inputs)}
        for node in _calls_in_order(function):
            args = [env[id(t)] for t in _call_tensors(node)]
            results = self.emit_call(node, args, prefix)
            for tensor, value in zip(node.outputs, results):
                env[id(tensor)] = value
        return [env[id(t)] for t in function.outputs]

    def emit_call(self, node: Any, args: list[Value], prefix: str) -> list[Value]:
        op = node.operation
        if isinstance(op, keras.Model):
            results = self.emit_model(op, args, prefix + _sanitize(op.name) + "/")
            if len(results) != len(node.outputs):
                raise UnsupportedLayerError(op.name, type(op).__name__, supported_layers(),
                                            "its outputs do not match the call's outputs")
            return results
        _check_translatable(op, node)
        ctx = LayerContext(self.graph, op, prefix + _sanitize(op.name), self.weights)
        if isinstance(op, keras.layers.Layer):
            if op.weights:
                self.graph.variable_layers.add(op.name)
            try:
                value = CONVERTERS[type(op)](ctx, args)
            except QCompilerError:
                raise
            except (TypeError, ValueError, ArithmeticError, IndexError, KeyError) as err:
                # Keras does not validate every setting of a loaded config (Rescaling(scale="same") loads): whatever
                # a translator cannot use is an error naming the layer, not a traceback.
                raise UnsupportedLayerError(op.name, type(op).__name__, supported_layers(),
                                            f"its configuration cannot be translated ({type(err).__name__}: {err})") \
                    from err
        else:  # a keras.ops operation: its constant arguments matter too
            self.graph.op_calls.add(op.name)
            values = {id(t): v for t, v in zip(_call_tensors(node), args)}
            value = emit_operation(ctx, node, substitute_tensors(_split_arguments(node)[0], values))
        _rename(self.graph, value, ctx.base)
        return [value]


def _functional_of(model: keras.Model) -> Functional:
    """The Functional graph behind a model: itself, or the one a Sequential builds once it knows its input."""
    if isinstance(model, keras.Sequential):
        if model._functional is None:
            raise UnsupportedLayerError(model.name, "Sequential", supported_layers(),
                                        "has no input shape, so its graph is unknown; start it with "
                                        "keras.Input(shape=...) or call model.build(input_shape)")
        return model._functional
    if isinstance(model, Functional):
        return model
    raise UnsupportedLayerError(model.name, type(model).__name__, supported_layers(),
                                "is a subclassed keras.Model whose call() is arbitrary Python; rebuild it with "
                                "the Functional or Sequential API")


def _producer(tensor: Any) -> Any:
    history = getattr(tensor, "_keras_history", None)
    if history is None or history.operation is None:
        raise ModelLoadError(f"tensor '{tensor.name}' has no Keras history; it was not produced by a layer")
    return history.operation._inbound_nodes[history.node_index]


def _split_arguments(node: Any) -> tuple[list[Any], dict[str, Any]]:
    """A call's positional arguments (the first one even when passed by keyword) and its other kwargs."""
    args, kwargs = list(node.arguments.args), dict(node.arguments.kwargs)
    if not args:
        try:
            first = next(iter(inspect.signature(node.operation.call).parameters), None)
        except (TypeError, ValueError):
            first = None
        if first in kwargs:
            args.append(kwargs.pop(first))
    return args, kwargs


def _call_tensors(node: Any) -> list[Any]:
    """The symbolic tensors among a call's positional arguments, flattened in order."""
    return [t for t in keras.tree.flatten(_split_arguments(node)[0]) if isinstance(t, keras.KerasTensor)]


def _calls_in_order(function: Functional) -> list[Any]:
    """The call nodes that produce `function.outputs` from its inputs, producers first (depth-first order)."""
    known = {id(t) for t in function.inputs}
    done: set[int] = set()
    order: list[Any] = []
    stack: list[tuple[Any, bool]] = [(_producer(t), False) for t in reversed(function.outputs) if id(t) not in known]
    while stack:
        node, expanded = stack.pop()
        if id(node) in done:
            continue
        if expanded:
            done.add(id(node))
            order.append(node)
            continue
        if node.is_input:
            raise ModelLoadError(f"model '{function.name}' uses input '{node.operation.name}', which is not one "
                                 "of its declared inputs")
        stack.append((node, True))
        for tensor in reversed(_call_tensors(node)):
            if id(tensor) not in known:
                stack.append((_producer(tensor), False))
    return order


def _check_translatable(op: Any, node: Any) -> None:
    class_name = type(op).__name__
    if not isinstance(op, keras.layers.Layer):
        if type(op) not in OPERATIONS:
            raise UnsupportedOperationError(op.name, class_path(op))
        if len(node.outputs) != 1:
            raise UnsupportedOperationError(op.name, class_path(op), f"has {len(node.outputs)} outputs; only "
                                            "single-output operations are supported")
        return
    if type(op) not in CONVERTERS:
        base = next((cls.__name__ for cls in CONVERTERS if isinstance(op, cls)), None)
        reason = None if base is None else (f"subclasses {base}, and a subclass may change call(); use "
                                            f"keras.layers.{base} itself")
        raise UnsupportedLayerError(op.name, class_name, supported_layers(), reason)
    problems = [] if _call_tensors(node) else ["is called without an input tensor"]
    tensor_kwargs = [k for k, v in _split_arguments(node)[1].items()
                     if any(isinstance(t, keras.KerasTensor) for t in keras.tree.flatten(v))]
    if tensor_kwargs:
        problems.append(f"is called with tensor keyword arguments {tensor_kwargs} (masks are not supported)")
    if len(node.outputs) != 1:
        problems.append(f"has {len(node.outputs)} outputs; only single-output layers are supported")
    if getattr(op, "quantization_mode", None) is not None:
        problems.append(f"is already quantized ({op.quantization_mode}); import the float model")
    if op.compute_dtype != "float32":
        problems.append(f"computes in {op.compute_dtype}; use the float32 dtype policy")
    if problems:
        raise UnsupportedLayerError(op.name, class_name, supported_layers(), "; ".join(problems))


def _input_name(tensor: Any) -> str:
    history = getattr(tensor, "_keras_history", None)
    if history is not None and history.operation is not None:
        return _sanitize(history.operation.name)
    return _sanitize(tensor.name)


def _input_type(tensor: Any) -> TensorType:
    if keras.backend.standardize_dtype(tensor.dtype) != "float32":
        raise UnsupportedLayerError(_input_name(tensor), "InputLayer", supported_layers(),
                                    f"has dtype {tensor.dtype}; only float32 model inputs are supported")
    return TensorType(tuple(tensor.shape), "f32")


def _sanitize(name: str) -> str:
    return _BAD_NAME_CHARS.sub("_", name) or "v"


def _rename(graph: Graph, value: Value, base: str) -> None:
    """Give a layer's output value the layer's name (`name_1`, `name_2`, ... for repeated calls)."""
    candidate, i = base, 1
    while True:
        try:
            graph.rename(value, candidate)
            return
        except IRError:
            candidate, i = f"{base}_{i}", i + 1


__all__ = ["import_keras", "load_model", "ModelLoadError", "UnsupportedLayerError"]
