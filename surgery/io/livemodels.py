"""Canonical paths of a live Keras 3 or tf_keras model, duck-typed (imports no framework).

The walk follows what a user sees in the model's config: a model's layers by name, a
Bidirectional's two directions as ``forward``/``backward``, RNN cells and wrapped layers
adding no name, a custom layer's sublayers by their names, a shared layer once. A variable's
own name is its Keras 3 ``name`` (``kernel``) or the last part of its tf_keras name
(``enc/lstm_cell/kernel:0`` -> ``kernel``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..entries import LayerInfo, VariableInfo
from ..errors import InputError
from .keras2 import keras3_layer_name, keras3_variable_name

__all__ = ["Walk", "is_live_model", "require_live_model", "walk_model", "variable_name",
           "framework_of"]

_SUFFIX = re.compile(r":\d+$")


def is_live_model(obj: Any) -> bool:
    """True for a Keras 3 or tf_keras model/layer object (duck-typed)."""
    return all(hasattr(obj, a) for a in ("weights", "get_weights", "set_weights", "trainable")) \
        and hasattr(obj, "layers")


def require_live_model(obj: Any, what: str) -> None:
    """Raises `InputError` unless `obj` is a live Keras model (a path is the usual mistake)."""
    if not is_live_model(obj):
        hint = (f"load it first: model = surgery.load_model({obj!r})"
                if isinstance(obj, (str, os.PathLike)) else "pass a Keras model")
        raise InputError(f"{what} needs a live Keras model, got {type(obj).__name__}; {hint}")


def framework_of(obj: Any) -> str:
    """``keras`` (Keras 3) or ``tf_keras`` (Keras 2), from the object's module."""
    module = type(obj).__module__
    return "tf_keras" if module.startswith(("tf_keras", "keras.src.engine", "tensorflow")) \
        else "keras"


def variable_name(variable: Any) -> str:
    """A variable's own name, without scopes or ``:0``."""
    name = _SUFFIX.sub("", str(getattr(variable, "name", "")))
    return name.rsplit("/", 1)[-1]


def _is_model(layer: Any) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs") and \
        type(layer).__name__ != "Bidirectional"


def _sublayers(layer: Any) -> list[Any]:
    flatten = getattr(layer, "_flatten_layers", None)
    if callable(flatten):
        try:
            return list(flatten(include_self=False, recursive=False))
        except TypeError:
            pass
    return list(getattr(layer, "_layers", []) or [])


def _children(layer: Any, keras3: bool = True) -> Iterator[tuple[str | None, Any]]:
    """(name component or None for transparent, child) pairs of a layer; tf_keras layer names
    with '/' (which Keras 3 refuses) get Keras 3's ``_``, as `io.keras2` renames them."""
    for component, child in _named_children(layer):
        yield (keras3_layer_name(component) if component and not keras3 else component), child


def _named_children(layer: Any) -> Iterator[tuple[str | None, Any]]:
    if type(layer).__name__ == "Bidirectional":
        yield "forward", layer.forward_layer
        yield "backward", layer.backward_layer
        return
    if _is_model(layer):
        for child in layer.layers:
            if type(child).__name__ != "InputLayer":
                yield child.name, child
        return
    cell = getattr(layer, "cell", None)
    if cell is not None and hasattr(cell, "weights"):
        yield None, cell
        return
    inner = getattr(layer, "layer", None)
    if inner is not None and hasattr(inner, "weights") and "Wrapper" in {
            c.__name__ for c in type(layer).__mro__}:
        yield None, inner
        return
    for child in _sublayers(layer):
        yield child.name, child


def _all_weight_ids(layer: Any) -> set[int]:
    return {id(v) for v in layer.weights}


@dataclass
class Walk:
    """What `walk_model` found.

    Attributes:
        variables: `VariableInfo` per variable (its `key` indexes `handles`).
        layers: `LayerInfo` per named layer, in model order.
        handles: the variable objects.
        holders: per variable, the object whose own weights hold it (a layer, an RNN cell, a
            Bidirectional direction): where its initializer and regularizer live.
        layer_objects: canonical layer path -> layer object.
    """

    variables: list[VariableInfo] = field(default_factory=list)
    layers: list[LayerInfo] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)
    holders: list[Any] = field(default_factory=list)
    layer_objects: dict[str, Any] = field(default_factory=dict)


def walk_model(model: Any) -> Walk:
    """Walks a live model (see `Walk`).

    A variable is trainable as the framework trains it: in Keras 3, when the model is
    trainable and the variable's own flag is set (a frozen parent with a trainable child, as
    keras-hub's ``backbone.enable_lora`` leaves it, trains the child: exactly
    ``model.trainable_weights``); in tf_keras, when every layer above it is trainable.
    """
    walk = Walk()
    keras3 = framework_of(model) == "keras"
    variables, handles, layers = walk.variables, walk.handles, walk.layers
    seen_layers: set[int] = set()
    seen_vars: set[int] = set()

    def visit(layer, prefix, owners, trainable, depth, named=True):
        if id(layer) in seen_layers:
            return
        seen_layers.add(id(layer))
        path = "/".join(prefix)
        cls = type(layer).__name__
        trainable = trainable and bool(layer.trainable)
        if named:
            owners = owners + ((path, cls),)
            layers.append(LayerInfo(path, cls, bool(layer.trainable), depth, None))
            walk.layer_objects[path] = layer
        children = list(_children(layer, keras3))
        below: set[int] = set()
        for _, child in children:
            below |= _all_weight_ids(child)
        own_paths = getattr(layer, "_surgery_variable_paths", None) or {}
        for v in layer.weights:
            if id(v) in below or id(v) in seen_vars:
                continue
            seen_vars.add(id(v))
            dtype = getattr(v, "dtype", "float32")
            dtype = getattr(dtype, "name", dtype)
            owner_path, owner_cls = owners[-1] if owners else ("", "")
            above = bool(model.trainable) if keras3 else trainable
            name = own_paths.get(id(v)) or variable_name(v)
            if not keras3:  # a tf_keras DepthwiseConv's depthwise_kernel is Keras 3's kernel
                name = keras3_variable_name(cls, name)
            variables.append(VariableInfo(
                path="/".join(prefix + [name]),
                shape=tuple(int(d) for d in v.shape), dtype=str(dtype),
                trainable=bool(above and getattr(v, "trainable", True)),
                layer=owner_path, layer_class=owner_cls, owners=owners, key=len(handles)))
            handles.append(v)
            walk.holders.append(layer)
        for component, child in children:
            if component is None:
                visit(child, prefix, owners, trainable, depth, named=False)
            else:
                visit(child, prefix + [component], owners, trainable, depth + 1,
                      named=component not in ("forward", "backward"))

    for component, child in _children(model, keras3):
        visit(child, [component] if component else [], (), bool(model.trainable), 0)
    return walk
