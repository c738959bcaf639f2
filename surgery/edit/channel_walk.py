"""The channel-dependency walk of `delete_channels`: which channels of which layer outputs go,
and on which axis.

One pass over the graph in topological order (`_walk`, rerun when an elementwise merge pulls
another producer into the coupled group) follows the deleted channels from the producers
downstream (`_step`): through layers that keep channels apart (`_pass`: the registry's
pass-through kinds; BatchNorm, PReLU and DepthwiseConv recorded for slicing), Permute, Flatten
(`_flatten_rows`) and Concatenate (`_concatenate`), to the layers that read channels (`_read`),
refusing by name a layer that would treat the channel axis as spatial. `_Flow` holds the
result: the producers, the layers whose own weights are sliced, and the readers. Moved from
`edit/channels.py`.
"""

from __future__ import annotations

import numpy as np

from ..errors import EditError
from ..io.configs import model_config
from ..layertypes import LayerType, layer_type
from .channel_graph import _live_graph, _topological
from .core import graph, shared_layers

__all__: list[str] = []


_NONE = LayerType()


def _entry(cls: str) -> LayerType:
    """The registry entry of a class name (an unknown class has no roles)."""
    return layer_type(cls) or _NONE


_MIXING = ("softmax", "log_softmax")


def _rank(tensor) -> int:
    return len(tensor.shape)


def _layout(axis: int, rank: int) -> str:
    if axis == rank - 1:
        return "channels_last"
    return "channels_first" if axis == 1 else f"axis {axis}"


def _format_axis(layer, rank: int) -> int:
    """The channel axis (batch axis counted) a layer with a data_format works with."""
    fmt = getattr(layer, "data_format", None) or "channels_last"
    return 1 if fmt == "channels_first" else rank - 1


def _reader_axis(layer, rank: int) -> int:
    cls = type(layer).__name__
    if _entry(cls).axis == "last":
        return rank - 1
    if cls == "TimeDistributed":
        inner = layer.layer
        if getattr(inner, "data_format", None) == "channels_first":
            return 2
        return rank - 1
    return _format_axis(layer, rank)


def _producer_axis(layer) -> int:
    rank = _rank(layer.output)
    if _entry(type(layer).__name__).axis == "last":
        return rank - 1
    return _format_axis(layer, rank)


class _Flow:
    """Which channels of which layer outputs go, on which axis, found by one pass over the
    graph in topological order (rerun when a merge pulls another producer into the group)."""

    def __init__(self, model, nested: bool):
        self.model = model
        self.nested = nested
        live = _live_graph(model)
        if live is not None:
            self.succ, self.pred, self.shared = live
        else:
            config = None if type(model).__name__ == "Sequential" else model_config(model)
            self.succ, self.pred = graph(model, config)  # one config for both: slow to get
            self.shared = shared_layers(model, config)
        self.layers = {l.name: l for l in model.layers}
        self.outputs = {t._keras_history[0].name for t in model.outputs
                        if hasattr(t, "_keras_history")} if nested else set()
        self.order = _topological([*self.layers, *self.succ, *self.pred], self.pred)
        self.producers: dict[str, list[int]] = {}       # layer -> its output channels that go
        self.reset()

    def reset(self) -> None:
        self.out: dict[str, tuple[int, list[int], list[str]]] = {}  # layer -> (axis, ch, path)
        self.slices: dict[str, tuple[str, list[int]]] = {}  # layer -> (how, channels)
        self.readers: dict[str, tuple[list[int], bool]] = {}  # layer -> (inputs, via Flatten)

    def refuse(self, name: str, trail: list[str], why: str) -> EditError:
        cls = type(self.layers[name]).__name__
        return EditError(f"delete_channels: {cls} {name!r} on the path "
                         f"{' -> '.join(trail)} {why}", layer=name)

    def axis_check(self, name, trail, expected, actual, rank, fix) -> None:
        if expected != actual:
            raise self.refuse(name, trail, f"expects channels on axis {expected} "
                              f"({_layout(expected, rank)}) but they are on axis {actual} "
                              f"({_layout(actual, rank)}), so it would mix them; {fix}")

    def inputs(self, name: str) -> list[str]:
        """The layers whose outputs `name` reads, in call order (repeats kept)."""
        tensors = self.layers[name].input
        tensors = tensors if isinstance(tensors, (list, tuple)) else [tensors]
        return [t._keras_history[0].name for t in tensors]


def _upstream_producer(flow: _Flow, name: str, path: list[str]) -> str:
    """Walks up through channel-keeping layers to the layer that makes the channels."""
    through = ("elementwise", "per_channel", "spatial", "global", "normalize")
    while True:
        layer = flow.layers.get(name)
        cls = type(layer).__name__
        if layer is None or cls == "InputLayer":
            raise EditError(f"delete_channels: the group reaches the model input through "
                            f"{' <- '.join(path)}; an input's channels can't be deleted",
                            layer=name)
        if _entry(cls).width:
            return name
        if _entry(cls).passes not in through:
            raise EditError(f"delete_channels: {cls} {name!r} on the path "
                            f"{' <- '.join(path)} is not supported in a coupled group", layer=name)
        ups = flow.pred.get(name, [])
        if len(ups) != 1:
            raise EditError(f"delete_channels: {cls} {name!r} has {len(ups)} inputs", layer=name)
        path = path + [ups[0]]
        name = ups[0]


def _merge(flow: _Flow, name: str, trail: list[str], couple: bool) -> bool:
    """An elementwise merge: its inputs lose the same channels. Returns True when it pulled
    new producers into the group (the pass must run again)."""
    cls = type(flow.layers[name]).__name__
    ins = flow.inputs(name)
    group = [flow.out[i][2][0] if i in flow.out else _upstream_producer(flow, i, trail + [i])
             for i in ins]
    new = [g for g in dict.fromkeys(group) if g not in flow.producers]
    if new:
        if not couple:
            raise EditError(f"delete_channels: {cls} {name!r} couples "
                            f"{', '.join(sorted(set(group)))}; their channels must go "
                            "together (couple=True deletes the whole group)", layer=name)
        first = flow.out[next(i for i in ins if i in flow.out)]
        for g in new:
            flow.producers[g] = first[1]
        return True
    seen = {(flow.out[i][0], tuple(flow.out[i][1])) for i in ins if i in flow.out}
    if len(seen) != 1 or len(set(ins) - set(flow.out)):
        parts = "; ".join(f"{i}: axis {flow.out[i][0]} channels {flow.out[i][1]}" if i in
                          flow.out else f"{i}: none" for i in dict.fromkeys(ins))
        raise flow.refuse(name, trail, f"would get inputs that lose different channels "
                          f"({parts}); delete channels of one layer per group")
    axis, chans = next(iter(seen))
    flow.out[name] = (axis, list(chans), trail)
    return False


def _concatenate(flow: _Flow, name: str, trail: list[str]) -> None:
    layer = flow.layers[name]
    rank = _rank(layer.output)
    axis = int(layer.axis) % rank
    offset, chans = 0, []
    for up, tensor in zip(flow.inputs(name), layer.input):
        if up in flow.out:
            up_axis, up_chans, _ = flow.out[up]
            if up_axis != axis:
                raise flow.refuse(name, trail, f"joins along axis {axis} but the channels are "
                                  f"on axis {up_axis}; only a Concatenate along the channel "
                                  "axis can be followed")
            chans += [offset + c for c in up_chans]
        offset += int(tensor.shape[axis])
    flow.out[name] = (axis, sorted(chans), trail)


def _flatten_rows(layer, axis: int, chans: list[int]) -> list[int]:
    """The rows of the flattened vector that hold `chans` (on `axis`) of the input."""
    if any(d is None for d in layer.input.shape[1:]):
        raise EditError(f"delete_channels: Flatten {layer.name!r} has an input of unknown "
                        f"shape {tuple(layer.input.shape)}; give the model a fixed input shape",
                        layer=layer.name)
    shape = [int(d) for d in layer.input.shape[1:]]
    dims = list(range(1, len(shape) + 1))
    if getattr(layer, "data_format", "channels_last") == "channels_first" and len(dims) > 1:
        dims = dims[1:] + dims[:1]  # Keras moves axis 1 last before flattening
    index = np.arange(int(np.prod(shape))).reshape([shape[d - 1] for d in dims])
    return sorted(np.take(index, chans, axis=dims.index(axis)).ravel().tolist())


def _step(flow: _Flow, name: str, couple: bool) -> bool:
    """Follows the deleted channels into layer `name`; True when a merge pulled in producers."""
    affected = [p for p in flow.pred.get(name, []) if p in flow.out]
    if not affected:
        return False
    layer = flow.layers[name]
    cls = type(layer).__name__
    axis, chans, path = flow.out[affected[0]]
    trail = path + [name]
    if name in flow.shared:
        raise EditError(f"delete_channels: {cls} {name!r} on the path "
                        f"{' -> '.join(trail)} is shared (called more than once); "
                        "deleting channels would give its calls different widths", layer=name)
    kind = _entry(cls)
    if kind.merge == "concatenate":
        return _concatenate(flow, name, trail)
    if kind.merge == "elementwise":
        return _merge(flow, name, trail, couple)
    if len(flow.pred.get(name, [])) != 1:
        raise flow.refuse(name, trail, f"takes {len(flow.pred[name])} inputs; only its "
                          "main input's channels can be followed")
    if kind.reads:
        _read(flow, name, axis, chans, path, trail)
        return False
    out_axis, out_chans = _pass(flow, name, axis, chans, trail)
    flow.out[name] = (out_axis, out_chans, trail)
    return False


def _format_fix(axis: int, rank: int) -> str:
    return f"build it with data_format='{_layout(axis, rank)}' to follow them"


def _read(flow: _Flow, name: str, axis: int, chans: list[int], path: list[str],
          trail: list[str]) -> None:
    """A layer that reads channels (Dense, Conv, recurrent...): its input weights will be
    sliced; refused when it reads another axis or is grouped."""
    layer = flow.layers[name]
    cls = type(layer).__name__
    rank = _rank(layer.input)
    if _entry(cls).axis == "last" or (cls == "TimeDistributed" and not hasattr(
            layer.layer, "data_format")):
        fix = "it reads the last axis; put a Flatten, a global pooling or a Permute before it"
    else:
        fix = _format_fix(axis, rank)
    self_groups = int(getattr(layer, "groups", 1) or 1)
    if self_groups != 1:
        raise flow.refuse(name, trail, f"is grouped (groups={self_groups}); its input "
                          "channels can't be deleted one by one")
    flow.axis_check(name, trail, _reader_axis(layer, rank), axis, rank, fix)
    flow.readers[name] = (chans, "Flatten" in [type(flow.layers[p]).__name__
                                                for p in path if p in flow.layers])


def _pass(flow: _Flow, name: str, axis: int, chans: list[int], trail: list[str]
          ) -> tuple[int, list[int]]:
    """A layer the channels pass through: (axis, channels) of its output, recording the
    layers whose own weights are sliced too (BatchNorm, PReLU, DepthwiseConv)."""
    layer = flow.layers[name]
    cls = type(layer).__name__
    kind = _entry(cls)
    rank = _rank(layer.input)
    if kind.passes == "elementwise":
        act = getattr(getattr(layer, "activation", None), "__name__", "")
        if act in _MIXING:
            raise flow.refuse(name, trail, f"applies {act}, which mixes channels")
        return axis, chans
    if kind.passes in ("spatial", "global"):
        fix = _format_fix(axis, rank) if hasattr(layer, "data_format") else (
            "it has no data_format; put Permute((2, 1)) before it or use channels_last layers")
        flow.axis_check(name, trail, _format_axis(layer, rank), axis, rank, fix)
        return (1 if kind.passes == "global" and not layer.keepdims else axis), chans
    if kind.passes == "per_channel":  # PReLU: its alpha holds a value per channel
        flow.axis_check(name, trail, rank - 1, axis, rank,
                        "it reads the last axis; put a Permute before it")
        flow.slices[name] = ("per_channel", chans)
        return axis, chans
    if kind.passes == "normalize":
        bn_axis = layer.axis  # a list of one axis in tf_keras
        bn_axis = bn_axis[0] if isinstance(bn_axis, (list, tuple)) and len(bn_axis) == 1 \
            else bn_axis
        if not isinstance(bn_axis, int):
            raise flow.refuse(name, trail, f"normalizes over axes {list(bn_axis)}; only a "
                              "BatchNormalization over the channel axis can be followed")
        flow.axis_check(name, trail, bn_axis % rank, axis, rank,
                        f"build it with axis={axis} to follow them")
        flow.slices[name] = ("bn", chans)
        return axis, chans
    if kind.passes == "depthwise":
        flow.axis_check(name, trail, _format_axis(layer, rank), axis, rank,
                        _format_fix(axis, rank))
        m = int(layer.depth_multiplier)
        flow.slices[name] = ("depthwise", chans)
        return axis, [c * m + j for c in chans for j in range(m)]
    if cls == "Flatten":
        return 1, _flatten_rows(layer, axis, chans)
    if cls == "Permute":
        return list(layer.dims).index(axis) + 1, chans
    raise flow.refuse(name, trail, "is not supported (it mixes or reshapes channels)")


def _walk(flow: _Flow, couple: bool) -> None:
    """Runs the pass until no merge pulls in another producer."""
    while True:
        flow.reset()
        pulled = False
        for name in flow.order:
            if name in flow.producers:
                _step(flow, name, couple)  # a producer may read deleted channels too
                layer = flow.layers[name]
                act = getattr(getattr(layer, "activation", None), "__name__", "")
                if (act in _MIXING and flow.succ.get(name)) or int(
                        getattr(layer, "groups", 1) or 1) != 1:
                    why = f"applies {act}, which mixes channels" if act in _MIXING else \
                        f"is grouped (groups={layer.groups})"
                    raise EditError(f"delete_channels: {type(layer).__name__} {name!r} "
                                    f"{why}; its output channels can't be deleted one by one",
                                    layer=name)
                flow.out[name] = (_producer_axis(layer), flow.producers[name], [name])
            elif _step(flow, name, couple):
                pulled = True
                break
            if flow.nested and name in flow.out and (name in flow.outputs or
                                                     not flow.succ.get(name)):
                raise EditError(f"delete_channels: the channels flow out of the nested model "
                                f"{flow.model.name!r} (through {' -> '.join(flow.out[name][2])}"
                                "); delete them where the outer model reads them, at the top "
                                "level", layer=name)
        if not pulled:
            return
