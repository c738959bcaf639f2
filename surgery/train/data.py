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
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError, InputError, OptionError, ShapeError

__all__ = ["Data", "load_data", "check_against_model", "train_pipeline", "eval_pipeline",
           "MAX_DATA_ENTRIES", "MAX_IMAGE_PIXELS", "samples", "as_inputs", "flat_arrays"]

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MAX_DATA_ENTRIES = 1_000_000  # files and folders looked at under an image or tf.data folder
MAX_IMAGE_PIXELS = 1 << 26  # pixels one image may declare (8192 x 8192), all frames together
_CSV_CHUNK = 4096  # rows parsed to float32 at a time
_NUMERIC = "biuf"


@dataclass
class Data:
    """Arrays for training (and validation), and where they came from. `x` (and `x_val`) is
    one array, or a dict of arrays by input name for a model with named inputs (a keras-hub
    text model's ``token_ids``, ``padding_mask``...), as Keras's `fit` takes them."""

    x: np.ndarray | dict[str, np.ndarray]
    y: np.ndarray
    x_val: np.ndarray | dict[str, np.ndarray] | None
    y_val: np.ndarray | None
    kind: str
    source: str
    classes: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # an image folder's files, relative to it, in sample order

    def describe(self) -> str:
        y = "no labels" if self.y is None else f"y {self.y.dtype}"
        val = f", {samples(self.x_val)} validation" if self.x_val is not None else ""
        shape = ", ".join(f"{k} {tuple(v.shape[1:])}" for k, v in self.x.items()) \
            if isinstance(self.x, dict) else f"{tuple(self.x.shape[1:])}"
        return (f"{self.source} ({self.kind}): {samples(self.x)} training samples{val}, x "
                f"{shape}, {y}")


def samples(x) -> int:
    """The number of samples in `x`: one array, or a dict of arrays by input name."""
    if isinstance(x, dict):
        return len(next(iter(x.values()))) if x else 0
    return len(x)


def _take(x, index):
    """The samples `index` of `x` (an array, or a dict of arrays by input name)."""
    return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]


def as_inputs(x):
    """`x` as the arrays `Data` holds: a dict of arrays by input name stays a dict."""
    if isinstance(x, dict):
        return {str(k): np.asarray(v) for k, v in x.items()}
    return np.asarray(x)


def flat_arrays(*items) -> tuple:
    """`items` with every dict of arrays spelled out as (name, array) pairs, sorted by name:
    what a checkpoint hashes to recognise its data."""
    out: list = []
    for item in items:
        if isinstance(item, dict):
            for key in sorted(item):
                out += [np.array(str(key)), item[key]]
        else:
            out.append(item)
    return tuple(out)


def _model_inputs(model) -> dict[str, Any]:
    """The model's input tensors by name: the keys of a model called on a dict (keras-hub's
    ``token_ids``, ``padding_mask``...), else each input layer's name."""
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):
        return {str(k): v for k, v in struct.items()}
    inputs = list(getattr(model, "inputs", None) or [])
    return {str(getattr(t, "name", f"input_{i}")): t for i, t in enumerate(inputs)}


def _named(model) -> bool:
    """The model takes a dict, or several inputs: its data must name them."""
    return isinstance(getattr(model, "_inputs_struct", None), dict) or \
        len(getattr(model, "inputs", None) or []) > 1


def _model_input(model) -> tuple[tuple, str]:
    tensor = model.inputs[0]
    dtype = str(getattr(tensor.dtype, "name", tensor.dtype))
    return tuple(tensor.shape[1:]), dtype


# ------------------------------------------------------------------ paths: regular files only

def _kind_of(path: str) -> str:
    """``a FIFO``, ``a character device``... (links followed)."""
    from ..io.sources import special_file_kind

    return special_file_kind(path) or "a special file"


def _stat_data(path: str) -> os.stat_result:
    """The data path's stat (links followed: the user named it); refuses anything that is
    neither a regular file nor a folder, without opening it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such data file or folder", path=path) from None
    except OSError as e:
        raise InputError(f"{path}: can't be read ({e.strerror}); check the path",
                         path=path) from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise InputError(f"{path}: is {_kind_of(path)}, not a data file or folder; "
                         "surgery reads training data only from regular files and folders",
                         path=path)
    return st


def _open_regular(path: str) -> io.BufferedReader:
    """Opens a regular file for reading; a FIFO or device is refused, never waited on (opened
    non-blocking, then checked on the open descriptor, so a swap after the check can't hang)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else _kind_of(path)
            raise InputError(f"{path}: is {kind}, not a regular file; surgery reads "
                             "training data only from regular files", path=path)
        fd = os.open(path, flags)
    except OSError as e:
        raise InputError(f"{path}: can't be read ({e.strerror}); check the path",
                         path=path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputError(f"{path}: is {_kind_of(path)}, not a regular file; surgery "
                         "reads training data only from regular files", path=path)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _inside(real: str, root: str) -> bool:
    try:
        return os.path.commonpath([real, root]) == root
    except ValueError:
        return False


class _Walk:
    """Walks a data folder: links followed only inside it, each folder read once, a bounded
    number of entries; files that would be read must be regular."""

    def __init__(self, top: str):
        self.top = top
        self.root = os.path.realpath(top)
        self.entries = 0

    def _count(self) -> None:
        self.entries += 1
        if self.entries > MAX_DATA_ENTRIES:
            raise InputError(f"{self.top}: more than {MAX_DATA_ENTRIES} files and folders; "
                             "a data folder holds at most that many (split it, or save the "
                             "data as an .npz)")

    @staticmethod
    def _scan(folder: str):
        try:
            return os.scandir(folder)
        except OSError as e:
            raise InputError(f"{folder}: can't be read ({e.strerror})", path=folder) from None

    def follow(self, full: str, *, read: bool) -> os.stat_result | None:
        """A link's target's stat, or None where it won't be used (not a folder, and not a
        file to read); refuses a used link that leads out of the folder."""
        try:
            st = os.stat(full)
        except OSError as e:
            if not read:
                return None
            raise InputError(f"{full}: can't be read ({e.strerror}); fix or remove it") \
                from None
        if not (read or stat.S_ISDIR(st.st_mode)):
            return None
        real = os.path.realpath(full)
        if not _inside(real, self.root):
            raise InputError(f"{full}: a symbolic link to {real}, outside the data folder "
                             f"{self.top}; surgery follows links only inside the data folder "
                             "(copy the files in instead)")
        return st

    def subfolders(self) -> list[str]:
        """Names of the top folder's subfolders (hidden ones left out, as Keras does), sorted."""
        out = []
        with self._scan(self.top) as it:
            for entry in it:
                self._count()
                if entry.name.startswith("."):
                    continue
                if entry.is_symlink():
                    st = self.follow(os.path.join(self.top, entry.name), read=False)
                    if st is not None and stat.S_ISDIR(st.st_mode):
                        out.append(entry.name)
                elif entry.is_dir(follow_symlinks=False):
                    out.append(entry.name)
        return sorted(out)

    def files(self, folder: str, wanted=lambda name: True) -> list[tuple[str, str]]:
        """(folder, name) of every wanted file under `folder`, sorted as Keras indexes them
        (by folder path, then name); each must be a regular file."""
        out: list[tuple[str, str]] = []
        seen: set[tuple[int, int]] = set()
        stack = [folder]
        while stack:
            here = stack.pop()
            try:
                st = os.stat(here)
            except OSError as e:
                raise InputError(f"{here}: can't be read ({e.strerror})") from None
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with self._scan(here) as it:
                for entry in it:
                    self._count()
                    full = os.path.join(here, entry.name)
                    read = wanted(entry.name)
                    if entry.is_symlink():
                        st = self.follow(full, read=read)
                        if st is None:
                            continue
                        mode = st.st_mode
                    else:
                        mode = entry.stat(follow_symlinks=False).st_mode
                    if stat.S_ISDIR(mode):
                        stack.append(full)
                    elif read:
                        if not stat.S_ISREG(mode):
                            raise InputError(f"{full}: is {_kind_of(full)}, not a regular "
                                             "file; remove it from the data folder")
                        out.append((here, entry.name))
        return sorted(out)


# ------------------------------------------------------------------ checks on arrays

def _index_text(index) -> str:
    return ", ".join(str(int(i)) for i in index)


def _check_finite(arr: np.ndarray, name: str, where: str) -> None:
    """Refuses NaN/Inf in an array of samples, naming the first bad element (checked in
    slices of samples: no full-size temporary)."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    step = max(1, (1 << 22) // max(1, arr[0].size))
    for start in range(0, len(arr), step):
        bad = ~np.isfinite(arr[start:start + step])
        if bad.any():
            index = np.argwhere(bad)[0]
            index[0] += start
            raise FormatError(f"{where}: {name}[{_index_text(index)}] is {arr[tuple(index)]}; "
                              "training data must be finite (no NaN or Inf); fix or drop "
                              f"sample {int(index[0])}")


def _not_numeric(name: str, dtype: str, where: str) -> FormatError:
    if name.startswith("y"):
        return FormatError(f"{where}: {name} holds {dtype} values; labels must be numbers "
                           "(class indices 0..N-1, one-hot rows or targets); map class names "
                           "to indices first")
    return FormatError(f"{where}: {name} holds {dtype} values; training data must be numbers "
                       "(bool, int or float); convert it first")


def _check_dtype(dtype, name: str, where: str) -> None:
    dtype = np.dtype(dtype)
    if dtype.kind not in _NUMERIC:
        raise _not_numeric(name, str(dtype), where)


def _check_lengths(x_len: int, y_len: int, names: tuple[str, str], where: str) -> None:
    if x_len != y_len:
        raise ShapeError(f"{where}: {names[0]} has {x_len} samples but {names[1]} has {y_len}; "
                         "give one label per sample")


# ------------------------------------------------------------------ .npz

def _npz_group(arrays: set[str], base: str, path: str) -> list[str]:
    """The members holding `base` (``x`` or ``x_val``): the one array ``base``, or one array
    ``base.<input name>`` per named input; [] when there is none."""
    named = sorted(k for k in arrays if k.startswith(base + "."))
    if base in arrays and named:
        raise FormatError(f"{path}: has both {base} and {', '.join(named[:3])}; give the inputs "
                          f"one way: one array {base}, or one array {base}.<input name> per "
                          "named input", path=path)
    if f"{base}." in named:
        raise FormatError(f"{path}: has an array named '{base}.' without an input name; name "
                          f"it {base}.<input name> (e.g. {base}.token_ids)", path=path)
    return [base] if base in arrays else named


def _npz_x(src, keys: list[str], base: str, path: str):
    """One array, or a dict by input name; named arrays must hold as many samples each."""
    if keys == [base]:
        return src.read(base)
    lengths = {k: src.shape(k)[0] for k in keys}
    first = keys[0]
    for k in keys[1:]:
        if lengths[k] != lengths[first]:
            raise ShapeError(f"{path}: {first} has {lengths[first]} samples but {k} has "
                             f"{lengths[k]}; every input needs one entry per sample", path=path)
    return {k[len(base) + 1:]: src.read(k) for k in keys}


def _load_npz(path: str, labels: bool = True):
    from ..io.sources import NpzSource

    _open_regular(path).close()  # a FIFO or device is refused before the zip reader opens it
    with NpzSource(path) as src:  # the checks weights get: bombs, truncation, pickles, sizes
        arrays = set(src)
        xs, xvs = _npz_group(arrays, "x", path), _npz_group(arrays, "x_val", path)
        missing = [k for k in ("x", "y") if (not xs if k == "x" else k not in arrays)
                   and (labels or k == "x")]
        if missing:
            raise FormatError(f"{path}: an .npz for training needs arrays 'x' and 'y'; it has "
                              f"{', '.join(sorted(arrays)) or 'none'}; save it with "
                              "np.savez(path, x=..., y=...)", path=path)
        val = [k for k, there in (("x_val", xvs), ("y_val", "y_val" in arrays)) if there]
        if len(val) == 1:
            other = "y_val" if val == ["x_val"] else "x_val"
            raise FormatError(f"{path}: has {val[0]} but no {other}; validation data needs "
                              "both (or neither)", path=path)
        ys = ["y"] * ("y" in arrays or labels) + ["y_val"] * bool(val)
        for key in xs + xvs + ys:
            _check_dtype(src.dtype(key), key, path)
            if not src.shape(key):
                raise FormatError(f"{path}: {key} is a scalar; it needs one entry per sample "
                                  "(shape (samples, ...))", path=path)
        if "y" in ys:
            _check_lengths(src.shape(xs[0])[0], src.shape("y")[0], (xs[0], "y"), path)
        if val:
            _check_lengths(src.shape(xvs[0])[0], src.shape("y_val")[0], (xvs[0], "y_val"),
                           path)
        x = _npz_x(src, xs, "x", path)
        xv = _npz_x(src, xvs, "x_val", path) if val else None
        got = {k: src.read(k) for k in ys}
        classes = _npz_classes(src, path) if "class_names" in arrays else ()
    return x, got.get("y"), xv, got.get("y_val"), classes


def _npz_classes(src, path: str) -> tuple[str, ...]:
    """An .npz's optional ``class_names`` (what `surgery sample-data` writes): a 1-D array
    of distinct non-empty strings, label ``i`` naming class ``class_names[i]``."""
    import zipfile

    from ..io.classnames import MAX_METADATA_BYTES, check_class_names

    info = src.info("class_names")
    dtype = np.dtype(info.dtype)
    if dtype.kind != "U" or len(info.shape) != 1:
        raise FormatError(f"{path}: class_names is {dtype} {info.shape}; it must be a 1-D "
                          "array of strings, one per class (np.savez(path, x=..., y=..., "
                          "class_names=np.array(['cat', 'dog'])))", path=path)
    if info.shape[0] * dtype.itemsize > MAX_METADATA_BYTES:
        raise FormatError(f"{path}: class_names holds {info.shape[0] * dtype.itemsize} bytes, "
                          f"more than the {MAX_METADATA_BYTES} allowed", path=path)
    try:
        with zipfile.ZipFile(path) as zf, zf.open(info.key) as f:
            names = np.lib.format.read_array(f, allow_pickle=False).tolist()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise FormatError(f"{path}: can't read class_names ({e})", path=path) from None
    return check_class_names(names, path)


# ------------------------------------------------------------------ CSV

def _csv_rows(path: str):
    """(line number, row) for every non-empty row, header first. Read as UTF-8 (a BOM is
    dropped); decoding and csv-format problems become one FormatError naming the line."""
    with io.TextIOWrapper(_open_regular(path), encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:
                line, reason = _first_bad_utf8(path)
                raise FormatError(f"{path}: line {line}: not UTF-8 text ({reason}); save the "
                                  "file as UTF-8", path=path) from None
            except csv.Error as e:
                raise FormatError(f"{path}: line {reader.line_num}: not a valid CSV row ({e}); "
                                  "fix that line", path=path) from None
            if row:
                yield reader.line_num, row


def _first_bad_utf8(path: str) -> tuple[int, str]:
    """Where a file stops being UTF-8 (the decoder works in blocks, so it can't say)."""
    with _open_regular(path) as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return n, f"{e.reason} at byte {e.start} of the line"
    return 0, "?"


def _bad_cell(path: str, line: int, column: str, value: str, why: str) -> FormatError:
    shown = value if len(value) <= 40 else value[:40] + "..."
    return FormatError(f"{path}: line {line}, column {column!r}: {shown!r} {why}", path=path)


def _load_csv(path: str, label: str | None, labels: bool = True):
    required = labels or label is not None  # a label column named by the user must be there
    label = label or "label"
    rows = _csv_rows(path)
    try:
        return _parse_csv(path, label, rows, required)
    finally:
        rows.close()


def _parse_csv(path: str, label: str, rows, required: bool = True):
    try:
        _, header = next(rows)
    except StopIteration:
        raise FormatError(f"{path}: empty CSV file; it needs a header row naming the columns "
                          "and one row per sample", path=path) from None
    if label not in header and required:
        shown = ", ".join(header[:12]) + (", ..." if len(header) > 12 else "")
        raise FormatError(f"{path}: no label column {label!r}; columns: {shown}; name one "
                          "with --label", path=path)
    idx = header.index(label) if label in header else None  # None: no labels (prediction)
    names = [h for i, h in enumerate(header) if i != idx]
    if not names:
        raise FormatError(f"{path}: no feature columns, only the label column {label!r}; "
                          "add the features as columns", path=path)
    chunks: list[np.ndarray] = []
    labels: list[str] = []
    lines: list[int] = []
    pending: list[list[str]] = []

    def flush() -> None:
        first = len(lines) - len(pending)
        table = np.empty((len(pending), len(names)), np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            for r, feats in enumerate(pending):
                try:
                    table[r] = [float(v) for v in feats]
                except ValueError:
                    c = next(c for c, v in enumerate(feats) if not _is_float(v))
                    raise _bad_cell(path, lines[first + r], names[c], feats[c],
                                    "is not a number; every column but the label must be "
                                    "numeric (name the label column with --label)") from None
        bad = ~np.isfinite(table)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise _bad_cell(path, lines[first + r], names[c], pending[r][c],
                            "is not a finite float32 number (NaN, Inf or too large); fix or "
                            "drop that row")
        chunks.append(table)
        pending.clear()

    for line, row in rows:
        if len(row) != len(header):
            raise FormatError(f"{path}: line {line} has {len(row)} fields but the header has "
                              f"{len(header)}; fix that row", path=path)
        labels.append("" if idx is None else row[idx])
        lines.append(line)
        pending.append(row if idx is None else row[:idx] + row[idx + 1:])
        if len(pending) >= _CSV_CHUNK:
            flush()
    if pending:
        flush()
    if not labels:
        raise FormatError(f"{path}: a CSV with a header and no rows; add one row per sample",
                          path=path)
    x = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    y, classes = _csv_labels(path, label, labels, lines) if idx is not None else (None, ())
    return x, y, None, None, classes


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_labels(path: str, column: str, raw: list[str], lines: list[int]):
    """Numbers (class indices, or regression targets) or class names, never a mix."""
    numeric = _is_float(raw[0])
    for value, line in zip(raw, lines):
        if not value.strip():
            raise _bad_cell(path, line, column, value, "is empty; every row needs a label")
        if _is_float(value) != numeric:
            first = "numbers" if numeric else "class names"
            raise _bad_cell(path, line, column, value,
                            f"breaks the column's kind: earlier labels are {first}; labels must "
                            "be all numbers or all class names")
    if not numeric:
        classes = tuple(sorted(set(raw)))
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[v] for v in raw], np.int64), classes
    y = np.array([float(v) for v in raw])
    bad = ~np.isfinite(y)
    if bad.any():
        r = int(np.argmax(bad))
        raise _bad_cell(path, lines[r], column, raw[r], "is not a finite number; fix or drop "
                        "that row")
    if np.all(y == np.round(y)) and np.abs(y).max() < 2 ** 31:
        return y.astype(np.int64), ()
    y32 = y.astype(np.float32)
    bad = ~np.isfinite(y32)
    if bad.any():
        r = int(np.argmax(bad))
        raise _bad_cell(path, lines[r], column, raw[r], "is too large for float32; fix or "
                        "drop that row")
    return y32, ()


# ------------------------------------------------------------------ image folders

def _image_pixels(data: bytes) -> int | None:
    """Pixels the image header declares (every GIF frame counted), or None when the bytes are
    not a PNG, JPEG, GIF or BMP image with a readable header."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return w * h
        if data[:2] == b"BM":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w) * abs(h)
        if data[:2] == b"\xff\xd8":
            return _jpeg_pixels(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return _gif_pixels(data)
    except (struct.error, IndexError):
        return None
    return None


def _jpeg_pixels(data: bytes) -> int | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w * h
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def _gif_pixels(data: bytes) -> int | None:
    w, h, flags = struct.unpack("<HHB", data[6:11])
    total = w * h
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while i < len(data):
        block = data[i]
        if block == 0x3B:  # trailer
            return total
        if block == 0x21:  # extension: label, then sub-blocks
            i += 2
        elif block == 0x2C:  # image descriptor, optional local colour table, LZW code size
            fw, fh, fflags = struct.unpack("<HHB", data[i + 5:i + 10])
            total += fw * fh
            i += 10 + (3 << ((fflags & 7) + 1) if fflags & 0x80 else 0) + 1
        else:
            return None
        while i < len(data) and data[i]:  # sub-blocks up to the empty one
            i += data[i] + 1
        i += 1
    return total


def _read_image(full: str) -> bytes:
    with _open_regular(full) as f:
        data = f.read()
    pixels = _image_pixels(data)
    if pixels is None:
        raise FormatError(f"{full}: not a readable PNG, JPEG, GIF or BMP image; replace or "
                          "remove it")
    if pixels > MAX_IMAGE_PIXELS:
        raise FormatError(f"{full}: declares {pixels} pixels, more than the "
                          f"{MAX_IMAGE_PIXELS} allowed for one image; refusing to decode it "
                          "(resize it first)")
    return data


def _load_images(path: str, model, seed: int, labels: bool = True):
    walk = _Walk(path)
    classes = walk.subfolders()
    is_image = lambda n: n.lower().endswith(_IMAGE_EXT)  # noqa: E731
    files = [(os.path.join(folder, name), label) for label, c in enumerate(classes)
             for folder, name in walk.files(os.path.join(path, c), is_image)]
    if not classes and not labels:  # images without class folders (prediction)
        files = [(os.path.join(folder, name), -1) for folder, name in walk.files(path, is_image)]
    if not files:
        raise InputError(f"{path}: no images found (an image folder needs one subfolder per "
                         f"class holding {'/'.join(_IMAGE_EXT)} files)", path=path)
    shape, _ = _model_input(model)
    if len(shape) != 3 or None in shape[:2]:
        raise ShapeError(f"{path}: an image folder needs a model with (height, width, channels) "
                         f"input; this one takes {shape}")
    channels = shape[2]
    if channels not in (1, 3, 4):
        raise ShapeError(f"{path}: the model takes {channels} channels; image folders give 1, "
                         "3 or 4")
    from ..io.tfimport import tensorflow

    tf = tensorflow()
    x = np.empty((len(files),) + tuple(shape), np.float32)
    for i, (full, _) in enumerate(files):
        data = _read_image(full)
        try:  # as keras.utils.image_dataset_from_directory: decode, bilinear resize
            image = tf.image.decode_image(data, channels=channels, expand_animations=False)
            image = tf.image.resize(image, shape[:2], method="bilinear")
        except (tf.errors.OpError, ValueError) as e:
            raise FormatError(f"{full}: not a readable image ({_tf_message(e)}); replace or "
                              "remove it") from None
        x[i] = image.numpy() / 255.0
    y = np.array([label for _, label in files], np.int64) if classes else None
    return x, y, None, None, tuple(classes), tuple(os.path.relpath(f, path) for f, _ in files)


def _tf_message(e: Exception) -> str:
    """The first line of a TensorFlow error, without its op and function decorations."""
    text = (str(getattr(e, "message", None) or e).splitlines() or [""])[0]
    text = re.sub(r"\s*\[Op:\w+\]", "", re.sub(r"\{\{[^}]*\}\}\s*", "", text)).strip()
    return text[:200]


# ------------------------------------------------------------------ saved tf.data

def _load_tfdata(path: str):
    walk = _Walk(path)
    stored = sum(os.path.getsize(os.path.join(folder, name))
                 for folder, name in walk.files(path))
    from ..io.tfimport import tensorflow

    tf = tensorflow()
    fix = "re-save it with tf.data.Dataset.save, or use an intact copy"
    try:
        ds = tf.data.Dataset.load(path)
        spec = ds.element_spec
    except Exception as e:  # TF and protobuf raise several kinds for a bad directory
        raise FormatError(f"{path}: can't load the saved tf.data dataset ({type(e).__name__}: "
                          f"{_tf_message(e)}); {fix}", path=path) from None
    if not (isinstance(spec, tuple) and len(spec) == 2
            and all(isinstance(s, tf.TensorSpec) for s in spec)):
        raise FormatError(f"{path}: a saved tf.data dataset for training must yield (x, y) "
                          f"pairs of tensors; it yields {spec}", path=path)
    for name, s in zip(("x", "y"), spec):
        if not (s.dtype.is_floating or s.dtype.is_integer or s.dtype.is_bool):
            raise _not_numeric(name, s.dtype.name, path)
    budget = 1000 * stored + (1 << 20)  # the same ratio a zip member may have
    xs, ys, held = [], [], 0
    try:
        for x, y in ds.as_numpy_iterator():
            held += x.nbytes + y.nbytes
            if held > budget:
                raise FormatError(f"{path}: the saved dataset expands beyond {budget} bytes "
                                  f"from {stored} stored; refusing a decompression bomb", path=path)
            xs.append(x)
            ys.append(y)
    except tf.errors.OpError as e:
        raise FormatError(f"{path}: damaged saved tf.data dataset ({type(e).__name__}: "
                          f"{_tf_message(e)}); {fix}", path=path) from None
    if not xs:
        raise FormatError(f"{path}: the saved tf.data dataset is empty", path=path)
    try:
        return np.stack(xs), np.array(ys), None, None, ()
    except ValueError:
        raise FormatError(f"{path}: the dataset's samples differ in shape ({xs[0].shape} and "
                          f"{next(a.shape for a in xs if a.shape != xs[0].shape)}); a "
                          "training set needs one shape", path=path) from None


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


def _head_width(model) -> int:
    return int(model.outputs[0].shape[-1])


def _fits(got: tuple, want: tuple) -> bool:
    return len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got))


def _labels_fit(y: np.ndarray, out: tuple) -> bool:
    """Rows shaped like the output (one-hot, targets), or integer class indices for it."""
    got = tuple(y.shape[1:])
    if got == (1,) or _fits(got, out):
        return True
    return y.dtype.kind in "iu" and (_fits(got, out[:-1]) or _fits(got, out[:-1] + (1,)))


def _head_name(model) -> str:
    try:  # the layer that produced the (first) output
        return f" {model.outputs[0]._keras_history[0].name!r}"
    except (AttributeError, IndexError, TypeError):
        return ""


def _check_classes(data: Data, model, width: int) -> None:
    """Refuses named classes (CSV names, image folders) that don't fit the head: as many
    as it has units, or two for a single unit."""
    n = len(data.classes)
    if not n or n == width or (width == 1 and n == 2):
        return
    names = ", ".join(data.classes[:8]) + (", ..." if n > 8 else "")
    units = f"{width} units" if width != 1 else "1 unit (2 classes)"
    raise ShapeError(f"{data.source}: {n} classes ({names}) but the model's head"
                     f"{_head_name(model)} has {units}; replace the head first: surgery head "
                     f"MODEL -o OUT --classes {n}")


def _parts(name: str, x) -> list[tuple[str, np.ndarray]]:
    """(name, array) of each array in `x`: ``x.token_ids``... for a dict by input name."""
    if isinstance(x, dict):
        return [(f"{name}.{k}", v) for k, v in x.items()]
    return [(name, x)]


def _check_arrays(data: Data, labels: bool) -> None:
    """Numbers only, finite, no scalars; as many samples in every array of a pair."""
    pairs = [("x", data.x, "y", data.y)]
    if data.x_val is not None or data.y_val is not None:
        pairs.append(("x_val", data.x_val, "y_val", data.y_val))
    for xn, x, yn, y in pairs:
        for name, arr in ((xn, x), (yn, y)):
            if name.startswith("y") and not labels:
                continue  # data to predict on: labels, if any, are not used
            if arr is None or (isinstance(arr, dict) and not arr):
                raise FormatError(f"{data.source}: {name} is missing; validation data needs "
                                  "both x and y")
            for part, a in _parts(name, arr):
                _check_dtype(a.dtype, part, data.source)
                if a.ndim == 0:
                    raise FormatError(f"{data.source}: {part} is a scalar; it needs one entry "
                                      "per sample")
                _check_finite(a, part, data.source)
        parts = _parts(xn, x)
        for part, a in parts[1:]:
            _check_lengths(len(parts[0][1]), len(a), (parts[0][0], part), data.source)
        if y is not None and labels:
            _check_lengths(samples(x), len(y), (parts[0][0], yn), data.source)
        if samples(x) == 0:
            raise FormatError(f"{data.source}: {xn} holds no samples; add samples")


def _check_shape(source: str, name: str, arr: np.ndarray, tensor) -> None:
    shape = tuple(tensor.shape[1:])
    got = tuple(arr.shape[1:])
    if len(got) != len(shape) or any(w is not None and w != g for w, g in zip(shape, got)):
        raise ShapeError(f"{source}: {name} samples have shape {got} but the model takes "
                         f"{shape}")


def _check_inputs(data: Data, model) -> None:
    """Sample shapes against the model's inputs; named arrays must be the model's inputs,
    all of them and only them."""
    inputs = _model_inputs(model)
    names = ", ".join(sorted(inputs))
    for name, arr in (("x", data.x), ("x_val", data.x_val)):
        if arr is None:
            continue
        if not isinstance(arr, dict):
            if _named(model):
                raise ShapeError(f"{data.source}: {name} is one array but the model takes named "
                                 f"inputs ({names}); save one array per input: "
                                 + ", ".join(f"{name}.{k}" for k in sorted(inputs)))
            _check_shape(data.source, name, arr, model.inputs[0])
            continue
        missing = sorted(set(inputs) - set(arr))
        unknown = sorted(set(arr) - set(inputs))
        if missing or unknown:
            what = "; ".join(
                ([f"missing {', '.join(f'{name}.{k}' for k in missing)}"] if missing else []) +
                ([f"unknown {', '.join(f'{name}.{k}' for k in unknown)}"] if unknown else []))
            raise ShapeError(f"{data.source}: {what}; the model's inputs are {names} (one "
                             f"array {name}.<input name> each)")
        for key, a in arr.items():
            _check_shape(data.source, f"{name}.{key}", a, inputs[key])


def _check_labels(data: Data, model) -> None:
    width = _head_width(model)
    _check_classes(data, model, width)
    out = tuple(model.outputs[0].shape[1:])
    for name, arr in (("y", data.y), ("y_val", data.y_val)):
        if arr is not None and arr.ndim > 1 and not _labels_fit(arr, out):
            raise ShapeError(f"{data.source}: {name} rows have shape {tuple(arr.shape[1:])} but "
                             f"the model's output is {out}; give class indices, or rows "
                             "shaped like the output")
        if arr is None or arr.dtype.kind not in "iu" or arr.size == 0:
            continue
        per_step = arr.ndim > 1 and len(out) > 1 and _fits(tuple(arr.shape[1:]), out[:-1])
        if arr.ndim != 1 and not per_step:  # one class index per sample, or per step (a LM)
            continue
        if arr.min() < 0 or (width > 1 and arr.max() >= width):
            raise ShapeError(f"{data.source}: {name} labels run {int(arr.min())}..{int(arr.max())}"
                             f" but the model's head has {width} units (classes 0..{width - 1});"
                             " replace the head first (surgery head --classes N)")


def check_against_model(data: Data, model, *, labels: bool = True) -> None:
    """Refuses data that can't train `model`: non-numeric or non-finite values, x and y of
    different lengths, sample shapes the model doesn't take (both shapes named), named
    arrays that are not the model's inputs (or one array for a model with named inputs),
    named classes that don't fit the head, labels beyond the head's width. With
    ``labels=False`` (data to predict on) labels and classes are not checked (`y` may be
    None)."""
    _check_arrays(data, labels)
    _check_inputs(data, model)
    if labels:
        _check_labels(data, model)


def train_pipeline(x, y: np.ndarray, *, batch_size: int, seed: int, first_epoch: int,
                   epochs: int):
    """A tf.data pipeline over epochs ``first_epoch..epochs-1``: each epoch's order is a
    stateless shuffle seeded by ``(seed, epoch)``, batched, prefetched. `x` is one array or
    a dict of arrays by input name (batches then give the dict, as Keras's `fit` takes it)."""
    from ..io.tfimport import tensorflow

    tf = tensorflow()
    n = samples(x)
    x_t, y_t = tf.nest.map_structure(tf.constant, x), tf.constant(y)

    def epoch(e):
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack(
            [tf.cast(seed, tf.int64), e]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size).map(
            lambda idx: (tf.nest.map_structure(lambda t: tf.gather(t, idx), x_t),
                         tf.gather(y_t, idx)))

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch).prefetch(
        tf.data.AUTOTUNE)


def eval_pipeline(x, y: np.ndarray, *, batch_size: int):
    from ..io.tfimport import tensorflow

    tf = tensorflow()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache().prefetch(
        tf.data.AUTOTUNE)
