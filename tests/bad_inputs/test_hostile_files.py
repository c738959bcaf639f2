"""Hostile or broken inputs (issue: bad-input and fault suite). Each case is built by test code
and asserts: one SurgeryError (CLI: one `error:` line, exit 2), the input's sha256 unchanged, no
output and no temporary file left."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.errors import FormatError, SurgeryError, UnsafeModelError
from tests.conftest import ROOT, leftovers, sha256



@pytest.fixture(scope="module")
def valid(keras, tmp_path_factory):
    folder = tmp_path_factory.mktemp("valid")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc"),
                              keras.layers.Dense(2, name="head")], name="small")
    model.save(folder / "m.keras")
    model.save_weights(folder / "m.weights.h5")
    return folder


def _rezip(src: str, dst: str, *, h5: str | None = None, config=None) -> str:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "model.weights.h5" and h5 is not None:
                data = open(h5, "rb").read()
            if name == "config.json" and config is not None:
                data = json.dumps(config).encode()
            zout.writestr(name, data)
    return dst


def _check_cli_refuses(path: str, tmp_path, start: str) -> None:
    before = sha256(path)
    out = tmp_path / "out.keras"
    for args in (["inspect", path], ["transplant", path, path, "-o", str(out)]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, r.output
        assert r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
        assert start in r.output, r.output
    assert sha256(path) == before and not out.exists() and leftovers(str(tmp_path)) == []


def _hostile_h5(valid, tmp_path, how: str) -> str:
    path = str(tmp_path / f"{how}.weights.h5")
    shutil.copy(valid / "m.weights.h5", path)
    with h5py.File(path, "r+") as f:
        target = "layers/dense/vars/0"
        shape, dtype = f[target].shape, f[target].dtype
        del f[target]
        if how == "external_link":
            f[target] = h5py.ExternalLink("/etc/passwd", "/x")
        elif how == "external_storage":
            (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
            f.create_dataset(target, shape=shape, dtype=dtype,
                             external=[(str(tmp_path / "secret.bin"), 0, 64)])
        elif how == "virtual":
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "data", shape=shape)
            f.create_virtual_dataset(target, layout)
        elif how == "huge":
            f.create_dataset(target, shape=(100000, 100000), dtype="float32",
                             chunks=(100, 100))
    return path


@pytest.mark.parametrize("how,message", [
    ("external_link", "is an external link to '/etc/passwd'"),
    ("external_storage", "stores its data in external files"),
    ("virtual", "is a virtual dataset"),
    ("huge", "declares shape (100000, 100000) (40000000000 bytes) but the file stores 0"),
])
def test_hostile_hdf5_in_weights_and_keras(valid, tmp_path, how, message):
    h5 = _hostile_h5(valid, tmp_path, how)
    with pytest.raises(FormatError) as e:
        surgery.open_weights(h5, architecture=str(valid / "m.keras"))
    assert message in str(e.value)
    archive = _rezip(str(valid / "m.keras"), str(tmp_path / f"{how}.keras"), h5=h5)
    with pytest.raises(FormatError):
        surgery.load_model(archive)
    _check_cli_refuses(archive, tmp_path, message.split(" (")[0])


def _config(valid):
    with zipfile.ZipFile(valid / "m.keras") as z:
        return json.loads(z.read("config.json"))


def test_lambda_inside_a_nested_model(keras, tmp_path):
    inner_in = keras.Input((3,))
    inner = keras.Model(inner_in, keras.layers.Lambda(lambda t: t + 1, name="sneaky")(inner_in),
                        name="inner")
    inp = keras.Input((3,))
    path = tmp_path / "nested.keras"
    keras.Model(inp, inner(inp)).save(path)
    with pytest.raises(UnsafeModelError) as e:
        surgery.load_model(str(path))
    assert str(e.value).startswith(f"{path}: layer 'sneaky' is a Lambda layer")


def test_legacy_h5_with_lambda(tmp_path):
    import tf_keras
    inp = tf_keras.Input((3,))
    model = tf_keras.Model(inp, tf_keras.layers.Lambda(lambda t: t * 3, name="lam")(inp))
    path = tmp_path / "lam.h5"
    model.save(path)
    with pytest.raises(UnsafeModelError) as e:
        surgery.load_model(str(path))
    assert str(e.value).startswith(f"{path}: layer 'lam' is a Lambda layer")


def test_unknown_custom_class(valid, tmp_path):
    config = _config(valid)
    layer = config["config"]["layers"][1]
    layer.update(module=None, class_name="MyMysteryLayer", registered_name="Mystery>Layer")
    path = _rezip(str(valid / "m.keras"), str(tmp_path / "custom.keras"), config=config)
    with pytest.raises(FormatError) as e:
        surgery.load_model(path)
    assert str(e.value).startswith(f"{path}: ")
    assert "custom_objects" in str(e.value)


def test_not_a_zip_named_keras(tmp_path):
    path = tmp_path / "fake.keras"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(SurgeryError):
        surgery.inspect(str(path))


# ------------------------------------------------------------------ faults while writing

_KILLED = """
import os, sys, time
import surgery.io.atomic as A
path = sys.argv[1]
with A.atomic_path(path, overwrite=True) as tmp:
    with open(tmp, "wb") as f:
        f.write(b"partial" * 1000)
        f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def test_sigkill_mid_write_leaves_target_intact(tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(b"previous good file")
    p = subprocess.Popen([sys.executable, "-c", _KILLED, str(target)], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    assert target.read_bytes() == b"previous good file"
    stale = leftovers(str(tmp_path))
    assert len(stale) == 1 and stale[0].startswith(".model.keras.surgery-tmp-")
    from surgery.io.atomic import clean_stale
    time.sleep(0.1)
    assert clean_stale(str(target)) == stale and leftovers(str(tmp_path)) == []


def test_disk_full_while_writing_a_file_transplant(valid, tmp_path, monkeypatch):
    import surgery.io.kerasfile_writer as W
    real = W._Window.write

    def full(self, data):
        if self.size > 1000:
            raise OSError(28, "No space left on device")
        return real(self, data)
    monkeypatch.setattr(W._Window, "write", full)
    out = tmp_path / "out.keras"
    out.write_bytes(b"old output")
    with pytest.raises(SurgeryError) as e:
        surgery.transplant_file(str(valid / "m.keras"), str(valid / "m.keras"), str(out),
                                overwrite=True)
    assert "No space left on device" in str(e.value) or "can't write" in str(e.value)
    assert out.read_bytes() == b"old output" and leftovers(str(tmp_path)) == []


# ------------------------------------------------------------------ identity property

@pytest.mark.parametrize("name", ["cnn", "lstm", "keras2_mlp"])
def test_identity_transplant_is_bitwise_for_every_sample_and_format(samples, tmp_path, name):
    model = surgery.load_model(samples[name])
    paths = {"model": model, "file": samples[name]}
    model.save_weights(tmp_path / "w.weights.h5")
    paths["weights.h5"] = surgery.open_weights(str(tmp_path / "w.weights.h5"),
                                               architecture=surgery.save_model(
                                                   model, tmp_path / "arch.keras"))
    with surgery.open_weights(model) as w:
        arrays = {k: w.read(k) for k in w}
    np.savez(tmp_path / "w.npz", **arrays)
    paths["npz"] = str(tmp_path / "w.npz")
    from surgery.io.safetensors import write_safetensors
    write_safetensors(arrays, str(tmp_path / "w.safetensors"))
    paths["safetensors"] = str(tmp_path / "w.safetensors")
    for fmt, source in paths.items():
        target = surgery.load_model(samples[name])
        surgery.reinitialize(target, "*", seed=1)
        report = surgery.transplant(source, target, strict=True)
        assert report.ok, fmt
        assert surgery.diff(model, target).identical, fmt
