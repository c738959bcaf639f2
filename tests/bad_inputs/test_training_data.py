"""Hostile and careless training data for `surgery finetune --data/--val` (issue #22).

Each case is built here and checked through the Python API (`load_data`, the loader behind
`surgery.finetune`) and through the CLI (`surgery finetune`, in-process): one exact
`SurgeryError` line of a specific class, exit code 2, every file in the folder (the data
included) unchanged, no output and no temporary file. Cases that used to hang (FIFOs, a class
folder linked to `/`) run under an alarm, so a regression fails instead of hanging. The loaders
that must still work are compared with independent references: hand-written arrays, and
`keras.utils.image_dataset_from_directory` for image folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import stat
import struct
import zipfile
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from surgery.train import data_safety
from surgery.train.data import load_data
from surgery.errors import FormatError, InputError, ShapeError
from tests.conftest import leftovers



@pytest.fixture(scope="module")
def models(keras, tmp_path_factory):
    """A table model (3 features -> 2 classes) and an image model (8x8x1 -> 2), saved for the
    CLI in a folder of their own (so the data folders hold only data)."""
    folder = tmp_path_factory.mktemp("models")
    L = keras.layers
    table = keras.Sequential([keras.Input((3,)), L.Dense(2, activation="softmax", name="head")],
                             name="table")
    image = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(2, 3, name="c1"),
                              L.GlobalAveragePooling2D(),
                              L.Dense(2, activation="softmax", name="head")], name="image")
    table.save(folder / "table.keras")
    image.save(folder / "image.keras")
    return {"table": (table, str(folder / "table.keras")),
            "image": (image, str(folder / "image.keras"))}


@contextlib.contextmanager
def deadline(seconds: int = 20):
    """Turns a hang into a test failure."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def snapshot(folder) -> dict[str, str]:
    """Every entry under `folder` (links not followed): file bytes, link targets, kinds."""
    out = {}
    for here, dirs, files in os.walk(folder):
        for name in dirs + files:
            full = os.path.join(here, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[full] = "link:" + os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    out[full] = hashlib.sha256(f.read()).hexdigest()
            else:
                out[full] = f"mode:{stat.S_IFMT(st.st_mode)}"
    return out


# ------------------------------------------------------------------ file builders

GOOD_CSV = "a,b,c,label\n1,2,3,0\n4,5,6,1\n7,8,9,0\n"


def write(path, data) -> str:
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return str(path)


def npy_bytes(shape, descr="<f4", body=b"") -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False,
                                             "shape": shape})
    return f.getvalue() + body


def png(width: int, height: int, pixels: bytes | None = None) -> bytes:
    """A grayscale PNG; with `pixels` None only the header (a decompression-bomb claim)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                                0, 0, 0))
    if pixels is None:
        return head + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    rows = b"".join(b"\0" + pixels[r * width:(r + 1) * width] for r in range(height))
    return head + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def image_folder(root, classes=("a", "b"), n=2) -> str:
    r = np.random.default_rng(0)
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(n):
            write(root / c / f"{i}.png", png(10, 12, r.integers(0, 256, 120, np.uint8).tobytes()))
    return str(root)


def zip_bomb(path) -> str:
    """x.npy: 24 MB of zeros deflated to ~24 KB (a ratio above the 1000 weights may have;
    the issue's 3.3 MB file declared 3.4 GB the same way)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            rows = 24_000_000 // 12
            f.write(npy_bytes((rows, 3)))
            block = b"\0" * (1 << 22)
            left = rows * 12
            while left:
                f.write(block[:min(left, len(block))])
                left -= min(left, len(block))
        z.writestr("y.npy", npy_bytes((rows,), "<i8"))  # never reached
    return str(path)


def declared_3e9(path) -> str:
    """~250 bytes: x and y declare 3 billion float32 elements each and store 16 bytes."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", npy_bytes((3_000_000_000,), body=b"\0" * 16))
        z.writestr("y.npy", npy_bytes((3_000_000_000,), body=b"\0" * 16))
    return str(path)


def tfdata(path, corrupt: str) -> str:
    import tensorflow as tf
    x = np.arange(24, dtype="float32").reshape(8, 3)
    tf.data.Dataset.from_tensor_slices((x, np.arange(8) % 2)).save(str(path))
    if corrupt == "spec":
        write(path / "dataset_spec.pb", b"\xff\xfe not a protobuf")
    else:
        shard = next(os.path.join(h, n) for h, _, fs in os.walk(path) for n in fs
                     if n.endswith(".snapshot"))
        write(shard, b"\0" * os.path.getsize(shard))
    return str(path)


# Each case: (model, build(d) -> (data, val), error class, expected message(d, data, val)).
# `val` set: the case is the --val data, with good training data.
CASES = {
    "fifo_csv": ("table", lambda d: (os.mkfifo(d / "x.csv") or str(d / "x.csv"), None),
                 InputError, "{data}: is a FIFO, not a data file or folder; surgery reads "
                 "training data only from regular files and folders"),
    "fifo_npz": ("table", lambda d: (os.mkfifo(d / "x.npz") or str(d / "x.npz"), None),
                 InputError, "{data}: is a FIFO, not a data file or folder; surgery reads "
                 "training data only from regular files and folders"),
    "fifo_val": ("table", lambda d: (write(d / "t.csv", GOOD_CSV),
                                     os.mkfifo(d / "v.csv") or str(d / "v.csv")),
                 InputError, "{val}: is a FIFO, not a data file or folder; surgery reads "
                 "training data only from regular files and folders"),
    "dev_zero": ("table", lambda d: ("/dev/zero", None),
                 InputError, "/dev/zero: is a character device, not a data file or folder; "
                 "surgery reads training data only from regular files and folders"),
    "dev_zero_link": ("table", lambda d: (os.symlink("/dev/zero", d / "z.npz") or
                                          str(d / "z.npz"), None),
                      InputError, "{data}: is a character device, not a data file or folder; "
                      "surgery reads training data only from regular files and folders"),
    "class_link_to_root": ("image", lambda d: (image_folder(d / "img") and
                                               os.symlink("/", d / "img" / "evil") or
                                               str(d / "img"), None),
                           InputError, "{data}/evil: a symbolic link to /, outside the data "
                           "folder {data}; surgery follows links only inside the data folder "
                           "(copy the files in instead)"),
    "image_link_out": ("image", lambda d: (image_folder(d / "img") and
                                           os.symlink(write(d / "out.png", png(2, 2, b"1234")),
                                                      d / "img" / "a" / "9.png") or
                                           str(d / "img"), None),
                       InputError, "{data}/a/9.png: a symbolic link to {d}/out.png, outside "
                       "the data folder {data}; surgery follows links only inside the data "
                       "folder (copy the files in instead)"),
    "fifo_image": ("image", lambda d: (image_folder(d / "img") and
                                       os.mkfifo(d / "img" / "b" / "9.png") or
                                       str(d / "img"), None),
                   InputError, "{data}/b/9.png: is a FIFO, not a regular file; remove it from "
                   "the data folder"),
    "zip_bomb_npz": ("table", lambda d: (zip_bomb(d / "bomb.npz"), None),
                     FormatError, "{data}: zip member 'x.npy' declares {zip.file_size} bytes "
                     "but stores {zip.compress_size}; refusing a zip bomb"),
    "declared_3e9_npz": ("table", lambda d: (declared_3e9(d / "tiny.npz"), None),
                         FormatError, "{data}: x.npy: declares shape (3000000000,) of float32 "
                         "(12000000000 bytes) but stores 16 bytes; the file is truncated or "
                         "hostile"),
    "png_bomb": ("image", lambda d: (image_folder(d / "img") and
                                     write(d / "img" / "a" / "big.png", png(60000, 60000)) and
                                     str(d / "img"), None),
                 FormatError, "{data}/a/big.png: declares 3600000000 pixels, more than the "
                 "67108864 allowed for one image; refusing to decode it (resize it first)"),
    "nan_csv": ("table", lambda d: (write(d / "t.csv", "a,b,c,label\n1,2,3,0\n4,nan,6,1\n"),
                                    None),
                FormatError, "{data}: line 3, column 'b': 'nan' is not a finite float32 number "
                "(NaN, Inf or too large); fix or drop that row"),
    "inf_csv": ("table", lambda d: (write(d / "t.csv", "a,b,c,label\n1,2,-inf,0\n"), None),
                FormatError, "{data}: line 2, column 'c': '-inf' is not a finite float32 "
                "number (NaN, Inf or too large); fix or drop that row"),
    "overflow_csv": ("table", lambda d: (write(d / "t.csv", "a,b,c,label\n1e39,2,3,0\n"), None),
                     FormatError, "{data}: line 2, column 'a': '1e39' is not a finite float32 "
                     "number (NaN, Inf or too large); fix or drop that row"),
    "nan_label_csv": ("table", lambda d: (write(d / "t.csv", "a,b,c,label\n1,2,3,0\n1,2,3,nan\n"),
                                          None),
                      FormatError, "{data}: line 3, column 'label': 'nan' is not a finite "
                      "number; fix or drop that row"),
    "nan_npz": ("table", lambda d: (np.savez(d / "d.npz", x=np.array([[1, 2, 3], [4, 5, np.nan]]),
                                             y=np.array([0, 1])) or str(d / "d.npz"), None),
                FormatError, "{data}: x[1, 2] is nan; training data must be finite (no NaN or "
                "Inf); fix or drop sample 1"),
    "inf_val_npz": ("table", lambda d: (write(d / "t.csv", GOOD_CSV),
                                        np.savez(d / "v.npz", x=np.zeros((2, 3)),
                                                 y=np.array([0.0, np.inf])) or str(d / "v.npz")),
                    FormatError, "{val}: y[1] is inf; training data must be finite (no NaN or "
                    "Inf); fix or drop sample 1"),
    "empty_csv": ("table", lambda d: (write(d / "t.csv", ""), None),
                  FormatError, "{data}: empty CSV file; it needs a header row naming the columns "
                  "and one row per sample"),
    "header_only_csv": ("table", lambda d: (write(d / "t.csv", "a,b,c,label\n"), None),
                        FormatError, "{data}: a CSV with a header and no rows; add one row per "
                        "sample"),
    "ragged_csv": ("table", lambda d: (write(d / "t.csv", "a,b,c,label\n1,2,3,0\n1,2,0\n"), None),
                   FormatError, "{data}: line 3 has 3 fields but the header has 4; fix that row"),
    "non_numeric_csv": ("table", lambda d: (write(d / "t.csv", "a,b,c,label\n1,x,3,0\n"), None),
                        FormatError, "{data}: line 2, column 'b': 'x' is not a number; every "
                        "column but the label must be numeric (name the label column with "
                        "--label)"),
    "empty_cell_csv": ("table", lambda d: (write(d / "t.csv", "a,b,c,label\n1,2,,0\n"), None),
                       FormatError, "{data}: line 2, column 'c': '' is not a number; every "
                       "column but the label must be numeric (name the label column with "
                       "--label)"),
    "no_label_column": ("table", lambda d: (write(d / "t.csv", "a,b,c,target\n1,2,3,0\n"), None),
                        FormatError, "{data}: no label column 'label'; columns: a, b, c, "
                        "target; name one with --label"),
    "mixed_labels": ("table", lambda d: (write(d / "t.csv", "a,b,c,label\n1,2,3,0\n1,2,3,cat\n"),
                                         None),
                     FormatError, "{data}: line 3, column 'label': 'cat' breaks the column's "
                     "kind: earlier labels are numbers; labels must be all numbers or all "
                     "class names"),
    "empty_label": ("table", lambda d: (write(d / "t.csv", "a,b,c,label\n1,2,3,cat\n1,2,3,\n"),
                                        None),
                    FormatError, "{data}: line 3, column 'label': '' is empty; every row needs "
                    "a label"),
    "not_utf8_csv": ("table", lambda d: (write(d / "t.csv", b"a,b,c,label\n1,2,3,0\n1,2,3,\xe9\n"),
                                         None),
                     FormatError, "{data}: line 3: not UTF-8 text (invalid continuation byte "
                     "at byte 6 of the line); save the file as UTF-8"),
    "nul_csv": ("table", lambda d: (write(d / "t.csv", "a,b,c,label\n1,2\x00,3,0\n"), None),
                FormatError, "{data}: line 2, column 'b': '2\\x00' is not a number; every "
                "column but the label must be numeric (name the label column with --label)"),
    "npz_without_xy": ("table", lambda d: (np.savez(d / "d.npz", features=np.zeros((2, 3))) or
                                           str(d / "d.npz"), None),
                       FormatError, "{data}: an .npz for training needs arrays 'x' and 'y'; it "
                       "has features; save it with np.savez(path, x=..., y=...)"),
    "npz_x_val_only": ("table", lambda d: (np.savez(d / "d.npz", x=np.zeros((2, 3)),
                                                    y=np.zeros(2, int), x_val=np.zeros((1, 3)))
                                           or str(d / "d.npz"), None),
                       FormatError, "{data}: has x_val but no y_val; validation data needs both "
                       "(or neither)"),
    "npz_length_mismatch": ("table", lambda d: (np.savez(d / "d.npz", x=np.zeros((3, 3)),
                                                         y=np.zeros(2, int)) or
                                                str(d / "d.npz"), None),
                            ShapeError, "{data}: x has 3 samples but y has 2; give one label "
                            "per sample"),
    "npz_object_array": ("table", lambda d: (np.savez(d / "d.npz", x=np.array([[1, "a", None]],
                                                                              object),
                                                      y=np.zeros(1, int)) or
                                             str(d / "d.npz"), None),
                         FormatError, "{data}: x.npy: holds Python objects (pickles); refusing "
                         "to load them"),
    "npz_string_labels": ("table", lambda d: (np.savez(d / "d.npz", x=np.zeros((2, 3)),
                                                       y=np.array(["cat", "dog"])) or
                                              str(d / "d.npz"), None),
                          FormatError, "{data}: y holds <U3 values; labels must be numbers "
                          "(class indices 0..N-1, one-hot rows or targets); map class names to "
                          "indices first"),
    "npz_complex_x": ("table", lambda d: (np.savez(d / "d.npz", x=np.zeros((2, 3), complex),
                                                   y=np.zeros(2, int)) or str(d / "d.npz"),
                                          None),
                      FormatError, "{data}: x holds complex128 values; training data must be "
                      "numbers (bool, int or float); convert it first"),
    "npz_scalar_x": ("table", lambda d: (np.savez(d / "d.npz", x=np.float32(1),
                                                  y=np.zeros(1, int)) or str(d / "d.npz"), None),
                     FormatError, "{data}: x is a scalar; it needs one entry per sample (shape "
                     "(samples, ...))"),
    "npz_one_hot_width": ("table", lambda d: (np.savez(d / "d.npz", x=np.zeros((2, 3)),
                                                       y=np.eye(5)[:2]) or str(d / "d.npz"),
                                              None),
                          ShapeError, "{data}: y rows have shape (5,) but the model's output is "
                          "(2,); give class indices, or rows shaped like the output"),
    "not_an_npz": ("table", lambda d: (write(d / "d.npz", b"\x93NUMPY not a zip"), None),
                   FormatError, "{data}: not a zip archive (not a zip file); check the path, or "
                   "re-save it"),
    "no_images": ("image", lambda d: (os.makedirs(d / "img" / "a") or
                                      write(d / "img" / "a" / "notes.txt", "x") and
                                      str(d / "img"), None),
                  InputError, "{data}: no images found (an image folder needs one subfolder per "
                  "class holding .png/.jpg/.jpeg/.bmp/.gif files)"),
    "not_an_image": ("image", lambda d: (image_folder(d / "img") and
                                         write(d / "img" / "b" / "1.png", "not a png") and
                                         str(d / "img"), None),
                     FormatError, "{data}/b/1.png: not a readable PNG, JPEG, GIF or BMP image; "
                     "replace or remove it"),
    "truncated_image": ("image", lambda d: (image_folder(d / "img") and
                                            write(d / "img" / "a" / "0.png",
                                                  png(10, 12, bytes(120))[:60]) and
                                            str(d / "img"), None),
                        FormatError, "{data}/a/0.png: not a readable image (Invalid PNG data, "
                        "size 60); replace or remove it"),
    "tfdata_corrupt_spec": ("table", lambda d: (tfdata(d / "ds", "spec"), None),
                            FormatError, "{data}: can't load the saved tf.data dataset "
                            "(DecodeError: Error parsing message with type "
                            "'tensorflow.StructuredValue': Wire format was corrupt); re-save it "
                            "with tf.data.Dataset.save, or use an intact copy"),
    "tfdata_corrupt_shard": ("table", lambda d: (tfdata(d / "ds", "shard"), None),
                             FormatError, "{data}: damaged saved tf.data dataset (DataLossError: "
                             "corrupted record at 0 (Is this even a TFRecord file?) name:); "
                             "re-save it with tf.data.Dataset.save, or use an intact copy"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_training_data_is_refused(case, models, tmp_path):
    kind, build, cls, template = CASES[case]
    model, model_path = models[kind]
    d = tmp_path / "data"
    d.mkdir()
    data, val = build(d)
    member = None
    if case == "zip_bomb_npz":  # the sizes zlib gives, read back with zipfile
        with zipfile.ZipFile(data) as z:
            member = z.getinfo("x.npy")
    message = template.format(d=d, data=data, val=val, zip=member)
    before = snapshot(d)
    with deadline(), pytest.raises(cls) as e:
        load_data(data, model, val=val)
    assert str(e.value) == message
    out = tmp_path / "out.keras"
    args = ["finetune", model_path, "--data", data, "-o", str(out), "--quiet"]
    with deadline():
        r = CliRunner().invoke(main, args + (["--val", val] if val else []))
    assert r.exit_code == 2, r.output
    assert r.output == f"error: {message}\n"
    assert snapshot(d) == before
    assert sorted(os.listdir(tmp_path)) == ["data"] and leftovers(str(tmp_path)) == []


def test_finetune_api_refuses_non_finite_arrays(models):
    """The (x, y) pair path of `surgery.finetune` gets the same checks as files."""
    import surgery
    model, _ = models["table"]
    x = np.array([[1, 2, 3], [4, np.inf, 6]], np.float32)
    with pytest.raises(FormatError) as e:
        surgery.finetune(model, (x, np.array([0, 1])), epochs=1, verbose=0)
    assert str(e.value) == ("arrays: x[1, 1] is inf; training data must be finite (no NaN or "
                            "Inf); fix or drop sample 1")


def test_too_many_entries_are_refused(models, tmp_path, monkeypatch):
    monkeypatch.setattr(data_safety, "MAX_DATA_ENTRIES", 5)
    folder = image_folder(tmp_path / "img", classes=("a", "b", "c"))
    with pytest.raises(InputError) as e:
        load_data(folder, models["image"][0])
    assert str(e.value) == (f"{folder}: more than 5 files and folders; a data folder holds at "
                            "most that many (split it, or save the data as an .npz)")


# ------------------------------------------------------------------ what must still load

def test_csv_with_bom_reads_like_without(models, tmp_path):
    """A UTF-8 BOM (Excel's "CSV UTF-8") is not part of the first column's name."""
    model, _ = models["table"]
    path = write(tmp_path / "t.csv", "\ufefflabel,a,b,c\n1,0.5,2,3\n0,4,5,6.25\n".encode())
    d = load_data(path, model)
    np.testing.assert_array_equal(d.x, np.array([[0.5, 2, 3], [4, 5, 6.25]], np.float32))
    assert d.y.tolist() == [1, 0] and d.y.dtype == np.int64


def test_csv_class_names_and_quoted_fields(models, tmp_path):
    model, _ = models["table"]
    path = write(tmp_path / "t.csv", 'a,"b, quoted",c,label\n1,"2",3,dog\n\n4,5,6,cat\n')
    d = load_data(path, model)
    assert d.classes == ("cat", "dog") and d.y.tolist() == [1, 0]
    np.testing.assert_array_equal(d.x, np.array([[1, 2, 3], [4, 5, 6]], np.float32))


def test_image_folder_matches_keras_and_links_stay_inside(keras, tmp_path):
    """Same arrays and labels as `keras.utils.image_dataset_from_directory` (PNG, JPEG, BMP,
    GIF, nested folders, a hidden folder, an upper-case extension); a link inside the folder
    is followed and a link loop is read once."""
    from PIL import Image
    r = np.random.default_rng(1)
    root = tmp_path / "img"
    for c in ("b", "a", ".hidden"):
        os.makedirs(root / c / "sub")
        for i, ext in enumerate(("png", "jpg", "bmp", "gif")):
            Image.fromarray(r.integers(0, 256, (12 + i, 10, 3), np.uint8)).save(
                root / c / f"{i}.{ext}")
        Image.fromarray(r.integers(0, 256, (9, 9), np.uint8)).save(root / c / "sub" / "z.PNG")
    write(root / "a" / "notes.txt", "not an image")
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    ref = keras.utils.image_dataset_from_directory(
        str(root), labels="inferred", label_mode="int", color_mode="rgb", batch_size=None,
        image_size=(8, 8), shuffle=False, verbose=False)
    pairs = list(ref.as_numpy_iterator())
    d = load_data(str(root), model)
    assert d.classes == tuple(ref.class_names) == ("a", "b")
    np.testing.assert_array_equal(d.x, np.stack([p[0] for p in pairs]) / 255.0)
    assert d.y.tolist() == [int(p[1]) for p in pairs]
    # links that stay inside: a loop back to the class folder, an image linked from a sibling
    os.symlink(root / "a", root / "a" / "sub" / "loop")
    os.symlink(root / "b" / "0.png", root / "a" / "sub" / "linked.png")
    with deadline():
        again = load_data(str(root), model)
    assert len(again.x) == len(d.x) + 1 and again.y.tolist().count(0) == 6
