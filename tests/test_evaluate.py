"""`surgery evaluate`, `surgery predict` and stored class names (issue #18 items 1 and 2).

References: plain Keras (`compile` + `evaluate` on a copy of the model, `predict`), numpy
(`np.add.at` for the confusion matrix), the sample CNN on its own task's held-out shapes, a
fresh `keras.saving.load_model` for files written with class names, and hand-computed outputs
of models whose weights are set by hand for the exact CLI lines.
"""

from __future__ import annotations

import csv
import json
import os
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.sample_models import tasks
from surgery.io.classnames import class_names
from surgery.train.evaluate import write_predictions
from tests.conftest import leftovers

SHAPES = tuple(tasks.PRETRAIN_SHAPES)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def plain_keras_evaluate(keras, model, x, y, loss, metrics, batch_size=32):
    """Keras's own `evaluate` on a copy (the model under test is never compiled)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.compile(loss=loss, metrics=metrics)
    return copy.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)


def numpy_confusion(true, guess, k):
    matrix = np.zeros((k, k), np.int64)
    np.add.at(matrix, (true, guess), 1)
    return matrix


@pytest.fixture(scope="module")
def shapes_test():
    """The sample CNN's held-out task data (the manifest's accuracy is on 1000 of these)."""
    return tasks.make_shapes(160, seed=2)


@pytest.fixture(scope="module")
def cnn(samples):
    return surgery.load_model(samples["cnn"])


def blob_model(keras, width, activation, seed=0):
    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential([keras.Input((16,)), L.Dense(12, activation="relu", name="fc"),
                             L.Dense(width, activation=activation, name="head")], name="blobs")


# ------------------------------------------------------------------ evaluate vs plain Keras

def test_sample_cnn_matches_keras_evaluate_and_numpy_confusion(keras, cnn, shapes_test):
    x, y = shapes_test
    ev = surgery.evaluate(cnn, (x, y), batch_size=64)
    ref = plain_keras_evaluate(keras, cnn, x, y, "sparse_categorical_crossentropy",
                               ["accuracy"], batch_size=64)
    assert ev.loss_name == "sparse_categorical_crossentropy" and ev.samples == len(x)
    assert ev.loss == pytest.approx(ref["loss"], rel=1e-5)
    assert ev.metrics["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-6)
    assert 0.6 < ev.metrics["accuracy"] < 0.95  # the model has learned its task
    guess = np.argmax(np.asarray(cnn(x, training=False)), axis=-1)
    matrix = numpy_confusion(y, guess, 8)
    assert np.array_equal(np.array(ev.confusion), matrix)
    with np.errstate(invalid="ignore"):
        recall = np.diag(matrix) / matrix.sum(axis=1)
    assert ev.per_class == pytest.approx(tuple(recall))
    assert ev.support == tuple(matrix.sum(axis=1))


@pytest.mark.parametrize("case", ["logits", "sigmoid", "regression", "one_hot"])
def test_other_heads_match_keras_evaluate(keras, case):
    x, labels = tasks.make_blobs(120, classes=3, seed=4)
    if case == "logits":
        model, y = blob_model(keras, 3, None), labels
        loss, metrics = keras.losses.SparseCategoricalCrossentropy(from_logits=True), \
            ["accuracy"]
    elif case == "sigmoid":
        model, y = blob_model(keras, 1, "sigmoid"), (labels == 1).astype(np.int64)
        loss, metrics = "binary_crossentropy", ["accuracy"]
    elif case == "regression":
        model, y = blob_model(keras, 1, None), x[:, :1].sum(axis=1) * 2.0
        loss, metrics = "mse", ["mae", "mse"]
    else:
        model, y = blob_model(keras, 3, "softmax"), np.eye(3, dtype=np.float32)[labels]
        loss, metrics = "categorical_crossentropy", ["accuracy"]
    ev = surgery.evaluate(model, (x, y), batch_size=16)
    ref = plain_keras_evaluate(keras, model, x, y, loss, metrics, batch_size=16)
    assert ev.loss == pytest.approx(ref["loss"], rel=1e-5)
    if case == "regression":
        assert ev.metrics["mean_absolute_error"] == pytest.approx(ref["mae"], rel=1e-5)
        assert ev.metrics["mean_squared_error"] == pytest.approx(ref["mse"], rel=1e-5)
        assert ev.confusion is None and ev.per_class == ()
    else:
        assert ev.metrics["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-6)
        out = np.asarray(model(x, training=False))
        true = labels if case != "sigmoid" else y
        guess = np.argmax(out, -1) if case != "sigmoid" else (out[:, 0] > 0.5).astype(int)
        k = 2 if case == "sigmoid" else 3
        assert np.array_equal(np.array(ev.confusion), numpy_confusion(true, guess, k))


def test_evaluate_never_compiles_or_changes_the_model(keras, cnn, shapes_test):
    before = [w.copy() for w in cnn.get_weights()]
    surgery.evaluate(cnn, shapes_test)
    assert not cnn.compiled
    assert all(np.array_equal(a, b) for a, b in zip(before, cnn.get_weights()))


# ------------------------------------------------------------------ class names in the file

def test_class_names_round_trip_through_a_fresh_keras_load(keras, cnn, tmp_path):
    out = tmp_path / "named.keras"
    surgery.save_model(cnn, out, class_names=SHAPES)
    fresh = keras.saving.load_model(out)  # Keras itself still loads the file
    for a, b in zip(cnn.get_weights(), fresh.get_weights()):
        assert np.array_equal(a, b)
    assert class_names(out) == SHAPES
    with zipfile.ZipFile(out) as z:
        meta = json.loads(z.read("metadata.json"))
    assert meta["keras_version"] == keras.__version__ and "date_saved" in meta
    assert meta["surgery"] == {"class_names": list(SHAPES)}
    assert class_names(surgery.save_model(cnn, tmp_path / "plain.keras")) is None
    assert leftovers(tmp_path) == []


def test_inspect_shows_the_class_names(cnn, tmp_path):
    out = surgery.save_model(cnn, tmp_path / "named.keras", class_names=SHAPES)
    assert surgery.inspect(out).class_names == SHAPES
    r = run("inspect", out)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[1] == ("classes: 0 circle, 1 ring, 2 square, 3 diamond, 4 triangle, 5 cross, "
                        "6 hbar, 7 vbar")
    r = run("inspect", out, "--json")
    assert json.loads(r.output)["class_names"] == list(SHAPES)
    r = run("inspect", surgery.save_model(cnn, tmp_path / "plain.keras"), "--json")
    assert json.loads(r.output)["class_names"] is None


def test_a_file_transplant_keeps_the_targets_class_names(cnn, samples, tmp_path):
    target = surgery.save_model(cnn, tmp_path / "target.keras", class_names=SHAPES)
    out = tmp_path / "filled.keras"
    report = surgery.transplant_file(samples["cnn"], target, str(out))
    assert report.ok and class_names(out) == SHAPES


# ------------------------------------------------------------------ finetune and class names

def _table(keras, width=2):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(width, activation="softmax",
                                                                    name="head")], name="t")


CSV = "a,b,c,kind\n1,2,3,cat\n4,5,6,dog\n7,8,9,cat\n0,1,0,dog\n"


def test_finetune_cli_prints_and_saves_the_class_names(keras, tmp_path):
    model = tmp_path / "m.keras"
    _table(keras).save(model)
    (tmp_path / "t.csv").write_text(CSV)
    out, metrics = tmp_path / "out.keras", tmp_path / "metrics.json"
    r = run("finetune", model, "--data", tmp_path / "t.csv", "--label", "kind", "-o", out,
            "--quiet", "--metrics-out", metrics)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[2] == "classes: 0 cat, 1 dog"
    assert class_names(out) == ("cat", "dog")
    assert json.load(open(metrics))["class_names"] == ["cat", "dog"]


def test_finetune_refuses_data_whose_classes_differ_from_the_models(keras, cnn, tmp_path):
    model = tmp_path / "m.keras"
    surgery.save_model(_table(keras), model, class_names=["dog", "cat"])
    (tmp_path / "t.csv").write_text(CSV)
    r = run("finetune", model, "--data", tmp_path / "t.csv", "--label", "kind",
            "-o", tmp_path / "out.keras", "--quiet")
    assert r.exit_code == 2
    assert r.output == (f"error: {tmp_path}/t.csv: its classes (cat, dog) differ from the ones "
                        f"{model} stores (dog, cat): item 0 is 'cat' here and 'dog' there; "
                        "give the data the model's classes in that order, or replace the head "
                        "first: surgery head MODEL -o OUT --classes 2\n")
    assert sorted(os.listdir(tmp_path)) == ["m.keras", "t.csv"]


def test_evaluate_maps_named_data_onto_the_models_classes(keras, tmp_path):
    model = _table(keras)
    path = surgery.save_model(model, tmp_path / "m.keras", class_names=["dog", "cat"])
    (tmp_path / "t.csv").write_text(CSV)
    ev = surgery.evaluate(surgery.load_model(path), str(tmp_path / "t.csv"), label="kind")
    assert ev.mapped and ev.class_names == ("dog", "cat")
    x = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 1, 0]], np.float32)
    y = np.array([1, 0, 1, 0])  # cat is unit 1, dog unit 0
    ref = plain_keras_evaluate(keras, model, x, y, "sparse_categorical_crossentropy",
                               ["accuracy"])
    assert ev.loss == pytest.approx(ref["loss"], rel=1e-5)
    assert ev.metrics["accuracy"] == pytest.approx(ref["accuracy"])


# ------------------------------------------------------------------ predict vs plain Keras

def test_predict_matches_keras_predict_and_writes_csv_and_npz(cnn, shapes_test, tmp_path):
    x, _ = shapes_test
    model_path = surgery.save_model(cnn, tmp_path / "named.keras", class_names=SHAPES)
    p = surgery.predict(surgery.load_model(model_path), (x, None))
    ref = cnn.predict(x, verbose=0)
    np.testing.assert_allclose(p.outputs, ref, rtol=1e-6, atol=1e-7)
    assert np.array_equal(p.predicted, ref.argmax(-1)) and p.class_names == SHAPES
    write_predictions(p, str(tmp_path / "p.csv"))
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows[0] == ["index", "predicted", "probability", *SHAPES]
    assert [r[1] for r in rows[1:]] == [SHAPES[i] for i in ref.argmax(-1)]
    np.testing.assert_allclose(np.array([r[3:] for r in rows[1:]], float), ref, rtol=1e-5,
                               atol=1e-9)
    np.testing.assert_allclose([float(r[2]) for r in rows[1:]], ref.max(-1), rtol=1e-5)
    write_predictions(p, str(tmp_path / "p.npz"))
    with np.load(tmp_path / "p.npz") as z:
        assert z["class_names"].tolist() == list(SHAPES)
        assert np.array_equal(z["predicted"], ref.argmax(-1))
        np.testing.assert_allclose(z["outputs"], ref, rtol=1e-6, atol=1e-7)


def test_predict_reads_data_without_labels(keras, tmp_path):
    model = _table(keras, 3)
    (tmp_path / "f.csv").write_text("a,b,c\n1,2,3\n4,5,6\n")
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    ref = np.asarray(model(x, training=False))
    for data in ("f.csv", "x.npz"):
        p = surgery.predict(model, str(tmp_path / data))
        np.testing.assert_allclose(p.outputs, ref, rtol=1e-6)
        assert p.class_names == () and np.array_equal(p.predicted, ref.argmax(-1))


def test_predict_on_image_folders_names_each_file(keras, tmp_path):
    """A flat folder of images, and class folders that don't match the head (labels are not
    used): each row is the file PIL reads, in the order the `file` column says."""
    from PIL import Image

    L = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(2, 3), L.GlobalAveragePooling2D(),
                              L.Dense(4, activation="softmax", name="head")], name="img")
    rng = np.random.default_rng(0)
    for rel in ("flat/b.png", "flat/a.png", "sub/x/0.png", "sub/y/0.png", "sub/z/1.png"):
        os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
        Image.fromarray((rng.uniform(size=(8, 8)) * 255).astype("uint8")).save(tmp_path / rel)
    for folder, files in (("flat", ["a.png", "b.png"]),
                          ("sub", ["x/0.png", "y/0.png", "z/1.png"])):
        p = surgery.predict(model, str(tmp_path / folder))
        assert p.files == tuple(files)
        x = np.stack([np.asarray(Image.open(tmp_path / folder / f), np.float32)[..., None] / 255
                      for f in files])
        np.testing.assert_allclose(p.outputs, np.asarray(model(x, training=False)), rtol=1e-5)
        write_predictions(p, str(tmp_path / f"{folder}.csv"))
        rows = list(csv.reader(open(tmp_path / f"{folder}.csv")))
        assert rows[0][:3] == ["index", "file", "predicted"]
        assert [r[1] for r in rows[1:]] == files


# ------------------------------------------------------------------ CLI lines

def hand_model(keras, tmp_path, names=None):
    """Dense(2 -> 3, softmax) with kernel 2*I (first two units) and zero biases: unit 2 never
    wins, units 0/1 win by the larger feature."""
    m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax",
                                                                 name="head")], name="hand")
    m.set_weights([np.array([[2, 0, 0], [0, 2, 0]], np.float32), np.zeros(3, np.float32)])
    return surgery.save_model(m, tmp_path / "hand.keras", class_names=names), m


HAND_X = np.array([[1, 0], [0, 1], [2, 1], [0, 3], [1, 2]], np.float32)
HAND_Y = np.array([0, 1, 0, 2, 0])


def test_evaluate_cli_lines(keras, tmp_path):
    path, model = hand_model(keras, tmp_path, ["a", "b", "c"])
    np.savez(tmp_path / "d.npz", x=HAND_X, y=HAND_Y)
    ref = plain_keras_evaluate(keras, model, HAND_X, HAND_Y, "sparse_categorical_crossentropy",
                               ["accuracy"])
    r = run("evaluate", path, "--data", tmp_path / "d.npz")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        f"{path} on {tmp_path}/d.npz (npz): 5 samples",
        f"loss (sparse_categorical_crossentropy)  {ref['loss']:.4f}",
        "accuracy                                0.6000",
        "",
        "class  samples  accuracy",
        "0 a          3    0.6667",
        "1 b          1    1.0000",
        "2 c          1    0.0000",
        "",
        "confusion matrix (rows: true class, columns: predicted class)",
        "      0   1   2",
        "0 a   2   1   0",
        "1 b   0   1   0",
        "2 c   0   1   0"]
    r = run("evaluate", path, "--data", tmp_path / "d.npz", "--json")
    got = json.loads(r.output)
    assert got["metrics"] == {"accuracy": 0.6} and got["confusion"] == [[2, 1, 0], [0, 1, 0],
                                                                        [0, 1, 0]]
    assert got["per_class"][0] == {"class": 0, "name": "a", "samples": 3,
                                   "accuracy": pytest.approx(2 / 3)}


def test_evaluate_cli_plot(keras, tmp_path):
    path, _ = hand_model(keras, tmp_path)
    np.savez(tmp_path / "d.npz", x=HAND_X, y=HAND_Y)
    r = run("evaluate", path, "--data", tmp_path / "d.npz", "--plot", tmp_path / "c.png")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1] == f"wrote {tmp_path}/c.png"
    assert open(tmp_path / "c.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_predict_cli_lines_and_csv(keras, tmp_path):
    path, _ = hand_model(keras, tmp_path, ["a", "b", "c"])
    np.savez(tmp_path / "d.npz", x=HAND_X)
    out = tmp_path / "p.csv"
    r = run("predict", path, "--data", tmp_path / "d.npz", "-o", out)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        f"{path} on {tmp_path}/d.npz (npz): 5 samples (softmax)",
        "predicted: 0 a=2, 1 b=3, 2 c=0",
        f"wrote {out}"]
    logits = HAND_X @ np.array([[2, 0, 0], [0, 2, 0]], np.float64)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["index", "predicted", "probability", "a", "b", "c"]
    assert [r[:2] for r in rows[1:]] == [["0", "a"], ["1", "b"], ["2", "a"], ["3", "b"],
                                         ["4", "b"]]
    np.testing.assert_allclose(np.array([r[2:] for r in rows[1:]], float),
                               np.c_[probs.max(1), probs], rtol=1e-5)
    r = run("predict", path, "--data", tmp_path / "d.npz", "-o", tmp_path / "p.npz", "--json")
    assert json.loads(r.output)["predicted_counts"] == [2, 3, 0]


# ------------------------------------------------------------------ the README's examples

@pytest.mark.slow
def test_readme_evaluate_and_predict_examples_print_what_the_readme_shows(samples, tmp_path,
                                                                          monkeypatch):
    """Runs the README's `surgery evaluate` and `surgery predict` blocks on the sample CNN
    (the generator lines in-process) and compares what they print with the README's copy."""
    import re
    import shlex
    import shutil

    from tests.conftest import ROOT

    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    pairs = re.findall(r"```sh\n([^`]*)```\n\n```\n([^`]*)```", text)
    pairs = [(c, o) for c, o in pairs if "surgery evaluate sample_models" in c
             or "surgery predict sample_models" in c]
    assert len(pairs) == 2
    os.makedirs(tmp_path / "sample_models")
    shutil.copy(samples["cnn"], tmp_path / "sample_models" / "cnn.keras")
    monkeypatch.chdir(tmp_path)
    for commands, shown_output in pairs:
        printed = ""
        for line in commands.splitlines():
            if line.startswith("python -c "):
                exec(shlex.split(line)[2], {})
            elif line.startswith("surgery "):
                r = run(*shlex.split(line)[1:])
                assert r.exit_code == 0, r.output
                printed += r.output
        assert printed == shown_output
    rows = open(tmp_path / "predictions.csv").read().splitlines()
    shown_rows = re.search(r"```\n(index,predicted,.*?)```", text, re.S).group(1).splitlines()
    assert rows[:len(shown_rows)] == shown_rows
