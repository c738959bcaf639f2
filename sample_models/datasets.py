"""The sample tasks' data as files a user can train and evaluate on: `surgery sample-data`.

Each task is one of `sample_models.tasks`' generators, with its class names:

=================  ===========================================================================
task               what
=================  ===========================================================================
shapes             the sample CNN's pretraining task: 8 shapes (32x32 RGB)
new-shapes         the CNN transfer task: 4 shapes the CNN never saw (x, ell, tee, frame)
motifs             the sample LSTM's pretraining task: 6 motif classes in token sequences
motif-families     the LSTM transfer task: 3 families of two motifs, noisier sequences
blobs              8-way 16-d vectors (the Hub module's and the Keras 2 model's task)
=================  ===========================================================================

Formats: ``.npz`` (``x``, ``y``, ``class_names``), ``.csv`` (blobs: one column per feature and
a ``label`` column of class names) or an image folder (shapes: one subfolder per class of PNG
files, as ``keras.utils.image_dataset_from_directory`` reads them). Written atomically; numpy
only (PNG through zlib).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import tasks

__all__ = ["TASKS", "SampleTask", "write_task", "png_bytes"]


@dataclass(frozen=True)
class SampleTask:
    name: str
    summary: str
    classes: tuple[str, ...]
    make: Callable[[int, int], tuple[np.ndarray, np.ndarray]]
    images: bool = False
    table: bool = False


TASKS = {t.name: t for t in [
    SampleTask("shapes", "the sample CNN's pretraining task: 8 shapes, 32x32 RGB",
               tasks.PRETRAIN_SHAPES,
               lambda n, seed: tasks.make_shapes(n, tasks.PRETRAIN_SHAPES, seed=seed),
               images=True),
    SampleTask("new-shapes", "the CNN transfer task: 4 shapes the sample CNN never saw",
               tasks.TRANSFER_SHAPES,
               lambda n, seed: tasks.make_shapes(n, tasks.TRANSFER_SHAPES, seed=seed),
               images=True),
    SampleTask("motifs", "the sample LSTM's pretraining task: 6 motifs in token sequences",
               tasks.motif_names(tasks.PRETRAIN_MOTIFS),
               lambda n, seed: tasks.make_motifs(n, tasks.PRETRAIN_MOTIFS, seed=seed)),
    SampleTask("motif-families", "the LSTM transfer task: 3 families of two motifs",
               tuple(f"family-{i}" for i in range(3)),
               lambda n, seed: tasks.make_motif_families(n, seed=seed)),
    SampleTask("blobs", "8-way 16-d vectors (the Hub module's and Keras 2 model's task)",
               tuple(f"blob-{i}" for i in range(8)),
               lambda n, seed: tasks.make_blobs(n, seed=seed), table=True),
]}


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit PNG of an (h, w, 1 or 3) float image in [0, 1]."""
    pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    h, w, c = pixels.shape
    color = {1: 0, 3: 2}[c]
    rows = b"".join(b"\x00" + pixels[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))


def write_task(name: str, path: str, *, n: int, seed: int = 0, per_class: int | None = None,
               channels: int = 3, overwrite: bool = False) -> dict:
    """Writes task `name`'s data to `path` (.npz, .csv, or a folder for images).

    Args:
        n: samples drawn (before `per_class`).
        per_class: keep the first `per_class` samples of each class (a few-label set).
        channels: 1 averages the RGB shape images to gray (for a 1-channel model).

    Returns:
        What was written: path, format, samples, class names, per-class counts.

    Raises:
        OptionError: an unknown task, a format the task can't be written in, bad counts.
        OutputError / OutputExists: the output can't be written (nothing is left behind).
    """
    from surgery.errors import OptionError
    from surgery.io.atomic import atomic_dir, atomic_path

    task = TASKS.get(name)
    if task is None:
        raise OptionError(f"unknown sample task {name!r}; tasks: {', '.join(TASKS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise OptionError(f"--n must be a positive number of samples, got {n!r}")
    if per_class is not None and (isinstance(per_class, bool) or per_class < 1):
        raise OptionError(f"--per-class must be a positive number, got {per_class!r}")
    if channels not in (1, 3) or (channels == 1 and not task.images):
        raise OptionError(f"--channels {channels}: only the image tasks (shapes, new-shapes) "
                          "take --channels, and only 1 or 3")
    kind = _kind(path, task)
    x, y = task.make(n, seed)
    if per_class is not None:
        x, y = tasks.balanced(x, y, per_class)
    if channels == 1:
        x = x.mean(axis=-1, keepdims=True).astype(np.float32)
    names = np.array(task.classes)
    if kind == "npz":
        with atomic_path(path, overwrite=overwrite) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, x=x, y=y, class_names=names)
    elif kind == "csv":
        with atomic_path(path, overwrite=overwrite) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(",".join([f"f{i}" for i in range(x.shape[1])] + ["label"]) + "\n")
                for row, label in zip(x, y):
                    f.write(",".join(f"{v:.6g}" for v in row) + f",{names[label]}\n")
    else:
        with atomic_dir(path, overwrite=overwrite) as tmp:
            for c in names:
                os.mkdir(os.path.join(tmp, c))
            for i, (image, label) in enumerate(zip(x, y)):
                with open(os.path.join(tmp, names[label], f"{i:05d}.png"), "wb") as f:
                    f.write(png_bytes(image))
    counts = {str(c): int((y == i).sum()) for i, c in enumerate(names)}
    return {"task": name, "path": path, "format": kind, "samples": int(len(y)),
            "sample_shape": list(x.shape[1:]), "class_names": list(map(str, names)),
            "per_class": counts}


def _kind(path: str, task: SampleTask) -> str:
    from surgery.errors import OptionError

    lower = os.fspath(path).lower()
    if lower.endswith(".npz"):
        return "npz"
    if lower.endswith(".csv"):
        if not task.table:
            raise OptionError(f"{path}: task {task.name} is not a table; write it as .npz"
                              + (" or an image folder" if task.images else ""))
        return "csv"
    if not task.images:
        raise OptionError(f"{path}: write task {task.name} as .npz"
                          + (" or .csv" if task.table else ""))
    return "images"
