"""keras.ops operations applied to symbolic tensors in a functional model (`x + 3.0`, `ops.sigmoid(x)`, ...).

In Keras 3 such a call records a node whose operation is a `keras.src.ops.Operation` subclass (numpy.Add,
nn.Sigmoid, numpy.Reshape, ...): the operation object holds its settings (`Reshape.newshape`, `Mean.axis`) and
the node holds the call's arguments, symbolic tensors and Python constants mixed. `OPERATIONS` maps each
supported operation class to a builder; a builder gets the `LayerContext` (whose `layer` is the operation) and
the call's positional arguments with every symbolic tensor replaced by its IR value and every other argument
(Python scalar, list, numpy array) left as it is. Shape operations take their target shape from the output
shape Keras computed for the call, so they need no shape arithmetic of their own.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import keras
import numpy as np
from keras.src.ops import core as kcore
from keras.src.ops import math as kmath
from keras.src.ops import nn as knn
from keras.src.ops import numpy as knp

from qcompiler.frontend.errors import UnsupportedLayerError
from qcompiler.frontend.keras_layers import ACTIVATIONS, LayerContext, elu_general
from qcompiler.ir.graph import Value

Builder = Callable[[LayerContext, list[Any], Any], Value]  # (ctx, arguments, the Keras output tensor)


class UnsupportedOperationError(UnsupportedLayerError):
    """A keras.ops operation (or one of its arguments) has no translation to the IR."""

    def __init__(self, op_name: str, class_path: str, reason: Optional[str] = None) -> None:
        supported = supported_operations()
        super().__init__(op_name, class_path, supported, reason)
        what = f"keras.ops operation '{op_name}' ({class_path})"
        if reason is None:
            self.args = (f"{what} is not supported. Supported operations: {', '.join(supported)}",)
        else:
            self.args = (f"{what}: {reason}",)


def class_path(op: Any) -> str:
    return f"{type(op).__module__}.{type(op).__name__}"


def unsupported(ctx: LayerContext, reason: str) -> UnsupportedOperationError:
    return UnsupportedOperationError(ctx.layer.name, class_path(ctx.layer), reason)


# ----------------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------------
def _operand(ctx: LayerContext, arg: Any, suffix: str) -> Value:
    """An IR value for an argument: a symbolic tensor's value, or a float32 constant for anything else."""
    if isinstance(arg, Value):
        return arg
    try:
        array = np.asarray(keras.ops.convert_to_numpy(arg) if not isinstance(arg, (int, float, list, tuple))
                           else arg, np.float32)
    except (TypeError, ValueError) as err:
        raise unsupported(ctx, f"argument {arg!r} is neither a tensor nor a numeric constant ({err})") from None
    if not np.all(np.isfinite(array)):
        raise unsupported(ctx, f"constant argument {array.tolist()} is not finite")
    return ctx.const(array, suffix)


def _tensor(ctx: LayerContext, args: list[Any], index: int = 0) -> Value:
    if index >= len(args) or not isinstance(args[index], Value):
        raise unsupported(ctx, f"argument {index} must be a symbolic tensor")
    return args[index]


def _binary(op: str) -> Builder:
    def build(ctx: LayerContext, args: list[Any], out: Any) -> Value:
        a, b = _operand(ctx, args[0], "x1"), _operand(ctx, args[1], "x2")
        return ctx.op(op, a, b)

    return build


def _divide(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    """x / c with a constant c becomes x * (1/c), as the converter does; a tensor divisor stays a division."""
    x = _operand(ctx, args[0], "x1")
    if isinstance(args[1], Value):
        return ctx.op("div", x, args[1])
    divisor = np.asarray(args[1], np.float32)
    if np.any(divisor == 0):
        raise unsupported(ctx, f"divides by a constant that contains zero ({divisor.tolist()})")
    return ctx.op("mul", x, ctx.const(np.float32(1.0) / divisor, "reciprocal"))


def _activation(name: str) -> Builder:
    return lambda ctx, args, out: ACTIVATIONS[name](ctx, _tensor(ctx, args))


def _unary(op: str) -> Builder:
    return lambda ctx, args, out: ctx.op(op, _tensor(ctx, args))


def _negative(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    return ctx.op("neg", _tensor(ctx, args))


def _square(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    return ctx.op("square", _tensor(ctx, args))


def _gelu(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    return ctx.op("gelu", _tensor(ctx, args), approximate=bool(ctx.layer.approximate))


def _softmax(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    x = _tensor(ctx, args)
    axis = ctx.layer.axis
    if isinstance(axis, (list, tuple)) or int(axis) % x.type.rank != x.type.rank - 1:
        raise unsupported(ctx, f"softmax over axis {axis} of a rank-{x.type.rank} input; only the last axis is "
                               "supported")
    return ctx.op("softmax", x)


def _leaky_relu(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    return ctx.op("leaky_relu", _tensor(ctx, args), alpha=float(ctx.layer.negative_slope))


def _clip(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    """min(x, hi) then max(., lo), as tf.clip_by_value computes it: canonicalize turns the usual bounds into relu6 /
    relu_n1_to_1, and lo = 0 into a RELU after the MINIMUM (the converter's order; random seed 4116)."""
    x = _tensor(ctx, args)
    lo, hi = ctx.layer.x_min, ctx.layer.x_max
    if isinstance(lo, keras.KerasTensor) or isinstance(hi, keras.KerasTensor):
        raise unsupported(ctx, "clip bounds must be constants")
    y = ctx.op("minimum", x, ctx.const(np.float32(hi), "x_max"))
    return ctx.op("maximum", y, ctx.const(np.float32(lo), "x_min"))


def _axes(ctx: LayerContext, axis: Any, rank: int) -> list[int]:
    if axis is None:
        raise unsupported(ctx, "reduces over every axis, the batch included; give the non-batch axes")
    axes = sorted({int(a) % rank for a in (axis if isinstance(axis, (list, tuple)) else [axis])})
    if 0 in axes:
        raise unsupported(ctx, f"reduces over axis 0, the batch; only non-batch axes are supported (axis={axis})")
    return axes


def _reduce(op: str) -> Builder:
    def build(ctx: LayerContext, args: list[Any], out: Any) -> Value:
        x = _tensor(ctx, args)
        if getattr(ctx.layer, "initial", None) is not None:
            raise unsupported(ctx, "initial= is not supported")
        return ctx.op(op, x, axes=_axes(ctx, ctx.layer.axis, x.type.rank), keepdims=bool(ctx.layer.keepdims))

    return build


def _reshape_to_output(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    """reshape / expand_dims / squeeze: the target is the shape Keras computed, with the batch kept first."""
    x = _tensor(ctx, args)
    shape = tuple(out.shape)
    if x.type.shape[0] is None and (not shape or shape[0] is not None):
        raise unsupported(ctx, f"moves or fixes the batch axis ({x.type} -> {shape}); keep the batch first")
    if any(d is None for d in shape[1:]):
        raise unsupported(ctx, f"gives a result shape {shape} with unknown non-batch dimensions")
    target = [-1 if d is None else int(d) for d in shape]
    return ctx.op("reshape", x, shape=target)


def _transpose(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    x = _tensor(ctx, args)
    axes = ctx.layer.axes
    perm = list(range(x.type.rank))[::-1] if axes is None else [int(a) % x.type.rank for a in axes]
    if perm[0] != 0:
        raise unsupported(ctx, f"moves the batch axis (axes={axes}); keep axis 0 first")
    return ctx.op("transpose", x, perm=perm)


def _pad(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    """Zero padding of non-batch axes (mode "constant", constant_values 0 or absent)."""
    x = _tensor(ctx, args)
    widths = [[int(a), int(b)] for a, b in ctx.layer.pad_width]
    widths = widths * x.type.rank if len(widths) == 1 else widths
    constant = args[1] if len(args) > 1 else None
    if ctx.layer.mode != "constant" or (constant is not None and float(np.asarray(constant)) != 0.0):
        raise unsupported(ctx, f"pads with mode={ctx.layer.mode!r}, constant_values={constant!r}; only zero "
                               "padding is supported")
    if widths[0] != [0, 0]:
        raise unsupported(ctx, f"pads the batch axis (pad_width={ctx.layer.pad_width})")
    return ctx.op("pad", x, paddings=widths)


def _concatenate(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    xs = [_operand(ctx, a, f"x{i}") for i, a in enumerate(keras.tree.flatten(args[0]))]
    rank = xs[0].type.rank
    axis = int(ctx.layer.axis) % rank
    if axis == 0:
        raise unsupported(ctx, "concatenates along the batch axis")
    return ctx.op("concat", *xs, axis=axis)


def _matmul(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    """x @ W with a constant 2-D W becomes fully_connected (weights [out, in])."""
    x = _tensor(ctx, args)
    if isinstance(args[1], Value):
        raise unsupported(ctx, "multiplies two tensors; only x @ constant matrix is supported")
    w = np.asarray(args[1], np.float32)
    if w.ndim != 2:
        raise unsupported(ctx, f"the constant operand has shape {w.shape}; only a 2-D matrix is supported")
    return ctx.op("fully_connected", x, ctx.const(w.T, "kernel"))


def _get_item(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    """x[...] with unit-step slices and integer indices on non-batch axes: a slice, then a reshape that drops
    the indexed axes (Ellipsis and None are refused)."""
    x = _tensor(ctx, args)
    key = args[1] if isinstance(args[1], tuple) else (args[1],)
    if len(key) > x.type.rank or any(k is Ellipsis or k is None for k in key):
        raise unsupported(ctx, f"index {key} is not supported; use unit-step slices and integers, one per axis")
    begin, size = [0] * x.type.rank, [-1] * x.type.rank
    for axis, k in enumerate(key):
        dim = x.type.shape[axis]
        if isinstance(k, slice):
            if k == slice(None):
                continue
            if axis == 0 or dim is None or k.step not in (None, 1):
                raise unsupported(ctx, f"slice {k} on axis {axis} of {x.type}: only unit-step slices of known "
                                       "non-batch axes are supported")
            start, stop, _ = k.indices(dim)
            begin[axis], size[axis] = start, max(stop - start, 0)
        elif isinstance(k, (int, np.integer)) and axis > 0 and dim is not None and -dim <= int(k) < dim:
            begin[axis], size[axis] = int(k) % dim, 1
        else:
            raise unsupported(ctx, f"index {k!r} on axis {axis} of {x.type} is not supported")
    y = ctx.op("slice", x, begin=begin, size=size)
    if tuple(out.shape) == y.type.shape:
        return y
    return ctx.op("reshape", y, shape=[-1 if d is None else int(d) for d in out.shape])


def _elu(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    return elu_general(ctx, _tensor(ctx, args), ctx.layer.alpha)


def _cast(ctx: LayerContext, args: list[Any], out: Any) -> Value:
    if keras.backend.standardize_dtype(ctx.layer.dtype) != "float32":
        raise unsupported(ctx, f"casts to {ctx.layer.dtype}; only float32 tensors are supported")
    return ctx.op("identity", _tensor(ctx, args))


OPERATIONS: dict[type, Builder] = {
    knp.Add: _binary("add"),
    knp.Subtract: _binary("sub"),
    knp.Multiply: _binary("mul"),
    knp.Maximum: _binary("maximum"),
    knp.Minimum: _binary("minimum"),
    knp.Divide: _divide,
    knp.TrueDivide: _divide,
    knp.Negative: _negative,
    knp.Square: _square,
    knp.Sqrt: _unary("sqrt"),
    knp.Abs: _unary("abs"),
    knp.Absolute: _unary("abs"),
    knp.Exp: _unary("exp"),
    knp.Tanh: _activation("tanh"),
    knp.Clip: _clip,
    knp.Mean: _reduce("mean"),
    knp.Max: _reduce("reduce_max"),
    knp.Sum: _reduce("sum"),
    knp.Reshape: _reshape_to_output,
    knp.ExpandDims: _reshape_to_output,
    knp.Squeeze: _reshape_to_output,
    knp.Transpose: _transpose,
    knp.Concatenate: _concatenate,
    knp.Pad: _pad,
    knp.GetItem: _get_item,
    knp.Matmul: _matmul,
    kmath.Rsqrt: _unary("rsqrt"),
    knn.Relu: _activation("relu"),
    knn.Relu6: _activation("relu6"),
    knn.Sigmoid: _activation("sigmoid"),
    knn.HardSigmoid: _activation("hard_sigmoid"),
    knn.HardSilu: _activation("hard_silu"),
    knn.Silu: _activation("silu"),
    knn.Gelu: _gelu,
    knn.Softmax: _softmax,
    knn.Elu: _elu,
    knn.LeakyRelu: _leaky_relu,
    kcore.Cast: _cast,
}


# Keyword arguments keras.ops itself passes to the operation call (keras.ops.pad calls Pad(...)(x,
# constant_values=...)): accepted as constants, appended to the positional arguments in this order.
KEYWORDS: dict[type, tuple[str, ...]] = {knp.Pad: ("constant_values",)}


def supported_operations() -> list[str]:
    """keras.ops names of the supported operation classes (`numpy.Add`, `nn.Sigmoid`, ...)."""
    return sorted(f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}" for cls in OPERATIONS)


def emit_operation(ctx: LayerContext, node: Any, env_args: list[Any]) -> Value:
    """Translate one operation call; `env_args` are the call's positional arguments, tensors as IR values."""
    builder = OPERATIONS.get(type(ctx.layer))
    if builder is None:
        raise UnsupportedOperationError(ctx.layer.name, class_path(ctx.layer))
    keywords = KEYWORDS.get(type(ctx.layer), ())
    extra = sorted(k for k in node.arguments.kwargs if k not in keywords)
    if extra:
        raise unsupported(ctx, f"is called with keyword arguments {extra}; pass them positionally")
    trailing = [node.arguments.kwargs.get(k) for k in keywords]  # constants, after the positional arguments
    return builder(ctx, [*env_args, *trailing] if any(v is not None for v in trailing) else env_args,
                   node.outputs[0])


def substitute_tensors(args: Sequence[Any], values: dict[int, Value]) -> list[Any]:
    """The positional arguments with each symbolic tensor (also inside lists) replaced by its IR value."""
    return [keras.tree.map_structure(lambda a: values.get(id(a), a) if isinstance(a, keras.KerasTensor) else a, arg)
            for arg in args]
