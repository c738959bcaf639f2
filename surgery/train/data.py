"""Training data for `surgery finetune`: `.npz`, CSV, image folders, saved `tf.data` datasets.

Everything is read into memory as numpy arrays (the cache), checked against the model (input
shape, label range against the head's width), and split for validation; `train_pipeline` then
builds a `tf.data` pipeline whose shuffle order for epoch ``e`` depends only on ``(seed, e)``,
so a resumed run sees the same batches as an uninterrupted one.

Data files are untrusted, and nothing is allocated before the file has shown it holds it:

- only regular files (and folders where a folder is expected) are read: a FIFO, a device or a
  socket given as data, or found where an image would be read, is refused before it is opened;
- an `.npz` goes through the checks weights get (`sources.NpzSource`: zip bombs, members
  outside the archive, truncation, pickles, shapes larger than the stored bytes), and its
  arrays' dtypes and lengths are checked before any array is read;
- in an image folder (and a saved `tf.data` folder) symbolic links are followed only while
  they stay inside the data folder: a link that leads out of it is refused (an error naming
  the link), each folder is read once (links can't loop), at most `MAX_DATA_ENTRIES` files
  and folders are looked at, and an image whose header declares more than
  `MAX_IMAGE_PIXELS` pixels is refused before it is decoded;
- NaN or Inf in features or labels is refused, naming the first bad row and column (CSV) or
  element (arrays).

Each problem is one `SurgeryError` line naming the file (and row/column where it applies):
`InputError` for a path that can't be used, `FormatError` for contents that break the format,
`ShapeError` for data that doesn't fit the model.

Where it lives: this module reads a path and dispatches (`load_data`, the validation split);
`data_arrays` holds `Data` and the helpers over one array or a dict of arrays (`samples`,
`as_inputs`, `flat_arrays`); `data_safety` the checks on paths, folder walks and arrays
(`MAX_DATA_ENTRIES`); `data_files` the `.npz` and CSV readers; `data_images` the image and
saved `tf.data` folders (`MAX_IMAGE_PIXELS`); `data_checks` `check_against_model`;
`pipelines` `train_pipeline` and `eval_pipeline`. Every name listed in `__all__` is importable
from here too; the two limits are read where they are defined, so change them there
(`data_safety.MAX_DATA_ENTRIES`, `data_images.MAX_IMAGE_PIXELS`).
"""

from __future__ import annotations

import os
import stat

import numpy as np

from ..errors import FormatError, InputError, OptionError
from .data_arrays import Data, _take, as_inputs, flat_arrays, samples
from .data_checks import check_against_model
from .data_files import _load_csv, _load_npz
from .data_images import MAX_IMAGE_PIXELS, _load_images, _load_tfdata
from .data_safety import MAX_DATA_ENTRIES, _stat_data
from .pipelines import eval_pipeline, train_pipeline

__all__ = ["Data", "load_data", "check_against_model", "train_pipeline", "eval_pipeline",
           "MAX_DATA_ENTRIES", "MAX_IMAGE_PIXELS", "samples", "as_inputs", "flat_arrays"]


# ------------------------------------------------------------------ entry point

def load_data(path: str, model, *, label: str | None = None, val: str | None = None,
              val_split: float | None = None, seed: int = 0, labels: bool = True) -> Data:
    """Reads training data and checks it against `model`.

    Args:
        path: `.npz` (x, y[, x_val, y_val]; a model with named inputs, such as a keras-hub
            text model's ``token_ids`` and ``padding_mask``, takes one array
            ``x.<input name>`` (``x_val.<input name>``) per input), `.csv` (features +
            `label` column; UTF-8, a BOM allowed), an image folder (one subfolder per class;
            scaled to [0, 1] and resized to the model's input as
            `keras.utils.image_dataset_from_directory` does), or a directory saved with
            ``tf.data.Dataset.save`` yielding (x, y).
        model: the model to train (input shape, head width).
        label: the CSV label column (default ``label``).
        val: a second data path for validation.
        val_split: a fraction of the training data held out for validation (seeded).
        seed: the split's seed.
        labels: False for data to predict on: labels become optional (an .npz with only `x`,
            a CSV without the label column, an image folder without class subfolders), and
            `y` is None where there are none.

    Raises:
        InputError: a missing path, one that is not a regular file or folder (a FIFO, a
            device), a link out of the data folder, an unknown kind of data, an empty folder.
        FormatError: contents that break the format (empty or ragged CSV, non-numeric or
            non-finite values, mixed label kinds, an .npz without x/y, object or string
            arrays, a zip bomb, an unreadable image, a damaged tf.data folder).
        ShapeError: x that doesn't fit the model's input (named arrays that are not the
            model's inputs, or plain x for a model with named inputs); labels beyond the
            head's width; named classes (CSV names, image folders) whose number doesn't fit
            the head; x and y of different lengths.

    Example:
    ```python
    data = load_data("table.csv", model, label="target", val_split=0.2, seed=0)
    ```
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"training data must be a path (.npz, .csv, image folder, saved "
                         f"tf.data) or an (x, y) pair, got {type(path).__name__}")
    path = os.fspath(path)
    st = _stat_data(path)
    if stat.S_ISDIR(st.st_mode):
        spec = os.path.join(path, "dataset_spec.pb")
        if os.path.lexists(spec):
            kind, loaded = "tf.data", _load_tfdata(path)
        else:
            kind, loaded = "images", _load_images(path, model, seed, labels)
    elif path.lower().endswith(".npz"):
        kind, loaded = "npz", _load_npz(path, labels)
    elif path.lower().endswith(".csv"):
        kind, loaded = "csv", _load_csv(path, label, labels)
    else:
        raise InputError(f"{path}: unknown kind of data; use an .npz (x, y), a .csv with a "
                         "label column, an image folder, or a saved tf.data directory", path=path)
    x, y, xv, yv, classes = loaded[:5]
    if samples(x) == 0:
        raise FormatError(f"{path}: no training samples (x is empty); add samples", path=path)
    if val is not None:
        other = load_data(val, model, label=label, seed=seed)
        xv, yv = other.x, other.y
    elif val_split:
        if not 0 < val_split < 1:
            raise OptionError(f"--val-split must be between 0 and 1, got {val_split}")
        order = np.random.default_rng(seed).permutation(samples(x))
        n_val = max(1, int(round(samples(x) * val_split)))
        xv, yv = _take(x, order[:n_val]), y[order[:n_val]]
        x, y = _take(x, order[n_val:]), y[order[n_val:]]
    files = loaded[5] if len(loaded) > 5 and not val_split else ()  # a split reorders x
    data = Data(x, y, xv, yv, kind, path, classes, files)
    check_against_model(data, model, labels=labels)
    return data
