"""Per-layer learning rates: `surgery.learning_rates`.

Keras 3.15's ``MultiOptimizer`` can route each variable to its own optimizer, but matching
regexes against ``variable.path`` is not stable across save/load (``seq/c1/kernel`` before,
``c1/kernel`` after). Here canonical selectors are resolved to the variable objects once, and a
selector function routes by identity. Each group gets its own optimizer at
``base_lr * multiplier``; layer-wise decay gives the last layer 1, the one below `decay`, then
``decay**2``, ...
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import OptionError, UnsupportedModelError
from ..io.livemodels import framework_of, require_live_model
from ..selection import select
from ..io.sources import open_weights

__all__ = ["LearningRates", "learning_rates", "OPTIMIZERS"]

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


@dataclass
class LearningRates:
    """An optimizer that gives each group of variables its own learning rate.

    Attributes:
        optimizer: the Keras optimizer to pass to ``model.compile``.
        groups: (multiplier, learning rate, variable paths) per group.
    """

    optimizer: Any
    groups: list[tuple[float, float, list[str]]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"groups": [{"multiplier": m, "learning_rate": lr, "variables": paths}
                           for m, lr, paths in self.groups]}

    def __str__(self) -> str:
        lines = ["per-layer learning rates:"]
        for m, lr, paths in self.groups:
            lines.append(f"  x{m:<8g} lr {lr:<10.3g} {len(paths)} variables "
                         f"({', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''})")
        return "\n".join(lines)


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and \
        math.isfinite(value)


def _make(name: str, lr: float, k) -> Any:
    table = {"adam": k.optimizers.Adam, "adamw": k.optimizers.AdamW, "sgd": k.optimizers.SGD,
             "rmsprop": k.optimizers.RMSprop}
    if name not in table:
        raise OptionError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    return table[name](learning_rate=lr)


def learning_rates(model: Any, multipliers: Mapping[Any, float] | None = None,
                   base_lr: float = 1e-3, *, decay: float | None = None,
                   optimizer: str = "adam") -> LearningRates:
    """An optimizer setup where selected variables train at ``base_lr * multiplier``.

    Args:
        model: a Keras 3 model.
        multipliers: selector -> multiplier; a variable matched by several takes the last.
            Variables matched by none train at ``base_lr`` (times the decay factor).
        base_lr: the base learning rate.
        decay: layer-wise decay: the last trainable layer x1, the one below x`decay`, ...
            (multiplied with `multipliers`).
        optimizer: ``adam``, ``adamw``, ``sgd`` or ``rmsprop``.

    Returns:
        `LearningRates`; compile with ``model.compile(optimizer=lr.optimizer, ...)``.

    Raises:
        UnsupportedModelError: a tf_keras model (no MultiOptimizer there).
        SelectorError: a selector matching nothing.

    Example:
    ```python
    lr = surgery.learning_rates(model, {"block*": 0.1}, 1e-3)
    model.compile(optimizer=lr.optimizer, loss="sparse_categorical_crossentropy")
    ```
    """
    if framework_of(model) == "tf_keras":
        raise UnsupportedModelError("per-layer learning rates need Keras 3 (tf_keras has no "
                                    "MultiOptimizer); convert the model first")
    if decay is not None and not (_finite(decay) and 0 < decay <= 1):
        raise OptionError(f"layer decay must be a finite number in (0, 1], got {decay!r}")
    if not (_finite(base_lr) and base_lr > 0):
        raise OptionError(f"base learning rate must be a finite number above 0, got "
                          f"{base_lr!r}")
    from ..io.tfimport import keras

    k = keras()
    require_live_model(model, "learning_rates")
    src = open_weights(model)
    variables = src.variables()
    decayed = {v.path: 1.0 for v in variables}
    if decay is not None:
        layers = list(dict.fromkeys(v.layer for v in variables if v.trainable))
        depth = {layer: len(layers) - 1 - i for i, layer in enumerate(layers)}
        for v in variables:
            decayed[v.path] = decay ** depth.get(v.layer, 0)
    factor = dict(decayed)
    for selector, mult in (multipliers or {}).items():
        if not (_finite(mult) and mult > 0):
            raise OptionError(f"multiplier for {selector!r} must be a finite number above 0, "
                              f"got {mult!r}")
        for v in select(variables, [selector], what=model.name):
            factor[v.path] = decayed[v.path] * float(mult)
    groups: dict[float, list[str]] = {}
    for v in variables:
        groups.setdefault(round(factor[v.path], 12), []).append(v.path)
    optimizers = {m: _make(optimizer, base_lr * m, k) for m in groups}
    route = {id(src.variable(p)): optimizers[m] for m, paths in groups.items() for p in paths}
    default = optimizers.get(1.0) or _make(optimizer, base_lr, k)

    def selector(variable):
        return route.get(id(variable), default)

    multi = k.optimizers.MultiOptimizer(selector)
    return LearningRates(multi, [(m, base_lr * m, paths) for m, paths in
                                 sorted(groups.items(), reverse=True)])
