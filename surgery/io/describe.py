"""How parameters are set up, read from a model or a file: the initializer, regularizer and
constraint each variable's layer config names (with their arguments), recurrent gate layouts,
per-variable statistics, one tensor at a time, and the variables a file holds that are not
parameters (optimizer slots, metric totals: `StateVariable`). Pure Python and numpy (no
TensorFlow for files): `inspect` uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from ..entries import shape_size
from ..errors import SurgeryError
from ..layertypes import layer_type

__all__ = ["describe_setup", "variable_stats", "format_object", "StateVariable", "state_lines"]


@dataclass(frozen=True)
class StateVariable:
    """A variable a file holds that is not a model weight (no canonical path, not counted as
    a parameter, never a transplant source).

    Attributes:
        path: the file's own key (``optimizer/_variables/1``).
        kind: ``optimizer`` (slots, iteration count, learning rate) or ``metric``.
        shape, dtype: as stored.
        name: the variable's own name where the file keeps one (``Adam/m/conv2d/kernel``).
    """

    path: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    name: str = ""

    @property
    def size(self) -> int:
        return shape_size(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "shape": list(self.shape),
                "dtype": self.dtype, "values": self.size, "name": self.name or None}


def state_lines(state: Iterable[StateVariable], shown) -> list[str]:
    """The text section for `state` (empty when there is none): a header that counts each
    kind, then one row per variable; `shown` escapes and shortens names."""
    state = list(state)
    if not state:
        return []
    kinds = {}
    for v in state:
        kinds.setdefault(v.kind, []).append(v)
    counts = ", ".join(f"{len(vs)} {kind} ({sum(v.size for v in vs):,} values)"
                       for kind, vs in kinds.items())
    paths = [shown(v.path) for v in state]
    width = max([len(p) for p in paths] + [8])
    lines = ["", f"not parameters: {counts}",
             f"{'variable':<{width}}  {'shape':<18} {'dtype':<9} {'kind':<9}  name"]
    for path, v in zip(paths, state):
        lines.append(f"{path:<{width}}  {str(v.shape):<18} {shown(v.dtype, 20):<9} "
                     f"{v.kind:<9}  {shown(v.name)}".rstrip())
    return lines



def is_wrapper(cls: str) -> bool:
    """Whether `cls` wraps one inner layer (Bidirectional, TimeDistributed)."""
    return bool(getattr(layer_type(cls), "wrapper", False))


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
        from .configs import iter_layer_configs, model_config

        try:
            for path, lc in iter_layer_configs(model_config(model)):
                out[path] = (lc.get("class_name", ""), lc.get("config") or {})
        except SurgeryError:
            pass
    return out


def _inner(cls: str, cfg: dict, name: str) -> tuple[str, dict]:
    if is_wrapper(cls):
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
        gate_names = known.gates if known is not None else None
        if gate_names and v.name in ("kernel", "recurrent_kernel", "bias"):
            gates = len(gate_names)
            names = ",".join(gate_names) if gates > 1 else ""
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
