"""Rebuilding a model from an edited config, carrying its weights by canonical path.

Structure-changing functions (new heads, merged LoRA, new regularizers, graph edits) never
touch their input: they edit a copy of the config, build a new model from it, and carry every
variable whose path and shape are unchanged bitwise, one tensor at a time (`transplant` with
exact matching).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import EditError, SurgeryError
from ..io.configs import find_layer_config, iter_layer_configs, model_config
from ..io.livemodels import framework_of

__all__ = ["model_config", "iter_layer_configs", "find_layer_config", "rebuild",
           "carry_weights", "keras_module"]


def keras_module(model: Any):
    """Keras 3 or tf_keras, whichever `model` belongs to."""
    from ..io import tfimport

    return tfimport.tf_keras() if framework_of(model) == "tf_keras" else tfimport.keras()


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
        raise EditError(f"{getattr(model, 'name', 'model')}: Keras could not build the "
                        f"edited model ({type(e).__name__}: {msg})") from None


def carry_weights(source: Any, target: Any, *, skip: Sequence[str] = ()) -> Any:
    """Copies every variable of `source` into `target` whose path and shape match exactly;
    `skip` lists layer paths to leave as the target initialized them. Returns the report."""
    from .saving import _ORIGINS, source_path
    from ..transfer.transplant import transplant

    rules = {"match": "exact", "skip": list(skip)}
    report = transplant(source, target, rules)
    origin = source_path(source)
    if origin is not None:  # the new model descends from that file: never write over it
        _ORIGINS[target] = origin
    return report
