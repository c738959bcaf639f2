"""`delete_channels`: prune output channels/units of a layer, following the graph.

Starting from the layer whose channels go, the dependency walk follows the tensor downstream
through layers that keep channels apart (activations, dropout, pooling, global pooling,
BatchNorm and DepthwiseConv2D, both sliced too) to every layer that reads channels (Dense,
Conv, Conv transpose, SeparableConv, recurrent input kernels, TimeDistributed, Bidirectional,
Flatten -> Dense, Concatenate offsets) and slices their inputs. Inputs of an elementwise merge
(Add, Subtract, Multiply, Average, Maximum, Minimum) must lose the same channels: they form a
coupled group, deleted together (or, with ``couple=False``, an error naming the group).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import OptionError, SurgeryError
from ..sources import open_weights
from .core import EditResult, apply_edits, edit_nested, find_layer, graph, shared_layers

__all__ = ["delete_channels", "lowest_channels"]

_PRODUCERS = {"Dense": "units", "Conv1D": "filters", "Conv2D": "filters", "Conv3D": "filters",
              "Conv1DTranspose": "filters", "Conv2DTranspose": "filters",
              "Conv3DTranspose": "filters", "SeparableConv1D": "filters",
              "SeparableConv2D": "filters", "Embedding": "output_dim"}
_PASS = ("ReLU", "Activation", "Dropout", "LeakyReLU", "ELU", "SpatialDropout1D",
         "SpatialDropout2D", "SpatialDropout3D", "MaxPooling1D", "MaxPooling2D",
         "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
         "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
         "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "GaussianNoise",
         "UpSampling1D", "UpSampling2D", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D",
         "Cropping2D")
_MERGE = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
_READERS = ("Dense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
            "Conv3DTranspose", "SeparableConv1D", "SeparableConv2D", "LSTM", "GRU",
            "SimpleRNN", "TimeDistributed", "Bidirectional")


class _Plan:
    def __init__(self, model):
        self.succ, self.pred = graph(model)
        self.shared = shared_layers(model)
        self.layers = {l.name: l for l in model.layers}
        self.producers: dict[str, list[int]] = {}      # layer -> channels of its output
        self.slices: dict[str, tuple[str, list[int]]] = {}  # layer -> (how, channels)
        self.readers: dict[str, list[int]] = {}        # layer -> input channels to drop
        self.flatten: dict[str, tuple[int, int, list[int]]] = {}  # reader -> (pos, width, ch)


def _upstream_producer(model, plan: "_Plan", name: str, path: list[str]) -> str:
    """Walks up through channel-keeping layers to the layer that makes the channels."""
    while True:
        layer = plan.layers.get(name)
        cls = type(layer).__name__
        if layer is None or cls == "InputLayer":
            raise SurgeryError(f"delete_channels: the group reaches the model input through "
                               f"{' <- '.join(path)}; an input's channels can't be deleted")
        if cls in _PRODUCERS:
            return name
        if cls in _PASS or cls == "BatchNormalization":
            ups = plan.pred.get(name, [])
            if len(ups) != 1:
                raise SurgeryError(f"delete_channels: {cls} {name!r} has {len(ups)} inputs")
            path = path + [ups[0]]
            if type(plan.layers.get(ups[0])).__name__ in ("InputLayer", "NoneType"):
                raise SurgeryError(f"delete_channels: the group reaches the model input "
                                   f"through {' <- '.join(path)}; an input's channels can't be "
                                   "deleted")
            name = ups[0]
            continue
        raise SurgeryError(f"delete_channels: {cls} {name!r} on the path {' <- '.join(path)} "
                           "is not supported in a coupled group")


def _walk(model, start: str, channels: list[int], plan: _Plan, couple: bool,
          nested: bool = False) -> None:
    queue = [(start, channels, [start])]
    done_merges: set[str] = set()
    outputs = {t._keras_history[0].name for t in model.outputs
               if hasattr(t, "_keras_history")} if nested else set()
    while queue:
        name, chans, path = queue.pop(0)
        if nested and (name in outputs or not plan.succ.get(name)):
            raise SurgeryError(f"delete_channels: the channels flow out of the nested model "
                               f"{model.name!r} (through {' -> '.join(path)}); delete them "
                               "where the outer model reads them, at the top level")
        for nxt in plan.succ.get(name, []):
            layer = plan.layers[nxt]
            cls = type(layer).__name__
            trail = path + [nxt]
            if nxt in plan.shared:
                raise SurgeryError(f"delete_channels: {cls} {nxt!r} on the path "
                                   f"{' -> '.join(trail)} is shared (called more than once); "
                                   "deleting channels would give its calls different widths")
            if cls in _READERS:
                plan.readers[nxt] = chans
            elif cls in _PASS:
                queue.append((nxt, chans, trail))
            elif cls == "BatchNormalization":
                plan.slices[nxt] = ("bn", chans)
                queue.append((nxt, chans, trail))
            elif cls == "DepthwiseConv2D" or cls == "DepthwiseConv1D":
                m = int(layer.depth_multiplier)
                plan.slices[nxt] = ("depthwise", chans)
                queue.append((nxt, [c * m + j for c in chans for j in range(m)], trail))
            elif cls == "Flatten":
                width = int(layer.input.shape[-1])
                positions = int(np.prod(layer.input.shape[1:-1])) if len(
                    layer.input.shape) > 2 else 1
                for reader in plan.succ.get(nxt, []):
                    if type(plan.layers[reader]).__name__ != "Dense":
                        raise SurgeryError(f"delete_channels: Flatten {nxt!r} feeds "
                                           f"{reader!r}, not a Dense")
                    plan.flatten[reader] = (positions, width, chans)
            elif cls == "Concatenate":
                offset = 0
                for up in plan.pred.get(nxt, []):
                    if up == name:
                        break
                    offset += int(plan.layers[up].output.shape[-1])
                queue.append((nxt, [offset + c for c in chans], trail))
            elif cls in _MERGE:
                if nxt in done_merges:
                    continue
                done_merges.add(nxt)
                group = [_upstream_producer(model, plan, up, trail + [up])
                         for up in plan.pred.get(nxt, [])]
                new = [g for g in group if g not in plan.producers]
                if new and not couple:
                    raise SurgeryError(f"delete_channels: {cls} {nxt!r} couples "
                                       f"{', '.join(sorted(set(group)))}; their channels must "
                                       "go together (couple=True deletes the whole group)")
                for g in new:
                    plan.producers[g] = chans
                    queue.append((g, chans, [g]))
                queue.append((nxt, chans, trail))
            else:
                raise SurgeryError(f"delete_channels: {cls} {nxt!r} on the path "
                                   f"{' -> '.join(trail)} is not supported (it mixes or "
                                   "reshapes channels)")


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
            raise SurgeryError(f"layer {layer!r} has no kernel to rank channels by")
        kernel = w.read(key)
    norms = np.abs(kernel.reshape(-1, kernel.shape[-1])).sum(0)
    n = norms.size
    if (k is None) == (ratio is None):
        raise OptionError("give exactly one of k or ratio")
    count = int(k) if k is not None else int(round(n * float(ratio)))
    if not 0 < count < n:
        raise OptionError(f"can't delete {count} of {n} channels of {layer!r}; keep at least one")
    return sorted(np.argsort(norms, kind="stable")[:count].tolist())


def delete_channels(model: Any, layer: str, channels: Sequence[int], *, couple: bool = True,
                    _nested: bool = False) -> EditResult:
    """A new model without `channels` of `layer`'s output, dependencies followed.

    Args:
        model: a Keras 3 Functional or Sequential model (top-level layers).
        layer: the layer whose output channels go (Dense, Conv, SeparableConv, Embedding).
        channels: indices to delete.
        couple: delete a coupled group (inputs of an Add...) together; False raises instead.

    Raises:
        SelectorError: no such layer (closest names listed).
        OptionError: indices out of range, or all of them.
        SurgeryError: an unsupported layer on the dependency path (named, with the path), a
            coupled group with ``couple=False``, a subclassed model.

    Example:
    ```python
    pruned, report = surgery.edit.delete_channels(model, "block2_conv", [0, 3, 5])
    ```
    """
    if "/" in layer:  # a layer inside a nested model
        return edit_nested(model, layer, lambda inner, rest: delete_channels(
            inner, rest, channels, couple=couple, _nested=True),
            f"delete {len(set(channels))} channels of {layer}")
    producer = find_layer(model, layer)
    cls = type(producer).__name__
    if cls not in _PRODUCERS:
        raise SurgeryError(f"layer {layer!r} is a {cls}; delete_channels starts at "
                           f"{', '.join(sorted(_PRODUCERS))}")
    width = int(getattr(producer, _PRODUCERS[cls]))
    chans = sorted({int(c) for c in channels})
    bad = [c for c in chans if not 0 <= c < width]
    if bad:
        raise OptionError(f"channel {bad[0]} is out of range for {layer!r} with {width} "
                          f"channels (0..{width - 1})")
    if not chans or len(chans) >= width:
        raise OptionError(f"delete_channels would leave {layer!r} with "
                          f"{width - len(chans)} of {width} channels; delete 1..{width - 1}")
    plan = _Plan(model)
    plan.producers[layer] = chans
    _walk(model, layer, chans, plan, couple, nested=_nested)
    replace = {}
    for name in plan.producers:
        old = find_layer(model, name)
        config = old.get_config()
        key = _PRODUCERS[type(old).__name__]
        config[key] = int(getattr(old, key)) - len(chans)
        replace[name] = type(old).from_config(config)

    def fill(src_model, dst_model) -> list[str]:
        done = []
        with open_weights(src_model) as src, open_weights(dst_model) as dst:
            def put(key, value):
                dst.variable(key).assign(value)
                done.append(key)

            def keep(n, drop):
                return [i for i in range(n) if i not in set(drop)]

            for name, drop in plan.producers.items():
                for var in ("kernel", "pointwise_kernel", "embeddings", "bias"):
                    key = f"{name}/{var}"
                    if key in src:
                        a = src.read(key)
                        axis = -2 if "Transpose" in type(find_layer(src_model, name)).__name__ \
                            and var == "kernel" else -1
                        put(key, np.take(a, keep(a.shape[axis], drop), axis=axis))
            for name, (how, drop) in plan.slices.items():
                for var in ("gamma", "beta", "moving_mean", "moving_variance", "kernel",
                            "bias"):
                    key = f"{name}/{var}"
                    if key not in src:
                        continue
                    a = src.read(key)
                    if how == "depthwise" and var == "kernel":
                        put(key, np.take(a, keep(a.shape[-2], drop), axis=-2))
                    elif how == "depthwise" and var == "bias":
                        m = a.shape[0] // int(find_layer(src_model, name).input.shape[-1])
                        gone = [c * m + j for c in drop for j in range(m)]
                        put(key, np.take(a, keep(a.shape[0], gone), axis=0))
                    else:
                        put(key, np.take(a, keep(a.shape[0], drop), axis=0))
            for name, drop in plan.readers.items():
                reader_cls = type(find_layer(src_model, name)).__name__
                for key in [k for k in src if k.startswith(name + "/")]:
                    var = key.rsplit("/", 1)[1]
                    a = src.read(key)
                    if var in ("kernel", "depthwise_kernel") and reader_cls in (
                            "LSTM", "GRU", "SimpleRNN", "Bidirectional"):
                        put(key, np.take(a, keep(a.shape[0], drop), axis=0))
                    elif var == "kernel" and "Transpose" in reader_cls:
                        put(key, np.take(a, keep(a.shape[-1], drop), axis=-1))
                    elif var in ("kernel", "depthwise_kernel"):
                        put(key, np.take(a, keep(a.shape[-2], drop), axis=-2))
                    elif var == "pointwise_kernel":
                        m = src.shape(f"{name}/depthwise_kernel")[-1]
                        gone = [c * m + j for c in drop for j in range(m)]
                        put(key, np.take(a, keep(a.shape[-2], gone), axis=-2))
            for name, (positions, width_in, drop) in plan.flatten.items():
                a = src.read(f"{name}/kernel").reshape(positions, width_in, -1)
                a = np.take(a, keep(width_in, drop), axis=1)
                put(f"{name}/kernel", a.reshape(-1, a.shape[-1]))
        return done

    changes = [f"{p}: {int(getattr(find_layer(model, p), _PRODUCERS[type(find_layer(model, p)).__name__]))}"
               f" -> {int(getattr(find_layer(model, p), _PRODUCERS[type(find_layer(model, p)).__name__])) - len(chans)} channels"
               + (" (coupled)" if p != layer else "") for p in plan.producers]
    changes += [f"{n}: sliced ({how})" for n, (how, _) in plan.slices.items()]
    changes += [f"{n}: input channels sliced" for n in plan.readers]
    changes += [f"{n}: Flatten rows sliced" for n in plan.flatten]
    return apply_edits(model, operation=f"delete {len(chans)} channels of {layer}",
                       replace=replace, changes=tuple(changes), fill=fill)
