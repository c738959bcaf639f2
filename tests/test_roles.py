"""Variable roles: what a named initializer reaches (`reinitialize`), what growing adapters put
in new units (`pad`, `fit`), and options that can't be what they say (`reorder_flatten_rows`'
layouts under the rule's own keys, non-finite numbers).

References: Keras's own initializers and hand-computed arrays, the source model run on the blob
task's data, and plain Keras training.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.sample_models.tasks import make_blobs, make_shapes
from surgery import edit
from surgery import reshape as R
from surgery.transfer.adapters import get_adapter, run_adapter
from surgery.errors import OptionError
from surgery.transfer.rules import RulesError



def _conv_bn(k):
    L = k.layers
    return k.Sequential([k.Input((8, 8, 3)), L.Conv2D(4, 3, name="conv"),
                         L.BatchNormalization(name="bn"), L.ReLU(name="relu"),
                         L.GlobalAveragePooling2D(name="gap"), L.Dense(3, name="head")],
                        name="conv_bn")


def _trained_bn(model):
    rng = np.random.default_rng(0)
    g, b, m, v = model.get_layer("bn").get_weights()
    model.get_layer("bn").set_weights([rng.uniform(0.5, 2, 4), rng.normal(size=4),
                                       rng.normal(size=4), rng.uniform(2, 3, 4)])
    model.get_layer("conv").set_weights([w + 1.0 for w in model.get_layer("conv").get_weights()])


# ------------------------------------------------------------------ reinitialize by role

def test_named_initializer_reaches_kernels_and_roles_get_fresh_layer_values(keras):
    model = _conv_bn(keras)
    _trained_bn(model)
    report = surgery.reinitialize(model, "conv", "bn", initializer="he_normal", seed=7)
    # Hand-computed: HeNormal seeded as reinitialize documents (seed + position), zero bias,
    # BatchNorm back to a fresh layer's values.
    expected_kernel = keras.initializers.HeNormal(seed=7)((3, 3, 3, 4))
    np.testing.assert_array_equal(model.get_layer("conv").kernel.numpy(), expected_kernel)
    np.testing.assert_array_equal(model.get_layer("conv").bias.numpy(), np.zeros(4))
    gamma, beta, mean, var = (w.numpy() for w in model.get_layer("bn").weights)
    np.testing.assert_array_equal(gamma, np.ones(4))
    np.testing.assert_array_equal(beta, np.zeros(4))
    np.testing.assert_array_equal(mean, np.zeros(4))
    np.testing.assert_array_equal(var, np.ones(4))
    assert dict(report.variables) == {
        "conv/kernel": "HeNormal",
        "conv/bias": "Zeros (bias role; select conv/bias by path for HeNormal)",
        "bn/gamma": "Ones (gamma role; select bn/gamma by path for HeNormal)",
        "bn/beta": "Zeros (beta role; select bn/beta by path for HeNormal)",
        "bn/moving_mean": "Zeros (moving_mean role; select bn/moving_mean by path for "
                          "HeNormal)",
        "bn/moving_variance": "Ones (moving_variance role; select bn/moving_variance by path "
                              "for HeNormal)"}
    x = make_shapes(8, seed=1, size=8)[0]
    assert np.isfinite(np.asarray(model(x, training=False))).all()


def test_variables_selected_by_their_own_path_get_the_named_initializer(keras):
    model = _conv_bn(keras)
    report = surgery.reinitialize(model, "bn/gamma", "*/moving_variance",
                                  initializer="random_uniform", seed=3)
    # select() keeps model order: gamma is position 0, moving_variance position 1.
    np.testing.assert_array_equal(model.get_layer("bn").gamma.numpy(),
                                  keras.initializers.RandomUniform(seed=3)((4,)))
    np.testing.assert_array_equal(model.get_layer("bn").moving_variance.numpy(),
                                  keras.initializers.RandomUniform(seed=4)((4,)))
    assert dict(report.variables) == {"bn/gamma": "RandomUniform",
                                      "bn/moving_variance": "RandomUniform"}
    # type: reaches the layer, not the variable by name: roles apply.
    surgery.reinitialize(model, "type:BatchNormalization", initializer="random_uniform")
    np.testing.assert_array_equal(model.get_layer("bn").moving_variance.numpy(), np.ones(4))


def test_named_initializer_on_an_lstm_keeps_its_unit_forget_bias(keras):
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4, name="enc")])
    report = surgery.reinitialize(model, "enc", initializer="glorot_normal", seed=0)
    cell = model.get_layer("enc").cell
    np.testing.assert_array_equal(cell.kernel.numpy(),
                                  keras.initializers.GlorotNormal(seed=0)((3, 16)))
    np.testing.assert_array_equal(cell.recurrent_kernel.numpy(),
                                  keras.initializers.GlorotNormal(seed=1)((4, 16)))
    np.testing.assert_array_equal(cell.bias.numpy(), np.r_[np.zeros(4), np.ones(4), np.zeros(8)])
    assert dict(report.variables)["enc/bias"] == ("Zeros + unit forget bias (bias role; select "
                                                  "enc/bias by path for GlorotNormal)")


def test_cli_reinit_block_he_normal_keeps_the_sample_cnn_finite(samples, tmp_path):
    out = tmp_path / "re.keras"
    r = CliRunner().invoke(main, ["reinit", samples["cnn"], "-o", str(out), "--select",
                                  "block3_*", "--initializer", "he_normal", "--seed", "0",
                                  "--json"])
    assert r.exit_code == 0, r.output
    got = {v["path"]: v["initializer"] for v in json.loads(r.output)["variables"]}
    assert got["block3_conv/kernel"] == "HeNormal"
    assert got["block3_bn/moving_variance"].startswith("Ones (moving_variance role")
    with surgery.open_weights(str(out)) as w:
        np.testing.assert_array_equal(w["block3_bn/moving_variance"], np.ones(64))
        np.testing.assert_array_equal(w["block3_bn/gamma"], np.ones(64))
    x = make_shapes(32, seed=5)[0]
    y = np.asarray(surgery.load_model(str(out))(x, training=False))
    assert np.isfinite(y).all() and np.ptp(y, axis=0).max() > 1e-3  # not one output for all


# ------------------------------------------------------------------ growing adapters

def _mlp(k, hidden):
    return k.Sequential([k.Input((16,)), k.layers.Dense(hidden, activation="relu", name="fc"),
                         k.layers.Dense(8, name="head")], name=f"mlp{hidden}")


def test_pad_gives_new_relu_units_target_values_and_keeps_the_function(keras):
    import tensorflow as tf

    src = _mlp(keras, 5)
    rng = np.random.default_rng(0)
    for layer in src.layers:
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype("float32")
                           for w in layer.get_weights()])
    tgt = _mlp(keras, 9)
    fresh = {  # the target's own initial values
"fc/kernel": tgt.get_layer("fc").kernel.numpy().copy(),
             "fc/bias": tgt.get_layer("fc").bias.numpy().copy()}
    report = surgery.transplant(src, tgt, {"adapter": [
        {"target": "fc/*", "name": "pad"}, {"target": "head/kernel", "name": "pad"}]},
        strict=True)
    assert {e.path: e.note for e in report.adapted} == {
        "fc/kernel": "padded (16, 5) -> (16, 9): columns 5..8 from the target's initialized "
                     "values",
        "fc/bias": "padded (5,) -> (9,): entries 5..8 from the target's initialized values",
        "head/kernel": "padded (5, 8) -> (9, 8): rows 5..8 zeros (input)"}
    k_new, b_new = (w.numpy() for w in tgt.get_layer("fc").weights)
    k_src, b_src = (w.numpy() for w in src.get_layer("fc").weights)
    np.testing.assert_array_equal(k_new[:, :5], k_src)       # kept part copied exactly
    np.testing.assert_array_equal(b_new[:5], b_src)
    np.testing.assert_array_equal(k_new[:, 5:], fresh["fc/kernel"][:, 5:])
    np.testing.assert_array_equal(b_new[5:], fresh["fc/bias"][5:])
    head = tgt.get_layer("head").kernel.numpy()
    np.testing.assert_array_equal(head[:5], src.get_layer("head").kernel.numpy())
    np.testing.assert_array_equal(head[5:], np.zeros((4, 8)))
    x, y = make_blobs(64, seed=2)
    np.testing.assert_allclose(np.asarray(tgt(x)), np.asarray(src(x)), atol=1e-5, rtol=0)
    # The new units are alive: on the task's data they fire, and the loss reaches them.
    hidden = np.asarray(keras.Model(tgt.inputs[0], tgt.get_layer("fc").output)(x))
    assert (hidden[:, 5:] > 0).any(axis=0).all()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        value = loss(y, tgt(x, training=True))
    grad = tape.gradient(value, tgt.get_layer("head").kernel)
    assert np.abs(grad.numpy()[5:]).max() > 1e-4
    # Plain Keras training moves the new units' incoming weights (zero columns would stay).
    tgt.compile(keras.optimizers.SGD(0.5), loss)
    tgt.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    assert np.abs(tgt.get_layer("fc").kernel.numpy()[:, 5:] - fresh["fc/kernel"][:, 5:]).max() \
        > 1e-3


def test_growing_adapters_zero_only_new_input_rows_of_existing_units():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 3, 2, 4)).astype("float32")
    initial = rng.normal(size=(3, 3, 5, 6)).astype("float32")
    out = run_adapter(get_adapter("pad"), {"": a}, {"": (3, 3, 5, 6)}, {}, "c/kernel",
                      initial=lambda: initial)
    expected = initial.copy()               # hand-built: new output channels from the target,
    expected[:, :, 2:, :4] = 0.0            # new input rows zero for the existing ones,
    expected[:, :, :2, :4] = a              # the old kernel exactly
    np.testing.assert_array_equal(out.arrays[""], expected)
    assert out.note == ("padded (3, 3, 2, 4) -> (3, 3, 5, 6): axis 2 2..4 zeros (input, for the "
                        "existing units); axis 3 4..5 from the target's initialized values")
    # Without the target's values (a direct call), each role's Keras default: gamma ones,
    # moving mean zeros, kernels glorot_uniform within its limit.
    gamma = run_adapter(get_adapter("fit"), {"": np.full(3, 2.0, "float32")}, {"": (5,)}, {},
                        "bn/gamma").arrays[""]
    np.testing.assert_array_equal(gamma, [2, 2, 2, 1, 1])
    mean = run_adapter(get_adapter("pad"), {"": np.full(3, 2.0, "float32")}, {"": (5,)}, {},
                       "bn/moving_mean").arrays[""]
    np.testing.assert_array_equal(mean, [2, 2, 2, 0, 0])
    k = run_adapter(get_adapter("pad"), {"": np.ones((4, 2), "float32")}, {"": (4, 6)},
                    {"seed": 0}, "fc/kernel").arrays[""]
    limit = np.sqrt(6.0 / (4 + 6))
    assert np.all(k[:, :2] == 1) and np.all(np.abs(k[:, 2:]) <= limit) and np.all(k[:, 2:] != 0)
    # An explicit initializer names where new units come from; zeros stay in the input rows.
    z = run_adapter(get_adapter("pad"), {"": np.ones((2, 2), "float32")}, {"": (3, 3)},
                    {"initializer": "ones"}, "fc/kernel", initial=lambda: initial)
    np.testing.assert_array_equal(z.arrays[""], [[1, 1, 1], [1, 1, 1], [0, 0, 1]])


# ------------------------------------------------------------------ reorder_flatten_rows options

def _npz(folder, **arrays) -> str:
    path = str(folder / "w.npz")
    np.savez(path, **arrays)
    return path


def test_reorder_flatten_rows_layout_options(keras, tmp_path):
    rng = np.random.default_rng(3)
    h, w, c, units = 2, 3, 4, 5
    torch_rows = rng.normal(size=(c * h * w, units)).astype("float32")  # rows ordered c, h, w
    src = _npz(tmp_path, **{"fc/kernel": torch_rows})
    tgt = keras.Sequential([keras.Input((h * w * c,)), keras.layers.Dense(units, name="fc",
                                                                          use_bias=False)])
    report = surgery.transplant(src, tgt, {"adapter": [
        {"target": "fc/kernel", "name": "reorder_flatten_rows", "feature_shape": [h, w, c],
         "from_layout": "channels_first", "to_layout": "channels_last"}]}, strict=True)
    by_hand = torch_rows.reshape(c, h, w, units).transpose(1, 2, 0, 3).reshape(-1, units)
    np.testing.assert_array_equal(tgt.get_layer("fc").kernel.numpy(), by_hand)
    assert report.adapted[0].note == "Flatten rows channels_first -> channels_last"
    for key, value, option in (("source", "channels_last", "from_layout"),
                               ("target", "channels_first", "to_layout")):
        rule = {"target": "fc/kernel", "name": "reorder_flatten_rows", "feature_shape": [2, 3, 4],
                key: value}
        with pytest.raises(RulesError) as e:
            surgery.transplant(src, tgt, {"adapter": [rule]})
        assert str(e.value) == (
            f"rules: adapter 'reorder_flatten_rows': {key} = '{value}' names the rule's {key} "
            f"tensor, not a layout; write {option} = '{value}' (its layout options are "
            "from_layout, to_layout)")
    with pytest.raises(OptionError) as e:
        surgery.transplant(src, tgt, {"adapter": [
            {"target": "fc/kernel", "name": "reorder_flatten_rows", "feature_shape": [2, 3, 4],
             "to_layout": "NHWC"}]})
    assert str(e.value) == ("fc/kernel: adapter 'reorder_flatten_rows' can't map source (24, 5) "
                            "onto target (24, 5): to_layout must be 'channels_first' or "
                            "'channels_last', got 'NHWC'")


# ------------------------------------------------------------------ non-finite options

def test_non_finite_options_are_refused(keras, tmp_path):
    model = _mlp(keras, 5)
    for noise in (float("nan"), float("inf"), -0.1):
        with pytest.raises(OptionError) as e:
            edit.widen(model, "fc", 7, noise=noise)
        assert str(e.value) == (f"widen 'fc': noise must be a finite number >= 0, got {noise!r}; "
                                "pass e.g. 0.01 (or 0 for an exact copy)")
    k1, k2 = np.ones((3, 2), "float32"), np.ones((2, 4), "float32")
    with pytest.raises(OptionError, match=r"^net2wider: noise must be a finite number >= 0, "
                                          r"got inf;"):
        R.net2wider(k1, None, k2, 3, noise=float("inf"))
    with pytest.raises(OptionError) as e:
        surgery.transplant(_npz(tmp_path, **{"enc/kernel": np.ones((7, 16), "float32"),
                                             "enc/bias": np.ones(16, "float32")}),
                           keras.Sequential([keras.Input((5, 3)),
                                             keras.layers.LSTM(4, name="enc")]),
                           {"adapter": [{"target": "enc", "name": "lstm_from_tf1",
                                         "forget_bias": float("nan"),
                                         "sources": {"kernel": "enc/kernel",
                                                     "bias": "enc/bias"}}]})
    assert str(e.value) == ("enc: adapter 'lstm_from_tf1' option forget_bias = nan is not a "
                            "finite number; give a finite value")
    src = tmp_path / "m.keras"
    surgery.save_model(model, str(src))
    out = tmp_path / "o.keras"
    r = CliRunner().invoke(main, ["edit", "widen", str(src), "-o", str(out), "--layer", "fc",
                                  "--units", "7", "--noise", "nan"])
    assert r.exit_code == 2
    assert r.output == ("error: widen 'fc': noise must be a finite number >= 0, got nan; pass "
                        "e.g. 0.01 (or 0 for an exact copy)\n")
    assert not out.exists()
