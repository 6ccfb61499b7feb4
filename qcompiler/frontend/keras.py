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

import inspect
import json
import os
import re
import zipfile
from typing import Any, Sequence, Union

import keras
from keras.src.models.functional import Functional

from qcompiler.frontend.errors import ModelLoadError, UnsupportedLayerError
from qcompiler.frontend.keras_layers import CONVERTERS, LAMBDA_REASON, LayerContext, supported_layers
from qcompiler.frontend.keras_ops import OPERATIONS, UnsupportedOperationError, class_path, emit_operation
from qcompiler.frontend.keras_ops import substitute_tensors
from qcompiler.frontend.keras_qat import QAT_CONVERTERS
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
    graph.outputs = _Importer(graph).emit_model(model, inputs, prefix="")
    graph.verify()
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
    _refuse_lambdas(_read_config(path, suffix))
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # Keras raises many kinds; all mean the same thing to the user
        raise ModelLoadError(f"Keras could not load '{path}': {type(err).__name__}: {err}") from err


def _read_config(path: str, suffix: str) -> Any:
    """The model's JSON config, read without building any layer."""
    if suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as err:
            raise ModelLoadError(f"'{path}' is not a valid .keras archive ({type(err).__name__}: {err}); "
                                 "re-save the model with model.save('model.keras')") from err
    import h5py  # a Keras dependency; only the legacy format needs it

    try:
        with h5py.File(path, "r") as f:
            text = f.attrs.get("model_config")
    except OSError as err:
        raise ModelLoadError(f"'{path}' is not a valid HDF5 file ({err}); re-save the model") from err
    if text is None:
        raise ModelLoadError(f"'{path}' holds no model config (only weights?); save the whole model with "
                             "model.save('model.keras')")
    try:
        return json.loads(text.decode() if isinstance(text, bytes) else text)
    except ValueError as err:
        raise ModelLoadError(f"'{path}' has an unreadable model config: {err}") from err


def _refuse_lambdas(config: Any) -> None:
    if isinstance(config, dict):
        if config.get("class_name") == "Lambda":
            name = (config.get("config") or {}).get("name", "?")
            raise UnsupportedLayerError(name, "Lambda", supported_layers(), LAMBDA_REASON)
        for value in config.values():
            _refuse_lambdas(value)
    elif isinstance(config, list):
        for value in config:
            _refuse_lambdas(value)


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
            value = CONVERTERS[type(op)](ctx, args)
        else:  # a keras.ops operation: its constant arguments matter too
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
