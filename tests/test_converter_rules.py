"""Converter rules found by random-model testing (docs/quantization-notes.md §10), each checked on small Keras models
drawn per seed:

  - square_of_sub: TensorFlow's SquareOfSub makes square(x - y) one int8 SQUARED_DIFFERENCE (canonicalize);
  - same_user_dropped: a value that gets its parameters backwards from a minimum/maximum user, while a reshape
    user was dropped from the QuantizationDriver's work list before: the reshape and the op after it run in float
    (lower-to-int, float_spread.py);
  - hidden_reshape_dropped: the same for the RESHAPE of Keras' tensordot (a Dense on a rank-3 graph input that
    also feeds a clip): the FULLY_CONNECTED runs in float;
  - hidden_reshape_shared: two Dense layers on one rank-3 graph input share one tensordot RESHAPE (the converter's
    CSE keeps the first); a clip between them sets the input's parameters before the driver visits it: both int8;
  - gelu_under_clamp: an approximate GELU followed by relu/relu6 is tf.nn.gelu's arithmetic, as the converter
    fuses the clamp into its last MUL before matching GELU (canonicalize; POW stays float);
  - unread_input: a graph input that reaches an output through an identity Reshape/Dropout/linear Activation only is that
    output itself, float32 in and out (canonicalize, lower-to-int's unread_inputs_float); with another user it
    is int8 (random seed 1201);
  - op_order: a graph input read by a Maximum and a Concatenate (each with its own range, and own-range layers
    between) takes the parameters of the one the QuantizationDriver visits first, which follows TensorFlow's
    import order, decided here by layer names drawn at random (quant/op_order.py);
  - unary_after_flatten: tanh/sigmoid/relu after a Flatten used only there computes before the RESHAPE
    (TFLite's ReorderElementwiseAndMoveOperations, move-transposes): a relu then fuses into the op before, and
    the tanh/sigmoid output is requantized before the RESHAPE for a maximum after it;
  - gelu_of_neg: an approximate GELU of neg(y) is tf.nn.gelu's arithmetic (TensorFlow makes neg(y) + t a SUB,
    so no GELU matches; canonicalize);
  - clamp_after_reshape: a relu/relu6 after a keras.ops.reshape (a constant shape) moves above it and fuses into
    its one-use producer (move-reshapes); after a Flatten/Reshape layer the producer's SHAPE user blocks that;
  - binary_after_reshape: a batch norm, a Rescaling and a minimum by constants after a keras.ops.reshape (an
    identity on the dynamic batch too, which the converter keeps) compute before the RESHAPE
    (MoveBinaryOpConstBeforeReshape; move-binary-reshapes): the RESHAPE ends the chain;
  - binary_of_two_reshapes: add/subtract/multiply/maximum/minimum of two keras.ops.reshape of one shape computes
    before them (MoveBinaryOpBeforeReshape; move-binary-reshapes), a Rescaling after it too;
  - fixed_range_before_tensordot_reshape: a sigmoid/tanh Dense on a rank-3 input without a bias computes before the
    tensordot's RESHAPE (ReorderElementwiseAndMoveOperations), so the driver's requantize of its result for a
    Maximum feeds that RESHAPE; the Maximum runs in float (after an ELU) and dequantizes the requantized copy
    (lower-to-int); with a bias the ADD follows the RESHAPE and the float Maximum reads the sigmoid directly;
  - abs_of_abs: abs(abs(x)) is one ABS and neg(neg(y)) is y, even when the inner abs has another user
    (TensorFlow's Idempotent / Involution folds; canonicalize);
  - idempotent_clamp: relu(relu(x)) / relu6(relu6(x)) is the inner op, even when it has another user (Dense(relu6)
    then Activation("relu6") and a multiply of both: MUL(fc, fc); canonicalize);
  - clip_bounds: ops.clip(x, lo, hi) is MINIMUM then MAXIMUM (tf.clip_by_value), lo = 0 a RELU after the MINIMUM,
    lo = -0.0 a MAXIMUM (TFLite's clamp patterns compare bits; keras_ops, canonicalize);
  - relu_negative_part (its own test): ReLU(negative_slope, max_value) computes relu(-x) as Neg + Relu (a float
    NEG in the converter's model), relu(-x + t) as Sub(t, x) (keras_layers.relu_general);
  - vector_after_scalar: a batch norm then a Rescaling before a Dense fold entirely into it (TFLite's second
    optimize phase has FuseAddAndFullyConnected / FuseMulAndFullyConnected too; fold-affine);
  - const_root: a tanh/sigmoid output read by a Maximum/Minimum with the graph input and by a reshape or
    transpose (keras.ops or a Reshape layer) before a GELU: TensorFlow's import walk reaches the reshape from its
    shape Const before the input, so the driver drops it and it runs in float (quant/op_order.py, seed 2015);
  - dropped_output: the same with the reshape as a graph output: the driver never revisits it, and the output
    is float32 in the converter's model too (no "outputs are integer" exception; lower-to-int);
  - fc_clamp_copy: a relu/relu6/hard_tanh of a Dense (2-D) with another user fuses into a copy of its
    FULLY_CONNECTED (FuseFullyConnectedAndReluX has no one-use condition; fuse-activations; random seed 3099);
  - batched_fc_clamp: a clamp after a reshape of a bias-free Dense on a rank-3 input fuses into (a copy of) its
    FULLY_CONNECTED: any clamp after keras.ops.reshape, hard_tanh after a Flatten (the reshapes collapse;
    move-reshapes; random seed 3175);
  - x_times_hard_sigmoid: Multiply(hard_sigmoid(x), x), either order, is one HARD_SWISH (MatchHardSwishPattern;
    canonicalize; random seeds 3104, 3195);
  - reduce_without_keepdims: a mean/sum over a size-1 axis without keepdims stays a MEAN/SUM with its own range
    (after a sigmoid: not 1/256); with keepdims it is dropped (canonicalize; random seed 3140).
The Keras Flatten rules (a run-time target: a dynamic tensor on a graph input, an alias otherwise) are checked
against TF's own calibrator in tests/test_calibrate.py: drawn Keras models hit the converter's op order (a reader
placed before the in-place ADD) or TFLite overwriting an aliased buffer at batch > 1 in either model.

Small Keras models, drawn per seed, compiled by both tools on the
same calibration data: the int8 outputs must be identical (tests/differential.py)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.differential import check


def _front(rng: np.random.Generator, x, width: int):
    """A random layer in front of the pattern, so that its operand is some computed tensor."""
    import keras

    kind = rng.integers(3)
    if kind == 0:
        return keras.layers.Dense(width)(x)
    if kind == 1:
        return keras.layers.Activation("tanh")(keras.layers.Dense(width)(x))
    return keras.layers.BatchNormalization()(keras.layers.Dense(width, activation="relu")(x))


def _model(pattern: str, seed: int):
    import keras
    from keras import ops

    from tests.random_models import randomize_weights

    rng = np.random.default_rng(seed)
    rows, width = int(rng.integers(2, 6)), int(rng.integers(3, 12))
    a, b = keras.Input((rows, width), name="a"), keras.Input((rows, width), name="b")
    x, y = _front(rng, a, width), _front(rng, b, width)
    shared = bool(rng.integers(2))  # the sub has another user too
    if pattern == "square_of_sub":
        d = ops.subtract(x, y) if rng.integers(2) else ops.subtract(x, np.float32(rng.normal()))
        outputs = [ops.square(d)] + ([keras.layers.Activation("relu")(d)] if shared else [y])
    elif pattern == "same_user_dropped":
        v = keras.layers.Add()([keras.layers.Softmax()(x), x]) if shared else keras.layers.Dense(width)(x)
        merge = keras.layers.Minimum() if rng.integers(2) else keras.layers.Maximum()
        reshaped = keras.layers.Reshape((width, rows))(v)
        outputs = [merge([v, keras.layers.BatchNormalization()(v)]),
                   keras.layers.BatchNormalization()(reshaped), y]
    elif pattern == "hidden_reshape_dropped":
        low, high = sorted(rng.normal(size=2).astype(np.float32))
        outputs = [ops.clip(a, low, high), keras.layers.Dense(width)(a), y] if shared else \
            [ops.clip(a, low, high), keras.layers.Dense(width, activation="relu")(a), y]
    elif pattern == "hidden_reshape_shared":  # the first Dense's tensordot RESHAPE serves the last one (CSE)
        # Names that sort as Keras runs the layers: TensorFlow's graph import order (an open cause, docs §10)
        # then agrees with qcompiler's, and only the shared RESHAPE is tested.
        low, high = sorted(rng.normal(size=2).astype(np.float32))
        outputs = [keras.layers.Dense(width, name="a_dense")(a), ops.clip(a, low, high),
                   keras.layers.Dense(width + 1, name="z_dense")(a), y]
    elif pattern == "unary_after_flatten":
        act = ("tanh", "sigmoid", "relu")[int(rng.integers(3))]
        t = keras.layers.Activation(act)(keras.layers.Flatten()(x))
        other = keras.layers.Dense(rows * width)(keras.layers.Flatten()(y))
        outputs = [keras.layers.Maximum()([t, other]), keras.layers.Dense(3)(t)] if shared else [t, other]
    elif pattern == "abs_of_abs":
        inner = ops.abs(x)
        # the outer abs takes the minimum's parameters: a second ABS would requantize the inner one's
        outputs = [keras.layers.Minimum()([ops.abs(inner), keras.layers.Dense(width)(y)]),
                   ops.negative(ops.negative(y))]
        outputs += [ops.multiply(inner, np.float32(2.0))] if shared else []
    elif pattern == "gelu_under_clamp":
        clamp = "relu6" if shared else "relu"
        outputs = [keras.layers.Activation(clamp)(ops.gelu(x)), y]
    elif pattern == "gelu_of_neg":  # random seed 3107
        n = ops.negative(x)
        outputs = [ops.gelu(n), y] + ([ops.multiply(n, np.float32(2.0))] if shared else [])
    elif pattern == "clamp_after_reshape":  # random seed 3159 (an AVERAGE_POOL_2D there)
        s = keras.layers.Add()([x, y])
        clamp = ("relu", "relu6")[int(rng.integers(2))]
        outputs = [keras.layers.Activation(clamp)(ops.reshape(s, (-1, width, rows)))]
        outputs += [keras.layers.Dense(3)(s)] if shared else []
    elif pattern == "binary_after_reshape":  # random seeds 2161 (identity ops.reshape), 1157 (a Rescaling)
        target = (-1, rows, width) if rng.integers(2) else (-1, rows, 1, width)
        r = ops.reshape(x, target)
        unary = (None, "tanh", "relu")[int(rng.integers(3))]  # moved above the reshape first, then the chain
        first = r if unary is None or shared else keras.layers.Activation(unary)(r)
        chain = ops.minimum(first, rng.normal(size=(width,)).astype(np.float32))
        chain = keras.layers.BatchNormalization()(chain)
        chain = keras.layers.Rescaling(float(rng.uniform(0.5, 2.0)), offset=float(rng.normal()))(chain)
        outputs = [chain, y] + ([ops.abs(r)] if shared else [])  # another user: the reshape stays
    elif pattern == "binary_of_two_reshapes":
        target = (-1, width, rows) if rng.integers(2) else (-1, rows * width)
        op = ("add", "subtract", "multiply", "maximum", "minimum")[int(rng.integers(5))]
        r1, r2 = ops.reshape(x, target), ops.reshape(y, target)
        m = getattr(ops, op)(r1, r2)
        outputs = [keras.layers.Rescaling(float(rng.uniform(0.5, 2.0)), offset=float(rng.normal()))(m)]
        outputs += [ops.abs(r1)] if shared else []  # another user: an add keeps its reshapes, a maximum not
    elif pattern == "fixed_range_before_tensordot_reshape":  # random seed 1280
        e = keras.layers.ELU()(a)  # float in the converter's model: the maximum after it runs in float
        act = ("sigmoid", "tanh")[int(rng.integers(2))]
        # without a bias the activation follows the tensordot's RESHAPE and moves above it; with one, the ADD does
        d = keras.layers.Dense(width, activation=act, use_bias=shared)(e)
        outputs = [keras.layers.Maximum()([d, e]), y]
    elif pattern == "unread_input":  # b reaches an output through an identity only (and, shared, a Dense too)
        kind = int(rng.integers(3))
        passed = [keras.layers.Reshape((rows, width)), keras.layers.Dropout(0.5),
                  keras.layers.Activation("linear")][kind](b)
        outputs = [x, passed] + ([y] if shared else [])
    elif pattern == "idempotent_clamp":  # random seed 4005
        act = ("relu", "relu6")[int(rng.integers(2))]
        inner = keras.layers.Dense(width, activation=act)(x)
        outer = keras.layers.Activation(act)(inner)
        # the outer clamp shares the multiply's range if it stays an op: then the MUL reads a requantized copy
        outputs = [keras.layers.Dense(3)(ops.multiply(outer, inner) if shared else outer), y]
    elif pattern == "vector_after_scalar":  # random seed 4033
        # a rank-2 operand that no layer before it can absorb the batch norm into
        bn = keras.layers.BatchNormalization()(ops.mean(x, axis=1))
        scaled = keras.layers.Rescaling(float(rng.uniform(0.2, 2.0)), float(rng.normal()))(bn)
        outputs = [keras.layers.Dense(3)(scaled), y]
        outputs += [keras.layers.Activation("tanh")(scaled if rng.integers(2) else bn)] if shared else []
    elif pattern == "clip_bounds":  # random seed 4116 (lo = -0.0 drawn)
        lo = (0.0, -0.0, -0.5)[int(rng.integers(3))]
        s = keras.layers.Add()([x, y])
        outputs = [ops.clip(s, lo, float(rng.uniform(0.5, 3.0)))] + ([keras.layers.Dense(3)(s)] if shared else [])
    elif pattern == "relu_negative_part":  # random seed 4094 (test_relu_negative_part_is_a_float_neg)
        max_value = 6.0 if rng.integers(2) else float(rng.uniform(1.0, 4.0))
        relu = keras.layers.ReLU(negative_slope=float(rng.uniform(1.0, 3.0)), max_value=max_value)
        outputs = [relu(keras.layers.Add()([x, y]))]
    elif pattern == "op_order":
        names = ["".join(rng.choice(list("abcmxz"), 3)) + f"_{i}" for i in range(4)]
        r = keras.layers.Rescaling(float(rng.uniform(0.5, 2.0)), name=names[0])(a)
        m = keras.layers.Maximum(name=names[1])([a, r])
        wide = keras.layers.Rescaling(float(rng.uniform(2.0, 4.0)), name=names[3])(r)  # the concat's range differs
        c = keras.layers.Concatenate(name=names[2])([a, wide])
        outputs = [m, c, y]
    elif pattern in ("const_root", "dropped_output"):  # random seed 2015
        # A fixed-range output (no range of its own) read by a merge with a graph input, whose calibrated range it
        # takes backwards, and by a reshape/transpose: TensorFlow's walk reaches the reshape from its shape (perm)
        # Const before the input, so the driver meets it first, drops it, and it stays float (the GELU after it
        # too). Layer names drawn at random (they order the walk); the reshapes are never identities.
        names = ["".join(rng.choice(list("abmrxz"), 3)) + f"_{i}" for i in range(4)]
        t = keras.layers.Activation(("tanh", "sigmoid")[int(rng.integers(2))], name=names[0])(b)
        merge = (keras.layers.Maximum, keras.layers.Minimum)[int(rng.integers(2))](name=names[1])([t, b])
        moved = [lambda v: ops.reshape(v, (-1, rows * width)), lambda v: ops.transpose(v, (0, 2, 1)),
                 keras.layers.Reshape((rows * width,), name=names[2]),
                 lambda v: ops.expand_dims(v, 1)][int(rng.integers(4))](t)
        if pattern == "dropped_output":  # the dropped reshape is a graph output: float32 in the converter's model
            outputs = [merge, moved, x]
        else:
            outputs = [merge, ops.gelu(moved) if shared else keras.layers.Activation("gelu", name=names[3])(moved), x]
    elif pattern == "fc_clamp_copy":  # random seed 3099
        f = keras.layers.Dense(width)(keras.layers.Flatten()(x))
        clamp = ("relu", "relu6", "hard_tanh")[int(rng.integers(3))]
        other = keras.layers.Activation("sigmoid")(f) if shared else keras.layers.Add()([f, f])
        outputs = [keras.layers.Activation(clamp)(f), other, y]
    elif pattern == "batched_fc_clamp":  # random seed 3175
        d = keras.layers.Dense(width, use_bias=False)(x)
        if rng.integers(2):
            clamp, reshaped = ("relu", "relu6", "hard_tanh")[int(rng.integers(3))], ops.reshape(d, (-1, rows * width))
        else:
            clamp, reshaped = "hard_tanh", keras.layers.Flatten()(d)
        outputs = [keras.layers.Activation(clamp)(reshaped)] + ([keras.layers.Dense(3)(d)] if shared else [y])
    elif pattern == "x_times_hard_sigmoid":  # random seeds 3104, 3195
        h = keras.layers.Activation("hard_sigmoid")(x)
        m = keras.layers.Multiply()([h, x] if rng.integers(2) else [x, h])
        outputs = [keras.layers.Dense(3)(m)] + ([h] if shared else [y])
    elif pattern == "reduce_without_keepdims":  # random seed 3140
        s = keras.layers.Activation("sigmoid")(keras.layers.Reshape((1, rows * width))(x))
        reduce = (ops.mean, ops.sum)[int(rng.integers(2))]
        outputs = [keras.layers.Dense(3)(reduce(s, axis=1)), y]
        outputs += [keras.layers.Dense(2)(reduce(s, axis=1, keepdims=True))] if shared else []
    else:
        raise ValueError(pattern)
    model = keras.Model([a, b], outputs)
    return randomize_weights(model, rng)


# One drawn model per rule (the default suite's time): seed 4 shares the inner op with another user. op_order: with
# seed 0's names the concat's parameters win, with seed 5's the maximum's (qcompiler's former graph order gave the
# input the concat's there: an I/O mismatch).
@pytest.mark.parametrize("pattern, seed", [("square_of_sub", 0), ("square_of_sub", 4), ("same_user_dropped", 4),
                                           ("hidden_reshape_dropped", 0), ("hidden_reshape_shared", 0),
                                           ("gelu_under_clamp", 4), ("unread_input", 0), ("unread_input", 4),
                                           ("op_order", 0), ("op_order", 5), ("unary_after_flatten", 4),
                                           pytest.param("unary_after_flatten", 0, marks=pytest.mark.slow),
                                           ("abs_of_abs", 4), ("gelu_of_neg", 0), ("clamp_after_reshape", 0),
                                           ("clamp_after_reshape", 4), ("binary_after_reshape", 1),
                                           ("binary_of_two_reshapes", 0), ("fixed_range_before_tensordot_reshape", 0),
                                           *[pytest.param(p, 4, marks=pytest.mark.slow) for p in (
                                               "binary_after_reshape", "binary_of_two_reshapes",
                                               "fixed_range_before_tensordot_reshape")],
                                           ("idempotent_clamp", 4),
                                           ("vector_after_scalar", 0), ("clip_bounds", 0), ("clip_bounds", 6),
                                           ("const_root", 0), ("const_root", 5),
                                           ("dropped_output", 3),
                                           ("fc_clamp_copy", 4), ("batched_fc_clamp", 4),
                                           ("x_times_hard_sigmoid", 4), ("reduce_without_keepdims", 4),
                                           *[pytest.param(p, 0, marks=pytest.mark.slow) for p in
                                             ("fc_clamp_copy", "batched_fc_clamp", "x_times_hard_sigmoid",
                                              "reduce_without_keepdims")]])
def test_rule_matches_the_converter(pattern: str, seed: int) -> None:
    model = _model(pattern, seed)
    rng = np.random.default_rng(100 + seed)
    calibration = [rng.standard_normal((32, *t.shape[1:])).astype(np.float32) for t in model.inputs]
    test = [rng.standard_normal((16, *t.shape[1:])).astype(np.float32) for t in model.inputs]
    verdict = check(model, calibration, test, check_float=False)
    assert verdict.ok, verdict.summary()
    assert verdict.identical == [1.0] * len(verdict.identical), verdict.summary()


def test_relu_negative_part_is_a_float_neg() -> None:
    """ReLU(negative_slope, max_value) computes relu(-x) as TF Neg + Relu: the converter's model holds a float NEG
    island, and so does ours (its int8 outputs rarely differ from a SUB(0, x): the NEG's QUANTIZE keeps x's
    scale; random seed 4094 has it next to other causes)."""
    import qcompiler
    from qcompiler.demo import converter_int8
    from tests.test_coverage_ops import _op_names

    model = _model("relu_negative_part", 0)
    rng = np.random.default_rng(100)
    calibration = {t.name: rng.standard_normal((32, *t.shape[1:])).astype(np.float32) for t in model.inputs}
    ours = _op_names(qcompiler.compile(model, mode="int8", calibration_data=calibration))
    theirs = _op_names(converter_int8(model, calibration))
    assert ours.count("NEG") == theirs.count("NEG") == 1, (ours, theirs)
