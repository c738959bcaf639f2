"""Weight sources over TF checkpoints and SavedModel/TF Hub directories.

Variables are read from the checkpoint (``<dir>/variables/variables`` for a SavedModel) with
`tf.train.load_checkpoint`: the graph is never loaded or run. Keys are object-graph paths with
``/.ATTRIBUTES/VARIABLE_VALUE`` dropped (``variables/0``, ``body/kernel``); a variable reachable
by two paths (a Keras export lists each twice) appears once, under its first path in natural
order (a private list such as ``_all_variables`` holding the same variable, same name, shape and
dtype, is dropped). Imports TensorFlow.
"""

from __future__ import annotations

import os
import re

import numpy as np

from ..entries import VariableInfo
from ..errors import FormatError
from .sources import WeightSource, check_real_dtype

__all__ = ["CheckpointSource", "open_checkpoint"]

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _natural(key: str):
    return (key.startswith("_"), [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)])


class CheckpointSource(WeightSource):
    """The variables of a TF checkpoint, read one tensor at a time."""

    def __init__(self, name: str, prefix: str, fmt: str):
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
        full_names = self._full_names(reader)
        seen: set[tuple] = set()
        variables = []
        for key in sorted(shapes, key=_natural):
            if key == _GRAPH_KEY or ".OPTIMIZER_SLOT" in key or not key.endswith(_SUFFIX) and \
                    fmt == "savedmodel":
                continue
            if "save_counter" in key.split("/"):
                continue
            identity = (full_names.get(key) or key, tuple(shapes[key]), dtypes[key].name)
            if identity in seen and key.startswith("_"):
                continue  # a second path to a variable already listed (Keras exports)
            seen.add(identity)
            path = key[: -len(_SUFFIX)] if key.endswith(_SUFFIX) else key
            variables.append(VariableInfo(path, tuple(int(d) for d in shapes[key]),
                                          dtypes[key].name, key=key))
        super().__init__(name, variables, [])
        self._reader = reader

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
        return CheckpointSource(path, prefix, "savedmodel")
    prefix = path[: -len(".index")] if path.endswith(".index") else path
    return CheckpointSource(path, prefix, "checkpoint")
