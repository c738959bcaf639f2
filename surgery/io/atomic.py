"""Atomic outputs: written beside the target under a fresh temporary name, published when done.

The rules every output follows (DESIGN §5, §7.13):

- Every path a command reads is an input and is never written: an output may not be an input
  (same real path, symlink or hard link) nor lie inside an input folder.
- Outputs are regular files (or, for exports, folders) that are absent or replaced whole. A
  special file (device, FIFO, socket) or a symbolic link at the output path is refused, even
  with ``overwrite``; so is a folder where a file is expected, and a path ending in ``/``.
- The temporary file is created exclusively (`tempfile.mkstemp`/`mkdtemp`) in the target's
  folder, named ``.<target name>.surgery-tmp-<pid>-<random><suffix>``: recognisable, so that a
  file left by a process killed with SIGKILL is removed by the next write to the same target
  (when its pid is no longer alive). SIGTERM is handled like Ctrl-C while a file is written.
- Without ``overwrite`` the final name is created exclusively (a hard link, which fails if the
  name exists), so of two concurrent writers to one path only the first succeeds; with it, the
  target is re-checked to still be a regular file and replaced by `os.replace`.
- Any OS error while writing (disk full, read-only filesystem, a file size limit), including
  the ones that surface only at ``close()``, becomes one `OutputError` line; nothing is left.

Where the code lives (every name below is still exported from here, `__all__`): the checks
before anything is written, `check_output`, `check_outputs`, `check_output_dir`, in
`output_checks.py`; temporary names, `clean_stale`, SIGTERM and publishing one file in
`tempfiles.py`; sets of files (an index and its shards), `atomic_set` and `FileSet`, in
`filesets.py`. This module holds the single outputs: `atomic_path` (a file) and `atomic_dir`
(an export's folder). A test that replaces `_publish` for them patches `atomic._publish`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from typing import Iterable, Iterator

from ..errors import OutputError, OutputExists
from .filesets import FileSet, atomic_set
from .output_checks import (_input_paths, _inside, _replaceable_export, _same_file,
                            check_output, check_output_dir, check_outputs)
from .tempfiles import (TMP_MARK, _fsync_folder, _publish, _sigterm_as_interrupt, _suffix,
                        _umask_mode, _write_error, clean_stale)

__all__ = ["check_output", "check_outputs", "check_output_dir", "atomic_path", "atomic_dir",
           "atomic_set", "FileSet", "clean_stale", "TMP_MARK",
           # helpers other modules and tests import from here (see above for where they live)
           "_input_paths", "_inside", "_same_file", "_sigterm_as_interrupt", "_suffix",
           "_write_error", "_publish"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, inputs: Iterable = (), overwrite: bool = False
                ) -> Iterator[str]:
    """Yields a fresh temporary file path beside `path`; publishes it when the block succeeds.

    On any exception (SIGTERM included) the temporary file is removed and `path` is left as it
    was.

    Raises:
        OutputError: see `check_output`; also a write that failed in the OS (disk full,
            read-only filesystem), or the target appeared meanwhile without `overwrite`.

    Example:
    ```python
    with atomic_path("out.keras", inputs=["in.keras"]) as tmp:
        model.save(tmp)
    ```
    """
    path = check_output(path, inputs=inputs, overwrite=overwrite)
    clean_stale(path, inputs=inputs)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}{TMP_MARK}{os.getpid()}-",
                                   suffix=_suffix(path), dir=folder)
        os.close(fd)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with _sigterm_as_interrupt():
            yield tmp
            st = os.lstat(tmp)
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                raise OutputError(f"{path}: nothing was written", path=path)
            try:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.chmod(tmp, _umask_mode())
                _publish(tmp, path, overwrite)
            except OSError as e:
                raise _write_error(path, e) from None
            _fsync_folder(folder)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _write_error(path, e) from None
    except BaseException:
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.lstat(tmp).st_mode):
                shutil.rmtree(tmp)
            else:
                os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, inputs: Iterable = (), overwrite: bool = False
               ) -> Iterator[str]:
    """Yields a fresh temporary folder beside `path`; moves it into place when the block succeeds.

    An existing `path` is replaced only with `overwrite`, and only if it is an earlier export (a
    SavedModel folder holding nothing else) that contains none of `inputs`.

    Raises:
        OutputError: the path is a file, special file or link, an input or inside one, exists
            without `overwrite`, or is a folder that is not an earlier export.

    Example:
    ```python
    with atomic_dir("exported", inputs=["model.keras"]) as tmp:
        tf.saved_model.save(module, tmp)
    ```
    """
    path = check_output_dir(path, inputs=inputs, overwrite=overwrite)
    clean_stale(path, inputs=inputs, folder=True)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}{TMP_MARK}{os.getpid()}-",
                               dir=folder)
    except OSError as e:
        raise _write_error(path, e) from None
    trash = None
    try:
        with _sigterm_as_interrupt():
            yield tmp
            os.chmod(tmp, _umask_mode(directory=True))
            if os.path.lexists(path):
                if not overwrite:
                    raise OutputExists(f"{path}: already exists (another process wrote it "
                                       "meanwhile); pass --overwrite to replace it", path=path)
                _replaceable_export(path, inputs)
                trash = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}{TMP_MARK}"
                                         f"{os.getpid()}-", dir=folder)
                os.rename(path, os.path.join(trash, "old"))
            try:
                os.rename(tmp, path)
            except OSError:
                if trash is not None:  # put the old export back
                    os.rename(os.path.join(trash, "old"), path)
                raise
            _fsync_folder(folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(path, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
