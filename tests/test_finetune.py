"""surgery.finetune / `surgery finetune`: every data kind, auto loss, freezing and BatchNorm
during a real run, early stopping, resume equal to an uninterrupted run, LoRA, metrics JSON,
the plot, and each bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.train.data import load_data
from surgery.errors import InputError
from surgery.train.finetune import Interrupted, infer_loss
from tests.conftest import leftovers

rng = np.random.default_rng(0)



def small_cnn(k, classes=3):
    L = k.layers
    inp = k.Input((8, 8, 1))
    x = L.Conv2D(4, 3, name="c1")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    return k.Model(inp, L.Dense(classes, activation="softmax", name="head")(x), name="small")


def toy_images(n=64, seed=0):
    r = np.random.default_rng(seed)
    y = r.integers(0, 3, n)
    x = r.normal(size=(n, 8, 8, 1)).astype("float32") + y[:, None, None, None]
    return x, y


def values(model):
    with surgery.open_weights(model) as w:
        return {k: w.read(k) for k in w}


# ------------------------------------------------------------------ data kinds

def test_npz_csv_tfdata_and_image_folder(keras, tmp_path):
    model = small_cnn(keras)
    x, y = toy_images(20)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_data(str(tmp_path / "d.npz"), model)
    assert d.kind == "npz" and d.x.shape == (20, 8, 8, 1)
    # CSV with a string label column
    dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    (tmp_path / "t.csv").write_text("a,b,c,kind\n1,2,3,cat\n4,5,6,dog\n7,8,9,cat\n")
    d = load_data(str(tmp_path / "t.csv"), dense, label="kind")
    assert d.classes == ("cat", "dog") and d.y.tolist() == [0, 1, 0]
    # a saved tf.data dataset
    import tensorflow as tf
    tf.data.Dataset.from_tensor_slices((x, y)).save(str(tmp_path / "ds"))
    d = load_data(str(tmp_path / "ds"), model)
    assert d.kind == "tf.data" and len(d.x) == 20
    # an image folder, resized to the model's input and scaled to [0, 1]
    from PIL import Image
    for cls in ("a", "b"):
        os.makedirs(tmp_path / "img" / cls)
        for i in range(3):
            Image.fromarray((rng.uniform(size=(12, 10)) * 255).astype("uint8")).save(
                tmp_path / "img" / cls / f"{i}.png")
    d = load_data(str(tmp_path / "img"), small_cnn(keras, classes=2))  # 2 folders, 2 units
    assert d.kind == "images" and d.x.shape == (6, 8, 8, 1) and d.classes == ("a", "b")
    assert 0.0 <= d.x.min() and d.x.max() <= 1.0


def test_val_split_and_val_file(keras, tmp_path):
    model = small_cnn(keras)
    x, y = toy_images(40)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_data(str(tmp_path / "d.npz"), model, val_split=0.25, seed=1)
    assert len(d.x) == 30 and len(d.x_val) == 10
    d = load_data(str(tmp_path / "d.npz"), model, val=str(tmp_path / "d.npz"))
    assert len(d.x_val) == 40


def test_auto_loss(keras):
    L = keras.layers
    soft = small_cnn(keras)
    assert infer_loss(soft, np.array([0, 1]))[:2] == ("sparse_categorical_crossentropy",
                                                       ["accuracy"])
    assert infer_loss(soft, np.eye(3)[[0, 1]])[0] == "categorical_crossentropy"
    logits = keras.Sequential([keras.Input((2,)), L.Dense(3)])
    assert infer_loss(logits, np.array([0, 2])) == ("sparse_categorical_crossentropy",
                                                    ["accuracy"], True)
    binary = keras.Sequential([keras.Input((2,)), L.Dense(1, activation="sigmoid")])
    assert infer_loss(binary, np.array([0, 1]))[0] == "binary_crossentropy"
    reg = keras.Sequential([keras.Input((2,)), L.Dense(1)])
    assert infer_loss(reg, np.array([0.5, 2.5]))[0] == "mean_squared_error"


# ------------------------------------------------------------------ training behaviour

def test_train_only_head_keeps_the_rest_bitwise(keras):
    model = small_cnn(keras)
    before = values(model)
    result = surgery.finetune(model, toy_images(), train=["head"], epochs=2, batch_size=16,
                              lr=0.05, verbose=0)
    after = values(result.model)
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed == {"head/kernel", "head/bias"}  # frozen BN statistics stay put
    assert result.epochs[0]["trainable_params"] == 4 * 3 + 3
    assert getattr(result.model, "optimizer", None) is None  # clean, ready to save


def test_bn_train_updates_statistics(keras):
    model = small_cnn(keras)
    before = values(model)
    result = surgery.finetune(model, toy_images(), freeze=["c1", "bn"], bn="train", epochs=1,
                              batch_size=16, verbose=0)
    after = values(result.model)
    assert not np.array_equal(before["bn/moving_mean"], after["bn/moving_mean"])
    np.testing.assert_array_equal(before["c1/kernel"], after["c1/kernel"])


def test_same_seed_same_result(keras):
    runs = []
    for _ in range(2):
        model = small_cnn(keras)
        keras.utils.set_random_seed(5)
        model = small_cnn(keras)
        runs.append(values(surgery.finetune(model, toy_images(), epochs=2, batch_size=16,
                                            seed=3, verbose=0).model))
    for p in runs[0]:
        np.testing.assert_array_equal(runs[0][p], runs[1][p])


def test_early_stopping_restores_best(keras):
    model = small_cnn(keras)
    x, y = toy_images(48)
    # a huge learning rate makes the loss blow up after the first epoch
    result = surgery.finetune(model, (x, y), epochs=8, batch_size=16, lr=50.0,
                              optimizer="sgd", early_stop=2, verbose=0)
    assert result.stopped_early and len(result.epochs) < 8
    losses = [e["loss"] for e in result.epochs]
    assert result.best_epoch == int(np.nanargmin(losses)) + 1


class _StopAt:
    """A Keras callback that interrupts training like Ctrl-C at the start of an epoch."""

    def __new__(cls, epoch):
        import keras

        class Stop(keras.callbacks.Callback):
            def on_epoch_begin(self, e, logs=None):
                if e == epoch:
                    raise KeyboardInterrupt
        return Stop()


def test_resume_equals_uninterrupted(keras, tmp_path):
    data = toy_images(48)
    keras.utils.set_random_seed(1)
    ref_model = small_cnn(keras)
    init = values(ref_model)

    def fresh():
        m = small_cnn(keras)
        with surgery.open_weights(m) as w:
            for k, v in init.items():
                w.variable(k).assign(v)
        return m

    full = surgery.finetune(fresh(), data, epochs=4, batch_size=16, seed=2, verbose=0,
                            lr_mult={"head": 0.5})
    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(Interrupted) as e:
        surgery.finetune(fresh(), data, epochs=4, batch_size=16, seed=2, verbose=0,
                         lr_mult={"head": 0.5}, checkpoint=ckpt, callbacks=[_StopAt(2)])
    assert str(e.value) == (f"interrupted after epoch 2; checkpoint in {ckpt}, rerun with "
                            "--resume; nothing was written")
    resumed = surgery.finetune(fresh(), data, epochs=4, batch_size=16, seed=2, verbose=0,
                               lr_mult={"head": 0.5}, checkpoint=ckpt, resume=True)
    assert [e["epoch"] for e in resumed.epochs] == [1, 2, 3, 4]
    a, b = values(full.model), values(resumed.model)
    for p in a:
        np.testing.assert_allclose(a[p], b[p], rtol=0, atol=1e-6, err_msg=p)
    assert not os.path.exists(ckpt)  # removed after a finished run


def test_resume_from_another_model(keras, tmp_path):
    data = toy_images(32)
    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(Interrupted):
        surgery.finetune(small_cnn(keras), data, epochs=3, batch_size=16, verbose=0,
                         checkpoint=ckpt, callbacks=[_StopAt(1)])
    other = small_cnn(keras, classes=3)
    other_l = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(3, activation="softmax", name="head")])
    with pytest.raises(InputError) as e:
        surgery.finetune(other_l, data, epochs=3, checkpoint=ckpt, resume=True, verbose=0)
    assert str(e.value).startswith(f"{ckpt}: the checkpoint belongs to another model (shapes "
                                   "differ: head/kernel (4, 3) vs (64, 3); only in the "
                                   "checkpoint: c1/kernel")
    assert other is not None


def test_lora_training_and_merged_output(keras):
    L = keras.layers
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="fc"),
                              L.Dense(3, activation="softmax", name="head")])
    before = values(model)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = rng.integers(0, 3, 48)
    result = surgery.finetune(model, (x, y), lora_rank=2, lora_select=["fc"],
                              freeze=["head"], epochs=2, batch_size=16, lr=0.05, verbose=0)
    assert set(result.adapters) == {"fc/lora_kernel_a", "fc/lora_kernel_b"}
    merged = values(result.model)
    assert not any("lora" in p for p in merged)
    np.testing.assert_array_equal(merged["head/kernel"], before["head/kernel"])
    assert not np.array_equal(merged["fc/kernel"], before["fc/kernel"])
    np.testing.assert_allclose(result.model(x), model(x), atol=1e-5)


def test_mixed_precision_trains_and_returns_float32(keras):
    model = small_cnn(keras)
    result = surgery.finetune(model, toy_images(), epochs=1, batch_size=16, verbose=0,
                              mixed_precision=True)
    assert result.settings["mixed_precision"] == "mixed_bfloat16"  # no GPU here
    assert all(l.dtype_policy.name == "float32" for l in result.model.layers)
    assert np.isfinite(result.epochs[0]["loss"])
    x = toy_images(4)[0]
    assert result.model(x).dtype == "float32"


# ------------------------------------------------------------------ CLI

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def saved(keras, tmp_path):
    path = tmp_path / "m.keras"
    small_cnn(keras).save(path)
    x, y = toy_images(48)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return path, tmp_path / "d.npz"


def test_cli_finetune_outputs(saved, tmp_path):
    model, data = saved
    out = tmp_path / "out.keras"
    r = run("finetune", model, "--data", data, "-o", out, "--train", "head", "--epochs", 2,
            "--batch-size", 16, "--val-split", 0.25, "--metrics-out", tmp_path / "m.json",
            "--plot", tmp_path / "c.png", "--quiet")
    assert r.exit_code == 0, r.output
    metrics = json.load(open(tmp_path / "m.json"))
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds", "trainable_params",
            "frozen_params"} <= set(metrics["epochs"][0])
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    inv = surgery.inspect(str(out))
    assert {v.path for v in inv.variables if v.trainable} == {"head/kernel", "head/bias"}
    assert not (tmp_path / "out.keras.ckpt").exists() and leftovers(str(tmp_path)) == []


def test_cli_lora_adapters(saved, tmp_path):
    model, data = saved
    r = run("finetune", model, "--data", data, "-o", tmp_path / "o.keras", "--lora-rank", 2,
            "--lora-select", "head", "--save-adapters", tmp_path / "a.npz", "--quiet",
            "--epochs", 1)
    assert r.exit_code == 0, r.output
    assert set(np.load(tmp_path / "a.npz").files) == {"head/lora_kernel_a", "head/lora_kernel_b"}


@pytest.mark.parametrize("make,args,start", [
    (None, ["--data", "{tmp}/nope.npz"], "error: {tmp}/nope.npz: no such data file or folder"),
    ("txt", ["--data", "{tmp}/d.txt"], "error: {tmp}/d.txt: unknown kind of data; use an .npz"),
    ("badx", ["--data", "{tmp}/b.npz"], "error: {tmp}/b.npz: x samples have shape (5,) but the "
     "model takes (8, 8, 1)"),
    ("bady", ["--data", "{tmp}/c.npz"], "error: {tmp}/c.npz: y labels run 0..7 but the model's "
     "head has 3 units (classes 0..2); replace the head first (surgery head --classes N)"),
    ("csv", ["--data", "{tmp}/t.csv"], "error: {tmp}/t.csv: no label column 'label'; columns: "
     "a, b; name one with --label"),
    ("empty", ["--data", "{tmp}/imgs"], "error: {tmp}/imgs: no images found"),
    (None, ["--data", "{data}", "--train", "head", "--freeze", "head"],
     "error: --train and --freeze overlap on head/kernel, head/bias; a variable can't do both"),
    (None, ["--data", "{data}", "--strategy", "multiworker"],
     "error: --strategy multiworker needs TF_CONFIG"),
])
def test_cli_bad_inputs(saved, tmp_path, monkeypatch, make, args, start):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    model, data = saved
    if make == "txt":
        (tmp_path / "d.txt").write_text("x")
    elif make == "badx":
        np.savez(tmp_path / "b.npz", x=np.zeros((4, 5)), y=np.zeros(4, int))
    elif make == "bady":
        np.savez(tmp_path / "c.npz", x=np.zeros((4, 8, 8, 1)), y=np.array([0, 1, 7, 2]))
    elif make == "csv":
        (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    elif make == "empty":
        os.makedirs(tmp_path / "imgs")
    out = tmp_path / "out.keras"
    argv = [a.format(tmp=tmp_path, data=data) for a in args]
    r = run("finetune", model, *argv, "-o", out, "--quiet")
    assert r.exit_code == 2, r.output
    assert r.output.startswith(start.format(tmp=tmp_path)), r.output
    assert r.output.count("\n") == 1
    assert not out.exists() and leftovers(str(tmp_path)) == []


def test_cli_resume_other_model(saved, tmp_path, keras):
    """A real checkpoint of another model (interrupted run), resumed by the CLI: refused."""
    model, data = saved
    ckpt = tmp_path / "ck"
    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(name="x"),
                              keras.layers.Dense(3, activation="softmax", name="head")])
    with pytest.raises(Interrupted):
        surgery.finetune(other, toy_images(32), epochs=3, batch_size=16, verbose=0,
                         checkpoint=str(ckpt), callbacks=[_StopAt(1)])
    r = run("finetune", model, "--data", data, "-o", tmp_path / "o.keras", "--checkpoint", ckpt,
            "--resume", "--quiet")
    assert r.exit_code == 2
    assert r.output == (f"error: {ckpt}: the checkpoint belongs to another model (shapes "
                        "differ: head/kernel (64, 3) vs (4, 3); only in the model: c1/kernel, "
                        "c1/bias, bn/gamma); start without --resume or use the matching "
                        "model\n")
    assert not (tmp_path / "o.keras").exists()
