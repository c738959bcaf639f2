"""Recipes and `surgery demo`: each recipe proves what it promises."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import main
from surgery.recipes import cnn
from surgery.recipes.demo import format_table, run_demo


def _arms(summary):
    return [(key, arm, row[arm]) for key, row in summary["tasks"].items()
            for arm in ("transfer", "scratch")]


@pytest.mark.slow  # ~14 s of CPU: three Keras training compilations
def test_demo_smoke_reports_train_and_test_accuracy_of_both_arms():
    # Tiny budget (1 epoch per training run): the summary's shape, not the claim.
    summary = run_demo(None, seeds=(0,), tasks_to_run=("cnn",), max_epochs=1, patience=1)
    assert set(summary["tasks"]) == {"cnn"}
    for key, arm, a in _arms(summary):
        for what in ("test_accuracy", "train_accuracy"):
            assert 0.0 <= a[f"{what}_mean"] <= 1.0, (arm, what)
        assert a["hit_cap"]  # 1 epoch is the cap here, and the table says so
    run = summary["runs"][0]
    assert run["transfer"]["epochs"] == [1, 1] and run["scratch"]["epochs"] == [1]
    # the BatchNorm rule: layers that trained get their statistics recomputed, frozen keep
    assert run["transfer"]["bn_recomputed"] == ["block3_bn"]
    assert run["scratch"]["bn_recomputed"] == ["block1_bn", "block2_bn", "block3_bn"]
    table = format_table(summary)
    assert "train acc" in table and "20 labels per class" in table and "!" in table


def test_recompute_bn_statistics_matches_keras_batch_statistics():
    # Reference: Keras's own training-mode forward pass, which normalizes with the statistics
    # of the batch. Once the moving statistics are those of the whole training set, inference
    # on that set (one batch) must give the same outputs; a frozen BatchNorm keeps its own.
    import keras
    import numpy as np

    from surgery.recipes.base import SAMPLE_CNN
    from surgery.sample_models import tasks
    from surgery.model.rebuild import model_config, rebuild

    (x, _), _ = tasks.shape_transfer_task(20, seed=0)
    keras.utils.set_random_seed(0)
    pretrained = keras.saving.load_model(SAMPLE_CNN)
    m = rebuild(pretrained, model_config(pretrained))  # fresh: moving statistics 0 and 1
    m.get_layer("block1_bn").trainable = False
    frozen = [v.numpy() for v in m.get_layer("block1_bn").weights]
    features = keras.Model(m.inputs, m.get_layer("gap").output)  # before the softmax
    trained = np.asarray(features([x], training=True))
    assert np.abs(np.asarray(features([x], training=False)) - trained).max() > 0.1  # differ
    assert cnn.recompute_bn_statistics(m, x, batch_size=32) == ["block2_bn", "block3_bn"]
    np.testing.assert_allclose(np.asarray(features([x], training=False)), trained, atol=1e-4)
    np.testing.assert_allclose(np.asarray(m(x, training=False)),
                               np.asarray(m(x, training=True)), atol=1e-5)
    for v, before in zip(m.get_layer("block1_bn").weights, frozen):
        np.testing.assert_array_equal(v.numpy(), before)


@pytest.mark.slow
def test_demo_scratch_arm_learns_its_training_set(tmp_path):
    # The bug this guards: the scratch CNN predicted one class for every image in inference
    # mode (0.25 on its own training set) because its BatchNorm statistics were still mostly
    # their initial values. Reference: the saved model run by plain Keras on the training
    # images and labels the task generator makes, not the demo's own figures.
    import keras
    import numpy as np

    from surgery.sample_models import tasks

    summary = run_demo(str(tmp_path), seeds=(0,), tasks_to_run=("cnn",))
    (x, y), (x_test, _) = tasks.shape_transfer_task(20, seed=0)
    model = keras.saving.load_model(str(tmp_path / "cnn_scratch_seed0.keras"))
    pred = model.predict(x, verbose=0).argmax(-1)
    assert (pred == y).mean() > 0.35, (pred == y).mean()  # 4 classes: chance is 0.25
    assert len(np.unique(model.predict(x_test, verbose=0).argmax(-1))) == 4
    assert summary["runs"][0]["scratch"]["train_accuracy"] == pytest.approx((pred == y).mean())
    row = summary["tasks"]["cnn"]
    assert not row["scratch"]["hit_cap"] and not row["transfer"]["hit_cap"]
    assert row["gain_points"] >= 10, row
    assert row["transfer"]["trained_params"] < row["scratch"]["trained_params"]
    saved = json.load(open(tmp_path / "summary.json"))
    assert saved["setup"]["patience"] == 5 and set(saved["tasks"]) == {"cnn"}


@pytest.mark.slow
def test_demo_three_seeds_transfer_beats_scratch_by_ten_points(tmp_path):
    summary = run_demo(str(tmp_path), seeds=(0, 1, 2))
    for key, row in summary["tasks"].items():
        assert row["gain_points"] >= 10, (key, row)
        assert len(row["seeds"]) == 3
        assert row["scratch"]["train_accuracy_min"] > 0.8, (key, row)  # it did learn


@pytest.mark.slow
def test_demo_cli_prints_table(tmp_path):
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--seeds", "1", "--task",
                                  "lstm"])
    assert r.exit_code == 0, r.output
    assert "LSTM: motif families" in r.output and "gain" in r.output
    assert "train acc" in r.output and "labels per class" in r.output


# ------------------------------------------------------------------ each recipe's promise

from surgery.recipes import REGISTRY, cnn, lstm  # noqa: E402


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


@pytest.mark.slow  # over 10 s (DESIGN §8: the fast tier keeps short tests)
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
