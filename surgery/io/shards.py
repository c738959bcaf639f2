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

Writing (`write_keras_shards`, `write_safetensors_sharded`, and its one-tensor-at-a-time
sibling `stream_safetensors_sharded`) produces the layout each ecosystem
reads: Keras 3's (``<base>_00000.weights.h5``, ..., and ``<base>.weights.json`` mapping each
``/layers/<name>/vars`` group to the list of shards holding its variables, what
``model.save_weights(path, max_shard_size=)`` writes) and Hugging Face's
(``model-00001-of-00003.safetensors``, ... and ``model.safetensors.index.json``, ``{"metadata":
{"total_size": N}, "weight_map": {name: shard}}``). Tensors are packed in order: a shard is
closed when the next tensor would take it past the limit, and a tensor larger than the limit
gets a shard of its own (Keras 3.15's own writer refuses it instead). The limit counts tensor
bytes, as Keras and Hugging Face do: a file is larger by its HDF5 or JSON header. The set is
published atomically (`surgery.io.atomic.atomic_set`): every shard, then the index.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import posixpath
import re
import stat
from fractions import Fraction
from typing import Any, Callable, Iterable, Iterator, Mapping

import h5py
import numpy as np

from .archive import MAX_JSON_BYTES, parse_json, read_small_file
from ..entries import VariableInfo
from ..errors import FormatError, InputError, OptionError, OutputError, SurgeryError
from .h5layout import VirtualGroup, guard, keras3_entries, open_h5
from .kerasfile import _check_against, _H5Source, read_architecture
from .writeback import Writeback
from .safetensors import SafetensorsSource, _np_dtype, read_into
from .sources import WeightSource

__all__ = ["SafetensorsIndexSource", "KerasShardedSource", "read_index", "index_files",
           "check_sharded_output", "parse_size", "write_keras_shards",
           "write_safetensors_sharded", "stream_safetensors_sharded", "ShardedOutput",
           "INDEX_SUFFIXES", "format_size",
           "tensor_bytes", "check_memory", "parse_memory", "MemoryLimit"]

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


_KERAS_INDEX, _HF_INDEX = ".weights.json", ".safetensors.index.json"


def check_sharded_output(path: str, max_shard_size: Any, *, kind: str = "keras",
                         what: str = "max_shard_size") -> int | None:
    """Checks that an output's name and its shard size go together, before anything is read.

    Args:
        path: the output the user named.
        max_shard_size: None, or a size `parse_size` reads.
        kind: what the command writes: "keras" (a Keras model or weights: sharded as
            ``.weights.json``) or "safetensors" (a state dict: ``.safetensors.index.json``).
        what: the option's name in messages (``--max-shard-size`` on the command line).

    Returns:
        The limit in bytes for a sharded output, None for an unsharded one.

    Raises:
        OutputError: an index name of the other ecosystem.
        OptionError: a sharded name without a size, a size for an unsharded name, or a size
            `parse_size` refuses.
    """
    name = os.fspath(path)
    low = name.lower()
    mine, other = (_KERAS_INDEX, _HF_INDEX) if kind == "keras" else (_HF_INDEX, _KERAS_INDEX)
    example = "out.weights.json" if kind == "keras" else "model.safetensors.index.json"
    if low.endswith(other):
        hint = ("Hugging Face sharded checkpoints are written by surgery export --format torch "
                "(export_state_dict); for Keras shards name the output out.weights.json"
                if kind == "keras" else "Keras sharded weights are written by transplant and "
                "save_model; name a sharded state dict model.safetensors.index.json")
        raise OutputError(f"{name}: this command can't write that kind of sharded output; "
                          f"{hint}", path=name)
    if low.endswith(mine):
        if max_shard_size is None:
            raise OptionError(f"{name}: sharded weights need a shard size; pass "
                              f"{what} (for example 2GB), or write one file instead", path=name)
        return parse_size(max_shard_size, what)
    if max_shard_size is not None:
        raise OptionError(f"{name}: {what} applies only to sharded outputs; name the output "
                          f"{example}, or drop {what}", path=name)
    return None


_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")


def parse_size(value: Any, what: str = "max_shard_size") -> int:
    """A shard size in bytes: an int of bytes, or a string: ``"1000000"``, ``"10KB"``,
    ``"500MB"``, ``"2GB"`` (powers of 1000, as Hugging Face reads them), ``"512MiB"``,
    ``"2GiB"`` (powers of 1024); case is ignored.

    Raises:
        OptionError: anything else, a float (Keras's own `max_shard_size` counts GB, so a bare
            number would be ambiguous), or a size under one byte.
    """
    n = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str):
        m = _SIZE.fullmatch(value)
        if m and m.group(2).lower() in _UNITS:
            n = int(Fraction(m.group(1)) * _UNITS[m.group(2).lower()])
    if n is None:
        extra = " (a float is ambiguous: Keras's max_shard_size counts GB)" \
            if isinstance(value, float) else ""
        raise OptionError(f"{what} {value!r}: not a size{extra}; give bytes (1000000) or a size "
                          "with a unit: 10KB, 500MB, 2GB (powers of 1000) or 512MiB, 2GiB "
                          "(powers of 1024)")
    if n < 1:
        raise OptionError(f"{what} {value!r}: a shard must hold at least one byte; give a "
                          "size such as 500MB")
    return n


class MemoryLimit(int):
    """A memory limit in bytes that remembers the option it was given as, for messages
    (``--max-memory`` on the command line, ``max_memory`` in Python)."""

    option: str

    def __new__(cls, n: int, option: str = "max_memory") -> "MemoryLimit":
        limit = super().__new__(cls, n)
        limit.option = option
        return limit


def parse_memory(value: Any, what: str = "max_memory") -> MemoryLimit | None:
    """A memory limit in bytes, or None for none: an int of bytes, or a size as `parse_size`
    reads it (``"800MB"``, ``"1.5GB"``, ``"2GiB"``); a `MemoryLimit` is returned as it is.

    Raises:
        OptionError: anything else (a float, a size under one byte, no unit it knows).
    """
    if value is None or isinstance(value, MemoryLimit):
        return value
    try:
        return MemoryLimit(parse_size(value, what), what)
    except OptionError:
        raise OptionError(f"{what} {value!r}: not a memory size; give bytes (1500000000) or a "
                          "size with a unit: 800MB, 1.5GB (powers of 1000), 2GiB (powers of "
                          "1024)") from None


def format_size(n: int) -> str:
    """Bytes as a message shows them: ``411.1 MB`` (powers of 1000, as `parse_size` reads
    them; rounded up, so that "at least" holds)."""
    for unit, scale in (("GB", 10 ** 9), ("MB", 10 ** 6), ("KB", 10 ** 3)):
        if n >= scale:
            return f"{math.ceil(n * 10 / scale) / 10:.1f} {unit}"
    return f"{n} bytes"


def tensor_bytes(shape: Iterable[int], dtype: str) -> int:
    """The bytes of one tensor in memory (8 per value for a dtype numpy does not know)."""
    try:
        size = 2 if str(dtype) == "bfloat16" else np.dtype(dtype).itemsize
    except TypeError:
        size = 8
    return math.prod(int(d) for d in shape) * size


def check_memory(needs: Iterable[tuple[str, str, int, str]], limit: int | None) -> None:
    """Refuses work whose largest step needs more memory than `limit` allows, before anything
    is read or written.

    Args:
        needs: for every step of the work: (the file it reads, what holds the memory:
            ``tensor fc1/kernel``, the bytes held at once, how they add up).
        limit: bytes (`parse_memory`; a `MemoryLimit` names its option), or None for none.

    Raises:
        OptionError: the largest need (the first of equal ones), named with its file, its
            size, how it adds up and the limit.
    """
    if limit is None:
        return
    what = getattr(limit, "option", "max_memory")
    worst = max(needs, key=lambda need: need[2], default=None)
    if worst is not None and worst[2] > limit:
        path, name, n, detail = worst
        raise OptionError(f"{path}: {name} needs {format_size(n)} ({n} bytes: {detail}) at "
                          f"once, more than {what} {format_size(limit)} allows; raise {what} "
                          f"to at least {format_size(n)}", path=path)


@dataclasses.dataclass(frozen=True)
class ShardedOutput:
    """What a sharded write produced: the index, its shards in order, the tensor bytes in
    all, and the tensors larger than the limit (each alone in its shard)."""

    index: str
    shards: tuple[str, ...]
    total_size: int
    max_shard_size: int
    oversized: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _pack(sizes: Iterable[tuple[str, int]], limit: int) -> list[list[str]]:
    """Tensors (name, bytes) in order, packed into shards of at most `limit` bytes: a shard is
    closed when the next tensor would take it past the limit; a larger tensor is alone."""
    shards: list[list[str]] = []
    used = limit + 1  # no open shard yet
    for name, size in sizes:
        if used + size > limit or not shards:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def _dump_index(path: str, index: dict, **json_args) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(index, **json_args))


# ------------------------------------------------------------------ writing Keras shards

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


# ------------------------------------------------------------- writing safetensors shards

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
