"""Sharded outputs that fail (issue #21 item 2): the set appears whole or not at all.

Real failures where the machine allows them (a read-only folder and a full tmpfs, each mounted
in a private user+mount namespace with `unshare`; skipped where that is not permitted), and
failures injected into the writer mid-set (an OSError with ENOSPC from the shard writer, an
I/O error while publishing, SIGTERM): each is one exact error line, nothing left behind (no
shard, no index, no temporary file), the inputs and an older set being replaced bitwise
unchanged. References: the error lines, folder listings, and sha256 of the folders before."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import surgery
import surgery.io.filesets as filesets
import surgery.io.keras_shards as keras_shards
import surgery.io.shards as shards
from cli import main
from surgery.errors import OptionError, OutputError, UnsupportedModelError
from surgery.io.shards import write_safetensors_sharded
from tests.bad_inputs.files import one_error
from tests.conftest import ROOT, sha256

NOSPACE = "could not be written (No space left on device); free some space; nothing was written"


@pytest.fixture(scope="module")
def pair(samples, tmp_path_factory):
    """The sample CNN (source) and a copy of it as the target architecture."""
    folder = tmp_path_factory.mktemp("pair")
    shutil.copy(samples["cnn"], folder / "target.keras")
    return samples["cnn"], str(folder / "target.keras")


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _transplant(pair, output, *extra):
    return CliRunner().invoke(main, ["transplant", *pair, "-o", str(output),
                                     "--max-shard-size", "40KB", *extra])


def _inputs_sha(pair):
    return [sha256(p) for p in pair]


def _tensors() -> dict[str, np.ndarray]:
    return {f"layer{i}.weight": np.full((10_000,), i, np.float32) for i in range(4)}  # 40 kB


# ------------------------------------------------------------------ injected failures

def test_enospc_from_the_safetensors_writer_mid_set(out, monkeypatch):
    from surgery.io import safetensors

    real, calls = safetensors.write_safetensors, []

    def second_fails(tensors, path, **kw):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "ab") as f:
                f.write(b"half a shard")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(tensors, path, **kw)

    monkeypatch.setattr(safetensors, "write_safetensors", second_fails)
    index = str(out / "model.safetensors.index.json")
    with pytest.raises(OutputError) as e:
        write_safetensors_sharded(_tensors(), index, "50KB")
    assert str(e.value) == f"{index}: {NOSPACE}"
    assert len(calls) == 2 and os.listdir(out) == []


def test_enospc_mid_keras_shards_leaves_nothing(pair, out, monkeypatch):
    before = _inputs_sha(pair)
    real, made = h5py.File, []

    def third_shard_fails(name, mode="r", *args, **kw):
        if mode == "w":
            made.append(name)
            if len(made) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(name, mode, *args, **kw)

    monkeypatch.setattr(shards.h5py, "File", third_shard_fails)
    r = _transplant(pair, out / "o.weights.json")
    one_error(r, f"{out / 'o.weights.json'}: {NOSPACE}")
    assert len(made) == 3 and os.listdir(out) == []
    assert _inputs_sha(pair) == before


def test_enospc_writing_the_index_leaves_no_shard(pair, out, monkeypatch):
    def full(path, index, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keras_shards, "_dump_index", full)
    one_error(_transplant(pair, out / "o.weights.json"), f"{out / 'o.weights.json'}: {NOSPACE}")
    assert os.listdir(out) == []


def test_the_index_is_published_last(pair, out, monkeypatch):
    order = []
    real = filesets._publish

    def record(tmp, path, overwrite):
        order.append(os.path.basename(path))
        real(tmp, path, overwrite)

    monkeypatch.setattr(filesets, "_publish", record)
    assert _transplant(pair, out / "o.weights.json").exit_code == 0
    shard_names = sorted(n for n in os.listdir(out) if n.endswith(".weights.h5"))
    assert len(shard_names) >= 3
    assert order == [*shard_names, "o.weights.json"]


def test_failed_publish_puts_the_old_set_back(keras, out, monkeypatch):
    model = keras.Sequential([keras.Input((40,)), keras.layers.Dense(60, name="a"),
                              keras.layers.Dense(9, name="b")])
    index = str(out / "s.weights.json")
    surgery.save_model(model, index, max_shard_size=4000)  # the old set: 3 shards
    old = sha256(str(out))
    old_names = sorted(os.listdir(out))
    real = filesets._publish

    def index_fails(tmp, path, overwrite):
        if path == index:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(tmp, path, overwrite)

    monkeypatch.setattr(filesets, "_publish", index_fails)
    changed = keras.Sequential([keras.Input((40,)), keras.layers.Dense(60, name="a"),
                                keras.layers.Dense(9, name="b")])
    with pytest.raises(OutputError) as e:  # 2 shards now: one replaced, one removed
        surgery.save_model(changed, index, max_shard_size=10_000, overwrite=True)
    assert str(e.value) == (f"{index}: could not be written (Input/output error); check the "
                            "output folder; nothing was written")
    assert sorted(os.listdir(out)) == old_names and sha256(str(out)) == old
    fresh = keras.Sequential([keras.Input((40,)), keras.layers.Dense(60, name="a"),
                              keras.layers.Dense(9, name="b")])
    fresh.load_weights(index)  # Keras still reads the old set
    for a, b in zip(fresh.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sigterm_mid_set_leaves_nothing(pair, out, monkeypatch):
    before = _inputs_sha(pair)

    def terminated(path, index, **kw):
        # the CLI turns SIGTERM into an interrupt; never send it without that handler
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt the write")

    monkeypatch.setattr(keras_shards, "_dump_index", terminated)
    r = _transplant(pair, out / "o.weights.json")
    assert r.exit_code == 130, r.output  # click echoes a newline first on an interrupt
    assert r.output.strip() == "error: interrupted; nothing was written", r.output
    assert os.listdir(out) == [] and _inputs_sha(pair) == before


# ------------------------------------------------------------------ names and inputs

def test_an_existing_shard_is_not_replaced_without_overwrite(pair, out):
    (out / "o_00001.weights.h5").write_bytes(b"the user's own file")
    r = _transplant(pair, out / "o.weights.json")
    one_error(r, f"{out / 'o_00001.weights.h5'}: already exists; pass --overwrite "
                 "(overwrite=True) to replace it")
    assert os.listdir(out) == ["o_00001.weights.h5"]
    assert (out / "o_00001.weights.h5").read_bytes() == b"the user's own file"


def test_overwrite_never_replaces_an_input_named_like_a_shard(keras, pair, out):
    _, target = pair
    source = out / "o_00000.weights.h5"  # SOURCE is named like OUT's first shard
    keras.saving.load_model(target).save_weights(source)
    before = sha256(str(out))
    r = CliRunner().invoke(main, ["transplant", str(source), target, "--source-architecture",
                                  target, "-o", str(out / "o.weights.json"), "--max-shard-size",
                                  "40KB", "--overwrite"])
    one_error(r, f"{source}: this is the input {source}; write the output to another path "
                 "(surgery never writes over its input)")
    assert sha256(str(out)) == before and os.listdir(out) == ["o_00000.weights.h5"]


def test_stale_temporaries_of_a_killed_write_are_removed(keras, out):
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid = dead.pid
    stale = [f".o.weights.json.surgery-tmp-{pid}-abcdefgh.json",
             f".o_00000.weights.h5.surgery-tmp-{pid}-abcdefgh.weights.h5"]
    for name in stale:
        (out / name).write_bytes(b"left by a killed write")
    (out / f".o.weights.json.surgery-tmp-{pid}-abcdefgh").mkdir()  # save_model's scratch
    (out / f".o.weights.json.surgery-tmp-{pid}-abcdefgh" / "model.weights.h5").write_bytes(b"x")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    surgery.save_model(model, str(out / "o.weights.json"), max_shard_size="1MB")
    assert sorted(os.listdir(out)) == ["o.weights.json", "o_00000.weights.h5"]


def test_shards_published_before_a_kill_are_removed_by_the_next_write(keras, out):
    """SIGKILL between publishing the shards and the index: the dead writer's complete
    temporary index names them; the next write removes them (no index names them) instead of
    refusing them as existing files."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / "o_00000.weights.h5").write_bytes(b"published by the killed writer")
    (out / "o_00001.weights.h5").write_bytes(b"published by the killed writer")
    (out / "keep_00000.weights.h5").write_bytes(b"not named like this set's shards")
    (out / f".o.weights.json.surgery-tmp-{dead.pid}-abcdefgh.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"/layers/dense/vars": ["o_00000.weights.h5",
                                                               "keep_00000.weights.h5"],
                                        "/layers/dense_1/vars": ["o_00001.weights.h5"]}}))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    surgery.save_model(model, str(out / "o.weights.json"), max_shard_size="1MB")
    assert sorted(os.listdir(out)) == ["keep_00000.weights.h5", "o.weights.json",
                                       "o_00000.weights.h5"]
    fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    fresh.load_weights(str(out / "o.weights.json"))
    for a, b in zip(fresh.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("args, line", [
    (["-o", "{out}/o.weights.json"], "{out}/o.weights.json: sharded weights need a shard size; "
     "pass --max-shard-size (for example 2GB), or write one file instead"),
    (["-o", "{out}/o.keras", "--max-shard-size", "2GB"], "{out}/o.keras: --max-shard-size "
     "applies only to sharded outputs; name the output out.weights.json, or drop "
     "--max-shard-size"),
    (["-o", "{out}/o.weights.json", "--max-shard-size", "2XB"], "--max-shard-size '2XB': not a "
     "size; give bytes (1000000) or a size with a unit: 10KB, 500MB, 2GB (powers of 1000) or "
     "512MiB, 2GiB (powers of 1024)"),
    (["-o", "{out}/o.weights.json", "--max-shard-size", "0"], "--max-shard-size '0': a shard "
     "must hold at least one byte; give a size such as 500MB"),
    (["-o", "{out}/model.safetensors.index.json", "--max-shard-size", "1MB"],
     "{out}/model.safetensors.index.json: this command can't write that kind of sharded "
     "output; Hugging Face sharded checkpoints are written by surgery export --format torch "
     "(export_state_dict); for Keras shards name the output out.weights.json"),
])
def test_option_errors(pair, out, args, line):
    r = CliRunner().invoke(main, ["transplant", *pair, *[a.format(out=out) for a in args]])
    one_error(r, line.format(out=out))
    assert os.listdir(out) == []


def test_option_errors_come_before_tensorflow(samples, out):
    """transplant and convert refuse a bad --max-shard-size / output pair while an import hook
    blocks TensorFlow (the driver of tests/test_cli_before_tf.py)."""
    from tests.test_cli_before_tf import _DRIVER

    need = f"{out}/o.weights.json: sharded weights need a shard size; pass --max-shard-size " \
        "(for example 2GB), or write one file instead"
    only = f"{out}/o.keras: --max-shard-size applies only to sharded outputs; name the output " \
        "out.weights.json, or drop --max-shard-size"
    cases = [
        (["transplant", samples["cnn"], samples["cnn"], "-o", f"{out}/o.weights.json"], need),
        (["transplant", samples["cnn"], samples["cnn"], "-o", f"{out}/o.keras",
          "--max-shard-size", "2GB"], only),
        (["convert", samples["keras2_mlp"], "-o", f"{out}/o.weights.json"], need),
        (["convert", samples["keras2_mlp"], "-o", f"{out}/o.keras", "--max-shard-size", "1MB"],
         only)]
    (out.parent / "cases.json").write_text(json.dumps([argv for argv, _ in cases]))
    r = subprocess.run([sys.executable, "-c", _DRIVER, ROOT, str(out.parent / "cases.json")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "SURGERY_QUIET_TF": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(r.stdout.splitlines()[-1])
    assert data["loaded"] == []
    assert data["results"] == [[2, f"error: {line}\n"] for _, line in cases]
    assert os.listdir(out) == []


def test_tf_keras_model_is_refused(out):
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3)])
    path = str(out / "o.weights.json")
    with pytest.raises(UnsupportedModelError) as e:
        surgery.save_model(model, path, max_shard_size="1MB")
    assert str(e.value) == (f"{path}: sharded weights are written for Keras 3 models; convert "
                            "this tf_keras model first (surgery convert), or save it as .h5")
    assert os.listdir(out) == []


def test_python_size_errors(out):
    with pytest.raises(OptionError) as e:
        write_safetensors_sharded(_tensors(), str(out / "model.safetensors.index.json"), 0.5)
    assert str(e.value) == ("max_shard_size 0.5: not a size (a float is ambiguous: Keras's "
                            "max_shard_size counts GB); give bytes (1000000) or a size with a "
                            "unit: 10KB, 500MB, 2GB (powers of 1000) or 512MiB, 2GiB (powers "
                            "of 1024)")
    with pytest.raises(OutputError) as e:
        write_safetensors_sharded({"x": np.zeros(2, np.complex64)},
                                  str(out / "model.safetensors.index.json"), "1MB")
    assert str(e.value) == (f"{out / 'model.safetensors.index.json'}: tensor 'x' has dtype "
                            "complex64, which safetensors can't hold")
    assert os.listdir(out) == []


# ------------------------------------------------------------------ real failures

_SCRIPT = """
import os, sys
import numpy as np
from surgery.errors import OutputError
from surgery.io.shards import write_safetensors_sharded
folder = sys.argv[1]
tensors = {f"layer{i}.weight": np.full((10_000,), i, np.float32) for i in range(4)}
try:
    write_safetensors_sharded(tensors, os.path.join(folder, "model.safetensors.index.json"),
                              "50KB")
except OutputError as e:
    print(e)
print(sorted(os.listdir(folder)))
"""


def _in_namespace(mount_options: str, folder) -> str:
    """Runs _SCRIPT with `folder` a fresh tmpfs (`mount_options`) in a private namespace."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("user and mount namespaces are not available here")
    folder.mkdir()
    r = subprocess.run(["unshare", "-rm", "sh", "-c",
                        f'mount -t tmpfs -o {mount_options} tmpfs "$1" && exec "$2" -c "$3" "$1"',
                        "sh", str(folder), sys.executable, _SCRIPT],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    if "mount:" in r.stderr:
        pytest.skip(f"tmpfs can't be mounted here ({r.stderr.strip()})")
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_full_disk_leaves_nothing(tmp_path):
    folder = tmp_path / "small"
    index = folder / "model.safetensors.index.json"
    assert _in_namespace("size=100k", folder) == f"{index}: {NOSPACE}\n[]\n"


def test_a_read_only_folder_leaves_nothing(tmp_path):
    folder = tmp_path / "ro"
    index = folder / "model.safetensors.index.json"
    assert _in_namespace("ro", folder) == (
        f"{index}: could not be written (Read-only file system); write to a writable folder; "
        "nothing was written\n[]\n")
