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
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from typing import Iterable, Iterator

from ..errors import OutputError, OutputExists, SurgeryError

__all__ = ["check_output", "check_outputs", "check_output_dir", "atomic_path", "atomic_dir",
           "atomic_set", "FileSet", "clean_stale", "TMP_MARK"]

TMP_MARK = ".surgery-tmp-"
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV,
                 errno.ENOSYS}


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


# ------------------------------------------------------------------ sets of files (shards)

class FileSet:
    """The temporary paths of one set being written by `atomic_set`: `index` for the index
    file, `members[name]` for each member file (shard) of that final name."""

    def __init__(self, index: str, members: dict[str, str]):
        self.index = index
        self.members = members


def _fresh_temp(path: str, folder: str) -> str:
    """A new empty temporary file named for `path` (`clean_stale` recognises it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}{TMP_MARK}{os.getpid()}-",
                               suffix=_suffix(path), dir=folder)
    os.close(fd)
    return tmp


def _member_names(index: str, names: Iterable[str]) -> list[str]:
    out = []
    for name in names:
        if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or
                os.sep in name or "\x00" in name):
            raise OutputError(f"{index}: member {name!r} is not a plain file name; the files of "
                              "a set are written beside its index", path=index)
        out.append(name)
    return out


def _set_orphans(index: str, finals: list[str], inputs: Iterable, family) -> list[str]:
    """Files the index being replaced names that the new set does not: removed after the new
    set is published, when they are named like members of this set (`family`), are regular
    files beside the index and are not inputs."""
    if family is None or not os.path.isfile(index):
        return []
    from .shards import index_files  # lazy: shards imports h5py and Keras file readers

    keep = {os.path.realpath(p) for p in finals}
    ins = _input_paths(inputs)
    folder = os.path.realpath(os.path.dirname(os.path.abspath(index)))
    out = []
    for p in index_files(index):
        real = os.path.realpath(p)
        if (real in keep or os.path.dirname(real) != folder or
                not family.fullmatch(os.path.basename(p)) or os.path.islink(p) or
                not os.path.isfile(p) or any(_same_file(p, i) for i in ins)):
            continue
        out.append(p)
    return out


def _recover_interrupted(index: str, inputs: Iterable, family) -> list[str]:
    """Removes the members a killed writer had published before its index (SIGKILL between
    publishing the first member and the index); returns what it removed.

    The dead writer's temporary index (complete: it is written just before publishing) names
    them. Only when no index exists at `index` (no reader can rely on them), and only files
    named like members (`family`), regular, beside the index and not inputs."""
    if family is None or os.path.lexists(index):
        return []
    from .shards import read_index  # lazy: shards imports h5py and Keras file readers

    where = os.path.dirname(os.path.abspath(index))
    pattern = re.compile(re.escape(f".{os.path.basename(index)}{TMP_MARK}") +
                         r"(\d+)-[a-z0-9_]{8}" + re.escape(_suffix(index)))
    try:
        names = sorted(os.listdir(where))
    except OSError:
        return []  # no folder: check_output says so
    ins = _input_paths(inputs)
    removed = []
    for name in names:
        m = pattern.fullmatch(name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        try:
            named = read_index(os.path.join(where, name), lists=True)
        except (SurgeryError, ValueError, OSError):
            continue  # not written to the end: nothing was published from it
        for member in dict.fromkeys(f for files in named.values() for f in files):
            full = os.path.join(where, member)
            if (not family.fullmatch(member) or os.path.islink(full) or
                    not os.path.isfile(full) or any(_same_file(full, i) for i in ins)):
                continue
            with contextlib.suppress(OSError):
                os.unlink(full)
                removed.append(member)
    return removed


def _rollback(published: list[tuple[str, str | None]], index: str, index_new: bool,
              index_backup: str | None) -> None:
    """Undoes a publish that failed part-way: new members removed, replaced ones restored,
    the old index put back last (so a reader never finds it beside a half-new set)."""
    with contextlib.suppress(OSError):
        if index_new:
            os.unlink(index)
    for final, backup in reversed(published):
        with contextlib.suppress(OSError):
            if backup is None:
                os.unlink(final)
            else:
                os.replace(backup, final)
    if index_backup is not None:
        with contextlib.suppress(OSError):
            os.replace(index_backup, index)


def _publish_set(index: str, temps: FileSet, finals: dict[str, str], *, folder: str,
                 inputs: Iterable, overwrite: bool) -> list[str]:
    """Publishes members first and the index last; returns the backups to remove.

    With `overwrite`, the old index is moved aside first (so no reader pairs it with a
    half-replaced set), each old member is moved aside just before its replacement lands, and
    on failure everything is put back as it was."""
    published: list[tuple[str, str | None]] = []
    index_backup, index_new = None, False
    try:
        if overwrite and os.path.lexists(index):
            check_output(index, inputs=inputs, overwrite=True)  # still a regular file?
            index_backup = _fresh_temp(index, folder)
            os.replace(index, index_backup)
        for name, final in finals.items():
            tmp = temps.members[name]
            if overwrite and os.path.lexists(final):
                check_output(final, inputs=inputs, overwrite=True)
                backup = _fresh_temp(final, folder)
                os.replace(final, backup)
                published.append((final, backup))
                os.replace(tmp, final)
            else:
                _publish(tmp, final, overwrite=False)
                published.append((final, None))
        _publish(temps.index, index, overwrite=False)
        index_new = True
        _fsync_folder(folder)
    except BaseException:
        _rollback(published, index, index_new, index_backup)
        raise
    return [b for _, b in published if b is not None] + \
        ([index_backup] if index_backup is not None else [])


@contextlib.contextmanager
def atomic_set(index: str | os.PathLike, members: Iterable[str], *, inputs: Iterable = (),
               overwrite: bool = False, family: "re.Pattern[str] | None" = None
               ) -> Iterator[FileSet]:
    """Writes an index and the member files it names (shards) as one set: all appear, or none.

    Every file is written under a temporary name beside `index` (``TMP_MARK`` naming, so
    `clean_stale` removes what a killed process left). When the block succeeds the members
    are published first and the index last, so a reader only ever finds the index when all
    its members are there. Members a killed writer published without its index are removed by
    the next write to the same index (`_recover_interrupted`). On any failure (an exception, SIGTERM, a full disk, a name that
    appeared meanwhile) every temporary file and every member already published is removed,
    and with `overwrite` the files it replaced are put back.

    Args:
        index: the index file (the output the user named).
        members: the final file names (no folders) of the members, written beside `index`.
        inputs: every path the command reads: neither the index nor a member may be one.
        overwrite: replace an existing index and members (regular files that are not
            inputs); without it, any of them existing is refused before anything is written.
        family: with `overwrite`, the files the replaced index named that the new set does
            not, and whose names match this pattern, are removed after the new set is in
            place (the old set's extra shards).

    Yields:
        A `FileSet`: `.index` and `.members[name]`, the temporary paths to write.

    Raises:
        OutputError: see `check_output`, for the index and each member; a member name that
            is not a plain file name; a member not written; an OS error while writing.

    Example:
    ```python
    with atomic_set("out/model.safetensors.index.json", ["model-00001-of-00001.safetensors"]
                    ) as files:
        write_safetensors(tensors, files.members["model-00001-of-00001.safetensors"])
        write_index(files.index)
    ```
    """
    _recover_interrupted(os.fspath(index), inputs, family)  # before the "exists" checks
    index = check_output(index, inputs=inputs, overwrite=overwrite)
    names = _member_names(index, members)
    where = os.path.dirname(index)
    finals = {name: os.path.join(where, name) for name in names}
    check_outputs([index, *finals.values()], inputs=inputs, overwrite=overwrite)
    orphans = _set_orphans(index, list(finals.values()), inputs, family) if overwrite else []
    for path in (index, *finals.values()):
        clean_stale(path, inputs=inputs)
    folder = os.path.dirname(os.path.abspath(index))
    made: list[str] = []
    try:
        with _sigterm_as_interrupt():
            try:
                made.append(_fresh_temp(index, folder))
                temps = FileSet(made[0], {})
                for name, final in finals.items():
                    made.append(_fresh_temp(final, folder))
                    temps.members[name] = made[-1]
            except OSError as e:
                raise _write_error(index, e) from None
            yield temps
            for name, tmp in [(os.path.basename(index), temps.index), *temps.members.items()]:
                st = os.lstat(tmp)
                if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                    raise OutputError(f"{index}: {name} of the set was not written; nothing "
                                      "was written", path=index)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.chmod(tmp, _umask_mode())
            backups = _publish_set(index, temps, finals, folder=folder, inputs=inputs,
                                   overwrite=overwrite)
    except OSError as e:
        for tmp in made:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise _write_error(index, e) from None
    except BaseException:
        for tmp in made:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    for path in (*made, *backups, *orphans):  # published temps are links: unlink is safe
        with contextlib.suppress(OSError):
            os.unlink(path)
    _fsync_folder(folder)
