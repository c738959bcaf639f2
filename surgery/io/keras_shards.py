"""Writing Keras 3 sharded weights: `write_keras_shards`.

The layout Keras 3 reads (what ``model.save_weights(path, max_shard_size=)`` writes):
``<base>_00000.weights.h5``, ... and ``<base>.weights.json``, which maps each
``/layers/<name>/vars`` group to the list of shards holding its variables. Tensors are packed in
order (`shard_index._pack`): a shard is closed when the next tensor would take it past the
limit, and a tensor larger than the limit gets a shard of its own (Keras 3.15's own writer
refuses it instead). The limit counts tensor bytes, as Keras does: a file is larger by its HDF5
header. Each open shard has a `Writeback`, so that its disk writes start while the next tensors
are read. The set is published atomically (`surgery.io.atomic.atomic_set`): every shard, then
the index.

Moved from `shards.py`, which still exports `write_keras_shards`. A test that replaces
`Writeback` or `_dump_index` patches them here, where the writer looks them up.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
from typing import Any, Callable, Iterable

import h5py
import numpy as np

from ..errors import FormatError, OutputError
from .h5layout import guard
from .shard_index import ShardedOutput, _dump_index, _pack
from .writeback import Writeback

__all__ = ["write_keras_shards"]


def _keras_base(index: str) -> str:
    """Keras's shard prefix: the index's stem with every ``.weights`` removed (Keras 3.15
    `ShardedH5IOStore`: ``path.stem.replace(".weights", "")``)."""
    return os.path.basename(index)[:-len(".json")].replace(".weights", "")


def _h5_tree(root: Any, where: str) -> tuple[list[Any], list[Any]]:
    """The groups and datasets of a Keras weights tree, in h5py's order (depth first)."""
    groups, datasets = [], []
    with guard(where):
        stack = [root]
        while stack:
            group = stack.pop()
            groups.append(group)
            children = []
            for name in group:
                if not isinstance(group.get(name, getlink=True), h5py.HardLink):
                    raise FormatError(f"{where}: {group.name}/{name} is not a plain HDF5 "
                                      "object; refusing to copy it", path=where)
                obj = group[name]
                (children if isinstance(obj, h5py.Group) else datasets).append(obj)
            stack.extend(reversed(children))
    return groups, datasets


def _make_groups(out: h5py.File, name: str, root: Any, where: str) -> h5py.Group:
    """The group `name` in `out`, created with the attributes it has under `root`."""
    group = out
    for part in [p for p in name.split("/") if p]:
        if part not in group:
            new = group.create_group(part)
            with guard(where):
                attrs = dict(root[new.name].attrs)
            for key, value in attrs.items():
                new.attrs[key] = value
            group = new
        else:
            group = group[part]
    return group


class _OpenShards:
    """The shard files being written, at most `keep` open at once: a shard closed to make room
    is reopened to append (so thousands of small shards don't exhaust file descriptors).

    Each open shard has a `Writeback` (as the `.keras` writer has): its disk writes start
    while the next tensors are read, every `_FLUSH` bytes and as soon as the writer moves on
    to another shard, so that the fsync before the set is published finds little left."""

    def __init__(self, paths: list[str], keep: int = 8):
        self._paths, self._keep = paths, keep
        self._open: dict[int, h5py.File] = {}
        self._made: set[int] = set()
        self._writebacks: dict[int, Writeback] = {}
        self._last: int | None = None  # the shard written last

    def get(self, i: int) -> h5py.File:
        f = self._open.pop(i, None)
        if f is None:
            f = h5py.File(self._paths[i], "a" if i in self._made else "w")
            self._made.add(i)
            fd = f.id.get_vfd_handle()  # the sec2 driver's file descriptor
            if isinstance(fd, int):
                self._writebacks[i] = Writeback(fd)
        self._open[i] = f
        while len(self._open) > self._keep:
            self._close(next(iter(self._open)))
        return f

    def wrote(self, i: int, nbytes: int) -> None:
        """Counts `nbytes` just written to shard `i` (open); moving on from another shard
        starts that one's writeback."""
        if self._last is not None and self._last != i and self._last in self._writebacks:
            self._writebacks[self._last].start()
        self._last = i
        if i in self._writebacks:
            self._writebacks[i].wrote(nbytes)

    def _close(self, i: int) -> None:
        writeback = self._writebacks.pop(i, None)
        if writeback is not None:
            writeback.close()  # before the file descriptor goes
        self._open.pop(i).close()

    def close(self) -> None:
        for writeback in self._writebacks.values():  # every thread stopped, whatever fails
            writeback.close()
        self._writebacks.clear()
        while self._open:
            self._open.pop(next(iter(self._open))).close()


@dataclasses.dataclass
class _KerasPlan:
    """Which shard each dataset of a Keras weights tree goes to."""

    groups: list
    datasets: list
    names: list[str]
    shard_of: dict[str, int]
    weight_map: dict[str, list[str]]
    sizes: list[tuple[str, int]]


def _plan_keras_shards(root: Any, index: str, limit: int, order: Iterable[str],
                       where: str) -> _KerasPlan:
    groups, datasets = _h5_tree(root, where)
    if not datasets:
        raise OutputError(f"{index}: the model has no weights to shard; save it as a .keras "
                          "file instead", path=index)
    rank = {key: n for n, key in enumerate(order)}
    datasets.sort(key=lambda ds: rank.get(ds.name, len(rank)))  # stable: h5py order after
    sizes = [(ds.name, int(ds.size) * ds.dtype.itemsize) for ds in datasets]
    packed = _pack(sizes, limit)
    base = _keras_base(index)
    names = [f"{base}_{i:05}.weights.h5" for i in range(len(packed))]
    shard_of = {ds: i for i, part in enumerate(packed) for ds in part}
    weight_map: dict[str, list[str]] = {}
    for ds, _ in sizes:
        files = weight_map.setdefault(posixpath.dirname(ds), [])
        if names[shard_of[ds]] not in files:
            files.append(names[shard_of[ds]])
    return _KerasPlan(groups, datasets, names, shard_of, weight_map, sizes)


def _write_keras_files(root: Any, plan: _KerasPlan, files: _OpenShards, replaced: set[str],
                       values: Iterable[tuple[str, np.ndarray]], where: str) -> None:
    """Each shard in turn: the groups above its datasets (the first shard: every group), the
    datasets copied from `root` or created empty for `values`; then `values` streamed in."""
    with guard(where):
        attrs = dict(root.attrs)
    started: set[int] = set()
    for ds in plan.datasets:  # in packing order: one shard after the other
        i = plan.shard_of[ds.name]
        out = files.get(i)
        if i not in started:
            started.add(i)
            for key, value in attrs.items():
                out.attrs[key] = value
            for group in plan.groups[1:] if i == 0 else ():
                _make_groups(out, group.name, root, where)
        parent = _make_groups(out, posixpath.dirname(ds.name), root, where)
        leaf = posixpath.basename(ds.name)
        with guard(where):
            data = None if ds.name in replaced else ds[()]
            ds_attrs = dict(ds.attrs)
        new = parent.create_dataset(leaf, shape=ds.shape, dtype=ds.dtype) if data is None \
            else parent.create_dataset(leaf, data=data)
        for key, value in ds_attrs.items():
            new.attrs[key] = value
        if data is not None:
            files.wrote(i, int(getattr(data, "nbytes", 0)))
        data = None  # one tensor at a time: released before the next is read
    for key, array in values:
        i = plan.shard_of[key]
        files.get(i)[key][...] = array
        files.wrote(i, array.nbytes)
        del array


def write_keras_shards(root: Any, index: str, max_shard_size: int, *,
                       values: Iterable[tuple[str, np.ndarray]] = (),
                       replaced: Iterable[str] = (), check: Callable[[], Any] | None = None,
                       order: Iterable[str] = (), inputs: Iterable = (),
                       overwrite: bool = False, where: str | None = None
                       ) -> tuple[ShardedOutput, Any]:
    """Writes the Keras weights tree `root` as Keras 3 sharded weights: `index`
    (``.weights.json``) and ``<base>_00000.weights.h5``, ... beside it, atomically as a set.

    Each shard is an HDF5 file with the unsharded file's groups above its datasets (with their
    attributes: the ``vars`` groups' ``name``); the first shard also holds every group without
    variables. The index maps each ``vars`` group to the list of shards holding its variables.
    `model.load_weights(index)` in plain Keras reads it, as does `open_weights`.

    Args:
        root: an open HDF5 tree as Keras writes it (a `.weights.h5`, or the
            ``model.weights.h5`` of a `.keras`).
        index: the ``.weights.json`` to write.
        max_shard_size: the limit in bytes (see `parse_size`).
        values: (dataset name, array) pairs replacing the datasets named in `replaced`,
            consumed once, one array at a time; the other datasets are copied from `root`.
        replaced: the dataset names `values` fills.
        check: called after every value is written, before anything is published; its
            exception leaves nothing behind; its return value is returned.
        order: dataset names in the order to pack them (the model's variable order, the
            order Keras saves in); the others follow in h5py's order.
        inputs: paths never written.
        overwrite: replace an existing set (see `atomic_set`).
        where: the source's name in error messages.

    Returns:
        (`ShardedOutput`, what `check` returned).

    Raises:
        OutputError: a weights tree without variables, an output that may not be written
            (see `atomic_set`), or an OS error while writing; nothing is left behind.
    """
    from .atomic import atomic_set

    where = where or index
    plan = _plan_keras_shards(root, index, max_shard_size, order, where)
    base = _keras_base(index)
    family = re.compile(re.escape(base) + r"_\d{5}\.weights\.h5")
    with atomic_set(index, plan.names, inputs=inputs, overwrite=overwrite,
                    family=family) as tmp:
        files = _OpenShards([tmp.members[name] for name in plan.names])
        try:
            _write_keras_files(root, plan, files, set(replaced), values, where)
        finally:
            files.close()
        result = check() if check is not None else None
        total = sum(size for _, size in plan.sizes)
        # As Keras writes it: 4-space indent, total_size a float (Keras sums bits / 8)
        _dump_index(tmp.index, {"metadata": {"total_size": float(total)},
                                "weight_map": plan.weight_map}, indent=4)
    folder = os.path.dirname(index)
    return ShardedOutput(index, tuple(os.path.join(folder, n) for n in plan.names), total,
                         max_shard_size, tuple(n for n, size in plan.sizes
                                               if size > max_shard_size)), result
