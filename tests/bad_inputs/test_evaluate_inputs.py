"""Hostile and careless inputs of `surgery evaluate`, `surgery predict` and stored class names
(issue #18 items 1 and 2): one exact `SurgeryError` line, exit code 2, inputs unchanged,
nothing written."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.errors import FormatError, OptionError, OutputError, ShapeError
from surgery.io.classnames import MAX_METADATA_BYTES, class_names
from surgery.train.data import load_data
from tests.bad_inputs.files import one_error
from tests.conftest import leftovers, sha256

FIX = "re-save the model with surgery.save_model(model, path, class_names=[...])"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def with_metadata(src, dst, metadata: bytes) -> str:
    """A copy of the `.keras` archive `src` whose metadata.json is `metadata` (stored)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, metadata if name == "metadata.json" else zin.read(name))
    return str(dst)


def meta(names) -> bytes:
    return json.dumps({"keras_version": "3.15.1", "surgery": {"class_names": names}}).encode()


# the clean model's head ("head") has 2 units
HOSTILE = {
    "not_an_object": (b"[1, 2]", "metadata.json is list, not a JSON object; " + FIX),
    "surgery_not_an_object": (b'{"surgery": "x"}',
                              'metadata.json: "surgery" is str, not a JSON object; ' + FIX),
    "a_string": (meta("ab"), "metadata.json: class names must be a list of strings, not str; "
                 + FIX),
    "a_number_inside": (meta(["a", 5]), "metadata.json: class names: item 1 is int, not a "
                        "string; " + FIX),
    "empty": (meta([]), "metadata.json: class names are an empty list; give one name per "
              "class; " + FIX),
    "blank_name": (meta(["a", " "]), "metadata.json: class names: item 1 is empty; every class "
                   "needs a name; " + FIX),
    "duplicate": (meta(["a", "a"]), "metadata.json: class names: 'a' is both item 0 and item 1;"
                  " class names must differ; " + FIX),
    "too_many": (meta(["a", "b", "c"]), "metadata.json: class names: 3 names but the model's "
                 "head has 2 units; give 2 names; " + FIX),
    "too_long": (meta(["a", "x" * 1001]), "metadata.json: class names: item 1 has 1001 "
                 "characters, more than the 1000 allowed; " + FIX),
    "malformed": (b"{", "metadata.json: malformed JSON (Expecting property name enclosed in "
                  "double quotes: line 1 column 2 (char 1))"),
    "deep": (b"[" * 300 + b"]" * 300, "metadata.json: JSON nested deeper than 200 levels; "
             "refusing a config built to exhaust the parser"),
    "huge": (b" " * (MAX_METADATA_BYTES + 1) + b"{}", f"metadata.json declares "
             f"{MAX_METADATA_BYTES + 3} bytes, more than the {MAX_METADATA_BYTES} allowed; "
             + FIX),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_class_names_are_one_line_naming_the_file(clean, tmp_path, case):
    data, tail = HOSTILE[case]
    path = with_metadata(clean / "m.keras", tmp_path / "m.keras", data)
    with pytest.raises(FormatError) as e:
        class_names(path)
    assert str(e.value) == f"{path}: {tail}"
    before = sha256(path)
    one_error(run("inspect", path), f"{path}: {tail}")
    assert sha256(path) == before


def test_hostile_names_stop_predict_before_anything_is_written(clean, tmp_path):
    path = with_metadata(clean / "m.keras", tmp_path / "m.keras", meta(["a", 5]))
    np.savez(tmp_path / "x.npz", x=np.ones((3, 4), np.float32))
    one_error(run("predict", path, "--data", tmp_path / "x.npz", "-o", tmp_path / "p.csv"),
              f"{path}: metadata.json: class names: item 1 is int, not a string; {FIX}")
    assert sorted(os.listdir(tmp_path)) == ["m.keras", "x.npz"]


def test_names_with_control_characters_are_escaped_when_shown(clean, tmp_path):
    path = with_metadata(clean / "m.keras", tmp_path / "m.keras", meta(["a\x1b[2J", "b\nc"]))
    assert class_names(path) == ("a\x1b[2J", "b\nc")
    r = run("inspect", path)
    assert r.exit_code == 0 and r.output.splitlines()[1] == "classes: 0 a\\x1b[2J, 1 b\\nc"


def test_a_file_without_our_entry_has_no_class_names(clean):
    assert class_names(clean / "m.keras") is None


# ------------------------------------------------------------------ save_model's argument

@pytest.fixture(scope="module")
def small(keras):
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax",
                                                                    name="head")], name="small")


@pytest.mark.parametrize("names, tail", [
    (["a", "b", "c"], "class names: 3 names but the model's head has 2 units; give 2 names"),
    ("ab", "class names must be a list of strings, not str"),
    ([1, 2], "class names: item 0 is int, not a string"),
])
def test_save_model_refuses_class_names_that_dont_fit(small, tmp_path, names, tail):
    out = tmp_path / "m.keras"
    with pytest.raises(OptionError) as e:
        surgery.save_model(small, out, class_names=names)
    assert str(e.value) == f"{out}: {tail}"
    assert os.listdir(tmp_path) == []


def test_save_model_stores_class_names_in_keras_files_only(small, tmp_path):
    out = tmp_path / "m.h5"
    with pytest.raises(OptionError) as e:
        surgery.save_model(small, out, class_names=["a", "b"])
    assert str(e.value) == (f"{out}: class names are stored only in .keras files; save to a "
                            ".keras path or drop class_names")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ classes vs the head

@pytest.fixture(scope="module")
def models(keras, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    L = keras.layers
    image = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(2, 3, name="c1"),
                              L.GlobalAveragePooling2D(),
                              L.Dense(8, activation="softmax", name="head")], name="image")
    binary = keras.Sequential([keras.Input((3,)), L.Dense(1, activation="sigmoid",
                                                          name="out")], name="binary")
    regression = keras.Sequential([keras.Input((3,)), L.Dense(1, name="out")], name="reg")
    for name, m in (("image", image), ("binary", binary), ("reg", regression)):
        m.save(folder / f"{name}.keras")
    return {"image": (image, str(folder / "image.keras")),
            "binary": (binary, str(folder / "binary.keras")),
            "reg": (regression, str(folder / "reg.keras"))}


def image_folder(root, classes) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(root / c)
        for i in range(2):
            Image.fromarray((rng.uniform(size=(8, 8)) * 255).astype("uint8")).save(
                root / c / f"{i}.png")
    return str(root)


def test_three_class_folders_on_an_eight_unit_head(models, tmp_path):
    model, path = models["image"]
    folder = image_folder(tmp_path / "train", ("cat", "dog", "fox"))
    line = (f"{folder}: 3 classes (cat, dog, fox) but the model's head 'head' has 8 units; "
            "replace the head first: surgery head MODEL -o OUT --classes 3")
    with pytest.raises(ShapeError) as e:
        load_data(folder, model)
    assert str(e.value) == line
    before = sha256(folder)
    one_error(run("finetune", path, "--data", folder, "-o", tmp_path / "out.keras"), line)
    one_error(run("evaluate", path, "--data", folder, "--plot", tmp_path / "c.png"), line)
    assert sha256(folder) == before and sorted(os.listdir(tmp_path)) == ["train"]


def test_csv_class_names_on_one_sigmoid_unit(models, tmp_path):
    model, path = models["binary"]
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,c,label\n1,2,3,x\n4,5,6,y\n7,8,9,z\n")
    one_error(run("finetune", path, "--data", csv, "-o", tmp_path / "out.keras"),
              f"{csv}: 3 classes (x, y, z) but the model's head 'out' has 1 unit (2 classes); "
              "replace the head first: surgery head MODEL -o OUT --classes 3")
    csv.write_text("a,b,c,label\n1,2,3,x\n4,5,6,y\n")  # two names fit one sigmoid unit
    assert load_data(str(csv), model).classes == ("x", "y")


def test_evaluate_refuses_classes_the_model_does_not_know(small, tmp_path):
    path = surgery.save_model(small, tmp_path / "m.keras", class_names=["cat", "dog"])
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,c,d,label\n1,2,3,4,cat\n4,5,6,7,emu\n")
    one_error(run("evaluate", path, "--data", csv),
              f"{csv}: classes emu are not among the model's (cat, dog); evaluate on data with "
              "the model's classes")


def test_evaluate_needs_labels(models, tmp_path):
    _, path = models["binary"]
    np.savez(tmp_path / "x.npz", x=np.ones((3, 3), np.float32))
    one_error(run("evaluate", path, "--data", tmp_path / "x.npz"),
              f"{tmp_path}/x.npz: an .npz for training needs arrays 'x' and 'y'; it has x; save "
              "it with np.savez(path, x=..., y=...)")


def test_a_regression_head_has_no_confusion_plot(models, tmp_path):
    _, path = models["reg"]
    np.savez(tmp_path / "d.npz", x=np.ones((3, 3), np.float32), y=np.array([0.5, 1.5, 2.5],
                                                                          np.float32))
    one_error(run("evaluate", path, "--data", tmp_path / "d.npz", "--plot", tmp_path / "c.png"),
              f"{path}: a regression head has no confusion matrix; drop --plot")
    assert sorted(os.listdir(tmp_path)) == ["d.npz"]


# ------------------------------------------------------------------ predict's output

def test_predict_never_writes_over_its_data(models, tmp_path):
    _, path = models["binary"]
    for name in ("d.npz", "d.csv"):
        data = tmp_path / name
        if name.endswith(".npz"):
            np.savez(data, x=np.ones((3, 3), np.float32))
        else:
            data.write_text("a,b,c\n1,2,3\n")
        before = sha256(data)
        one_error(run("predict", path, "--data", data, "-o", data, "--overwrite"),
                  f"{data}: this is the input {data}; write the output to another path "
                  "(surgery never writes over its input)")
        assert sha256(data) == before
    assert sorted(os.listdir(tmp_path)) == ["d.csv", "d.npz"] and not leftovers(tmp_path)


def test_predict_output_kinds_and_existing_files(models, tmp_path):
    _, path = models["binary"]
    np.savez(tmp_path / "x.npz", x=np.ones((3, 3), np.float32))
    one_error(run("predict", path, "--data", tmp_path / "x.npz", "-o", tmp_path / "p.txt"),
              f"{tmp_path}/p.txt: predictions are written as .csv or .npz; give one of those "
              "names")
    (tmp_path / "p.csv").write_text("keep")
    one_error(run("predict", path, "--data", tmp_path / "x.npz", "-o", tmp_path / "p.csv"),
              f"{tmp_path}/p.csv: already exists; pass --overwrite (overwrite=True) to replace "
              "it")
    assert (tmp_path / "p.csv").read_text() == "keep"
    with pytest.raises(OutputError):
        from surgery.train.evaluate import write_predictions
        write_predictions(None, str(tmp_path / "p.json"))


# ------------------------------------------------------------------ an .npz's class_names

def test_npz_class_names_are_read_and_checked(models, tmp_path):
    model, path = models["binary"]
    x, y = np.ones((4, 3), np.float32), np.array([0, 1, 1, 0])
    np.savez(tmp_path / "ok.npz", x=x, y=y, class_names=np.array(["no", "yes"]))
    assert load_data(str(tmp_path / "ok.npz"), model).classes == ("no", "yes")
    cases = {
        "ints.npz": (np.array([0, 1]), "class_names is int64 (2,); it must be a 1-D array of "
                     "strings, one per class (np.savez(path, x=..., y=..., "
                     "class_names=np.array(['cat', 'dog'])))"),
        "twice.npz": (np.array(["a", "a"]), "class names: 'a' is both item 0 and item 1; class "
                      "names must differ"),
        "three.npz": (np.array(["a", "b", "c"]), "3 classes (a, b, c) but the model's head "
                      "'out' has 1 unit (2 classes); replace the head first: surgery head MODEL "
                      "-o OUT --classes 3"),
    }
    for name, (names, tail) in cases.items():
        np.savez(tmp_path / name, x=x, y=y, class_names=names)
        one_error(run("evaluate", path, "--data", tmp_path / name), f"{tmp_path}/{name}: {tail}")
