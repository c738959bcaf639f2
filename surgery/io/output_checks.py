"""Checks on outputs, before anything is written: `check_output`, `check_outputs`,
`check_output_dir`.

The rules every output follows (DESIGN §5, §7.13), as far as they can be checked up front:

- Every path a command reads is an input and is never written: an output may not be an input
  (same real path, symlink or hard link) nor lie inside an input folder; the shards an index
  names are inputs too.
- Outputs are regular files (or, for exports, folders) that are absent or replaced whole. A
  special file (device, FIFO, socket) or a symbolic link at the output path is refused, even
  with ``overwrite``; so is a folder where a file is expected, and a path ending in ``/``. An
  existing folder is replaced only if it is an earlier export (a SavedModel holding nothing
  else) that holds no input.

Moved from `atomic.py`, which still exports every name other modules import from it.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Iterable

from ..errors import OutputError, OutputExists

__all__ = ["check_output", "check_outputs", "check_output_dir"]


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _inside(path: str, folder: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real != base and real.startswith(base.rstrip(os.sep) + os.sep)


def _input_paths(inputs: Iterable) -> list[str]:
    out = []
    for inp in inputs or ():
        if isinstance(inp, (str, os.PathLike)):
            out.append(os.fspath(inp))
            if out[-1].lower().endswith((".safetensors.index.json", ".weights.json")):
                from .shards import index_files  # the shards an index names are read too

                out.extend(index_files(out[-1]))
        elif isinstance(inp, (list, tuple, set, frozenset)):
            out.extend(_input_paths(inp))
    return out


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def _check_folder(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    probe = folder
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise OutputError(f"{path}: {probe} is a file, not a folder; choose an output path "
                          "inside a folder", path=path)
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: the folder {folder} does not exist; create it first", path=path)
    return folder


def _check_inputs(path: str, inputs: Iterable) -> None:
    for inp in _input_paths(inputs):
        if _same_file(path, inp):  # same inode (hard link), or same real path
            raise OutputError(f"{path}: this is the input {inp}; write the output to "
                              "another path (surgery never writes over its input)", path=path)
        if os.path.isdir(inp) and _inside(path, inp):
            raise OutputError(f"{path}: is inside the input folder {inp}; write the output "
                              "elsewhere (surgery never writes into its inputs)", path=path)


def check_output(path: str | os.PathLike, *, inputs: Iterable = (), overwrite: bool = False
                 ) -> str:
    """Checks that `path` may be written as a file; returns it as a string.

    Args:
        path: the output file.
        inputs: every path the command reads (models, data, rules, ...).
        overwrite: whether an existing regular file may be replaced.

    Returns:
        `path` as a string.

    Raises:
        OutputError: missing folder, folder path through a file, a path ending in a
            separator, target is (or is inside) an input, target exists without `overwrite`,
            or target is a directory, symbolic link or special file.

    Example:
    ```python
    check_output("out.keras", inputs=["in.keras", "rules.toml"])
    ```
    """
    path = os.fspath(path)
    if not path or path.endswith(("/", os.sep)):
        raise OutputError(f"{path or repr(path)}: is not a file name (it ends with a "
                          "separator); give a file path such as out.keras", path=path)
    _check_folder(path)
    _check_inputs(path, inputs)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as e:
        raise OutputError(f"{path}: can't be checked ({e.strerror}); choose another output "
                          "path", path=path) from None
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{path}: is a directory; give a file path for the output", path=path)
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{path}: is {_kind(st.st_mode)}; surgery writes only regular files "
                          "(it never replaces special files or links), so give another path",
                          path=path)
    if not overwrite:
        raise OutputExists(f"{path}: already exists; pass --overwrite (overwrite=True) to "
                           "replace it", path=path)
    return path


def check_outputs(paths: Iterable, *, inputs: Iterable = (), overwrite: bool = False
                  ) -> list[str]:
    """Checks several outputs of one command: each with `check_output`, and no two the same.

    Raises:
        OutputError: two outputs name one file, or one of them fails `check_output`.

    Example:
    ```python
    check_outputs(["out.keras", "metrics.json"], inputs=["in.keras", "data.npz"])
    ```
    """
    seen: dict[str, str] = {}
    out = []
    for p in paths:
        if p is None:
            continue
        p = os.fspath(p)
        key = os.path.realpath(p)
        if key in seen:
            raise OutputError(f"{p}: is also the output {seen[key]} of this command; give each "
                              "output its own path", path=p)
        seen[key] = p
        out.append(check_output(p, inputs=inputs, overwrite=overwrite))
    return out


_VARIABLES_DATA = re.compile(r"variables\.data-\d{5}-of-\d{5}")


def _foreign_entries(path: str) -> list[str]:
    """What in the folder `path` a SavedModel export does not write (relative paths).

    Allowed: the top-level SavedModel files, variables/variables.index and
    variables/variables.data-NNNNN-of-NNNNN, and empty assets/ and assets.extra/ folders.
    Anything else (a file of the user's in assets/, a link, a special file) is foreign.
    """
    foreign = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        st = os.lstat(full)
        if name in ("saved_model.pb", "saved_model.pbtxt", "fingerprint.pb",
                    "keras_metadata.pb"):
            ok = stat.S_ISREG(st.st_mode)
        elif name == "variables" and stat.S_ISDIR(st.st_mode):
            ok = True
            for sub in sorted(os.listdir(full)):
                if not ((sub == "variables.index" or _VARIABLES_DATA.fullmatch(sub)) and
                        stat.S_ISREG(os.lstat(os.path.join(full, sub)).st_mode)):
                    foreign.append(f"{name}/{sub}")
        elif name in ("assets", "assets.extra") and stat.S_ISDIR(st.st_mode):
            ok = True
            foreign.extend(f"{name}/{sub}" for sub in sorted(os.listdir(full)))
        else:
            ok = False
        if not ok:
            foreign.append(name)
    return foreign


def _replaceable_export(path: str, inputs: Iterable) -> None:
    """An existing folder may be replaced only if it is a SavedModel that holds nothing but
    what an export writes, and no input."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        what = "a file" if stat.S_ISREG(st.st_mode) else _kind(st.st_mode)
        raise OutputError(f"{path}: is {what}; give a folder path for the export", path=path)
    try:
        extra = _foreign_entries(path)
    except OSError as e:
        raise OutputError(f"{path}: can't be checked ({e.strerror}); give another path",
                          path=path) from None
    if "saved_model.pb" not in os.listdir(path) or extra:
        why = (f"it holds {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"
               if extra else "it is not a SavedModel")
        raise OutputError(f"{path}: is a folder surgery did not export ({why}); --overwrite "
                          "replaces only an earlier export, so give another path", path=path)
    for inp in _input_paths(inputs):
        if _same_file(path, inp) or _inside(inp, path):
            raise OutputError(f"{path}: holds the input {inp}; write the export to another "
                              "path (surgery never deletes its inputs)", path=path)


def check_output_dir(path: str | os.PathLike, *, inputs: Iterable = (),
                     overwrite: bool = False) -> str:
    """Checks that the folder `path` may be written (an export); returns it as a string.

    Raises:
        OutputError: as `atomic_dir` would, before anything is written.

    Example:
    ```python
    check_output_dir("exported", inputs=["model.keras"], overwrite=True)
    ```
    """
    path = os.fspath(path).rstrip("/") or "/"
    _check_folder(path)
    _check_inputs(path, inputs)
    if os.path.lexists(path):
        if not overwrite and os.path.isdir(path) and not os.path.islink(path):
            raise OutputExists(f"{path}: already exists; pass --overwrite (overwrite=True) to "
                               "replace it", path=path)
        _replaceable_export(path, inputs)
    return path
