"""Atomic output files: written beside the target under a temporary name, renamed when done.

The temporary name is ``.<target name>.surgery-tmp-<pid>-<random><suffix>``: recognisable, so
that a file left by a process killed with SIGKILL is removed by the next write to the same
target (when its pid is no longer alive). Outputs are checked before anything is written: the
folder must exist, the target must not be an input (by real path, symlink or hard link) and
must not exist unless overwriting was asked for.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from typing import Iterable, Iterator

from .errors import OutputError

__all__ = ["check_output", "atomic_path", "clean_stale", "TMP_MARK"]

TMP_MARK = ".surgery-tmp-"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str | os.PathLike, *, inputs: Iterable = (), overwrite: bool = False
                 ) -> str:
    """Checks that `path` may be written; returns it as a string.

    Raises:
        OutputError: missing folder, folder path through a file, target is an input, target
            exists without `overwrite`, or target is a directory.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    probe = folder
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise OutputError(f"{path}: {probe} is a file, not a folder; choose an output path "
                          "inside a folder")
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: the folder {folder} does not exist; create it first")
    for inp in inputs:
        if inp is None or not isinstance(inp, (str, os.PathLike)):
            continue
        if _same_file(path, os.fspath(inp)):  # same inode (hard link), or same real path
            raise OutputError(f"{path}: this is the input {os.fspath(inp)}; write the output to "
                              "another path (surgery never writes over its input)")
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory; give a file path for the output")
    if os.path.lexists(path) and not overwrite:
        raise OutputError(f"{path}: already exists; pass --overwrite (overwrite=True) to "
                          "replace it")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(path: str) -> list[str]:
    """Removes temporary files of earlier, killed writes to `path`; returns what it removed."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    base = os.path.basename(path)
    pattern = re.compile(re.escape(f".{base}{TMP_MARK}") + r"(\d+)-[0-9a-f]+")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def _suffix(path: str) -> str:
    name = os.path.basename(path)
    if name.endswith(".weights.h5"):
        return ".weights.h5"
    return os.path.splitext(name)[1]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, inputs: Iterable = (), overwrite: bool = False
                ) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it onto `path` when the block succeeds.

    On any exception the temporary file is removed and `path` is left as it was.

    Example:
    ```python
    with atomic_path("out.keras", inputs=["in.keras"]) as tmp:
        model.save(tmp)
    ```
    """
    path = check_output(path, inputs=inputs, overwrite=overwrite)
    clean_stale(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}{TMP_MARK}{os.getpid()}-"
                               f"{secrets.token_hex(4)}{_suffix(path)}")
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise OutputError(f"{path}: nothing was written")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            if os.path.isdir(tmp):
                import shutil
                shutil.rmtree(tmp)
            else:
                os.remove(tmp)
        raise
