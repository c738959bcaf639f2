"""`surgery.reinitialize`: draw selected variables afresh from their initializers, in place.

By default each variable gets the initializer its own layer is configured with (``kernel``,
``bias``, ``recurrent_kernel``, ``gamma``/``beta``, moving mean/variance, ``embeddings``,
depthwise/pointwise kernels; an LSTM with ``unit_forget_bias`` gets ones in its forget gate).

A named initializer goes by variable role: it applies to weights (kernels, recurrent kernels,
embeddings, depthwise/pointwise kernels, and variables of unknown role); biases, ``beta``,
``moving_mean`` get zeros and ``gamma``, ``moving_variance`` ones, the values a fresh layer
starts from (HeNormal on a moving variance would make it negative, and the layer's output NaN).
A variable selected explicitly by its own path (``block3_bn/gamma``, ``*/gamma``, a callable),
rather than through its layer (``block3_*``, ``type:BatchNormalization``), gets the named
initializer whatever its role. The report says what each variable got. The same seed gives the
same values; only the selected variables change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import fnmatch
import re

from ..errors import InputError, OptionError, SelectorError
from ..io.livemodels import framework_of
from ..layertypes import variable_role
from ..selection import Selector, select
from ..io.sources import LiveModelSource, open_weights
from ..text import first_line

__all__ = ["ReinitReport", "reinitialize", "initializer_for", "get_initializer"]

_KNOWN = ("glorot_uniform, glorot_normal, he_uniform, he_normal, lecun_uniform, "
          "lecun_normal, orthogonal, random_normal, random_uniform, truncated_normal, zeros, "
          "ones")


@dataclass(frozen=True)
class ReinitReport:
    """Which variables were drawn afresh, from which initializer."""

    variables: tuple[tuple[str, str], ...] = ()
    seed: int | None = None
    dry_run: bool = False

    def to_dict(self) -> dict:
        return {"seed": self.seed, "dry_run": self.dry_run,
                "variables": [{"path": p, "initializer": i} for p, i in self.variables]}

    def __str__(self) -> str:
        head = f"reinitialized {len(self.variables)} variables" + \
            (f" (seed {self.seed})" if self.seed is not None else "") + \
            (" (dry run: nothing changed)" if self.dry_run else "")
        return "\n".join([head] + [f"  {p:<36} {i}" for p, i in self.variables])


def _keras_module(model: Any):
    from ..io import tfimport

    return tfimport.tf_keras() if framework_of(model) == "tf_keras" else tfimport.keras()


def get_initializer(name: Any, model: Any, seed: int | None = None) -> Any:
    """A Keras initializer from a name or config, seeded; unknown names list known ones."""
    k = _keras_module(model)
    try:
        init = k.initializers.get(name)
    except KeyError as e:  # a known class that needs arguments (Constant needs value=...)
        raise OptionError(f"initializer {name!r} needs arguments ({e.args[0]!r}); pass a "
                          "config from Python, e.g. {'class_name': 'Constant', 'config': "
                          "{'value': 0.1}}, or name one without arguments") from None
    except (ValueError, TypeError):
        raise OptionError(f"unknown initializer {name!r}; known: {_KNOWN}") from None
    if init is None:
        raise OptionError(f"unknown initializer {name!r}; known: {_KNOWN}")
    if seed is not None:
        config = init.get_config()
        if "seed" in config:
            config["seed"] = int(seed)
            init = type(init).from_config(config)
    return init


def initializer_for(holder: Any, name: str) -> Any:
    """The initializer `holder` (a layer or RNN cell) is configured with for variable `name`."""
    for prefix in variable_role(name).setups:
        init = getattr(holder, f"{prefix}_initializer", None)
        if init is not None:
            return init
    return None


def _describe(init: Any) -> str:
    return type(init).__name__ if not isinstance(init, str) else init


def _names_variable(selector: Selector, info) -> bool:
    """Whether `selector` picks `info` by the variable's own path, not through its layer."""
    if callable(selector):
        return bool(selector(info))
    if not isinstance(selector, str) or selector.startswith("type:"):
        return False
    if selector.startswith("re:"):
        try:
            match = re.compile(selector[3:]).fullmatch
        except re.error:
            return False
    else:
        match = re.compile(fnmatch.translate(selector)).match
    layers = [p for p, _ in info.owners if p] + ([info.layer] if info.layer else [])
    return bool(match(info.path)) and not any(match(p) for p in layers)


def _role_default(info, selectors) -> str | None:
    """'zeros'/'ones' for a bias or normalization variable reached through its layer: the
    value a fresh layer starts from (its role's ``fresh``)."""
    default = variable_role(info.name).fresh
    if default is None or any(_names_variable(s, info) for s in selectors):
        return None
    return default


def reinitialize(model: Any, *selectors: Selector, initializer: Any = None,
                 seed: int | None = None, dry_run: bool = False) -> ReinitReport:
    """Reinitializes the selected variables of `model` in place.

    Args:
        model: a Keras 3 or tf_keras model.
        *selectors: which variables (a layer selector reaches all of its variables).
        initializer: a Keras initializer name or object for the weights among them
            (kernels, recurrent kernels, embeddings); biases, ``beta`` and ``moving_mean``
            get zeros, ``gamma`` and ``moving_variance`` ones, unless a selector names the
            variable by its own path (``"bn/gamma"``). Default: each variable's own
            configured initializer.
        seed: base seed; variable i of the selection is drawn with ``seed + i``.
        dry_run: report only.

    Raises:
        SelectorError: a selector matches nothing.
        OptionError: unknown initializer name.
        OptionError: a variable whose layer has no initializer for it (name one).

    Example:
    ```python
    surgery.reinitialize(model, "head", seed=0)                 # a fresh head
    surgery.reinitialize(model, "block3_*", initializer="he_normal", seed=1)
    ```
    """
    src = open_weights(model)
    if not isinstance(src, LiveModelSource):
        raise InputError("reinitialize acts on a live model; load it with "
                         "surgery.load_model first")
    if not selectors:
        raise SelectorError("reinitialize needs at least one selector (e.g. 'head')")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise OptionError(f"seed must be an integer, got {seed!r}")
    if seed is not None and not 0 <= seed < 2 ** 31:
        raise OptionError(f"seed must be between 0 and {2 ** 31 - 1}, got {seed}")
    chosen = select(src.variables(), selectors, what=getattr(model, "name", "model"))
    named = None if initializer is None else \
        _describe(get_initializer(initializer, model))  # an unknown name fails here, always
    plan = []
    for i, info in enumerate(chosen):
        var_seed = None if seed is None else seed + i
        if initializer is not None:
            role = _role_default(info, selectors)
            if role is None:
                init = get_initializer(initializer, model, var_seed)
            else:
                init = get_initializer(role, model, var_seed)
                holder = src.holders[info.key]
                why = f"{info.name} role; select {info.path} by path for {named}"
                if info.name == "bias" and getattr(holder, "unit_forget_bias", False):
                    plan.append((info, _ForgetBias(init),
                                 f"{_describe(init)} + unit forget bias ({why})"))
                    continue
                plan.append((info, init, f"{_describe(init)} ({why})"))
                continue
        else:
            holder = src.holders[info.key]
            configured = initializer_for(holder, info.name)
            if configured is None:
                raise OptionError(f"{info.path}: its layer ({type(holder).__name__}) has no "
                                  "initializer for it; pass initializer='glorot_uniform' (or "
                                  "another name)", variable=info.path)
            init = get_initializer(configured, model, var_seed) if seed is not None else \
                configured
            if info.name == "bias" and getattr(holder, "unit_forget_bias", False):
                plan.append((info, _ForgetBias(init), f"{_describe(init)} + unit forget bias"))
                continue
        plan.append((info, init, _describe(init)))
    values = []
    for info, init, _ in plan:  # drawn in a dry run too, so both fail (or not) alike
        try:
            values.append(np.asarray(init(info.shape, dtype=info.dtype)))
        except (ValueError, TypeError) as e:
            raise OptionError(f"{info.path}: {_describe(init)} can't fill shape "
                              f"{tuple(info.shape)} ({first_line(e)}); select the kernels only or "
                              "choose another initializer", variable=info.path) from None
    if not dry_run:
        for (info, _, _), value in zip(plan, values):
            src.handles[info.key].assign(value)
    return ReinitReport(tuple((info.path, desc) for info, _, desc in plan), seed, dry_run)


class _ForgetBias:
    """LSTM bias with ``unit_forget_bias``: the configured initializer, ones in gate f."""

    def __init__(self, init: Any):
        self.init = init

    def __call__(self, shape, dtype=None):
        units = shape[-1] // 4
        value = np.array(self.init((units,), dtype=dtype))
        return np.concatenate([value, np.ones(units, value.dtype),
                               np.array(self.init((2 * units,), dtype=dtype))])
