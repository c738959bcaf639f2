"""Recipes and `surgery demo`: each recipe proves what it promises."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import main
from recipes.demo import run_demo


def test_demo_one_seed_transfer_beats_scratch(tmp_path):
    summary = run_demo(str(tmp_path), seeds=(0,))
    for key, row in summary["tasks"].items():
        assert row["gain_points"] >= 10, (key, row)
        assert row["transfer"]["trained_params"] < row["scratch"]["trained_params"] or \
            key == "lstm"
    saved = json.load(open(tmp_path / "summary.json"))
    assert set(saved["tasks"]) == {"cnn", "lstm"}
    assert (tmp_path / "cnn_transfer_seed0.keras").exists()


@pytest.mark.slow
def test_demo_three_seeds_transfer_beats_scratch_by_ten_points(tmp_path):
    summary = run_demo(str(tmp_path), seeds=(0, 1, 2))
    for key, row in summary["tasks"].items():
        assert row["gain_points"] >= 10, (key, row)
        assert len(row["seeds"]) == 3


@pytest.mark.slow
def test_demo_cli_prints_table(tmp_path):
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--seeds", "1", "--task",
                                  "lstm"])
    assert r.exit_code == 0, r.output
    assert "LSTM: motif families" in r.output and "gain" in r.output


# ------------------------------------------------------------------ each recipe's promise

from recipes import REGISTRY, cnn, lstm  # noqa: E402


@pytest.mark.parametrize("kwargs", [
    {"channels": 1, "mode": "sum"},
    {"channels": 6, "mode": "repeat"},
    {"channels": 3, "mode": "select", "indices": [2, 1, 0]},
])
def test_cnn_channels_preserve_function(kwargs):
    r = cnn.input_channels(**kwargs)
    assert r.metrics["max_output_diff"] < 1e-5
    assert r.model.inputs[0].shape[-1] == kwargs["channels"]


def test_cnn_resolution_and_fully_convolutional(keras_mod):
    r = cnn.resolution(size=64)
    assert r.metrics["max_output_diff_at_old_size"] < 1e-6
    assert r.metrics["output_shape_at_new_size"] == [8]
    L = keras_mod.layers
    m = keras_mod.Sequential([keras_mod.Input((8, 8, 3)), L.Conv2D(4, 3, name="c"),
                              L.Flatten(), L.Dense(5, activation="relu", name="d1"),
                              L.Dense(3, activation="softmax", name="d2")])
    path = "/tmp/surgery_flat_test.keras"
    m.save(path)
    r = cnn.resolution(path, size=12)
    assert r.metrics["max_output_diff_at_old_size"] < 1e-6
    assert r.metrics["output_shape_at_new_size"] == [5, 5, 3]


@pytest.fixture(scope="module")
def keras_mod():
    import keras
    return keras


def test_cnn_inflate_static_clip():
    r = cnn.inflate_3d(frames=5)
    assert r.metrics["max_output_diff_static_clip"] < 1e-5
    assert r.model.inputs[0].shape[1:] == (5, 32, 32, 3)


def test_cnn_grow_same_function_then_trains():
    r = cnn.grow(units=80, epochs=1)
    assert r.metrics["max_output_diff_after_growth"] < 1e-5
    assert r.metrics["params_after"] > r.metrics["params_before"]


def test_lstm_vocab_bidirectional_grow_torch(tmp_path):
    v = lstm.vocabulary()
    assert v.metrics["max_output_diff_carried_tokens"] == 0.0
    assert v.metrics["note"] == "vocabulary: 60 tokens carried, 8 new, 4 dropped"
    b = lstm.bidirectional()
    assert b.metrics["max_output_diff"] < 1e-6
    g = lstm.grow(stack=False)
    assert g.metrics["max_output_diff"] < 1e-6
    s = lstm.grow(stack=True)
    assert s.metrics["top_layer_max_deviation_from_identity"] < 0.5  # close, not exact
    t = lstm.pytorch_roundtrip(folder=str(tmp_path))
    assert t.metrics["imported_ok"] and t.metrics["max_output_diff"] == 0.0
    assert "lstm.weight_ih_l0" in t.metrics["torch_keys"]


def test_cnn_new_task_and_lstm_encoder_beat_chance_quickly():
    r = cnn.new_task(seed=0, head_epochs=3, tune_epochs=1)
    assert r.metrics["accuracy"] > 0.4  # 4 classes: chance is 0.25
    r = lstm.encoder_reuse(seed=0, head_epochs=3, tune_epochs=1)
    assert r.metrics["accuracy"] > 0.5  # 3 classes


def test_recipe_cli(tmp_path):
    r = CliRunner().invoke(main, ["recipe", "list"])
    assert r.exit_code == 0 and all(name in r.output for name in REGISTRY)
    out = tmp_path / "bi.keras"
    r = CliRunner().invoke(main, ["recipe", "run", "lstm-bidirectional", "-o", str(out)])
    assert r.exit_code == 0 and out.exists()
    r = CliRunner().invoke(main, ["recipe", "run", "cnn-grow", "--set", "foo=1"])
    assert r.exit_code == 2 and "recipe cnn-grow has no option 'foo'" in r.output
