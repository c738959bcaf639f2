"""Writing a `.keras` archive without Keras: the target's config, new weights streamed in.

The zip is written by hand (stored members, as Keras writes them) so that h5py can write
``model.weights.h5`` directly inside the archive: one pass over the data, no extra copy of the
weights file. The template's HDF5 tree (groups, ``vars`` name attributes) is reproduced;
replaced datasets are written from the stream, the others copied, one tensor at a time.

The member's CRC-32 is not a second pass over the file on the critical path: each large dataset
is checksummed by a worker thread (from the page cache) while the next tensor is read, only
the rest (HDF5 headers, small datasets) is read back at the end, and the pieces are combined
(`crc32_combine`). A second thread starts the disk writes while the next tensors are read
(`surgery.io.writeback`), so that the fsync before publishing finds little left to do.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable

import h5py
import numpy as np

from .archive import KerasArchive, Span
from .atomic import atomic_path
from ..errors import FormatError, OutputError
from .h5layout import guard
from .writeback import Writeback

__all__ = ["write_keras_archive", "crc32_combine"]

_ZIP64_LIMIT = 0xFFFFFFFF
_CHUNK = 16 * 1024 * 1024
_REGION = 1 << 20  # datasets at least this large are checksummed by the worker
_READ = 1 << 20  # the worker's reads: small, so that it holds no tensor's worth of memory
_POLY = 0xEDB88320  # CRC-32, reflected


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC-32 polynomial, bits reflected (zlib's multmodp); a != 0."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _powers() -> list[int]:
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)  # x^(2^k)
    return table


_X2N = _powers()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A + B from ``crc32(A)``, ``crc32(B)`` and ``len(B)`` (zlib's
    crc32_combine, which Python's zlib does not expose)."""
    p, k = 1 << 31, 3  # x^0; the table index of x^(8 * 2^0): one byte is 8 bits
    while len2:
        if len2 & 1:
            p = _multmodp(_X2N[k & 31], p)
        len2 >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


class _Checksum:
    """The CRC-32 of an HDF5 file being written inside an open file, without a second pass
    on the critical path: as soon as h5py has written a large dataset, a worker thread
    checksums its bytes (read back from the page cache, one chunk at a time: no tensor is
    kept for it) while the next tensor is read; `value` reads the rest of the file (HDF5
    headers, small datasets) and combines the pieces (`crc32_combine`)."""

    def __init__(self, f, start: int):
        self._f, self._start = f, start  # the open output and where the HDF5 file begins
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="surgery-crc")
        self._regions: list[tuple[int, int, Future]] = []  # (offset, size, crc)

    def written(self, ds: h5py.Dataset) -> None:
        """Starts checksumming the storage of `ds`, just written: one contiguous block."""
        if ds.chunks is not None or ds.nbytes < _REGION:
            return
        offset, size = ds.id.get_offset(), ds.id.get_storage_size()
        if offset is None or size < _REGION:
            return
        self._f.flush()  # the block is in the file, not in Python's buffer
        self._regions.append((offset, size, self._pool.submit(
            _pread_crc, self._f.fileno(), self._start + offset, size)))

    def value(self, size: int) -> int:
        """The CRC-32 of the `size` bytes of the HDF5 file: the recorded regions combined
        with the bytes between them."""
        crc, pos = 0, 0
        for offset, n, future in sorted(self._regions, key=lambda r: r[0]):
            if offset < pos or offset + n > size:  # not as recorded: read everything
                return _crc_of(self._f, self._start, 0, size, 0)
            crc = crc32_combine(_crc_of(self._f, self._start, pos, offset, crc),
                                future.result(), n)
            pos = offset + n
        return _crc_of(self._f, self._start, pos, size, crc)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._regions = []


def _pread_crc(fd: int, begin: int, size: int) -> int:
    """The CRC-32 of `size` bytes of file `fd` from `begin` (pread: the file position, which
    the writer uses, is not touched)."""
    crc, done = 0, 0
    while done < size:
        chunk = os.pread(fd, min(_READ, size - done), begin + done)
        if not chunk:
            raise OutputError("short read while checksumming the weights")
        crc = zlib.crc32(chunk, crc)
        done += len(chunk)
    return crc


def _crc_of(f, start: int, begin: int, end: int, crc: int) -> int:
    """`crc` continued over bytes [begin, end) of `f` (from `start`), read in chunks."""
    f.seek(start + begin)
    remaining = end - begin
    while remaining:
        chunk = f.read(min(_CHUNK, remaining))
        if not chunk:
            raise OutputError(f"{getattr(f, 'name', 'output')}: short read while checksumming")
        crc = zlib.crc32(chunk, crc)
        remaining -= len(chunk)
    return crc


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


def _copy_tree(src: h5py.Group, dst: h5py.Group, replaced: set[str], where: str,
               checksum: _Checksum, writeback: Writeback) -> None:
    for key, value in src.attrs.items():
        dst.attrs[key] = value
    for name in src:
        link = src.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise FormatError(f"{where}: {src.name}/{name} is not a plain HDF5 object; "
                              "refusing to copy it")
        obj = src[name]
        if isinstance(obj, h5py.Group):
            _copy_tree(obj, dst.create_group(name), replaced, where, checksum, writeback)
            continue
        if obj.name in replaced:
            ds = dst.create_dataset(name, shape=obj.shape, dtype=obj.dtype)
        else:
            data = np.asarray(obj[()])
            ds = dst.create_dataset(name, data=data)
            checksum.written(ds)
            writeback.wrote(data.nbytes)
            del data
        for key, value in obj.attrs.items():
            ds.attrs[key] = value


def _write_weights(template: Any, window: _Window, replaced: set[str],
                   values: Iterable[tuple[str, np.ndarray]], checksum: _Checksum,
                   fd: int, output: str) -> None:
    """The weights file, inside the archive: the template's tree, then `values` streamed in,
    one tensor alive at a time."""
    writeback = Writeback(fd)
    try:
        with guard(template.name), h5py.File(window, "w") as out:
            _copy_tree(template._h5, out, replaced, template.name, checksum, writeback)
            for key, array in values:
                ds = out[key]
                ds[...] = array
                checksum.written(ds)
                writeback.wrote(array.nbytes)
                del array  # released before the next tensor is read
    except OSError as e:
        raise OutputError(f"{output}: can't write the weights ({e}); nothing was "
                          "written", path=output) from None
    finally:
        writeback.close()


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
        names = ["metadata.json", "config.json"] + [  # assets: a keras-hub tokenizer's vocabulary
            n for n in archive.members if n.startswith("assets/") and not n.endswith("/")]
        if any(archive.info(n).file_size >= _ZIP64_LIMIT for n in names if n in archive.members):
            raise OutputError(f"{output}: {template.name} holds an asset of 4 GiB or more; "
                              "save the model with Keras", path=output)
        members = [(name, archive._zip.read(name)) for name in names if name in archive.members]
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
            checksum = _Checksum(f, window._start)
            try:
                _write_weights(template, window, replaced, values, checksum, f.fileno(), output)
                result = check()
                size = window.size
                if size >= _ZIP64_LIMIT and not zip64:
                    raise OutputError(f"{output}: the weights grew past 4 GiB; save with Keras",
                                      path=output)
                crc = checksum.value(size)
            finally:
                checksum.close()
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
