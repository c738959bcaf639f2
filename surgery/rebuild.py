"""Rebuilding a model from an edited config, carrying its weights by canonical path.

Structure-changing functions (new heads, merged LoRA, new regularizers, graph edits) never
touch their input: they edit a copy of the config, build a new model from it, and carry every
variable whose path and shape are unchanged bitwise, one tensor at a time (`transplant` with
exact matching).
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Sequence

from .errors import SelectorError, SurgeryError
from .h5layout import is_model_config, layer_name
from .livemodels import framework_of
from .selection import closest_paths

__all__ = ["model_config", "iter_layer_configs", "find_layer_config", "rebuild",
           "carry_weights", "keras_module"]


def keras_module(model: Any):
    """Keras 3 or tf_keras, whichever `model` belongs to."""
    from . import tfimport

    return tfimport.tf_keras() if framework_of(model) == "tf_keras" else tfimport.keras()


def model_config(model: Any) -> dict:
    """A deep copy of the model's serialized config (``{"class_name", "config"}``).

    Raises:
        SurgeryError: a subclassed model (no graph to edit).
    """
    name = getattr(model, "name", "model")
    message = (f"{name}: a subclassed model has no graph to edit; this needs a Functional or "
               "Sequential model")
    try:
        config = model.get_config()
    except NotImplementedError:
        raise SurgeryError(message) from None
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise SurgeryError(message)
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


def rebuild(model: Any, config: dict) -> Any:
    """A new model of `model`'s kind from an edited serialized config (fresh weights)."""
    k = keras_module(model)
    cls = k.Sequential if config["class_name"] == "Sequential" else k.Model
    try:
        return cls.from_config(config["config"])
    except SurgeryError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SurgeryError(f"{getattr(model, 'name', 'model')}: Keras could not build the "
                           f"edited model ({type(e).__name__}: {msg})") from None


def carry_weights(source: Any, target: Any, *, skip: Sequence[str] = ()) -> Any:
    """Copies every variable of `source` into `target` whose path and shape match exactly;
    `skip` lists layer paths to leave as the target initialized them. Returns the report."""
    from .modelio import _ORIGINS, source_path
    from .transplanting import transplant

    rules = {"match": "exact", "skip": list(skip)}
    report = transplant(source, target, rules)
    origin = source_path(source)
    if origin is not None:  # the new model descends from that file: never write over it
        _ORIGINS[target] = origin
    return report
