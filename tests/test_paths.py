"""The canonical path scheme (DESIGN.md §4.1): one path per variable, the same for a live
Keras 3 model, a live tf_keras model and the saved file, with the same values."""

from __future__ import annotations

import numpy as np
import pytest

import surgery
from tests import models



@pytest.fixture(scope="module")
def tf_keras():
    import tf_keras
    return tf_keras


def _same_values(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a.shape(key) == b.shape(key), key
        np.testing.assert_array_equal(a.read(key), b.read(key), err_msg=key)
        assert a.info(key).trainable == b.info(key).trainable, key
        assert a.info(key).layer == b.info(key).layer, key


@pytest.mark.parametrize("build,expected", [
    (models.kitchen_sink, models.KITCHEN_SINK_PATHS),
    (models.deep_nest, models.DEEP_NEST_PATHS),
])
def test_keras3_live_and_file_paths_agree(keras, tmp_path, build, expected):
    model = models.randomize(build(keras))
    live = surgery.open_weights(model)
    assert list(live) == expected
    path = tmp_path / "m.keras"
    model.save(path)
    with surgery.open_weights(str(path)) as saved:
        _same_values(live, saved)


@pytest.mark.parametrize("build,expected", [
    (models.kitchen_sink, models.KITCHEN_SINK_PATHS),
    (models.deep_nest, models.DEEP_NEST_PATHS),
])
def test_tf_keras_live_and_legacy_h5_paths_agree(tf_keras, tmp_path, build, expected):
    model = models.randomize(build(tf_keras))
    live = surgery.open_weights(model)
    assert sorted(live) == sorted(expected)
    path = tmp_path / "m.h5"
    model.save(path)
    with surgery.open_weights(str(path)) as saved:
        assert sorted(saved) == sorted(live)
        for key in live:
            np.testing.assert_array_equal(live.read(key), saved.read(key), err_msg=key)
            assert live.shape(key) == saved.shape(key)


def test_keras3_and_tf_keras_models_share_paths(keras, tf_keras):
    a = surgery.open_weights(models.kitchen_sink(keras))
    b = surgery.open_weights(models.kitchen_sink(tf_keras))
    assert sorted(a) == sorted(b)
    for key in a:
        assert a.shape(key) == b.shape(key), key


def test_two_builds_in_one_session_share_paths_despite_auto_names(keras):
    def build():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                 keras.layers.Dense(2)])
    a, b = build(), build()
    assert [l.name for l in a.layers] != [l.name for l in b.layers]
    pa, pb = list(surgery.open_weights(a)), list(surgery.open_weights(b))
    # Auto names differ between the two models (dense_3 vs dense_5); the scheme uses the names
    # the config shows, so each model's paths match its own layer names one to one.
    assert pa == [f"{l.name}/{v}" for l in a.layers for v in ("kernel", "bias")]
    assert pb == [f"{l.name}/{v}" for l in b.layers for v in ("kernel", "bias")]


def test_shared_layer_appears_once(keras):
    model = models.kitchen_sink(keras)
    paths = list(surgery.open_weights(model))
    assert paths.count("shared/kernel") == 1


def test_weights_h5_named_through_architecture(keras, tmp_path):
    model = models.randomize(models.kitchen_sink(keras))
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    with surgery.open_weights(str(tmp_path / "m.weights.h5"),
                              architecture=str(tmp_path / "m.keras")) as w, \
            surgery.open_weights(model) as live:
        _same_values(live, w)
    with surgery.open_weights(str(tmp_path / "m.weights.h5")) as bare, \
            surgery.open_weights(model) as live:
        # Without an architecture, layers are named from the file and their classes from
        # Keras's group names: the live model's paths, shapes and trainable flags (BatchNorm's
        # moving statistics not trainable, a Bidirectional's recurrent variables named).
        assert {v.path: (v.shape, v.trainable) for v in bare.variables()} == \
            {v.path: (v.shape, v.trainable) for v in live.variables()}
        assert [k for k in bare if k.startswith("bn/")] == \
            ["bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance"]


def test_config_json_architecture(keras, tmp_path):
    import json
    import zipfile
    model = models.randomize(models.deep_nest(keras))
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        (tmp_path / "config.json").write_bytes(z.read("config.json"))
    with surgery.open_weights(str(tmp_path / "m.weights.h5"),
                              architecture=str(tmp_path / "config.json")) as w:
        assert list(w) == models.DEEP_NEST_PATHS
        json.dumps(surgery.inspect(w).to_dict())


def test_custom_layer_sublayers_and_mha(keras, tmp_path):
    @keras.saving.register_keras_serializable("surgery_tests")
    class Block(keras.layers.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.inner = keras.layers.Dense(3, name="inner")
            self.gate = keras.layers.Dense(3, name="gate")

        def call(self, x):
            return self.inner(x) * self.gate(x)

    inp = keras.Input((5, 4))
    x = Block(name="custom")(inp)
    x = keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x)
    model = models.randomize(keras.Model(inp, x))
    live = surgery.open_weights(model)
    assert "custom/inner/kernel" in live and "custom/gate/bias" in live
    assert "mha/query/kernel" in live and "mha/attention_output/bias" in live
    model.save(tmp_path / "c.keras")
    with surgery.open_weights(str(tmp_path / "c.keras")) as saved:
        # A file does not record the order a custom layer created its sublayers in: the
        # paths and values agree, the order may not.
        assert sorted(saved) == sorted(live)
        for key in live:
            np.testing.assert_array_equal(live.read(key), saved.read(key), err_msg=key)


def test_frozen_layer_reported_untrainable(keras, tmp_path):
    model = models.kitchen_sink(keras)
    model.get_layer("trunk").trainable = False
    live = surgery.open_weights(model)
    assert live.info("trunk/feat/kernel").trainable is False
    assert live.info("head/kernel").trainable is True
    model.save(tmp_path / "f.keras")
    with surgery.open_weights(str(tmp_path / "f.keras")) as saved:
        assert saved.info("trunk/feat/kernel").trainable is False
        assert saved.info("bn/moving_mean").trainable is False
        assert saved.info("head/kernel").trainable is True
