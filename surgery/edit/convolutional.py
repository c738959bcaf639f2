"""Fully convolutional conversion: Flatten + Dense heads become convolutions.

The first Dense after Flatten becomes a Conv2D whose kernel covers the feature map it read
(`reshape.dense_to_conv`), later Dense layers become 1x1 convolutions. At the old input size
the new model outputs a 1x1 map holding the old predictions; on larger inputs, a score map.
"""

from __future__ import annotations

from typing import Any

from .. import reshape as R
from ..errors import EditError
from ..model.rebuild import keras_module
from ..io.sources import open_weights
from ..layertypes import layer_type
from .core import EditReport, EditResult, params

__all__ = ["fully_convolutional"]


def fully_convolutional(model: Any, *, input_shape: tuple | None = None) -> EditResult:
    """A fully convolutional copy of a CNN whose head is Flatten + Dense layers.

    Args:
        model: a Functional or Sequential image model with one Flatten followed only by
            Dense/Dropout/activation layers.
        input_shape: the new input shape (default: the old one).

    Example:
    ```python
    scores, report = surgery.edit.fully_convolutional(model, input_shape=(96, 96, 3))
    ```
    """
    k = keras_module(model)
    names = [l.name for l in model.layers]
    flats = [l for l in model.layers if type(l).__name__ == "Flatten"]
    if len(flats) != 1:
        raise EditError(f"{model.name}: fully_convolutional needs exactly one Flatten "
                        f"layer, found {len(flats)}")
    flat = flats[0]
    fmap = tuple(int(d) for d in flat.input.shape[1:])
    if len(fmap) != 3:
        raise EditError(f"{model.name}: Flatten reads shape {fmap}; a 2D feature map "
                        "(height, width, channels) is needed", layer=flat.name)
    after = model.layers[names.index(flat.name) + 1:]
    bad = [l.name for l in after  # Dense (converted) and layers that act on the last axis
           if not getattr(layer_type(type(l).__name__), "pointwise", False)]
    if bad:
        raise EditError(f"{model.name}: layer {bad[0]!r} after Flatten is not a Dense, "
                        "Dropout or activation; only such heads can become convolutions",
                        layer=bad[0])
    dense = [l for l in after if type(l).__name__ == "Dense"]
    converted: dict[str, tuple] = {}

    def clone(layer):
        if type(layer).__name__ == "InputLayer":
            return layer
        config = layer.get_config()
        if layer in dense:
            first = layer is dense[0]
            conv = k.layers.Conv2D(int(config["units"]), fmap[:2] if first else 1,
                                   activation=config["activation"],
                                   use_bias=config["use_bias"], name=layer.name)
            converted[layer.name] = fmap if first else None
            return conv
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        if layer.name == flat.name:
            return args[0]
        return layer(*args, **kwargs)

    shape = tuple(input_shape or model.inputs[0].shape[1:])
    if type(model).__name__ == "Sequential":
        layers = [k.Input(shape)] + [clone(l) for l in model.layers if l is not flat]
        new = k.Sequential(layers, name=model.name)
    else:
        inp = k.Input(shape, name=model.inputs[0].name.split(":")[0])
        new = k.models.clone_model(model, input_tensors=inp, clone_function=clone,
                                   call_function=call)
    carried, done = [], []
    with open_weights(model) as src, open_weights(new) as dst:
        for key in dst:
            layer = key.rsplit("/", 1)[0]
            value = src.read(key)
            if layer in converted and key.endswith("/kernel"):
                value = R.dense_to_conv(value, converted[layer]) if converted[layer] else \
                    value.reshape(1, 1, *value.shape)
                done.append(key)
            else:
                carried.append(key)
            dst.variable(key).assign(value)
    report = EditReport("fully convolutional", tuple(
        f"{n}: Dense -> Conv2D" for n in converted) + (f"{flat.name}: removed",),
        tuple(carried), tuple(done), (), params(model), params(new))
    return EditResult(new, report)
