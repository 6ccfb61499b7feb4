"""quantize_model: a float Keras 3 model -> a trainable QAT model; strip: a QAT model -> the float model.

Where fake quantization goes mirrors what lower-to-int does with the int8 spec (qcompiler/quant/spec.py), so that
the model that trains is the model that ships:
  - model inputs and the outputs of ops with their own scale (conv, depthwise, dense, add/sub/mul, mean,
    activations) get a `FakeQuant` (EMA ranges); a conv/dense followed by batch norm and ReLU/ReLU6 becomes one
    `QuantConv2D`/`QuantDepthwiseConv2D`/`QuantDense` (batch norm folded, weights fake-quantized) with its
    FakeQuant after the activation, as the TFLite op fuses them;
  - an Add/Subtract/Multiply whose only user is a ReLU/ReLU6 gets its FakeQuant after the ReLU (TFLite fuses it);
  - softmax and sigmoid get the kernel's fixed range [0, 255/256], tanh [-1, 127/128];
  - max pooling, flatten, reshape, padding, cropping, upsampling, dropout keep their input's grid (no FakeQuant);
  - average pooling keeps its input's scale too but its averages fall between levels: the input's own
    FakeQuant is applied again (`observe=False`), as the int8 kernel rounds to the input's scale;
  - concatenate/maximum/minimum share one scale across operands and output: one FakeQuant on the output, and
    operands used only by such ops get none (lowering gives them the output's parameters).
The graph is rebuilt layer by layer from Keras' own call records; nested models are flattened into one model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import keras

from qcompiler.qat.layers import FUSED_ACTIVATIONS, QUANT_WEIGHT_LAYERS, FakeQuant, _QuantWeights
from qcompiler.quant.spec import quant_spec

L = keras.layers
# kernel-fixed output ranges (int8): the same table lower-to-int uses
FIXED_RANGES = {op: quant_spec(op).fixed_i8 for op in ("softmax", "sigmoid", "tanh")}
KEEP_GRID = (L.MaxPooling2D, L.Flatten, L.Reshape, L.ZeroPadding2D, L.Cropping2D, L.UpSampling2D,
             L.GlobalMaxPooling2D, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.GaussianNoise,
             L.GaussianDropout, L.AlphaDropout)
SHARED_SCALE = (L.AveragePooling2D,)
SHARED_OUTPUT = (L.Concatenate, L.Maximum, L.Minimum)
FUSES_RELU = (L.Add, L.Subtract, L.Multiply)


@dataclass
class _Key:
    """A tensor of the flattened graph."""

    index: int


@dataclass
class _Call:
    layer: Any
    args: Any  # positional arguments with tensors replaced by _Key
    kwargs: dict
    inputs: list[int]
    output: int


@dataclass
class _Flat:
    inputs: list[tuple[int, Any]] = field(default_factory=list)  # (key, the Keras input tensor)
    calls: list[_Call] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    keys: int = 0

    def new_key(self) -> int:
        self.keys += 1
        return self.keys - 1

    def users(self) -> dict[int, list[int]]:
        table: dict[int, list[int]] = {}
        for index, call in enumerate(self.calls):
            for key in call.inputs:
                table.setdefault(key, []).append(index)
        return table


def flatten_model(model: keras.Model) -> _Flat:
    """The model's layer calls in order, nested models expanded."""
    from qcompiler.frontend.keras import _functional_of

    flat = _Flat()
    function = _functional_of(model)
    keys = []
    for tensor in function.inputs:
        key = flat.new_key()
        flat.inputs.append((key, tensor))
        keys.append(key)
    flat.outputs = _expand(flat, model, keys)
    return flat


def _expand(flat: _Flat, model: keras.Model, arg_keys: list[int]) -> list[int]:
    from qcompiler.frontend.keras import _call_tensors, _calls_in_order, _functional_of, _split_arguments

    function = _functional_of(model)
    env = {id(t): k for t, k in zip(function.inputs, arg_keys)}
    for node in _calls_in_order(function):
        inputs = [env[id(t)] for t in _call_tensors(node)]
        op = node.operation
        if isinstance(op, keras.Model):
            outputs = _expand(flat, op, inputs)
        else:
            args, kwargs = _split_arguments(node)
            args = keras.tree.map_structure(
                lambda t: _Key(env[id(t)]) if isinstance(t, keras.KerasTensor) else t, args)
            key = flat.new_key()
            flat.calls.append(_Call(op, args, kwargs, inputs, key))
            outputs = [key]
        for tensor, key in zip(node.outputs, outputs):
            env[id(tensor)] = key
    return [env[id(t)] for t in function.outputs]


def _input_name(tensor: Any) -> str:
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history is not None and history.operation is not None else tensor.name


def _new_inputs(flat: _Flat) -> tuple[dict[int, Any], list[Any]]:
    env, inputs = {}, []
    for key, tensor in flat.inputs:
        new = keras.Input(batch_shape=tuple(tensor.shape), dtype=tensor.dtype, name=_input_name(tensor))
        env[key] = new
        inputs.append(new)
    return env, inputs


def _apply(call: _Call, layer: Any, env: dict[int, Any]):
    args = keras.tree.map_structure(lambda a: env[a.index] if isinstance(a, _Key) else a, call.args)
    return layer(*args, **call.kwargs)


def _clone(layer: Any) -> Any:
    """A new layer with the same config; weights are copied once it is built."""
    return type(layer).from_config(layer.get_config())


def _copy_weights(source: Any, target: Any) -> None:
    weights = source.get_weights()
    if weights:
        target.set_weights(weights)


# ----------------------------------------------------------------------------------------------------
# quantize_model
# ----------------------------------------------------------------------------------------------------
def _activation_kind(layer: Any) -> Optional[str]:
    """'relu'/'relu6' for a layer that TFLite fuses into its producer, None otherwise."""
    if type(layer) is L.Activation:
        name = _activation_name(layer.activation)
        return name if name in ("relu", "relu6") else None
    if type(layer) is L.ReLU and not layer.negative_slope and not layer.threshold:
        if layer.max_value is None:
            return "relu"
        if float(layer.max_value) == 6.0:
            return "relu6"
    return None


def _activation_name(fn: Any) -> str:
    name = keras.activations.serialize(fn)
    if isinstance(name, dict):
        name = name.get("config", name.get("class_name", ""))
    return str(name)


def _fixed_range(layer: Any) -> Optional[tuple[float, float]]:
    if type(layer) is L.Softmax:
        return FIXED_RANGES["softmax"]
    if type(layer) is L.Activation:
        return FIXED_RANGES.get(_activation_name(layer.activation))
    return None


@dataclass
class _Options:
    quant_delay: int
    weight_bits: int
    activation_bits: int
    per_channel: bool
    narrow_range: bool
    freeze_bn_delay: Optional[int]
    range_mode: str
    ema_decay: float
    dense_per_channel: bool
    bn_statistics: str
    initial_range: Optional[tuple[float, float]]


class _Quantizer:
    def __init__(self, flat: _Flat, options: _Options) -> None:
        self.flat = flat
        self.options = options
        self.users = flat.users()
        self.outputs = set(flat.outputs)
        self.absorbed: set[int] = set()
        self.grid_of: dict[int, FakeQuant] = {}  # key -> the FakeQuant whose grid the new tensor is on

    def fake_quant(self, name: str, fixed: Optional[tuple[float, float]] = None) -> FakeQuant:
        o = self.options
        if fixed is not None:
            return FakeQuant(bits=8, mode="fixed", min=fixed[0], max=fixed[1], quant_delay=o.quant_delay,
                             name=f"{name}_quant")
        start = (None, None) if o.initial_range is None else o.initial_range
        return FakeQuant(bits=o.activation_bits, mode=o.range_mode, ema_decay=o.ema_decay, min=start[0],
                         max=start[1], quant_delay=o.quant_delay, name=f"{name}_quant")

    def needs_range(self, key: int) -> bool:
        """False when every user shares one scale with its output (concat, maximum, minimum)."""
        users = self.users.get(key, [])
        if key in self.outputs or not users:
            return True
        return not all(isinstance(self.flat.calls[u].layer, SHARED_OUTPUT) for u in users)

    def sole_user(self, key: int) -> Optional[int]:
        users = self.users.get(key, [])
        return users[0] if len(users) == 1 and key not in self.outputs else None

    def mark(self, env: dict, key: int, name: str, fixed: Optional[tuple[float, float]] = None) -> None:
        if fixed is None and not self.needs_range(key):
            return
        layer = self.fake_quant(name, fixed)
        env[key] = layer(env[key])
        self.grid_of[key] = layer

    def build(self, name: str) -> keras.Model:
        env, inputs = _new_inputs(self.flat)
        for key, tensor in self.flat.inputs:
            self.mark(env, key, _input_name(tensor))
        for index, call in enumerate(self.flat.calls):
            if index in self.absorbed:
                continue
            self.emit(index, call, env)
        outputs = [env[k] for k in self.flat.outputs]
        return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=name)

    def emit(self, index: int, call: _Call, env: dict) -> None:
        layer = call.layer
        key = call.output
        if type(layer) in QUANT_WEIGHT_LAYERS:
            self.emit_weights(call, env)
        elif isinstance(layer, KEEP_GRID) or (type(layer) is L.Activation
                                              and _activation_name(layer.activation) == "linear"):
            env[key] = _reapply(call, layer, env)
            if call.inputs and call.inputs[0] in self.grid_of:
                self.grid_of[key] = self.grid_of[call.inputs[0]]
        elif isinstance(layer, SHARED_SCALE):
            env[key] = _reapply(call, layer, env)
            grid = self.grid_of.get(call.inputs[0])
            if grid is not None:
                env[key] = grid(env[key], observe=False)
                self.grid_of[key] = grid
        elif isinstance(layer, FUSES_RELU) and self._relu_follows(key):
            env[key] = _reapply(call, layer, env)
        else:
            env[key] = _reapply(call, layer, env)
            self.mark(env, key, layer.name, _fixed_range(layer))

    def _relu_follows(self, key: int) -> bool:
        user = self.sole_user(key)
        return user is not None and _activation_kind(self.flat.calls[user].layer) is not None

    def emit_weights(self, call: _Call, env: dict) -> None:
        layer, o = call.layer, self.options
        config = keras.layers.serialize(layer)
        own_activation = _activation_name(layer.activation)
        config["config"] = dict(config["config"], activation="linear")
        key = call.output
        bn = None
        activation, activation_name = "linear", None
        after: Optional[str] = None  # a non-fusable activation of the layer itself
        if own_activation in FUSED_ACTIVATIONS:
            activation = own_activation
        else:
            after = own_activation
        if own_activation == "linear":
            user = self.sole_user(key)
            rank = len(env[call.inputs[0]].shape)
            if user is not None and type(self.flat.calls[user].layer) is L.BatchNormalization \
                    and self.flat.calls[user].layer.axis in (-1, rank - 1):
                bn = self.flat.calls[user].layer
                self.absorbed.add(user)
                key = self.flat.calls[user].output
            user = self.sole_user(key)
            if user is not None and _activation_kind(self.flat.calls[user].layer) is not None:
                activation = _activation_kind(self.flat.calls[user].layer)
                activation_name = self.flat.calls[user].layer.name
                self.absorbed.add(user)
                key = self.flat.calls[user].output
        wrapper = QUANT_WEIGHT_LAYERS[type(layer)](
            layer=config, batch_norm=None if bn is None else keras.layers.serialize(bn), activation=activation,
            activation_name=activation_name, weight_bits=o.weight_bits,
            per_channel=o.per_channel and (o.dense_per_channel or type(layer) is not L.Dense),
            narrow_range=o.narrow_range, quant_delay=o.quant_delay, freeze_bn_delay=o.freeze_bn_delay,
            split_activation=after, bn_statistics=o.bn_statistics, name=layer.name)
        y = _apply(call, wrapper, env)
        _copy_weights(layer, wrapper.inner)
        if bn is not None:
            _copy_weights(bn, wrapper.bn)
        if after is None:
            env[key] = y
            self.mark(env, key, layer.name)
            return
        fq = self.fake_quant(f"{layer.name}_linear")
        y = fq(y)
        act = L.Activation(after, name=split_activation_name(layer.name, after))
        y = act(y)
        fixed = FIXED_RANGES.get(after)
        env[key] = y
        self.mark(env, key, act.name, fixed)


def split_activation_name(layer_name: str, activation: str) -> str:
    return f"{layer_name}_{activation}"


def _reapply(call: _Call, layer: Any, env: dict) -> Any:
    """Call a copy of `layer` (same config, same weights) on the new graph's tensors."""
    clone = _clone(layer)
    output = _apply(call, clone, env)
    _copy_weights(layer, clone)
    return output


def quantize_model(model: keras.Model, *, quant_delay: int = 0, weight_bits: int = 8, activation_bits: int = 8,
                   per_channel: bool = True, narrow_range: bool = True, freeze_bn_delay: Optional[int] = None,
                   range_mode: str = "ema", ema_decay: float = 0.99, dense_per_channel: bool = True,
                   bn_statistics: str = "float", initial_range: Optional[tuple[float, float]] = None) -> keras.Model:
    """A trainable copy of `model` with fake quantization on weights and activations (see the module doc).

    quant_delay: training steps before fake quantization starts (ranges are tracked from the first step).
    0 (quantize from the first step) needs no delay from scratch either: digits, 10 seeds, -0.14 +- 0.40 points
    against tfmot (README, "Against tfmot").
    weight_bits: 2..8 (symmetric, per output channel unless per_channel=False, narrow range [-(2^(b-1)-1),
    2^(b-1)-1]; narrow_range=False is refused: only that grid has TFLite's zero point 0).
    activation_bits: 2..16 (int8 compilation needs 8).
    freeze_bn_delay: training steps after which folded batch norms use their moving statistics (None: batch
    statistics in every training step, moving ones at inference).
    range_mode: "ema" (moving averages, `ema_decay`, widened at once to hold a training batch beyond them; see
    FakeQuant._observe) or "learned" (trainable min/max, PACT/LSQ-style).
    dense_per_channel=False: Dense kernels per tensor even with per_channel (as tfmot does; TFLiteConverter
    cannot read a per-channel FakeQuant on a MatMul kernel, so use it for a model the converter must read too).
    bn_statistics: where a folded batch norm's training statistics come from: "float" (a separate float conv,
    as tf.contrib.quantize; two convs per step) or "quantized" (the conv with fake-quantized weights itself,
    one conv per step, faster; per-channel weights only, per-tensor falls back to "float"). "float" is the
    default: "quantized" collapsed on one more digits seed than "float" (README, "Against tfmot").
    initial_range: (min, max) every tracked activation range starts from (tfmot starts its EMAs at (-6, 6));
    None: the first training batch's min/max.
    The input model is not modified; its weights are copied.
    """
    if range_mode not in ("ema", "learned"):
        raise ValueError(f"range_mode must be 'ema' or 'learned', got {range_mode!r}")
    options = _Options(int(quant_delay), int(weight_bits), int(activation_bits), bool(per_channel),
                       bool(narrow_range), freeze_bn_delay, range_mode, float(ema_decay), bool(dense_per_channel),
                       bn_statistics, None if initial_range is None else tuple(map(float, initial_range)))
    return _Quantizer(flatten_model(model), options).build(model.name)


# ----------------------------------------------------------------------------------------------------
# strip
# ----------------------------------------------------------------------------------------------------
def strip(model: keras.Model) -> keras.Model:
    """The float model: FakeQuant layers removed, Quant* layers back to the float layer, its batch norm and
    activation (with their original names), every weight copied unchanged."""
    flat = flatten_model(model)
    env, inputs = _new_inputs(flat)
    merged = {split_activation_name(c.layer.name, c.layer.split_activation) for c in flat.calls
              if isinstance(c.layer, _QuantWeights) and c.layer.split_activation}
    for call in flat.calls:
        layer = call.layer
        if isinstance(layer, FakeQuant) or (type(layer) is L.Activation and layer.name in merged):
            env[call.output] = env[call.inputs[0]]
        elif isinstance(layer, _QuantWeights):
            env[call.output] = _strip_weights(call, layer, env)
        else:
            env[call.output] = _reapply(call, layer, env)
    outputs = [env[k] for k in flat.outputs]
    return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=model.name)


def _strip_weights(call: _Call, layer: _QuantWeights, env: dict):
    config = dict(layer.layer_config)
    fuse_into_layer = layer.activation_name is None and layer.bn is None
    if layer.split_activation:
        config["config"] = dict(config["config"], activation=layer.split_activation)
    elif fuse_into_layer:
        config["config"] = dict(config["config"], activation=layer.activation_kind)
    inner = keras.layers.deserialize(config)
    y = _apply(call, inner, env)
    _copy_weights(layer.inner, inner)
    if layer.bn is not None:
        bn = keras.layers.deserialize(layer.batch_norm_config)
        y = bn(y)
        _copy_weights(layer.bn, bn)
    if not fuse_into_layer and layer.activation_kind != "linear":
        name = layer.activation_name or f"{layer.name}_{layer.activation_kind}"
        y = L.Activation(layer.activation_kind, name=name)(y)
    return y

