"""Weight sources over TF checkpoints and SavedModel/TF Hub directories.

Variables are read from the checkpoint (``<dir>/variables/variables`` for a SavedModel) with
`tf.train.load_checkpoint`: the graph is never loaded or run. Each variable has one path:

- a SavedModel written by tf_keras's ``model.save`` carries ``keras_metadata.pb`` (each
  layer's name and class): its variables get the canonical paths of the live tf_keras model
  (``conv2d_1/kernel``, ``trunk/feat/kernel``, ``enc/kernel`` for an LSTM's cell,
  ``bi/forward/kernel``), and its layers are listed with their classes and configs;
- a tf_keras model saved with ``tf.saved_model.save`` has no such file, but each variable
  keeps its tf_keras name: ``conv2d_1/kernel`` (``weight.name`` without ``:0``; an LSTM's are
  ``enc/lstm_cell/kernel``);
- anything else (a `tf.Module`, a Keras 3 ``model.export``, a plain TF checkpoint) keeps its
  object-graph path with ``/.ATTRIBUTES/VARIABLE_VALUE`` dropped (``l1/kernel``,
  ``variables/0``).

A variable reachable by two paths (a Keras 3 export lists each twice) appears once, under its
first path in natural order (a private list such as ``_all_variables`` holding the same
variable, same name, shape and dtype, is dropped). Optimizer slots and metric totals are not
weights: they are listed apart in `CheckpointSource.state`. `hub_layer` names a module's
variables through the same table (`CheckpointSource.node_paths`), so ``surgery inspect DIR``
and a model built with ``hub_layer(DIR)`` show the same path, under the hub layer's name in the
latter (``hub/conv2d_1/kernel``). Imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

import numpy as np

from ..entries import LayerInfo, VariableInfo
from ..errors import FormatError
from .describe import StateVariable, is_wrapper
from .keras2 import keras3_layer_name, keras3_variable_name
from .sources import WeightSource, check_real_dtype

__all__ = ["CheckpointSource", "open_checkpoint", "SavedModelGraph", "split_key"]

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_MODELS = ("_tf_keras_network", "_tf_keras_sequential", "_tf_keras_model")
_LAYER_N = re.compile(r"layer-(\d+)$")


def _natural(key: str):
    return (key.startswith("_"), [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)])


def split_key(path: str) -> list[str]:
    """The local names along a checkpoint key (TF escapes ``.`` as ``..`` and ``/`` as
    ``.S`` inside a name)."""
    parts, cur, i = [], [], 0
    while i < len(path):
        c = path[i]
        if c == "." and path[i + 1:i + 2] in (".", "S"):
            cur.append("." if path[i + 1] == "." else "/")
            i += 2
            continue
        if c == "/":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _fields(buf: bytes):
    """(field number, value) pairs of one protobuf message (varints as ints, length-delimited
    as bytes); raises ValueError on anything malformed."""
    i = 0

    def varint():
        nonlocal i
        out = shift = 0
        while True:
            if i >= len(buf) or shift > 63:
                raise ValueError("truncated varint")
            b = buf[i]
            i += 1
            out |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return out

    while i < len(buf):
        tag = varint()
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            yield number, varint()
        elif wire == 2:
            n = varint()
            if i + n > len(buf):
                raise ValueError("truncated field")
            yield number, buf[i:i + n]
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")


def _keras_metadata(directory: str) -> dict[int, dict]:
    """node id -> the Keras metadata of that object (``name``, ``class_name``, ``config``,
    ``trainable``, ``identifier``) from ``keras_metadata.pb``; empty when there is none or it
    can't be read (the paths then fall back, see the module docstring)."""
    path = os.path.join(directory, "keras_metadata.pb")
    if not os.path.isfile(path):
        return {}
    out: dict[int, dict] = {}
    try:
        with open(path, "rb") as f:
            data = f.read()
        for number, node in _fields(data):
            if number != 1:
                continue
            fields = dict(_fields(node))
            meta = json.loads(fields.get(5, b"{}").decode("utf-8"))
            if isinstance(meta, dict) and isinstance(meta.get("name"), str) and meta["name"]:
                out[int(fields.get(2, 0))] = {
                    "identifier": fields.get(4, b"").decode("utf-8"), "name": meta["name"],
                    "class_name": meta.get("class_name") if isinstance(
                        meta.get("class_name"), str) else "",
                    "config": meta.get("config") if isinstance(meta.get("config"), dict)
                    else None, "trainable": meta.get("trainable")}
    except (ValueError, UnicodeDecodeError, OSError):
        return {}
    return out


class SavedModelGraph:
    """The object graph of a SavedModel (``saved_model.pb``) with its Keras metadata.

    Attributes:
        nodes: the graph's nodes (``SavedObject`` protos), by id; empty when unreadable.
        meta: node id -> Keras metadata (`_keras_metadata`).
    """

    def __init__(self, directory: str):
        from tensorflow.core.protobuf import saved_model_pb2

        self.nodes: list = []
        try:
            with open(os.path.join(directory, "saved_model.pb"), "rb") as f:
                model = saved_model_pb2.SavedModel.FromString(f.read())
            self.nodes = list(model.meta_graphs[0].object_graph_def.nodes)
        except Exception:  # a damaged graph only loses the readable names
            self.nodes = []
        self.meta = {k: v for k, v in _keras_metadata(directory).items()
                     if k < len(self.nodes)} if self.nodes else {}

    def children(self, node: int) -> list[tuple[str, int]]:
        return [(c.local_name, c.node_id) for c in self.nodes[node].children
                if 0 <= c.node_id < len(self.nodes)]

    def child(self, node: int, name: str) -> int | None:
        return next((i for n, i in self.children(node) if n == name), None)

    def resolve(self, parts: Sequence[str]) -> int | None:
        """The node reached from the root along local names; None where the path breaks."""
        node: int | None = 0 if self.nodes else None
        for name in parts:
            node = None if node is None else self.child(node, name)
        return node

    def identifier(self, node: int) -> str:
        n = self.nodes[node]
        return n.user_object.identifier if n.WhichOneof("kind") == "user_object" else ""

    def is_variable(self, node: int) -> bool:
        return self.nodes[node].WhichOneof("kind") == "variable"

    def variable_name(self, node: int) -> str:
        return self.nodes[node].variable.name.split(":")[0]

    def state_kind(self, parts: Sequence[str]) -> str | None:
        """``optimizer`` or ``metric`` for a variable held by an optimizer or a Keras metric
        (by the identifiers along its path), else None."""
        node: int | None = 0 if self.nodes else None
        for name in [None, *parts]:
            node = node if name is None else (None if node is None else self.child(node, name))
            if node is None:
                return None
            ident = self.identifier(node).lower()
            if "optimizer" in ident:
                return "optimizer"
            if "metric" in ident:
                return "metric"
        return None

    def trainable(self) -> set[int] | None:
        """Nodes in the root's ``trainable_variables`` list; None when it has none."""
        if not self.nodes:
            return None
        lst = self.child(0, "trainable_variables")
        return None if lst is None else {i for _, i in self.children(lst)}


def _state_kind_by_path(parts: Sequence[str], key: str) -> str | None:
    if ".OPTIMIZER_SLOT" in key or (parts and parts[0] == "optimizer"):
        return "optimizer"
    if "keras_api" in parts and "metrics" in parts:
        return "metric"
    return None


class _KerasWalk:
    """Canonical paths of a tf_keras SavedModel's variables from its metadata, walked the way
    `io.livemodels` walks the live model: a model's ``layer-N`` by name (no InputLayer), a
    Bidirectional's ``forward``/``backward``, RNN cells and wrapped layers adding no name, a
    custom layer's sublayers by name."""

    def __init__(self, graph: SavedModelGraph):
        self.g = graph
        self.paths: dict[int, tuple[str, str, tuple]] = {}  # var node -> path, layer, owners
        self.layers: list[LayerInfo] = []
        self.seen: set[int] = set()
        if 0 in graph.meta and graph.meta[0]["identifier"] in _MODELS:
            for component, child in self._named(0):
                self.visit(child, [component] if component else [], (), 0, bool(component))

    def _named(self, node: int) -> list[tuple[str | None, int]]:
        meta, g = self.g.meta, self.g
        cls = meta[node].get("class_name", "")
        kids = [(n, i) for n, i in g.children(node) if i in meta and n != "keras_api"]
        if cls == "Bidirectional":
            return [(c, i) for c, n in (("forward", "forward_layer"), ("backward",
                                                                        "backward_layer"))
                    for i in [g.child(node, n)] if i in meta]
        numbered = sorted((int(m.group(1)), i) for n, i in kids for m in [_LAYER_N.match(n)]
                          if m)
        if meta[node]["identifier"] in _MODELS and numbered:
            return [(keras3_layer_name(meta[i]["name"]), i) for _, i in numbered
                    if meta[i].get("class_name") != "InputLayer"]
        for name in ("cell",) + (("layer",) if is_wrapper(cls) else ()):
            inner = g.child(node, name)
            if inner in meta:
                return [(None, inner)]
        return [(keras3_layer_name(meta[i]["name"]), i) for _, i in kids]

    def visit(self, node: int, prefix: list[str], owners: tuple, depth: int,
              named: bool) -> None:
        if node in self.seen:
            return
        self.seen.add(node)
        meta = self.g.meta[node]
        cls = meta.get("class_name", "")
        path = "/".join(prefix)
        if named:
            owners = owners + ((path, cls),)
            trainable = meta.get("trainable")
            self.layers.append(LayerInfo(path, cls, trainable if isinstance(trainable, bool)
                                         else None, depth, meta.get("config")))
        for local, child in self.g.children(node):
            if self.g.is_variable(child) and child not in self.paths:
                own = self.g.variable_name(child).rsplit("/", 1)[-1] or local
                layer, layer_cls = owners[-1] if owners else ("", "")
                self.paths[child] = ("/".join(prefix + [keras3_variable_name(layer_cls, own)]),
                                     layer, owners)
        for component, child in self._named(node):
            if component is None:
                self.visit(child, prefix, owners, depth, False)
            else:
                self.visit(child, prefix + [component], owners, depth + 1,
                           component not in ("forward", "backward"))


class CheckpointSource(WeightSource):
    """The variables of a TF checkpoint, read one tensor at a time.

    Attributes:
        state: optimizer and metric variables (`StateVariable`), not weights: not keys of the
            mapping and not counted as parameters.
        node_paths: for a SavedModel, object-graph node id -> the path its variable has here.
        graph: the SavedModel's `SavedModelGraph` (None for a plain checkpoint).
    """

    def __init__(self, name: str, prefix: str, fmt: str, directory: str | None = None):
        from .tfimport import tensorflow

        tf = tensorflow()
        self.format = fmt
        try:
            reader = tf.train.load_checkpoint(prefix)
            shapes = reader.get_variable_to_shape_map()
            dtypes = reader.get_variable_to_dtype_map()
        except (tf.errors.OpError, ValueError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise FormatError(f"{name}: can't read its checkpoint ({msg})") from None
        self.graph = SavedModelGraph(directory) if directory else None
        self.state: list[StateVariable] = []
        self.node_paths: dict[int, str] = {}
        full_names = self._full_names(reader)
        seen: set[tuple] = set()
        rows = []  # (object path, node, info args)
        for key in sorted(shapes, key=_natural):
            if key == _GRAPH_KEY or not key.endswith(_SUFFIX) and fmt == "savedmodel":
                continue
            if "save_counter" in key.split("/"):
                continue
            path = key[: -len(_SUFFIX)] if key.endswith(_SUFFIX) else key
            shape, dtype = tuple(int(d) for d in shapes[key]), dtypes[key].name
            parts = split_key(path) if key.endswith(_SUFFIX) else [path]
            kind = (self.graph.state_kind(parts) if self.graph else None) or \
                _state_kind_by_path(parts, key)
            node = self.graph.resolve(parts) if self.graph and key.endswith(_SUFFIX) else None
            if kind:
                label = self.graph.variable_name(node) if node is not None else ""
                self.state.append(StateVariable(path, kind, shape, dtype, label))
                continue
            identity = (full_names.get(key) or key, shape, dtype)
            if identity in seen and key.startswith("_"):
                continue  # a second path to a variable already listed (Keras exports)
            seen.add(identity)
            rows.append((path, node, shape, dtype, key))
        variables, layers = self._readable(rows)
        super().__init__(name, variables, layers)
        self._reader = reader

    def _readable(self, rows) -> tuple[list[VariableInfo], list[LayerInfo]]:
        """VariableInfo per row under the readable paths the module docstring describes,
        falling back to object-graph paths when they don't name every variable once."""
        g = self.graph
        trainable = g.trainable() if g else None
        try:
            walk = _KerasWalk(g) if g and g.meta else None
        except RecursionError:  # a hostile graph nested past Python's stack
            walk = None
        tf_names = {}
        if g and not walk and g.nodes and g.identifier(0).startswith("_tf_keras_"):
            tf_names = {node: g.variable_name(node) for _, node, *_ in rows
                        if node is not None and g.variable_name(node)}
        order = {n: i for i, n in enumerate(walk.paths)} if walk else self._model_order()
        readable = {}
        for path, node, *_ in rows:
            if walk is not None and node in walk.paths:
                readable[path] = walk.paths[node]
            elif node in tf_names:
                readable[path] = (tf_names[node], "", ())
        names = [r[0] for r in readable.values()]
        if len(readable) != len(rows) or len(set(names)) != len(names):
            readable, walk = {}, None
        rows = sorted(rows, key=lambda r: order.get(r[1], len(order)))
        out = []
        for path, node, shape, dtype, key in rows:
            shown, layer, owners = readable.get(path, (path, "", ()))
            flag = None if trainable is None or node is None else node in trainable
            out.append(VariableInfo(shown, shape, dtype, flag, layer,
                                    owners[-1][1] if owners else "", owners, key=key))
            if node is not None:
                self.node_paths[node] = shown
        return out, (walk.layers if walk else [])

    def _model_order(self) -> dict[int, int]:
        """node -> its position in the root's ``variables`` list (the model's order)."""
        g = self.graph
        lst = g.child(0, "variables") if g and g.nodes else None
        return {} if lst is None else {n: i for i, (_, n) in enumerate(g.children(lst))}

    @staticmethod
    def _full_names(reader) -> dict[str, str]:
        if not reader.has_tensor(_GRAPH_KEY):
            return {}
        from tensorflow.core.protobuf import trackable_object_graph_pb2

        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        try:
            graph.ParseFromString(reader.get_tensor(_GRAPH_KEY))
        except Exception:  # a damaged graph only loses deduplication
            return {}
        return {a.checkpoint_key: a.full_name for n in graph.nodes for a in n.attributes
                if a.full_name}

    def _read(self, info: VariableInfo) -> np.ndarray:
        check_real_dtype(info.dtype, f"{self.name}: {info.key}")
        return np.array(self._reader.get_tensor(info.key), copy=True)


def open_checkpoint(path: str, *, savedmodel: bool) -> CheckpointSource:
    """Opens a SavedModel/Hub directory or a TF checkpoint prefix."""
    if savedmodel:
        prefix = os.path.join(path, "variables", "variables")
        if not os.path.isfile(prefix + ".index"):
            raise FormatError(f"{path}: a SavedModel without variables/variables.index, so it "
                              "holds no weights to read", path=path)
        return CheckpointSource(path, prefix, "savedmodel", directory=path)
    prefix = path[: -len(".index")] if path.endswith(".index") else path
    return CheckpointSource(path, prefix, "checkpoint")
