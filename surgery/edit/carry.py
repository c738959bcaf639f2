"""Carrying weights into an edited model: deferred initialization, then one copy per variable.

An edit builds a new model whose layers are fresh copies of the old ones (same config), then
writes every weight it can into them: copied bitwise where path and shape still fit, or
computed by the edit (`fill`). Drawing random initial values for variables that are about to
be overwritten is wasted work (an eighth of a rebuild's time), so a fresh copy of a built-in
Keras layer is built with its initializers swapped for a constant one (`defer`), which are put
back right after the build (`restore`): its config, and any later `reset`, see the originals.
Whatever the carry and the fill did not write is then initialized as Keras would have done
(`initialize_rest`): from a twin of the layer built from the same config and input shape.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..errors import EditError
from ..layertypes import layer_type

__all__ = ["Deferred", "carry_weights"]


def _leaf(layer: Any) -> bool:
    """A built-in Keras layer whose variables are its own (Dense, Conv, BatchNormalization,
    ...: registered with variables, no cell, no wrapped layer, no sublayers to build)."""
    entry = layer_type(type(layer).__name__)
    return entry is not None and bool(entry.variables) and entry.cell is None and \
        not entry.wrapper and type(layer).__module__.startswith("keras.src.layers.")


class Deferred:
    """The fresh layers built with stand-in initializers, and their real ones."""

    def __init__(self, k):
        self._initializer = k.initializers.Initializer
        self._stand_in = k.initializers.Zeros()
        self.layers: dict[int, tuple[Any, dict[str, Any]]] = {}

    def defer(self, layer: Any) -> Any:
        """Swaps the initializers of an unbuilt built-in Keras layer that holds its variables
        itself (`_leaf`) for the stand-in (zeros: no random draw); other layers are left as
        they are."""
        if getattr(layer, "built", True) or not _leaf(layer):
            return layer
        real = {name: value for name, value in vars(layer).items()
                if isinstance(value, self._initializer)}
        if real:
            for name in real:
                object.__setattr__(layer, name, self._stand_in)
            self.layers[id(layer)] = (layer, real)
        return layer

    def restore(self) -> None:
        """Puts every real initializer back (after the new model is built)."""
        for layer, real in self.layers.values():
            for name, value in real.items():
                object.__setattr__(layer, name, value)

    def initialize_rest(self, dst: Any, written: set[str]) -> None:
        """Initializes, as Keras would, each variable of a deferred layer that nothing wrote
        (`dst`: the new model's `LiveModelSource`): from a twin of its layer (same config,
        built on the same input shape)."""
        pending: dict[int, list[tuple[int, str]]] = {}
        for info in dst.variables():
            holder = dst.holders[info.key]
            if info.path not in written and id(holder) in self.layers:
                pending.setdefault(id(holder), []).append((info.key, info.path))
        for holder_id, items in pending.items():
            layer = self.layers[holder_id][0]
            twin = _twin(layer)
            index = {id(v): i for i, v in enumerate(layer.weights)}
            for key, path in items:
                variable = dst.handles[key]
                value = twin.weights[index[id(variable)]]
                if tuple(value.shape) != tuple(variable.shape):
                    raise EditError(f"{path}: the re-initialized value has shape "
                                    f"{tuple(value.shape)}, the variable "
                                    f"{tuple(variable.shape)}; please report this",
                                    variable=path)
                variable.assign(value)


def _twin(layer: Any) -> Any:
    twin = type(layer).from_config(layer.get_config())
    build = layer.get_build_config() if hasattr(layer, "get_build_config") else None
    try:
        if build:
            twin.build_from_config(build)
        if len(twin.weights) != len(layer.weights):
            raise ValueError(f"{len(twin.weights)} variables, not {len(layer.weights)}")
    except Exception as e:
        raise EditError(f"layer {layer.name!r}: its new variables could not be initialized "
                        f"({type(e).__name__}: {e}); please report this", layer=layer.name
                        ) from None
    return twin


def carry_weights(src: Any, dst: Any, skip: Iterable[str]
                  ) -> tuple[list[str], list[tuple[str, str]]]:
    """Copies each variable of the new model (`dst`, a `LiveModelSource`) from the variable
    of the old one (`src`) with the same path and shape, one assignment per variable (no
    NumPy round trip when the dtypes agree).

    Returns:
        (the copied paths, (path, why) for each variable not copied: in a `skip` layer
        (replaced), absent from `src` (new layer) or of another shape).
    """
    skip = set(skip)
    copied: list[str] = []
    left: list[tuple[str, str]] = []
    for info in dst.variables():
        if info.path.split("/", 1)[0] in skip:
            left.append((info.path, "replaced layer"))
            continue
        if info.path not in src:
            left.append((info.path, "new layer"))
            continue
        old = src.info(info.path)
        if old.shape != info.shape:
            left.append((info.path, f"shape {old.shape} -> {info.shape}"))
            continue
        value = src.handles[old.key]
        if old.dtype != info.dtype:
            value = np.asarray(value).astype(info.dtype)
        dst.handles[info.key].assign(value)
        copied.append(info.path)
    dst.finalize(copied)  # Normalization: its mean and variance tensors remade
    return copied, left
