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
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import EditError, OptionError
from ..io.configs import model_config
from ..io.sources import open_weights
from ..layertypes import LayerType, classes, layer_type
from .core import EditResult, apply_edits, edit_nested, find_layer, graph, shared_layers

__all__ = ["delete_channels", "lowest_channels"]

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


def _live_graph(model) -> tuple[dict, dict, set] | None:
    """`core.graph` and `core.shared_layers` of a Keras 3 Functional model, read from its live
    nodes instead of its config: the same nodes (each layer's calls inside this model, with
    an input) and the same tensors in the same order (its arguments, depth first, as the
    config serializes them). A 100-layer model's config costs more than the whole walk.
    None for a model without those nodes (Sequential, tf_keras): then the config is read."""
    own, operations = getattr(model, "_nodes", None), getattr(model, "operations", None)
    if type(model).__name__ == "Sequential" or own is None or operations is None:
        return None
    try:
        from keras.src.ops.function import make_node_key
    except ImportError:  # pragma: no cover - another Keras: read the config
        return None
    succ: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    shared: set[str] = set()
    for op in operations:
        calls = [node for i, node in enumerate(getattr(op, "_inbound_nodes", ()))
                 if make_node_key(op, i) in own and node.input_tensors]
        if len(calls) > 1:
            shared.add(op.name)
        for node in calls:
            found: list[str] = []
            _tensor_sources((node.arguments.args, node.arguments.kwargs), found)
            for producer in dict.fromkeys(found):
                succ.setdefault(producer, []).append(op.name)
                pred.setdefault(op.name, []).append(producer)
    return succ, pred, shared


def _tensor_sources(value, found: list[str]) -> None:
    """The layer names of the Keras tensors in nested call arguments, depth first."""
    history = getattr(value, "_keras_history", None)
    if history is not None:
        found.append(history[0].name)
    elif isinstance(value, dict):
        for v in value.values():
            _tensor_sources(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _tensor_sources(v, found)


def _topological(names: list[str], pred: dict[str, list[str]]) -> list[str]:
    """Layers, each after the layers it reads (a shared layer's cycle is cut anywhere: the
    walk refuses shared layers on the path anyway)."""
    seen: set[str] = set()
    order: list[str] = []
    for root in dict.fromkeys(names):
        stack = [(root, False)]
        while stack:
            n, expanded = stack.pop()
            if expanded:
                order.append(n)
            elif n not in seen:
                seen.add(n)
                stack.append((n, True))
                stack.extend((p, False) for p in reversed(pred.get(n, [])) if p not in seen)
    return order


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


def _keep(n: int, drop) -> list[int]:
    gone = set(drop)
    return [i for i in range(n) if i not in gone]


class _Writer:
    """Writes the pruned values into the new model one variable at a time, recording each."""

    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.done: list[str] = []

    def put(self, key: str, value) -> None:
        self.dst.variable(key).assign(value)
        self.done.append(key)

    def cut(self, key: str, axis: int, drop) -> None:
        """The source variable without the `drop` entries of `axis`."""
        a = self.src.read(key)
        self.put(key, np.take(a, _keep(a.shape[axis], drop), axis=axis))


def _fill_producers(flow: _Flow, w: _Writer) -> None:
    """Replaced layers: their output units go from every variable that has them."""
    for name, drop in flow.producers.items():
        transpose = "Transpose" in type(flow.layers[name]).__name__
        for key in [k for k in w.src if k.startswith(name + "/")]:
            var = key.rsplit("/", 1)[1]
            if var in ("kernel", "pointwise_kernel", "embeddings", "bias"):
                w.cut(key, -2 if transpose and var == "kernel" else -1, drop)
            else:  # a separable conv's depthwise kernel keeps its shape
                w.put(key, w.src.read(key))


def _fill_slices(flow: _Flow, w: _Writer) -> None:
    """Layers the channels pass through with per-channel weights (BatchNorm, PReLU,
    DepthwiseConv): those weights lose the same channels."""
    for name, (how, drop) in flow.slices.items():
        m = int(getattr(flow.layers[name], "depth_multiplier", 1))
        for var in ("gamma", "beta", "moving_mean", "moving_variance", "kernel", "bias",
                    "alpha"):
            key = f"{name}/{var}"
            if key not in w.src:
                continue
            if how == "depthwise" and var == "kernel":  # (..., in, multiplier)
                w.cut(key, -2, drop)
            elif how == "depthwise":  # bias: channel c holds c*m .. c*m+m-1
                w.cut(key, 0, [c * m + j for c in drop for j in range(m)])
            elif how == "per_channel":  # alpha: the input's shape, channels last
                if w.src.shape(key)[-1] > 1:  # 1: shared over the channel axis
                    w.cut(key, -1, drop)
            else:
                w.cut(key, 0, drop)


def _fill_readers(flow: _Flow, w: _Writer) -> None:
    """Layers that read the channels: their input weights lose the matching rows."""
    for name, (drop, _) in flow.readers.items():
        reader_cls = type(flow.layers[name]).__name__
        for key in [k for k in w.src if k.startswith(name + "/")]:
            var = key.rsplit("/", 1)[1]
            # a coupled producer that also reads the channels: cut both axes
            a = (w.dst if key in w.done else w.src).read(key)
            if var == "kernel" and _entry(reader_cls).axis == "last":
                a = np.take(a, _keep(a.shape[0], drop), axis=0)
            elif var == "kernel" and "Transpose" in reader_cls:
                a = np.take(a, _keep(a.shape[-1], drop), axis=-1)
            elif var in ("kernel", "depthwise_kernel"):
                a = np.take(a, _keep(a.shape[-2], drop), axis=-2)
            elif var == "pointwise_kernel":
                m = w.src.shape(f"{name}/depthwise_kernel")[-1]
                gone = [c * m + j for c in drop for j in range(m)]
                a = np.take(a, _keep(a.shape[-2], gone), axis=-2)
            else:
                continue
            w.put(key, a)


def _fill(flow: _Flow):
    """The `fill` for `apply_edits`: writes every variable the deletion changes and returns
    their paths (the edit's converted variables)."""
    def fill(src_model, dst_model) -> list[str]:
        with open_weights(src_model) as src, open_weights(dst_model) as dst:
            w = _Writer(src, dst)
            _fill_producers(flow, w)
            _fill_slices(flow, w)
            _fill_readers(flow, w)
        return list(dict.fromkeys(w.done))
    return fill


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
