"""Sharded outputs (issue #21 item 2): Keras 3 sharded weights from `transplant` (file -> file,
streamed), `save_model` and `convert`, and Hugging Face sharded safetensors
(`write_safetensors_sharded`), each written atomically as a set.

References: Keras's own `save_weights(path, max_shard_size=)` (the same index and shards for a
model where Keras's packing order is knowable), Keras's own `load_weights` of what surgery
wrote (in this process, and in a fresh one), the sample CNN's outputs on the shapes task's own
images, the safetensors byte layout re-parsed here from the spec (not surgery's reader), and
the arrays the shards were written from."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.sample_models.tasks import make_shapes
from surgery.io.shards import parse_size, write_safetensors_sharded
from tests.conftest import ROOT, leftovers
from tests.models import kitchen_sink, randomize

GB = 1024 ** 3  # Keras's max_shard_size unit


def _weights(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.get_weights()]


def _shard_datasets(path) -> dict[str, np.ndarray]:
    import h5py

    out = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                      if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize("text, expected", [
    ("2GB", 2 * 10 ** 9), ("500MB", 500 * 10 ** 6), ("10KB", 10_000), ("1.5GB", 1_500_000_000),
    ("512MiB", 512 * 2 ** 20), ("2gib", 2 * 2 ** 30), ("123", 123), (4096, 4096), ("7 b", 7)])
def test_sizes(text, expected):
    assert parse_size(text) == expected


# ------------------------------------------------------------------ Keras shards

@pytest.fixture(scope="module")
def dense_stack(keras, tmp_path_factory):
    """Four Dense layers: Keras saves them in the order dense, dense_1, dense_2, dense_3, the
    order the HDF5 tree lists them, so Keras's packing and surgery's must agree exactly."""
    folder = tmp_path_factory.mktemp("dense_stack")
    model = randomize(keras.Sequential(
        [keras.Input((40,))] + [keras.layers.Dense(u, name=f"d{i}")
                                for i, u in enumerate((60, 27, 150, 8))], name="stack"), seed=1)
    model.save(folder / "m.keras")
    return model, folder


def test_save_model_writes_the_layout_keras_writes(dense_stack, tmp_path):
    model, _ = dense_stack
    limit = 2 ** 14  # exact as a fraction of Keras's GB; d1's and d2's bias overflow
    model.save_weights(tmp_path / "k.weights.json", max_shard_size=limit / GB)
    surgery.save_model(model, str(tmp_path / "s.weights.json"), max_shard_size=limit)
    keras_index = json.loads((tmp_path / "k.weights.json").read_text())
    ours = json.loads((tmp_path / "s.weights.json").read_text())
    renamed = {group: [f.replace("k_", "s_", 1) for f in files]
               for group, files in keras_index["weight_map"].items()}
    assert ours["metadata"] == keras_index["metadata"]
    assert ours["weight_map"] == renamed
    assert any(len(files) == 2 for files in renamed.values())  # a layer split over two shards
    shards = sorted({f for files in keras_index["weight_map"].values() for f in files})
    assert len(shards) >= 3
    for shard in shards:
        want = _shard_datasets(tmp_path / shard)
        got = _shard_datasets(tmp_path / shard.replace("k_", "s_", 1))
        assert sorted(got) == sorted(want), shard
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["k.weights.json", "s.weights.json", *shards, *(s.replace("k_", "s_", 1) for s in shards)])


def test_save_model_shards_load_in_keras(keras, tmp_path):
    model = randomize(kitchen_sink(keras), seed=5)  # nested model, RNN cells, shared layer
    model.save(tmp_path / "sink.keras")
    (tmp_path / "out").mkdir()
    out = str(tmp_path / "out" / "sink.weights.json")
    assert surgery.save_model(model, out, max_shard_size="600B") == out
    files = os.listdir(tmp_path / "out")
    assert len([f for f in files if f.endswith(".weights.h5")]) >= 5, files
    fresh = kitchen_sink(keras)
    fresh.load_weights(out)  # Keras's own reader
    for a, b in zip(_weights(fresh), _weights(model), strict=True):
        np.testing.assert_array_equal(a, b)
    with surgery.open_weights(out, architecture=str(tmp_path / "sink.keras")) as w, \
            surgery.open_weights(str(tmp_path / "sink.keras")) as whole:  # and surgery's
        assert len(w.files) == len(files) - 1 and list(w) == list(whole)
        for path in whole:
            np.testing.assert_array_equal(w[path], whole[path])
    assert not leftovers(str(tmp_path / "out"))


def test_a_variable_larger_than_the_limit_gets_its_own_shard(dense_stack, tmp_path):
    model, _ = dense_stack
    limit = 8000  # d0/kernel (9600 B) and d2/kernel (16200 B) are larger
    with pytest.raises(ValueError, match="exceeds the maximum shard size"):
        model.save_weights(tmp_path / "k.weights.json", max_shard_size=limit / GB)  # Keras
    for name in os.listdir(tmp_path):  # Keras leaves its partial shard behind
        os.unlink(tmp_path / name)
    out = str(tmp_path / "s.weights.json")
    surgery.save_model(model, out, max_shard_size=limit)
    weight_map = json.loads(open(out).read())["weight_map"]
    for name in ("s_00000.weights.h5", "s_00002.weights.h5"):  # d0/kernel, d2/kernel
        held = _shard_datasets(tmp_path / name)
        assert len(held) == 1 and next(iter(held.values())).nbytes > limit, held.keys()
    assert weight_map["/layers/dense/vars"] == ["s_00000.weights.h5", "s_00001.weights.h5"]
    for shard in os.listdir(tmp_path):
        if shard.endswith(".weights.h5"):
            sizes = [a.nbytes for a in _shard_datasets(tmp_path / shard).values()]
            assert len(sizes) == 1 or sum(sizes) <= limit, (shard, sizes)
    fresh = model.__class__.from_config(model.get_config())
    fresh.load_weights(out)
    for a, b in zip(_weights(fresh), _weights(model), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def cnn_pair(keras, samples, tmp_path_factory):
    """The sample CNN (source) and the same architecture freshly initialized (target)."""
    folder = tmp_path_factory.mktemp("cnn_pair")
    source = keras.saving.load_model(samples["cnn"])
    target = keras.models.clone_model(source)
    target.save(folder / "target.keras")
    return source, samples["cnn"], str(folder / "target.keras")


def test_transplant_streams_keras_shards(keras, cnn_pair, tmp_path):
    source, source_path, target = cnn_pair
    out = str(tmp_path / "filled.weights.json")
    r = CliRunner().invoke(main, ["transplant", source_path, target, "-o", out,
                                  "--max-shard-size", "40KB", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["counts"]["copied"] == len(source.weights)
    shards = sorted(f for f in os.listdir(tmp_path) if f.endswith(".weights.h5"))
    assert shards == [f"filled_{i:05}.weights.h5" for i in range(len(shards))]
    assert len(shards) >= 3
    for shard in shards:  # at most 40 kB, or one larger tensor alone (a 73728 B kernel)
        sizes = [a.nbytes for a in _shard_datasets(tmp_path / shard).values()]
        assert sum(sizes) <= 40_000 or len(sizes) == 1, (shard, sizes)
    model = keras.saving.load_model(target)
    model.load_weights(out)  # Keras reads surgery's shards
    x, _ = make_shapes(64, seed=3)
    np.testing.assert_array_equal(model.predict(x, verbose=0), source.predict(x, verbose=0))
    assert not leftovers(str(tmp_path))


def test_transplant_shards_match_the_unsharded_output(cnn_pair, tmp_path):
    """The file -> file path streams into shards exactly what it streams into a .keras."""
    _, source_path, target = cnn_pair
    whole, sharded = str(tmp_path / "w.keras"), str(tmp_path / "w.weights.json")
    surgery.transplant_file(source_path, target, whole)
    surgery.transplant_file(source_path, target, sharded, max_shard_size=2_000)
    with surgery.open_weights(sharded, architecture=target) as s, \
            surgery.open_weights(source_path) as src:
        assert len(s.files) > 8  # more shards than are kept open at once: reopened to append
        assert list(s) == list(src)
        for path in src:
            np.testing.assert_array_equal(s[path], src[path])


@pytest.mark.slow
def test_shards_load_in_a_fresh_keras_process(keras, cnn_pair, tmp_path):
    """Keras's `load_weights` in a process that did not write the files: the transplant's
    shards and save_model's, against the sample CNN's outputs on the task's images."""
    source, source_path, target = cnn_pair
    a, b = str(tmp_path / "a.weights.json"), str(tmp_path / "b.weights.json")
    surgery.transplant_file(source_path, target, a, max_shard_size="25KB")
    surgery.save_model(source, b, max_shard_size="25KB")
    x, _ = make_shapes(32, seed=4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", source.predict(x, verbose=0))
    script = (
        "import sys, numpy as np, keras\n"
        "target, x, want, *indexes = sys.argv[1:]\n"
        "for index in indexes:\n"
        "    m = keras.saving.load_model(target)\n"
        "    m.load_weights(index)\n"
        "    np.testing.assert_array_equal(m.predict(np.load(x), verbose=0), np.load(want))\n"
        "print('ok', len(indexes))\n")
    r = subprocess.run([sys.executable, "-c", script, target, str(tmp_path / "x.npy"),
                        str(tmp_path / "want.npy"), a, b], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok 2", r.stderr[-2000:]


def test_overwrite_replaces_the_whole_set(dense_stack, tmp_path):
    model, _ = dense_stack
    out = str(tmp_path / "s.weights.json")
    surgery.save_model(model, out, max_shard_size=4000)
    (tmp_path / "notes.txt").write_text("mine")
    before = sorted(os.listdir(tmp_path))
    assert len(before) >= 5
    changed = model.__class__.from_config(model.get_config())
    randomize(changed, seed=9)
    surgery.save_model(changed, out, max_shard_size="1MB", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "s.weights.json", "s_00000.weights.h5"]
    fresh = model.__class__.from_config(model.get_config())
    fresh.load_weights(out)
    for a, b in zip(_weights(fresh), _weights(changed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_convert_writes_keras_shards(keras, samples, tmp_path):
    out = str(tmp_path / "k3.weights.json")
    r = CliRunner().invoke(main, ["convert", samples["keras2_mlp"], "-o", out,
                                  "--max-shard-size", "1KB"])
    assert r.exit_code == 0, r.output
    import tf_keras

    old = tf_keras.models.load_model(samples["keras2_mlp"], compile=False)  # the reference
    new = surgery.load_model(samples["keras2_mlp"])
    for w in new.weights:
        w.assign(np.zeros(w.shape, w.dtype))
    new.load_weights(out)
    for a, b in zip(_weights(new), [np.asarray(w) for w in old.get_weights()], strict=True):
        np.testing.assert_array_equal(a, b)
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".weights.h5")]) >= 2


# ------------------------------------------------------------------ safetensors shards

def _parse_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """The safetensors spec, restated: 8-byte little-endian header size N, N bytes of JSON
    (``{name: {dtype, shape, data_offsets}}``, optional ``__metadata__``), then the data, the
    offsets relative to its start, contiguous and covering it."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    kinds = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4",
             "BF16": ml_dtypes.bfloat16, "U8": "u1", "BOOL": "?"}
    out, cursor = {}, 0
    entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                     key=lambda kv: kv[1]["data_offsets"][0])
    for name, entry in entries:
        begin, end = entry["data_offsets"]
        assert begin == cursor, (name, begin, cursor)
        dtype = np.dtype(kinds[entry["dtype"]])
        assert end - begin == int(np.prod(entry["shape"], dtype=np.int64)) * dtype.itemsize
        out[name] = np.frombuffer(body[begin:end], dtype).reshape(entry["shape"])
        cursor = end
    assert cursor == len(body)
    return out


def _state_dict() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {"features.0.weight": rng.normal(size=(16, 3, 3, 3)).astype(np.float32),
            "features.0.bias": rng.normal(size=16).astype(np.float32),
            "features.1.running_var": rng.uniform(size=16).astype(np.float32),
            "features.1.num_batches_tracked": np.array(7, np.int64),
            "embed.weight": rng.normal(size=(500, 32)).astype(np.float32),  # 64000 B: alone
            "norm.weight": rng.normal(size=32).astype(ml_dtypes.bfloat16),
            "fc.weight": rng.normal(size=(10, 288)).astype(np.float16),
            "fc.bias": rng.normal(size=10).astype(np.float64)}


def test_safetensors_shards_follow_the_spec(tmp_path):
    tensors = _state_dict()
    index = str(tmp_path / "model.safetensors.index.json")
    written = write_safetensors_sharded(tensors, index, "10KB", metadata={"format": "pt"})
    n = len(written.shards)
    names = [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert sorted(os.listdir(tmp_path)) == sorted(["model.safetensors.index.json", *names])
    assert written.oversized == ("embed.weight",)
    raw = json.loads(open(index).read())
    total = sum(a.nbytes for a in tensors.values())
    assert raw["metadata"] == {"total_size": total}
    assert sorted(raw["weight_map"]) == list(raw["weight_map"]) == sorted(tensors)
    seen = {}
    for name in names:
        data = (tmp_path / name).read_bytes()
        (hn,) = struct.unpack("<Q", data[:8])
        assert json.loads(data[8:8 + hn])["__metadata__"] == {"format": "pt"}
        held = _parse_safetensors(data)
        assert held and (len(held) == 1 or sum(a.nbytes for a in held.values()) <= 10_000)
        for key, value in held.items():
            assert raw["weight_map"][key] == name and key not in seen
            seen[key] = value
    assert sorted(seen) == sorted(tensors)
    for key, value in tensors.items():  # bitwise, dtype included
        assert seen[key].dtype == value.dtype
        assert seen[key].tobytes() == np.ascontiguousarray(value).tobytes(), key
    order = [k for name in names for k in _parse_safetensors((tmp_path / name).read_bytes())]
    assert sorted(order, key=list(tensors).index) == order  # packed in the order given
    with surgery.open_weights(index) as w:  # surgery's reader reads it back
        assert sorted(w) == sorted(tensors)
        for key, value in tensors.items():
            assert w[key].tobytes() == value.tobytes() and w[key].dtype == value.dtype


def test_safetensors_one_shard_when_everything_fits(tmp_path):
    tensors = _state_dict()
    index = str(tmp_path / "weights.safetensors.index.json")
    written = write_safetensors_sharded(tensors, index, "2GB")
    assert os.listdir(tmp_path).count("weights-00001-of-00001.safetensors") == 1
    assert written.oversized == () and len(written.shards) == 1
    held = _parse_safetensors((tmp_path / "weights-00001-of-00001.safetensors").read_bytes())
    assert list(held) == list(tensors)  # file order = the order given


def test_transplant_to_a_weights_h5_writes_keras_weights_not_a_zip(tmp_path, samples):
    """-o x.weights.h5 goes through Keras (save_weights), and Keras's own load_weights reads
    it; the file-to-file writer, which only writes .keras archives, refuses other names."""
    import zipfile

    import keras
    from click.testing import CliRunner

    import surgery
    from cli import main
    from surgery.errors import OutputError

    out = tmp_path / "w.weights.h5"
    r = CliRunner().invoke(main, ["transplant", samples["cnn"], samples["cnn"], "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert not zipfile.is_zipfile(out)
    model = keras.saving.load_model(samples["cnn"])
    reference = [w.copy() for w in model.get_weights()]
    for layer in model.layers:  # scramble, then load the written file with Keras itself
        layer.set_weights([w * 0 for w in layer.get_weights()])
    model.load_weights(str(out))
    for got, want in zip(model.get_weights(), reference):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(OutputError, match="a file -> file transplant writes a .keras"):
        surgery.transplant_file(samples["cnn"], samples["cnn"], str(tmp_path / "x.weights.h5"))
