"""The records every weight source yields: one per variable, one per layer.

Plain frozen dataclasses, no TensorFlow. A `VariableInfo` carries the canonical path
(DESIGN.md §4.1) and what selectors need to reach it: its owning layer's path and class, and
the chain of layers above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["VariableInfo", "LayerInfo", "shape_size"]


def shape_size(shape) -> int:
    """Number of scalars of a shape, in Python ints (no int64 overflow on hostile shapes)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


@dataclass(frozen=True)
class VariableInfo:
    """One variable of a source.

    Attributes:
        path: canonical path (``trunk/feat/kernel``), or the file's own key for formats that
            are not Keras models (npz, safetensors, checkpoints).
        shape: the variable's shape.
        dtype: numpy dtype name (``float32``).
        trainable: whether training would change it (None where the format doesn't say).
        layer: path of the owning layer (``trunk/feat``); "" when unknown.
        layer_class: Keras class name of the owning layer; "" when unknown.
        owners: (path, class name) of every layer from the top down to the owner.
        key: where the format stores it (an HDF5 dataset path, a checkpoint key, ...).
        setup: config-key prefix of its initializer/regularizer/constraint, if known.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    trainable: bool | None = None
    layer: str = ""
    layer_class: str = ""
    owners: tuple[tuple[str, str], ...] = ()
    key: Any = field(default=None, compare=False, repr=False)
    setup: str | None = None

    @property
    def size(self) -> int:
        """Number of scalars."""
        return shape_size(self.shape)

    @property
    def name(self) -> str:
        """The variable's own name: the last component of its path."""
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class LayerInfo:
    """One layer of a model, in model order (nested layers follow their model).

    Attributes:
        path: canonical path of the layer (``trunk/feat``).
        class_name: Keras class name.
        trainable: the layer's own trainable flag (None where unknown).
        depth: nesting depth, 0 for top-level layers.
        config: the layer's config dict where known (read-only use).
    """

    path: str
    class_name: str
    trainable: bool | None = None
    depth: int = 0
    config: dict | None = field(default=None, compare=False, repr=False)
