"""How the layers and variables of a Keras weights file are named and found: the serialized
layers of a model config (`layer_name`, `is_model_config`, `model_layer_configs`), the group
names Keras derives from a class (`snake_case`), the order groups were saved in, and the
variable names of one saved layer from the `layertypes` registry (or guessed from shapes)."""

from __future__ import annotations

import re
from typing import Any, Mapping

import h5py

from ..layertypes import REGISTRY, SUBLAYER_ATTRIBUTES, VariableSpec, layer_type, variable_specs
from .h5files import VirtualGroup, _is_group

__all__ = ["layer_name", "is_model_config", "model_layer_configs", "snake_case"]

_MODEL_CLASSES = {"Functional", "Sequential", "Model"}


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
