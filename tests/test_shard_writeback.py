"""Sharded Keras output starts its disk writes early (issue #21): each shard being written has
a `Writeback`, as the `.keras` writer has, so that the fsync before the set is published finds
little left; and the shards are unchanged by it.

References: Keras's own `save_weights(path, max_shard_size=)` of the source model, read back
with Keras's `load_weights` (the same index layout, the same weights bitwise), and the source
model's own weights."""

from __future__ import annotations

import json
import os
import threading


import surgery
from surgery.io import keras_shards, writeback
from tests.conftest import leftovers
from tests.models import randomize

LIMIT = 3 * 2 ** 19  # 1.5 MiB: exact as a fraction of Keras's GB unit (GiB)
FLUSH = 256 * 1024  # the writeback interval in this test (64 MB by default)


def _stack(keras):
    """~2.9 MB of Dense weights; Keras saves them in model order (dense ... dense_3)."""
    return keras.Sequential([keras.Input((512,))] + [
        keras.layers.Dense(u, name=f"d{i}") for i, u in enumerate((512, 512, 256, 10))],
        name="stack")


def _temp_member(path: str) -> str:
    """The final shard name of a temporary file `atomic_set` writes (`.<name>.surgery-tmp-...`)."""
    return os.path.basename(path).split(".surgery-tmp-")[0][1:]


def test_sharded_transplant_writes_back_early_and_matches_keras(keras, tmp_path, monkeypatch):
    source = randomize(_stack(keras), seed=3)
    source.save(tmp_path / "source.keras")
    _stack(keras).save(tmp_path / "target.keras")  # freshly initialized: other weights
    source.save_weights(tmp_path / "k.weights.json", max_shard_size=LIMIT / 2 ** 30)

    made, synced = [], []

    class Spy(writeback.Writeback):
        def __init__(self, fd: int):
            self.file = _temp_member(os.readlink(f"/proc/self/fd/{fd}"))
            self.bytes = self.covered = 0  # bytes written; bytes whose writeback started
            made.append(self)
            super().__init__(fd)

        def wrote(self, nbytes: int) -> None:
            self.bytes += nbytes
            super().wrote(nbytes)

        def start(self) -> None:
            self.covered += self._pending
            super().start()

    real_sync = getattr(os, "fdatasync", os.fsync)

    def sync(fd: int) -> None:
        synced.append(_temp_member(os.readlink(f"/proc/self/fd/{fd}")))
        real_sync(fd)

    monkeypatch.setattr(keras_shards, "Writeback", Spy)  # where the writer looks it up
    monkeypatch.setattr(writeback, "_FLUSH", FLUSH)
    monkeypatch.setattr(os, "fdatasync", sync)
    out = str(tmp_path / "s.weights.json")
    report = surgery.transplant_file(str(tmp_path / "source.keras"),
                                     str(tmp_path / "target.keras"), out, max_shard_size=LIMIT)
    assert len(report.copied) == len(source.weights)

    names = json.loads((tmp_path / "s.weights.json").read_text())["weight_map"]
    files = sorted({f for group in names.values() for f in group})
    assert len(files) >= 3
    # every shard had its writeback, fed every byte of its tensors and stopped; every byte's
    # writeback started before the final fsync, but for the last shard's last < FLUSH bytes
    assert sorted(w.file for w in made) == files
    for w in made:
        size = os.path.getsize(tmp_path / w.file)
        assert 0.9 * size < w.bytes <= size, (w.file, w.bytes, size)
        if w.file != files[-1]:
            assert w.covered == w.bytes, (w.file, w.covered, w.bytes)
        else:
            assert 0 <= w.bytes - w.covered < FLUSH <= w.covered, (w.file, w.covered, w.bytes)
        assert not w._thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "surgery-writeback"]
    assert synced and set(synced) <= set(files)  # disk writes started on the shards
    assert not leftovers(str(tmp_path))

    # unchanged: the layout Keras writes, and Keras reads back the same weights bitwise
    keras_map = json.loads((tmp_path / "k.weights.json").read_text())["weight_map"]
    assert names == {g: [f.replace("k_", "s_", 1) for f in fs] for g, fs in keras_map.items()}
    ours, theirs = _stack(keras), _stack(keras)
    ours.load_weights(out)
    theirs.load_weights(str(tmp_path / "k.weights.json"))
    for a, b, want in zip(ours.get_weights(), theirs.get_weights(), source.get_weights(),
                          strict=True):
        assert a.dtype == b.dtype == want.dtype and a.tobytes() == b.tobytes() == want.tobytes()


def test_save_model_shards_write_back_too(keras, tmp_path, monkeypatch):
    """The copy path (`save_model`: every dataset copied from the model's weights tree)."""
    model = randomize(_stack(keras), seed=4)
    made = []

    class Spy(writeback.Writeback):
        def __init__(self, fd: int):
            made.append(self)
            self.bytes = 0
            super().__init__(fd)

        def wrote(self, nbytes: int) -> None:
            self.bytes += nbytes
            super().wrote(nbytes)

    monkeypatch.setattr(keras_shards, "Writeback", Spy)  # where the writer looks it up
    out = str(tmp_path / "m.weights.json")
    surgery.save_model(model, out, max_shard_size=LIMIT)
    shard_bytes = sum(os.path.getsize(tmp_path / n) for n in os.listdir(tmp_path)
                      if n.endswith(".weights.h5"))
    weight_bytes = sum(w.nbytes for w in model.get_weights())
    assert len(made) >= 3 and sum(w.bytes for w in made) == weight_bytes <= shard_bytes
    fresh = _stack(keras)
    fresh.load_weights(out)
    for a, want in zip(fresh.get_weights(), model.get_weights(), strict=True):
        assert a.tobytes() == want.tobytes()
