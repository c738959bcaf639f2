"""`.safetensors` without torch: a checked reader (lazy, one tensor at a time) and a writer.

Format: 8 bytes little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``), then the
data. The reader refuses a header that is not valid JSON, offsets that overlap, leave gaps,
disagree with the dtype and shape, or run past the end of the file. bfloat16 tensors are read
through `ml_dtypes` (installed with TensorFlow), which numpy alone does not know.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Callable, Mapping, Sequence

import numpy as np

from .archive import parse_json
from ..entries import VariableInfo, shape_size
from .writeback import Writeback
from ..errors import FormatError, OutputError
from .sources import WeightSource

__all__ = ["SafetensorsSource", "write_safetensors", "stream_safetensors", "read_into",
           "DTYPES"]

_MAX_HEADER = 100 * 1024 * 1024
_MAX_DIMS = 32
_MAX_READ = 1 << 30  # bytes per read call


def _bfloat16():
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - installed with TensorFlow
        raise FormatError("reading bfloat16 safetensors needs the ml_dtypes package "
                          "(installed with TensorFlow)") from None
    return np.dtype(ml_dtypes.bfloat16)


DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
          "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
          "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool"}
_CODES = {v: k for k, v in DTYPES.items()}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _np_dtype(name: str) -> np.dtype:
    return _bfloat16() if name == "bfloat16" else np.dtype(name)


class SafetensorsSource(WeightSource):
    """A `.safetensors` file; keys verbatim (PyTorch state-dict names, for instance)."""

    format = "safetensors"

    def __init__(self, path: str):
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise FormatError(f"{path}: safetensors header invalid: the file is shorter "
                                  "than the 8-byte header length", path=path)
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise FormatError(f"{path}: safetensors header invalid: it declares {n} bytes "
                                  f"of header but the file has {size - 8} after the length",
                                  path=path)
            header = parse_json(f.read(n), f"{path}: safetensors header")
        if not isinstance(header, dict):
            raise FormatError(f"{path}: safetensors header invalid: not a JSON object", path=path)
        start = 8 + n
        variables, spans = [], []
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            variables.append(self._entry(path, name, entry, start, size, spans))
        spans.sort()
        cursor = start
        for begin, end, name in spans:
            if begin < cursor:
                raise FormatError(f"{path}: safetensors header invalid: tensor {_short(name)} "
                                  "overlaps the tensor before it", path=path)
            if begin > cursor:
                raise FormatError(f"{path}: safetensors header invalid: {begin - cursor} bytes "
                                  f"of gap before tensor {_short(name)}", path=path)
            cursor = end
        super().__init__(path, sorted(variables, key=lambda v: v.key[0]), [])
        self._path = path

    @staticmethod
    def _entry(path, name, entry, start, size, spans) -> VariableInfo:
        where = f"{path}: safetensors header invalid: tensor {_short(name)}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise FormatError(f"{where} lacks dtype, shape or data_offsets")
        dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        if dtype is None:
            raise FormatError(f"{where} has unknown dtype {_short(entry['dtype'])}")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not (isinstance(shape, list) and len(shape) <= _MAX_DIMS and
                all(_is_int(d) and d >= 0 for d in shape)):
            raise FormatError(f"{where} has an invalid shape {_short(shape)}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and
                all(_is_int(o) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise FormatError(f"{where} has invalid data_offsets {_short(offsets)}")
        # Python ints: a numpy product of [2**32, 2**32] wraps to 0 and would pass as empty
        nbytes = math.prod(shape) * (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize)
        begin, end = start + offsets[0], start + offsets[1]
        if end - begin != nbytes:
            raise FormatError(f"{where} spans {end - begin} bytes but {dtype} {tuple(shape)} "
                              f"needs {nbytes}")
        if end > size:
            raise FormatError(f"{where} runs past the end of the file ({end} > {size} bytes)")
        spans.append((begin, end, name))
        return VariableInfo(name, tuple(shape), dtype, key=(begin, end))

    def _read(self, info: VariableInfo) -> np.ndarray:
        begin, end = info.key
        array = np.empty(info.shape, dtype=_np_dtype(info.dtype))
        with open(self._path, "rb", buffering=0) as f:
            got = read_into(f.fileno(), array, begin)
        if got != end - begin:
            raise FormatError(f"{self._path}: {info.path} is truncated", path=self._path)
        return array


def read_into(fd: int, array: np.ndarray, offset: int) -> int:
    """Fills the new C-contiguous `array` with the bytes of the open file `fd` from `offset`
    on, read straight into its memory (no intermediate bytes object: one tensor's worth of
    memory, not two). Returns the number of bytes read: less than `array.nbytes` at the end
    of the file. Loops over short reads (Linux reads at most ~2 GiB at a time)."""
    view = memoryview(array.reshape(-1).view(np.uint8))
    got = 0
    with open(fd, "rb", buffering=0, closefd=False) as f:
        f.seek(offset)
        while got < len(view):
            n = f.readinto(view[got:got + _MAX_READ])
            if not n:
                break
            got += n
    return got


def write_safetensors(tensors: Mapping[str, np.ndarray], path: str, *,
                      metadata: Mapping[str, str] | None = None) -> None:
    """Writes `tensors` (name -> array) to `path` in safetensors format (little-endian): the
    arrays made C-contiguous and little-endian, then `stream_safetensors` of them.

    Raises:
        OutputError: a dtype safetensors can't hold.
    """
    arrays = {}
    for name, array in tensors.items():
        a = np.ascontiguousarray(array).reshape(np.shape(array))  # 0-d stays 0-d
        if a.dtype.byteorder == ">":  # safetensors is little-endian
            a = a.astype(a.dtype.newbyteorder("<"))
        arrays[name] = a
    stream_safetensors([(name, a.shape, str(a.dtype)) for name, a in arrays.items()],
                       arrays.__getitem__, path, metadata=metadata)


def stream_safetensors(specs: Sequence[tuple[str, tuple, str]],
                       fetch: Callable[[str], np.ndarray], path: str, *,
                       metadata: Mapping[str, str] | None = None) -> None:
    """Writes a safetensors file one tensor at a time: the header from `specs` alone, then
    each tensor's bytes as `fetch` gives it, so that one tensor (plus what `fetch` holds) is
    in memory at once (`write_safetensors` is this over a dict of arrays).

    Args:
        specs: (name, shape, dtype name) of every tensor, in the order written.
        fetch: ``fetch(name) -> array``, called once per name, in order; each array must
            have its spec's shape and dtype.
        path: the file to write (a temporary of `surgery.io.atomic`: on an error the caller
            removes it).
        metadata: the header's ``__metadata__``.

    Raises:
        OutputError: a dtype safetensors can't hold (before anything is written).
        ValueError: `fetch` gave an array that is not its spec's (a bug of the caller).
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, shape, dtype in specs:
        code = _CODES.get(str(dtype))
        if code is None:
            raise OutputError(f"{path}: tensor {name!r} has dtype {dtype}, which safetensors "
                              "can't hold", path=path, variable=name)
        nbytes = shape_size(shape) * _np_dtype(str(dtype)).itemsize
        header[name] = {"dtype": code, "shape": [int(d) for d in shape],
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        writeback = Writeback(f.fileno())  # the disk writes start while the next is made
        try:
            for name, shape, dtype in specs:
                a = fetch(name)
                if tuple(a.shape) != tuple(int(d) for d in shape) or \
                        str(a.dtype) != str(dtype):
                    raise ValueError(f"{path}: tensor {name!r} is {a.dtype} {tuple(a.shape)} "
                                     f"but its header says {dtype} {tuple(shape)}")
                f.write(memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8)))
                writeback.wrote(a.nbytes)
                del a  # before the next fetch
        finally:
            writeback.close()
