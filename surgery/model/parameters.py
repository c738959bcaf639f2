"""Change how parameters are set up: `set_regularizer`, `set_initializer` and
`set_constraint` return `EditResult(model, SetupReport)`: a new model whose config carries the
change and whose weights are bitwise the same, and the variables changed. Reading the setup
(`describe_setup`, `variable_stats`, shown by `inspect`) lives in `surgery.io.describe`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import OptionError, PartialLayerError, SelectorError, UnsupportedModelError
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
        unsaved: those set on the new model's live layer for the current session only: a
            subclassed model (keras-hub) builds that layer itself, its config doesn't hold
            the setting, so a saved file would reload without it.
    """

    setting: str
    value: str
    changed: tuple[str, ...]
    unsaved: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        out = {"setting": self.setting, "value": self.value, "changed": list(self.changed)}
        return {**out, "unsaved": list(self.unsaved)} if self.unsaved else out

    def __str__(self) -> str:
        session = f"; for this session only (a saved file can't hold it): " \
            f"{', '.join(self.unsaved)}" if self.unsaved else ""
        return (f"set {self.value} on {len(self.changed)} variables: "
                f"{', '.join(self.changed)}; weights unchanged{session}")


def _number(x: float) -> str:
    return "0" if x == 0 else f"{x}"


def _set(model: Any, selectors, what: str, value: str, build: Callable[[], dict],
         must_save: bool = False) -> EditResult[SetupReport]:
    from .rebuild import carry_weights, find_layer_config, is_graph, model_config, rebuild
    from ..io.sources import open_weights

    require_live_model(model, f"set_{what}")
    src = open_weights(model)
    chosen = select(src.variables(), selectors, what=model.name)
    if not is_graph(model):
        return _set_serialized(model, src, chosen, what, value, build, must_save)
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


def _no_setting(v, cls: str, what: str) -> SelectorError:
    return SelectorError(f"{v.path}: layer {v.layer!r} ({cls}) has no {what} setting for this "
                         "variable; select kernels, biases or embeddings", layer=v.layer,
                         variable=v.path)


def _live_setting(layer: Any, v, what: str) -> str:
    """The attribute of a live layer that holds `what` for variable `v` (``kernel_regularizer``)."""
    cls = type(layer).__name__
    known = layer_type(cls)
    if known is None:
        raise _no_setting(v, cls, what)
    try:
        cfg = layer.get_config()
    except Exception:  # a custom get_config may need arguments the layer doesn't keep
        cfg = {}
    prefix = next((s.setup for s in known.specs(cfg) if s.name == v.name), None)
    if prefix is None or not hasattr(layer, f"{prefix}_{what}"):
        raise _no_setting(v, cls, what)
    return f"{prefix}_{what}"


def _configs_by_name(config: Any) -> dict[str, list[dict]]:
    """Every serialized layer a subclassed model's config holds, by name."""
    out: dict[str, list[dict]] = {}
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            cfg = item.get("config")
            if isinstance(cfg, dict) and isinstance(cfg.get("name"), str) and \
                    isinstance(item.get("class_name"), str):
                out.setdefault(cfg["name"], []).append(item)
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (dict, list)))
    return out


def _same_setting(obj: Any, spec: dict) -> bool:
    from ..io.tfimport import keras

    if obj is None:
        return False
    got = keras().saving.serialize_keras_object(obj)
    return isinstance(got, dict) and got.get("class_name") == spec.get("class_name") and \
        got.get("config") == spec.get("config")


def _unsaved_error(model: Any, v, what: str, named: dict) -> PartialLayerError:
    """The variable's layer is built by an ancestor (or the model) from arguments that don't
    hold the setting: say which, and what to do."""
    builder = next((cls for path, cls in reversed(v.owners[:-1])
                    if path.rsplit("/", 1)[-1] in named), type(model).__name__)
    return PartialLayerError(
        f"{v.path}: Keras doesn't save this layer's {what} ({builder} builds the layer from its "
        "own config, which doesn't hold it), so a saved file would reload without it; set it "
        f"in Python after loading (surgery.load_model, then surgery.set_{what}), for the "
        "current session", layer=v.layer, variable=v.path)


def _set_serialized(model: Any, src, chosen, what: str, value: str, build: Callable[[], dict],
                    must_save: bool) -> EditResult[SetupReport]:
    """`_set` for a subclassed model that serializes (a keras-hub task or backbone), copied as
    Keras saves and loads it. A layer its config holds (by name, once) gets the setting there,
    so a saved file keeps it (checked on the copy); a layer the model builds itself (every
    keras-hub block) gets it on the copy's live layer and variable, for the session only
    (`SetupReport.unsaved`; refused with `must_save`)."""
    from .rebuild import carry_weights, rebuild_serialized, serialized_config
    from ..io.sources import open_weights
    from ..io.tfimport import keras

    config = serialized_config(model)
    if config is None:
        raise UnsupportedModelError(f"{model.name}: set_{what} copies the model, and this "
                                    "subclassed model has no config to copy it from (no "
                                    "get_config); give it a get_config, or use a Functional "
                                    "model")
    named = _configs_by_name(config)
    attrs = {v.path: _live_setting(src.layer_objects[v.layer], v, what) for v in chosen}
    for v in chosen:
        found = named.get(v.layer.rsplit("/", 1)[-1], [])
        if len(found) == 1 and attrs[v.path] in (found[0].get("config") or {}):
            found[0]["config"][attrs[v.path]] = build()
    new = rebuild_serialized(model, config)
    carry_weights(model, new)
    fresh = open_weights(new)
    unsaved = []
    for v in chosen:
        layer = fresh.layer_objects[v.layer]
        if _same_setting(getattr(layer, attrs[v.path], None), build()):
            continue  # the config held it: Keras built the layer with it, a file keeps it
        if must_save:
            raise _unsaved_error(model, v, what, named)
        obj = keras().saving.deserialize_keras_object(build())
        setattr(layer, attrs[v.path], obj)
        if what in ("regularizer", "constraint"):  # Keras reads these from the variable
            setattr(fresh.variable(v.path), what, obj)
        unsaved.append(v.path)
    return EditResult(new, SetupReport(what, value, tuple(v.path for v in chosen),
                                       tuple(unsaved)))


def set_regularizer(model: Any, *selectors: Selector, l1: float = 0.0, l2: float = 0.0,
                    must_save: bool = False) -> EditResult[SetupReport]:
    """A new model whose selected variables carry an L1/L2 regularizer (weights bitwise the
    same). The penalty appears in ``model.losses`` and in training.

    A subclassed model that serializes (a keras-hub task) is copied as Keras saves and loads
    it; a layer it builds itself (not in its config) gets the regularizer for the current
    session only (`report.unsaved`), or, with ``must_save`` (the CLI), is refused.

    Returns:
        `EditResult(model, report)`: the new model (`model` is untouched) and a `SetupReport`.

    Raises:
        OptionError: l1/l2 negative, not finite or both 0; no selector.
        SelectorError: a selector matching nothing, or a variable without a regularizer setting.
        PartialLayerError: with ``must_save``, a setting a saved file can't hold.

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
        "config": {"l1": float(l1), "l2": float(l2)}, "registered_name": None}, must_save)


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


def set_initializer(model: Any, *selectors: Selector, initializer: str,
                    must_save: bool = False) -> EditResult[SetupReport]:
    """A new model whose selected variables are configured with `initializer` (used by later
    reinitialization); weights bitwise the same. Subclassed models and ``must_save``: as
    `set_regularizer`.

    Returns:
        `EditResult(model, report)`: the new model (`model` is untouched) and a `SetupReport`.

    Example:
    ```python
    new, report = surgery.set_initializer(model, "head/kernel", initializer="he_normal")
    ```
    """
    spec = _named("initializer", initializer)
    return _set(model, selectors, "initializer", initializer, lambda: dict(spec), must_save)


def set_constraint(model: Any, *selectors: Selector, constraint: str,
                   must_save: bool = False) -> EditResult[SetupReport]:
    """A new model whose selected variables carry a Keras constraint; weights bitwise the same.
    Subclassed models and ``must_save``: as `set_regularizer`.

    Returns:
        `EditResult(model, report)`: the new model (`model` is untouched) and a `SetupReport`.

    Example:
    ```python
    new, report = surgery.set_constraint(model, "*/kernel", constraint="max_norm")
    ```
    """
    spec = _named("constraint", constraint)
    return _set(model, selectors, "constraint", constraint, lambda: dict(spec), must_save)
