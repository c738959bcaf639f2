"""Writing a `.keras` archive without Keras: the target's config, new weights streamed in.

The zip is written by hand (stored members, as Keras writes them) so that h5py can write
``model.weights.h5`` directly inside the archive: one pass over the data plus a CRC pass, no
extra copy of the weights file. The template's HDF5 tree (groups, ``vars`` name attributes)
is reproduced; replaced datasets are written from the stream, the others copied one at a time.
"""

from __future__ import annotations

import struct
import time
import zlib
from typing import Any, Callable, Iterable

import h5py
import numpy as np

from .archive import KerasArchive, Span
from .atomic import atomic_path
from ..errors import FormatError, OutputError
from .h5layout import guard

__all__ = ["write_keras_archive"]

_ZIP64_LIMIT = 0xFFFFFFFF
_CHUNK = 16 * 1024 * 1024


class _Window(Span):
    """A read/write view of an open binary file from `start` on, growing as h5py writes."""

    def __init__(self, f, start: int):
        super().__init__(f, start, 0)

    def writable(self):
        return True

    def write(self, data):
        self._f.seek(self._start + self._pos)
        n = self._f.write(data)
        self._pos += n
        self.size = max(self.size, self._pos)
        return n

    def truncate(self, size=None):
        self.size = self._pos if size is None else size
        return self.size

    def flush(self):
        self._f.flush()


def _dos_time() -> tuple[int, int]:
    t = time.localtime()
    return ((t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2),
            ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday)


def _local_header(name: bytes, crc: int, size: int, zip64: bool) -> bytes:
    tm, dt = _dos_time()
    extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
    shown = _ZIP64_LIMIT if zip64 else size
    version = 45 if zip64 else 20
    return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", version, 0, 0, tm, dt, crc, shown,
                       shown, len(name), len(extra)) + name + extra


def _central(name: bytes, crc: int, size: int, offset: int) -> bytes:
    tm, dt = _dos_time()
    zip64 = size >= _ZIP64_LIMIT or offset >= _ZIP64_LIMIT
    extra = b""
    if zip64:
        fields = struct.pack("<QQ", size, size) if size >= _ZIP64_LIMIT else b""
        fields += struct.pack("<Q", offset) if offset >= _ZIP64_LIMIT else b""
        extra = struct.pack("<HH", 1, len(fields)) + fields
    shown = _ZIP64_LIMIT if size >= _ZIP64_LIMIT else size
    shown_off = _ZIP64_LIMIT if offset >= _ZIP64_LIMIT else offset
    return struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45 if zip64 else 20,
                       45 if zip64 else 20, 0, 0, tm, dt, crc, shown, shown, len(name),
                       len(extra), 0, 0, 0, 0, shown_off) + name + extra


def _end(count: int, cd_offset: int, cd_size: int) -> bytes:
    out = b""
    if cd_offset >= _ZIP64_LIMIT:
        zip64_end = cd_offset + cd_size
        out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count,
                           cd_size, cd_offset)
        out += struct.pack("<4sIQI", b"PK\x06\x07", 0, zip64_end, 1)
        cd_offset = _ZIP64_LIMIT
    return out + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, cd_size,
                             min(cd_offset, _ZIP64_LIMIT), 0)


def _copy_tree(src: h5py.Group, dst: h5py.Group, replaced: set[str], where: str) -> None:
    for key, value in src.attrs.items():
        dst.attrs[key] = value
    for name in src:
        link = src.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise FormatError(f"{where}: {src.name}/{name} is not a plain HDF5 object; "
                              "refusing to copy it")
        obj = src[name]
        if isinstance(obj, h5py.Group):
            _copy_tree(obj, dst.create_group(name), replaced, where)
            continue
        if obj.name in replaced:
            ds = dst.create_dataset(name, shape=obj.shape, dtype=obj.dtype)
        else:
            ds = dst.create_dataset(name, data=obj[()])
        for key, value in obj.attrs.items():
            ds.attrs[key] = value


def write_keras_archive(template: Any, output: str, replaced: set[str],
                        values: Iterable[tuple[str, np.ndarray]],
                        check: Callable[[], Any], *, inputs=(), overwrite: bool = False) -> Any:
    """Writes `output`: `template`'s config with its weights, `values` replacing datasets.

    Args:
        template: an open `KerasFileSource` (the target architecture).
        output: the `.keras` path (written atomically).
        replaced: HDF5 dataset names that `values` will fill.
        values: (dataset name, array) pairs, consumed once.
        check: called after every value is written and before the rename; its exception
            leaves nothing behind; its return value is returned.

    Raises:
        OutputError: the output can't be written; nothing is left behind.
    """
    with KerasArchive(template.name) as archive:
        members = [(name, archive._zip.read(name)) for name in ("metadata.json", "config.json")
                   if name in archive.members]
        h5_size = archive.info("model.weights.h5").file_size
    zip64 = h5_size > 3 * 1024 ** 3
    with atomic_path(output, inputs=inputs, overwrite=overwrite) as tmp:
        with open(tmp, "w+b") as f:
            central = []
            for name, data in members:
                offset = f.tell()
                crc = zlib.crc32(data)
                f.write(_local_header(name.encode(), crc, len(data), False) + data)
                central.append((name.encode(), crc, len(data), offset))
            h5_offset = f.tell()
            h5_name = b"model.weights.h5"
            f.write(_local_header(h5_name, 0, 0, zip64))
            window = _Window(f, f.tell())
            try:
                with guard(template.name), h5py.File(window, "w") as out:
                    _copy_tree(template._h5, out, replaced, template.name)
                    for key, array in values:
                        out[key][...] = array
            except OSError as e:
                raise OutputError(f"{output}: can't write the weights ({e}); nothing was "
                                  "written", path=output) from None
            result = check()
            size = window.size
            if size >= _ZIP64_LIMIT and not zip64:
                raise OutputError(f"{output}: the weights grew past 4 GiB; save with Keras",
                                  path=output)
            crc = 0
            f.seek(window._start)
            remaining = size
            while remaining:
                chunk = f.read(min(_CHUNK, remaining))
                if not chunk:
                    raise OutputError(f"{output}: short read while checksumming", path=output)
                crc = zlib.crc32(chunk, crc)
                remaining -= len(chunk)
            f.seek(h5_offset)
            f.write(_local_header(h5_name, crc, size, zip64))
            central.append((h5_name, crc, size, h5_offset))
            f.seek(window._start + size)
            cd_offset = f.tell()
            for entry in central:
                f.write(_central(*entry))
            cd_size = f.tell() - cd_offset
            f.write(_end(len(central), cd_offset, cd_size))
            f.truncate()
    return result
