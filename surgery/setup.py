"""How parameters are set up: see and change initializers, regularizers and constraints.

`describe_setup` reads, for every variable, the initializer, regularizer and constraint its
layer's config names (with their arguments) and, for recurrent layers, the gate layout;
`variable_stats` computes per-variable statistics one tensor at a time (no TensorFlow for
files). `set_regularizer`, `set_initializer` and `set_constraint` return a new model whose
config carries the change and whose weights are bitwise the same.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .errors import OptionError, SurgeryError
from .layertypes import layer_type
from .livemodels import require_live_model
from .selection import Selector, select

__all__ = ["describe_setup", "variable_stats", "set_regularizer", "set_initializer",
           "set_constraint", "format_object"]

_GATES = {"LSTM": (4, "i,f,c,o"), "GRU": (3, "z,r,h"), "SimpleRNN": (1, ""),
          "ConvLSTM1D": (4, "i,f,c,o"), "ConvLSTM2D": (4, "i,f,c,o"),
          "ConvLSTM3D": (4, "i,f,c,o")}
_WRAPPERS = ("Bidirectional", "TimeDistributed")


def format_object(obj: Any) -> str | None:
    """``GlorotUniform(seed=None)`` from a serialized Keras object; None for None."""
    if obj is None:
        return None
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        cls = obj.get("class_name", "?")
        cfg = obj.get("config") or {}
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if v is not None)
        return f"{cls}({args})"
    return type(obj).__name__


def _layer_configs(source) -> dict[str, tuple[str, dict]]:
    """layer path -> (class, config) for a WeightSource (files carry configs; live models are
    serialized)."""
    out = {l.path: (l.class_name, l.config or {}) for l in source.layers() if l.config}
    model = getattr(source, "model", None)
    if model is not None:
        from .rebuild import iter_layer_configs, model_config

        try:
            for path, lc in iter_layer_configs(model_config(model)):
                out[path] = (lc.get("class_name", ""), lc.get("config") or {})
        except SurgeryError:
            pass
    return out


def _inner(cls: str, cfg: dict, name: str) -> tuple[str, dict]:
    if cls in _WRAPPERS:
        inner = cfg.get("layer") or {}
        if cls == "Bidirectional" and "/backward/" in f"/{name}/" and cfg.get("backward_layer"):
            inner = cfg["backward_layer"]
        return inner.get("class_name", ""), inner.get("config") or {}
    return cls, cfg


def describe_setup(source: Any) -> dict[str, dict]:
    """Per variable path: initializer, regularizer, constraint (formatted, with arguments),
    and ``gates`` for recurrent kernels.

    Example:
    ```python
    setup = describe_setup(surgery.open_weights("sample_models/lstm.keras"))
    setup["encoder/kernel"]["gates"]   # '4 gates i,f,c,o x 64 units'
    ```
    """
    configs = _layer_configs(source)
    out: dict[str, dict] = {}
    for v in source.variables():
        cls, cfg = configs.get(v.layer, (v.layer_class, {}))
        cls, cfg = _inner(cls, cfg, v.path)
        known = layer_type(cls)
        prefix = None
        if known is not None:
            for spec in known.specs(cfg):
                if spec.name == v.name:
                    prefix = spec.setup
        entry = {"initializer": format_object(cfg.get(f"{prefix}_initializer")) if prefix
                 else None,
                 "regularizer": format_object(cfg.get(f"{prefix}_regularizer")) if prefix
                 else None,
                 "constraint": format_object(cfg.get(f"{prefix}_constraint")) if prefix
                 else None}
        if cls in _GATES and v.name in ("kernel", "recurrent_kernel", "bias"):
            gates, names = _GATES[cls]
            units = int(cfg.get("units") or cfg.get("filters") or v.shape[-1] // gates)
            rows = "input/recurrent rows x " if len(v.shape) == 2 and v.name == "bias" and \
                cls == "GRU" else ""
            entry["gates"] = f"{rows}{gates} gates {names} x {units} units" if names else \
                f"{units} units"
        out[v.path] = entry
    return out


def variable_stats(source: Any, keys: Iterable[str] | None = None) -> dict[str, dict]:
    """Mean, std, min, max, fraction of zeros and non-finite count per variable, reading one
    tensor at a time.

    Example:
    ```python
    stats = variable_stats(surgery.open_weights("model.keras"))
    ```
    """
    out = {}
    for key in keys if keys is not None else list(source):
        a = np.asarray(source.read(key), dtype=np.float64)
        finite = np.isfinite(a)
        good = a[finite]
        out[key] = {
            "mean": float(good.mean()) if good.size else float("nan"),
            "std": float(good.std()) if good.size else float("nan"),
            "min": float(good.min()) if good.size else float("nan"),
            "max": float(good.max()) if good.size else float("nan"),
            "zeros": float((a == 0).mean()) if a.size else 0.0,
            "nonfinite": int(a.size - finite.sum()),
        }
    return out


_KNOWN = {
    "initializer": "glorot_uniform, glorot_normal, he_uniform, he_normal, lecun_normal, "
                   "orthogonal, random_normal, zeros, ones",
    "constraint": "max_norm, min_max_norm, non_neg, unit_norm",
}


def _set(model: Any, selectors, what: str, build) -> Any:
    from .rebuild import carry_weights, find_layer_config, model_config, rebuild
    from .sources import open_weights

    require_live_model(model, f"set_{what}")
    src = open_weights(model)
    chosen = select(src.variables(), selectors, what=model.name)
    config = model_config(model)
    touched = []
    for v in chosen:
        lc = find_layer_config(config, v.layer)
        cls, cfg = lc.get("class_name", ""), lc.get("config") or {}
        if cls in _WRAPPERS:
            lc = cfg.get("layer") or {}
            cls, cfg = lc.get("class_name", ""), lc.get("config") or {}
        known = layer_type(cls)
        prefix = next((s.setup for s in (known.specs(cfg) if known else [])
                       if s.name == v.name), None)
        if prefix is None or f"{prefix}_{what}" not in cfg:
            raise SurgeryError(f"{v.path}: layer {v.layer!r} ({cls}) has no {what} setting for "
                               "this variable; select kernels, biases or embeddings")
        cfg[f"{prefix}_{what}"] = build()
        touched.append(v.path)
    new = rebuild(model, config)
    carry_weights(model, new)
    new._surgery_setup_changed = tuple(touched)
    return new


def set_regularizer(model: Any, *selectors: Selector, l1: float = 0.0, l2: float = 0.0) -> Any:
    """A new model whose selected variables carry an L1/L2 regularizer (weights bitwise the
    same). The penalty appears in ``model.losses`` and in training.

    Example:
    ```python
    new = surgery.set_regularizer(model, "dense_1/kernel", l2=1e-4)
    ```
    """
    for name, value in (("l1", l1), ("l2", l2)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or \
                not np.isfinite(value) or value < 0:
            raise OptionError(f"{name} must be a finite number >= 0, got {value!r}")
    if l1 == 0 and l2 == 0:
        raise OptionError(f"give a positive l1 and/or l2 (got l1={l1}, l2={l2})")
    if not selectors:
        raise OptionError("set_regularizer needs a selector (e.g. '*/kernel')")
    return _set(model, selectors, "regularizer", lambda: {
        "module": "keras.regularizers", "class_name": "L1L2",
        "config": {"l1": float(l1), "l2": float(l2)}, "registered_name": None})


def _named(kind: str, name: str):
    from .tfimport import keras

    k = keras()
    getter = {"initializer": k.initializers.get, "constraint": k.constraints.get}[kind]
    try:
        obj = getter(name)
    except (ValueError, TypeError):
        obj = None
    if obj is None:
        raise OptionError(f"unknown {kind} {name!r}; known: {_KNOWN[kind]}")
    return k.saving.serialize_keras_object(obj)


def set_initializer(model: Any, *selectors: Selector, initializer: str) -> Any:
    """A new model whose selected variables are configured with `initializer` (used by later
    reinitialization); weights bitwise the same.

    Example:
    ```python
    new = surgery.set_initializer(model, "head/kernel", initializer="he_normal")
    ```
    """
    spec = _named("initializer", initializer)
    return _set(model, selectors, "initializer", lambda: dict(spec))


def set_constraint(model: Any, *selectors: Selector, constraint: str) -> Any:
    """A new model whose selected variables carry a Keras constraint; weights bitwise the same.

    Example:
    ```python
    new = surgery.set_constraint(model, "*/kernel", constraint="max_norm")
    ```
    """
    spec = _named("constraint", constraint)
    return _set(model, selectors, "constraint", lambda: dict(spec))
