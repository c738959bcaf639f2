"""`delete_channels`: prune output channels/units of a layer, following the graph.

Starting from the layer whose channels go, one pass over the graph in topological order follows
the deleted channels downstream, tracking the axis they live on (the last axis in
channels_last, axis 1 in channels_first) and their indices: through layers that keep channels
apart (the registry's pass-through kinds: activations, dropout and noise, pooling, global
pooling, cropping, padding, upsampling; BatchNorm, PReLU and DepthwiseConv, sliced too), through
Permute (the axis moves), Flatten (the indices become the flattened rows, in the Flatten's own
order) and Concatenate (offsets), to every layer that reads channels (Dense, Conv, Conv
transpose, SeparableConv, recurrent input kernels, TimeDistributed, Bidirectional) and slices
their inputs. A layer that would treat the channel axis as spatial (a channels_last pooling
after a channels_first conv, a BatchNorm on another axis, a Dense or LSTM reading a
channels_first tensor) is refused by name.
Inputs of an elementwise merge (Add, Subtract, Multiply, Average, Maximum, Minimum) must lose
the same channels: they form a coupled group, deleted together (or, with ``couple=False``, an
error naming the group).

This module holds the public `delete_channels` and `lowest_channels` and the checks and
narrowed layers of a deletion; the parts live beside it: the dependency walk (`_Flow`,
`_walk`) in `edit/channel_walk.py`, the graph it walks (read from the live nodes, in
topological order) in `edit/channel_graph.py`, and the fill that writes the pruned variables
into the new model in `edit/channel_fill.py`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import EditError, OptionError
from ..io.sources import open_weights
from ..layertypes import classes
from .channel_fill import _fill
from .channel_walk import _entry, _Flow, _walk
from .core import EditResult, apply_edits, edit_nested, find_layer

__all__ = ["delete_channels", "lowest_channels"]


def _class_at(model: Any, path: str) -> str:
    """The class name of the (possibly nested) layer at `path`, or '' if it can't be found."""
    for part in path.split("/"):
        found = [l for l in getattr(model, "layers", []) if l.name == part]
        if not found:
            return ""
        model = found[0]
    return type(model).__name__


def lowest_channels(model: Any, layer: str, *, k: int | None = None, ratio: float | None = None
                    ) -> list[int]:
    """The `k` (or `ratio` of the) output channels of `layer` with the lowest L1 norm of
    their weights.

    Example:
    ```python
    chans = surgery.edit.lowest_channels(model, "block2_conv", ratio=0.25)
    ```
    """
    with open_weights(model) as w:
        key = f"{layer}/embeddings" if f"{layer}/embeddings" in w else \
            f"{layer}/pointwise_kernel" if f"{layer}/pointwise_kernel" in w else \
            f"{layer}/kernel"
        if key not in w:
            raise EditError(f"layer {layer!r} has no kernel to rank channels by", layer=layer)
        kernel = w.read(key)
    if "Transpose" in _class_at(model, layer):
        kernel = np.swapaxes(kernel, -1, -2)  # (..., out, in): outputs are the axis before
    norms = np.abs(kernel.reshape(-1, kernel.shape[-1])).sum(0)
    n = norms.size
    if (k is None) == (ratio is None):
        raise OptionError("give exactly one of k or ratio")
    count = int(k) if k is not None else int(round(n * float(ratio)))
    if not 0 < count < n:
        raise OptionError(f"can't delete {count} of {n} channels of {layer!r}; keep at least one",
                          layer=layer)
    return sorted(np.argsort(norms, kind="stable")[:count].tolist())


def _checked_channels(producer, layer: str, channels: Sequence[int]) -> list[int]:
    """The sorted, distinct channels to delete from `producer`; refuses a layer that can't
    start a deletion, indices out of range, none, or all of them."""
    cls = type(producer).__name__
    if not _entry(cls).width:
        raise EditError(f"layer {layer!r} is a {cls}; delete_channels starts at "
                        f"{', '.join(sorted(classes(width=True)))}", layer=layer)
    width = int(getattr(producer, _entry(cls).width))
    chans = sorted({int(c) for c in channels})
    bad = [c for c in chans if not 0 <= c < width]
    if bad:
        raise OptionError(f"channel {bad[0]} is out of range for {layer!r} with {width} "
                          f"channels (0..{width - 1})", layer=layer)
    if not chans or len(chans) >= width:
        raise OptionError(f"delete_channels would leave {layer!r} with "
                          f"{width - len(chans)} of {width} channels; delete 1..{width - 1}",
                          layer=layer)
    return chans


def _narrowed(flow: _Flow, layer: str) -> tuple[dict[str, Any], list[str]]:
    """(name -> narrower copy of each producer, one line per change for the report)."""
    replace, changes = {}, []
    for name, drop in flow.producers.items():
        old = flow.layers[name]
        key = _entry(type(old).__name__).width
        config = old.get_config()
        config[key] = int(getattr(old, key)) - len(drop)
        replace[name] = type(old).from_config(config)
        changes.append(f"{name}: {int(getattr(old, key))} -> {config[key]} channels"
                       + (" (coupled)" if name != layer else ""))
    changes += [f"{n}: sliced ({how})" for n, (how, _) in flow.slices.items()]
    changes += [f"{n}: {'Flatten rows' if flat else 'input channels'} sliced"
                for n, (_, flat) in flow.readers.items()]
    return replace, changes


def delete_channels(model: Any, layer: str, channels: Sequence[int], *, couple: bool = True,
                    _nested: bool = False) -> EditResult:
    """A new model without `channels` of `layer`'s output, dependencies followed.

    Both layouts are followed: in channels_first models the channels are axis 1 and a Flatten
    orders its rows by its own data_format. A layer that would treat the channel axis as a
    spatial one (a pooling or BatchNorm built for the other layout, a Dense or LSTM reading a
    channels_first tensor) is refused by name, with what to change.

    Args:
        model: a Keras 3 Functional or Sequential model (top-level layers).
        layer: the layer whose output channels go (Dense, Conv, SeparableConv, Embedding).
        channels: indices to delete.
        couple: delete a coupled group (inputs of an Add...) together; False raises instead.

    Raises:
        SelectorError: no such layer (closest names listed).
        OptionError: indices out of range, or all of them.
        EditError: an unsupported layer on the dependency path (named, with the path), a
            layer whose layout puts the channels on another axis, a coupled group with
            ``couple=False``, a subclassed model.

    Example:
    ```python
    pruned, report = surgery.edit.delete_channels(model, "block2_conv", [0, 3, 5])
    ```
    """
    if "/" in layer:  # a layer inside a nested model
        return edit_nested(model, layer, lambda inner, rest: delete_channels(
            inner, rest, channels, couple=couple, _nested=True),
            f"delete {len(set(channels))} channels of {layer}")
    chans = _checked_channels(find_layer(model, layer), layer, channels)
    flow = _Flow(model, _nested)  # plan: which channels of which layers go, then apply
    flow.producers[layer] = chans
    _walk(flow, couple)
    replace, changes = _narrowed(flow, layer)
    return apply_edits(model, operation=f"delete {len(chans)} channels of {layer}",
                       replace=replace, changes=tuple(changes), fill=_fill(flow),
                       filled=set(replace))
