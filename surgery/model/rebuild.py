"""Rebuilding a model from an edited config, carrying its weights by canonical path.

Structure-changing functions (new heads, merged LoRA, new regularizers, graph edits) never
touch their input: they edit a copy of the config, build a new model from it, and carry every
variable whose path and shape are unchanged bitwise, one tensor at a time (`transplant` with
exact matching).

A subclassed Keras 3 model that serializes (``get_config``/``from_config``: keras-hub task
models and backbones) has no graph to edit, but it can be copied the way Keras saves and
loads it (`serialized_config`, `rebuild_serialized`, `copy_model`): the operations that only
need a clean copy, or a change its own config expresses (a keras-hub task's ``num_classes``),
work on it too.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import EditError, SurgeryError
from ..io.configs import find_layer_config, iter_layer_configs, model_config
from ..io.livemodels import framework_of
from ..text import first_line

__all__ = ["model_config", "iter_layer_configs", "find_layer_config", "rebuild",
           "carry_weights", "keras_module", "is_graph", "serialized_config", "rebuild_serialized",
           "copy_model"]


def keras_module(model: Any):
    """Keras 3 or tf_keras, whichever `model` belongs to."""
    from ..io import tfimport

    return tfimport.tf_keras() if framework_of(model) == "tf_keras" else tfimport.keras()


def rebuild(model: Any, config: dict) -> Any:
    """A new model of `model`'s kind from an edited serialized config (fresh weights)."""
    k = keras_module(model)
    cls = k.Sequential if config["class_name"] == "Sequential" else k.Model
    return _built(model, lambda: cls.from_config(config["config"]), "build the edited model")


def _built(model: Any, build, what: str) -> Any:
    """`build()`, with whatever Keras raises turned into one `EditError` line."""
    try:
        return build()
    except SurgeryError:
        raise
    except Exception as e:
        raise EditError(f"{getattr(model, 'name', 'model')}: Keras could not {what} "
                        f"({type(e).__name__}: {first_line(e)})") from None


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


def is_graph(model: Any) -> bool:
    """True for a Functional or Sequential model (its config lists its layers)."""
    try:
        config = model.get_config()
    except Exception:  # NotImplementedError and whatever a custom get_config raises
        return False
    return isinstance(config, dict) and isinstance(config.get("layers"), list)


def serialized_config(model: Any) -> dict | None:
    """Keras's own serialization of a subclassed Keras 3 model that serializes (what a
    `.keras` file's config.json holds: ``class_name``, ``config``, ``module``,
    ``registered_name``), or None for graphs, tf_keras models and models Keras can't
    serialize."""
    if framework_of(model) == "tf_keras" or is_graph(model):
        return None
    from ..io.tfimport import keras

    try:
        config = keras().saving.serialize_keras_object(model)
    except Exception:  # no get_config: Keras can't save it either
        return None
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        return None
    config.pop("compile_config", None)  # a copy comes out uncompiled, as rebuild gives it
    return config


def rebuild_serialized(model: Any, config: dict) -> Any:
    """A new model from an (edited) `serialized_config`, fresh weights, as Keras loads it.

    A keras-hub task's preprocessor is carried as it is (the same object: it holds no
    weights): its config alone lacks what Keras keeps in the file's assets (a tokenizer's
    vocabulary), so one rebuilt from it could neither run nor be saved."""
    from ..io.tfimport import keras

    new = _built(model, lambda: keras().saving.deserialize_keras_object(config),
                 "rebuild the model from its config")
    if getattr(model, "preprocessor", None) is not None and hasattr(new, "preprocessor"):
        new.preprocessor = model.preprocessor
    return new


def copy_model(model: Any) -> Any:
    """A new model with `model`'s architecture and weights (carried bitwise by path):
    rebuilt from its graph config, or for a subclassed model from its own serialization.

    Raises:
        UnsupportedModelError: a subclassed model that doesn't serialize.
    """
    config = None if is_graph(model) else serialized_config(model)
    new = rebuild(model, model_config(model)) if config is None else \
        rebuild_serialized(model, config)
    carry_weights(model, new)
    return new
