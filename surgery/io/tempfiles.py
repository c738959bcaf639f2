"""Temporary files of atomic outputs: their names, the cleanup of a killed writer's, SIGTERM
while writing, write errors, and publishing one under its final name.

- A temporary file is named ``.<target name>.surgery-tmp-<pid>-<random><suffix>`` (`TMP_MARK`,
  `_suffix`): recognisable, so that a file left by a process killed with SIGKILL is removed by
  the next write to the same target (`clean_stale`, when its pid is no longer alive). SIGTERM
  is handled like Ctrl-C while a file is written (`_sigterm_as_interrupt`).
- Without ``overwrite`` the final name is created exclusively (`_publish`: a hard link, which
  fails if the name exists), so of two concurrent writers to one path only the first succeeds;
  with it, the target is re-checked to still be a regular file and replaced by `os.replace`.
- Any OS error while writing becomes one `OutputError` line (`_write_error`).

The writers (`atomic.atomic_path`, `filesets.atomic_set`) import `_publish`: a test that
replaces it patches it in the writer's module (`atomic._publish`, `filesets._publish`).
Moved from `atomic.py`, which still exports every name other modules import from it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import stat
import threading
from typing import Iterable, Iterator

from ..errors import OutputError, OutputExists
from .output_checks import _input_paths, _inside, _same_file, check_output

__all__ = ["TMP_MARK", "clean_stale"]

TMP_MARK = ".surgery-tmp-"
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV,
                 errno.ENOSYS}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def clean_stale(path: str, *, inputs: Iterable = (), folder: bool = False) -> list[str]:
    """Removes temporary files of earlier, killed writes to `path`; returns what it removed.

    Only names made by this module for `path` (``.<name>.surgery-tmp-<pid>-<8 random chars>``
    plus, for a file target, its exact suffix) whose pid is not alive are removed: files for a
    file target, folders (an export's, removed without following links) for a folder target
    (`folder`). A path that is one of `inputs` is never removed.
    """
    where = os.path.dirname(os.path.abspath(path)) or "."
    base = os.path.basename(os.path.normpath(path))
    tail = "" if folder else re.escape(_suffix(path))
    pattern = re.compile(re.escape(f".{base}{TMP_MARK}") + r"(\d+)-[a-z0-9_]{8}" + tail)
    ins = _input_paths(inputs)
    removed = []
    try:
        names = os.listdir(where)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        full = os.path.join(where, name)
        if any(_same_file(full, inp) or _inside(inp, full) for inp in ins):
            continue
        try:
            is_dir = stat.S_ISDIR(os.lstat(full).st_mode)
            if is_dir != folder:
                continue
            if is_dir:
                shutil.rmtree(full)
            else:
                os.unlink(full)
            removed.append(name)
        except OSError:
            pass
    return removed


def _suffix(path: str) -> str:
    name = os.path.basename(path)
    if name.endswith(".weights.h5"):
        return ".weights.h5"
    return os.path.splitext(name)[1]


class _Terminated(KeyboardInterrupt):
    """SIGTERM arrived while an output was being written."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While writing, SIGTERM unwinds like Ctrl-C so that temporary files are removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        yield
        return
    if previous not in (signal.SIG_DFL, None):
        yield  # somebody (the CLI, the caller) already handles it
        return

    def _raise(signum, frame):
        raise _Terminated()

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_error(path: str, e: OSError) -> OutputError:
    what = e.strerror or str(e)
    hint = {errno.ENOSPC: "free some space", errno.EROFS: "write to a writable folder",
            errno.EDQUOT: "free some space", errno.EFBIG: "write to another filesystem or "
            "raise the file size limit", errno.EACCES: "check the folder's permissions"}
    return OutputError(f"{path}: could not be written ({what}); "
                       f"{hint.get(e.errno, 'check the output folder')}; nothing was written",
                       path=path)


def _umask_mode(directory: bool = False) -> int:
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def _publish(tmp: str, path: str, overwrite: bool) -> None:
    if overwrite:
        check_output(path, overwrite=True)  # still a regular file (or absent)?
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExists(f"{path}: already exists (another process wrote it meanwhile); "
                           "pass --overwrite (overwrite=True) to replace it", path=path) from None
    except OSError as e:
        if e.errno not in _NO_HARDLINKS:
            raise
        if os.path.lexists(path):  # a filesystem without hard links: check, then rename
            raise OutputExists(f"{path}: already exists (another process wrote it meanwhile); "
                               "pass --overwrite (overwrite=True) to replace it",
                               path=path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _fsync_folder(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
