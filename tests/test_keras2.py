"""Keras 2 (tf_keras) → Keras 3 (issue #16, items 1-3): configs translated, variable names and
layer names canonical, so that `surgery convert` and `surgery transplant --strict` with no
rules give Keras 3 models whose outputs equal tf_keras's. The reference is always tf_keras
running the original file; the slow tier runs the stock applications."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from surgery.errors import UnsupportedModelError
from surgery.io.keras2 import translate_config

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run(*args):
    return CliRunner().invoke(main, list(args))


# ------------------------------------------------------------------ the translation (pure)

def _layer(cls, **cfg):
    return {"class_name": cls, "config": {"name": cfg.pop("name", "x"), **cfg}}


def _model(*layers):
    return {"class_name": "Functional", "config": {"name": "m", "layers": list(layers),
                                                   "input_layers": [], "output_layers": []}}


def test_removed_arguments_are_dropped_only_at_keras3_behaviour():
    config = _model(_layer("DepthwiseConv2D", name="dw", groups=1, kernel_size=[3, 3]),
                    _layer("LSTM", name="rnn", time_major=False, units=4),
                    _layer("BatchNormalization", name="bn", axis=[3]),
                    _layer("LeakyReLU", name="act", alpha=0.2))
    out, notes = translate_config(config, "m.h5")
    layers = {lc["config"]["name"]: lc["config"] for lc in out["config"]["layers"]}
    assert "groups" not in layers["dw"] and "time_major" not in layers["rnn"]
    assert layers["bn"]["axis"] == 3
    assert layers["act"] == {"name": "act", "negative_slope": 0.2}
    assert config["config"]["layers"][0]["config"]["groups"] == 1  # input untouched
    assert notes == ["dw: dropped groups (Keras 3 removed it)",
                     "rnn: dropped time_major (Keras 3 removed it)",
                     "bn: axis [3] -> 3", "act: alpha -> negative_slope"]


def test_a_value_keras3_cannot_reproduce_is_refused():
    with pytest.raises(UnsupportedModelError) as e:
        translate_config(_model(_layer("LSTM", name="enc", time_major=True)), "m.h5")
    assert str(e.value) == (
        "m.h5: layer 'enc' (LSTM) has time_major=True, which Keras 3 removed (it always behaves "
        "as time_major=False); rebuild that layer without it in Keras 2 first, or load the "
        "model as Keras 2 (legacy=True)")
    with pytest.raises(UnsupportedModelError) as e:
        translate_config(_model(_layer("LocallyConnected2D", name="lc")), "m.h5")
    assert str(e.value).startswith("m.h5: layer 'lc' is a Keras 2 LocallyConnected2D, which "
                                   "Keras 3 can't rebuild (Keras 3 has no locally connected")


def test_slashed_layer_names_are_renamed_everywhere():
    config = _model(_layer("Conv2D", name="conv1/conv"), _layer("ReLU", name="conv1/relu"))
    config["config"]["layers"][0]["name"] = "conv1/conv"
    config["config"]["layers"][1]["name"] = "conv1/relu"
    config["config"]["layers"][1]["inbound_nodes"] = [[["conv1/conv", 0, 0, {}]]]
    config["config"]["output_layers"] = [["conv1/relu", 0, 0]]
    out, notes = translate_config(config, "m.h5")
    a, b = out["config"]["layers"]
    assert (a["name"], a["config"]["name"], b["name"]) == ("conv1_conv", "conv1_conv",
                                                          "conv1_relu")
    assert b["inbound_nodes"] == [[["conv1_conv", 0, 0, {}]]]
    assert out["config"]["output_layers"] == [["conv1_relu", 0, 0]]
    clash = _model(_layer("Conv2D", name="a/b"), _layer("Conv2D", name="a_b"))
    with pytest.raises(UnsupportedModelError, match="become 'a_b', which another layer"):
        translate_config(clash, "m.h5")


# ------------------------------------------------------------------ against tf_keras

def _tf_keras_rnn():
    import tf_keras as tk

    i = tk.Input((12, 8))
    h = tk.layers.LSTM(16, return_sequences=True)(i)
    h = tk.layers.Bidirectional(tk.layers.LSTM(8, return_sequences=True))(h)
    h = tk.layers.GRU(8, reset_after=True)(h)
    return tk.Model(i, tk.layers.Dense(10)(h))


def _keras3_rnn():
    import keras

    i = keras.Input((12, 8))
    h = keras.layers.LSTM(16, return_sequences=True)(i)
    h = keras.layers.Bidirectional(keras.layers.LSTM(8, return_sequences=True))(h)
    h = keras.layers.GRU(8, reset_after=True)(h)
    return keras.Model(i, keras.layers.Dense(10)(h))


def _randomize_statistics(model, rng):
    import tf_keras as tk

    for layer in model.layers:
        if isinstance(layer, tk.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape),
                               rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 1.5, v.shape)])


def _keras2_file(tmp_path, name):
    import tf_keras as tk

    rng = np.random.default_rng(0)
    if name == "rnn":
        model, x = _tf_keras_rnn(), rng.normal(size=(4, 12, 8)).astype("float32")
    else:
        model = getattr(tk.applications, name)(weights=None, input_shape=(64, 64, 3),
                                               classes=10)
        x = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    _randomize_statistics(model, rng)
    path = str(tmp_path / f"{name}.h5")
    model.save(path)
    return path, x, model.predict(x, verbose=0)


def _keras3_target(tmp_path, name):
    import keras

    model = _keras3_rnn() if name == "rnn" else getattr(keras.applications, name)(
        weights=None, input_shape=(64, 64, 3), classes=10)
    path = str(tmp_path / f"{name}_target.keras")
    model.save(path)
    return path


def _check(tmp_path, name):
    import keras

    path, x, expected = _keras2_file(tmp_path, name)
    converted = str(tmp_path / "converted.keras")
    r = run("convert", path, "-o", converted)
    assert r.exit_code == 0, r.output
    got = keras.saving.load_model(converted).predict(x, verbose=0)
    assert np.abs(got - expected).max() <= 1e-5
    out = str(tmp_path / "filled.keras")
    r = run("transplant", path, _keras3_target(tmp_path, name), "-o", out, "--strict")
    assert r.exit_code == 0, r.output
    assert " 0 missing, 0 mismatched, 0 unused" in r.output
    got = keras.saving.load_model(out).predict(x, verbose=0)
    assert np.abs(got - expected).max() <= 1e-5


@pytest.mark.slow  # ~15 s: convert and transplant, each verified against tf_keras
@pytest.mark.interop  # #16's acceptance: in make test-interop, with the PyTorch checks
def test_keras2_recurrent_model_converts_and_transplants_with_no_rules(tmp_path):
    _check(tmp_path, "rnn")


@pytest.mark.slow  # four stock applications: a few minutes on 2 cores
@pytest.mark.interop  # #16's acceptance: in make test-interop, with the PyTorch checks
@pytest.mark.parametrize("name", ["MobileNetV2", "ResNet50", "EfficientNetB0", "DenseNet121"])
def test_keras2_applications_convert_and_transplant_with_no_rules(tmp_path, name):
    _check(tmp_path, name)


def test_keras2_depthwise_and_slashed_names_read_as_keras3_paths(tmp_path):
    import tf_keras as tk

    import surgery

    i = tk.Input((8, 8, 3))
    h = tk.layers.DepthwiseConv2D(3, padding="same", name="block/dw")(i)
    h = tk.layers.BatchNormalization(name="block/bn")(h)
    model = tk.Model(i, tk.layers.GlobalAveragePooling2D(name="pool")(h))
    path = str(tmp_path / "k2.h5")
    model.save(path)
    with surgery.open_weights(path) as src:
        paths = [v.path for v in src.variables()]
    assert paths == ["block_dw/kernel", "block_dw/bias", "block_bn/gamma", "block_bn/beta",
                     "block_bn/moving_mean", "block_bn/moving_variance"]


def _keras2_leaky(tmp_path):
    import tf_keras as tk

    i = tk.Input((6,))
    h = tk.layers.Dense(8, name="fc")(i)
    h = tk.layers.LeakyReLU(alpha=0.3, name="act")(h)
    model = tk.Model(i, tk.layers.Dense(3, name="out")(h))
    path = str(tmp_path / "leaky.h5")
    model.save(path)
    import keras

    i = keras.Input((6,))
    h = keras.layers.Dense(8, name="fc")(i)
    h = keras.layers.LeakyReLU(negative_slope=0.3, name="act")(h)
    target = str(tmp_path / "target.keras")
    keras.Model(i, keras.layers.Dense(3, name="out")(h)).save(target)
    return path, target


def test_verify_runs_a_keras2_source_in_tf_keras(tmp_path, monkeypatch):
    """--verify must compare with the framework that wrote SOURCE: with a translation that
    loses LeakyReLU's slope, a Keras 3 rebuild of SOURCE would agree with the result; tf_keras
    does not."""
    from surgery.io import keras2

    source, target = _keras2_leaky(tmp_path)
    r = run("transplant", source, target, "-o", str(tmp_path / "ok.keras"), "--verify")
    assert r.exit_code == 0 and "verify: same outputs" in r.output, r.output
    # break the translation: alpha dropped, so a Keras 3 rebuild of SOURCE has the default
    # slope 0.2 and would agree with a target of slope 0.2; tf_keras (slope 0.3) does not
    monkeypatch.setitem(keras2.KERAS2_RULES, "LeakyReLU", keras2.Keras2Rule(drop={"alpha": 0.3}))
    import keras

    i = keras.Input((6,))
    h = keras.layers.Dense(8, name="fc")(i)
    h = keras.layers.LeakyReLU(negative_slope=0.2, name="act")(h)
    wrong = str(tmp_path / "wrong.keras")
    keras.Model(i, keras.layers.Dense(3, name="out")(h)).save(wrong)
    r = run("transplant", source, wrong, "-o", str(tmp_path / "bad.keras"), "--verify")
    assert r.exit_code == 1, r.output
    assert not os.path.exists(tmp_path / "bad.keras")


def test_verify_with_a_weights_only_source_says_what_it_needs(tmp_path):
    x = str(tmp_path / "w.npz")
    np.savez(x, **{"fc/kernel": np.zeros((6, 8), np.float32)})
    _, target = _keras2_leaky(tmp_path)
    r = run("transplant", x, target, "-o", str(tmp_path / "o.keras"), "--verify")
    assert r.exit_code == 2
    assert r.output == (f"error: {x}: --verify runs SOURCE as a model, and this npz file holds "
                        "weights only; give a .keras or Keras 2 .h5 model as SOURCE, or drop "
                        "--verify and check the result with your own data (surgery evaluate)\n")


def test_tf_keras_keras_archive_reads_by_keras_group_order(tmp_path):
    """tf_keras writes .keras archives whose groups carry no layer name: they are named by
    class in layer order, as Keras itself reads them."""
    import keras
    import tf_keras as tk

    import surgery

    rng = np.random.default_rng(1)
    i = tk.Input((8, 8, 3))
    h = tk.layers.Conv2D(4, 3, name="stem")(i)
    h = tk.layers.Conv2D(4, 3, name="second")(h)
    h = tk.layers.BatchNormalization(name="bn")(h)
    h = tk.layers.GlobalAveragePooling2D(name="pool")(h)
    model = tk.Model(i, tk.layers.Dense(3, name="head")(h))
    _randomize_statistics(model, rng)
    path = str(tmp_path / "tfk.keras")
    model.save(path)
    with surgery.open_weights(path) as src:
        got = {v.path: src.read(v.path) for v in src.variables()}
    expected = {f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}": w.numpy()
                for layer in model.layers for w in layer.weights}
    assert list(got) == list(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    i = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, name="stem")(i)
    h = keras.layers.Conv2D(4, 3, name="second")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    target = str(tmp_path / "k3.keras")
    keras.Model(i, keras.layers.Dense(3, name="head")(h)).save(target)
    out = str(tmp_path / "out.keras")
    r = run("transplant", path, target, "-o", out, "--strict")
    assert r.exit_code == 0, r.output
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(keras.saving.load_model(out).predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-6)
