"""Broken or hostile sharded checkpoints (issue #21): a shard missing, a shard whose tensors
disagree with the index, two shards holding one tensor, an index naming files outside its
folder (``..``, an absolute path, a symbolic link), special files, damaged shards; an output
over a shard, and a sharded output. Each case: one exact `error:` line, exit 2, nothing
written (no output, no temporary file), the inputs unchanged. The references are the error
lines themselves and the sha256 of the input folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.errors import SurgeryError
from surgery.io.safetensors import write_safetensors
from tests.bad_inputs.files import one_error
from tests.conftest import ROOT, leftovers, sha256

AGAIN = "the index and its shards come from different saves; save or download them again"
S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
K0, K1 = "m_00000.weights.h5", "m_00001.weights.h5"


@pytest.fixture(scope="module")
def good(keras, tmp_path_factory):
    """A small model as the transplant target, its weights as a Hugging Face style sharded
    checkpoint (two shards) and as Keras sharded weights (fc's variables split over two
    shards)."""
    folder = tmp_path_factory.mktemp("good")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc"),
                              keras.layers.Dense(2, name="head")], name="small")
    model.save(folder / "target.keras")
    hf = folder / "hf"
    hf.mkdir()
    w = model.get_weights()
    write_safetensors({"fc/kernel": w[0], "fc/bias": w[1]}, str(hf / S1))
    write_safetensors({"head/kernel": w[2], "head/bias": w[3]}, str(hf / S2))
    (hf / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 92}, "weight_map": {
            "fc/bias": S1, "fc/kernel": S1, "head/bias": S2, "head/kernel": S2}}))
    ks = folder / "ks"
    ks.mkdir()
    model.save_weights(ks / "m.weights.json", max_shard_size=5e-8)
    index = json.loads((ks / "m.weights.json").read_text())["weight_map"]
    assert index == {"/layers/dense/vars": [K0, K1], "/layers/dense_1/vars": [K1]}, index
    return folder


@pytest.fixture
def case(good, tmp_path):
    """A fresh copy of the good files to break: (hf folder, keras folder, target, out)."""
    shutil.copytree(good / "hf", tmp_path / "hf")
    shutil.copytree(good / "ks", tmp_path / "ks")
    (tmp_path / "out").mkdir()
    return tmp_path / "hf", tmp_path / "ks", str(good / "target.keras"), tmp_path / "out"


def _index(folder, weight_map) -> str:
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return str(path)


def _keras_index(folder, weight_map) -> str:
    path = folder / "m.weights.json"
    path.write_text(json.dumps({"metadata": {"total_size": 92}, "weight_map": weight_map}))
    return str(path)


def _refused(index: str, target: str, out, line: str, folders=()) -> None:
    """`inspect`, `diff` and `transplant` each refuse `index` with `line`; nothing written,
    the inputs unchanged."""
    folders = [os.path.dirname(index), *map(str, folders)]
    before = [sha256(f) for f in folders]
    run = CliRunner().invoke
    extra = ["--source-architecture", target] if index.endswith(".weights.json") else []
    one_error(run(main, ["inspect", index]), line)
    one_error(run(main, ["diff", index, target]), line)
    one_error(run(main, ["transplant", index, target, "-o", str(out / "o.keras"), *extra]),
              line)
    assert [sha256(f) for f in folders] == before
    assert os.listdir(out) == [] and not leftovers(os.path.dirname(index))


# ------------------------------------------------------------------ Hugging Face index

def test_hf_shard_missing(case):
    hf, _, target, out = case
    os.remove(hf / S2)
    _refused(str(hf / "model.safetensors.index.json"), target, out,
             f"{hf}/model.safetensors.index.json: shard '{S2}' is missing from {hf}; put every "
             "shard the index names beside it")


def test_hf_shard_holds_a_tensor_the_index_does_not_list(case):
    hf, _, target, out = case
    with surgery.open_weights(str(hf / S2)) as w:
        part = {k: w[k] for k in w}
    write_safetensors({**part, "head/scale": np.ones(2, np.float32)}, str(hf / S2))
    _refused(str(hf / "model.safetensors.index.json"), target, out,
             f"{hf}/model.safetensors.index.json: shard {S2} holds tensor 'head/scale', which "
             f"the index does not list; {AGAIN}")


def test_hf_index_puts_a_tensor_in_a_shard_without_it(case):
    hf, _, target, out = case
    index = _index(hf, {"fc/bias": S1, "fc/kernel": S1, "head/bias": S2, "head/kernel": S2,
                        "head/scale": S2})
    _refused(index, target, out, f"{index}: the index puts tensor 'head/scale' in shard {S2}, "
             f"which does not hold it; {AGAIN}")


def test_hf_tensor_in_the_other_shard_than_the_index_says(case):
    hf, _, target, out = case
    index = _index(hf, {"fc/bias": S2, "fc/kernel": S1, "head/bias": S2, "head/kernel": S2})
    _refused(index, target, out, f"{index}: shard {S1} holds tensor 'fc/bias', which the index "
             f"puts in {S2}; {AGAIN}")


def test_hf_two_shards_hold_one_tensor(case):
    hf, _, target, out = case
    with surgery.open_weights(str(hf / S2)) as w:
        part = {k: w[k] for k in w}
    write_safetensors({**part, "fc/bias": np.zeros(3, np.float32)}, str(hf / S2))
    index = str(hf / "model.safetensors.index.json")
    _refused(index, target, out, f"{index}: tensor 'fc/bias' is in two shards, {S1} and {S2}; "
             "refusing an ambiguous checkpoint")


def test_hf_index_lists_a_tensor_twice(case):
    hf, _, target, out = case
    index = hf / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"fc/bias": "%s", "fc/kernel": "%s", "head/bias": "%s", '
                     '"head/kernel": "%s", "fc/bias": "%s"}}' % (S1, S1, S2, S2, S2))
    _refused(str(index), target, out, f"{index}: the index lists 'fc/bias' twice (in '{S1}' "
             f"and '{S2}'); refusing an ambiguous index")


@pytest.fixture
def outside(case):
    """A valid shard outside the index's folder: what a hostile index would make us read."""
    hf = case[0]
    (hf.parent / "outside").mkdir()
    shutil.copy(hf / S2, hf.parent / "outside" / S2)
    return hf.parent / "outside" / S2


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_hf_index_pointing_outside_its_folder(case, outside, how):
    hf, _, target, out = case
    index = str(hf / "model.safetensors.index.json")
    if how == "symlink":
        os.remove(hf / S2)
        os.symlink(os.path.join("..", "outside", S2), hf / S2)
        line = (f"{index}: shard '{S2}' leads through a symbolic link to "
                f"{os.path.realpath(outside)}, outside the index's folder; copy the shard "
                "files into the folder beside the index")
    else:
        name = f"../outside/{S2}" if how == "dotdot" else str(outside)
        index = _index(hf, {"fc/bias": S1, "fc/kernel": S1, "head/bias": name,
                            "head/kernel": name})
        why = "points outside the index's folder (..)" if how == "dotdot" else \
            "is an absolute path"
        line = (f"{index}: shard {name!r} {why}; an index may name only files in its own "
                "folder; refusing it")
    _refused(index, target, out, line, folders=[outside.parent])


def test_hf_shard_is_a_fifo(case):
    """Run in a subprocess: a regression would block on the FIFO forever."""
    hf, _, _, _ = case
    os.remove(hf / S2)
    os.mkfifo(hf / S2)
    index = str(hf / "model.safetensors.index.json")
    p = subprocess.run([sys.executable, "-c", "import sys; from cli import main; main()",
                        "inspect", index], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == (f"error: {index}: shard '{S2}' is a FIFO, not a regular file; pass "
                        "real shard files\n")


def test_hf_shard_damaged(case):
    hf, _, target, out = case
    data = (hf / S2).read_bytes()
    (hf / S2).write_bytes(data[:8] + b"{not json" + data[17:])
    _refused(str(hf / "model.safetensors.index.json"), target, out,
             f"{hf / S2}: safetensors header: malformed JSON (Expecting property name "
             "enclosed in double quotes: line 1 column 2 (char 1))")


@pytest.mark.parametrize("text, why", [
    ('{"metadata": {}}', 'not a sharded weights index (no "weight_map" object); pass the '
     "index file saved beside the shards"),
    ('{"weight_map": {}}', "the index's weight_map is empty; it names no weights"),
    ('{"weight_map": {"fc/bias": 3}}', "the index maps 'fc/bias' to 3, not a shard file "
     "name; refusing a malformed index"),
    ('{"weight_map": {"fc/bias": ["%s"]}}' % S1, f"the index maps 'fc/bias' to ['{S1}'], not "
     "a shard file name; refusing a malformed index"),
    ('{"metadata": 1, "weight_map": {"fc/bias": "%s"}}' % S1, "the index's \"metadata\" is "
     "not an object; refusing a malformed index"),
])
def test_hf_index_malformed(case, text, why):
    hf, _, target, out = case
    index = hf / "model.safetensors.index.json"
    index.write_text(text)
    _refused(str(index), target, out, f"{index}: {why}")


# ------------------------------------------------------------------ Keras .weights.json

def test_keras_shard_missing(case):
    _, ks, target, out = case
    os.remove(ks / K1)
    _refused(str(ks / "m.weights.json"), target, out, f"{ks}/m.weights.json: shard '{K1}' is "
             f"missing from {ks}; put every shard the index names beside it")


def test_keras_index_pointing_outside_its_folder(case):
    _, ks, target, out = case
    (ks.parent / "elsewhere").mkdir()
    shutil.copy(ks / K1, ks.parent / "elsewhere" / K1)
    index = _keras_index(ks, {"/layers/dense/vars": [K0, f"../elsewhere/{K1}"],
                              "/layers/dense_1/vars": [f"../elsewhere/{K1}"]})
    _refused(index, target, out, f"{index}: shard '../elsewhere/{K1}' points outside the "
             "index's folder (..); an index may name only files in its own folder; refusing "
             "it", folders=[ks.parent / "elsewhere"])


def test_keras_shard_symlink_leaving_the_folder(case):
    _, ks, target, out = case
    (ks.parent / "elsewhere").mkdir()
    os.rename(ks / K1, ks.parent / "elsewhere" / K1)
    os.symlink(ks.parent / "elsewhere" / K1, ks / K1)
    _refused(str(ks / "m.weights.json"), target, out,
             f"{ks}/m.weights.json: shard '{K1}' leads through a symbolic link to "
             f"{os.path.realpath(ks.parent / 'elsewhere' / K1)}, outside the index's folder; "
             "copy the shard files into the folder beside the index",
             folders=[ks.parent / "elsewhere"])


def test_keras_variable_in_two_shards(case):
    _, ks, target, out = case
    with h5py.File(ks / K0, "r") as h5:
        kernel = h5["layers/dense/vars/0"][()]
    with h5py.File(ks / K1, "a") as h5:
        h5["layers/dense/vars"].create_dataset("0", data=kernel + 1)
    _refused(str(ks / "m.weights.json"), target, out, f"{ks}/m.weights.json: "
             f"/layers/dense/vars/0 is in two shards, {K0} and {K1}; refusing ambiguous weights")


def test_keras_shard_holds_a_layer_the_index_does_not_list(case):
    _, ks, target, out = case
    index = _keras_index(ks, {"/layers/dense/vars": [K0, K1]})
    _refused(index, target, out, f"{index}: shard {K1} holds /layers/dense_1/vars, which the "
             f"index does not list there; {AGAIN}")


def test_keras_index_lists_a_layer_in_a_shard_without_it(case):
    _, ks, target, out = case
    index = _keras_index(ks, {"/layers/dense/vars": [K0, K1], "/layers/dense_1/vars": [K0, K1]})
    _refused(index, target, out, f"{index}: the index lists /layers/dense_1/vars in shard "
             f"{K0}, which holds no variables there; {AGAIN}")


def test_keras_shard_damaged(case):
    _, ks, target, out = case
    (ks / K1).write_bytes(b"not an HDF5 file at all" * 10)
    _refused(str(ks / "m.weights.json"), target, out,
             f"{ks / K1}: not a readable HDF5 file (Unable to synchronously open file (file "
             "signature not found)); check the path, or re-save the weights")


# ------------------------------------------------------------------ outputs

@pytest.mark.parametrize("kind", ["hf", "keras"])
def test_output_over_a_shard_is_refused(case, kind):
    hf, ks, target, _ = case
    index, shard = (str(hf / "model.safetensors.index.json"), str(hf / S2)) if kind == "hf" \
        else (str(ks / "m.weights.json"), str(ks / K1))
    before = sha256(os.path.dirname(index))
    r = CliRunner().invoke(main, ["transplant", index, target, "-o", shard, "--overwrite"])
    one_error(r, f"{shard}: this is the input {shard}; write the output to another path "
                 "(surgery never writes over its input)")
    assert sha256(os.path.dirname(index)) == before
    assert not leftovers(os.path.dirname(index))


SHARDED_OUT = {  # (CLI line, Python line) after "<path>: "; more in test_sharded_outputs.py
    "out.weights.json": (
        "sharded weights need a shard size; pass --max-shard-size (for example 2GB), or write "
        "one file instead", "sharded weights need a shard size; pass max_shard_size (for "
        "example 2GB), or write one file instead"),
    "model.safetensors.index.json": (
        "this command can't write that kind of sharded output; Hugging Face sharded "
        "checkpoints are written by surgery export --format torch (export_state_dict); for "
        "Keras shards name the output out.weights.json",) * 2}


@pytest.mark.parametrize("name", ["out.weights.json", "model.safetensors.index.json"])
def test_sharded_output_is_refused(keras, case, name):
    hf, _, target, out = case
    index = str(hf / "model.safetensors.index.json")
    r = CliRunner().invoke(main, ["transplant", index, target, "-o", str(out / name)])
    one_error(r, f"{out / name}: {SHARDED_OUT[name][0]}")
    with pytest.raises(SurgeryError) as e:
        surgery.save_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]),
                           str(out / name))
    assert str(e.value) == f"{out / name}: {SHARDED_OUT[name][1]}"
    assert os.listdir(out) == []


def test_sharded_weights_as_a_transplant_target_is_refused(case):
    hf, ks, _, out = case
    index = str(ks / "m.weights.json")
    r = CliRunner().invoke(main, ["transplant", str(hf / "model.safetensors.index.json"), index,
                                  "-o", str(out / "o.keras")])
    one_error(r, f"{index}: a .weights.json file holds no architecture; load the .keras model "
                 "and call model.load_weights() or surgery.transplant")
    assert os.listdir(out) == []
