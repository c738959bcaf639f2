"""Canonical variables and layers of a Keras 2 legacy ``.h5`` (full model or `save_weights`):
``model_weights/<layer>/<weight name>:0`` listed by the ``layer_names`` and ``weight_names``
attributes; tf_keras's scope names (``enc/lstm_cell/...``) are translated to canonical paths."""

from __future__ import annotations

import re
from typing import Mapping

import h5py
import numpy as np

from ..entries import LayerInfo, VariableInfo
from ..errors import FormatError
from ..layertypes import rnn_cell
from .h5files import check_dataset, dataset_dtype
from .h5names import is_model_config, layer_name, model_layer_configs
from .keras2 import keras3_layer_name, keras3_variable_name

__all__ = ["legacy_entries"]

_CELL_NAME = re.compile(r"^(lstm|gru|simple_rnn|conv_lstm\d?d?|rnn|peephole_lstm)?_?cell(_\d+)?$")


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
