"""`finetune --checkpoint DIR` / `--resume` with careless and hostile folders (issue #22).

Each case asserts the exact error line (CLI: `error: ...`, exit 2; Python: the SurgeryError's
text), that every file in the project folder is unchanged (sha256, the damaged file included),
and that no temporary file is left. Data loss first: a folder the tool did not create (no
``surgery-checkpoint.json``) is never reused or deleted, whatever it holds; a finished run
removes only the files it wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.errors import FormatError, InputError, OptionError
from surgery.train.finetune import Interrupted
from tests.conftest import sha256

MARKER = "surgery-checkpoint.json"
OWN = {MARKER, "state.json", "last.weights.h5", "best.weights.h5"}



def tree(folder) -> dict[str, str]:
    """Every file under `folder`: relative path -> sha256."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            full = os.path.join(base, name)
            out[os.path.relpath(full, folder)] = sha256(full)
    return out


def temp_files(folder) -> list[str]:
    return [os.path.join(b, n) for b, dirs, files in os.walk(folder) for n in files + dirs
            if ".surgery-tmp-" in n]


def _stop_at(epoch):
    import keras

    class Stop(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            if e == epoch:
                raise KeyboardInterrupt
    return Stop()


@pytest.fixture(scope="module")
def made(keras, tmp_path_factory):
    """A model file, its data, and the checkpoint of a run interrupted after epoch 2 of 3."""
    folder = tmp_path_factory.mktemp("made")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc"),
                              keras.layers.Dense(2, activation="softmax", name="head")],
                             name="small")
    model.save(folder / "m.keras")
    r = np.random.default_rng(0)
    x = r.normal(size=(32, 4)).astype("float32")
    np.savez(folder / "d.npz", x=x, y=(x[:, 0] > 0).astype("int64"))
    with pytest.raises(Interrupted):
        surgery.finetune(surgery.load_model(str(folder / "m.keras")), str(folder / "d.npz"),
                         epochs=3, batch_size=16, verbose=0, checkpoint=str(folder / "ck"),
                         callbacks=[_stop_at(2)])
    assert set(os.listdir(folder / "ck")) == OWN
    return folder


@pytest.fixture
def proj(made, tmp_path):
    """A fresh copy of `made` per test: m.keras, d.npz, ck/ (an interrupted run), notes.txt."""
    for name in ("m.keras", "d.npz"):
        shutil.copy(made / name, tmp_path / name)
    shutil.copytree(made / "ck", tmp_path / "ck")
    (tmp_path / "notes.txt").write_text("the user's own file\n")
    return tmp_path


def cli(proj, *args) -> tuple[int, str]:
    argv = ["finetune", str(proj / "m.keras"), "--data", str(proj / "d.npz"), "-o",
            str(proj / "out.keras"), "--epochs", "3", "--batch-size", "16", "--quiet",
            *map(str, args)]
    r = CliRunner().invoke(main, argv)
    return r.exit_code, r.output


def refused(proj, args, line, *, changed=()) -> None:
    """The CLI refuses with exactly `line`; nothing in the folder changes, no temp file."""
    before = tree(proj)
    code, out = cli(proj, *args)
    assert (code, out) == (2, f"error: {line}\n"), out
    after = tree(proj)
    assert {k: v for k, v in after.items() if k not in changed} == \
        {k: v for k, v in before.items() if k not in changed}
    assert not (proj / "out.keras").exists() and temp_files(proj) == []


# ---------------------------------------------------------------- data loss

def test_a_folder_holding_the_inputs_is_never_used(proj):
    """The issue's case: --checkpoint on the project folder (model, data, a user file)."""
    shutil.rmtree(proj / "ck")
    for extra in ([], ["--overwrite"], ["--resume"]):
        refused(proj, ["--checkpoint", proj, *extra],
                f"{proj}: the checkpoint folder holds the input {proj / 'm.keras'}; give "
                "--checkpoint a folder of its own (surgery never writes into or deletes its "
                "inputs)")
    assert sorted(os.listdir(proj)) == ["d.npz", "m.keras", "notes.txt"]


def test_a_checkpoint_inside_an_input_folder_is_refused(proj):
    """The data is a folder (a saved tf.data dataset): the checkpoint can't go inside it."""
    import tensorflow as tf

    d = np.load(proj / "d.npz")
    tf.data.Dataset.from_tensor_slices((d["x"], d["y"])).save(str(proj / "ds"))
    before = tree(proj)
    r = CliRunner().invoke(main, ["finetune", str(proj / "m.keras"), "--data", str(proj / "ds"),
                                  "-o", str(proj / "out.keras"), "--quiet", "--checkpoint",
                                  str(proj / "ds" / "ck")])
    assert (r.exit_code, r.output) == (2, f"error: {proj / 'ds' / 'ck'}: is inside the input "
                                          f"folder {proj / 'ds'}; give --checkpoint a folder "
                                          "outside it (surgery never writes into its "
                                          "inputs)\n")
    assert tree(proj) == before and temp_files(proj) == []


@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--resume"]])
def test_a_folder_surgery_did_not_create_is_never_reused_or_deleted(proj, extra):
    mine = proj / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work\n")
    (mine / "state.json").write_text("{}")  # even with a file of the same name
    refused(proj, ["--checkpoint", mine, *extra],
            f"{mine}: is a folder surgery did not create (no {MARKER} in it); surgery never "
            "reuses or deletes it, so give --checkpoint a new folder")
    (proj / "empty").mkdir()
    refused(proj, ["--checkpoint", proj / "empty", *extra],
            f"{proj / 'empty'}: is a folder surgery did not create (no {MARKER} in it); "
            "surgery never reuses or deletes it, so give --checkpoint a new folder")
    assert os.listdir(proj / "empty") == []


def test_a_file_or_link_is_not_a_checkpoint_folder(proj):
    refused(proj, ["--checkpoint", proj / "notes.txt"],
            f"{proj / 'notes.txt'}: is not a folder; give --checkpoint a folder path that "
            "surgery can create")
    os.symlink(proj / "ck", proj / "link")
    refused(proj, ["--checkpoint", proj / "link", "--resume"],
            f"{proj / 'link'}: is a symbolic link; give --checkpoint a folder path that "
            "surgery can create")


def test_an_earlier_checkpoint_needs_resume_or_overwrite(proj):
    refused(proj, ["--checkpoint", proj / "ck"],
            f"{proj / 'ck'}: holds the checkpoint of an earlier run; pass --resume to continue "
            "it or --overwrite to start over")


def test_overwrite_starts_over_and_removes_only_its_own_files(proj):
    (proj / "ck" / "keep.txt").write_text("put here by the user\n")
    code, out = cli(proj, "--checkpoint", proj / "ck", "--overwrite")
    assert code == 0, out
    assert [line.split(":")[0].split() for line in out.splitlines()
            if line.strip().startswith("epoch")] == [["epoch", "1"], ["epoch", "2"],
                                                     ["epoch", "3"]]  # from epoch 1 again
    assert os.listdir(proj / "ck") == ["keep.txt"]  # the folder stays: it isn't empty
    assert (proj / "notes.txt").read_text() == "the user's own file\n"
    assert temp_files(proj) == []


def test_a_finished_resume_removes_the_folder_it_created(proj):
    code, out = cli(proj, "--checkpoint", proj / "ck", "--resume")
    assert code == 0, out
    assert not (proj / "ck").exists() and (proj / "notes.txt").exists()
    assert temp_files(proj) == []


# ---------------------------------------------------------------- non-finite options

@pytest.mark.parametrize("args,line", [
    (["--lr", "nan"], "--lr must be a finite number above 0, got nan"),
    (["--lr", "inf"], "--lr must be a finite number above 0, got inf"),
    (["--lr", "-0.01"], "--lr must be a finite number above 0, got -0.01"),
    (["--lr", "0"], "--lr must be a finite number above 0, got 0.0"),
    (["--l2sp", "nan"], "--l2sp must be a finite number of at least 0, got nan"),
    (["--l2sp", "-1"], "--l2sp must be a finite number of at least 0, got -1.0"),
    (["--l2sp-head", "inf"], "--l2sp-head must be a finite number of at least 0, got inf"),
    (["--lr-mult", "head=nan"], "--lr-mult head must be a finite number above 0, got nan"),
    (["--lr-mult", "head=inf"], "--lr-mult head must be a finite number above 0, got inf"),
    (["--layer-decay", "nan"], "--layer-decay must be a finite number in (0, 1], got nan"),
    (["--val-split", "nan"], "--val-split must be a finite number in (0, 1), got nan"),
    (["--epochs", "0"], "--epochs must be a whole number of at least 1, got 0"),
    (["--early-stop", "0"], "--early-stop must be a whole number of at least 1, got 0"),
    (["--lora-rank", "0"], "--lora-rank must be a whole number of at least 1, got 0"),
    (["--lora-select", "fc"], "--lora-select needs --lora-rank R (the adapters' rank)"),
])
def test_non_finite_and_out_of_range_options(proj, args, line):
    shutil.rmtree(proj / "ck")
    refused(proj, args, line)
    assert not (proj / "out.keras.ckpt").exists()


def test_python_api_refuses_non_finite_options(proj):
    model = surgery.load_model(str(proj / "m.keras"))
    data = str(proj / "d.npz")
    for kwargs, line in [({"lr": float("nan")}, "--lr must be a finite number above 0, got nan"),
                         ({"l2sp": float("nan")},
                          "--l2sp must be a finite number of at least 0, got nan"),
                         ({"lr": "0.1"}, "--lr must be a finite number above 0, got '0.1'"),
                         ({"epochs": 2.5}, "--epochs must be a whole number of at least 1, "
                          "got 2.5")]:
        with pytest.raises(OptionError) as e:
            surgery.finetune(model, data, verbose=0, **kwargs)
        assert str(e.value) == line


# ---------------------------------------------------------------- resume: the same run only

def test_resume_with_another_model_of_the_same_architecture(proj, keras):
    other = surgery.load_model(str(proj / "m.keras"))
    other.get_layer("fc").kernel.assign(np.ones((4, 3), "float32"))
    other.save(proj / "other.keras")
    before = tree(proj)
    argv = ["finetune", str(proj / "other.keras"), "--data", str(proj / "d.npz"), "-o",
            str(proj / "out.keras"), "--epochs", "3", "--batch-size", "16", "--quiet",
            "--checkpoint", str(proj / "ck"), "--resume"]
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 2
    m = re.fullmatch(
        re.escape(f"error: {proj / 'ck'}: the checkpoint was started from other weights of "
                  "this architecture (weights sha256 ") + r"([0-9a-f]{12})" +
        re.escape(" in the checkpoint vs ") + r"([0-9a-f]{12})" +
        re.escape(" now); resume with the model the run started from, or start over with "
                  "--overwrite") + "\n", r.output)
    assert m and m.group(1) != m.group(2), r.output
    assert tree(proj) == before and temp_files(proj) == []


def test_resume_with_other_data(proj):
    d = np.load(proj / "d.npz")
    np.savez(proj / "d2.npz", x=d["x"][::-1], y=d["y"][::-1])
    before = tree(proj)
    argv = ["finetune", str(proj / "m.keras"), "--data", str(proj / "d2.npz"), "-o",
            str(proj / "out.keras"), "--epochs", "3", "--batch-size", "16", "--quiet",
            "--checkpoint", str(proj / "ck"), "--resume"]
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 2
    assert re.fullmatch(re.escape(f"error: {proj / 'ck'}: the checkpoint was trained on other "
                                  "data (sha256 ") + r"[0-9a-f]{12} in the checkpoint vs "
                        r"[0-9a-f]{12} now" + re.escape("); resume with the same --data, --val, "
                                                         "--val-split and --label, or start "
                                                         "over with --overwrite") + "\n",
                        r.output), r.output
    assert tree(proj) == before and temp_files(proj) == []


def test_resume_with_changed_settings_names_each(proj):
    refused(proj, ["--checkpoint", proj / "ck", "--resume", "--lr", "0.01", "--seed", "4",
                   "--train", "head"],
            f"{proj / 'ck'}: the checkpoint's run had other settings: --train [] (checkpoint) "
            "vs [\"head\"] (now); --lr 0.001 (checkpoint) vs 0.01 (now); --seed 0 "
            "(checkpoint) vs 4 (now); resume with the same settings (only --epochs may grow), "
            "or start over with --overwrite")


def test_resume_with_fewer_epochs_than_done(proj):
    assert json.loads((proj / "ck" / "state.json").read_text())["epoch"] == 2
    refused(proj, ["--checkpoint", proj / "ck", "--resume", "--epochs", "1"],
            f"{proj / 'ck'}: the checkpoint already holds 2 epochs; ask for at least 2 "
            "(--epochs 2) or start over with --overwrite")


def test_more_epochs_resume_equals_an_uninterrupted_run(proj, made):
    """--epochs 4 on a checkpoint of a 3-epoch run continues to epoch 4; an uninterrupted
    4-epoch run ends with the same weights."""
    code, out = cli(proj, "--checkpoint", proj / "ck", "--resume", "--epochs", "4")
    assert code == 0, out
    assert out.startswith("resuming after epoch 2 of 4\n"), out  # before training
    assert "\nresumed after epoch 2 of 4\n" in out  # and in the result
    full = surgery.finetune(surgery.load_model(str(made / "m.keras")), str(made / "d.npz"),
                            epochs=4, batch_size=16, verbose=0)
    with surgery.open_weights(str(proj / "out.keras")) as a:
        resumed = {k: a.read(k) for k in a}
    with surgery.open_weights(full.model) as b:
        for k in b:
            np.testing.assert_allclose(resumed[k], b.read(k), atol=1e-6, err_msg=k)


# ---------------------------------------------------------------- damaged checkpoints

def _truncate(ck):
    data = (ck / "last.weights.h5").read_bytes()
    (ck / "last.weights.h5").write_bytes(data[: len(data) // 3])


def _state(ck, change):
    state = json.loads((ck / "state.json").read_text())
    change(state)
    (ck / "state.json").write_text(json.dumps(state))


def _no_optimizer(ck):
    with h5py.File(ck / "last.weights.h5", "a") as f:
        del f["optimizer"]


DAMAGED = [
    ("truncated weights", _truncate,
     "{ck}/last.weights.h5: is not a readable HDF5 file (truncated or overwritten); the "
     "checkpoint is damaged: start over with --overwrite (overwrite=True)"),
    ("weights of another kind", lambda ck: (ck / "last.weights.h5").write_bytes(b"{}"),
     "{ck}/last.weights.h5: is not a readable HDF5 file (truncated or overwritten); the "
     "checkpoint is damaged: start over with --overwrite (overwrite=True)"),
    ("weights without the model's layers", lambda ck: h5py.File(ck / "last.weights.h5",
                                                                "w").close(),
     "{ck}/last.weights.h5: does not hold this model's weights and optimizer state "
     "(ValueError); the checkpoint is damaged: start over with --overwrite (overwrite=True)"),
    ("weights without the optimizer state", _no_optimizer,
     "{ck}/last.weights.h5: does not hold this model's weights and optimizer state (Keras "
     "skipped some of its variables); the checkpoint is damaged: start over with --overwrite "
     "(overwrite=True)"),
    ("missing weights", lambda ck: os.unlink(ck / "last.weights.h5"),
     "{ck}/last.weights.h5: is missing; the checkpoint is damaged: start over with "
     "--overwrite (overwrite=True)"),
    ("state not JSON", lambda ck: (ck / "state.json").write_text('{"epoch": 1,'),
     "{ck}/state.json: is not valid JSON (Expecting property name enclosed in double quotes: "
     "line 1 column 13 (char 12)); the checkpoint is damaged: start over with --overwrite "
     "(overwrite=True)"),
    ("state a list", lambda ck: (ck / "state.json").write_text("[1, 2]"),
     "{ck}/state.json: holds a JSON list, not an object; the checkpoint is damaged: start "
     "over with --overwrite (overwrite=True)"),
    ("state not UTF-8", lambda ck: (ck / "state.json").write_bytes(b"\xff\xfe{"),
     "{ck}/state.json: is not UTF-8 text; the checkpoint is damaged: start over with "
     "--overwrite (overwrite=True)"),
    ("epoch a string", lambda ck: _state(ck, lambda s: s.update(epoch="1")),
     "{ck}/state.json: 'epoch' is str, expected int; the checkpoint is damaged: start over "
     "with --overwrite (overwrite=True)"),
    ("wait a bool", lambda ck: _state(ck, lambda s: s.update(wait=True)),
     "{ck}/state.json: 'wait' is bool, expected int; the checkpoint is damaged: start over "
     "with --overwrite (overwrite=True)"),
    ("missing key", lambda ck: _state(ck, lambda s: s.pop("model_sha256")),
     "{ck}/state.json: has no 'model_sha256'; the checkpoint is damaged: start over with "
     "--overwrite (overwrite=True)"),
    ("epochs out of step", lambda ck: _state(ck, lambda s: s.update(epoch=3)),
     "{ck}/state.json: 'epoch' is 3 but 'epochs' holds 2 records; the checkpoint is damaged: "
     "start over with --overwrite (overwrite=True)"),
    ("best epoch out of range", lambda ck: _state(ck, lambda s: s.update(best_epoch=7)),
     "{ck}/state.json: 'best_epoch' 7 is outside 1..2; the checkpoint is damaged: start over "
     "with --overwrite (overwrite=True)"),
    ("bad shape", lambda ck: _state(ck, lambda s: s["fingerprint"].update({"fc/kernel": "x"})),
     "{ck}/state.json: the shape of 'fc/kernel' is 'x', expected a list of sizes; the "
     "checkpoint is damaged: start over with --overwrite (overwrite=True)"),
    ("state a folder", lambda ck: (os.unlink(ck / "state.json"), os.mkdir(ck / "state.json")),
     "{ck}/state.json: is not a regular file; the checkpoint is damaged: start over with "
     "--overwrite (overwrite=True)"),
    ("missing state", lambda ck: os.unlink(ck / "state.json"),
     "{ck}: no checkpoint to resume from (state.json missing); start over with --overwrite "
     "(overwrite=True)"),
]


@pytest.mark.parametrize("name,damage,line", DAMAGED, ids=[d[0] for d in DAMAGED])
def test_damaged_checkpoint_one_clear_line(proj, name, damage, line):
    ck = proj / "ck"
    damage(ck)
    refused(proj, ["--checkpoint", ck, "--resume"], line.format(ck=ck))


def test_damaged_checkpoint_leaves_the_python_model_as_it_was(proj):
    """Through the API: the same line, and the model passed in keeps its weights."""
    h5py.File(proj / "ck" / "last.weights.h5", "w").close()
    model = surgery.load_model(str(proj / "m.keras"))
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(FormatError) as e:
        surgery.finetune(model, str(proj / "d.npz"), epochs=3, batch_size=16, verbose=0,
                         checkpoint=str(proj / "ck"), resume=True)
    assert str(e.value) == (f"{proj / 'ck'}/last.weights.h5: does not hold this model's "
                            "weights and optimizer state (ValueError); the checkpoint is "
                            "damaged: start over with --overwrite (overwrite=True)")
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_resume_without_a_checkpoint(proj):
    with pytest.raises(InputError) as e:
        surgery.finetune(surgery.load_model(str(proj / "m.keras")), str(proj / "d.npz"),
                         verbose=0, checkpoint=str(proj / "nothing"), resume=True)
    assert str(e.value) == (f"{proj / 'nothing'}: no checkpoint to resume from (no such "
                            "folder); run without --resume")
    with pytest.raises(OptionError) as e:
        surgery.finetune(surgery.load_model(str(proj / "m.keras")), str(proj / "d.npz"),
                         verbose=0, resume=True)
    assert str(e.value) == ("--resume needs a checkpoint folder (--checkpoint DIR, default "
                            "OUT.ckpt)")


# ---------------------------------------------------------------- multi-worker: refuse, never drop

def test_multiworker_refuses_what_it_cannot_do(proj, monkeypatch):
    from surgery.train.multiworker import finetune_multiworker

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    model = surgery.load_model(str(proj / "m.keras"))
    with pytest.raises(OptionError) as e:
        finetune_multiworker(model, str(proj / "d.npz"), checkpoint=str(proj / "ck"),
                             lora_select=["fc"])
    assert str(e.value) == ("--strategy multiworker does not support --lora-select, "
                            "--checkpoint; use --strategy mirrored (Keras fit) for those")
    with pytest.raises(TypeError):
        finetune_multiworker(model, str(proj / "d.npz"), no_such_option=1)
