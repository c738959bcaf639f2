"""The model copies `finetune` trains and returns: a clean, uncompiled copy with the weights
(`_clean_copy`), a copy computing in float16/bfloat16 for mixed precision (`_mixed_copy`;
subclassed models through their serialized config), and back to the original float32 dtype
policies after training. Moved from `train/finetune.py`."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedModelError

__all__: list[str] = []


def _clean_copy(model, config: dict | None = None):
    """A new, uncompiled model from `config` (default: the model's own; a subclassed model
    that serializes, such as a keras-hub task, is copied as Keras saves and loads it) with
    its weights."""
    from ..model.rebuild import carry_weights, copy_model, rebuild

    if config is None:
        return copy_model(model)
    fresh = rebuild(model, config)
    carry_weights(model, fresh)
    return fresh


def _policy_name(keras) -> str:
    from ..io.tfimport import tensorflow

    gpus = tensorflow().config.list_logical_devices("GPU")
    return "mixed_float16" if gpus else "mixed_bfloat16"


def _with_dtypes(config: dict, original: dict) -> dict:
    """`config` (trainable flags as trained) with each layer's dtype policy from `original`."""
    from ..model.rebuild import iter_layer_configs

    policies = {p: lc.get("config", {}).get("dtype") for p, lc in iter_layer_configs(original)}
    for path, lc in iter_layer_configs(config):
        if path in policies and isinstance(lc.get("config"), dict) and "dtype" in lc["config"]:
            lc["config"]["dtype"] = policies[path]
    return config


def _float_policies(config: Any, policy, names: tuple = ("float32",)) -> None:
    """Replaces, in place, every dtype policy named in `names` that a serialized layer holds
    (a keras-hub backbone's ``dtype``, which its layers follow) with `policy(old)`, in a
    fixed walk order; integer inputs keep theirs."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            old = item.get("dtype")
            name = (old.get("config") or {}).get("name") if isinstance(old, dict) else old
            if "name" in item and name in names:
                item["dtype"] = policy(old)
            stack.extend(v for k, v in item.items() if k != "dtype")
        elif isinstance(item, list):
            stack.extend(item)


def _mixed_serialized(model, keras):
    """A subclassed model that serializes (a keras-hub task), copied with the mixed policy
    wherever its config holds a float32 one (a keras-hub head follows its backbone's policy,
    and Keras's losses compute in float32)."""
    from ..model.rebuild import carry_weights, rebuild_serialized, serialized_config

    config = serialized_config(model)
    if config is None:
        raise UnsupportedModelError(f"{model.name}: --mixed-precision trains a copy with another "
                                    "dtype policy, and this subclassed model has no config to "
                                    "copy it from (no get_config); train it without "
                                    "--mixed-precision")
    name = _policy_name(keras)
    _float_policies(config, lambda old: {"module": "keras", "class_name": "DTypePolicy",
                                         "config": {"name": name}, "registered_name": None})
    fresh = rebuild_serialized(model, config)
    carry_weights(model, fresh)
    return fresh


def _float32_serialized(model, original: dict, keras):
    """The trained subclassed model (trainable flags as trained) with the dtype policies of
    `original` (its serialized config before mixed precision), weights carried by path."""
    from ..model.rebuild import carry_weights, rebuild_serialized, serialized_config

    config = serialized_config(model)
    policies = []
    _float_policies(original, lambda old: policies.append(old) or old)
    _float_policies(config, lambda old: policies.pop(0) if policies else old,
                    (_policy_name(keras),))
    fresh = rebuild_serialized(model, config)
    carry_weights(model, fresh)
    return fresh


def _mixed_copy(model, keras):
    """A copy computing in float16/bfloat16 (variables float32); the output layer stays
    float32 for a stable loss."""
    from ..model.rebuild import is_graph, iter_layer_configs, model_config

    if not is_graph(model):
        return _mixed_serialized(model, keras)
    config = model_config(model)
    layers = list(iter_layer_configs(config))
    policy = {"module": "keras", "class_name": "DTypePolicy",
              "config": {"name": _policy_name(keras)}, "registered_name": None}
    for _, lc in layers[:-1]:
        if isinstance(lc.get("config"), dict) and "dtype" in lc["config"]:
            lc["config"]["dtype"] = dict(policy)
    return _clean_copy(model, config)
