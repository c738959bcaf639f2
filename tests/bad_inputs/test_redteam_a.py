"""Red-team findings (wave 2, list A): stale-file cleaning that deleted inputs and user folders,
export --overwrite deleting user files in subfolders, vocabulary files named by rules (hangs,
overwrites), the checked inputs .npz reader, --atol inf, and probes of a huge declared input."""

from __future__ import annotations

import os
import shutil
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from surgery.errors import InputError, OutputError
from surgery.io.atomic import check_output_dir, clean_stale
from tests.conftest import sha256

DEAD = 999999  # no process has this pid (pid_max is at most 4194304, and it is free here)


def _dead_pid():
    pid = DEAD
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


# ------------------------------------------------------------------ 1. clean_stale

def test_clean_stale_keeps_an_input_named_like_a_temporary(tmp_path, samples):
    pid = _dead_pid()
    inp = tmp_path / f".vv.keras.surgery-tmp-{pid}-abcdefgh.keras"
    shutil.copy(samples["cnn"], inp)
    before = sha256(str(inp))
    r = CliRunner().invoke(main, ["freeze", str(inp), "-o", str(tmp_path / "vv.keras"),
                                  "--except", "head"])
    assert inp.exists() and sha256(str(inp)) == before, r.output
    assert r.exit_code == 0, r.output
    # the same name, not an input, is a stale file of a killed write and goes
    assert clean_stale(str(tmp_path / "vv.keras")) == [inp.name]


def test_clean_stale_removes_only_the_exact_temporary_names(tmp_path):
    pid = _dead_pid()
    target = str(tmp_path / "vv2.keras")
    user_dir = tmp_path / f".vv2.keras.surgery-tmp-{pid}-mydata"
    user_dir.mkdir()
    (user_dir / "data.txt").write_text("mine")
    same_shape_dir = tmp_path / f".vv2.keras.surgery-tmp-{pid}-abcdefgh"  # a folder: not ours
    same_shape_dir.mkdir()
    prefix_only = tmp_path / f".vv2.keras.surgery-tmp-{pid}-abcdefgh.keras.bak"
    prefix_only.write_text("x")
    wrong_suffix = tmp_path / f".vv2.keras.surgery-tmp-{pid}-abcdefgh.h5"
    wrong_suffix.write_text("x")
    stale = tmp_path / f".vv2.keras.surgery-tmp-{pid}-a1_b2c3d.keras"
    stale.write_text("x")
    assert clean_stale(target) == [stale.name]
    assert sorted(os.listdir(tmp_path)) == sorted(
        [user_dir.name, same_shape_dir.name, prefix_only.name, wrong_suffix.name])
    assert (user_dir / "data.txt").read_text() == "mine"
    # a folder target removes stale folders of its own exact pattern only, never files
    export_stale = tmp_path / f".e1.surgery-tmp-{pid}-zz9_zz9z"
    export_stale.mkdir()
    (tmp_path / f".e1.surgery-tmp-{pid}-zz9_zz9y").write_text("a file")
    assert clean_stale(str(tmp_path / "e1"), folder=True) == [export_stale.name]


def test_freeze_keeps_a_user_folder_named_like_a_temporary(tmp_path, samples):
    pid = _dead_pid()
    user_dir = tmp_path / f".vv2.keras.surgery-tmp-{pid}-mydata"
    user_dir.mkdir()
    (user_dir / "data.txt").write_text("mine")
    r = CliRunner().invoke(main, ["freeze", samples["cnn"], "-o", str(tmp_path / "vv2.keras"),
                                  "--except", "head"])
    assert r.exit_code == 0, r.output
    assert (user_dir / "data.txt").read_text() == "mine"


# ------------------------------------------------------------------ 2. export --overwrite

def _fake_export(path):
    (path / "variables").mkdir(parents=True)
    (path / "assets").mkdir()
    (path / "saved_model.pb").write_bytes(b"pb")
    (path / "fingerprint.pb").write_bytes(b"fp")
    (path / "variables" / "variables.index").write_bytes(b"i")
    (path / "variables" / "variables.data-00000-of-00001").write_bytes(b"d")


def test_export_overwrite_refuses_user_files_in_subfolders(tmp_path):
    e1 = tmp_path / "e1"
    _fake_export(e1)
    assert check_output_dir(str(e1), overwrite=True) == str(e1)  # a plain export: replaceable
    (e1 / "assets" / "notes.txt").write_text("notes")
    (e1 / "variables" / "mine.txt").write_text("keep")
    with pytest.raises(OutputError) as e:
        check_output_dir(str(e1), overwrite=True)
    assert str(e.value) == (f"{e1}: is a folder surgery did not export (it holds "
                            "assets/notes.txt, variables/mine.txt); --overwrite replaces only "
                            "an earlier export, so give another path")
    r = CliRunner().invoke(main, ["export", "--help"])
    assert r.exit_code == 0
    assert (e1 / "assets" / "notes.txt").read_text() == "notes"
    assert (e1 / "variables" / "mine.txt").read_text() == "keep"


def test_export_overwrite_refuses_a_link_in_variables(tmp_path):
    e1 = tmp_path / "e1"
    _fake_export(e1)
    os.symlink(tmp_path, e1 / "variables" / "variables.data-00001-of-00002")
    with pytest.raises(OutputError) as e:
        check_output_dir(str(e1), overwrite=True)
    assert str(e.value) == (f"{e1}: is a folder surgery did not export (it holds "
                            "variables/variables.data-00001-of-00002); --overwrite replaces "
                            "only an earlier export, so give another path")


# ------------------------------------------------------------------ 3. vocabulary files

def _vocab_rules(tmp_path, old, new):
    rules = tmp_path / "vok.toml"
    rules.write_text(f'[[adapter]]\ntarget = "embed/embeddings"\nname = "remap_rows"\n'
                     f'old_vocab = "{old}"\nnew_vocab = "{new}"\n')
    return str(rules)


def test_transplant_refuses_to_overwrite_a_vocabulary_file(tmp_path, samples):
    old, new = tmp_path / "old.txt", tmp_path / "new_vocab.txt"
    old.write_text("\n".join(f"t{i}" for i in range(64)) + "\n")
    new.write_text("\n".join(f"t{i}" for i in reversed(range(64))) + "\n")
    before = sha256(str(new))
    rules = _vocab_rules(tmp_path, old, new)
    r = CliRunner().invoke(main, ["transplant", samples["lstm"], samples["lstm"], "-o",
                                  str(new), "--rules", rules, "--overwrite"])
    assert r.exit_code == 2
    assert r.output == (f"error: {new}: this is the input {new}; write the output to another "
                        "path (surgery never writes over its input)\n")
    assert sha256(str(new)) == before


def test_transplant_file_counts_vocabulary_files_as_inputs(tmp_path, samples):
    import surgery

    old, new = tmp_path / "old.txt", tmp_path / "new_vocab.txt"
    old.write_text("\n".join(f"t{i}" for i in range(64)) + "\n")
    new.write_text("\n".join(f"t{i}" for i in reversed(range(64))) + "\n")
    before = sha256(str(new))
    with pytest.raises(OutputError) as e:
        surgery.transplant_file(samples["lstm"], samples["lstm"], str(new),
                                _vocab_rules(tmp_path, old, new), overwrite=True)
    assert str(e.value) == (f"{new}: this is the input {new}; write the output to another "
                            "path (surgery never writes over its input)")
    assert sha256(str(new)) == before


def test_transplant_refuses_a_fifo_vocabulary(tmp_path, samples):
    old, fifo = tmp_path / "old.txt", tmp_path / "fifo"
    old.write_text("\n".join(f"t{i}" for i in range(64)) + "\n")
    os.mkfifo(fifo)
    rules = _vocab_rules(tmp_path, old, fifo)
    r = CliRunner().invoke(main, ["transplant", samples["lstm"], samples["lstm"], "-o",
                                  str(tmp_path / "out.keras"), "--rules", rules])
    assert r.exit_code == 2
    assert r.output == (f"error: {fifo}: is a FIFO, not a regular file; pass the new_vocab "
                        "file as a regular file\n")
    assert not (tmp_path / "out.keras").exists()


def test_rules_list_their_files(tmp_path):
    from surgery.transfer.rules import load_rules

    rules = load_rules(_vocab_rules(tmp_path, "a.txt", "b.txt"))
    assert sorted(rules.files()) == ["a.txt", "b.txt"]
    assert load_rules({"adapter": [{"target": "x", "name": "remap_rows",
                                    "old_vocab": ["a"], "new_vocab": "v.txt"}]}).files() \
        == ("v.txt",)


# ------------------------------------------------------------------ 4. the inputs .npz

def _huge_shape_npz(path):
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, "float32"))
    header["shape"] = (10 ** 6, 10 ** 6, 3)
    with zipfile.ZipFile(path, "w") as zf, zf.open("x.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)


@pytest.mark.parametrize("case", ["huge", "bomb", "truncated", "complex", "nan", "fifo", "dir"])
def test_verify_inputs_file_is_checked(tmp_path, samples, case):
    import surgery

    model = surgery.load_model(samples["cnn"])
    path = tmp_path / "x.npz"
    shape = (2,) + tuple(model.inputs[0].shape)[1:]
    if case == "huge":
        _huge_shape_npz(path)
        want = (f"{path}: x.npy: declares shape (1000000, 1000000, 3) of float32 "
                "(12000000000000 bytes) but stores 64 bytes; the file is truncated or hostile")
    elif case == "bomb":
        np.savez_compressed(path, x=np.zeros(25_000_000, "uint8"))
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("x.npy")
        want = (f"{path}: zip member 'x.npy' declares {info.file_size} bytes but stores "
                f"{info.compress_size}; refusing a zip bomb")
    elif case == "truncated":
        np.savez(path, x=np.zeros(shape, "float32"))
        path.write_bytes(path.read_bytes()[:200])
        want = (f"{path}: truncated or damaged zip archive (File is not a zip file); re-save it "
                "or use an intact copy")
    elif case == "complex":
        np.savez(path, x=np.zeros(shape, "complex64"))
        want = (f"{path}: input 'x' holds complex numbers (complex64); give real-valued "
                "arrays")
    elif case == "nan":
        np.savez(path, x=np.full(shape, np.nan, "float32"))
        n = int(np.prod(shape))
        want = (f"{path}: input 'input_layer' holds {n} NaN or infinite values of {n}; give "
                "finite inputs (they can't be compared)")
    elif case == "fifo":
        os.mkfifo(path)
        want = (f"{path}: not a regular file (a FIFO, device or directory); pass a zip archive "
                "file")
    else:
        path.mkdir()
        want = (f"{path}: not a regular file (a FIFO, device or directory); pass a zip archive "
                "file")
    with pytest.raises(surgery.SurgeryError) as e:
        surgery.verify(model, model, str(path))
    if case == "nan":
        want = want.replace("input_layer", surgery.model.verify._input_names(model)[0])
    assert want in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert str(e.value) == want


# ------------------------------------------------------------------ 5. --atol

@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
@pytest.mark.parametrize("cmd", [["transplant", "{m}", "{m}", "-o", "{o}"],
                                 ["edit", "delete-channels", "{m}", "-o", "{o}", "--layer",
                                  "block1_conv"],
                                 ["convert", "{m}", "-o", "{o}"]])
def test_atol_must_be_finite_and_not_negative(tmp_path, samples, cmd, value):
    args = [a.format(m=samples["cnn"], o=tmp_path / "o.keras") for a in cmd]
    r = CliRunner().invoke(main, [*args, "--atol", value])
    assert r.exit_code == 2, r.output
    shown = {"inf": "inf", "nan": "nan", "-1": "-1.0"}[value]
    assert r.output.startswith(f"error: Invalid value for '--atol': {shown} is not a finite "
                               "number >= 0; give a tolerance such as 1e-5; see 'surgery "), \
        r.output
    assert r.output.count("\n") == 1 and os.listdir(tmp_path) == []


# ------------------------------------------------------------------ 6. huge declared inputs

def test_verify_refuses_probes_of_a_huge_declared_input(keras):
    import surgery

    x = keras.Input(batch_shape=(None, 30000, 30000, 3))
    model = keras.Model(x, keras.layers.GlobalAveragePooling2D()(x), name="big")
    with pytest.raises(InputError) as e:
        surgery.verify(model, model)
    assert str(e.value) == ("verify: big declares inputs of shape (None, 30000, 30000, 3); a "
                            "batch of 8 random probes would take 80.5 GiB (more than 256 MiB); "
                            "give your own smaller inputs with --inputs (inputs=)")


def test_probes_are_float32_and_the_same_values(keras):
    from surgery.model.verify import probe_inputs

    x = keras.Input((5, 7))
    model = keras.Model(x, keras.layers.Dense(2)(x))
    got = probe_inputs(model, batch=3, seed=4, family="normal")[0]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(
        got, np.random.default_rng(4).normal(size=(3, 5, 7)).astype("float32"))
    got = probe_inputs(model, batch=3, seed=4, family="uniform")[0]
    np.testing.assert_array_equal(
        got, np.random.default_rng([4, 1]).uniform(size=(3, 5, 7)).astype("float32"))
