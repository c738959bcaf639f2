"""The Keras side of a PyTorch port: a flat model's weighted layers, in graph order.

`keras_graph(model)` walks a Functional or Sequential Keras 3 model (a live one, or a `.keras`
file built from its config, without its weights, in safe mode) and returns a `KerasGraph`: the
layers that hold weights, in topological order, each with its variables (canonical path and
shape), its config, its weighted predecessors (the nearest layers with weights on each path
back through weightless ones: activations, Add, pooling, Dropout, Flatten, padding...) and, for
a Dense reading a Flatten of a map, how PyTorch's flatten order differs (`feature_shape`, the
option `linear_from_torch` takes); plus the ancestor relation, so that the port can tell two
layers in parallel from two in series. Nested and subclassed models are refused: a port pairs
one flat graph. How each layer type pairs with a PyTorch module: `surgery.transfer.port_tables`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..entries import VariableInfo
from ..errors import FormatError, InputError, UnsupportedModelError

__all__ = ["GraphLayer", "KerasGraph", "keras_graph"]

# Weightless layers that rearrange positions: after one, a Flatten's order can't be derived.
_REARRANGING = {"Reshape", "Permute", "Flatten", "Lambda", "RepeatVector", "TimeDistributed"}
# Layers whose output keeps PyTorch's own layout ((N, T, E) both sides): no flatten reorder.
_SEQUENCE = {"Embedding", "LSTM", "GRU", "Bidirectional", "Dense", "SimpleRNN"}


@dataclass(frozen=True)
class GraphLayer:
    """One Keras layer with weights.

    Attributes:
        path: the layer's canonical path (its name, in a flat model).
        class_name: its Keras class; `inner` the wrapped class of a Bidirectional.
        variables: (variable name inside the layer, canonical path, shape), in model order.
        config: the layer's config; `inner_config` the wrapped layer's.
        preds: the paths of its weighted predecessors.
        feature_shape: for a Dense after a Flatten whose order differs from PyTorch's NCHW
            flatten, the map's (height, width, channels); None when the orders agree.
        flatten_problem: why that order can't be told (a Reshape on the way), or None.
    """

    path: str
    class_name: str
    variables: tuple[tuple[str, str, tuple[int, ...]], ...]
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    preds: tuple[str, ...] = ()
    feature_shape: tuple[int, int, int] | None = None
    flatten_problem: str | None = None
    inner: str = ""
    inner_config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of the layer's variable `name` (``kernel``, ``forward/bias``), or None."""
        for own, _, shape in self.variables:
            if own == name:
                return shape
        return None

    @property
    def label(self) -> str:
        """``name (Class)``, or ``name (Bidirectional(LSTM))``."""
        cls = f"{self.class_name}({self.inner})" if self.inner else self.class_name
        return f"'{self.path}' ({cls})"


@dataclass(frozen=True)
class KerasGraph:
    """A flat model's weighted layers in topological order, and which precede which."""

    name: str
    layers: tuple[GraphLayer, ...]
    ancestors: Mapping[str, frozenset] = field(compare=False, repr=False)
    variables: tuple[VariableInfo, ...] = field(default=(), compare=False, repr=False)

    def parallel(self, a: str, b: str) -> bool:
        """True when neither of the layers `a`, `b` feeds the other."""
        return a != b and a not in self.ancestors[b] and b not in self.ancestors[a]

    def descends(self, a: str, b: str) -> bool:
        """True when layer `b` feeds layer `a` (through any path)."""
        return b in self.ancestors[a]


def keras_graph(model: Any, *, safe_mode: bool = True) -> KerasGraph:
    """The weighted layers of a flat Functional or Sequential Keras 3 model, in graph order.

    Args:
        model: a live Keras 3 model, or a `.keras` path (built from its config in safe mode,
            without reading its weights).

    Raises:
        UnsupportedModelError: a subclassed model, a nested model, a tf_keras model.
        InputError, FormatError, UnsafeModelError: a path that is not a buildable `.keras`.
    """
    from ..io.livemodels import framework_of, is_live_model
    from ..io.sources import open_weights

    name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    if name is not None:
        model = _model_from_file(name, safe_mode)
    elif not is_live_model(model):
        raise InputError(f"a PyTorch port needs a Keras model or a .keras path, got "
                         f"{type(model).__name__}")
    name = name or getattr(model, "name", "model")
    if framework_of(model) == "tf_keras":
        raise UnsupportedModelError(f"{name}: a tf_keras (Keras 2) model; a PyTorch port reads "
                                    "Keras 3 models: convert it first (surgery convert)")
    functional = _functional(model, name)
    src = open_weights(model)
    infos = tuple(src.variables())
    owned: dict[str, list[tuple[str, str, tuple]]] = {}
    for v in infos:
        top = v.owners[0][0] if v.owners else v.layer
        owned.setdefault(top, []).append((v.path[len(top) + 1:], v.path, tuple(v.shape)))
    parents, inputs = _parents(functional)
    ops = _topological(functional.layers, parents)
    weighted = {op.name for op in ops if op.name in owned}
    for op in ops:
        if op.name in weighted and hasattr(op, "layers") and type(op).__name__ != "Bidirectional":
            raise UnsupportedModelError(
                f"{name}: layer '{op.name}' is a nested model ({type(op).__name__}); a PyTorch "
                "port pairs flat Functional and Sequential models: flatten it, or write the "
                "rules by hand (--rules R.toml)", layer=op.name)
    preds, ancestors = _relations(ops, parents, weighted)
    by_name = {op.name: op for op in ops}
    layers = tuple(_graph_layer(op, owned[op.name], preds[op.name],
                                _flatten(op, by_name, parents, inputs))
                   for op in ops if op.name in weighted)
    return KerasGraph(name, layers, {k: ancestors[k] for k in weighted}, infos)


def _model_from_file(path: str, safe_mode: bool) -> Any:
    """A `.keras` file's model built from its config alone (fresh weights, safe mode)."""
    from ..io.safety import check_config
    from ..io.sources import open_weights
    from ..io.tfimport import keras
    from ..text import first_line

    with open_weights(path) as src:
        if src.format != "keras" or not isinstance(src.config, dict):
            raise InputError(f"{path}: a PyTorch port reads the Keras model's graph from a "
                             f".keras file (this is {src.format}); load the model and pass it",
                             path=path)
        config = src.config
    if safe_mode:
        check_config(config, path)
    try:
        return keras().saving.deserialize_keras_object(config, safe_mode=safe_mode)
    except Exception as e:  # Keras raises many types; the user gets one line
        raise FormatError(f"{path}: Keras could not build the model from its config "
                          f"({first_line(e)})", path=path) from None


def _functional(model: Any, name: str) -> Any:
    """The Functional graph of `model` (a Sequential's inner one)."""
    from ..io.tfimport import keras

    k = keras()
    graph = model
    if isinstance(model, k.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise UnsupportedModelError(f"{name}: a Sequential model without an input shape "
                                        "has no graph yet; build it with keras.Input(shape) "
                                        "first")
    if not hasattr(graph, "_nodes_by_depth") or not isinstance(graph, k.Model):
        raise UnsupportedModelError(f"{name}: a subclassed model ({type(model).__name__}) has "
                                    "no layer graph to pair; a PyTorch port pairs flat "
                                    "Functional and Sequential models (or write the rules by "
                                    "hand: --rules R.toml)")
    return graph


def _parents(graph: Any) -> tuple[dict[str, list[str]], dict[str, tuple]]:
    """Each operation's parent operations, and the shape of its first input."""
    parents: dict[str, list[str]] = {}
    inputs: dict[str, tuple] = {}
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            name = node.operation.name
            have = parents.setdefault(name, [])
            for p in node.parent_nodes:
                if p.operation.name not in have:
                    have.append(p.operation.name)
            tensors = list(getattr(node, "input_tensors", None) or ())
            if tensors and name not in inputs:
                inputs[name] = tuple(tensors[0].shape)
    return parents, inputs


def _topological(ops, parents) -> list:
    """`ops` ordered so that each follows its parents (ties keep the model's order)."""
    done: set[str] = set()
    out = []
    todo = [op for op in ops if op.name in parents]
    while todo:
        left = []
        for op in todo:
            if all(p in done for p in parents[op.name]):
                done.add(op.name)
                out.append(op)
            else:
                left.append(op)
        if len(left) == len(todo):  # a cycle can't happen in a Keras graph; keep them all
            out += left
            break
        todo = left
    return out


def _relations(ops, parents, weighted) -> tuple[dict, dict]:
    """Each layer's weighted predecessors (in order) and weighted ancestors."""
    preds: dict[str, tuple[str, ...]] = {}
    ancestors: dict[str, frozenset] = {}
    for op in ops:
        near: list[str] = []
        far: set[str] = set()
        for p in parents[op.name]:
            for q in ((p,) if p in weighted else preds.get(p, ())):
                if q not in near:
                    near.append(q)
            far |= ancestors.get(p, frozenset()) | ({p} if p in weighted else set())
        preds[op.name], ancestors[op.name] = tuple(near), frozenset(far)
    return preds, ancestors


def _graph_layer(op, variables, preds, flatten) -> GraphLayer:
    inner = getattr(op, "forward_layer", None)
    return GraphLayer(op.name, type(op).__name__, tuple(variables), _config(op), preds,
                      flatten[0], flatten[1], type(inner).__name__ if inner is not None else "",
                      _config(inner) if inner is not None else {})


def _config(op) -> dict:
    try:
        return dict(op.get_config())
    except (NotImplementedError, TypeError, ValueError, AttributeError):
        return {}


def _flatten(op, by_name, parents, inputs) -> tuple[tuple | None, str | None]:
    """(feature_shape, problem) for a Dense reading a Flatten through weightless layers; a
    Flatten whose order differs from PyTorch's, reached through a merge (Concatenate...), is a
    problem: its rows are one part of the Dense's."""
    if type(op).__name__ != "Dense":
        return None, None
    found, merged, todo, seen = [], None, [op.name], set()
    while todo:
        name = todo.pop()
        ps = [by_name[p] for p in parents.get(name, []) if p in by_name]
        if len(ps) > 1:
            merged = merged or f"{type(by_name[name]).__name__} '{name}'"
        for p in ps:
            if p.name in seen or p.weights or type(p).__name__ == "InputLayer":
                continue
            seen.add(p.name)
            if type(p).__name__ == "Flatten":
                found.append(_flatten_order(p, by_name, parents, inputs.get(p.name)))
            else:
                todo.append(p.name)
    orders = [f for f in found if f != (None, None)]
    if not orders:
        return None, None
    if len(found) == 1 and merged is None:
        return orders[0]
    return None, orders[0][1] or (f"{merged} merges the rows of a Flatten whose order differs "
                                  "from PyTorch's with other rows")


def _flatten_order(flat, by_name, parents, shape) -> tuple[tuple | None, str | None]:
    dims = tuple(shape[1:]) if shape else ()
    if len(dims) < 2 or any(d is None for d in dims):
        return None, None
    layout, via = _layout(flat, by_name, parents)
    flat_cf = _config(flat).get("data_format") == "channels_first"
    where = f"the Flatten '{flat.name}'"
    if layout == "rearranged":
        return None, f"{where} reads a map that {via} rearranged"
    if layout == "sequence" or (layout == "channels_first" and not flat_cf):
        return None, None  # the same order as PyTorch's flatten
    if layout == "channels_first":  # Keras moves the channels last before flattening
        channels, spatial = dims[0], dims[1:]
    elif flat_cf:
        return None, f"{where} (data_format channels_first) reads a channels-last map"
    else:
        channels, spatial = dims[-1], dims[:-1]
    if channels == 1 or math.prod(spatial) == 1:
        return None, None
    if layout == "input":
        return None, (f"{where} reads the model input {dims} directly, and whether PyTorch "
                      "flattened it as NCHW or NHWC can't be told")
    return (math.prod(spatial[:-1]), spatial[-1], channels), None


def _layout(flat, by_name, parents) -> tuple[str, str]:
    """The layout of the map a Flatten reads: channels_first|channels_last (from the nearest
    layer with a data_format), sequence, input or rearranged; and the layer that says so."""
    cur = flat.name
    while True:
        ps = parents.get(cur, [])
        if not ps or ps[0] not in by_name:
            return "input", ""
        p = by_name[ps[0]]
        cls = type(p).__name__
        if cls == "InputLayer":
            return "input", p.name
        if cls in _REARRANGING:
            return "rearranged", f"{cls} '{p.name}'"
        fmt = _config(p).get("data_format")
        if fmt in ("channels_first", "channels_last"):
            return fmt, p.name
        if cls in _SEQUENCE:
            return "sequence", p.name
        cur = p.name
