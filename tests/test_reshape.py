"""surgery.reshape: each conversion's property proven by running Keras layers, or PyTorch's
equations in numpy (tests/torch_reference.py), on the converted weights."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surgery import reshape as R
from surgery.errors import OptionError, ShapeError
from tests import torch_reference as T

ATOL = 1e-5
rng = np.random.default_rng(0)


def rand(*shape):
    return rng.normal(size=shape).astype(np.float32)



def run(layer, x, weights):
    """Builds `layer` on `x`, sets `weights`, returns its output as numpy."""
    layer.build(x.shape)
    layer.set_weights(weights)
    return np.asarray(layer(x))


# ------------------------------------------------------------------ input channels

def test_sum_rgb_to_gray_matches_replicated_gray(keras):
    k, b = rand(3, 3, 3, 8), rand(8)
    gray = rand(2, 10, 10, 1)
    want = run(keras.layers.Conv2D(8, 3), np.repeat(gray, 3, -1), [k, b])
    got = run(keras.layers.Conv2D(8, 3), gray, [R.adapt_in_channels(k, 1, mode="sum"), b])
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_sum_to_any_count_with_replicated_input(keras):
    k, b = rand(6, 5), rand(5)  # Dense 6 -> 5 inputs becomes 4 inputs
    g = rand(3, 1)
    want = run(keras.layers.Dense(5), np.repeat(g, 6, -1), [k, b])
    got = run(keras.layers.Dense(5), np.repeat(g, 4, -1),
              [R.adapt_in_channels(k, 4, mode="sum"), b])
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_repeat_with_tiled_input(keras):
    k, b = rand(3, 3, 3, 4), rand(4)
    x = rand(1, 8, 8, 3)
    want = run(keras.layers.Conv2D(4, 3), x, [k, b])
    got = run(keras.layers.Conv2D(4, 3), np.tile(x, (1, 1, 1, 2)),
              [R.adapt_in_channels(k, 6, mode="repeat"), b])
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_select_reorders_and_adds_zero_channels(keras):
    k, b = rand(3, 3, 3, 4), rand(4)
    bgr = rand(1, 8, 8, 3)
    want = run(keras.layers.Conv2D(4, 3), bgr, [k, b])
    rgb_kernel = R.adapt_in_channels(k, 3, mode="select", indices=[2, 1, 0])
    got = run(keras.layers.Conv2D(4, 3), bgr[..., ::-1], [rgb_kernel, b])
    np.testing.assert_allclose(got, want, atol=ATOL)
    # RGB -> RGB + near-infrared: the new band's weights are zero, the output is unchanged.
    four = R.adapt_in_channels(k, 4, mode="select", indices=[0, 1, 2, None])
    nir = np.concatenate([bgr, rand(1, 8, 8, 1)], -1)
    np.testing.assert_allclose(run(keras.layers.Conv2D(4, 3), nir, [four, b]), want, atol=ATOL)


def test_mean_and_conv1d_conv3d_shapes():
    k1 = rand(5, 3, 7)
    np.testing.assert_allclose(R.adapt_in_channels(k1, 2, mode="mean")[:, 0], k1.mean(1),
                               atol=1e-6)
    k3 = rand(2, 3, 3, 4, 6)
    assert R.adapt_in_channels(k3, 1).shape == (2, 3, 3, 1, 6)


@pytest.mark.parametrize("call,message", [
    (lambda: R.adapt_in_channels(rand(4), 1),
     "adapt_in_channels: expected a Dense or Conv kernel (..., in, out), got shape (4,) (rank 1)"),
    (lambda: R.adapt_in_channels(rand(3, 3, 3, 4), 4, mode="repeat"),
     "adapt_in_channels: mode 'repeat' needs the new channel count to be a multiple of the old "
     "one; kernel (3, 3, 3, 4) has 3, asked for 4; use 'sum', 'mean' or 'select'"),
    (lambda: R.adapt_in_channels(rand(3, 3, 3, 4), 3, mode="select", indices=[0, 1, 5]),
     "adapt_in_channels: index 5 for new channel 2 is out of range for a kernel (3, 3, 3, 4) "
     "with 3 input channels"),
])
def test_adapt_errors(call, message):
    with pytest.raises(ShapeError) as e:
        call()
    assert str(e.value) == message


def test_unknown_mode():
    with pytest.raises(OptionError, match="unknown mode 'avg'; use one of sum, mean, repeat"):
        R.adapt_in_channels(rand(3, 4), 1, mode="avg")


# ------------------------------------------------------------------ output units

def test_slice_keeps_kept_units_outputs(keras):
    k, b = rand(6, 10), rand(10)
    x = rand(4, 6)
    full = run(keras.layers.Dense(10), x, [k, b])
    keep = [0, 3, 7]
    part = run(keras.layers.Dense(3), x, [R.slice_units(k, keep), R.slice_units(b, keep)])
    np.testing.assert_allclose(part, full[:, keep], atol=ATOL)


def test_pad_keeps_old_units_and_next_layer(keras):
    k1, b1, k2, b2 = rand(5, 4), rand(4), rand(4, 3), rand(3)
    x = rand(2, 5)
    h = run(keras.layers.Dense(4, activation="relu"), x, [k1, b1])
    want = run(keras.layers.Dense(3), h, [k2, b2])
    k1p = R.pad_units(k1, 7, initializer="glorot_uniform", seed=1)
    b1p = R.pad_units(b1, 7)
    hp = run(keras.layers.Dense(7, activation="relu"), x, [k1p, b1p])
    np.testing.assert_allclose(hp[:, :4], h, atol=ATOL)
    k2p = R.pad_units(k2, 7, axis=-2)  # zero rows: the new units don't reach the output
    np.testing.assert_allclose(run(keras.layers.Dense(3), hp, [k2p, b2]), want, atol=ATOL)


def test_pad_and_slice_conv_and_embedding(keras):
    k, b = rand(3, 3, 2, 4), rand(4)
    x = rand(1, 6, 6, 2)
    want = run(keras.layers.Conv2D(4, 3), x, [k, b])
    got = run(keras.layers.Conv2D(6, 3), x, [R.pad_units(k, 6, initializer="he_normal", seed=0),
                                            R.pad_units(b, 6)])
    np.testing.assert_allclose(got[..., :4], want, atol=ATOL)
    table = rand(10, 4)
    ids = np.array([[1, 5, 9]])
    emb = run(keras.layers.Embedding(10, 4), ids, [table])
    wide = run(keras.layers.Embedding(10, 6), ids, [R.pad_units(table, 6, seed=0)])
    np.testing.assert_allclose(wide[..., :4], emb, atol=ATOL)
    np.testing.assert_allclose(run(keras.layers.Embedding(10, 2), ids,
                                   [R.slice_units(table, [1, 3])]), emb[..., [1, 3]], atol=ATOL)


def test_unit_errors():
    with pytest.raises(ShapeError) as e:
        R.pad_units(rand(5, 4), 3)
    assert str(e.value) == ("pad_units: can't grow axis -1 of shape (5, 4) to 3 units; use "
                            "slice_units to shrink")
    with pytest.raises(ShapeError, match=r"unit 9 is out of range for axis -1 of shape \(5, 4\)"):
        R.slice_units(rand(5, 4), [0, 9])
    with pytest.raises(OptionError, match="unknown initializer 'nope'; known: glorot_normal"):
        R.pad_units(rand(5, 4), 6, initializer="nope")


# ------------------------------------------------------------------ spatial

def test_resize_center_is_the_same_conv(keras):
    k, b = rand(3, 3, 2, 4), rand(4)
    x = rand(1, 9, 9, 2)
    want = run(keras.layers.Conv2D(4, 3, padding="same"), x, [k, b])
    k5 = R.resize_kernel(k, 5)
    assert k5.shape == (5, 5, 2, 4)
    got = run(keras.layers.Conv2D(4, 5, padding="same"), x, [k5, b])
    np.testing.assert_allclose(got, want, atol=ATOL)
    np.testing.assert_array_equal(R.resize_kernel(k5, 3), k)


def test_resize_interpolate_keeps_sum_and_odd_change_refused():
    const = np.ones((3, 3, 2, 4), np.float32) * rand(1, 1, 2, 4)
    k7 = R.resize_kernel(const, 7, mode="interpolate")
    assert k7.shape == (7, 7, 2, 4)
    np.testing.assert_allclose(k7.sum((0, 1)), const.sum((0, 1)), rtol=1e-5)
    k = rand(3, 3, 2, 4)
    with pytest.raises(ShapeError) as e:
        R.resize_kernel(k, 4)
    assert str(e.value) == ("resize_kernel: mode 'center' needs an even size change per axis; "
                            "kernel (3, 3, 2, 4) axis 0 goes 3 -> 4; use 'interpolate' or pick 5")


def test_inflate_tile_static_clip_gives_2d_output(keras):
    k, b = rand(3, 3, 2, 4), rand(4)
    frame = rand(1, 8, 8, 2)
    want = run(keras.layers.Conv2D(4, 3), frame, [k, b])
    clip = np.repeat(frame[:, None], 5, axis=1)  # (1, 5, 8, 8, 2)
    got = run(keras.layers.Conv3D(4, 3), clip, [R.inflate_kernel(k, 3), b])
    for t in range(got.shape[1]):
        np.testing.assert_allclose(got[:, t], want, atol=ATOL)


def test_inflate_center_processes_each_frame(keras):
    k, b = rand(3, 3, 2, 4), rand(4)
    clip = rand(1, 4, 8, 8, 2)
    got = run(keras.layers.Conv3D(4, 3, padding="same"), clip,
              [R.inflate_kernel(k, 3, mode="center"), b])
    for t in range(4):
        want = run(keras.layers.Conv2D(4, 3, padding="same"), clip[:, t], [k, b])
        np.testing.assert_allclose(got[:, t], want, atol=ATOL)
    with pytest.raises(ShapeError, match="needs an odd depth"):
        R.inflate_kernel(k, 2, mode="center")


def test_dense_to_conv_and_back(keras):
    fmap = rand(2, 4, 4, 3)
    k, b = rand(48, 5), rand(5)
    want = run(keras.layers.Dense(5), fmap.reshape(2, -1), [k, b])
    ck = R.dense_to_conv(k, (4, 4, 3))
    got = run(keras.layers.Conv2D(5, 4), fmap, [ck, b])
    np.testing.assert_allclose(got[:, 0, 0], want, atol=ATOL)
    np.testing.assert_array_equal(R.conv_to_dense(ck), k)
    with pytest.raises(ShapeError) as e:
        R.dense_to_conv(k, (4, 4, 4))
    assert str(e.value) == ("dense_to_conv: kernel (48, 5) has 48 input rows but feature_shape "
                            "(4, 4, 4) flattens to 64")


def test_reorder_flatten_rows_torch_to_keras(keras):
    nchw = rand(2, 3, 4, 5)  # PyTorch feature map: C=3, H=4, W=5
    w, b = rand(6, 60), rand(6)  # nn.Linear(60, 6) after torch.flatten
    want = T.linear(nchw.reshape(2, -1), w, b)
    kernel = R.reorder_flatten_rows(R.linear_from_torch(w), (4, 5, 3), source="channels_first",
                                    target="channels_last")
    nhwc = nchw.transpose(0, 2, 3, 1)
    got = run(keras.layers.Dense(6), nhwc.reshape(2, -1), [kernel, b])
    np.testing.assert_allclose(got, want, atol=ATOL)
    back = R.reorder_flatten_rows(kernel, (4, 5, 3), source="channels_last",
                                  target="channels_first")
    np.testing.assert_array_equal(back, w.T)


# ------------------------------------------------------------------ PyTorch layouts

def test_conv_from_torch_matches_torch_equation(keras):
    w, b = rand(4, 3, 3, 3), rand(4)
    x = rand(2, 3, 7, 7)
    want = T.conv2d(x, w, b, stride=2)
    got = run(keras.layers.Conv2D(4, 3, strides=2), x.transpose(0, 2, 3, 1),
              [R.conv_from_torch(w), b])
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, atol=ATOL)


def test_depthwise_from_torch(keras):
    w, b = rand(6, 1, 3, 3), rand(6)  # in=3 channels, multiplier 2, groups=3
    x = rand(1, 3, 6, 6)
    want = T.conv2d(x, w, b, groups=3)
    k = R.conv_from_torch(w, kind="depthwise", depth_multiplier=2)
    assert k.shape == (3, 3, 3, 2)
    got = run(keras.layers.DepthwiseConv2D(3, depth_multiplier=2), x.transpose(0, 2, 3, 1),
              [k, b])
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, atol=ATOL)
    np.testing.assert_array_equal(R.conv_to_torch(k, kind="depthwise"), w)


def test_transpose_conv_from_torch(keras):
    w, b = rand(3, 4, 3, 3), rand(4)  # ConvTranspose2d(3 -> 4)
    x = rand(1, 3, 4, 4)
    want = T.conv_transpose2d(x, w, b, stride=2)
    k = R.conv_from_torch(w, kind="transpose")
    got = run(keras.layers.Conv2DTranspose(4, 3, strides=2), x.transpose(0, 2, 3, 1), [k, b])
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, atol=ATOL)
    np.testing.assert_array_equal(R.conv_to_torch(k, kind="transpose"), w)


def test_linear_and_batchnorm(keras):
    w, b = rand(3, 5), rand(3)
    x = rand(2, 5)
    np.testing.assert_allclose(run(keras.layers.Dense(3), x, [R.linear_from_torch(w), b]),
                               T.linear(x, w, b), atol=ATOL)
    gamma, beta, mean, var = rand(4), rand(4), rand(4), np.abs(rand(4)) + 0.5
    xb = rand(3, 4)
    eps = 1e-5
    want = (xb - mean) / np.sqrt(var + eps) * gamma + beta  # nn.BatchNorm1d, eval mode
    layer = keras.layers.BatchNormalization(**R.batchnorm_config_from_torch())
    got = run(layer, xb, list(R.batchnorm_from_torch(gamma, beta, mean, var)))
    np.testing.assert_allclose(got, want, atol=ATOL)
    assert R.batchnorm_config_from_torch() == {"epsilon": 1e-5, "momentum": 0.9}


def test_lstm_from_torch_matches_torch_equation(keras):
    u, d = 5, 3
    w_ih, w_hh, b_ih, b_hh = rand(4 * u, d), rand(4 * u, u), rand(4 * u), rand(4 * u)
    x = rand(2, 6, d)
    want = T.lstm(x, w_ih, w_hh, b_ih, b_hh)
    got = run(keras.layers.LSTM(u, return_sequences=True), x,
              list(R.lstm_from_torch(w_ih, w_hh, b_ih, b_hh)))
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_gru_from_torch_matches_torch_equation(keras):
    u, d = 4, 3
    w_ih, w_hh, b_ih, b_hh = rand(3 * u, d), rand(3 * u, u), rand(3 * u), rand(3 * u)
    x = rand(2, 6, d)
    want = T.gru(x, w_ih, w_hh, b_ih, b_hh)
    got = run(keras.layers.GRU(u, return_sequences=True), x,
              list(R.gru_from_torch(w_ih, w_hh, b_ih, b_hh)))
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_lstm_from_tf1_matches_basic_lstm_cell(keras):
    u, d = 4, 3
    kernel, bias = rand(d + u, 4 * u), rand(4 * u)
    x = rand(2, 5, d)
    want = T.tf1_basic_lstm(x, kernel, bias, forget_bias=1.0)
    got = run(keras.layers.LSTM(u, return_sequences=True), x,
              list(R.lstm_from_tf1(kernel, bias, forget_bias=1.0)))
    np.testing.assert_allclose(got, want, atol=ATOL)


dims = st.integers(1, 6)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(units=dims, inputs=dims)
def test_keras_torch_keras_is_bitwise(units, inputs):
    r = np.random.default_rng(units * 7 + inputs)
    k, rk = r.normal(size=(inputs, 4 * units)), r.normal(size=(units, 4 * units))
    b = r.normal(size=4 * units)
    back = R.lstm_from_torch(*R.lstm_to_torch(k, rk, b))
    for a, c in zip((k, rk, b), back):
        np.testing.assert_array_equal(a, c)
    gk, grk, gb = (r.normal(size=(inputs, 3 * units)), r.normal(size=(units, 3 * units)),
                   r.normal(size=(2, 3 * units)))
    for a, c in zip((gk, grk, gb), R.gru_from_torch(*R.gru_to_torch(gk, grk, gb))):
        np.testing.assert_array_equal(a, c)
    conv = r.normal(size=(3, 2, inputs, units))
    np.testing.assert_array_equal(R.conv_from_torch(R.conv_to_torch(conv)), conv)
    dense = r.normal(size=(inputs, units))
    np.testing.assert_array_equal(R.linear_from_torch(R.linear_to_torch(dense)), dense)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(units=dims, inputs=dims)
def test_torch_keras_torch_is_the_same_function(units, inputs):
    r = np.random.default_rng(units * 11 + inputs)
    w_ih, w_hh = r.normal(size=(4 * units, inputs)), r.normal(size=(4 * units, units))
    b_ih, b_hh = r.normal(size=4 * units), r.normal(size=4 * units)
    x = r.normal(size=(2, 3, inputs))
    again = R.lstm_to_torch(*R.lstm_from_torch(w_ih, w_hh, b_ih, b_hh))
    np.testing.assert_allclose(T.lstm(x, *again), T.lstm(x, w_ih, w_hh, b_ih, b_hh), atol=1e-9)
    gw = (r.normal(size=(3 * units, inputs)), r.normal(size=(3 * units, units)),
          r.normal(size=3 * units), r.normal(size=3 * units))
    gagain = R.gru_to_torch(*R.gru_from_torch(*gw))
    for a, c in zip(gw, gagain):  # GRU keeps both biases: bitwise
        np.testing.assert_array_equal(a, c)


def test_recurrent_errors():
    with pytest.raises(ShapeError) as e:
        R.lstm_to_torch(rand(3, 10), rand(2, 8), rand(8))
    assert str(e.value) == ("lstm_to_torch: kernel: last axis 10 of shape (3, 10) is not a "
                            "multiple of 4, so it is not a packed LSTM array")
    with pytest.raises(ShapeError, match="not a multiple of 3, so it is not a packed GRU"):
        R.gru_to_torch(rand(3, 10), rand(2, 6), rand(2, 6))
    with pytest.raises(ShapeError) as e:
        R.lstm_from_torch(rand(8, 3), rand(8, 3))
    assert str(e.value) == "lstm_from_torch: w_hh has shape (8, 3) but w_ih (8, 3) needs (8, 2)"


def test_grow_recurrent_units_keeps_old_outputs(keras):
    for layer, gates in ((keras.layers.LSTM, 4), (keras.layers.GRU, 3)):
        x = rand(2, 5, 3)
        ref = layer(4, return_sequences=True)
        ref.build(x.shape)
        weights = [w + 0.1 for w in ref.get_weights()]
        want = run(layer(4, return_sequences=True), x, weights)
        grown = R.resize_recurrent_units(*weights, 7, gates=gates, seed=0)
        got = run(layer(7, return_sequences=True), x, list(grown))
        np.testing.assert_allclose(got[..., :4], want, atol=ATOL)
        back = R.resize_recurrent_units(*grown, 4, gates=gates)
        for a, c in zip(weights, back):
            np.testing.assert_array_equal(a, c)


# ------------------------------------------------------------------ vocabulary, Net2Net

def test_remap_rows():
    table = rand(4, 3)
    new, report = R.remap_rows(table, ["a", "b", "c", "d"], ["c", "a", "z"], fill="mean")
    np.testing.assert_array_equal(new[0], table[2])
    np.testing.assert_array_equal(new[1], table[0])
    np.testing.assert_allclose(new[2], table.mean(0), atol=1e-6)
    assert report.carried == ("c", "a") and report.new == ("z",) and report.dropped == ("b", "d")
    out_kernel = rand(5, 4)  # Dense(4 tokens) output layer: vocabulary on the last axis
    moved, _ = R.remap_rows(out_kernel, list("abcd"), list("db"), axis=-1, fill="zeros")
    np.testing.assert_array_equal(moved, out_kernel[:, [3, 1]])
    with pytest.raises(ShapeError) as e:
        R.remap_rows(table, ["a", "b", "a", "d"], ["a"])
    assert str(e.value) == ("remap_rows: old vocabulary lists 'a' twice (positions 0 and 2); a "
                            "vocabulary needs unique tokens")


def test_net2wider_dense_is_exact(keras):
    k1, b1, k2, b2 = rand(5, 4), rand(4), rand(4, 3), rand(3)
    x = rand(6, 5)
    def forward(a, ba, c, units):
        h = run(keras.layers.Dense(units, activation="relu"), x, [a, ba])
        return run(keras.layers.Dense(3), h, [c, b2])
    want = forward(k1, b1, k2, 4)
    n1, nb1, n2 = R.net2wider(k1, b1, k2, 9, seed=3)
    np.testing.assert_allclose(forward(n1, nb1, n2, 9), want, atol=ATOL)


def test_net2wider_conv_with_batchnorm(keras):
    L = keras.layers
    k1, k2, b2 = rand(3, 3, 2, 4), rand(3, 3, 4, 5), rand(5)
    bn = (rand(4), rand(4), rand(4), np.abs(rand(4)) + 0.5)
    x = rand(1, 8, 8, 2)
    def forward(a, c, bnw, units):
        h = run(L.Conv2D(units, 3, use_bias=False), x, [a])
        h = np.maximum(run(L.BatchNormalization(), h, list(bnw)), 0)
        return run(L.Conv2D(5, 3), h, [c, b2])
    want = forward(k1, k2, bn, 4)
    n1, nb1, n2, nbn = R.net2wider(k1, None, k2, 7, bn=bn, seed=1)
    assert nb1 is None
    np.testing.assert_allclose(forward(n1, n2, nbn, 7), want, atol=1e-4)
    noisy = R.net2wider(k1, None, k2, 7, bn=bn, seed=1, noise=0.1)
    assert not np.array_equal(noisy[0], n1)


def test_net2wider_refuses_fewer_units():
    with pytest.raises(ShapeError) as e:
        R.net2wider(rand(5, 4), rand(4), rand(4, 3), 2)
    assert str(e.value) == ("net2wider: can't widen kernel_in (5, 4) from 4 to 2 units; "
                            "Net2Wider only grows (use delete_channels to shrink)")


@pytest.mark.parametrize("bn, shapes", [
    ((rand(4), rand(4), rand(4)), "[(4,), (4,), (4,)]"),                     # three, not four
    ((rand(4), rand(4), rand(4), rand(5)), "[(4,), (4,), (4,), (5,)]"),      # one of another width
])
def test_net2wider_refuses_batchnorm_arrays_that_dont_fit(bn, shapes):
    with pytest.raises(ShapeError) as e:
        R.net2wider(rand(5, 4), rand(4), rand(4, 3), 6, bn=bn)
    assert str(e.value) == ("net2wider: bn must be (gamma, beta, moving_mean, moving_variance), "
                            f"each (4,); got {shapes}")


def test_identity_kernel(keras):
    x = rand(1, 6, 6, 3)
    got = run(keras.layers.Conv2D(3, 3, padding="same"), x,
              [R.identity_kernel(3, kernel_size=(3, 3)), np.zeros(3, np.float32)])
    np.testing.assert_allclose(got, x, atol=ATOL)


# ------------------------------------------------------------------ tiled transposes

@pytest.mark.parametrize("shape", [(700, 1300), (1, 5), (513, 1), (0, 4), (1024, 512)])
def test_tiled_transpose_is_numpys(shape):
    """The tiled copy behind linear_from_torch/linear_to_torch: numpy's own .T, on shapes of
    one tile, several (ragged) tiles either way, and none."""
    from surgery.reshape._checks import transposed

    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    t = transposed(a)
    assert t.flags.c_contiguous and t.shape == shape[::-1]
    np.testing.assert_array_equal(t, a.T)
    assert not np.shares_memory(t, a)


def test_linear_layouts_over_many_tiles():
    """Larger than one tile both ways: PyTorch's Linear layout and back, by numpy's .T."""
    w = np.random.default_rng(1).standard_normal((600, 1100)).astype(np.float32)
    np.testing.assert_array_equal(R.linear_from_torch(w), w.T)
    np.testing.assert_array_equal(R.linear_to_torch(w), w.T)
    k = R.reorder_flatten_rows(w.T, (10, 11, 10), source="channels_first",
                               target="channels_last")
    np.testing.assert_array_equal(k, w.T.reshape(10, 10, 11, 600).transpose(1, 2, 0, 3)
                                  .reshape(-1, 600))



@pytest.mark.parametrize("fs", [(4, 5, 3), (1, 1, 6), (2, 3, 1), (7, 7, 16)])
def test_flatten_rows_reordered_in_place_as_by_copy(fs):
    """The in-place row moves behind linear_from_torch(feature_shape=) give what the copying
    reorder_flatten_rows gives, both ways, on rows that are all distinct; the public function
    copies and leaves its input alone."""
    from surgery.reshape.spatial import reordered_rows

    n = int(np.prod(fs))
    k = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    for source, target in (("channels_first", "channels_last"),
                           ("channels_last", "channels_first"),
                           ("channels_first", "channels_first")):
        before = k.copy()
        expected = R.reorder_flatten_rows(k, fs, source=source, target=target)
        np.testing.assert_array_equal(k, before)
        assert not np.shares_memory(expected, k)
        mine = k.copy()
        out = reordered_rows(mine, fs, source, target, own=True)
        assert out is mine
        np.testing.assert_array_equal(out, expected)
    w = np.arange(3 * n, dtype=np.float32).reshape(3, n)  # a PyTorch Linear after flatten
    np.testing.assert_array_equal(
        R.linear_from_torch(w, feature_shape=fs),
        R.reorder_flatten_rows(w.T, fs, source="channels_first", target="channels_last"))

# ------------------------------------------------------------------ house rules

def test_inputs_never_mutated_and_dtype_kept():
    k = rand(3, 3, 3, 4).astype(np.float16)
    before = k.copy()
    outs = [R.adapt_in_channels(k, 1), R.adapt_in_channels(k, 6, mode="repeat"),
            R.resize_kernel(k, 5), R.inflate_kernel(k, 3), R.conv_to_torch(k),
            R.pad_units(k, 6), R.slice_units(k, [0]), R.conv_to_dense(k)]
    np.testing.assert_array_equal(k, before)
    assert all(o.dtype == np.float16 for o in outs)
    for o in outs:
        assert not np.shares_memory(o, k)


def test_module_imports_without_tensorflow():
    code = ("import sys; import surgery.reshape; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
