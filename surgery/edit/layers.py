"""Layer edits: delete, insert, replace a layer; change the input shape."""

from __future__ import annotations

from typing import Any

from ..errors import OptionError, ShapeError
from ..model.rebuild import keras_module
from .core import EditResult, apply_edits, find_layer

__all__ = ["delete_layer", "insert_layer", "replace_layer", "change_input", "as_layer"]


def as_layer(model: Any, layer: Any) -> Any:
    """A Keras layer from a layer object or a ``{"class_name", "config"}`` dict (Keras's own
    layers only: a config naming a module outside Keras is refused)."""
    if hasattr(layer, "get_config") and hasattr(layer, "__call__"):
        return layer
    if not isinstance(layer, dict) or "class_name" not in layer:
        raise OptionError("a layer must be a Keras layer or {\"class_name\": ..., \"config\": "
                          f"{{...}}}}, got {type(layer).__name__}")
    from ..io.safety import check_config

    check_config({"config": {"layers": [layer]}}, "the layer config")
    k = keras_module(model)
    try:
        return k.layers.deserialize({"module": "keras.layers", "config": {}, **layer})
    except Exception as e:
        raise OptionError(f"can't build layer {layer.get('class_name')!r} from its config "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                          ) from None


def delete_layer(model: Any, layer: str) -> EditResult:
    """A new model without `layer` (single input); its consumers take its input.

    Downstream layers whose input shape changes start fresh (reported).

    Example:
    ```python
    new, report = surgery.edit.delete_layer(model, "dropout")
    ```
    """
    find_layer(model, layer)
    return apply_edits(model, operation=f"delete layer {layer}", delete={layer},
                       changes=(f"deleted {layer}",))


def insert_layer(model: Any, after: str | None = None, layer: Any = None, *,
                 before: str | None = None) -> EditResult:
    """A new model with `layer` inserted after (or before) an existing layer.

    Args:
        after / before: the existing layer's name (exactly one of them).
        layer: a Keras layer, or a ``{"class_name", "config"}`` dict.

    Example:
    ```python
    new, report = surgery.edit.insert_layer(model, "fc", keras.layers.Dropout(0.2))
    ```
    """
    if (after is None) == (before is None):
        raise OptionError("insert_layer needs exactly one of after= or before=")
    new_layer = as_layer(model, layer)
    where = after or before
    find_layer(model, where)
    kwargs = {"insert_after": {after: new_layer}} if after else \
        {"insert_before": {before: new_layer}}
    return apply_edits(model, operation=f"insert {new_layer.name} "
                       f"{'after' if after else 'before'} {where}",
                       changes=(f"inserted {type(new_layer).__name__} {new_layer.name!r}",),
                       **kwargs)


def replace_layer(model: Any, layer: str, new_layer: Any) -> EditResult:
    """A new model with `layer` replaced; the new layer's weights are carried from the old one
    where names and shapes fit (reported where not).

    Example:
    ```python
    new, report = surgery.edit.replace_layer(model, "fc", keras.layers.Dense(64, name="fc"))
    ```
    """
    old = find_layer(model, layer)
    new_layer = as_layer(model, new_layer)
    result = apply_edits(model, operation=f"replace {layer}",
                         replace={layer: new_layer},
                         changes=(f"{type(old).__name__} {layer!r} -> "
                                  f"{type(new_layer).__name__} {new_layer.name!r}",))
    # carry what fits from the old layer into the new one (same variable names and shapes)
    from ..io.sources import open_weights

    converted = []
    with open_weights(model) as src, open_weights(result.model) as dst:
        for key in dst:
            old_key = f"{layer}/{key.split('/', 1)[1]}" if key.startswith(
                new_layer.name + "/") else None
            if old_key and old_key in src and src.shape(old_key) == dst.shape(key):
                dst.variable(key).assign(src.read(old_key))
                converted.append(key)
    report = result.report
    initialized = tuple((p, w) for p, w in report.initialized if p not in converted)
    copied = report.copied + tuple(converted)
    from dataclasses import replace as dc_replace

    return EditResult(result.model, dc_replace(report, copied=copied,
                                               initialized=initialized))


def change_input(model: Any, shape: tuple) -> EditResult:
    """A new model with input shape `shape` (no batch axis): other resolutions for a model with
    global pooling, other channel counts (the first layer then starts fresh: fill it with
    `transplant` and an ``adapt_in_channels`` adapter).

    Example:
    ```python
    bigger, report = surgery.edit.change_input(model, (64, 64, 3))
    ```
    """
    shape = tuple(int(d) if d is not None else None for d in shape)
    old = tuple(model.inputs[0].shape[1:])
    if len(shape) != len(old):
        raise ShapeError(f"{model.name}: input shape {shape} has {len(shape)} axes, the model's "
                         f"{old} has {len(old)}", shapes=(shape, old))
    return apply_edits(model, operation=f"input {old} -> {shape}", input_shape=shape,
                       changes=(f"input shape {old} -> {shape}",))
