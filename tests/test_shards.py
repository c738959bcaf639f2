"""Sharded sources (surgery/io/shards.py): a Hugging Face `model.safetensors.index.json` and
Keras 3 `.weights.json` read wherever their unsharded files are (`open_weights`, `inspect`,
`diff`, `transplant`, Python and CLI). References: the arrays the shards were written from, the
same tensors written unsharded, a numpy re-statement of the PyTorch module the state dict
belongs to, and Keras's own `load_weights` of the sharded file."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.sample_models.tasks import make_shapes
from surgery.errors import InputError
from surgery.io.safetensors import write_safetensors
from tests.conftest import ROOT, leftovers
from tests.models import KITCHEN_SINK_PATHS, kitchen_sink, randomize
from tests.test_transplant import _torch_cnn_forward, _torch_cnn_state

TORCH_CNN_RULES = os.path.join(ROOT, "examples", "rules", "torch_cnn.toml")


def write_hf_shards(tensors: dict, folder, n: int) -> str:
    """Splits `tensors` (in order) into `n` shards named and indexed the way transformers'
    `save_pretrained` does; returns the index path."""
    names = list(tensors)
    weight_map = {}
    for i, chunk in enumerate(np.array_split(np.arange(len(names)), n), 1):
        shard = f"model-{i:05d}-of-{n:05d}.safetensors"
        part = {names[j]: tensors[names[j]] for j in chunk}
        write_safetensors(part, str(folder / shard))
        weight_map.update(dict.fromkeys(part, shard))
    index = folder / "model.safetensors.index.json"
    total = sum(np.asarray(a).nbytes for a in tensors.values())
    index.write_text(json.dumps({"metadata": {"total_size": total},
                                 "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    return str(index)


def mixed_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {"embed.weight": rng.normal(size=(20, 6)).astype(np.float32),
            "block.0.attn.weight": rng.normal(size=(6, 6)).astype(np.float16),
            "block.0.attn.bias": rng.normal(size=6).astype(ml_dtypes.bfloat16),
            "block.0.norm.weight": rng.normal(size=6).astype(np.float32),
            "steps": np.array([7], dtype=np.int64),
            "head.weight": rng.normal(size=(3, 6)).astype(np.float64)}


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality, dtype included (bfloat16 compared through its bits)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.tobytes() == b.tobytes()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------ Hugging Face index

def test_hf_index_reads_like_the_unsharded_file(tmp_path):
    tensors = mixed_tensors()
    index = write_hf_shards(tensors, tmp_path, 3)
    write_safetensors(tensors, str(tmp_path / "whole.safetensors"))
    with surgery.open_weights(index) as w, \
            surgery.open_weights(str(tmp_path / "whole.safetensors")) as whole:
        assert w.format == "safetensors.index.json" and len(w.files) == 3
        assert list(w) == list(whole) == list(tensors)
        assert w.variables() == whole.variables()
        for name, array in tensors.items():
            assert same(w[name], array), name
            assert same(w.read(name), whole.read(name)), name


def test_hf_index_is_lazy_and_holds_nothing(tmp_path):
    tensors = mixed_tensors()
    index = write_hf_shards(tensors, tmp_path, 2)
    before = open_fds()
    w = surgery.open_weights(index)
    assert open_fds() == before  # headers read, every shard closed again
    first = w.read("embed.weight")
    first[:] = 0  # the caller owns the array: the next read is fresh
    assert same(w.read("embed.weight"), tensors["embed.weight"])
    assert open_fds() == before
    # a shard is opened only when one of its tensors is read: moving shard 1 away after
    # opening leaves shard 2's tensors readable and names shard 1 on the first read from it
    shard1 = str(tmp_path / "model-00001-of-00002.safetensors")
    os.rename(shard1, shard1 + ".moved")
    assert same(w.read("head.weight"), tensors["head.weight"])
    with pytest.raises(InputError) as e:
        w.read("embed.weight")
    assert str(e.value) == (f"{shard1}: can't read tensor 'embed.weight' (No such file or "
                            "directory); the shard changed after the index was opened")


def _cnn_model(keras):
    L = keras.layers
    return keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(8, 3, name="conv"),
                             L.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn"),
                             L.ReLU(), L.Flatten(name="flat"), L.Dense(10, name="fc")])


def _shape_images() -> np.ndarray:
    x, _ = make_shapes(6, seed=3, size=8)  # the sample task's images, (n, 8, 8, 3)
    return x


def test_hf_index_transplant_gives_the_pytorch_module_logits(keras, tmp_path):
    state = _torch_cnn_state(np.random.default_rng(7))
    index = write_hf_shards(state, tmp_path, 2)
    model = _cnn_model(keras)
    report = surgery.transplant(index, model, TORCH_CNN_RULES)
    assert report.ok and not report.unused
    x = _shape_images()
    np.testing.assert_allclose(model(x), _torch_cnn_forward(state, x.transpose(0, 3, 1, 2)),
                               atol=1e-4)


def test_hf_index_through_the_cli(keras, tmp_path):
    state = _torch_cnn_state(np.random.default_rng(5))
    index = write_hf_shards(state, tmp_path, 3)
    write_safetensors(state, str(tmp_path / "whole.safetensors"))
    run = CliRunner().invoke
    sharded, whole = (json.loads(run(main, ["inspect", p, "--json"]).output)
                      for p in (index, str(tmp_path / "whole.safetensors")))
    assert sharded["variables"] == whole["variables"] and len(whole["variables"]) == len(state)
    r = run(main, ["diff", index, str(tmp_path / "whole.safetensors")])
    assert r.exit_code == 0, r.output
    changed = dict(state, **{"fc.bias": state["fc.bias"] + 1})
    write_safetensors(changed, str(tmp_path / "changed.safetensors"))
    r = run(main, ["diff", index, str(tmp_path / "changed.safetensors"), "--json"])
    assert r.exit_code == 1
    assert [v["path"] for v in json.loads(r.output)["variables"]
            if v["status"] == "changed"] == ["fc.bias"]
    target = str(tmp_path / "target.keras")
    _cnn_model(keras).save(target)
    out = str(tmp_path / "out.keras")
    r = run(main, ["transplant", index, target, "-o", out, "--rules", TORCH_CNN_RULES])
    assert r.exit_code == 0, r.output
    x = _shape_images()
    filled = keras.saving.load_model(out)
    np.testing.assert_allclose(filled(x), _torch_cnn_forward(state, x.transpose(0, 3, 1, 2)),
                               atol=1e-4)
    assert not leftovers(str(tmp_path))


# ------------------------------------------------------------------ Keras .weights.json

@pytest.fixture(scope="module")
def keras_shards(keras, tmp_path_factory):
    """The kitchen-sink model saved whole, as .weights.h5 and as sharded .weights.json (one
    layer's variables split over two shards), plus a differently initialized target."""
    folder = tmp_path_factory.mktemp("keras_shards")
    model = randomize(kitchen_sink(keras), seed=3)
    model.save(folder / "m.keras")
    model.save_weights(folder / "m.weights.h5")
    model.save_weights(folder / "m.weights.json", max_shard_size=1e-6)
    randomize(kitchen_sink(keras), seed=4).save(folder / "target.keras")
    weight_map = json.loads((folder / "m.weights.json").read_text())["weight_map"]
    assert len(set(f for v in weight_map.values() for f in v)) == 3
    assert any(len(v) == 2 for v in weight_map.values())  # a layer split over two shards
    return folder


@pytest.mark.parametrize("named", [True, False])
def test_keras_shards_have_the_unsharded_paths(keras_shards, named):
    arch = str(keras_shards / "m.keras") if named else None
    with surgery.open_weights(str(keras_shards / "m.weights.json"), architecture=arch) as w, \
            surgery.open_weights(str(keras_shards / "m.weights.h5"), architecture=arch) as h5:
        assert w.format == "weights.json" and len(w.files) == 3
        assert list(w) == list(h5) and w.variables() == h5.variables()
        assert w.layers() == h5.layers()
        if named:
            assert sorted(w) == sorted(KITCHEN_SINK_PATHS)
        for path in h5:
            assert same(w[path], h5[path]), path


def test_keras_shards_fill_a_model_as_keras_load_weights_does(keras, keras_shards):
    reference = kitchen_sink(keras)
    reference.load_weights(str(keras_shards / "m.weights.json"))  # Keras reads the shards
    model = kitchen_sink(keras)
    source = surgery.open_weights(str(keras_shards / "m.weights.json"),
                                  architecture=str(keras_shards / "m.keras"))
    with source:
        assert surgery.transplant(source, model, strict=True).ok
    got, want = model.get_weights(), reference.get_weights()
    assert len(got) == len(want) == len(KITCHEN_SINK_PATHS)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_keras_shards_through_the_cli(keras, keras_shards, tmp_path):
    src, arch = str(keras_shards / "m.weights.json"), str(keras_shards / "m.keras")
    run = CliRunner().invoke
    r = run(main, ["inspect", src, "--architecture", arch, "--json"])
    assert r.exit_code == 0, r.output
    assert [v["path"] for v in json.loads(r.output)["variables"]] == KITCHEN_SINK_PATHS
    r = run(main, ["diff", src, str(keras_shards / "m.weights.h5"), "--architecture-a", arch,
                   "--architecture-b", arch])
    assert r.exit_code == 0, r.output
    r = run(main, ["diff", src, str(keras_shards / "target.keras"), "--architecture-a", arch])
    assert r.exit_code == 1, r.output
    out = str(tmp_path / "out.keras")
    r = run(main, ["transplant", src, str(keras_shards / "target.keras"), "-o", out,
                   "--source-architecture", arch, "--strict"])
    assert r.exit_code == 0, r.output
    reference = kitchen_sink(keras)
    reference.load_weights(src)
    for a, b in zip(keras.saving.load_model(out).get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ["out.keras"]
