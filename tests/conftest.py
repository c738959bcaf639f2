"""Shared fixtures. TensorFlow-heavy fixtures are session-scoped: each import costs seconds."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "sample_models")


def sha256(path: str) -> str:
    h = hashlib.sha256()
    if os.path.isdir(path):
        for folder, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                with open(os.path.join(folder, name), "rb") as f:
                    h.update(name.encode() + f.read())
        return h.hexdigest()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def traced_peak(fn) -> int:
    """The peak memory Python allocations reach while `fn()` runs (tracemalloc), after the
    file -> file modules are imported, so that their own import is not counted."""
    import tracemalloc

    import surgery.io.atomic, surgery.io.kerasfile_writer, surgery.io.safetensors  # noqa: F401
    import surgery.io.shards, surgery.transfer.export_write  # noqa: F401
    import surgery.transfer.transplant  # noqa: F401

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def leftovers(folder: str) -> list[str]:
    """Temporary files surgery may have left in a folder."""
    return [n for n in os.listdir(folder) if ".surgery-tmp-" in n]


@pytest.fixture(scope="session")
def keras():
    """Keras 3, imported once for the session (each import of TensorFlow costs seconds)."""
    import keras
    return keras


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> dict[str, str]:
    """Read-only copies of the shipped sample models (tests must not touch the originals)."""
    out = tmp_path_factory.mktemp("samples")
    paths = {}
    for name in ("cnn.keras", "lstm.keras", "keras2_mlp.h5", "hub_module"):
        src = os.path.join(SAMPLES, name)
        dst = os.path.join(out, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, dst)
        paths[name.split(".")[0]] = dst
    return paths
