"""Mutated and generated training data: only SurgeryError may escape `load_data`, nothing
hangs, and whatever loads is finite and shaped as the model wants.

Covers the readers behind `surgery finetune --data/--val`: CSV, `.npz` (stored and deflated),
images in a class folder, and a saved `tf.data` folder. A short run is part of `make test`;
`make fuzz` runs many more examples (SURGERY_FUZZ_EXAMPLES)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from surgery.train.data import load_data
from surgery.errors import SurgeryError
from tests.test_fuzz import EDITS, _mutate

EXAMPLES = int(os.environ.get("SURGERY_FUZZ_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def fake_model(input_shape, classes=2):
    """What `load_data` reads of a model (input and output shapes), without TensorFlow."""
    def tensor(shape):
        return SimpleNamespace(shape=(None,) + tuple(shape), dtype="float32")
    return SimpleNamespace(inputs=[tensor(input_shape)], outputs=[tensor((classes,))])


TABLE = fake_model((3,))
IMAGE = fake_model((8, 8, 1))


def _expire(*_):
    raise TimeoutError("a data file kept load_data busy for 60 s")


def _load_or_refuse(path, model):
    """Loads with a 60 s alarm (TensorFlow is imported before: see `tf`); a SurgeryError is
    a fine answer, anything else fails."""
    old = signal.signal(signal.SIGALRM, _expire)
    signal.alarm(60)
    try:
        data = load_data(str(path), model)
    except SurgeryError as e:
        assert "\n" not in str(e)
        return None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert len(data.x) == len(data.y) > 0
    assert data.x.shape[1:] == tuple(model.inputs[0].shape[1:])
    if data.x.dtype.kind == "f":
        assert np.isfinite(data.x).all()
    if data.y.dtype.kind == "f":
        assert np.isfinite(data.y).all()
    return data


CSV_TEXT = ("a,b,c,label\n1,2,3,0\n4.5,-5e3,6,1\n\"7\",8,9,1\n1e-3,0,NaN,0\n").encode()


def test_mutated_csv_only_raises_surgery_errors(tmp_path_factory):
    folder = tmp_path_factory.mktemp("csv")

    @SETTINGS
    @given(EDITS)
    def check(edits):
        path = folder / "d.csv"
        path.write_bytes(_mutate(CSV_TEXT, edits))
        _load_or_refuse(path, TABLE)

    check()


CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**40, 10**40).map(str),
    st.sampled_from(["", " ", "nan", "-inf", "1e39", "0x10", "1_000", '"', '""', "\ufeff1",
                     "cat", "dog", "\x00", "\r", "\n"]),
    st.text(max_size=6),
)


@st.composite
def tables(draw):
    width = draw(st.integers(1, 5))
    header = draw(st.lists(st.sampled_from(["a", "b", "label", "c", "\ufefflabel", ""]),
                           min_size=width, max_size=width))
    rows = draw(st.lists(st.lists(CELLS, min_size=0, max_size=width + 1), max_size=6))
    bom = draw(st.booleans())
    text = "\n".join(",".join(r) for r in [header] + rows)
    return ("\ufeff" if bom else "") + text


def test_generated_csv_loads_finite_or_refuses(tmp_path_factory):
    """Tables with NaN/Inf, huge numbers, quotes, BOMs, ragged rows and mixed labels:
    what loads matches the cells' own values, parsed independently with float()."""
    folder = tmp_path_factory.mktemp("gen")

    @SETTINGS
    @given(tables())
    def check(text):
        path = folder / "t.csv"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        model = fake_model((text.split("\n")[0].count(","),))
        data = _load_or_refuse(path, model)
        if data is not None and data.x.shape[1] == 1 and not set('"\r') & set(text):
            # one feature column: compare with float() of the cells, read here by hand
            body = text[1:] if text.startswith("\ufeff") else text  # the BOM, if any
            lines = [line.split(",") for line in body.split("\n")]
            col = 1 - lines[0].index("label")
            want = [float(r[col]) for r in lines[1:] if r != [""] and r]
            np.testing.assert_array_equal(data.x[:, 0], np.array(want, np.float32))

    check()


def _npz_bytes(compressed: bool) -> bytes:
    f = io.BytesIO()
    r = np.random.default_rng(0)
    (np.savez_compressed if compressed else np.savez)(
        f, x=r.normal(size=(6, 3)).astype("float32"), y=np.array([0, 1, 1, 0, 1, 0]),
        x_val=r.normal(size=(2, 3)), y_val=np.array([1, 0]))
    return f.getvalue()


@pytest.mark.parametrize("compressed", [False, True])
def test_mutated_npz_only_raises_surgery_errors(tmp_path_factory, compressed):
    folder = tmp_path_factory.mktemp("npz")
    original = _npz_bytes(compressed)

    @SETTINGS
    @given(EDITS)
    @example(edits=[(0, 8102, 1)])  # found by `make fuzz`: a local header offset past the file
    def check(edits):
        path = folder / "d.npz"
        path.write_bytes(_mutate(original, edits))
        _load_or_refuse(path, TABLE)

    check()


@st.composite
def npy_headers(draw):
    shape = tuple(draw(st.lists(st.integers(0, 2**40), min_size=0, max_size=3)))
    descr = draw(st.sampled_from(["<f4", "<f8", "<i8", "|b1", "<c8", "<U3", "|O", "|V8",
                                  "<M8[s]", "<f2"]))
    body = draw(st.binary(max_size=64))
    return shape, descr, body


def test_declared_npz_shapes_never_allocate_more_than_stored(tmp_path_factory):
    """Headers that declare any shape and dtype over a few stored bytes."""
    folder = tmp_path_factory.mktemp("decl")

    @SETTINGS
    @given(npy_headers(), npy_headers())
    def check(xh, yh):
        path = folder / "d.npz"
        with zipfile.ZipFile(path, "w") as z:
            for name, (shape, descr, body) in (("x", xh), ("y", yh)):
                f = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    f, {"descr": descr, "fortran_order": False, "shape": shape})
                z.writestr(f"{name}.npy", f.getvalue() + body)
        _load_or_refuse(path, TABLE)

    check()


@pytest.fixture(scope="module")
def tf():
    """Imported outside the alarm: the import alone can take many seconds on a busy machine."""
    import tensorflow
    return tensorflow


@pytest.fixture(scope="module")
def image_files(tf, tmp_path_factory):
    from PIL import Image
    folder = tmp_path_factory.mktemp("img_src")
    r = np.random.default_rng(0)
    files = {}
    for fmt in ("png", "jpeg", "bmp", "gif"):
        f = io.BytesIO()
        Image.fromarray(r.integers(0, 256, (9, 7), np.uint8)).save(f, format=fmt)
        files[fmt] = f.getvalue()
    return files


@pytest.mark.parametrize("fmt", ["png", "jpeg", "bmp", "gif"])
def test_mutated_images_only_raise_surgery_errors(image_files, tmp_path_factory, fmt):
    folder = tmp_path_factory.mktemp(f"img_{fmt}")
    for c in ("a", "b"):
        os.makedirs(folder / c)
        (folder / c / f"ok.{fmt}").write_bytes(image_files[fmt])

    @SETTINGS
    @given(EDITS)
    def check(edits):
        (folder / "b" / f"x.{fmt}").write_bytes(_mutate(image_files[fmt], edits))
        _load_or_refuse(folder, IMAGE)

    check()


@pytest.fixture(scope="module")
def saved_tfdata(tf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tfd") / "ds"
    x = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
    tf.data.Dataset.from_tensor_slices((x, np.arange(6) % 2)).save(str(folder))
    return folder


@pytest.mark.parametrize("part", ["dataset_spec.pb", "snapshot.metadata", "shard"])
def test_mutated_tfdata_only_raises_surgery_errors(saved_tfdata, tmp_path_factory, part):
    folder = tmp_path_factory.mktemp("mtfd") / "ds"
    shutil.copytree(saved_tfdata, folder)
    target = next(os.path.join(h, n) for h, _, fs in os.walk(folder) for n in fs
                  if (n.endswith(".snapshot") if part == "shard" else n == part))
    original = open(target, "rb").read()

    @settings(SETTINGS, max_examples=max(10, EXAMPLES // 4))
    @given(EDITS)
    def check(edits):
        with open(target, "wb") as f:
            f.write(_mutate(original, edits))
        _load_or_refuse(folder, TABLE)

    check()


@pytest.mark.fuzz
def test_fuzz_marker_runs_longer(tmp_path_factory):
    assert EXAMPLES >= 40  # `make fuzz` raises the example count for the tests above
    test_mutated_csv_only_raises_surgery_errors(tmp_path_factory)
