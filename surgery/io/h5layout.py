"""Canonical paths for the variables inside Keras HDF5 files, without TensorFlow.

Two layouts:

- Keras 3 (``model.weights.h5`` inside a `.keras`, and ``.weights.h5``): variables sit at
  ``layers/<class-based name>/vars/<index>``; each ``vars`` group carries the object's real
  name as an attribute, and the config names the variables by class (`layertypes`).
- Keras 2 legacy ``.h5``: ``model_weights/<layer>/<weight name>:0`` with ``layer_names`` and
  ``weight_names`` attributes; weight names carry tf_keras's scope names (``enc/lstm_cell/...``)
  that are translated to canonical paths.

HDF5 files are untrusted. `open_h5` walks every object once before anything else reads the
file (`scan_h5`): external, soft and user-defined links, an object reached by two hard links
(a DAG or a cycle, which would make a tree walk exponential), groups nested deeper than
`MAX_DEPTH`, more than `MAX_OBJECTS` links or attributes, external-storage and virtual
datasets, datasets whose declared size is far beyond what the file stores, and datasets that
are not real numbers (strings, variable-length data, references, records, complex numbers) are
refused with a `FormatError` before any dataset is read.
"""

from __future__ import annotations

import contextlib
import math
import posixpath
import re
from typing import Any, Iterator, Mapping

import h5py
import numpy as np

from ..entries import LayerInfo, VariableInfo
from ..errors import FormatError
from ..layertypes import (REGISTRY, SUBLAYER_ATTRIBUTES, VariableSpec, layer_type, rnn_cell,
                          variable_specs)
from .keras2 import keras3_layer_name, keras3_variable_name

__all__ = [
    "guard", "open_h5", "scan_h5", "VirtualGroup", "check_dataset", "dataset_dtype",
    "read_dataset", "keras3_entries", "legacy_entries", "layer_name", "model_layer_configs",
    "is_model_config", "MAX_DEPTH", "MAX_OBJECTS",
]

MAX_DEPTH = 64  # group nesting; Keras files nest a few levels per nested model
MAX_OBJECTS = 1_000_000  # links plus attributes walked in one file
_MAX_RATIO = 1000
_MODEL_CLASSES = {"Functional", "Sequential", "Model"}
_CELL_NAME = re.compile(r"^(lstm|gru|simple_rnn|conv_lstm\d?d?|rnn|peephole_lstm)?_?cell(_\d+)?$")


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


def layer_name(layer_config: Mapping) -> str:
    """The name of a serialized layer (``{"class_name": ..., "config": {...}}``)."""
    return str(layer_config.get("name") or (layer_config.get("config") or {}).get("name", ""))


def is_model_config(layer_config: Mapping) -> bool:
    cfg = layer_config.get("config")
    return isinstance(cfg, dict) and isinstance(cfg.get("layers"), list) and (
        layer_config.get("class_name") in _MODEL_CLASSES or "layers" in cfg)


def model_layer_configs(model_config: Mapping) -> list[dict]:
    """The serialized layers of a model config, InputLayer excluded, in model order."""
    layers = (model_config.get("config") or {}).get("layers") or []
    return [d for d in layers if isinstance(d, dict) and d.get("class_name") != "InputLayer"]


class _Walker:
    """Collects VariableInfo/LayerInfo while walking a Keras 3 weights file."""

    def __init__(self, where: str):
        self.where = where
        self.variables: list[VariableInfo] = []
        self.layers: list[LayerInfo] = []
        self.named: dict[str, dict] = {}  # layers a subclassed model's config names

    def _vars(self, group: h5py.Group) -> tuple[list[h5py.Dataset], list[h5py.Dataset]]:
        """The numbered variables of a layer (``vars/0``...) and the ones a layer stores under
        a name of its own (``vars/idf_weights`` of a tf-idf StringLookup)."""
        if "vars" not in group:
            return [], []
        items = dict(_children(group["vars"], self.where))
        numbered = sum(1 for key in items if key.isdigit())
        out = []
        for i in range(numbered):
            ds = items.get(str(i))
            if not isinstance(ds, h5py.Dataset):
                raise FormatError(f"{self.where}: {group.name}/vars has no dataset {i}; the "
                                  "weights file is damaged")
            out.append(ds)
        named = [ds for key, ds in sorted(items.items())
                 if not key.isdigit() and isinstance(ds, h5py.Dataset)]
        return out, named

    def _emit(self, group, class_name, config, prefix, owners, trainable, hint="",
              known=True):
        datasets, named = self._vars(group)
        specs = _name_variables(class_name, config if known else None, datasets, hint)
        owner_path, owner_cls = owners[-1] if owners else ("", "")
        pairs = [(spec, ds, bool(trainable and spec.trainable))
                 for spec, ds in zip(specs, datasets)]
        pairs += [(VariableSpec(ds.name.rsplit("/", 1)[-1]), ds, None) for ds in named]
        for spec, ds, flag in pairs:  # a named variable's trainability is not recorded
            check_dataset(ds, self.where)
            self.variables.append(VariableInfo(
                path="/".join(prefix + [spec.name]), shape=tuple(int(d) for d in ds.shape),
                dtype=dataset_dtype(ds, self.where), trainable=flag,
                layer=owner_path, layer_class=owner_cls, owners=tuple(owners), key=ds.name,
                setup=spec.setup))

    def layer(self, group, layer_config, prefix, owners, trainable, depth, hint=""):
        """Walks one layer's group; `layer_config` may be None (unknown sublayer) or carry a
        class without a config (a class read from the group's name)."""
        cls = str(layer_config.get("class_name", "")) if layer_config else ""
        known = bool(layer_config) and isinstance(layer_config.get("config"), dict)
        cfg = (layer_config or {}).get("config") or {}
        trainable = trainable and bool(cfg.get("trainable", True))
        path = "/".join(prefix)
        owners = owners + [(path, cls)]
        self.layers.append(LayerInfo(path, cls or "?", bool(cfg.get("trainable", True)), depth,
                                     cfg if known else None))
        if layer_config is not None and is_model_config(layer_config):
            self.model(group, layer_config, prefix, owners, trainable, depth + 1)
            return
        self._emit(group, cls, cfg, prefix, owners, trainable, hint, known)
        for name, child in _ordered(_children(group, self.where), cls):
            if name == "vars" or not _is_group(child):
                continue
            self._sublayer(name, child, cls, cfg, prefix, owners, trainable, depth)

    def _sublayer(self, attr, group, cls, cfg, prefix, owners, trainable, depth):
        if attr == "cell":  # RNN: the cell adds no name
            inner = cfg.get("cell") if cls == "RNN" else {"class_name": rnn_cell(cls) or cls,
                                                           "config": cfg}
            self._transparent(group, inner, prefix, owners, trainable, "cell")
        elif attr == "layer":  # TimeDistributed and other wrappers add no name
            self._transparent(group, cfg.get("layer"), prefix, owners, trainable)
        elif attr in ("forward_layer", "backward_layer") and cls == "Bidirectional":
            inner = cfg.get("backward_layer") if attr == "backward_layer" else None
            inner = inner or cfg.get("layer")
            direction = "forward" if attr == "forward_layer" else "backward"
            self._transparent(group, inner, prefix + [direction], owners, trainable)
        elif not _is_group(group.get("vars")):  # a list of layers (`layers`, `blocks`...)
            self.container(group, prefix, owners, trainable, depth)
        else:  # a sublayer a custom layer owns: its own name
            name = _vars_name(group) or attr
            self.layer(group, self.named.get(name) or _attribute_class(cls, attr),
                       prefix + [name], owners, trainable, depth + 1, hint=f"{attr} {name}")

    def container(self, group, prefix, owners, trainable, depth):
        """A list of layers held by a subclassed layer or model: Keras names each group by
        the layer's class in snake case (``dense``, ``dense_1``); the list adds no name."""
        for key, child in _created_order(list(_children(group, self.where))):
            if not _is_group(child):
                continue
            if not _is_group(child.get("vars")):
                self.container(child, prefix, owners, trainable, depth)
                continue
            name = _vars_name(child) or key
            layer_config = self.named.get(name) or _class_from_key(key)
            if layer_config and layer_config.get("class_name") == "InputLayer":
                continue
            self.layer(child, layer_config, prefix + [name], owners, trainable, depth + 1,
                       hint=f"{key} {name}")

    def untyped(self, root, config, trainable):
        """Walks a model the config doesn't describe as a graph (a subclassed model, such as
        a keras-hub backbone or task, or a bare weights file): every layer is named by its
        group's ``name`` attribute, exactly as the live model names it."""
        self.named = _named_configs(config) if config else {}
        for attr, child in sorted(_children(root, self.where), key=lambda kv: _natural(kv[0])):
            if attr in ("vars", "optimizer") or not _is_group(child):
                continue  # the model's own (empty) group and the optimizer's state
            if not _is_group(child.get("vars")):
                self.container(child, [], [], trainable, -1)
            else:
                name = _vars_name(child) or attr
                self.layer(child, self.named.get(name), [name], [], trainable, 0,
                           hint=f"{attr} {name}")

    def _transparent(self, group, inner, prefix, owners, trainable, hint=""):
        inner = inner if isinstance(inner, dict) else None
        cls = str(inner.get("class_name", "")) if inner else ""
        cfg = (inner or {}).get("config") or {}
        trainable = trainable and bool(cfg.get("trainable", True))
        self._emit(group, cls, cfg, prefix, owners, trainable, hint)
        for name, child in _ordered(_children(group, self.where)):
            if name != "vars" and _is_group(child):
                self._sublayer(name, child, cls, cfg, prefix, owners, trainable, len(prefix))

    def model(self, group, model_config, prefix, owners, trainable, depth):
        container = group.get("layers")
        by_name: dict[str, h5py.Group] = {}
        if _is_group(container):
            for _, child in _children(container, self.where):
                if _is_group(child):
                    by_name.setdefault(_vars_name(child), child)
            if set(by_name) <= {""}:  # tf_keras (and early Keras 3) name no vars group
                by_name = _by_class_order(container, model_layer_configs(model_config))
        for layer_config in model_layer_configs(model_config):
            name = layer_name(layer_config)
            child = by_name.get(name)
            if child is None:
                if _config_has_weights(layer_config):
                    raise FormatError(f"{self.where}: no weights stored for layer {name!r} of "
                                      "the architecture; the weights belong to another model")
                continue
            self.layer(child, layer_config, prefix + [name], owners, trainable, depth)


def snake_case(class_name: str) -> str:
    """The group name Keras (3 and tf_keras) gives a layer of this class in a `.keras` file."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", re.sub(r"\W+", "", class_name))
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _by_class_order(container: h5py.Group, layer_configs: list) -> dict[str, h5py.Group]:
    """Layer name -> group for files whose groups carry no layer name: Keras names a model's
    layers, in order, by their class in snake case, repeats numbered (``conv2d``,
    ``conv2d_1``, ...)."""
    used: dict[str, int] = {}
    out: dict[str, h5py.Group] = {}
    for layer_config in layer_configs:
        base = snake_case(str(layer_config.get("class_name", "")))
        key = base if base not in used else f"{base}_{used[base] + 1}"
        used[base] = used.get(base, -1) + 1
        child = container.get(key)
        if _is_group(child):
            out[layer_name(layer_config)] = child
    return out


_FIRST = {"cell": 0, "layer": 1, "forward_layer": 2, "backward_layer": 3}



def _ordered(children, cls: str = "") -> list:
    """Wrapper parts first (forward before backward), then a known class's attribute
    sublayers in its live order (`SUBLAYER_ATTRIBUTES`), then the others by name (Keras's save
    order)."""
    known = [attr for attr, _ in SUBLAYER_ATTRIBUTES.get(cls, ())]
    return sorted(children, key=lambda item: (
        _FIRST.get(item[0], 9), known.index(item[0]) if item[0] in known else len(known),
        item[0]))


def _attribute_class(cls: str, attr: str) -> dict | None:
    """``{"class_name": ...}`` of the sublayer a known class holds as `attr`, else None."""
    found = dict(SUBLAYER_ATTRIBUTES.get(cls, ())).get(attr)
    return {"class_name": found} if found else None


def _created(group: Any) -> tuple[int, int]:
    """When a saved layer's group was written, as far as the file shows it: the file (a
    shard of a sharded set: HDF5 numbers files as they are opened, in the index's order) and
    the highest object address among the group, its ``vars`` group and their datasets (HDF5
    appends new objects, though a small header may fill a hole an earlier one left)."""
    real = group.attrs.groups[0] if isinstance(group, VirtualGroup) else group  # first shard
    info = h5py.h5o.get_info(real.id)
    found = [int(info.addr)]
    v = real.get("vars")
    if isinstance(v, h5py.Group):
        found += [int(h5py.h5o.get_info(o.id).addr) for o in
                  [v] + [v[k] for k in v if isinstance(v[k], h5py.Dataset)]]
    return int(info.fileno), max(found)


def _created_order(items: list) -> list:
    """The saved layers of a list (`(key, group)` pairs) in the order Keras wrote them, the
    list's order (a Functional model's layers, topological; a keras-hub backbone's): by
    `_created`, with each class's numbered keys (``dense``, ``dense_1``...) kept in number
    order, which is certain."""
    items = sorted(items, key=lambda kv: _natural(kv[0]))
    if not all(isinstance(child, h5py.Group) or (isinstance(child, VirtualGroup) and
                                                 child.attrs.groups) for _, child in items):
        return items
    by_time = sorted(items, key=lambda kv: _created(kv[1]))
    queues: dict[str, list] = {}
    for item in items:  # number order within each class
        queues.setdefault(_natural(item[0])[0], []).append(item)
    return [queues[_natural(key)[0]].pop(0) for key, _ in by_time]


def _vars_name(group: h5py.Group) -> str:
    v = group.get("vars")
    name = v.attrs.get("name", "") if _is_group(v) else ""
    return name.decode() if isinstance(name, bytes) else str(name)


def _config_has_weights(layer_config: Mapping) -> bool:
    return layer_config.get("class_name") not in (
        "InputLayer", "Flatten", "Dropout", "Activation", "ReLU", "Reshape", "Add", "Concatenate",
        "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
        "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
        "GlobalMaxPooling2D", "Multiply", "Subtract", "Average", "Maximum", "Minimum",
        "Rescaling", "Permute", "RepeatVector", "Softmax", "Identity")


def _guess_specs(datasets: list, hint: str = "") -> list[VariableSpec]:
    """Names for a layer whose class the file doesn't record (an attribute sublayer of a
    custom layer): one tensor of rank >= 2 is a kernel (an embedding table where the layer's
    attribute or name says ``embedding``); two where the second's shape ends the first's are
    kernel and bias; in a layer whose attribute or name says ``norm``, two (four) vectors of
    one shape are gamma and beta (and the moving statistics); anything else is named by
    position (``var0``...)."""
    shapes = [tuple(ds.shape) for ds in datasets]
    hint = hint.lower()
    if hint == "cell" and len(shapes) in (2, 3):  # a recurrent cell of unknown class
        return [VariableSpec("kernel", setup="kernel"),
                VariableSpec("recurrent_kernel", setup="recurrent"),
                VariableSpec("bias", setup="bias")][:len(shapes)]
    if len(shapes) == 1 and len(shapes[0]) >= 2:
        if "embedding" in hint and len(shapes[0]) == 2:
            return [VariableSpec("embeddings", setup="embeddings")]
        return [VariableSpec("kernel", setup="kernel")]
    if len(shapes) == 2 and len(shapes[0]) >= 2 and 1 <= len(shapes[1]) < len(shapes[0]) and \
            shapes[0][-len(shapes[1]):] == shapes[1]:
        return [VariableSpec("kernel", setup="kernel"), VariableSpec("bias", setup="bias")]
    if "norm" in hint and len(shapes) in (2, 4) and len(set(shapes)) == 1 and \
            len(shapes[0]) == 1:
        names = ["gamma", "beta", "moving_mean", "moving_variance"][:len(shapes)]
        return [VariableSpec(n, n in ("gamma", "beta"), n) for n in names]
    return [VariableSpec(f"var{i}") for i in range(len(datasets))]


def _name_variables(class_name: str, config: Mapping | None, datasets: list,
                    hint: str) -> list[VariableSpec]:
    """The variables of one saved layer: by its class's registry entry (with its config when
    the file has one; without, the one combination of the entry's optional variables that
    fits the count), else `_guess_specs`."""
    count = len(datasets)
    known = layer_type(class_name) if class_name else None
    if known is not None:
        if config is not None:
            return variable_specs(class_name, config, count)
        options = {tuple(known.specs({})): None}  # the defaults first, then any subset
        for mask in range(1 << len(known.variables)):
            picked = tuple(spec for i, (spec, _) in enumerate(known.variables) if mask >> i & 1)
            options.setdefault(picked, None)
        fits = [list(specs) for specs in options if len(specs) == count]
        if fits and (len(fits) == 1 or fits[0] == known.specs({})):
            return fits[0]
    return _guess_specs(datasets, hint)


def _natural(key: str) -> tuple:
    """Sort key putting ``dense_2`` before ``dense_10``, as Keras numbered them."""
    base, _, number = key.rpartition("_")
    return (base, int(number)) if number.isdigit() and base else (key, -1)


def _class_from_key(key: str) -> dict | None:
    """``{"class_name": ...}`` of a layer whose group Keras named after its class
    (``batch_normalization_3``, ``transformer_encoder_1``), when the registry or
    `SUBLAYER_ATTRIBUTES` knows that class; None otherwise."""
    base = re.sub(r"_\d+$", "", key)
    for name in (*REGISTRY, *SUBLAYER_ATTRIBUTES):
        if snake_case(name) in (key, base):
            return {"class_name": name}
    return None


def _named_configs(config: Mapping) -> dict[str, dict]:
    """Every serialized layer a subclassed model's config holds (a keras-hub task's
    backbone), by name: their class, trainable flag and config are known."""
    out: dict[str, dict] = {}
    stack: list[Any] = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            cfg = item.get("config")
            if isinstance(cfg, dict) and isinstance(cfg.get("name"), str) and \
                    isinstance(item.get("class_name"), str) and "trainable" in cfg:
                out.setdefault(cfg["name"], item)
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (dict, list)))
    return out


def keras3_entries(h5: h5py.File, config: Mapping | None, where: str
                   ) -> tuple[list[VariableInfo], list[LayerInfo]]:
    """Canonical variables and layers of a Keras 3 weights file.

    Args:
        h5: the open ``model.weights.h5`` / ``.weights.h5``.
        config: the model config (``config.json``), or None to name layers from the file's own
            ``vars`` name attributes and variables by position (``var0``...).
        where: the file to name in errors.
    """
    walker = _Walker(where)
    trainable = bool(((config or {}).get("config") or {}).get("trainable", True))
    if config is not None and is_model_config(config):
        walker.model(h5, config, [], [], trainable, 0)
    elif config is None and "layers" not in h5 and not any(
            _is_group(h5.get(k)) for k in h5 if k not in ("vars", "optimizer")):
        raise FormatError(f"{where}: no 'layers' group, so not a Keras 3 weights file")
    else:  # a subclassed model (keras-hub), or a bare weights file: the file names the layers
        walker.untyped(h5, config, trainable)
    return walker.variables, walker.layers


# ---------------------------------------------------------------- Keras 2 legacy .h5


def _attr_strings(obj, key) -> list[str]:
    values = obj.attrs.get(key)
    if values is None:
        return []
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.atleast_1d(values)]


def _inner_paths(model_config: Mapping, prefix: str = "") -> dict[str, tuple[str, dict]]:
    """Maps every inner layer name of a nested model to its path inside it and its config."""
    out: dict[str, tuple[str, dict]] = {}
    for lc in model_layer_configs(model_config):
        name = layer_name(lc)
        path = f"{prefix}{keras3_layer_name(name)}"
        out[name] = (path, lc)
        if is_model_config(lc):
            out.update(_inner_paths(lc, path + "/"))
    return out


def _translate(parts: list[str], layer_config: Mapping) -> list[str]:
    """tf_keras weight-name parts below a layer -> canonical parts."""
    cls = layer_config.get("class_name", "")
    cfg = layer_config.get("config") or {}
    if cls == "Bidirectional" and parts:
        head = parts[0]
        direction = "forward" if head.startswith("forward") else \
            "backward" if head.startswith("backward") else None
        if direction:
            inner = cfg.get("backward_layer") if direction == "backward" else None
            return [direction] + _translate(parts[1:], inner or cfg.get("layer") or {})
    if (rnn_cell(cls) or cls == "RNN") and len(parts) > 1 and _CELL_NAME.match(parts[0]):
        return parts[1:]
    if cls == "TimeDistributed" and len(parts) > 1:
        return _translate(parts[1:], cfg.get("layer") or {})
    return parts


def legacy_entries(h5: h5py.File, where: str) -> tuple[list[VariableInfo], list[LayerInfo],
                                                       dict | None]:
    """Canonical variables and layers of a Keras 2 ``.h5`` (full model or `save_weights`)."""
    root = h5["model_weights"] if "model_weights" in h5 else h5
    if "layer_names" not in root.attrs:
        raise FormatError(f"{where}: HDF5 file without Keras layer_names, so not a Keras 2 "
                          "model or weights file")
    config = None
    raw = h5.attrs.get("model_config")
    if raw is not None:
        from .archive import parse_json
        config = parse_json(raw if isinstance(raw, (bytes, str)) else bytes(raw),
                            f"{where}: model_config")
    top = {layer_name(lc): lc for lc in (config.get("config") or {}).get("layers") or []
           if isinstance(lc, dict)} if isinstance(config, dict) else {}
    variables: list[VariableInfo] = []
    layers: list[LayerInfo] = []
    for name in _attr_strings(root, "layer_names"):
        if name not in root:
            raise FormatError(f"{where}: layer {name!r} is listed but has no weights group; "
                              "the file is damaged")
        group = root[name]
        lc = top.get(name, {})
        if lc.get("class_name") == "InputLayer":
            continue
        cfg = lc.get("config") or {}
        trainable_layer = bool(cfg.get("trainable", True))
        canonical = keras3_layer_name(name)  # Keras 3 names conv1/conv conv1_conv
        layers.append(LayerInfo(canonical, lc.get("class_name", "?"), trainable_layer, 0,
                                cfg or None))
        inner = _inner_paths(lc) if is_model_config(lc) else {}
        for path, info in inner.items():
            layers.append(LayerInfo(f"{canonical}/{info[0]}", info[1].get("class_name", "?"),
                                    bool((info[1].get("config") or {}).get("trainable", True)),
                                    info[0].count("/") + 1, info[1].get("config")))
        for weight_name in _attr_strings(group, "weight_names"):
            if weight_name not in group:
                raise FormatError(f"{where}: weight {weight_name!r} of layer {name!r} is listed "
                                  "but missing; the file is damaged")
            ds = group[weight_name]
            plain = re.sub(r":\d+$", "", weight_name)
            if "/" in name and plain.startswith(name + "/"):  # conv1/conv/kernel:0
                plain = plain[len(name) + 1:]
                parts = [name] + plain.split("/")
            else:
                parts = plain.split("/")
            owner_lc, owner_prefix = lc, [canonical]
            if inner and parts[0] in inner:
                owner_path, owner_lc = inner[parts[0]]
                owner_prefix = [canonical] + owner_path.split("/")
                parts = parts[1:]
            elif parts and parts[0] == name:
                parts = parts[1:]
            owner_cls = owner_lc.get("class_name", "")
            parts = _translate(parts, owner_lc) if parts else [weight_name]
            parts[-1] = keras3_variable_name(owner_cls, parts[-1])
            path = "/".join(owner_prefix + parts)
            spec_trainable = parts[-1] not in ("moving_mean", "moving_variance", "count",
                                               "mean", "variance")
            check_dataset(ds, where)
            variables.append(VariableInfo(
                path=path, shape=tuple(int(d) for d in ds.shape), dtype=dataset_dtype(ds, where),
                trainable=trainable_layer and spec_trainable, layer="/".join(owner_prefix),
                layer_class=owner_cls, owners=((name, lc.get("class_name", "")),),
                key=ds.name, setup=None))
    return variables, layers, config
