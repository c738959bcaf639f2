"""surgery.edit.delete_channels in both layouts (channels_first and channels_last).

Reference for every function check, built by hand without the edit code: the original model
with the deleted channels forced to zero where they are made (the producer's kernel columns
and bias zeroed, its activation linear or ReLU so a zero channel stays zero; a BatchNorm
after it gets gamma 0 and beta 0 on those channels, a DepthwiseConv bias 0). Every layer on
the path maps a zero channel to zero, so the pruned model must compute exactly that
reference. Inputs are uniform [0, 1] images/sequences, and each test also checks that the
deleted channels mattered (the reference differs from the original).

Keras/TF on CPU can't run Conv1D/Conv2D in channels_first eagerly ("only supports NHWC");
XLA (`jit_compile=True`) can, so channels_first models run through XLA. One test checks that
this path agrees with a channels_last model built from the same weights on transposed inputs.

Keras 3.15's TF `ops.add` takes a (1, C, 1, 1) bias for an NHWC one when the tensor's last
(spatial) size equals C, so a channels_first layer with bias is wrong for such shapes; the
spatial sizes here never equal a channel count (before or after pruning).
"""

from __future__ import annotations

import numpy as np
import pytest

from surgery import edit
from surgery.errors import SurgeryError

LAYOUTS = ("channels_last", "channels_first")



def run(models, x):
    """Each model's output on `x`: channels_first models through XLA, all in one compile."""
    import tensorflow as tf
    if any(getattr(l, "data_format", None) == "channels_first" for m in models
           for l in m.layers):
        outs = tf.function(lambda t: [m(t, training=False) for m in models],
                           jit_compile=True)(x)
    else:
        outs = [m(x, training=False) for m in models]
    return [np.asarray(o) for o in outs]


def randomize(model, seed=0):
    """Non-zero biases and BatchNorm statistics, so that zeroing them matters."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "BatchNormalization":
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(size=b.shape),
                               rng.normal(size=m.shape), rng.uniform(0.5, 2, v.shape)])
        elif layer.weights:
            layer.set_weights([w if w.ndim > 1 else rng.normal(0, 0.5, w.shape)
                               for w in layer.get_weights()])
    return model


def zeroed(keras, model, producers, bns=(), depthwise=()):
    """The original with `producers` {name: channels} forced to zero at their output; `bns`
    and `depthwise` name the BatchNorm / DepthwiseConv layers those channels pass through."""
    ref = keras.models.clone_model(model)
    ref.set_weights(model.get_weights())
    for name, cs in producers.items():
        layer = ref.get_layer(name)
        weights = layer.get_weights()
        cls = type(layer).__name__
        kernel = 1 if cls.startswith("Separable") else 0  # pointwise kernel for separable
        axis = -2 if "Transpose" in cls else -1
        np.moveaxis(weights[kernel], axis, 0)[cs] = 0
        weights[-1][cs] = 0  # bias
        layer.set_weights(weights)
    for name, cs in dict(bns).items():
        g, b, m, v = ref.get_layer(name).get_weights()
        g[cs], b[cs] = 0, 0
        ref.get_layer(name).set_weights([g, b, m, v])
    for name, (cs, mult) in dict(depthwise).items():
        k, b = ref.get_layer(name).get_weights()
        b[[c * mult + j for c in cs for j in range(mult)]] = 0
        ref.get_layer(name).set_weights([k, b])
    return ref


def images(shape, n=4, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype("float32")


def check(keras, model, layer, chans, x, producers=None, bns=(), depthwise=(), atol=1e-5):
    before = [w.copy() for w in model.get_weights()]
    new, report = edit.delete_channels(model, layer, chans)
    assert report.initialized == ()  # every variable carried or sliced
    ref = zeroed(keras, model, producers or {layer: chans}, bns, depthwise)
    original, expected, got = run([model, ref, new], x)
    assert np.abs(original - expected).max() > 1e-3, "the deleted channels must matter"
    np.testing.assert_allclose(got, expected, atol=atol, rtol=1e-5)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    return new, report


def _shape(dims, layout, size, channels=2):
    spatial = (size,) * dims
    return (channels, *spatial) if layout == "channels_first" else (*spatial, channels)


def _axis(layout):
    return 1 if layout == "channels_first" else -1


# ------------------------------------------------------------------ the harness itself

def test_xla_channels_first_matches_a_channels_last_twin(keras):
    """The channels_first forward pass used below agrees with plain Keras channels_last."""
    L = keras.layers

    def net(layout):
        inp = keras.Input(_shape(2, layout, 6, 3))
        x = L.Conv2D(4, 3, padding="same", data_format=layout, name="c")(inp)
        x = L.BatchNormalization(axis=_axis(layout), name="bn")(x)
        x = L.MaxPooling2D(2, data_format=layout, name="p")(x)
        return keras.Model(inp, L.GlobalAveragePooling2D(data_format=layout)(x))

    first = randomize(net("channels_first"))
    last = net("channels_last")
    last.set_weights(first.get_weights())
    x = images((3, 6, 6))
    np.testing.assert_allclose(run([first], x)[0], run([last], np.moveaxis(x, 1, -1))[0],
                               atol=1e-5)


# ------------------------------------------------------------------ layers between the channels
# and their reader: one model per (dimension, layout) holds a chain of every spatial layer, a
# BatchNorm on the channel axis, global pooling and Concatenate; the slow tier runs each layer
# alone.

_SIZE = {1: 12, 2: 8, 3: 6}


def _spatial_layers(L, dims, layout, only=None):
    kinds = {"MaxPooling": lambda c: c(2, data_format=layout),
             "ZeroPadding": lambda c: c(1, data_format=layout),
             "UpSampling": lambda c: c(2) if dims == 1 else c(2, data_format=layout),
             "AveragePooling": lambda c: c(2, data_format=layout),
             "Cropping": lambda c: c(1) if dims == 1 else c(1, data_format=layout)}
    out = []
    for kind, make in kinds.items():
        if only is not None and kind != only:
            continue
        if dims == 1 and layout == "channels_first" and kind in ("UpSampling", "Cropping"):
            continue  # no data_format: refused, see test_layout_mismatches_are_refused
        out.append(make(getattr(L, f"{kind}{dims}D")))
    return out


def _chain_model(keras, dims, layout, only=None):
    L = keras.layers
    conv = getattr(L, f"Conv{dims}D")
    inp = keras.Input(_shape(dims, layout, _SIZE[dims]))
    x = conv(5, 3, padding="same", data_format=layout, name="conv")(inp)
    x = L.BatchNormalization(axis=_axis(layout), name="bn")(x)
    x = L.LeakyReLU(0.2, name="relu")(x)  # no dead channel: every deleted one matters
    y = x
    for layer in _spatial_layers(L, dims, layout, only):
        y = layer(y)
    flat = L.Flatten(name="flat")(y)
    gap = getattr(L, f"GlobalAveragePooling{dims}D")(data_format=layout, name="gap")(x)
    gmp = getattr(L, f"GlobalMaxPooling{dims}D")(data_format=layout, name="gmp")(x)
    out = L.Dense(3, name="head")(L.Concatenate(name="cat")([flat, gap, gmp]))
    return randomize(keras.Model(inp, out, name=f"chain{dims}d"))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_pooling_padding_cropping_upsampling_global_pooling(keras, dims, layout):
    model = _chain_model(keras, dims, layout)
    x = images(_shape(dims, layout, _SIZE[dims]))
    new, report = check(keras, model, "conv", [1, 3], x, bns={"bn": [1, 3]})
    assert report.changes == ("conv: 5 -> 3 channels", "bn: sliced (bn)",
                              "head: Flatten rows sliced")
    assert new.get_layer("head").kernel.shape[0] == model.get_layer("head").kernel.shape[0] * 3 // 5


@pytest.mark.slow
@pytest.mark.parametrize("chans", [[0], [4], [1, 2]])
@pytest.mark.parametrize("kind", ["MaxPooling", "ZeroPadding", "UpSampling", "AveragePooling",
                                  "Cropping"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_each_spatial_layer_alone(keras, dims, layout, kind, chans):
    if dims == 1 and layout == "channels_first" and kind in ("UpSampling", "Cropping"):
        pytest.skip("refused in channels_first (no data_format), tested below")
    model = _chain_model(keras, dims, layout, only=kind)
    check(keras, model, "conv", chans, images(_shape(dims, layout, _SIZE[dims])),
          bns={"bn": chans})


# ------------------------------------------------------------------ Flatten row order

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("flatten_format", LAYOUTS)
def test_flatten_rows_follow_the_layout(keras, layout, flatten_format):
    """Hand-computed kernel: Flatten() keeps the tensor's order (rows c, h, w on NCHW;
    h, w, c on NHWC); Flatten(data_format='channels_first') first moves axis 1 last (rows
    h, w, c on NCHW; w, c, h on NHWC)."""
    L = keras.layers
    inp = keras.Input(_shape(2, layout, 4, 3))
    x = L.Conv2D(5, 3, data_format=layout, name="conv")(inp)  # 2 x 2 x 5
    x = L.Flatten(data_format=flatten_format, name="flat")(x)
    model = randomize(keras.Model(inp, L.Dense(2, name="head")(x)))
    new, _ = check(keras, model, "conv", [0, 3], images(_shape(2, layout, 4, 3)))
    kernel = model.get_layer("head").kernel.numpy()
    channel_row_axis = {("channels_first", "channels_last"): 0,  # rows c, h, w
                        ("channels_first", "channels_first"): 2,  # rows h, w, c
                        ("channels_last", "channels_last"): 2,  # rows h, w, c
                        ("channels_last", "channels_first"): 1}  # rows w, c, h
    axis = channel_row_axis[layout, flatten_format]
    rows = kernel.reshape(*[5 if i == axis else 2 for i in range(3)], 2)  # spatial 2 x 2
    expected = np.delete(rows, [0, 3], axis=axis)
    np.testing.assert_array_equal(new.get_layer("head").kernel.numpy(), expected.reshape(12, 2))


# ------------------------------------------------------------------ merges, depthwise, separable

@pytest.mark.parametrize("layout", LAYOUTS)
def test_concatenate_on_the_channel_axis(keras, layout):
    L = keras.layers
    a, b = keras.Input(_shape(2, layout, 7)), keras.Input(_shape(2, layout, 7))
    x = L.Conv2D(3, 3, data_format=layout, name="conv_1")(a)
    y = L.Conv2D(4, 3, data_format=layout, name="conv_2")(b)
    c = L.Concatenate(axis=_axis(layout), name="cat")([y, x])
    c = L.MaxPooling2D(2, data_format=layout, name="pool")(c)
    model = randomize(keras.Model([a, b], L.Dense(2, name="head")(L.Flatten(name="flat")(c))))
    x_in = [images(_shape(2, layout, 7)), images(_shape(2, layout, 7), seed=2)]
    new, _ = check(keras, model, "conv_1", [0, 2], x_in)
    assert new.get_layer("head").kernel.shape == (2 * 2 * 5, 2)  # 5x5 pooled to 2x2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_add_deletes_the_coupled_group(keras, layout):
    L = keras.layers
    inp = keras.Input(_shape(2, layout, 6))
    x = L.Conv2D(4, 3, padding="same", data_format=layout, name="conv_1")(inp)
    y = L.Conv2D(4, 3, padding="same", data_format=layout, name="conv_2")(inp)
    y = L.BatchNormalization(axis=_axis(layout), name="bn")(y)
    s = L.Add(name="add")([x, y])
    s = L.Multiply(name="mul")([s, x])
    model = randomize(keras.Model(inp, L.Dense(2, name="head")(L.Flatten(name="flat")(s))))
    new, report = check(keras, model, "conv_1", [1, 2], images(_shape(2, layout, 6)),
                        producers={"conv_1": [1, 2], "conv_2": [1, 2]}, bns={"bn": [1, 2]})
    assert "conv_2: 4 -> 2 channels (coupled)" in report.changes


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dims", [1, 2])
def test_depthwise_and_separable(keras, dims, layout):
    L = keras.layers
    inp = keras.Input(_shape(dims, layout, 7))
    x = getattr(L, f"Conv{dims}D")(4, 3, padding="same", data_format=layout, name="conv")(inp)
    x = getattr(L, f"DepthwiseConv{dims}D")(3, depth_multiplier=2, padding="same",
                                             data_format=layout, name="dw")(x)
    x = L.BatchNormalization(axis=_axis(layout), name="bn")(x)
    s = getattr(L, f"SeparableConv{dims}D")(3, 3, depth_multiplier=2, data_format=layout,
                                             name="sep")(x)
    g = getattr(L, f"GlobalAveragePooling{dims}D")(data_format=layout, name="gap")(s)
    model = randomize(keras.Model(inp, L.Dense(2, name="head")(g)))
    x_in = images(_shape(dims, layout, 7))
    # channels 1 and 3 of conv are channels 2, 3, 6, 7 after the depthwise conv
    check(keras, model, "conv", [1, 3], x_in, depthwise={"dw": ([1, 3], 2)},
          bns={"bn": [2, 3, 6, 7]})
    check(keras, model, "sep", [0], x_in)  # a separable conv as the producer


# ------------------------------------------------------------------ recurrent consumers

@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv1d_feeding_lstm_and_gru(keras, layout):
    """channels_first puts the channels on the time axis: Permute((2, 1)) makes them the
    features an RNN reads (without it the RNN is refused, see below)."""
    L = keras.layers
    inp = keras.Input(_shape(1, layout, 10, 3))
    x = L.Conv1D(5, 3, padding="same", data_format=layout, name="conv")(inp)
    x = L.MaxPooling1D(2, data_format=layout, name="pool")(x)
    if layout == "channels_first":
        x = L.Permute((2, 1), name="perm")(x)
    both = L.Concatenate(name="cat")([L.LSTM(4, name="lstm")(x), L.GRU(3, name="gru")(x)])
    model = randomize(keras.Model(inp, L.Dense(2, name="head")(both)))
    _, report = check(keras, model, "conv", [0, 4], images(_shape(1, layout, 10, 3)))
    assert {"lstm: input channels sliced", "gru: input channels sliced"} <= set(report.changes)


# ------------------------------------------------------------------ refusals

def _refusal(keras, layout, middle, head=None, dims=2):
    L = keras.layers
    inp = keras.Input(_shape(dims, layout, 8))
    x = getattr(L, f"Conv{dims}D")(4, 3, padding="same", data_format=layout, name="conv")(inp)
    x = middle(x)
    x = (head or L.GlobalAveragePooling2D(data_format=layout, name="gap"))(x)
    model = keras.Model(inp, x)
    with pytest.raises(SurgeryError) as e:
        edit.delete_channels(model, "conv", [0])
    return str(e.value)


def test_layout_mismatches_are_refused(keras):
    L = keras.layers
    cf = "channels_first"
    assert _refusal(keras, cf, L.MaxPooling2D(2, name="pool")) == (
        "delete_channels: MaxPooling2D 'pool' on the path conv -> pool expects channels on "
        "axis 3 (channels_last) but they are on axis 1 (channels_first), so it would mix them; "
        "build it with data_format='channels_first' to follow them")
    assert _refusal(keras, cf, L.BatchNormalization(name="bn")) == (
        "delete_channels: BatchNormalization 'bn' on the path conv -> bn expects channels on "
        "axis 3 (channels_last) but they are on axis 1 (channels_first), so it would mix them; "
        "build it with axis=1 to follow them")
    assert _refusal(keras, "channels_last", L.BatchNormalization(axis=1, name="bn")) == (
        "delete_channels: BatchNormalization 'bn' on the path conv -> bn expects channels on "
        "axis 1 (channels_first) but they are on axis 3 (channels_last), so it would mix them; "
        "build it with axis=3 to follow them")
    assert _refusal(keras, cf, L.Activation("relu", name="act"), L.Dense(2, name="fc")) == (
        "delete_channels: Dense 'fc' on the path conv -> act -> fc expects channels on "
        "axis 3 (channels_last) but they are on axis 1 (channels_first), so it would mix them; "
        "it reads the last axis; put a Flatten, a global pooling or a Permute before it")
    assert _refusal(keras, cf, L.UpSampling1D(2, name="up"),
                    L.GlobalAveragePooling1D(data_format=cf), dims=1) == (
        "delete_channels: UpSampling1D 'up' on the path conv -> up expects channels on axis 2 "
        "(channels_last) but they are on axis 1 (channels_first), so it would mix them; it "
        "has no data_format; put Permute((2, 1)) before it or use channels_last layers")
    assert _refusal(keras, cf, L.Identity(name="id"), L.LSTM(2, name="enc"), dims=1) == (
        "delete_channels: LSTM 'enc' on the path conv -> id -> enc expects channels on axis 2 "
        "(channels_last) but they are on axis 1 (channels_first), so it would mix them; it "
        "reads the last axis; put a Flatten, a global pooling or a Permute before it")


def test_concatenate_off_the_channel_axis_is_refused(keras):
    L = keras.layers
    cf = "channels_first"
    inp = keras.Input((2, 6, 6))
    x = L.Conv2D(4, 3, padding="same", data_format=cf, name="c1")(inp)
    y = L.Conv2D(4, 3, padding="same", data_format=cf, name="c2")(inp)
    c = L.Concatenate(axis=2, name="cat")([x, y])
    model = keras.Model(inp, L.GlobalAveragePooling2D(data_format=cf)(c))
    with pytest.raises(SurgeryError) as e:
        edit.delete_channels(model, "c1", [0])
    assert str(e.value) == ("delete_channels: Concatenate 'cat' on the path c1 -> cat joins "
                            "along axis 2 but the channels are on axis 1; only a Concatenate "
                            "along the channel axis can be followed")


def test_channel_mixing_layers_are_refused(keras):
    L = keras.layers
    assert _refusal(keras, "channels_last", L.Activation("softmax", name="sm")) == (
        "delete_channels: Activation 'sm' on the path conv -> sm applies softmax, which mixes "
        "channels")
    assert _refusal(keras, "channels_last", L.Conv2D(4, 1, groups=2, name="g")) == (
        "delete_channels: Conv2D 'g' on the path conv -> g is grouped (groups=2); its input "
        "channels can't be deleted one by one")


def test_lowest_channels_of_a_transposed_conv_ranks_its_outputs(keras):
    """A transposed conv's kernel is (kh, kw, out, in): hand-computed L1 norms per output."""
    L = keras.layers
    inp = keras.Input((5, 5, 3))
    up = L.Conv2DTranspose(6, 3, name="up")(inp)
    model = keras.Model(inp, L.GlobalAveragePooling2D()(up))
    kernel = model.get_layer("up").kernel.numpy()
    norms = np.abs(kernel).sum(axis=(0, 1, 3))
    assert edit.lowest_channels(model, "up", k=2) == sorted(np.argsort(norms)[:2].tolist())
