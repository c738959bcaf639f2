"""Model configs as data: a live model's serialized config, and the layers in it by canonical
path (nested models too). Pure Python: no Keras import."""

from __future__ import annotations

import copy
from typing import Any, Iterator

from ..errors import SelectorError, UnsupportedModelError
from ..selection import closest_paths
from .h5layout import is_model_config, layer_name

__all__ = ["model_config", "iter_layer_configs", "find_layer_config"]


def model_config(model: Any) -> dict:
    """A deep copy of the model's serialized config (``{"class_name", "config"}``).

    Raises:
        UnsupportedModelError: a subclassed model (no graph to edit).
    """
    name = getattr(model, "name", "model")
    message = (f"{name}: a subclassed model has no graph to edit; this needs a Functional or "
               "Sequential model")
    try:
        config = model.get_config()
    except NotImplementedError:
        raise UnsupportedModelError(message) from None
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise UnsupportedModelError(message)
    kind = "Sequential" if type(model).__name__ == "Sequential" else "Functional"
    return {"class_name": kind, "config": copy.deepcopy(config)}


def iter_layer_configs(model_cfg: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """(canonical path, serialized layer) for every layer of a model config, nested too."""
    for lc in (model_cfg.get("config") or {}).get("layers") or []:
        if not isinstance(lc, dict) or lc.get("class_name") == "InputLayer":
            continue
        path = f"{prefix}{layer_name(lc)}"
        yield path, lc
        if is_model_config(lc):
            yield from iter_layer_configs(lc, path + "/")


def find_layer_config(model_cfg: dict, path: str) -> dict:
    """The serialized layer at canonical `path`; unknown paths list the closest."""
    layers = dict(iter_layer_configs(model_cfg))
    if path not in layers:
        raise SelectorError(f"no layer {path!r} in the model; closest: "
                            f"{', '.join(closest_paths(path, layers, 5))}")
    return layers[path]
