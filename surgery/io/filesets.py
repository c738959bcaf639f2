"""Atomic sets of files: `atomic_set` writes an index and the member files it names (shards)
as one set, so that all appear, or none.

Every file is written under a temporary name beside the index (`tempfiles`); when the block
succeeds the members are published first and the index last (`_publish_set`), so a reader only
ever finds the index when all its members are there; on a failure everything published is
removed and, with ``overwrite``, what it replaced put back (`_rollback`). Members a killed
writer published without its index are removed by the next write to the same index
(`_recover_interrupted`); with ``overwrite``, the old set's extra members are removed after the
new set is in place (`_set_orphans`).

Moved from `atomic.py`, which still exports `atomic_set` and `FileSet`. A test that replaces
`_publish` for a set patches it here (`filesets._publish`), where `_publish_set` looks it up.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from typing import Iterable, Iterator

from ..errors import OutputError, SurgeryError
from .output_checks import _input_paths, _same_file, check_output, check_outputs
from .tempfiles import (TMP_MARK, _fsync_folder, _pid_alive, _publish, _sigterm_as_interrupt,
                        _suffix, _umask_mode, _write_error, clean_stale)

__all__ = ["atomic_set", "FileSet"]


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
