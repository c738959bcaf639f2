"""Cases `python -m tests.mutation` found untested: each test here kills a mutant that survived
the rest of the suite (named in the test's docstring). References: plain Keras layers and models
run on the converted weights, and arrays indexed by hand from the source."""

from __future__ import annotations

import numpy as np
import pytest

import surgery
from surgery import reshape as R
from surgery.transfer.rules import RulesError
from tests.models import randomize

ATOL = 1e-5


def _run(layer, x, weights):
    layer.build(x.shape)
    layer.set_weights(weights)
    return np.asarray(layer(x))


def test_inflate_center_depth_5_puts_the_kernel_in_the_middle_slice(keras):
    """Survivor: ``out[depth // 2]`` -> ``out[depth // 3]`` (the same slice for depth 3)."""
    rng = np.random.default_rng(0)
    k, b = rng.normal(size=(3, 3, 2, 4)).astype("float32"), rng.normal(size=4).astype("float32")
    clip = rng.normal(size=(1, 6, 8, 8, 2)).astype("float32")
    got = _run(keras.layers.Conv3D(4, (5, 3, 3), padding="same"), clip,
               [R.inflate_kernel(k, 5, mode="center"), b])
    for t in range(clip.shape[1]):
        want = _run(keras.layers.Conv2D(4, 3, padding="same"), clip[:, t], [k, b])
        np.testing.assert_allclose(got[:, t], want, atol=ATOL)


def _dense(keras, units, name, inputs=4, seed=None):
    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(units, name=name)])
    return randomize(model, seed) if seed is not None else model


def test_slice_keeping_every_unit_is_a_reorder_not_a_loss(keras):
    """Survivor: `slice`'s lossy test ``kept < had`` -> ``kept <= had`` (every unit kept in a
    new order dropped nothing, so the rule needs no ``lossy = true``)."""
    src, tgt = _dense(keras, 3, "fc", seed=1), _dense(keras, 3, "fc")
    rules = {"adapter": [{"target": "fc/*", "name": "slice", "keep": [2, 0, 1]}]}
    report = surgery.transplant(src, tgt, rules, strict=True)
    assert report.ok
    x = np.random.default_rng(2).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(tgt(x)), np.asarray(src(x))[:, [2, 0, 1]], atol=ATOL)


def _conv(keras, channels, seed=None):
    # a 2x2 kernel (2, 2, channels, 4): no axis but the input axis has 3 entries
    model = keras.Sequential([keras.Input((6, 6, channels)),
                              keras.layers.Conv2D(4, 2, name="conv")])
    return randomize(model, seed) if seed is not None else model


def test_select_in_channels_reorder_is_exact_and_dropping_one_needs_lossy(keras):
    """Survivor: `adapt_in_channels`' lossy test reading ``a.shape[-1]`` (output channels)
    instead of ``a.shape[-2]`` (input channels): BGR -> RGB drops nothing; 3 -> 2 channels
    drops one and must be accepted with ``lossy = true``."""
    src = _conv(keras, 3, seed=3)
    x = np.random.default_rng(4).normal(size=(2, 6, 6, 3)).astype("float32")
    bgr = _conv(keras, 3)
    rule = {"target": "conv/kernel", "name": "adapt_in_channels", "mode": "select",
            "indices": [2, 1, 0]}
    assert surgery.transplant(src, bgr, {"adapter": [rule]}, strict=True).ok
    np.testing.assert_allclose(np.asarray(bgr(x[..., ::-1])), np.asarray(src(x)), atol=ATOL)

    two = _conv(keras, 2)
    rule = dict(rule, indices=[0, 2])
    with pytest.raises(RulesError) as e:
        surgery.transplant(src, two, {"adapter": [rule]})
    assert str(e.value) == ("conv/kernel: adapter 'adapt_in_channels' would drop source values "
                            "(3 -> 2 input channels (select)); add lossy = true to its rule to "
                            "accept that")
    surgery.transplant(src, two, {"adapter": [dict(rule, lossy=True)]}, strict=True)
    np.testing.assert_allclose(np.asarray(two(x[..., [0, 2]])),
                               np.asarray(src(x * np.array([1, 0, 1], "float32"))), atol=ATOL)


def _embedding(keras, vocab, seed=None):
    model = keras.Sequential([keras.Input((2,), dtype="int32"),
                              keras.layers.Embedding(vocab, 3, name="emb")])
    return randomize(model, seed) if seed is not None else model


def test_remap_rows_adapter_carries_rows_by_token(keras):
    """Survivor: `remap_rows`' option check ``key not in opts`` -> ``key in opts`` (no test ran
    the adapter with both vocabularies given)."""
    old, new = ["a", "b", "c", "d"], ["c", "a", "x"]
    src, tgt = _embedding(keras, 4, seed=5), _embedding(keras, 3)
    rule = {"target": "emb/embeddings", "name": "remap_rows", "old_vocab": old,
            "new_vocab": new, "fill": "mean", "lossy": True}
    assert surgery.transplant(src, tgt, {"adapter": [rule]}, strict=True).ok
    table = src.get_layer("emb").embeddings.numpy()
    want = np.stack([table[2], table[0], table.astype(np.float64).mean(axis=0)])
    np.testing.assert_allclose(tgt.get_layer("emb").embeddings.numpy(), want, atol=1e-6)
    # the model itself: new token ids give the old model's vectors for the same tokens
    np.testing.assert_allclose(np.asarray(tgt(np.array([[0, 1]]))),
                               np.asarray(src(np.array([[2, 0]]))), atol=ATOL)


def test_adapter_source_named_by_original_or_renamed_key(keras):
    """Survivor: `resolve` testing ``key not in src_by_key`` (an adapter's ``source`` given as
    the key before a rename, or after it, must both reach the same source tensor)."""
    src = randomize(keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="old_fc")]),
                    6)
    tgt = _dense(keras, 3, "fc")
    rules = {"rename": [{"from": "^old_", "to": ""}],
             "adapter": [{"target": "fc/kernel", "name": "slice", "source": "old_fc/kernel",
                          "keep": [4, 0, 2], "lossy": True},
                         {"target": "fc/bias", "name": "slice", "source": "fc/bias",
                          "keep": [4, 0, 2], "lossy": True}]}
    assert surgery.transplant(src, tgt, rules, strict=True).ok
    kernel, bias = src.get_layer("old_fc").get_weights()
    np.testing.assert_array_equal(tgt.get_layer("fc").kernel.numpy(), kernel[:, [4, 0, 2]])
    np.testing.assert_array_equal(tgt.get_layer("fc").bias.numpy(), bias[[4, 0, 2]])


def test_depthwise_adapter_takes_the_multiplier_from_the_target(keras, tmp_path):
    """Survivors: `conv_from_torch`'s depthwise multiplier read from ``target[0]`` or
    ``target[-2]`` instead of ``target[-1]`` (kernel 3x3, 3 channels, multiplier 2)."""
    from tests import torch_reference as T
    rng = np.random.default_rng(7)
    w, b = rng.normal(size=(6, 1, 3, 3)).astype("float32"), rng.normal(size=6).astype("float32")
    path = str(tmp_path / "dw.npz")
    np.savez(path, **{"dw/kernel": w, "dw/bias": b})
    tgt = keras.Sequential([keras.Input((6, 6, 3)),
                            keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")])
    rules = {"adapter": [{"target": "dw/kernel", "name": "conv_from_torch",
                          "kind": "depthwise"}]}
    assert surgery.transplant(path, tgt, rules, strict=True).ok
    x = rng.normal(size=(2, 3, 6, 6)).astype("float32")  # NCHW, as PyTorch
    want = T.conv2d(x, w, b, groups=3)
    got = np.asarray(tgt(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_structural_match_of_a_layer_with_one_variable(keras):
    """Survivor: the structural signature reading ``members[1]`` instead of ``members[0]``
    (a bias-free Dense has one variable)."""
    def build():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, use_bias=False),
                                 keras.layers.Dense(2)])
    a, b = randomize(build(), seed=8), build()
    report = surgery.transplant(a, b, strict=True)
    assert {e.matched_by for e in report.copied} == {"structural"}
    x = np.random.default_rng(9).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(b(x)), np.asarray(a(x)), atol=ATOL)


def test_adapter_error_carries_both_shapes(keras):
    """Survivor: `_both_sides` testing ``len(src) != 1`` (the error's `shapes` field then
    wraps the one source shape in a tuple)."""
    from surgery.errors import ShapeError
    src, tgt = _conv(keras, 3, seed=10), _conv(keras, 2)
    rules = {"adapter": [{"target": "conv/kernel", "name": "adapt_in_channels",
                          "mode": "repeat"}]}
    with pytest.raises(ShapeError) as e:
        surgery.transplant(src, tgt, rules)
    assert e.value.shapes == ((2, 2, 3, 4), (2, 2, 2, 4))


def test_shrink_recurrent_units_to_one(keras):
    """Survivor: ``units >= 1`` -> ``units > 1`` (one unit is a valid size). Reference: the
    kept unit's column in each gate block, indexed by hand."""
    rng = np.random.default_rng(11)
    k, rk, b = (rng.normal(size=s).astype("float32") for s in ((5, 12), (3, 12), (12,)))
    k1, rk1, b1 = R.resize_recurrent_units(k, rk, b, 1, gates=4, keep=[2])
    cols = [2, 5, 8, 11]  # unit 2 of gates i, f, c, o (3 units each)
    np.testing.assert_array_equal(k1, k[:, cols])
    np.testing.assert_array_equal(rk1, rk[[2]][:, cols])
    np.testing.assert_array_equal(b1, b[cols])
    layer = keras.layers.LSTM(1)  # Keras accepts them as a 1-unit LSTM
    layer.build((None, 4, 5))
    layer.set_weights([k1, rk1, b1])


def test_identity_kernel_5x5_is_the_identity(keras):
    """Survivor: the centre tap at ``s // 3`` (the same as ``s // 2`` for size 3)."""
    x = np.random.default_rng(12).normal(size=(2, 7, 7, 4)).astype("float32")
    layer = keras.layers.Conv2D(4, 5, padding="same", use_bias=False)
    got = _run(layer, x, [R.identity_kernel(4, kernel_size=(5, 5))])
    np.testing.assert_allclose(got, x, atol=ATOL)


def test_recurrent_bias_errors_name_the_layout():
    """Survivor: the GRU hint in `_check_keras`' bias error shown for ``gates != 3``."""
    from surgery.errors import ShapeError
    rng = np.random.default_rng(13)
    with pytest.raises(ShapeError) as e:
        R.gru_to_torch(rng.normal(size=(5, 12)), rng.normal(size=(4, 12)), np.zeros(12))
    assert str(e.value) == ("gru_to_torch: bias has shape (12,) but kernel (5, 12) needs "
                            "(2, 12) (a GRU with reset_after=True)")
    with pytest.raises(ShapeError) as e:
        R.lstm_to_torch(rng.normal(size=(5, 16)), rng.normal(size=(4, 16)), np.zeros((2, 16)))
    assert str(e.value) == "lstm_to_torch: bias has shape (2, 16) but kernel (5, 16) needs (16,)"


def test_batchnorm_length_error_names_the_first_and_the_odd_one():
    """Survivor: lengths compared with the last parameter instead of the first."""
    from surgery.errors import ShapeError
    with pytest.raises(ShapeError) as e:
        R.batchnorm_from_torch(np.ones(4), np.ones(5), np.ones(5), np.ones(5))
    assert str(e.value) == "batchnorm_from_torch: parameters of different lengths (4,) vs (5,)"


def test_remap_random_fill_follows_each_column_of_the_old_table():
    """Survivor: ``std(axis=0)`` -> ``std(axis=-1)`` in `remap_rows` (fill ``random``).
    Reference: numpy's per-column mean and standard deviation of the old table."""
    rng = np.random.default_rng(14)
    old = rng.normal(size=(50, 3)) * [1.0, 10.0, 100.0] + [0.0, 5.0, -3.0]
    new_tokens = [f"n{i}" for i in range(4000)]
    table, report = R.remap_rows(old, list(range(50)), new_tokens, fill="random", seed=0)
    assert table.shape == (4000, 3) and len(report.new) == 4000
    np.testing.assert_allclose(table.std(axis=0), old.std(axis=0), rtol=0.05)
    np.testing.assert_allclose(table.mean(axis=0), old.mean(axis=0),
                               atol=0.1 * old.std(axis=0).max())


def _keras_draw(keras, cls, shape):
    return np.asarray(getattr(keras.initializers, cls)(seed=0)(shape))


@pytest.mark.parametrize("name,cls", [("glorot_uniform", "GlorotUniform"),
                                      ("glorot_normal", "GlorotNormal"),
                                      ("he_uniform", "HeUniform"), ("he_normal", "HeNormal")])
def test_initializers_have_keras_bounds(keras, name, cls):
    """Survivor: uniform and truncated-normal draws swapped (``dist != "uniform"``): both have
    about the same spread, but a uniform draw ends at sqrt(3) standard deviations and a
    truncated normal at 2 / 0.8796 of them. Reference: Keras's own initializer."""
    ours = R.initialize(name, (200, 300), seed=0)
    theirs = _keras_draw(keras, cls, (200, 300))
    np.testing.assert_allclose(np.abs(ours).max(), np.abs(theirs).max(), rtol=0.02)
    if name.endswith("uniform"):
        np.testing.assert_allclose(ours.std(), theirs.std(), rtol=0.02)


@pytest.mark.parametrize("name,cls", [("glorot_normal", "GlorotNormal"),
                                      ("he_normal", "HeNormal"),
                                      ("lecun_normal", "LecunNormal")])
def test_truncated_normal_has_keras_spread(keras, name, cls):
    """Keras truncates (redraws) beyond two standard deviations; clipping would put ~4.5% of
    the values on the bounds and widen the spread by ~9%."""
    ours = R.initialize(name, (200, 300), seed=0)
    theirs = _keras_draw(keras, cls, (200, 300))
    np.testing.assert_allclose(ours.std(), theirs.std(), rtol=0.02)
    bound = np.abs(theirs).max()
    assert np.abs(ours).max() <= bound * 1.01
    assert np.mean(np.abs(ours) >= 0.999 * np.abs(ours).max()) < 0.001  # nothing piled up


def test_initializer_scales_by_fan_shape(keras):
    """Survivor: ``fan_shape or shape`` -> ``fan_shape and shape`` (new rows drawn with the
    fans of the slice instead of the whole kernel). Reference: Keras's HeUniform on a kernel
    with the whole kernel's fan-in (10)."""
    bound = np.abs(np.asarray(keras.initializers.HeUniform(seed=0)((10, 5000)))).max()
    rows = R.initialize("he_uniform", (2, 64), fan_shape=(10, 64), seed=0)
    assert 0.8 * bound < np.abs(rows).max() <= bound * 1.001


def test_feature_shape_with_a_unit_axis(keras):
    """Survivor: ``d >= 1`` -> ``d > 1`` in `_feature_shape` (a 1-pixel-high map is valid).
    Reference: Keras Flatten + Dense against the converted Conv2D."""
    rng = np.random.default_rng(15)
    k, b = rng.normal(size=(6, 5)).astype("float32"), rng.normal(size=5).astype("float32")
    x = rng.normal(size=(3, 1, 2, 3)).astype("float32")
    want = _run(keras.layers.Dense(5), x.reshape(3, -1), [k, b])
    got = _run(keras.layers.Conv2D(5, (1, 2)), x, [R.dense_to_conv(k, (1, 2, 3)), b])
    np.testing.assert_allclose(got.reshape(3, 5), want, atol=ATOL)


def test_resize_adapter_is_lossy_when_only_the_width_shrinks(keras):
    """Survivor: `resize_kernel`'s lossy test comparing ``target[:-3]`` (the first spatial
    axis only): cropping a 3x5 kernel to 3x3 drops values."""
    src = randomize(keras.Sequential([keras.Input((8, 8, 2)),
                                      keras.layers.Conv2D(4, (3, 5), name="conv")]), 16)
    tgt = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3, name="conv")])
    rule = {"target": "conv/kernel", "name": "resize_kernel", "mode": "center"}
    with pytest.raises(RulesError) as e:
        surgery.transplant(src, tgt, {"adapter": [rule]})
    assert str(e.value) == ("conv/kernel: adapter 'resize_kernel' would drop source values "
                            "(kernel (3, 5) -> (3, 3) (center)); add lossy = true to its rule "
                            "to accept that")
    surgery.transplant(src, tgt, {"adapter": [dict(rule, lossy=True)]}, strict=True)
    np.testing.assert_array_equal(tgt.get_layer("conv").kernel.numpy(),
                                  src.get_layer("conv").kernel.numpy()[:, 1:4])


def test_size_checks_refuse_zero_and_short_shapes():
    """Survivors: ``and`` -> ``or`` in the checks of `resize_recurrent_units` (0 units passed
    as an integer) and `_feature_shape` (a 2-entry or zero-sized feature shape)."""
    from surgery.errors import ShapeError
    rng = np.random.default_rng(17)
    k, rk, b = (rng.normal(size=s) for s in ((5, 12), (3, 12), (12,)))
    with pytest.raises(ShapeError) as e:
        R.resize_recurrent_units(k, rk, b, 0, gates=4)
    assert str(e.value) == "resize_recurrent_units: units must be a positive integer, got 0"
    for shape in ((2, 3), (0, 2, 3)):
        with pytest.raises(ShapeError) as e:
            R.dense_to_conv(rng.normal(size=(6, 5)), shape)
        assert str(e.value) == ("dense_to_conv: feature_shape must be (height, width, "
                                f"channels), got {shape!r}")


def test_resize_adapter_growing_or_interpolating_needs_no_lossy(keras):
    """Survivors: `resize_kernel`'s lossy test with ``t <= s`` (an unchanged axis counted as
    cropped) or ``or`` for ``and`` (``interpolate`` counted as cropping). Reference: the
    original Conv2D with ``padding="same"`` (centre padding keeps its function)."""
    src = randomize(keras.Sequential([keras.Input((8, 8, 2)),
                                      keras.layers.Conv2D(4, 3, padding="same", name="conv")]),
                    18)
    wide = keras.Sequential([keras.Input((8, 8, 2)),
                             keras.layers.Conv2D(4, (3, 5), padding="same", name="conv")])
    rule = {"target": "conv/kernel", "name": "resize_kernel", "mode": "center"}
    assert surgery.transplant(src, wide, {"adapter": [rule]}, strict=True).ok
    x = np.random.default_rng(19).normal(size=(2, 8, 8, 2)).astype("float32")
    np.testing.assert_allclose(np.asarray(wide(x)), np.asarray(src(x)), atol=ATOL)
    small = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 1, name="conv")])
    rule = dict(rule, mode="interpolate")
    report = surgery.transplant(src, small, {"adapter": [rule]}, strict=True)
    assert report.ok and [e.path for e in report.adapted] == ["conv/kernel"]


def test_shape_fallback_refuses_an_ambiguous_source(keras):
    """Survivor: ``and`` -> ``or`` in the unique-shape fallback (a target shape two sources
    share would take one of them by guess)."""
    src = randomize(keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="a"),
                                      keras.layers.Dense(4, name="b")]), 20)
    tgt = keras.Sequential([keras.Input((4,)), keras.layers.EinsumDense(
        "ab,bc->ac", 4, bias_axes="c", name="c")])
    report = surgery.transplant(src, tgt, {"match": "shape"})
    assert sorted(e.path for e in report.missing) == ["c/bias", "c/kernel"]
    assert not report.copied


def test_adapter_output_of_the_wrong_shape_is_refused(keras):
    """Survivors: the check of an adapter's output shape with ``and`` for ``or``, and its
    message with ``got is not None``."""
    from surgery.errors import ShapeError
    src, tgt = _dense(keras, 5, "fc", seed=21), _dense(keras, 5, "fc")
    rules = {"adapter": [{"target": "fc/kernel", "name": "transpose"}]}
    with pytest.raises(ShapeError) as e:
        surgery.transplant(src, tgt, rules)
    assert str(e.value) == ("fc/kernel: adapter 'transpose' made (5, 4) from source (4, 5), "
                            "but the target is (4, 5); check the adapter's options")
    assert e.value.shapes == ((5, 4), (4, 5))


def test_rename_that_matches_without_changing_is_not_reported_unused(keras):
    """Survivor: a rename counted as used only when it changes a key (``and`` for ``or``):
    one that matches and keeps the key matched something, so no warning."""
    src, tgt = _dense(keras, 3, "fc", seed=22), _dense(keras, 3, "fc")
    report = surgery.transplant(src, tgt, {"rename": [{"from": "^(fc)/", "to": r"\1/"}]},
                                strict=True)
    assert report.ok and not report.warnings


def test_remap_rows_on_the_last_axis_of_a_3d_table():
    """Survivor: ``moveaxis(m, axis, 0)`` -> ``moveaxis(m, 0, axis)`` (the same for tables of
    rank 1 or 2). Reference: the old table indexed by hand."""
    m = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    out, _ = R.remap_rows(m, ["a", "b", "c", "d"], ["d", "a"], axis=-1, fill="zeros")
    np.testing.assert_array_equal(out, m[:, :, [3, 0]])


def test_lstm_from_tf1_refuses_a_kernel_without_input_rows():
    """Survivor: the row count checked on ``k.shape[-1]`` (always more than the units)."""
    from surgery.errors import ShapeError
    with pytest.raises(ShapeError) as e:
        R.lstm_from_tf1(np.zeros((3, 12)), np.zeros(12))
    assert str(e.value) == ("lstm_from_tf1: kernel (3, 12) has 3 rows, fewer than input + 3 "
                            "units")


def test_inflate_refuses_zero_depth_and_takes_one(keras):
    """Survivors: ``and`` -> ``or`` in `inflate_kernel`'s depth check (0 is an integer) and
    ``depth >= 1`` -> ``depth > 1`` (depth 1 is a Conv3D that sees one frame at a time).
    Reference: Keras Conv2D on each frame."""
    from surgery.errors import ShapeError
    with pytest.raises(ShapeError) as e:
        R.inflate_kernel(np.ones((3, 3, 2, 4)), 0)
    assert str(e.value) == "inflate_kernel: depth must be a positive integer, got 0"
    rng = np.random.default_rng(25)
    k, b = rng.normal(size=(3, 3, 2, 4)).astype("float32"), rng.normal(size=4).astype("float32")
    clip = rng.normal(size=(1, 3, 6, 6, 2)).astype("float32")
    got = _run(keras.layers.Conv3D(4, (1, 3, 3)), clip, [R.inflate_kernel(k, 1), b])
    for t in range(3):
        want = _run(keras.layers.Conv2D(4, 3), clip[:, t], [k, b])
        np.testing.assert_allclose(got[:, t], want, atol=ATOL)


def test_file_target_batchnorm_epsilon_read_from_its_own_layer(keras, tmp_path):
    """Survivor: `layer_config` taking the first layer whose path is *not* the adapter's (the
    Conv2D, which has no epsilon) when the target is a `.keras` file. Reference: the PyTorch
    network's equations in numpy."""
    from tests.test_transplant import RULES, _torch_cnn_forward, _torch_cnn_state
    import os
    state = _torch_cnn_state(np.random.default_rng(23))
    src = str(tmp_path / "cnn.npz")
    np.savez(src, **state)
    L = keras.layers
    target = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(8, 3, name="conv"),
                               L.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn"),
                               L.ReLU(), L.Flatten(name="flat"), L.Dense(10, name="fc")])
    target.save(str(tmp_path / "target.keras"))
    out = str(tmp_path / "out.keras")
    report = surgery.transplant_file(src, str(tmp_path / "target.keras"), out,
                                     os.path.join(RULES, "torch_cnn.toml"))
    assert report.ok
    x = np.random.default_rng(24).normal(size=(2, 3, 8, 8)).astype("float32")
    model = surgery.load_model(out)
    np.testing.assert_allclose(np.asarray(model(x.transpose(0, 2, 3, 1))),
                               _torch_cnn_forward(state, x), atol=1e-4)


def test_pad_embedding_rows_take_the_targets_initial_values(keras):
    """Survivor: ``or`` -> ``and`` in `_grow`'s test for arrays without input axes (an
    Embedding's new rows would be zeros, as if they were the next layer's input rows).
    Reference: the target's own embeddings before the transplant."""
    src, tgt = _embedding(keras, 4, seed=26), _embedding(keras, 6)
    fresh = tgt.get_layer("emb").embeddings.numpy().copy()
    rule = {"target": "emb/embeddings", "name": "pad"}
    assert surgery.transplant(src, tgt, {"adapter": [rule]}, strict=True).ok
    got = tgt.get_layer("emb").embeddings.numpy()
    np.testing.assert_array_equal(got[:4], src.get_layer("emb").embeddings.numpy())
    np.testing.assert_array_equal(got[4:], fresh[4:])


def test_batchnorm_adapter_refuses_a_different_epsilon(keras, tmp_path):
    """Survivor: ``and`` -> ``or`` in `check_epsilon` (any known epsilon would pass)."""
    from tests.test_transplant import _torch_cnn_state
    state = _torch_cnn_state(np.random.default_rng(27))
    src = str(tmp_path / "bn.npz")
    np.savez(src, **{k: v for k, v in state.items() if k.startswith("bn1.")})
    tgt = keras.Sequential([keras.Input((4, 4, 8)), keras.layers.BatchNormalization(name="bn")])
    rule = {"target": "bn", "name": "batchnorm_from_torch",
            "sources": {r: f"bn1.{r}" for r in ("weight", "bias", "running_mean",
                                                 "running_var")}}
    with pytest.raises(RulesError) as e:
        surgery.transplant(src, tgt, {"adapter": [rule]})
    assert str(e.value) == (
        "bn: the PyTorch BatchNorm's eps is 1e-05 (the rule's eps, default 1e-05) but the Keras "
        "layer's epsilon is 0.001, so the outputs would differ; build the Keras layer with "
        "epsilon=1e-05 (or give the rule the PyTorch module's eps), or add eps_mismatch = "
        "\"ok\" to the rule to accept the difference")


def test_skipped_sources_are_neither_used_nor_unused(keras):
    """Survivors: `skip` testing ``s.path in skipped_sources`` (nothing ever skipped) or
    needing the original *and* the renamed key to match (a skip written for the renamed key
    skips nothing)."""
    def source(prefix):
        return randomize(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc"),
                                           keras.layers.Dense(2, name=f"{prefix}head")]), 28)
    tgt = _dense(keras, 3, "fc")
    report = surgery.transplant(source(""), tgt, {"skip": ["head/*"]}, strict=True)
    assert report.ok and report.unused == () and report.warnings == ()
    report = surgery.transplant(source("old_"), tgt, {"rename": [{"from": "^old_", "to": ""}],
                                                      "skip": ["head/*"]}, strict=True)
    assert report.ok and report.unused == () and report.warnings == ()


def test_numeric_check_takes_bfloat16_and_refuses_text():
    """Survivor: ``!= "bfloat16"`` -> ``== "bfloat16"`` in `as_array` (bfloat16 refused, text
    let through). Reference: the transpose written by hand."""
    import ml_dtypes
    from surgery.errors import ShapeError
    w = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
    k = R.linear_from_torch(w)
    assert k.dtype == w.dtype
    np.testing.assert_array_equal(k.astype(np.float32), w.astype(np.float32).T)
    with pytest.raises(ShapeError) as e:
        R.linear_from_torch(np.array([["a", "b"]]))
    assert str(e.value) == "linear_from_torch: expected a numeric array, got dtype <U1"


def _bn_warning(keras, renames, state, tmp_path):
    path = str(tmp_path / "bn.npz")
    np.savez(path, **state)
    model = keras.Sequential([keras.Input((4, 4, 3)),
                              keras.layers.BatchNormalization(epsilon=1e-3, name="bn")])
    report = surgery.transplant(path, model, {"rename": [
        {"from": f"^bn1\\.{k}$", "to": f"bn/{v}"} for k, v in renames]})
    return report.warnings, model


@pytest.mark.parametrize("renames, named", [
    ([("running_mean", "moving_mean")], "bn1.running_mean"),     # the mean alone is still one
    ([("running_mean", "moving_mean"), ("running_var", "moving_variance")], "bn1.running_var"),
    ([("running_var", "moving_variance"), ("running_mean", "moving_mean")], "bn1.running_var"),
])
def test_batchnorm_statistics_warning_names_the_copied_key(keras, tmp_path, renames, named):
    """PyTorch statistics renamed into a BatchNorm with Keras's epsilon: one warning for the
    layer, naming the variance when it is copied, else the mean (matching.py's choice)."""
    rng = np.random.default_rng(3)
    state = {f"bn1.{k}": rng.uniform(.1, .5, 3).astype("float32")
             for k in ("running_mean", "running_var")}
    warnings, model = _bn_warning(keras, renames, state, tmp_path)
    assert len(warnings) == 1 and warnings[0].startswith(f"bn: {named} is copied from a "
                                                         "PyTorch BatchNorm")
    np.testing.assert_array_equal(model.get_layer("bn").moving_mean.numpy(),
                                  state["bn1.running_mean"])
