"""2D -> 3D (I3D, Carreira & Zisserman 2017): a 2D CNN becomes a 3D CNN for short clips.

Each Conv2D becomes a Conv3D whose kernel is the 2D kernel inflated over `depth` frames
(`reshape.inflate_kernel`), pooling gets a time axis of 1, global pooling covers time too;
BatchNorm, activations and Dense layers are kept. With ``mode="center"`` every frame is
processed exactly as the 2D model processed it, so a static clip (one frame repeated) gives
the 2D model's prediction; ``mode="tile"`` spreads the kernel over time (divided by depth), the
I3D initialization, exact on static clips away from the clip's ends.
"""

from __future__ import annotations

from typing import Any

from .. import reshape as R
from ..errors import EditError, OptionError, SurgeryError
from ..model.rebuild import keras_module
from ..io.sources import open_weights
from ..layertypes import layer_type
from .core import EditReport, EditResult, params

__all__ = ["inflate"]


def inflate(model: Any, *, frames: int | None = None, depth: int = 3, mode: str = "center"
            ) -> EditResult:
    """A 3D CNN for clips of `frames` frames from a 2D CNN (Functional, one image input).

    Args:
        frames: clip length of the new input (None: any length).
        depth: temporal kernel size of the inflated convolutions (odd for ``center``).
        mode: ``center`` (exact per frame) or ``tile`` (I3D).

    Raises:
        EditError: a layer with no 3D counterpart here (named).

    Example:
    ```python
    video_model, report = surgery.edit.inflate(image_model, frames=8, depth=3)
    ```
    """
    if mode not in ("center", "tile"):
        raise OptionError(f"inflate: mode must be 'center' or 'tile', got {mode!r}")
    k = keras_module(model)
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3:
        raise EditError(f"{model.name}: inflate needs an image model (height, width, "
                        f"channels input); this one takes {shape}")
    convs: list[str] = []

    def clone(layer):
        cls = type(layer).__name__
        config = layer.get_config()
        target = getattr(layer_type(cls), "inflate", None)  # the 3D class, or "same"
        if target and target != "same" and "kernel_size" in config:
            convs.append(layer.name)
            config.update(kernel_size=(depth,) + tuple(config["kernel_size"]),
                          strides=(1,) + tuple(config["strides"]),
                          dilation_rate=(1,) + tuple(config["dilation_rate"]))
            config.pop("groups", None)
            return getattr(k.layers, target).from_config(config)
        if target and target != "same" and "pool_size" in config:
            config.update(pool_size=(1,) + tuple(config["pool_size"]),
                          strides=(1,) + tuple(config["strides"] or config["pool_size"]))
            return getattr(k.layers, target).from_config(config)
        if target and target != "same":  # global pooling: time is pooled too
            return getattr(k.layers, target).from_config(config)
        if target == "same":
            return layer.__class__.from_config(config)
        raise EditError(f"inflate: layer {layer.name!r} is a {cls}, which has no 3D "
                        "counterpart here (Conv2D, pooling, global pooling, BatchNorm, "
                        "activations, Dense are supported)", layer=layer.name)

    new_input = k.Input((frames,) + shape, dtype=model.inputs[0].dtype,
                        name=model.inputs[0].name.split(":")[0])
    try:
        new = k.models.clone_model(model, input_tensors=new_input, clone_function=clone)
    except SurgeryError:
        raise
    except Exception as e:
        raise EditError(f"{model.name}: the inflated model does not build "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                        ) from None
    carried, converted = [], []
    with open_weights(model) as src, open_weights(new) as dst:
        for key in dst:
            value = src.read(key)
            if key.rsplit("/", 1)[0] in convs and key.endswith("/kernel"):
                value = R.inflate_kernel(value, depth, mode=mode)
                converted.append(key)
            else:
                carried.append(key)
            dst.variable(key).assign(value)
    report = EditReport(f"inflate 2D -> 3D (depth {depth}, {mode})",
                        tuple(f"{c}: Conv2D -> Conv3D" for c in convs), tuple(carried),
                        tuple(converted), (), params(model), params(new))
    return EditResult(new, report)
