"""Reading training data files: `.npz` (x, y[, x_val, y_val], named inputs as ``x.<name>``,
optional ``class_names``) through the checks weights get, and CSV (UTF-8, a label column),
parsed in chunks with every bad cell named by line and column. Each reader returns
``(x, y, x_val, y_val, classes)``; `train.data.load_data` dispatches to them."""

from __future__ import annotations

import csv
import io

import numpy as np

from ..errors import FormatError, ShapeError
from .data_safety import _check_dtype, _check_lengths, _open_regular

_CSV_CHUNK = 4096  # rows parsed to float32 at a time


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
