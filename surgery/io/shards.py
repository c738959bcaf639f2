"""Sharded weights as one source: a Hugging Face ``model.safetensors.index.json`` and Keras 3
``.weights.json``, each an index beside the shard files it names.

An index is JSON, ``{"metadata": {...}, "weight_map": {name: shard}}``: a tensor name and its
``.safetensors`` shard (Hugging Face), or an HDF5 group (``/layers/dense/vars``) and the list of
``.weights.h5`` shards holding its variables (Keras). Index and shards are untrusted; before any
tensor is read:

- the index must be a JSON object with a non-empty ``weight_map`` that lists no name twice;
- every shard must be a regular file inside the index's folder: no absolute path, no ``..``,
  no symbolic link leading out of the folder, no FIFO, device or folder; a missing shard is
  named;
- every shard must be a valid file of its format (the safetensors header checks, the HDF5
  scan of `h5layout`);
- each shard must hold exactly what the index puts in it, and no tensor may be in two shards.

Tensors are then read lazily. A safetensors shard is opened only while one of its tensors is
read (nothing is cached: each read returns a new array); Keras shards stay open through h5py
while the source is, and datasets are read one at a time. Paths equal those of the unsharded
file: safetensors keys verbatim, Keras canonical paths as for a `.weights.h5`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import stat
from typing import Any, Iterator

import h5py
import numpy as np

from .archive import MAX_JSON_BYTES, parse_json, read_small_file
from ..entries import VariableInfo
from ..errors import FormatError, InputError, OutputError, SurgeryError
from .h5layout import VirtualGroup, guard, keras3_entries, open_h5
from .kerasfile import _check_against, _H5Source, read_architecture
from .safetensors import SafetensorsSource, _np_dtype
from .sources import WeightSource

__all__ = ["SafetensorsIndexSource", "KerasShardedSource", "read_index", "index_files",
           "refuse_sharded_output", "INDEX_SUFFIXES"]

INDEX_SUFFIXES = (".safetensors.index.json", ".weights.json")
_AGAIN = "the index and its shards come from different saves; save or download them again"


class _Object(dict):
    """A JSON object that remembers the keys given twice (`json` keeps the last silently)."""

    def __init__(self, pairs):
        super().__init__()
        self.repeated: list[tuple[str, Any, Any]] = []
        for key, value in pairs:
            if key in self:
                self.repeated.append((key, self[key], value))
            self[key] = value


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_index(path: str, *, lists: bool) -> dict[str, list[str]]:
    """Reads and checks an index: ``weight_map`` as name -> shard file names (in order).

    Args:
        path: the index file.
        lists: whether a name may map to a list of shards (Keras) or only to one (Hugging Face).

    Raises:
        InputError: the index is not a readable regular file.
        FormatError: not JSON, no ``weight_map`` object, an empty one, a name listed twice, or
            a value that is not a shard file name (or a non-empty list of them).
    """
    data = read_small_file(path, "weights index", MAX_JSON_BYTES)
    parse_json(data, path)  # size, depth and syntax, before the second (pair-keeping) parse
    index = json.loads(data.decode("utf-8"), object_pairs_hook=_Object)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise FormatError(f"{path}: not a sharded weights index (no \"weight_map\" object); pass "
                          "the index file saved beside the shards", path=path)
    if not isinstance(index.get("metadata", {}), dict):
        raise FormatError(f"{path}: the index's \"metadata\" is not an object; refusing a "
                          "malformed index", path=path)
    if weight_map.repeated:
        name, first, second = weight_map.repeated[0]
        raise FormatError(f"{path}: the index lists {_short(name)} twice (in {_short(first)} "
                          f"and {_short(second)}); refusing an ambiguous index", path=path)
    if not weight_map:
        raise FormatError(f"{path}: the index's weight_map is empty; it names no weights",
                          path=path)
    out: dict[str, list[str]] = {}
    for name, value in weight_map.items():
        files = value if lists and isinstance(value, list) else [value]
        if not files or not all(isinstance(f, str) and f and "\x00" not in f for f in files):
            what = "a shard file name or a list of them" if lists else "a shard file name"
            raise FormatError(f"{path}: the index maps {_short(name)} to {_short(value)}, not "
                              f"{what}; refusing a malformed index", path=path)
        out[name] = list(dict.fromkeys(files))
    return out


def _shard_path(path: str, folder: str, name: str) -> str:
    """The checked path of shard `name` of the index `path` (in `folder`)."""
    where = f"{path}: shard {_short(name, 400)}"  # a path: long, but must be named whole
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        raise FormatError(f"{where} is an absolute path; an index may name only files in its "
                          "own folder; refusing it", path=path)
    if ".." in name.replace("\\", "/").split("/"):
        raise FormatError(f"{where} points outside the index's folder (..); an index may name "
                          "only files in its own folder; refusing it", path=path)
    full = os.path.join(folder, name)
    real, base = os.path.realpath(full), os.path.realpath(folder)
    if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
        raise FormatError(f"{where} leads through a symbolic link to {real}, outside the "
                          "index's folder; copy the shard files into the folder beside the "
                          "index", path=path)
    try:
        mode = os.stat(full).st_mode
    except FileNotFoundError:
        raise InputError(f"{where} is missing from {folder}; put every shard the index names "
                         "beside it", path=path) from None
    except OSError as e:
        raise InputError(f"{where} can't be read ({e.strerror})", path=path) from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"
        raise InputError(f"{where} is {kind}, not a regular file; pass real shard files",
                         path=path)
    return full


def _shard_paths(path: str, shards: list[str]) -> dict[str, str]:
    folder = os.path.dirname(os.path.abspath(path))
    return {name: _shard_path(path, folder, name) for name in shards}


def index_files(path: str) -> list[str]:
    """The shard files an index names, best effort (unchecked, [] when it can't be read): the
    files a command reads through `path`, so that no output is written over one of them."""
    path = os.fspath(path)
    if not path.lower().endswith(INDEX_SUFFIXES) or not os.path.isfile(path):
        return []
    try:
        weight_map = read_index(path, lists=True)
    except (SurgeryError, ValueError):
        return []
    folder = os.path.dirname(os.path.abspath(path))
    names = dict.fromkeys(f for files in weight_map.values() for f in files)
    return [os.path.join(folder, name) for name in names]


def refuse_sharded_output(path: str) -> None:
    """Refuses an output named like sharded weights: `surgery` writes no shard sets yet, and a
    `.keras` archive written under an index's name would be unreadable as one.

    Raises:
        OutputError: `path` ends with ``.weights.json`` or ``.safetensors.index.json``.
    """
    name = os.fspath(path)
    if name.lower().endswith(INDEX_SUFFIXES):
        raise OutputError(f"{name}: surgery can't write sharded weights yet; write a .keras "
                          "(-o out.keras), then shard it with Keras: model.save_weights("
                          "\"out.weights.json\", max_shard_size=...)", path=name)


# ------------------------------------------------------------------------ Hugging Face

class SafetensorsIndexSource(WeightSource):
    """A Hugging Face sharded checkpoint: ``model.safetensors.index.json`` and its shards.

    Keys are the tensor names, verbatim (as in an unsharded `.safetensors`), in shard order
    (shard file names sorted), then in file order within a shard.

    Example:
    ```python
    with surgery.open_weights("llm/model.safetensors.index.json") as w:
        print(w.shape("lm_head.weight"))
    ```
    """

    format = "safetensors.index.json"

    def __init__(self, path: str):
        weight_map = read_index(path, lists=False)
        claims: dict[str, set[str]] = {}
        for tensor, (shard,) in weight_map.items():
            claims.setdefault(shard, set()).add(tensor)
        shard_names = sorted(claims)
        self._files = _shard_paths(path, shard_names)
        held: dict[str, list[VariableInfo]] = {}
        holder: dict[str, str] = {}
        for shard in shard_names:  # every header checked, and no tensor in two shards
            with SafetensorsSource(self._files[shard]) as src:  # reads the header, then closes
                held[shard] = src.variables()
            for info in held[shard]:
                other = holder.setdefault(info.path, shard)
                if other != shard:
                    raise FormatError(f"{path}: tensor {_short(info.path)} is in two shards, "
                                      f"{other} and {shard}; refusing an ambiguous checkpoint",
                                      path=path, variable=info.path)
        variables = []
        for shard in shard_names:  # each shard holds exactly what the index puts in it
            for info in held[shard]:
                if info.path not in claims[shard]:
                    listed = weight_map.get(info.path)
                    where = f"puts in {listed[0]}" if listed else "does not list"
                    raise FormatError(f"{path}: shard {shard} holds tensor {_short(info.path)}, "
                                      f"which the index {where}; {_AGAIN}", path=path,
                                      variable=info.path)
                variables.append(dataclasses.replace(info, key=(shard, *info.key)))
            absent = sorted(claims[shard] - {v.path for v in held[shard]})
            if absent:
                raise FormatError(f"{path}: the index puts tensor {_short(absent[0])} in shard "
                                  f"{shard}, which does not hold it; {_AGAIN}", path=path,
                                  variable=absent[0])
        super().__init__(path, variables, [])

    @property
    def files(self) -> list[str]:
        """The shard files, in order."""
        return list(self._files.values())

    def _read(self, info: VariableInfo) -> np.ndarray:
        shard, begin, end = info.key
        file = self._files[shard]
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in can't hang us
        try:
            fd = os.open(file, flags)
        except OSError as e:
            raise InputError(f"{file}: can't read tensor {_short(info.path)} ({e.strerror}); "
                             "the shard changed after the index was opened", path=file,
                             variable=info.path) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size < end:
                raise FormatError(f"{file}: tensor {_short(info.path)} is truncated or the shard "
                                  "was replaced after the index was opened; open it again",
                                  path=file, variable=info.path)
            data = os.pread(fd, end - begin, begin)
        finally:
            os.close(fd)
        if len(data) != end - begin:
            raise FormatError(f"{file}: tensor {_short(info.path)} is truncated", path=file,
                              variable=info.path)
        return np.frombuffer(data, dtype=_np_dtype(info.dtype)).reshape(info.shape).copy()


# ------------------------------------------------------------------------------- Keras

def _datasets(h5: h5py.File) -> Iterator[str]:
    """The absolute names of every dataset of a scanned (tree-shaped) HDF5 file."""
    stack = [h5]
    while stack:
        group = stack.pop()
        for name in group:
            obj = group[name]
            if isinstance(obj, h5py.Group):
                stack.append(obj)
            else:
                yield obj.name


def _group(key: str) -> str:
    return "/" + key.strip("/")


class KerasShardedSource(_H5Source):
    """Keras 3 sharded weights: a ``.weights.json`` index and its ``*.weights.h5`` shards, read
    as the unsharded ``.weights.h5`` of the same model would be (same canonical paths), named
    through `architecture` when given.

    Example:
    ```python
    model.save_weights("w.weights.json", max_shard_size=0.5)
    with surgery.open_weights("w.weights.json", architecture="model.keras") as w:
        print(w.shape("head/kernel"))
    ```
    """

    format = "weights.json"

    def __init__(self, path: str, architecture: Any = None):
        weight_map = read_index(path, lists=True)
        claims: dict[str, set[str]] = {}
        for key, files in weight_map.items():
            for shard in files:
                claims.setdefault(shard, set()).add(_group(key))
        names = list(claims)
        files = _shard_paths(path, names)
        shards: dict[str, h5py.File] = {}
        try:
            holder: dict[str, str] = {}
            for shard in names:
                shards[shard] = h5 = open_h5(files[shard], files[shard])
                with guard(files[shard]):
                    held = set()
                    for ds in _datasets(h5):
                        other = holder.get(ds)
                        if other is not None:
                            raise FormatError(f"{path}: {ds} is in two shards, {other} and "
                                              f"{shard}; refusing ambiguous weights", path=path)
                        holder[ds] = shard
                        held.add(posixpath.dirname(ds))
                extra, absent = sorted(held - claims[shard]), sorted(claims[shard] - held)
                if extra:
                    raise FormatError(f"{path}: shard {shard} holds {extra[0]}, which the index "
                                      f"does not list there; {_AGAIN}", path=path)
                if absent:
                    raise FormatError(f"{path}: the index lists {absent[0]} in shard {shard}, "
                                      f"which holds no variables there; {_AGAIN}", path=path)
            root = VirtualGroup()
            for shard, h5 in shards.items():
                with guard(files[shard]):
                    root.merge(h5, files[shard])
            config, reference = read_architecture(architecture) if architecture is not None \
                else (None, None)
            with guard(path):
                variables, layers = keras3_entries(root, config, path)
            if reference is not None:
                _check_against(path, variables, reference, architecture)
        except BaseException:
            for h5 in shards.values():
                h5.close()
            raise
        self._files = files
        super().__init__(path, root, variables, layers, config, owned=list(shards.values()))

    @property
    def files(self) -> list[str]:
        """The shard files, in index order."""
        return list(self._files.values())
