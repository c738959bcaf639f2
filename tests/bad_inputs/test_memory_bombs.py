"""Small files that would make surgery allocate gigabytes (issue #22, memory): variable-length
strings in an HDF5 weights file, an .npz or safetensors header declaring more than the file
holds (or a shape whose product wraps around), an unchecked huge dataset in a transplant
target, one enormous tensor name among thousands, and complex weights that would lose their
imaginary part.

Each case asserts the exact error line, that the error comes before any array is allocated
(the readers are patched to fail the test if they are reached, or the run is confined by
RLIMIT_AS), that the inputs are unchanged and that nothing is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.errors import FormatError
from tests.bad_inputs.files import one_error, rezip
from tests.conftest import ROOT, leftovers, sha256


@pytest.fixture
def no_reads(monkeypatch):
    """Fails the test if any dataset or .npy payload is read (the error must come first)."""
    def boom(*args, **kwargs):
        raise AssertionError("an array was read before the file was refused")
    monkeypatch.setattr(h5py.Dataset, "__getitem__", boom)
    monkeypatch.setattr(h5py.Dataset, "read_direct", boom)
    monkeypatch.setattr(np.lib.format, "read_array", boom)


def _replace_dataset(clean, path, target, make) -> str:
    shutil.copy(clean / "m.weights.h5", path)
    with h5py.File(path, "r+") as f:
        del f[target]
        make(f, target)
    return str(path)


# ------------------------------------------------------------------ HDF5


def _vlen_kernel(f, target):
    # variable-length strings: each element may point at one big heap object (the issue's
    # 1.4 MB file held 8,000 references to a single 1 MB string: 8 GB once read)
    f.create_dataset(target, data=np.array(["x" * 1000] * 12, dtype=object).reshape(4, 3),
                     dtype=h5py.string_dtype())


def test_variable_length_strings_are_refused_before_reading(clean, tmp_path, no_reads):
    h5 = _replace_dataset(clean, tmp_path / "vlen.weights.h5", "layers/dense/vars/0",
                          _vlen_kernel)
    archive = rezip(clean / "m.keras", tmp_path / "vlen.keras", h5)
    before = sha256(archive)
    line = (f"{archive}: model.weights.h5: /layers/dense/vars/0 holds variable-length or "
            "string data, not numbers; refusing it as a weight")
    with pytest.raises(FormatError) as e:
        surgery.open_weights(archive)
    assert str(e.value) == line
    one_error(CliRunner().invoke(main, ["inspect", archive, "--stats"]), line)
    out = tmp_path / "out.keras"
    one_error(CliRunner().invoke(main, ["transplant", str(clean / "m.keras"), archive, "-o",
                                         str(out)]), line)
    assert not out.exists() and leftovers(str(tmp_path)) == [] and sha256(archive) == before


def test_extra_unchecked_dataset_in_a_transplant_target(clean, tmp_path, no_reads):
    """A dataset no variable maps to was copied unchecked into the output (1.6 GB)."""
    h5 = tmp_path / "extra.weights.h5"
    shutil.copy(clean / "m.weights.h5", h5)
    with h5py.File(h5, "r+") as f:
        f.create_dataset("junk", shape=(20000, 20000), dtype="float32", chunks=(100, 100),
                         compression="gzip")
    target = rezip(clean / "m.keras", tmp_path / "target.keras", h5)
    before = sha256(target)
    out = tmp_path / "out.keras"
    line = (f"{target}: model.weights.h5: /junk declares shape (20000, 20000) (1600000000 "
            "bytes) but the file stores 0; refusing it before allocation")
    one_error(CliRunner().invoke(main, ["transplant", str(clean / "m.keras"), target, "-o",
                                         str(out)]), line)
    assert not out.exists() and leftovers(str(tmp_path)) == [] and sha256(target) == before


def test_shape_product_overflow_in_hdf5(clean, tmp_path, no_reads):
    """2**32 x 2**32 float32 wraps to 0 bytes in int64 arithmetic: computed with Python ints."""
    def huge(f, target):
        f.create_dataset(target, shape=(2 ** 32, 2 ** 32), dtype="float32",
                         chunks=(1, 1024), compression="gzip")
    h5 = _replace_dataset(clean, tmp_path / "wrap.weights.h5", "layers/dense/vars/0", huge)
    with pytest.raises(FormatError) as e:
        surgery.open_weights(h5)
    assert str(e.value) == (f"{h5}: /layers/dense/vars/0 declares shape (4294967296, "
                            "4294967296) (73786976294838206464 bytes) but the file stores 0; "
                            "refusing it before allocation")


@pytest.mark.parametrize("dtype,line", [
    ("complex64", "holds complex numbers (complex64); surgery copies real-valued weights only "
                  "and would lose the imaginary part; store the real and imaginary parts as "
                  "two float tensors"),
    ("S4", "holds variable-length or string data, not numbers; refusing it as a weight"),
    ([("re", "f4"), ("im", "f4")], "holds records or opaque bytes, not numbers; refusing it "
                                   "as a weight"),
])
def test_non_real_hdf5_weights_are_refused(clean, tmp_path, dtype, line):
    def make(f, target):
        f.create_dataset(target, data=np.zeros((4, 3), dtype=dtype))
    h5 = _replace_dataset(clean, tmp_path / "c.weights.h5", "layers/dense/vars/0", make)
    archive = rezip(clean / "m.keras", tmp_path / "c.keras", h5)
    with pytest.raises(FormatError) as e:
        surgery.open_weights(archive)
    assert str(e.value) == f"{archive}: model.weights.h5: /layers/dense/vars/0 {line}"


def test_bfloat16_weights_written_by_keras_read_as_bfloat16(tmp_path):
    """Keras stores bfloat16 as tagged opaque 2-byte data: read as bfloat16, not refused
    (reference: the values Keras itself loads back)."""
    import keras
    import ml_dtypes
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc",
                                                                     dtype="bfloat16")])
    model.save(tmp_path / "bf.keras")
    expected = keras.saving.load_model(tmp_path / "bf.keras").get_layer("fc").kernel.numpy()
    with surgery.open_weights(str(tmp_path / "bf.keras")) as w:
        assert w.dtype("fc/kernel") == "bfloat16"
        got = w["fc/kernel"]
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got.astype(np.float32), np.asarray(expected, np.float32))


# ------------------------------------------------------------------ npz


def _npy_bytes(header: dict, payload: bytes) -> bytes:
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload


def test_tiny_npz_declaring_billions_of_elements(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("w.npy", _npy_bytes({"descr": "<f4", "fortran_order": False,
                                        "shape": (3_000_000_000,)}, b"\0" * 16))
    assert os.path.getsize(path) < 300
    before = sha256(str(path))
    line = (f"{path}: w.npy: declares shape (3000000000,) of float32 (12000000000 bytes) but "
            "stores 16 bytes; the file is truncated or hostile")
    # confined to 1 GiB of address space: allocating the declared array could not succeed
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from cli import main
        main(["inspect", "--stats", {str(path)!r}])
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert (p.returncode, p.stdout, p.stderr) == (2, "", f"error: {line}\n")
    assert sha256(str(path)) == before and leftovers(str(tmp_path)) == []


def test_complex_npz_is_listed_but_refused_as_a_weight(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, k=np.ones((2, 2), np.complex64) * (1 + 2j), b=np.ones(2, np.float32))
    inv = surgery.inspect(str(path))
    assert [(v.path, v.dtype) for v in inv.variables] == [("k", "complex64"), ("b", "float32")]
    line = (f"{path}: k.npy: holds complex numbers (complex64); surgery copies real-valued "
            "weights only and would lose the imaginary part; store the real and imaginary "
            "parts as two float arrays")
    with surgery.open_weights(str(path)) as w:
        np.testing.assert_array_equal(w["b"], np.ones(2, np.float32))
        with pytest.raises(FormatError) as e:
            w.read("k")
    assert str(e.value) == line
    one_error(CliRunner().invoke(main, ["inspect", str(path), "--stats"]), line)


# ------------------------------------------------------------------ safetensors


def _safetensors(path, header: dict, data: bytes = b"") -> str:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


def test_safetensors_shape_product_wrapping_to_zero(tmp_path, no_reads):
    path = _safetensors(tmp_path / "wrap.safetensors",
                        {"w": {"dtype": "F32", "shape": [2 ** 32, 2 ** 32],
                               "data_offsets": [0, 0]}})
    before = sha256(path)
    line = (f"{path}: safetensors header invalid: tensor 'w' spans 0 bytes but float32 "
            "(4294967296, 4294967296) needs 73786976294838206464")
    one_error(CliRunner().invoke(main, ["inspect", path, "--stats"]), line)
    assert sha256(path) == before


def test_one_enormous_name_among_thousands_of_tensors(tmp_path):
    """The text table padded every row to the longest name (5,000 rows x 2 MB). Names are
    shortened to 80 characters with an ellipsis, so the output stays small."""
    long_name = "n" * 2_000_000
    names = [f"t{i}" for i in range(4999)] + [long_name]
    header, offset = {}, 0
    for name in names:
        header[name] = {"dtype": "F32", "shape": [1], "data_offsets": [offset, offset + 4]}
        offset += 4
    path = _safetensors(tmp_path / "names.safetensors", header, b"\0" * offset)
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from cli import main
        main(["inspect", {path!r}])
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(p.stdout) < 1_000_000 and max(len(line) for line in lines) < 200
    shown = "n" * 39 + "\u2026" + "n" * 40
    assert [line.split()[0] for line in lines[3:5003]] == names[:-1] + [shown]
