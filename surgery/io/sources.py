"""Weight sources: one lazy `name -> array` mapping over every format `surgery` reads.

`open_weights` recognises the source (a live model, a `.keras`, `.weights.h5`, legacy `.h5`,
`.npz`, a SavedModel directory, a TF checkpoint) and returns a `WeightSource`: canonical paths
as keys, `shape`/`dtype` without reading, and one array read at a time. Keras files are read
with h5py from their config and HDF5 directly, without TensorFlow.
"""

from __future__ import annotations

import os
import stat
import tokenize
import zipfile
import zlib
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from ..entries import LayerInfo, VariableInfo
from ..errors import FormatError, InputError

__all__ = ["WeightSource", "open_weights", "NpzSource", "LiveModelSource", "detect_format",
           "special_file_kind", "check_real_dtype"]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class WeightSource(Mapping):
    """A lazy, read-only mapping from canonical path to array.

    Attributes:
        name: the path or model name it was opened from.
        format: ``keras``, ``weights.h5``, ``legacy-h5``, ``npz``, ``savedmodel``,
            ``checkpoint``, ``model``.
        config: the model config where the format has one, else None.
    """

    format = "?"

    def __init__(self, name: str, variables: list[VariableInfo], layers: list[LayerInfo],
                 config: dict | None = None):
        self.name = name
        self.config = config
        self._layers = list(layers)
        self._infos: dict[str, VariableInfo] = {}
        for info in variables:
            other = self._infos.get(info.path)
            if other is not None:
                raise FormatError(f"{name}: two variables share the path {info.path!r} "
                                  f"({other.key} and {info.key}); the file is ambiguous")
            self._infos[info.path] = info

    # Mapping interface -------------------------------------------------------------------
    def __getitem__(self, key: str) -> np.ndarray:
        return self.read(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, key: object) -> bool:
        return key in self._infos

    # Metadata ----------------------------------------------------------------------------
    def variables(self) -> list[VariableInfo]:
        """Every variable, in model order."""
        return list(self._infos.values())

    def layers(self) -> list[LayerInfo]:
        """Every layer, in model order (empty for formats without layers)."""
        return list(self._layers)

    def info(self, key: str) -> VariableInfo:
        try:
            return self._infos[key]
        except KeyError:
            raise KeyError(key) from None

    def shape(self, key: str) -> tuple[int, ...]:
        return self.info(key).shape

    def dtype(self, key: str) -> str:
        return self.info(key).dtype

    def read(self, key: str) -> np.ndarray:
        """Reads one variable into a new array (the caller owns it)."""
        return self._read(self.info(key))

    def _read(self, info: VariableInfo) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Releases open files; the source can't be read afterwards."""

    def __enter__(self) -> "WeightSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {len(self)} variables>"


class NpzSource(WeightSource):
    """A numpy ``.npz`` archive; keys verbatim, arrays read one at a time (no pickles)."""

    format = "npz"

    def __init__(self, path: str):
        from .archive import SafeZip

        zf = SafeZip(path)
        zf.kind = "npz archive"
        variables = []
        try:
            for member in zf.members:
                if not member.endswith(".npy"):
                    continue
                with zf.open_member(member) as f:
                    shape, dtype = _npy_header(f, f"{path}: {member}")
                    _check_stored(shape, dtype, zf.info(member).file_size - f.tell(),
                                  f"{path}: {member}")
                variables.append(VariableInfo(member[:-4], shape, dtype, key=member))
        finally:
            zf.close()
        if not variables:
            raise FormatError(f"{path}: an npz archive with no arrays", path=path)
        super().__init__(path, variables, [])
        self._path = path

    def _read(self, info: VariableInfo) -> np.ndarray:
        check_real_dtype(info.dtype, f"{self._path}: {info.key}")
        try:
            with zipfile.ZipFile(self._path) as zf, zf.open(info.key) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
                NotImplementedError) as e:
            raise FormatError(f"{self._path}: can't read {info.path} ({e})",
                              path=self._path) from None


def _npy_header(f, where: str) -> tuple[tuple[int, ...], str]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError,
            zipfile.BadZipFile, zlib.error) as e:  # numpy parses the header as Python
        raise FormatError(f"{where}: not a valid .npy member ({e})") from None
    if dtype.hasobject:
        raise FormatError(f"{where}: holds Python objects (pickles); refusing to load them")
    if len(shape) > 32 or not all(isinstance(d, int) and not isinstance(d, bool) and
                                  0 <= d < 2 ** 63 for d in shape):
        text = repr(shape) if len(repr(shape)) <= 80 else repr(shape)[:77] + "..."
        raise FormatError(f"{where}: the .npy header declares an invalid shape {text}")
    return tuple(int(d) for d in shape), str(dtype)


def check_real_dtype(dtype: Any, where: str) -> None:
    """Refuses an array dtype that is not a real number (complex, strings, records, dates)
    before it is read as a weight: a complex kernel would lose its imaginary part."""
    if str(dtype) == "bfloat16":
        return
    try:
        dtype = np.dtype(dtype)
    except TypeError:  # a TF-only dtype (string, resource, variant, ...)
        raise FormatError(f"{where}: holds {dtype} values, not numbers; refusing it as a "
                          "weight") from None
    if dtype is None or (dtype.kind in "fiub" and dtype.fields is None):
        return
    if dtype.kind == "c":
        raise FormatError(f"{where}: holds complex numbers ({dtype}); surgery copies "
                          "real-valued weights only and would lose the imaginary part; store "
                          "the real and imaginary parts as two float arrays")
    raise FormatError(f"{where}: holds {dtype} values, not numbers; refusing it as a weight")


def _check_stored(shape: tuple[int, ...], dtype: str, stored: int, where: str) -> None:
    """Refuses an .npy header that declares more bytes than its member stores, before any
    array is allocated (a 200-byte file can declare billions of elements)."""
    declared = np.dtype(dtype).itemsize
    for d in shape:
        declared *= d
    if declared > stored:
        raise FormatError(f"{where}: declares shape {shape} of {dtype} ({declared} bytes) but "
                          f"stores {stored} bytes; the file is truncated or hostile")


class LiveModelSource(WeightSource):
    """A live Keras 3 or tf_keras model; `read` returns a copy of the variable's value."""

    format = "model"

    def __init__(self, model: Any):
        from .livemodels import walk_model

        walk = walk_model(model)
        super().__init__(str(getattr(model, "name", "model")), walk.variables, walk.layers)
        self.model = model
        self.handles = walk.handles
        self.holders = walk.holders
        self.layer_objects = walk.layer_objects

    def variable(self, key: str) -> Any:
        """The live variable object behind a path."""
        return self.handles[self.info(key).key]

    def finalize(self, keys: Iterable[str]) -> None:
        """After the variables at `keys` were assigned: each layer holding one that computes
        from tensors made of its variables when it is built (Keras's `Normalization` keeps
        its mean and variance so) remakes them with `finalize_state`, as Keras's own weight
        loading does; other layers have no such method and are left alone."""
        holders = {}
        for key in keys:
            holder = self.holders[self.info(key).key]
            if callable(getattr(holder, "finalize_state", None)):
                holders[id(holder)] = holder
        for holder in holders.values():
            holder.finalize_state()

    def _read(self, info: VariableInfo) -> np.ndarray:
        return np.array(self.handles[info.key].numpy(), copy=True)


def special_file_kind(path: str) -> str | None:
    """What a path is when it is neither a regular file nor a directory (``a FIFO``, ``a
    character device``...), following symlinks; None for regular files, directories and
    missing paths. Reading a FIFO blocks forever and a device never ends: inputs must be
    regular files."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def detect_format(path: str) -> str:
    """Names the format of a path: ``keras``, ``hdf5``, ``npz``, ``safetensors``,
    ``safetensors.index.json``, ``weights.json``, ``savedmodel``, ``checkpoint``; raises
    `InputError`/`FormatError` for anything else."""
    p = os.fspath(path)
    if os.path.isdir(p):
        if os.path.isfile(os.path.join(p, "saved_model.pb")):
            return "savedmodel"
        raise InputError(f"{p}: a directory that is not a SavedModel (no saved_model.pb); pass "
                         "a model file, or the SavedModel's top directory")
    if not os.path.exists(p):
        if os.path.isfile(p + ".index"):
            return "checkpoint"
        raise InputError(f"{p}: no such file or directory")
    kind = special_file_kind(p)
    if kind:
        raise InputError(f"{p}: {kind}, not a regular file; pass a model or weights file")
    if os.path.getsize(p) == 0:
        raise FormatError(f"{p}: empty file, not a model or weights file")
    with open(p, "rb") as f:
        head = f.read(8)
    lower = p.lower()
    if lower.endswith(".safetensors"):
        return "safetensors"
    if lower.endswith(".safetensors.index.json"):
        return "safetensors.index.json"
    if lower.endswith(".weights.json"):
        return "weights.json"
    if head.startswith(b"PK"):
        return "npz" if lower.endswith(".npz") else "keras"
    if head == _HDF5_MAGIC:
        return "hdf5"
    if lower.endswith(".index"):
        return "checkpoint"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol 2-5
        from .archive import torch_pickle_message

        raise FormatError(torch_pickle_message(p), path=p)
    raise FormatError(f"{p}: format not recognised (not a .keras/.h5/.weights.h5/"
                      ".weights.json/.npz/.safetensors file, SavedModel directory or TF "
                      "checkpoint)")


def open_weights(source: Any, *, architecture: Any = None) -> WeightSource:
    """Opens any weight source as a lazy mapping from canonical path to array.

    Args:
        source: a live Keras 3/tf_keras model, an open `WeightSource` (returned as is), or a
            path: `.keras`, `.weights.h5`, legacy Keras 2 `.h5`, `.npz`, a SavedModel or TF Hub
            directory, a TF checkpoint prefix, `.safetensors`, or sharded weights: a Hugging
            Face `model.safetensors.index.json` or a Keras 3 `.weights.json` (beside their
            shards, checked against the index before anything is read).
        architecture: for a bare `.weights.h5` or `.weights.json`, a `.keras` file or
            `config.json` that names its variables; without it, layers are named from the
            file and variables by position.

    Returns:
        A `WeightSource`; close it (or use `with`) when done.

    Raises:
        InputError: the path is missing or is a directory that is not a SavedModel.
        FormatError: the file is damaged, hostile, or of a format `surgery` does not read.

    Example:
    ```python
    with surgery.open_weights("model.keras") as w:
        print(w.shape("fc/kernel"), w["fc/kernel"].mean())
    ```
    """
    if isinstance(source, WeightSource):
        return source
    from .livemodels import is_live_model

    if is_live_model(source):
        return LiveModelSource(source)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"can't read weights from a {type(source).__name__}; pass a Keras "
                         "model or a path")
    path = os.fspath(source)
    kind = detect_format(path)
    if kind == "npz":
        return NpzSource(path)
    if kind == "safetensors":
        from .safetensors import SafetensorsSource

        return SafetensorsSource(path)
    if kind in ("safetensors.index.json", "weights.json"):
        from .shards import KerasShardedSource, SafetensorsIndexSource

        return SafetensorsIndexSource(path) if kind == "safetensors.index.json" else \
            KerasShardedSource(path, architecture=architecture)
    if kind in ("savedmodel", "checkpoint"):
        from .checkpoints import open_checkpoint

        return open_checkpoint(path, savedmodel=kind == "savedmodel")
    from . import kerasfile as kerasfiles

    if kind == "keras":
        return kerasfiles.KerasFileSource(path)
    return kerasfiles.open_hdf5(path, architecture=architecture)
