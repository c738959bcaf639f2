"""The CLI verbs for what the library already did (issue #18 items 5 and 7): `surgery edit
change-input / inflate / fully-convolutional`, `--inputs` on every edit verb, the README's
gray-model transplant as one tested sequence, the tour beside the demo, the plot's best-epoch
marker, shell completion, and `apply` keeping TensorFlow's lines off stderr.

References: plain Keras (`keras.saving.load_model` and `predict`) running the original sample
models on the sample tasks' own images, the library function's own result for the same edit,
and the demo's own output list and summary writer."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from surgery.sample_models import tasks
from tests.conftest import ROOT, SAMPLES, leftovers, sha256


def _run(*args) -> object:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def _features(keras, model, x, layer: str = "fc") -> list[np.ndarray]:
    """The model's output and the given layer's output (pre-head features) on `x`."""
    both = keras.Model(model.inputs, [model.output, model.get_layer(layer).output])
    return [np.asarray(a) for a in both.predict_on_batch(x)]


def _run_model(model, x) -> np.ndarray:
    return np.asarray(model.predict_on_batch(x))


def _weights(keras, model) -> dict:
    """layer/variable -> array, walking the layers (Keras's own `variable.path` changes
    prefix between a built and a reloaded model)."""
    return {f"{layer.name}/{w.name}": np.asarray(w) for layer in model.layers
            for w in layer.weights}


# ------------------------------------------------------------------ change-input + README

def _readme_gray_commands() -> list[list[str]]:
    """The README's gray-model sequence: the fenced block that makes gray.keras and fills it."""
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    block = next(b for b in blocks if "change-input" in b and "rgb_to_gray.toml" in b)
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line)[1:] for line in lines
            if line.startswith("surgery ") and ("gray" in line)]


def test_readme_gray_sequence_gives_the_rgb_models_outputs(keras, tmp_path, monkeypatch):
    commands = _readme_gray_commands()
    assert [c[:2] for c in commands] == [["edit", "change-input"], ["transplant",
                                                                     os.path.join(
                                                                         "sample_models",
                                                                         "cnn.keras")]]
    monkeypatch.chdir(tmp_path)
    os.symlink(os.path.join(ROOT, "examples"), "examples")
    os.mkdir("sample_models")
    shutil.copy(os.path.join(SAMPLES, "cnn.keras"), "sample_models/cnn.keras")
    for argv in commands:
        _run(*argv)
    rgb = keras.saving.load_model("sample_models/cnn.keras")
    gray = keras.saving.load_model("gray_filled.keras")
    assert tuple(gray.inputs[0].shape) == (None, 32, 32, 1)
    x, _ = tasks.make_shapes(64, seed=11)
    g = x.mean(-1, keepdims=True)
    want = _features(keras, rgb, np.repeat(g, 3, axis=-1))
    got = _features(keras, gray, g)
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)
    assert leftovers(str(tmp_path)) == []


def test_change_input_matches_the_library(keras, samples, tmp_path):
    from surgery import edit

    out = tmp_path / "big.keras"
    r = _run("edit", "change-input", samples["cnn"], "-o", out, "--shape", "48,48,3", "--json")
    assert json.loads(r.output)["output"] == str(out)
    original = keras.saving.load_model(samples["cnn"])
    mine = keras.saving.load_model(out)
    lib = edit.change_input(original, (48, 48, 3)).model
    assert tuple(mine.inputs[0].shape) == tuple(lib.inputs[0].shape) == (None, 48, 48, 3)
    a, b, o = _weights(keras, mine), _weights(keras, lib), _weights(keras, original)
    assert a.keys() == b.keys() == o.keys()
    for k in a:  # global pooling: every weight is the original's
        assert np.array_equal(a[k], o[k]) and np.array_equal(b[k], o[k]), k
    # by hand: plain Keras's clone of the original on a 48x48 input, the original's weights
    by_hand = keras.models.clone_model(original, input_tensors=keras.Input((48, 48, 3)))
    by_hand.set_weights(original.get_weights())
    x, _ = tasks.make_shapes(16, seed=5, size=48)  # the same task, drawn at 48x48
    np.testing.assert_allclose(_run_model(mine, x), _run_model(by_hand, x), atol=1e-6)


# ------------------------------------------------------------------ inflate

def test_inflate_matches_the_library_and_static_clips_give_the_2d_outputs(keras, samples,
                                                                          tmp_path):
    from surgery import edit

    out = tmp_path / "video.keras"
    _run("edit", "inflate", samples["cnn"], "-o", out, "--frames", "4", "--depth", "3")
    original = keras.saving.load_model(samples["cnn"])
    mine = keras.saving.load_model(out)
    lib = edit.inflate(original, frames=4, depth=3, mode="center").model
    assert tuple(mine.inputs[0].shape) == (None, 4, 32, 32, 3)
    a, b = _weights(keras, mine), _weights(keras, lib)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert a["block1_conv/kernel"].shape == (3, 3, 3, 3, 16)
    x, _ = tasks.make_shapes(32, seed=3)
    clips = np.repeat(x[:, None], 4, axis=1)  # one image held still for 4 frames
    want = _features(keras, original, x)
    got = _features(keras, mine, clips)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ fully-convolutional

def test_fully_convolutional_gives_the_original_on_every_window(keras, tmp_path):
    from surgery import edit

    src = tmp_path / "cnn_28.keras"
    shutil.copy(os.path.join(SAMPLES, "cnn_28.keras"), src)
    out = tmp_path / "fcn56.keras"
    _run("edit", "fully-convolutional", src, "-o", out, "--input-shape", "56,56,1")
    original = keras.saving.load_model(src)
    mine = keras.saving.load_model(out)
    lib = edit.fully_convolutional(original, input_shape=(56, 56, 1)).model
    assert tuple(mine.inputs[0].shape) == tuple(lib.inputs[0].shape) == (None, 56, 56, 1)
    a, b = _weights(keras, mine), _weights(keras, lib)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    x, _ = tasks.make_digits_like(16, seed=4)
    big = np.concatenate([np.concatenate([x[:4], x[4:8]], 2),
                          np.concatenate([x[8:12], x[12:16]], 2)], 1)  # 2x2 digits, 56x56
    scores = _run_model(mine, big)
    assert scores.shape == (4, 15, 15, 10)
    for i, j in ((0, 0), (14, 14), (0, 14), (3, 5)):  # window at (2i, 2j): conv 3x3, pool 2
        want = _run_model(original, big[:, 2 * i:2 * i + 28, 2 * j:2 * j + 28])
        np.testing.assert_allclose(scores[:, i, j], want, atol=1e-5)


# ------------------------------------------------------------------ --inputs on every verb

_VERBS = [
    ("delete-channels", ["--layer", "fc", "--channels", "0,1"]),
    ("widen", ["--layer", "fc", "--units", "80", "--seed", "0"]),
    ("deepen", ["--after", "fc"]),
    ("delete-layer", ["--layer", "block3_relu"]),
    ("insert", ["--after", "fc", "--layer-json",
                '{"class_name": "Dropout", "config": {"rate": 0.5, "name": "drop"}}']),
    ("replace", ["--layer", "fc", "--layer-json", '{"class_name": "Dense", "config": '
                 '{"units": 64, "activation": "relu", "name": "fc"}}']),
    ("change-input", ["--shape", "32,32,3"]),
    ("inflate", ["--frames", "2"]),
    ("fully-convolutional", []),
]


@pytest.fixture(scope="module")
def task_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    x, _ = tasks.make_shapes(16, seed=21)
    np.savez(folder / "x.npz", x=x)
    d, _ = tasks.make_digits_like(16, seed=21)
    np.savez(folder / "d.npz", x=d)
    return {"cnn": str(folder / "x.npz"), "cnn_28": str(folder / "d.npz")}


@pytest.mark.parametrize("verb, args", _VERBS, ids=[v for v, _ in _VERBS])
def test_every_edit_verb_passes_inputs_to_verify(samples, task_inputs, tmp_path, monkeypatch,
                                                 verb, args):
    """--inputs reaches `verify` (with MODEL as the reference and the edited model as the
    candidate) for every edit verb, and implies --verify."""
    import surgery

    model = samples["cnn"]
    key = "cnn"
    if verb == "fully-convolutional":
        model, key = str(tmp_path / "cnn_28.keras"), "cnn_28"
        shutil.copy(os.path.join(SAMPLES, "cnn_28.keras"), model)
    calls = []

    class Seen:
        ok = True

        def to_dict(self):
            return {"seen": True}

    def record(reference, candidate, inputs=None, *, atol=1e-5):
        calls.append((reference.name, candidate is not reference, inputs, atol))
        return Seen()

    monkeypatch.setattr(surgery, "verify", record)
    r = _run("edit", verb, model, "--dry-run", "--json", "--inputs", task_inputs[key],
             "--atol", "0.001", *args)
    assert json.loads(r.output)["verify"] == {"seen": True}
    assert len(calls) == 1 and calls[0][1:] == (True, task_inputs[key], 0.001)


def test_inputs_are_compared_for_real(samples, task_inputs):
    """widen with the task's images as --inputs: verify runs them as their own family."""
    r = _run("edit", "widen", samples["cnn"], "--dry-run", "--json", "--layer", "fc",
             "--units", "80", "--seed", "0", "--inputs", task_inputs["cnn"])
    v = json.loads(r.output)["verify"]
    assert v["ok"] and "inputs" in v["families"], v


# ------------------------------------------------------------------ the tour beside the demo

def test_tour_and_demo_share_a_folder(tmp_path):
    from surgery.recipes.demo import TASKS, demo_outputs, write_summary
    from surgery.recipes.tour import tour_outputs

    assert not set(tour_outputs(str(tmp_path))) & set(
        demo_outputs(str(tmp_path), range(10), list(TASKS)))
    demo = write_summary({"demo": True}, str(tmp_path))  # the demo's own summary writer
    before = sha256(demo)
    r = CliRunner().invoke(main, ["recipe", "run", "tour", "-o", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    assert sha256(demo) == before
    assert json.loads(r.output)["output"] == str(tmp_path / "tour-summary.json")
    tour = json.load(open(tmp_path / "tour-summary.json"))
    assert tour["models"]["cnn.keras"]["round_trip_identical"] is True


# ------------------------------------------------------------------ best-epoch marker

def test_plot_marks_the_best_epoch(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from surgery.train.outputs import write_plot

    class Result:  # three epochs; validation loss lowest at epoch 2, whose weights OUT holds
        epochs = [{"epoch": e} for e in (1, 2, 3)]
        history = {"loss": [0.9, 0.6, 0.5], "val_loss": [0.8, 0.55, 0.7],
                   "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.5, 0.75, 0.7]}
        best_epoch = 2

    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    write_plot(Result(), str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = figures
    for ax in fig.axes:
        marks = [line for line in ax.get_lines() if line.get_label().startswith("best epoch")]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [2, 2], ax.get_title()
        assert marks[0].get_label() == "best epoch 2 (saved)"
    assert len(fig.axes) == 2
    real_close(fig)


# ------------------------------------------------------------------ shell completion

def test_shell_completion_is_clicks():
    exe = os.path.join(os.path.dirname(sys.executable), "surgery")
    env = {**os.environ, "_SURGERY_COMPLETE": "bash_source"}
    r = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == ""
    assert "complete -o nosort -F _surgery_completion surgery" in r.stdout
    env = {**os.environ, "_SURGERY_COMPLETE": "bash_complete", "COMP_WORDS": "surgery edit inf",
           "COMP_CWORD": "2"}
    r = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["plain,inflate"]


# ------------------------------------------------------------------ apply's stderr

@pytest.mark.slow
def test_apply_dry_run_keeps_stderr_empty():
    env = {k: v for k, v in os.environ.items() if k not in ("SURGERY_QUIET_TF",
                                                            "TF_CPP_MIN_LOG_LEVEL")}
    exe = os.path.join(os.path.dirname(sys.executable), "surgery")
    r = subprocess.run([exe, "apply", "examples/plans/new_head_freeze.toml", "--dry-run"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "dry run" in r.stdout
    assert r.stderr == ""
