"""Red-team findings (wave 2, batch B): recipes, the demo and finetune writing where they must
not, and "unexpected" errors where one clear line belongs.

Each case asserts the exact error line and that the user's files are unchanged (sha256).
Nothing here trains beyond what the refusal needs: every refusal comes before training.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.errors import FormatError, OptionError, OutputError, OutputExists
from tests.bad_inputs.test_checkpoints import _state, made, proj, refused  # noqa: F401
from tests.conftest import sha256

SYMLINK_LINE = ("{path}: is a symbolic link; surgery writes only regular files (it never "
                "replaces special files or links), so give another path")
FIFO_LINE = ("{path}: is a FIFO; surgery writes only regular files (it never replaces special "
             "files or links), so give another path")
EXISTS_LINE = "{path}: already exists; pass --overwrite (overwrite=True) to replace it"


def run(*argv) -> tuple[int, str]:
    r = CliRunner().invoke(main, [str(a) for a in argv])
    return r.exit_code, r.output


def user_folder(tmp_path, *names):
    """A folder holding the user's own files of these names; returns it and their hashes."""
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in names:
        (folder / name).write_text(f"the user's own {name}\n")
    return folder, {n: sha256(folder / n) for n in names}


# ---------------------------------------------------------------- 1. recipes

@pytest.mark.parametrize("how", [["--set", "output={folder}"], ["-o", "{folder}"]])
def test_tour_recipe_never_replaces_user_files_without_overwrite(tmp_path, how):
    folder, before = user_folder(tmp_path, "cnn.keras", "summary.json")
    code, out = run("recipe", "run", "tour", *[a.format(folder=folder) for a in how])
    assert (code, out) == (2, "error: " + EXISTS_LINE.format(path=folder / "cnn.keras") + "\n")
    assert {n: sha256(folder / n) for n in before} == before
    assert sorted(os.listdir(folder)) == ["cnn.keras", "summary.json"]


def test_tour_recipe_refuses_a_linked_summary(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink("../victim.txt", folder / "tour-summary.json")
    code, out = run("recipe", "run", "tour", "--set", f"output={folder}", "--overwrite")
    assert (code, out) == (2, "error: " + SYMLINK_LINE.format(path=folder / "tour-summary.json")
                           + "\n")
    assert victim.read_text() == "precious\n" and os.listdir(folder) == ["tour-summary.json"]


def test_output_given_twice_is_refused(tmp_path):
    code, out = run("recipe", "run", "tour", "-o", tmp_path / "a", "--set",
                    f"output={tmp_path / 'b'}")
    assert code == 2 and "give the output once: -o OUT or --set output=OUT, not both" in out
    assert os.listdir(tmp_path) == []


def test_lstm_torch_never_replaces_the_users_state_dict(tmp_path):
    folder, before = user_folder(tmp_path, "lstm.safetensors")
    code, out = run("recipe", "run", "lstm-torch", "--set", f"folder={folder}")
    assert (code, out) == (2, "error: " + EXISTS_LINE.format(path=folder / "lstm.safetensors")
                           + "\n")
    assert {n: sha256(folder / n) for n in before} == before


def test_lstm_torch_never_writes_into_the_model_it_reads(samples, tmp_path):
    # the model read is the folder's own file: refused even with overwrite
    from surgery.recipes import lstm

    folder = tmp_path / "f"
    folder.mkdir()
    model = folder / "lstm.safetensors"
    shutil.copy(samples["lstm"], model)
    before = sha256(model)
    with pytest.raises(OutputError) as e:
        lstm.pytorch_roundtrip(str(model), folder=str(folder), overwrite=True)
    assert str(e.value) == (f"{model}: this is the input {model}; write the output to another "
                            "path (surgery never writes over its input)")
    assert sha256(model) == before


# ---------------------------------------------------------------- 2. the demo

def demo(out_dir, *extra):
    return run("demo", "--out", out_dir, "--seeds", "1", "--task", "cnn", *extra)


def test_demo_refuses_a_linked_summary(tmp_path):
    d1 = tmp_path / "d1"
    d1.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink("../victim.txt", d1 / "summary.json")
    code, out = demo(d1, "--overwrite")
    assert (code, out) == (2, "error: " + SYMLINK_LINE.format(path=d1 / "summary.json") + "\n")
    assert victim.read_text() == "precious\n" and os.listdir(d1) == ["summary.json"]


def test_demo_refuses_a_fifo_instead_of_blocking(tmp_path):
    os.mkfifo(tmp_path / "summary.json")
    code, out = demo(tmp_path, "--overwrite")
    assert (code, out) == (2, "error: " + FIFO_LINE.format(path=tmp_path / "summary.json")
                           + "\n")


def test_demo_needs_overwrite_to_replace_its_files(tmp_path):
    (tmp_path / "summary.json").write_text("{}\n")
    code, out = demo(tmp_path)
    assert (code, out) == (2, "error: " + EXISTS_LINE.format(path=tmp_path / "summary.json")
                           + "\n")
    assert (tmp_path / "summary.json").read_text() == "{}\n"
    assert os.listdir(tmp_path) == ["summary.json"]


@pytest.mark.parametrize("seeds", ["0", "-2"])
def test_demo_needs_a_seed(tmp_path, seeds):
    code, out = run("demo", "--out", tmp_path, "--seeds", seeds)
    assert (code, out) == (2, f"error: Invalid value for '--seeds': {seeds} is not in the "
                              "range 1<=x<=1000; see 'surgery demo --help'\n")
    assert os.listdir(tmp_path) == []


def test_demo_python_api_needs_a_seed():
    from surgery.recipes.demo import run_demo

    with pytest.raises(OptionError) as e:
        run_demo(None, seeds=())
    assert str(e.value) == "the demo needs at least one seed (--seeds 1 or more)"


def test_demo_never_writes_into_the_sample_models(tmp_path, monkeypatch):
    from surgery.recipes import demo as demo_module

    samples = tmp_path / "sample_models"  # a stand-in for the real folder the demo reads
    samples.mkdir()
    (samples / "cnn.keras").write_text("model\n")
    monkeypatch.setattr(demo_module, "SAMPLES", str(samples))
    with pytest.raises(OutputError) as e:
        demo_module.run_demo(str(samples), seeds=(0,), tasks_to_run=("cnn",), overwrite=True)
    path = samples / "cnn_transfer_seed0.keras"
    assert str(e.value) == (f"{path}: is inside the input folder {samples}; write the output "
                            "elsewhere (surgery never writes into its inputs)")
    assert os.listdir(samples) == ["cnn.keras"]


def test_demo_summary_writer(tmp_path):
    # reference: the dict itself, read back with the json module
    from surgery.recipes.demo import write_summary

    summary = {"tasks": {}, "runs": [], "seconds": 1.5, "setup": {"seeds": [0]}}
    path = tmp_path / "summary.json"
    path.write_text("old\n")
    with pytest.raises(OutputExists):
        write_summary(summary, str(tmp_path))
    assert path.read_text() == "old\n"
    assert write_summary(summary, str(tmp_path), overwrite=True) == str(path)
    assert json.loads(path.read_text()) == summary
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]  # no temporary file left


# ---------------------------------------------------------------- 3, 4, 6. finetune options

def test_an_output_inside_the_checkpoint_folder_is_refused(proj):
    ck = proj / "ck"
    metrics = ck / "metrics.json"
    refused(proj, ["--checkpoint", ck, "--overwrite", "--metrics-out", metrics],
            f"{metrics}: is inside the checkpoint folder {ck}, whose files are removed after "
            "the run; write it outside that folder")


def test_an_output_inside_the_default_checkpoint_folder_is_refused(proj):
    shutil.rmtree(proj / "ck")
    ck = proj / "out.keras.ckpt"
    ck.mkdir()  # an empty folder of that name, so the output's folder exists
    plot = ck / "state.json"
    refused(proj, ["--metrics-out", plot], f"{plot}: is inside the checkpoint folder {ck}, "
            "whose files are removed after the run; write it outside that folder")


def test_save_adapters_without_lora_rank_is_refused_before_training(proj):
    refused(proj, ["--save-adapters", proj / "a.npz"],
            "--save-adapters needs --lora-rank: there are no adapters to save")
    assert not (proj / "a.npz").exists()


@pytest.mark.parametrize("args,line", [
    (["--batch-size", "100000000000000000000"],
     "--batch-size must be at most 2,147,483,647, got 100,000,000,000,000,000,000"),
    (["--batch-size", str(2**31)], "--batch-size must be at most 2,147,483,647, got "
     "2,147,483,648"),
    (["--epochs", str(2**40)], "--epochs must be at most 2,147,483,647, got 1,099,511,627,776"),
])
def test_huge_counts_one_line(proj, args, line):
    shutil.rmtree(proj / "ck")
    refused(proj, args, line)
    assert not (proj / "out.keras.ckpt").exists()


def test_huge_batch_size_python_api(proj):
    # what a plan's finetune step calls
    model = surgery.load_model(str(proj / "m.keras"))
    with pytest.raises(OptionError) as e:
        surgery.finetune(model, str(proj / "d.npz"), batch_size=2**40, verbose=0)
    assert str(e.value) == ("--batch-size must be at most 2,147,483,647, got "
                            "1,099,511,627,776")


# ---------------------------------------------------------------- 5. checkpoint records

RECORDS = [
    ("records without keys", lambda s: s.update(epochs=[{"loss": "x"}, {"loss": "x"}]),
     "{ck}/state.json: record 1 of 'epochs' has 'epoch' null, expected 1; the checkpoint is "
     "damaged: start over with --overwrite (overwrite=True)"),
    ("records out of order", lambda s: s["epochs"][1].update(epoch=1),
     "{ck}/state.json: record 2 of 'epochs' has 'epoch' 1, expected 2; the checkpoint is "
     "damaged: start over with --overwrite (overwrite=True)"),
    ("record without loss", lambda s: s["epochs"][0].pop("loss"),
     "{ck}/state.json: record 1 of 'epochs' has no 'loss'; the checkpoint is damaged: start "
     "over with --overwrite (overwrite=True)"),
    ("loss a string", lambda s: s["epochs"][1].update(loss="x"),
     "{ck}/state.json: record 2 of 'epochs': 'loss' is str, expected a number; the "
     "checkpoint is damaged: start over with --overwrite (overwrite=True)"),
    ("best NaN", lambda s: s.update(best=math.nan),
     "{ck}/state.json: 'best' is nan, expected a finite number or null; the checkpoint is "
     "damaged: start over with --overwrite (overwrite=True)"),
    ("best infinite", lambda s: s.update(best=-math.inf),
     "{ck}/state.json: 'best' is -inf, expected a finite number or null; the checkpoint is "
     "damaged: start over with --overwrite (overwrite=True)"),
]


@pytest.mark.parametrize("name,change,line", RECORDS, ids=[r[0] for r in RECORDS])
def test_damaged_epoch_records_one_clear_line(proj, name, change, line):
    ck = proj / "ck"
    _state(ck, change)
    refused(proj, ["--checkpoint", ck, "--resume"], line.format(ck=ck))


def test_damaged_records_python_api(proj):
    ck = proj / "ck"
    _state(ck, lambda s: s.update(epochs=[{"loss": "x"}, {"loss": "x"}]))
    model = surgery.load_model(str(proj / "m.keras"))
    with pytest.raises(FormatError):
        surgery.finetune(model, str(proj / "d.npz"), epochs=3, batch_size=16, verbose=0,
                         checkpoint=str(ck), resume=True)


# ---------------------------------------------------------------- 6. recipe options

def test_cnn_channels_negative_channels(tmp_path):
    code, out = run("recipe", "run", "cnn-channels", "--set", "channels=-1", "-o",
                    tmp_path / "x.keras")
    assert (code, out) == (2, "error: cnn-channels: channels must be a whole number in "
                              "1..4096, got -1\n")
    assert os.listdir(tmp_path) == []


def test_cnn_channels_on_a_sequence_model(samples, tmp_path):
    import keras

    shape = tuple(keras.saving.load_model(samples["lstm"]).inputs[0].shape)  # plain Keras
    code, out = run("recipe", "run", "cnn-channels", "--model", samples["lstm"], "-o",
                    tmp_path / "x.keras")
    assert (code, out) == (2, f"error: {samples['lstm']}: its input has shape {shape}, not "
                              "(batch, height, width, channels); cnn-channels needs a 2D CNN "
                              "(use --model with an image model)\n")
    assert os.listdir(tmp_path) == []


def test_demo_refuses_a_new_folder_inside_the_sample_models(tmp_path, monkeypatch):
    # a folder that does not exist yet is created only once its files are allowed
    from surgery.recipes import demo as demo_module

    samples = tmp_path / "sample_models"
    samples.mkdir()
    monkeypatch.setattr(demo_module, "SAMPLES", str(samples))
    with pytest.raises(OutputError):
        demo_module.run_demo(str(samples / "new"), seeds=(0,), tasks_to_run=("cnn",))
    assert os.listdir(samples) == []
