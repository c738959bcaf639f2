"""inspect and diff on every sample model, against Keras's own counts and values."""

from __future__ import annotations

import json

import numpy as np
import pytest

import surgery


@pytest.mark.parametrize("name", ["cnn", "lstm", "keras2_mlp"])
def test_inspect_totals_match_keras(samples, name):
    inv = surgery.inspect(samples[name])
    model = surgery.load_model(samples[name])
    assert inv.total_params == model.count_params()
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert inv.trainable_params == trainable
    assert inv.non_trainable_params == inv.total_params - trainable
    assert [v.path for v in inv.variables] == list(surgery.open_weights(model))
    json.dumps(inv.to_dict())
    text = str(inv)
    assert f"total params: {inv.total_params:,}" in text


def test_inspect_cnn_contents(samples):
    inv = surgery.inspect(samples["cnn"])
    assert inv.format == "keras"
    layers = {l.path: l.class_name for l in inv.layers}
    assert layers["block1_conv"] == "Conv2D" and layers["head"] == "Dense"
    head = {v.path: v for v in inv.variables}["head/kernel"]
    assert head.shape == (64, 8) and head.dtype == "float32" and head.trainable is True
    assert inv.layer_params("head") == 64 * 8 + 8


def test_inspect_lstm_and_hub(samples):
    inv = surgery.inspect(samples["lstm"])
    assert [v.path for v in inv.variables] == [
        "embed/embeddings", "encoder/kernel", "encoder/recurrent_kernel", "encoder/bias",
        "head/kernel", "head/bias"]
    hub = surgery.inspect(samples["hub_module"])
    assert hub.format == "savedmodel" and hub.total_params == 16 * 32 + 32 + 32 * 16 + 16


@pytest.mark.parametrize("name", ["cnn", "lstm", "keras2_mlp", "hub_module"])
def test_diff_of_a_sample_with_itself_is_identical(samples, name):
    d = surgery.diff(samples[name], samples[name])
    assert d.identical and d.counts()["unchanged"] == len(d.variables) > 0


def test_diff_statuses(tmp_path):
    import keras
    def build(units, extra=False):
        layers = [keras.Input((4,)), keras.layers.Dense(units, name="a"),
                  keras.layers.Dense(2, name="b")]
        if extra:
            layers.append(keras.layers.Dense(1, name="c"))
        return keras.Sequential(layers)
    m1 = build(3)
    m2 = build(3, extra=True)
    m2.get_layer("a").set_weights(m1.get_layer("a").get_weights())
    kb, bb = m1.get_layer("b").get_weights()
    m2.get_layer("b").set_weights([kb + 0.5, bb])
    d = surgery.diff(m1, m2)
    status = {v.path: v.status for v in d.variables}
    assert status == {"a/kernel": "unchanged", "a/bias": "unchanged", "b/kernel": "changed",
                      "b/bias": "unchanged", "c/kernel": "only_in_b", "c/bias": "only_in_b"}
    changed = d.of("changed")[0]
    assert changed.max_abs_diff == pytest.approx(0.5)
    assert not d.identical
    m3 = build(5)
    d2 = surgery.diff(m1, m3)
    assert {v.path: v.status for v in d2.variables}["a/kernel"] == "reshaped"
    assert "reshaped  (4, 3) vs (4, 5)" in str(d2)
    assert json.loads(json.dumps(d2.to_dict()))["counts"]["reshaped"] == 3


def test_diff_nan_in_same_place_is_same():
    from surgery.io.diff import _compare
    a = np.array([1.0, np.nan], np.float32)
    assert _compare(a, a.copy()) is None
    assert _compare(a, np.array([1.0, 2.0], np.float32)) == np.inf
