"""Canonical variables and layers of a Keras 3 weights file (``model.weights.h5`` inside a
`.keras`, and ``.weights.h5``): `keras3_entries` walks ``layers/<class-based name>/vars/<index>``
with the model config (`_Walker`), or, without one, names layers from the ``vars`` groups' own
name attributes."""

from __future__ import annotations

from typing import Mapping

import h5py

from ..entries import LayerInfo, VariableInfo
from ..errors import FormatError
from ..layertypes import VariableSpec, rnn_cell
from .h5files import _children, _is_group, check_dataset, dataset_dtype
from .h5names import (_attribute_class, _by_class_order, _class_from_key, _config_has_weights,
                      _created_order, _name_variables, _named_configs, _natural, _ordered,
                      _vars_name, is_model_config, layer_name, model_layer_configs)

__all__ = ["keras3_entries"]


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
