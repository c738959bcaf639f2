"""The safety checks on untrusted training data (see `train.data`'s docstring): only regular
files are read (a FIFO, a device or a socket is refused before it is opened), a data folder is
walked with links followed only inside it, each folder once, at most `MAX_DATA_ENTRIES` entries
(`_Walk`), and arrays must hold finite numbers, as many samples in x as in y."""

from __future__ import annotations

import io
import os
import stat

import numpy as np

from ..errors import FormatError, InputError, ShapeError

__all__ = ["MAX_DATA_ENTRIES"]

MAX_DATA_ENTRIES = 1_000_000  # files and folders looked at under an image or tf.data folder
_NUMERIC = "biuf"


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
