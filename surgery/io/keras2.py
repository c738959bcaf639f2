"""Keras 2 (tf_keras) → Keras 3: what changed in layer configs and variable names.

Keras 3 rebuilds most Keras 2 configs as they are, but a few arguments were removed or renamed
and a few layers dropped. This table says, per layer class, what a Keras 2 config key becomes:

- ``drop``: removed in Keras 3, and harmless only at the value Keras 3 always behaves as
  (``time_major=False``, a DepthwiseConv's ``groups=1``); any other value is refused, since
  dropping it would silently change the function;
- ``rename``: the same argument under a new name (LeakyReLU's ``alpha`` → ``negative_slope``);
- ``one_axis``: a one-element list that Keras 3 takes as an int (BatchNormalization ``axis``).

Variable names too: a Keras 2 DepthwiseConv's ``depthwise_kernel`` is Keras 3's ``kernel``, so
the canonical path of a Keras 2 file equals that of the same architecture built in Keras 3.

This is about the Keras 2 file format, not about how layers behave: it lives beside the
readers (`io.h5layout` reads the names, `model.saving` rebuilds the config), not in
`layertypes`. Pure Python: no TensorFlow.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import UnsupportedModelError

__all__ = ["Keras2Rule", "KERAS2_RULES", "REMOVED_IN_KERAS3", "translate_config",
           "keras3_layer_name", "keras3_variable_name"]

_RECURRENT = ("LSTM", "GRU", "SimpleRNN", "RNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")


@dataclass(frozen=True)
class Keras2Rule:
    """How one layer class's Keras 2 config and variables map to Keras 3.

    Attributes:
        drop: config keys Keras 3 removed, each with the one value Keras 3 always behaves as.
        rename: config keys Keras 3 renamed (old → new).
        one_axis: config keys whose one-element list becomes an int.
        variables: variable names Keras 3 renamed (old → new).
    """

    drop: Mapping[str, Any] = field(default_factory=dict)
    rename: Mapping[str, str] = field(default_factory=dict)
    one_axis: tuple[str, ...] = ()
    variables: Mapping[str, str] = field(default_factory=dict)


KERAS2_RULES: dict[str, Keras2Rule] = {
    **{cls: Keras2Rule(drop={"time_major": False}) for cls in _RECURRENT},
    **{f"DepthwiseConv{d}D": Keras2Rule(drop={"groups": 1},
                                        variables={"depthwise_kernel": "kernel"})
       for d in (1, 2)},
    "BatchNormalization": Keras2Rule(one_axis=("axis",)),
    "LeakyReLU": Keras2Rule(rename={"alpha": "negative_slope"}),
    "Embedding": Keras2Rule(drop={"input_length": None, "sparse": False}),
    "Softmax": Keras2Rule(drop={"robust_masking": False}),
    "MultiHeadAttention": Keras2Rule(drop={"softmax_robust_masking": False}),
}

# Keras 2 layers Keras 3 does not have, with what to do instead.
REMOVED_IN_KERAS3 = {
    "LocallyConnected1D": "Keras 3 has no locally connected layers",
    "LocallyConnected2D": "Keras 3 has no locally connected layers",
    "DenseFeatures": "feature columns are gone in Keras 3; use preprocessing layers",
    "ThresholdedReLU": "use a ReLU layer with threshold=",
    "RandomHeight": "Keras 3 has no RandomHeight; use RandomZoom or Resizing",
    "RandomWidth": "Keras 3 has no RandomWidth; use RandomZoom or Resizing",
    "CuDNNLSTM": "use LSTM (Keras 3 picks the cuDNN kernel itself)",
    "CuDNNGRU": "use GRU with reset_after=True (Keras 3 picks the cuDNN kernel itself)",
}

_EMBEDDING_INPUT_LENGTH = "input_length"  # any value: Keras 3 infers it from the input


def keras3_layer_name(name: str) -> str:
    """Keras 3 refuses ``/`` in layer names; its applications renamed tf_keras's ``conv1/conv``
    to ``conv1_conv``, and so does this translation."""
    return name.replace("/", "_")


def keras3_variable_name(layer_class: str, name: str) -> str:
    """The Keras 3 name of a Keras 2 variable of a `layer_class` layer."""
    rule = KERAS2_RULES.get(layer_class)
    return rule.variables.get(name, name) if rule else name


def translate_config(config: Mapping, where: str) -> tuple[dict, list[str]]:
    """A Keras 2 model config that Keras 3 rebuilds to the same function, and one note per
    change made. The input is not modified.

    Raises:
        UnsupportedModelError: a layer Keras 3 does not have, or a removed argument at a value
            Keras 3 can't reproduce (naming the layer, the argument and its value).
    """
    out = copy.deepcopy(dict(config))
    notes: list[str] = []
    _walk(out, where, notes)
    renamed = {n: keras3_layer_name(n) for n in _layer_names(out) if "/" in n}
    clash = sorted(set(renamed.values()) & set(_layer_names(out)))
    if clash:
        raise UnsupportedModelError(
            f"{where}: layer names with '/' (Keras 3 refuses them) become {clash[0]!r}, which "
            "another layer already has; rename the layers in Keras 2 first", layer=clash[0])
    if renamed:
        _rename(out, renamed)
        notes.extend(f"{old}: renamed {new} (Keras 3 refuses '/' in names)"
                     for old, new in renamed.items())
    return out, notes


def _layer_names(item: Any) -> list[str]:
    """Every layer name in a config, nested models included."""
    names: list[str] = []
    if isinstance(item, list):
        for value in item:
            names.extend(_layer_names(value))
    elif isinstance(item, dict):
        cfg = item.get("config")
        if isinstance(item.get("class_name"), str) and isinstance(cfg, dict) and \
                isinstance(cfg.get("name"), str):
            names.append(cfg["name"])
        for value in item.values():
            names.extend(_layer_names(value))
    return names


def _rename(item: Any, renamed: Mapping[str, str]) -> None:
    """Renames layers in place: their ``name`` fields and every node reference ``[name,
    node_index, tensor_index, ...]`` (inbound nodes, model inputs and outputs, Keras 3
    ``keras_history``)."""
    if isinstance(item, list):
        if len(item) >= 2 and isinstance(item[0], str) and item[0] in renamed and \
                isinstance(item[1], int):
            item[0] = renamed[item[0]]
        for value in item:
            _rename(value, renamed)
    elif isinstance(item, dict):
        cfg = item.get("config")
        if isinstance(item.get("class_name"), str) and isinstance(cfg, dict):  # a layer
            for owner in (item, cfg):
                if isinstance(owner.get("name"), str) and owner["name"] in renamed:
                    owner["name"] = renamed[owner["name"]]
        for value in item.values():
            _rename(value, renamed)


def _walk(item: Any, where: str, notes: list[str]) -> None:
    if isinstance(item, list):
        for value in item:
            _walk(value, where, notes)
        return
    if not isinstance(item, dict):
        return
    cls, cfg = item.get("class_name"), item.get("config")
    if isinstance(cls, str) and isinstance(cfg, dict):
        _translate_layer(cls, cfg, where, notes)
    for value in item.values():
        _walk(value, where, notes)


def _translate_layer(cls: str, cfg: dict, where: str, notes: list[str]) -> None:
    name = cfg.get("name", "?")
    if cls in REMOVED_IN_KERAS3:
        raise UnsupportedModelError(
            f"{where}: layer {name!r} is a Keras 2 {cls}, which Keras 3 can't rebuild "
            f"({REMOVED_IN_KERAS3[cls]}); load it as Keras 2 (load_model(..., legacy=True)) "
            "and replace that layer, or transplant its weights into a Keras 3 model you build",
            layer=name)
    rule = KERAS2_RULES.get(cls)
    if rule is None:
        return
    for key, value in rule.drop.items():
        if key not in cfg:
            continue
        if key != _EMBEDDING_INPUT_LENGTH and cfg[key] != value:
            raise UnsupportedModelError(
                f"{where}: layer {name!r} ({cls}) has {key}={cfg[key]!r}, which Keras 3 "
                f"removed (it always behaves as {key}={value!r}); rebuild that layer without "
                "it in Keras 2 first, or load the model as Keras 2 (legacy=True)", layer=name)
        del cfg[key]
        notes.append(f"{name}: dropped {key} (Keras 3 removed it)")
    for old, new in rule.rename.items():
        if old in cfg:
            cfg[new] = cfg.pop(old)
            notes.append(f"{name}: {old} -> {new}")
    for key in rule.one_axis:
        value = cfg.get(key)
        if isinstance(value, list):
            if len(value) != 1 or not isinstance(value[0], int):
                raise UnsupportedModelError(
                    f"{where}: layer {name!r} ({cls}) normalizes over axes {value}; Keras 3's "
                    f"{cls} takes one axis; load the model as Keras 2 (legacy=True)",
                    layer=name)
            cfg[key] = value[0]
            notes.append(f"{name}: {key} {value} -> {value[0]}")
