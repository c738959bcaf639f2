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

Moved out, and still exported from here (`__all__`): reading and checking the index, and
naming a sharded output (`shard_index.py`: `read_index`, `index_files`, `check_sharded_output`,
`ShardedOutput`, `INDEX_SUFFIXES`); sizes and memory limits (`sizes.py`: `parse_size`,
`parse_memory`, `MemoryLimit`, `format_size`, `tensor_bytes`, `check_memory`); writing sharded
outputs (`keras_shards.py`: `write_keras_shards`; `safetensors_shards.py`:
`write_safetensors_sharded`, `stream_safetensors_sharded`).
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import stat
from typing import Any, Iterator

import h5py
import numpy as np

from ..entries import VariableInfo
from ..errors import FormatError, InputError
from .h5layout import VirtualGroup, guard, keras3_entries, open_h5
from .kerasfile import _check_against, _H5Source, read_architecture
from .keras_shards import write_keras_shards
from .safetensors import SafetensorsSource, _np_dtype, read_into
from .safetensors_shards import stream_safetensors_sharded, write_safetensors_sharded
from .shard_index import (INDEX_SUFFIXES, _AGAIN, ShardedOutput, _shard_paths, _short,
                          check_sharded_output, index_files, read_index)
from .sizes import (MemoryLimit, check_memory, format_size, parse_memory, parse_size,
                    tensor_bytes)
from .sources import WeightSource

__all__ = ["SafetensorsIndexSource", "KerasShardedSource", "read_index", "index_files",
           "check_sharded_output", "parse_size", "write_keras_shards",
           "write_safetensors_sharded", "stream_safetensors_sharded", "ShardedOutput",
           "INDEX_SUFFIXES", "format_size",
           "tensor_bytes", "check_memory", "parse_memory", "MemoryLimit"]


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
            array = np.empty(info.shape, dtype=_np_dtype(info.dtype))
            got = read_into(fd, array, begin)  # into the array: no second copy
        finally:
            os.close(fd)
        if got != end - begin:
            raise FormatError(f"{file}: tensor {_short(info.path)} is truncated", path=file,
                              variable=info.path)
        return array


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
