"""Training data for `surgery finetune`: `.npz`, CSV, image folders, saved `tf.data` datasets.

Everything is read into memory as numpy arrays (the cache), checked against the model (input
shape, label range against the head's width), and split for validation; `train_pipeline` then
builds a `tf.data` pipeline whose shuffle order for epoch ``e`` depends only on ``(seed, e)``,
so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
import numpy as np

from .errors import InputError, OptionError, ShapeError

__all__ = ["Data", "load_data", "check_against_model", "train_pipeline", "eval_pipeline"]

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass
class Data:
    """Arrays for training (and validation), and where they came from."""

    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    kind: str
    source: str
    classes: tuple[str, ...] = ()

    def describe(self) -> str:
        val = f", {len(self.x_val)} validation" if self.x_val is not None else ""
        return (f"{self.source} ({self.kind}): {len(self.x)} training samples{val}, x "
                f"{tuple(self.x.shape[1:])}, y {self.y.dtype}")


def _model_input(model) -> tuple[tuple, str]:
    tensor = model.inputs[0]
    dtype = str(getattr(tensor.dtype, "name", tensor.dtype))
    return tuple(tensor.shape[1:]), dtype


def _load_npz(path: str):
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: not a readable .npz ({e})") from None
    with data:
        missing = [k for k in ("x", "y") if k not in data.files]
        if missing:
            raise InputError(f"{path}: an .npz for training needs arrays 'x' and 'y'; it has "
                             f"{', '.join(data.files) or 'none'}")
        x, y = data["x"], data["y"]
        xv = data["x_val"] if "x_val" in data.files else None
        yv = data["y_val"] if "y_val" in data.files else None
    return x, y, xv, yv, ()


def _load_csv(path: str, label: str | None):
    label = label or "label"
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"{path}: empty CSV file") from None
        if label not in header:
            raise InputError(f"{path}: no label column {label!r}; columns: "
                             f"{', '.join(header[:12])}; name one with --label")
        idx = header.index(label)
        rows = []
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise InputError(f"{path}:{n}: {len(row)} fields, the header has {len(header)}")
            rows.append(row)
    if not rows:
        raise InputError(f"{path}: a CSV with a header and no rows")
    try:
        table = np.array([[float(v) for i, v in enumerate(r) if i != idx] for r in rows],
                         np.float32)
    except ValueError as e:
        raise InputError(f"{path}: a feature value is not a number ({e})") from None
    raw = [r[idx] for r in rows]
    try:
        y = np.array([float(v) for v in raw])
        y = y.astype(np.int64) if np.all(y == np.round(y)) else y.astype(np.float32)
        classes: tuple[str, ...] = ()
    except ValueError:
        classes = tuple(sorted(set(raw)))
        y = np.array([classes.index(v) for v in raw], np.int64)
    return table, y, None, None, classes


def _load_images(path: str, model, seed: int):
    from .tfimport import keras

    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    files = [f for c in classes for f in os.listdir(os.path.join(path, c))
             if f.lower().endswith(_IMAGE_EXT)]
    if not classes or not files:
        raise InputError(f"{path}: no images found (an image folder needs one subfolder per "
                         f"class holding {'/'.join(_IMAGE_EXT)} files)")
    shape, _ = _model_input(model)
    if len(shape) != 3 or None in shape[:2]:
        raise ShapeError(f"{path}: an image folder needs a model with (height, width, channels) "
                         f"input; this one takes {shape}")
    mode = {1: "grayscale", 3: "rgb", 4: "rgba"}.get(shape[2])
    if mode is None:
        raise ShapeError(f"{path}: the model takes {shape[2]} channels; image folders give 1, 3 "
                         "or 4")
    ds = keras().utils.image_dataset_from_directory(
        path, labels="inferred", label_mode="int", color_mode=mode, batch_size=None,
        image_size=shape[:2], shuffle=False, seed=seed, verbose=False)
    xs, ys = [], []
    for x, y in ds.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return np.stack(xs).astype(np.float32) / 255.0, np.array(ys, np.int64), None, None, \
        tuple(classes)


def _load_tfdata(path: str):
    from .tfimport import tensorflow

    tf = tensorflow()
    try:
        ds = tf.data.Dataset.load(path)
    except Exception as e:  # TF raises several kinds for a bad directory
        raise InputError(f"{path}: can't load the saved tf.data dataset ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    spec = ds.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise InputError(f"{path}: a saved tf.data dataset for training must yield (x, y) "
                         f"pairs; it yields {spec}")
    xs, ys = [], []
    for x, y in ds.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    if not xs:
        raise InputError(f"{path}: the saved tf.data dataset is empty")
    return np.stack(xs), np.array(ys), None, None, ()


def load_data(path: str, model, *, label: str | None = None, val: str | None = None,
              val_split: float | None = None, seed: int = 0) -> Data:
    """Reads training data and checks it against `model`.

    Args:
        path: `.npz` (x, y[, x_val, y_val]), `.csv` (features + `label` column), an image
            folder (one subfolder per class; scaled to [0, 1] and resized to the model's
            input), or a directory saved with ``tf.data.Dataset.save`` yielding (x, y).
        model: the model to train (input shape, head width).
        label: the CSV label column (default ``label``).
        val: a second data path for validation.
        val_split: a fraction of the training data held out for validation (seeded).
        seed: the split's seed.

    Raises:
        InputError: a missing or unknown data path, missing columns/arrays, an empty folder.
        ShapeError: x that doesn't fit the model's input; labels beyond the head's width.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such data file or folder")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "dataset_spec.pb")):
            kind, loaded = "tf.data", _load_tfdata(path)
        else:
            kind, loaded = "images", _load_images(path, model, seed)
    elif path.lower().endswith(".npz"):
        kind, loaded = "npz", _load_npz(path)
    elif path.lower().endswith(".csv"):
        kind, loaded = "csv", _load_csv(path, label)
    else:
        raise InputError(f"{path}: unknown kind of data; use an .npz (x, y), a .csv with a "
                         "label column, an image folder, or a saved tf.data directory")
    x, y, xv, yv, classes = loaded
    if len(x) != len(y):
        raise ShapeError(f"{path}: x has {len(x)} samples but y has {len(y)}")
    if len(x) == 0:
        raise InputError(f"{path}: no training samples")
    if val is not None:
        other = load_data(val, model, label=label, seed=seed)
        xv, yv = other.x, other.y
    elif val_split:
        if not 0 < val_split < 1:
            raise OptionError(f"--val-split must be between 0 and 1, got {val_split}")
        order = np.random.default_rng(seed).permutation(len(x))
        n_val = max(1, int(round(len(x) * val_split)))
        xv, yv = x[order[:n_val]], y[order[:n_val]]
        x, y = x[order[n_val:]], y[order[n_val:]]
    data = Data(x, y, xv, yv, kind, path, classes)
    check_against_model(data, model)
    return data


def _head_width(model) -> int:
    return int(model.outputs[0].shape[-1])


def check_against_model(data: Data, model) -> None:
    """Refuses data whose sample shape or labels don't fit the model (both shapes named)."""
    shape, dtype = _model_input(model)
    for name, arr in (("x", data.x), ("x_val", data.x_val)):
        if arr is None:
            continue
        got = tuple(arr.shape[1:])
        if len(got) != len(shape) or any(w is not None and w != g for w, g in zip(shape, got)):
            raise ShapeError(f"{data.source}: {name} samples have shape {got} but the model "
                             f"takes {shape}")
    width = _head_width(model)
    for name, arr in (("y", data.y), ("y_val", data.y_val)):
        if arr is None or arr.dtype.kind not in "iu" or arr.ndim != 1:
            continue
        if arr.min() < 0 or (width > 1 and arr.max() >= width):
            raise ShapeError(f"{data.source}: {name} labels run {int(arr.min())}..{int(arr.max())}"
                             f" but the model's head has {width} units (classes 0..{width - 1});"
                             " replace the head first (surgery head --classes N)")


def train_pipeline(x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int,
                   first_epoch: int, epochs: int):
    """A tf.data pipeline over epochs ``first_epoch..epochs-1``: each epoch's order is a
    stateless shuffle seeded by ``(seed, epoch)``, batched, prefetched."""
    from .tfimport import tensorflow

    tf = tensorflow()
    n = len(x)
    x_t, y_t = tf.constant(x), tf.constant(y)

    def epoch(e):
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack(
            [tf.cast(seed, tf.int64), e]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size).map(
            lambda idx: (tf.gather(x_t, idx), tf.gather(y_t, idx)))

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch).prefetch(
        tf.data.AUTOTUNE)


def eval_pipeline(x: np.ndarray, y: np.ndarray, *, batch_size: int):
    from .tfimport import tensorflow

    tf = tensorflow()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache().prefetch(
        tf.data.AUTOTUNE)
