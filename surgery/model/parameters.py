"""Change how parameters are set up: `set_regularizer`, `set_initializer` and
`set_constraint` return `EditResult(model, SetupReport)`: a new model whose config carries the
change and whose weights are bitwise the same, and the variables changed. Reading the setup
(`describe_setup`, `variable_stats`, shown by `inspect`) lives in `surgery.io.describe`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import OptionError, SelectorError
from ..layertypes import layer_type
from ..io.describe import is_wrapper
from ..io.livemodels import require_live_model
from ..results import EditResult
from ..selection import Selector, select

__all__ = ["SetupReport", "set_regularizer", "set_initializer", "set_constraint"]

_KNOWN = {
    "initializer": "glorot_uniform, glorot_normal, he_uniform, he_normal, lecun_normal, "
                   "orthogonal, random_normal, zeros, ones",
    "constraint": "max_norm, min_max_norm, non_neg, unit_norm",
}


@dataclass(frozen=True)
class SetupReport:
    """What a `set_*` function changed; the weights are bitwise the same.

    Attributes:
        setting: ``regularizer``, ``initializer`` or ``constraint``.
        value: what was set, as given: ``L1L2(l1=0, l2=0.0001)``, ``he_normal``, ``max_norm``.
        changed: canonical paths of the variables whose setting changed, in model order.
    """

    setting: str
    value: str
    changed: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"setting": self.setting, "value": self.value, "changed": list(self.changed)}

    def __str__(self) -> str:
        return (f"set {self.value} on {len(self.changed)} variables: "
                f"{', '.join(self.changed)}; weights unchanged")


def _number(x: float) -> str:
    return "0" if x == 0 else f"{x}"


def _set(model: Any, selectors, what: str, value: str,
         build: Callable[[], dict]) -> EditResult[SetupReport]:
    from .rebuild import carry_weights, find_layer_config, model_config, rebuild
    from ..io.sources import open_weights

    require_live_model(model, f"set_{what}")
    src = open_weights(model)
    chosen = select(src.variables(), selectors, what=model.name)
    config = model_config(model)
    touched = []
    for v in chosen:
        lc = find_layer_config(config, v.layer)
        cls, cfg = lc.get("class_name", ""), lc.get("config") or {}
        if is_wrapper(cls):
            lc = cfg.get("layer") or {}
            cls, cfg = lc.get("class_name", ""), lc.get("config") or {}
        known = layer_type(cls)
        prefix = next((s.setup for s in (known.specs(cfg) if known else [])
                       if s.name == v.name), None)
        if prefix is None or f"{prefix}_{what}" not in cfg:
            raise SelectorError(f"{v.path}: layer {v.layer!r} ({cls}) has no {what} setting for "
                                "this variable; select kernels, biases or embeddings",
                                layer=v.layer, variable=v.path)
        cfg[f"{prefix}_{what}"] = build()
        touched.append(v.path)
    new = rebuild(model, config)
    carry_weights(model, new)
    return EditResult(new, SetupReport(what, value, tuple(touched)))


def set_regularizer(model: Any, *selectors: Selector, l1: float = 0.0,
                    l2: float = 0.0) -> EditResult[SetupReport]:
    """A new model whose selected variables carry an L1/L2 regularizer (weights bitwise the
    same). The penalty appears in ``model.losses`` and in training.

    Returns:
        `EditResult(model, report)`: the new model (`model` is untouched) and a `SetupReport`.

    Raises:
        OptionError: l1/l2 negative, not finite or both 0; no selector.
        SelectorError: a selector matching nothing, or a variable without a regularizer setting.

    Example:
    ```python
    new, report = surgery.set_regularizer(model, "dense_1/kernel", l2=1e-4)
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
    value = f"L1L2(l1={_number(l1)}, l2={_number(l2)})"
    return _set(model, selectors, "regularizer", value, lambda: {
        "module": "keras.regularizers", "class_name": "L1L2",
        "config": {"l1": float(l1), "l2": float(l2)}, "registered_name": None})


def _named(kind: str, name: str):
    from ..io.tfimport import keras

    k = keras()
    getter = {"initializer": k.initializers.get, "constraint": k.constraints.get}[kind]
    try:
        obj = getter(name)
    except (ValueError, TypeError):
        obj = None
    if obj is None:
        raise OptionError(f"unknown {kind} {name!r}; known: {_KNOWN[kind]}")
    return k.saving.serialize_keras_object(obj)


def set_initializer(model: Any, *selectors: Selector,
                    initializer: str) -> EditResult[SetupReport]:
    """A new model whose selected variables are configured with `initializer` (used by later
    reinitialization); weights bitwise the same.

    Returns:
        `EditResult(model, report)`: the new model (`model` is untouched) and a `SetupReport`.

    Example:
    ```python
    new, report = surgery.set_initializer(model, "head/kernel", initializer="he_normal")
    ```
    """
    spec = _named("initializer", initializer)
    return _set(model, selectors, "initializer", initializer, lambda: dict(spec))


def set_constraint(model: Any, *selectors: Selector,
                   constraint: str) -> EditResult[SetupReport]:
    """A new model whose selected variables carry a Keras constraint; weights bitwise the same.

    Returns:
        `EditResult(model, report)`: the new model (`model` is untouched) and a `SetupReport`.

    Example:
    ```python
    new, report = surgery.set_constraint(model, "*/kernel", constraint="max_norm")
    ```
    """
    spec = _named("constraint", constraint)
    return _set(model, selectors, "constraint", constraint, lambda: dict(spec))
