"""Writing Hugging Face sharded checkpoints: `write_safetensors_sharded` and its
one-tensor-at-a-time sibling `stream_safetensors_sharded`.

The layout transformers reads: ``model-00001-of-00003.safetensors``, ... and
``model.safetensors.index.json``, ``{"metadata": {"total_size": N}, "weight_map": {name:
shard}}``. Tensors are packed in order (`shard_index._pack`): a shard is closed when the next
tensor would take it past the limit, and a tensor larger than the limit gets a shard of its own.
The limit counts tensor bytes, as Hugging Face does: a file is larger by its JSON header. The
set is published atomically (`surgery.io.atomic.atomic_set`): every shard, then the index.

Moved from `shards.py`, which still exports both writers.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..errors import OutputError
from .shard_index import _HF_INDEX, ShardedOutput, _dump_index, _pack
from .sizes import parse_size, tensor_bytes

__all__ = ["write_safetensors_sharded", "stream_safetensors_sharded"]


def write_safetensors_sharded(tensors: Mapping[str, np.ndarray], index: str,
                              max_shard_size: Any, *, inputs: Iterable = (),
                              overwrite: bool = False,
                              metadata: Mapping[str, str] | None = None) -> ShardedOutput:
    """Writes `tensors` (name -> array, in order) as a Hugging Face sharded checkpoint:
    `index` (``<prefix>.safetensors.index.json``) and ``<prefix>-00001-of-0000N.safetensors``,
    ... beside it, atomically as a set (every shard, then the index).

    The index is ``{"metadata": {"total_size": N}, "weight_map": {name: shard}}`` (keys sorted,
    as transformers' `save_pretrained` writes it); each shard is a `.safetensors` file
    (`write_safetensors`, with `metadata` in its header).

    Args:
        tensors: the arrays, in the order they are packed.
        index: the ``.safetensors.index.json`` to write.
        max_shard_size: the limit (`parse_size`: bytes, or "500MB", "2GB", ...).
        inputs: paths never written.
        overwrite: replace an existing set (see `atomic_set`).
        metadata: the ``__metadata__`` of every shard (transformers writes {"format": "pt"}).

    Returns:
        A `ShardedOutput`.

    Raises:
        OptionError: a size `parse_size` refuses.
        OutputError: no tensors, a dtype safetensors can't hold (named), an output that may
            not be written (see `atomic_set`), an OS error; nothing is left behind.

    Example:
    ```python
    write_safetensors_sharded(state_dict, "out/model.safetensors.index.json", "2GB")
    ```
    """
    from .safetensors import write_safetensors

    specs = [(name, np.shape(a), str(np.asarray(a).dtype)) for name, a in tensors.items()]
    return _write_safetensors_set(specs, index, max_shard_size, inputs, overwrite, (
        lambda part, path: write_safetensors({k: tensors[k] for k in part}, path,
                                             metadata=metadata)))


def stream_safetensors_sharded(specs: Iterable[tuple[str, tuple, str]],
                               fetch: Callable[[str], np.ndarray], index: str,
                               max_shard_size: Any, *, inputs: Iterable = (),
                               overwrite: bool = False,
                               metadata: Mapping[str, str] | None = None) -> ShardedOutput:
    """`write_safetensors_sharded` one tensor at a time: the shards are packed from `specs`
    (name, shape, dtype name) alone, and each shard is written by `stream_safetensors`,
    calling ``fetch(name)`` once per tensor in order, so that one tensor (plus what `fetch`
    holds) is in memory at once. Same files as `write_safetensors_sharded` of the same
    tensors; same errors, at the same points (an error from `fetch` leaves nothing behind).

    Example:
    ```python
    stream_safetensors_sharded([("w", (4, 3), "float32")], lambda k: np.zeros((4, 3), "f4"),
                               "out/model.safetensors.index.json", "2GB")
    ```
    """
    from .safetensors import stream_safetensors

    specs = list(specs)
    by_name = {spec[0]: spec for spec in specs}
    return _write_safetensors_set(specs, index, max_shard_size, inputs, overwrite, (
        lambda part, path: stream_safetensors([by_name[k] for k in part], fetch, path,
                                              metadata=metadata)))


def _write_safetensors_set(specs: list[tuple[str, tuple, str]], index: str,
                           max_shard_size: Any, inputs: Iterable, overwrite: bool,
                           write_shard: Callable[[list[str], str], None]) -> ShardedOutput:
    """The set of `write_safetensors_sharded`, each shard written by ``write_shard(names,
    path)``."""
    from .atomic import atomic_set
    from .safetensors import _CODES

    index = os.fspath(index)
    limit = parse_size(max_shard_size)
    if not index.lower().endswith(_HF_INDEX):
        raise OutputError(f"{index}: a sharded state dict's index is named "
                          "<name>.safetensors.index.json (model.safetensors.index.json)",
                          path=index)
    if not specs:
        raise OutputError(f"{index}: no tensors to write", path=index)
    sizes = []
    for name, shape, dtype in specs:
        if _CODES.get(str(dtype)) is None:
            raise OutputError(f"{index}: tensor {name!r} has dtype {dtype}, which safetensors "
                              "can't hold", path=index, variable=name)
        sizes.append((name, tensor_bytes(shape, dtype)))
    plan = _pack(sizes, limit)
    prefix = os.path.basename(index)[:-len(_HF_INDEX)]
    names = [f"{prefix}-{i:05d}-of-{len(plan):05d}.safetensors" for i in range(1, len(plan) + 1)]
    family = re.compile(re.escape(prefix) + r"-\d{5}-of-\d{5}\.safetensors")
    total = sum(size for _, size in sizes)
    with atomic_set(index, names, inputs=inputs, overwrite=overwrite, family=family) as tmp:
        for name, part in zip(names, plan):
            write_shard(part, tmp.members[name])
        weight_map = {k: name for name, part in zip(names, plan) for k in part}
        _dump_index(tmp.index, {"metadata": {"total_size": total}, "weight_map": weight_map},
                    indent=2, sort_keys=True)
    folder = os.path.dirname(index)
    return ShardedOutput(index, tuple(os.path.join(folder, n) for n in names), total, limit,
                         tuple(name for name, size in sizes if size > limit))
