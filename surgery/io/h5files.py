"""Opening untrusted Keras HDF5 files (see `h5layout`'s docstring): `open_h5` opens read-only
and `scan_h5` walks every object once, refusing links, shared objects, deep nesting, more than
`MAX_OBJECTS` links and attributes, and datasets no Keras file holds (`check_dataset`), before
anything is read; `guard` turns what h5py raises on damage into one `FormatError` line;
`read_dataset` reads one checked dataset. `VirtualGroup` presents sharded weights as one tree."""

from __future__ import annotations

import contextlib
import math
import posixpath
from typing import Any, Iterator

import h5py
import numpy as np

from ..errors import FormatError

__all__ = ["guard", "open_h5", "scan_h5", "VirtualGroup", "check_dataset", "dataset_dtype",
           "read_dataset", "MAX_DEPTH", "MAX_OBJECTS"]

MAX_DEPTH = 64  # group nesting; Keras files nest a few levels per nested model
MAX_OBJECTS = 1_000_000  # links plus attributes walked in one file
_MAX_RATIO = 1000


class VirtualGroup:
    """A group assembled from several HDF5 files (sharded Keras weights): enough of h5py's
    Group interface for the walkers here. Its leaves are real h5py groups and datasets."""

    def __init__(self, name: str = "/"):
        self.name = name
        self.attrs = _MergedAttrs()
        self._children: dict[str, Any] = {}

    def __contains__(self, key: str) -> bool:
        try:
            self[key]
            return True
        except KeyError:
            return False

    def __iter__(self):  # sorted by name, as h5py lists a group: the unsharded file's order
        return iter(sorted(self._children))

    def get(self, key: str, default=None, getlink: bool = False):
        if getlink:
            return h5py.HardLink() if key in self._children else default
        return self._children.get(key, default)

    def __getitem__(self, key: str):
        node: Any = self
        for part in [p for p in key.split("/") if p]:
            if isinstance(node, VirtualGroup):
                if part not in node._children:
                    raise KeyError(key)
                node = node._children[part]
            else:
                node = node[part]
        return node

    def merge(self, group: h5py.Group, where: str) -> None:
        """Mounts every object of the real `group` (a shard's root) into this tree; groups
        present in several shards are merged, their first attributes kept."""
        self.attrs.groups.append(group)
        for name, child in _children(group, where):
            if isinstance(child, h5py.Group):
                node = self._children.get(name)
                if not isinstance(node, VirtualGroup):
                    node = self._children[name] = VirtualGroup(child.name)
                node.merge(child, where)
            else:
                self._children[name] = child

    def close(self) -> None:
        """Nothing to close: the shard files are closed by their owner."""


class _MergedAttrs:
    """The attributes of a group merged from several shards, read on demand (first shard
    that has the key wins), so that merging reads no attribute."""

    def __init__(self):
        self.groups: list = []

    def get(self, key: str, default=None):
        for group in self.groups:
            if key in group.attrs:
                return group.attrs[key]
        return default

    def __contains__(self, key: str) -> bool:
        return any(key in group.attrs for group in self.groups)

    def __getitem__(self, key: str):
        for group in self.groups:
            if key in group.attrs:
                return group.attrs[key]
        raise KeyError(key)


def _is_group(obj: Any) -> bool:
    return isinstance(obj, (h5py.Group, VirtualGroup))


_DAMAGE = (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError,
           UnicodeDecodeError, OverflowError)


@contextlib.contextmanager
def guard(where: str) -> Iterator[None]:
    """Turns what h5py raises on a damaged file into one `FormatError` line."""
    try:
        yield
    except FormatError:
        raise
    except _DAMAGE as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise FormatError(f"{where}: damaged HDF5 weights ({type(e).__name__}: {msg}); "
                          "re-save the model or use an intact copy") from None


def open_h5(source: Any, where: str) -> h5py.File:
    """Opens an HDF5 file (path or binary file object) read-only and checks every object in
    it (`scan_h5`); errors become FormatError and leave nothing open."""
    try:
        h5 = h5py.File(source, "r")
    except (OSError, ValueError) as e:
        raise FormatError(f"{where}: not a readable HDF5 file ({e}); "
                          "check the path, or re-save the weights") from None
    try:
        with guard(where):
            scan_h5(h5, where)
    except BaseException:
        h5.close()
        raise
    return h5


def _address(obj: Any) -> tuple[int, int]:
    info = h5py.h5o.get_info(obj.id)
    return int(info.fileno), int(info.addr)


def _check_attrs(obj: Any, path: str, where: str, budget: list[int]) -> None:
    """Counts attributes against the budget and refuses variable-length attributes that hold
    many values (each can point at one big heap object: reading them would multiply it)."""
    for key in obj.attrs:
        budget[0] -= 1
        if budget[0] < 0:
            _too_many(where)
        aid = obj.attrs.get_id(key)
        shape = aid.shape or ()
        if aid.dtype.hasobject and math.prod(shape) > 1 and key not in _NAME_LISTS:
            raise FormatError(f"{where}: attribute {key!r} of {path} holds {math.prod(shape)} "
                              "variable-length values; Keras writes one, refusing a crafted "
                              "file")


_NAME_LISTS = ("layer_names", "weight_names")  # tf_keras writes these as lists of strings


def _too_many(where: str) -> None:
    raise FormatError(f"{where}: more than {MAX_OBJECTS} HDF5 links and attributes; refusing a "
                      "file built to exhaust the reader")


def scan_h5(h5: h5py.File, where: str) -> None:
    """Visits every object of an open HDF5 file once, without recursion, and refuses what no
    Keras file holds (see the module docstring).

    Raises:
        FormatError: the first hostile or damaged object, named by its path.
    """
    seen = {_address(h5): "/"}
    budget = [MAX_OBJECTS]
    _check_attrs(h5, "/", where, budget)
    stack: list[tuple[h5py.Group, int]] = [(h5, 0)]
    while stack:
        group, depth = stack.pop()
        base = group.name or "/"
        for name in group:
            budget[0] -= 1
            if budget[0] < 0:
                _too_many(where)
            path = posixpath.join(base, name)
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise FormatError(f"{where}: {path} is an external link to {link.filename!r}; "
                                  "refusing a weights file that reads other files")
            if isinstance(link, h5py.SoftLink):
                raise FormatError(f"{where}: {path} is a soft link; Keras never writes them, "
                                  "refusing a crafted weights file")
            if not isinstance(link, h5py.HardLink):
                raise FormatError(f"{where}: {path} is a user-defined link; refusing a crafted "
                                  "weights file")
            obj = group[name]
            address = _address(obj)
            if address in seen:
                raise FormatError(f"{where}: {path} is a second hard link to {seen[address]}; "
                                  "Keras never links one object twice, refusing a crafted "
                                  "weights file")
            seen[address] = path
            _check_attrs(obj, path, where, budget)
            if isinstance(obj, h5py.Group):
                if depth + 1 > MAX_DEPTH:
                    raise FormatError(f"{where}: {path} is nested more than {MAX_DEPTH} groups "
                                      "deep; refusing a crafted weights file")
                stack.append((obj, depth + 1))
            elif isinstance(obj, h5py.Dataset):
                check_dataset(obj, where)


def _children(group: h5py.Group, where: str) -> Iterator[tuple[str, Any]]:
    for name in group:
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise FormatError(f"{where}: {group.name}/{name} is an external link to "
                              f"{link.filename!r}; refusing a weights file that reads other files")
        if isinstance(link, h5py.SoftLink):
            raise FormatError(f"{where}: {group.name}/{name} is a soft link; Keras never writes "
                              "them, refusing a crafted weights file")
        yield name, group[name]


def dataset_dtype(ds: h5py.Dataset, where: str) -> str:
    """The numpy dtype name of a weight dataset (``bfloat16`` for Keras's tagged opaque
    bfloat16); refuses complex numbers and anything that is not a real number."""
    dt = ds.dtype
    if dt.kind in "fiub" and dt.fields is None and not dt.hasobject:
        return str(dt)
    if dt.kind == "V" and dt.itemsize == 2 and dt.fields is None and \
            ds.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
        return "bfloat16"
    if dt.kind == "c":
        raise FormatError(f"{where}: {ds.name} holds complex numbers ({dt}); surgery copies "
                          "real-valued weights only and would lose the imaginary part; store "
                          "the real and imaginary parts as two float tensors")
    what = "variable-length or string data" if dt.hasobject or dt.kind in "OSU" else \
        "records or opaque bytes" if dt.kind == "V" else f"dtype {dt}"
    raise FormatError(f"{where}: {ds.name} holds {what}, not numbers; refusing it as a weight")


def check_dataset(ds: h5py.Dataset, where: str) -> None:
    """Refuses virtual, external-storage, non-numeric and size-bomb datasets."""
    if ds.is_virtual:
        raise FormatError(f"{where}: {ds.name} is a virtual dataset (it maps other files); "
                          "refusing it")
    if ds.external:
        raise FormatError(f"{where}: {ds.name} stores its data in external files "
                          f"({ds.external[0][0]!r}); refusing it")
    dataset_dtype(ds, where)
    if ds.shape is None:
        raise FormatError(f"{where}: {ds.name} has no dataspace (an empty HDF5 dataset); "
                          "refusing it as a weight")
    declared = math.prod(int(d) for d in ds.shape) * ds.dtype.itemsize
    stored = ds.id.get_storage_size()
    limit = stored if ds.chunks is None or not ds.compression else stored * _MAX_RATIO
    if declared > limit + 4096:
        raise FormatError(f"{where}: {ds.name} declares shape {tuple(ds.shape)} ({declared} "
                          f"bytes) but the file stores {stored}; refusing it before allocation")


def read_dataset(ds: h5py.Dataset, where: str) -> np.ndarray:
    """Reads one dataset into a new array after `check_dataset`."""
    with guard(where):
        check_dataset(ds, where)
        array = np.asarray(ds[()])  # h5py returns a new array: no second copy
        if dataset_dtype(ds, where) == "bfloat16":
            import ml_dtypes  # installed with TensorFlow; numpy alone has no bfloat16

            array = array.view(ml_dtypes.bfloat16)
        return array
