"""LoRA: low-rank adapters on selected layers (`enable_lora`), and an explicit merge.

`enable_lora` calls Keras 3's own ``layer.enable_lora`` on the layers a selection reaches
(Dense, EinsumDense, Embedding, Conv1D/2D/3D), in place: afterwards the kernel (and, unless
``train_bias=True``, the bias) is frozen and only ``<layer>/lora_kernel_a`` and
``<layer>/lora_kernel_b`` train, also in a layer that was frozen before (a frozen Keras layer
trains none of its variables, so the adapted layer is made trainable first). Other layers are
left as they are: freeze them first (`surgery.freeze`) to train the adapters alone.
`merge_lora` returns a new, plain model whose kernels include the adapters
(kernel + alpha/rank * A @ B), with the same outputs. Keras merges on save too, so LoRA is a
training-time tool; tf_keras has no LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import OptionError, UnsupportedModelError
from ..io.livemodels import framework_of, require_live_model
from .rebuild import carry_weights, find_layer_config, is_graph, model_config, rebuild, \
    rebuild_serialized, serialized_config
from ..layertypes import classes, layer_type
from ..selection import Selector, select
from ..io.sources import open_weights

__all__ = ["LoraReport", "enable_lora", "merge_lora", "lora_layers", "SUPPORTED"]

SUPPORTED = classes(lora=True)  # as registered at import; `supported()` reads it live


def supported() -> tuple[str, ...]:
    """The layer classes Keras LoRA adapts (the registry's ``lora`` role)."""
    return classes(lora=True)


@dataclass(frozen=True)
class LoraReport:
    layers: tuple[str, ...]
    rank: int
    alpha: float
    trainable_before: int
    trainable_after: int

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "rank": self.rank, "alpha": self.alpha,
                "trainable_before": self.trainable_before,
                "trainable_after": self.trainable_after}

    def __str__(self) -> str:
        return (f"LoRA rank {self.rank} (alpha {self.alpha:g}) on {len(self.layers)} layers: "
                f"{', '.join(self.layers)}; trainable params {self.trainable_before:,} -> "
                f"{self.trainable_after:,}")


def _trainable(model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def lora_layers(model: Any) -> dict[str, Any]:
    """Canonical path -> layer object for every layer with LoRA enabled."""
    src = open_weights(model)
    return {p: l for p, l in getattr(src, "layer_objects", {}).items()
            if getattr(l, "lora_enabled", False)}


def enable_lora(model: Any, *selectors: Selector, rank: int, alpha: float | None = None,
                train_bias: bool = False) -> LoraReport:
    """Enables LoRA on the layers `selectors` reach, in place (Keras 3 models).

    Args:
        model: a Keras 3 model.
        *selectors: layers to adapt (default: every supported layer).
        rank: the adapters' rank (>= 1).
        alpha: scale numerator (default: `rank`, i.e. scale 1).
        train_bias: keep the adapted layers' biases training (default: only the adapters
            train, as in PEFT's ``bias="none"``).

    Raises:
        UnsupportedModelError: a tf_keras model, or a selected layer type without LoRA (names
            the layer and the supported types).

    Example:
    ```python
    surgery.enable_lora(model, "fc", "head", rank=4)
    ```
    """
    require_live_model(model, "enable_lora")
    if framework_of(model) == "tf_keras":
        raise UnsupportedModelError("tf_keras models have no LoRA; convert the model to Keras 3 "
                                    "first (surgery convert)")
    if not isinstance(rank, (int, np.integer)) or rank < 1:
        raise OptionError(f"rank must be a positive integer, got {rank!r}")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(
            alpha, (int, float, np.number)) or not np.isfinite(alpha) or alpha <= 0):
        raise OptionError(f"alpha must be a finite number above 0, got {alpha!r}")
    src = open_weights(model)
    if selectors:
        chosen = select(src.variables(), selectors, what=model.name)
        layers = list(dict.fromkeys(v.layer for v in chosen))
    else:
        layers = [p for p, l in src.layer_objects.items() if type(l).__name__ in supported()]
    for path in layers:
        layer = src.layer_objects[path]
        if type(layer).__name__ not in supported():
            raise UnsupportedModelError(f"layer {path!r} is a {type(layer).__name__}, which has "
                                        f"no LoRA; LoRA works on {', '.join(supported())}",
                                        layer=path)
        if getattr(layer, "kernel_constraint", None) is not None and \
                not getattr(layer, "lora_enabled", False):
            raise UnsupportedModelError(f"layer {path!r} has a kernel constraint, which LoRA "
                                        "can't keep (Keras refuses it); leave the layer out of "
                                        "the LoRA selection or remove its constraint first",
                                        layer=path)
    before = _trainable(model)
    for path in layers:
        layer = src.layer_objects[path]
        if not getattr(layer, "lora_enabled", False):
            # A frozen layer's variables never train, adapters included: the layer itself
            # must be trainable; Keras's enable_lora then freezes its kernel.
            layer.trainable = True
            layer.enable_lora(int(rank), lora_alpha=alpha)
        if not train_bias and getattr(layer, "bias", None) is not None:
            layer.bias.trainable = False
    return LoraReport(tuple(layers), int(rank), float(alpha if alpha is not None else rank),
                      before, _trainable(model))


def merge_lora(model: Any) -> Any:
    """A new plain model whose kernels include the LoRA adapters; `model` is untouched.

    Example:
    ```python
    plain = surgery.merge_lora(model)    # same outputs, no lora_kernel_a/b variables
    ```
    """
    require_live_model(model, "merge_lora")
    adapted = lora_layers(model)
    serialized = None if is_graph(model) else serialized_config(model)
    if serialized is not None:  # a keras-hub model: its config holds no LoRA layer
        new = rebuild_serialized(model, serialized)
    else:
        config = model_config(model)
        for path in adapted:
            cfg = find_layer_config(config, path)["config"]
            cfg.pop("lora_rank", None)
            cfg.pop("lora_alpha", None)
        new = rebuild(model, config)
    carry_weights(model, new, skip=list(adapted))
    from ..io.tfimport import keras

    ops = keras().ops
    with open_weights(new) as dst:
        for path, layer in adapted.items():
            name = getattr(layer_type(type(layer).__name__), "lora", None) or "kernel"
            merged = ops.convert_to_numpy(getattr(layer, name))
            dst.variable(f"{path}/{name}").assign(merged)
            for other in ("bias",):
                key = f"{path}/{other}"
                if key in dst:
                    dst.variable(key).assign(ops.convert_to_numpy(getattr(layer, other)))
    return new
