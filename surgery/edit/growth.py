"""Function-preserving growth (Net2Net, Chen et al. 2016): `widen` and `deepen`.

`widen` follows the widened layer's output through channel-preserving layers (the registry's
pass-through kinds: activations, dropout and noise, pooling, padding, cropping, upsampling,
global pooling, BatchNorm and PReLU, which are widened too, and Flatten) to every Dense
or Conv that reads it, and splits those readers' incoming weights among the copies, so the
new model computes the same function (exactly, with ``noise=0``). `deepen` inserts an identity
Dense or Conv after a layer (ReLU after a non-negative output, linear otherwise: exact either
way), or with ``residual=True`` a zero-initialized residual branch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import reshape as R
from ..errors import EditError, OptionError
from ..reshape.net2net import check_noise, net2wider_mapping
from ..model.rebuild import keras_module
from ..layertypes import LayerType, classes, layer_type
from .core import EditResult, apply_edits, edit_nested, find_layer, graph, shared_layers

__all__ = ["widen", "deepen"]

# Pass-through kinds Net2Wider follows unchanged (a BatchNorm is widened with the copies, a
# PReLU's alpha too).
_FOLLOWS = ("elementwise", "spatial", "global")


def _entry(cls: str) -> LayerType:
    """The registry entry of a class name (an unknown class has no roles)."""
    return layer_type(cls) or LayerType()


def _trace(model, start: str) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """(BatchNorms to widen, (reader, flatten positions or 0), PReLUs to widen) downstream
    of `start`."""
    bns, readers, alphas = [], [], []
    shared = shared_layers(model)
    succ = graph(model)[0]  # read the config once, not per layer
    stack = [(c, 0, [start, c]) for c in succ.get(start, [])]
    if not stack:
        raise EditError(f"layer {start!r} feeds no other layer; widening it changes the "
                        "model's output width", layer=start)
    while stack:
        name, flat, path = stack.pop()
        layer = find_layer(model, name)
        cls = type(layer).__name__
        if name in shared:
            raise EditError(f"widen {start!r}: {cls} {name!r} on the path "
                            f"{' -> '.join(path)} is shared (called more than once); "
                            "widening would give its calls different input widths", layer=name)
        kind = _entry(cls)
        if kind.widen:
            readers.append((name, flat))
            continue
        if cls == "Flatten":
            shape = tuple(layer.input.shape[1:-1])
            flat = int(np.prod(shape)) if shape else 1
        elif kind.passes == "normalize":
            bns.append(name)
        elif kind.passes == "per_channel":
            alphas.append(name)
        elif kind.passes not in _FOLLOWS:
            raise EditError(f"widen {start!r}: {cls} {name!r} on the path "
                            f"{' -> '.join(path)} mixes or reshapes channels, which Net2Wider "
                            "can't follow; widen another layer", layer=name)
        nxt = succ.get(name, [])
        if not nxt:
            raise EditError(f"widen {start!r}: the path {' -> '.join(path)} reaches the "
                            "model's output without a Dense/Conv to absorb the new units",
                            layer=start)
        stack.extend((c, flat, path + [c]) for c in nxt)
    return bns, readers, alphas


def widen(model: Any, layer: str, units: int, *, seed: int | None = None,
          noise: float = 0.0) -> EditResult:
    """Net2WiderNet: give `layer` (Dense or Conv) `units` units without changing the function.

    Args:
        model: a Keras 3 Functional or Sequential model.
        layer: the layer to widen.
        units: its new width (more than today).
        seed: which units are copied (drawn once, shared by the layer, its BatchNorms and
            every reader; None draws fresh copies each call, still consistent within it).
        noise: relative noise on the copies' incoming weights (breaks symmetry; the function
            then changes slightly); finite and >= 0.

    Raises:
        OptionError: `units` not above today's width; NaN, infinite or negative `noise`.
        EditError: a layer type that can't be widened, or a path to the next Dense/Conv
            through a layer that mixes channels (named, with the path).

    Example:
    ```python
    wider, report = surgery.edit.widen(model, "fc", 96, seed=0)
    wider, report = surgery.edit.widen(model, "backbone/conv1", 48)   # inside a nested model
    ```
    """
    if "/" in layer:
        return edit_nested(model, layer, lambda inner, rest: widen(
            inner, rest, units, seed=seed, noise=noise), f"widen {layer} -> {units}")
    old = find_layer(model, layer)
    cls = type(old).__name__
    if not _entry(cls).widen:
        raise EditError(f"layer {layer!r} is a {cls}; widen works on "
                        f"{', '.join(classes(widen=True))}", layer=layer)
    key = _entry(cls).width
    width = int(getattr(old, key))
    if not isinstance(units, (int, np.integer)) or units <= width:
        raise OptionError(f"widen {layer!r}: {units!r} units is not more than its {width}; "
                          "Net2Wider only grows (use delete_channels to shrink)", layer=layer)
    noise = check_noise(noise, f"widen {layer!r}")
    bns, readers, alphas = _trace(model, layer)
    # One draw of the copies, shared by the kernel, every reader and every BatchNorm: drawn
    # separately (seed=None), they would disagree and the function would change.
    mapping = net2wider_mapping(width, int(units), seed=seed)
    config = old.get_config()
    config[key] = int(units)
    new_layer = type(old).from_config(config)

    def fill(src, dst) -> list[str]:
        converted = []
        k_in = src.read(f"{layer}/kernel")
        b_in = src.read(f"{layer}/bias") if f"{layer}/bias" in src else None
        bn_arrays = {b: tuple(src.read(f"{b}/{v}") for v in ("gamma", "beta",
                                                              "moving_mean",
                                                              "moving_variance"))
                     for b in bns}
        for i, (reader, flat) in enumerate(readers):
            k_out = src.read(f"{reader}/kernel")
            if flat:
                k_out = k_out.reshape(flat, width, k_out.shape[-1])
            out = R.net2wider(k_in, b_in, k_out, units, seed=seed, noise=noise,
                              mapping=mapping)
            new_out = out[2].reshape(-1, out[2].shape[-1]) if flat else out[2]
            dst.variable(f"{reader}/kernel").assign(new_out)
            converted.append(f"{reader}/kernel")
            if i == 0:
                dst.variable(f"{layer}/kernel").assign(out[0])
                converted.append(f"{layer}/kernel")
                if b_in is not None:
                    dst.variable(f"{layer}/bias").assign(out[1])
                    converted.append(f"{layer}/bias")
        for b in bns:  # the same mapping: the same copies
            mapped = R.net2wider(k_in, b_in, np.zeros((width, 1), k_in.dtype), units,
                                 mapping=mapping, bn=bn_arrays[b])[3]
            for name, value in zip(("gamma", "beta", "moving_mean", "moving_variance"),
                                   mapped):
                if f"{b}/{name}" in dst:
                    dst.variable(f"{b}/{name}").assign(value)
                    converted.append(f"{b}/{name}")
        for p in alphas:  # a copy gets the alpha of the channel it copies
            alpha = src.read(f"{p}/alpha")
            if alpha.shape[-1] > 1:  # 1: shared over the channel axis
                dst.variable(f"{p}/alpha").assign(alpha[..., mapping])
                converted.append(f"{p}/alpha")
        return converted

    changes = [f"{layer}: {width} -> {units} {key}"] + \
        [f"{b}: widened with it" for b in [*bns, *alphas]] + \
        [f"{r}: incoming weights split among the copies" for r, _ in readers]
    return apply_edits(model, operation=f"widen {layer} {width} -> {units}",
                       replace={layer: new_layer}, changes=tuple(changes), fill=fill)


def _nonnegative(layer) -> bool:
    cls = type(layer).__name__
    if cls == "ReLU":
        return True
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", "") in ("relu", "relu6", "sigmoid", "softplus")


def deepen(model: Any, after: str, *, residual: bool = False, name: str | None = None
           ) -> EditResult:
    """Net2DeeperNet: insert an identity layer after `after`; the function is unchanged.

    A vector output gets an identity Dense; a feature map gets a Conv (3-wide, ``same``
    padding) passing each channel through its centre tap. The new layer uses ReLU when the
    output it reads is non-negative (after a ReLU), else no activation: exact either way. With
    ``residual=True`` (Functional models) it inserts ``x + Conv(x)`` with a zero-initialized
    Conv instead, the way residual networks grow.

    Example:
    ```python
    deeper, report = surgery.edit.deepen(model, "fc")
    ```
    """
    if "/" in after:
        return edit_nested(model, after, lambda inner, rest: deepen(
            inner, rest, residual=residual, name=name), f"deepen after {after}")
    ref = find_layer(model, after)
    shape = tuple(ref.output.shape[1:])
    k = keras_module(model)
    units = int(shape[-1])
    rank = len(shape)
    name = name or f"{after}_deepen"
    if rank == 1:
        new = k.layers.Dense(units, name=name)
        kernel = R.identity_kernel(units)
    elif rank in (2, 3, 4):
        conv = {2: k.layers.Conv1D, 3: k.layers.Conv2D, 4: k.layers.Conv3D}[rank]
        new = conv(units, 3, padding="same", name=name)
        kernel = R.identity_kernel(units, kernel_size=(3,) * (rank - 1))
    else:
        raise EditError(f"deepen: layer {after!r} outputs shape {shape}; an identity layer "
                        "needs a vector or a feature map", layer=after)
    if residual:
        if type(model).__name__ == "Sequential":
            raise EditError("deepen(residual=True) adds a branch, which needs a Functional "
                            "model")
        kernel = np.zeros_like(kernel)
        add = k.layers.Add(name=f"{name}_add")

        def insert(x):
            return add([x, new(x)])
    else:
        if _nonnegative(ref):
            new.activation = k.activations.get("relu")
        insert = new

    def fill(src, dst) -> list[str]:
        dst.variable(f"{name}/kernel").assign(kernel)
        dst.variable(f"{name}/bias").assign(np.zeros(units, np.float32))
        return [f"{name}/kernel", f"{name}/bias"]

    what = "zero-initialized residual branch" if residual else \
        f"identity {type(new).__name__}" + (" + ReLU" if not residual and _nonnegative(ref)
                                            else "")
    return apply_edits(model, operation=f"deepen after {after}",
                       insert_after={after: insert}, changes=(f"inserted {what} {name!r}",),
                       fill=fill)
