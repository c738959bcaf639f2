"""Reading `.keras` archives safely, without Keras or TensorFlow.

A `.keras` file is a zip of ``metadata.json``, ``config.json`` and ``model.weights.h5``. Files
are untrusted: member names that escape the archive, members whose declared size is far beyond
what they store, malformed or absurdly nested JSON, and truncated archives are refused with a
`FormatError` before anything is allocated or extracted.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import struct
import zipfile
from typing import Any

from ..errors import FormatError, InputError

__all__ = ["SafeZip", "KerasArchive", "parse_json", "read_small_file", "MAX_JSON_BYTES",
           "MAX_JSON_DEPTH"]

MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = 200
_MAX_RATIO = 1000  # declared size / stored size beyond which a member is a bomb
_ZIP_MAGIC = b"PK\x03\x04"


# a JSON string or a bracket; possessive single-character loops keep the matcher's memory flat
# on a long string, and an unterminated string runs to the end (no scan fails and restarts)
_JSON_TOKENS = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"?|[\[\]{}]', re.S)


def _json_depth(text: str) -> int:
    """Nesting depth of a JSON text, counted without parsing (strings skipped), stopping as
    soon as it passes `MAX_JSON_DEPTH`."""
    depth = deepest = 0
    for m in _JSON_TOKENS.finditer(text):
        ch = m.group()
        if ch in ("[", "{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        elif ch in ("]", "}"):
            depth -= 1
    return deepest


def parse_json(data: bytes | str, where: str) -> Any:
    """Parses untrusted JSON with a size and depth limit.

    Args:
        data: the JSON text.
        where: what to name in an error (``model.keras: config.json``).

    Raises:
        FormatError: malformed, too large or nested deeper than `MAX_JSON_DEPTH`.
    """
    if len(data) > MAX_JSON_BYTES:
        raise FormatError(f"{where}: {len(data)} bytes of JSON, more than the "
                          f"{MAX_JSON_BYTES} allowed; this is not a config surgery can read")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if _json_depth(text) > MAX_JSON_DEPTH:
        raise FormatError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels; "
                          "refusing a config built to exhaust the parser")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise FormatError(f"{where}: malformed JSON ({e})") from None


def read_small_file(path: str, what: str, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. A FIFO, device, socket or
    directory is refused, never waited on: the file is opened non-blocking and checked on the
    open descriptor, so swapping it after a check can't hang the reader either.

    Raises:
        InputError: missing, unreadable, not a regular file, or larger than `limit`.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}", path=path) from None
    except OSError as e:
        raise InputError(f"{path}: can't read the {what} ({e.strerror})", path=path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) \
                else "a character device" if stat.S_ISCHR(mode) else "a special file"
            raise InputError(f"{path}: is {kind}, not a regular file; pass the {what} as a "
                             "regular file", path=path)
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise InputError(f"{path}: can't read the {what} ({e.strerror})", path=path) from None
    finally:
        os.close(fd)
    if size > limit:
        raise InputError(f"{path}: more than {limit} bytes, too large for a {what}; check the "
                         "path", path=path)
    return b"".join(chunks)


class Span(io.RawIOBase):
    """A seekable view of `size` bytes from `start` of an open binary file (read-only here;
    the `.keras` writer adds writing)."""

    def __init__(self, f, start: int, size: int):
        super().__init__()
        self._f, self._start, self.size, self._pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buffer)[:n])
        self._pos += got
        return got


class _MemberFile(Span):
    """A read-only view of one stored (uncompressed) zip member; owns its file handle."""

    def __init__(self, path: str, start: int, size: int):
        super().__init__(open(path, "rb"), start, size)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class SafeZip:
    """A zip opened for reading, every member checked before use (names, sizes, truncation).

    Args:
        path: the file.
    """

    kind = "zip archive"

    def __init__(self, path: str):
        self.path = path
        try:
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):
                raise InputError(f"{path}: not a regular file (a FIFO, device or directory); "
                                 f"pass a {self.kind} file", path=path)
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise InputError(f"{path}: can't read it ({e.strerror})", path=path) from None
        if magic != _ZIP_MAGIC:
            raise FormatError(f"{path}: not a {self.kind} (not a zip file); check the path, "
                              "or re-save it", path=path)
        try:
            self._zip = zipfile.ZipFile(path)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            raise FormatError(f"{path}: truncated or damaged {self.kind} ({e}); "
                              "re-save it or use an intact copy", path=path) from None
        self._size = os.path.getsize(path)
        self._infos: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            self._check_member(info)
            self._infos[info.filename] = info

    def _check_member(self, info: zipfile.ZipInfo) -> None:
        n = info.filename
        parts = n.replace("\\", "/").split("/")
        if n.startswith(("/", "\\")) or ".." in parts or (len(n) > 1 and n[1] == ":"):
            self.close()
            raise FormatError(f"{self.path}: zip member {n!r} points outside the archive; "
                              "refusing a hostile archive", path=self.path)
        if info.file_size > _MAX_RATIO * max(info.compress_size, 1) + 1024:
            self.close()
            raise FormatError(f"{self.path}: zip member {n!r} declares {info.file_size} bytes "
                              f"but stores {info.compress_size}; refusing a zip bomb",
                              path=self.path)
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            self.close()
            raise FormatError(f"{self.path}: zip member {n!r} declares {info.file_size} bytes "
                              f"but stores {info.compress_size}; the archive is damaged",
                              path=self.path)
        if info.header_offset + info.compress_size > self._size:
            self.close()
            raise FormatError(f"{self.path}: truncated {self.kind} (member {n!r} runs past "
                              "the end of the file); re-save it or use an intact copy",
                              path=self.path)

    @property
    def members(self) -> list[str]:
        return list(self._infos)

    def info(self, member: str) -> zipfile.ZipInfo:
        info = self._infos.get(member)
        if info is None:
            raise FormatError(f"{self.path}: no {member} in the {self.kind}; "
                              "it is incomplete", path=self.path)
        return info

    def read_json(self, member: str) -> Any:
        info = self.info(member)
        if info.file_size > MAX_JSON_BYTES:
            raise FormatError(f"{self.path}: {member} declares {info.file_size} bytes, more "
                              f"than the {MAX_JSON_BYTES} allowed for a config", path=self.path)
        try:
            data = self._zip.read(member)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise FormatError(f"{self.path}: can't read {member} ({e}); the {self.kind} is "
                              "damaged", path=self.path) from None
        return parse_json(data, f"{self.path}: {member}")

    def open_member(self, member: str) -> io.IOBase:
        """A seekable binary file for one member (stored members are read in place)."""
        info = self.info(member)
        if info.compress_type == zipfile.ZIP_STORED:
            if not 0 <= info.header_offset <= self._size - 30:
                raise FormatError(f"{self.path}: damaged zip directory ({member} starts at "
                                  f"offset {info.header_offset}, outside the file)",
                                  path=self.path)
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                header = f.read(30)
            if len(header) < 30 or header[:4] != _ZIP_MAGIC:
                raise FormatError(f"{self.path}: damaged zip header for {member}", path=self.path)
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            if start + info.file_size > self._size:
                raise FormatError(f"{self.path}: truncated {self.kind} ({member} runs past "
                                  "the end of the file); re-save it or use an intact copy",
                                  path=self.path)
            return io.BufferedReader(_MemberFile(self.path, start, info.file_size))
        try:
            return self._zip.open(member)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
            raise FormatError(f"{self.path}: can't open {member} ({e})", path=self.path) from None

    def close(self) -> None:
        z = getattr(self, "_zip", None)
        if z is not None:
            z.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def torch_pickle_message(path: str) -> str:
    """What to say about a PyTorch ``torch.save`` file (a zip holding ``*/data.pkl``, or a
    legacy pickle): surgery never unpickles (a pickle can run any code), and how to convert it
    to safetensors, which surgery reads."""
    out = os.path.splitext(path)[0] + ".safetensors"
    return (f"{path}: a PyTorch pickle (torch.save), which surgery does not read: unpickling "
            "can run any code; convert the state dict to safetensors with torch installed: "
            f"python -c \"import torch; from safetensors.torch import save_file; "
            f"save_file(torch.load({path!r}), {out!r})\" and pass {out}")


class KerasArchive(SafeZip):
    """A `.keras` zip opened for reading, checked before use.

    Example:
    ```python
    with KerasArchive("model.keras") as ar:
        config = ar.config
        h5 = ar.open_member("model.weights.h5")
    ```
    """

    kind = "Keras archive"

    def __init__(self, path: str):
        super().__init__(path)
        if "config.json" not in self._infos:
            self.close()
            if any(m == "data.pkl" or m.endswith("/data.pkl") for m in self._infos):
                raise FormatError(torch_pickle_message(path), path=path)
            raise FormatError(f"{path}: zip without config.json, so not a Keras model archive; "
                              "pass a .keras file written by model.save()", path=path)
        self._config: Any = None

    @property
    def config(self) -> Any:
        """The parsed ``config.json``."""
        if self._config is None:
            config = self.read_json("config.json")
            if not isinstance(config, dict) or "class_name" not in config:
                raise FormatError(f"{self.path}: config.json is not a Keras model config "
                                  "(no class_name)", path=self.path)
            self._config = config
        return self._config
