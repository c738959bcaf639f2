"""Keras initializers in numpy, for the units, rows and channels that conversions add.

Fans follow Keras: for a kernel of shape (..., in, out), fan_in = in x receptive field and
fan_out = out x receptive field; a 1-D array has fan_in = fan_out = its length.
"""

from __future__ import annotations

from typing import Callable, Union

import numpy as np

from ..errors import OptionError, ShapeError

__all__ = ["Initializer", "initialize", "NAMES"]

Initializer = Union[str, Callable[[tuple, np.random.Generator], np.ndarray]]


def _fans(shape: tuple) -> tuple[float, float]:
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = float(np.prod(shape[:-2])) if len(shape) > 2 else 1.0
    return shape[-2] * receptive, shape[-1] * receptive


def _scaled(mode: str, dist: str, scale: float):
    def init(shape, rng, fans):
        fan_in, fan_out = fans
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        var = scale / max(1.0, n)
        if dist == "uniform":
            limit = np.sqrt(3.0 * var)
            return rng.uniform(-limit, limit, shape)
        std = np.sqrt(var) / 0.87962566103423978  # truncated normal, as Keras
        return _truncated_normal(rng, std, shape)
    return init


def _truncated_normal(rng, std: float, shape) -> np.ndarray:
    """Normal draws within two standard deviations, as Keras's TruncatedNormal: values
    outside are drawn again (clipping them would pile ~4.5% of them on the bounds)."""
    out = rng.normal(0.0, std, shape)
    bad = np.abs(out) > 2 * std
    while bad.any():
        out[bad] = rng.normal(0.0, std, int(bad.sum()))
        bad = np.abs(out) > 2 * std
    return out


_TABLE = {
    "zeros": lambda shape, rng, fans: np.zeros(shape),
    "ones": lambda shape, rng, fans: np.ones(shape),
    "random_normal": lambda shape, rng, fans: rng.normal(0.0, 0.05, shape),
    "random_uniform": lambda shape, rng, fans: rng.uniform(-0.05, 0.05, shape),
    "glorot_uniform": _scaled("fan_avg", "uniform", 1.0),
    "glorot_normal": _scaled("fan_avg", "normal", 1.0),
    "he_uniform": _scaled("fan_in", "uniform", 2.0),
    "he_normal": _scaled("fan_in", "normal", 2.0),
    "lecun_uniform": _scaled("fan_in", "uniform", 1.0),
    "lecun_normal": _scaled("fan_in", "normal", 1.0),
}
NAMES = tuple(sorted(_TABLE))


def _canonical(name: str) -> str:
    key = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return {"normal": "random_normal", "uniform": "random_uniform"}.get(key, key)


def initialize(initializer: Initializer, shape: tuple, *, fan_shape: tuple | None = None,
               seed: int | None = None, dtype=np.float32) -> np.ndarray:
    """Draws an array of `shape` from a Keras-named initializer (or calls a callable).

    Args:
        initializer: ``glorot_uniform``, ``he_normal``, ``zeros``, ... (Keras names, snake or
            Camel case), or a callable ``(shape, rng) -> array``.
        shape: the shape to draw.
        fan_shape: the shape whose fans scale the draw (the whole kernel a slice belongs to).
        seed: fixed seed for reproducible draws.

    Example:
    ```python
    new_rows = initialize("glorot_uniform", (2, 64), fan_shape=(10, 64), seed=0)
    ```
    """
    rng = np.random.default_rng(seed)
    if callable(initializer):
        out = np.asarray(initializer(tuple(shape), rng))
        if out.shape != tuple(shape):
            raise ShapeError(f"initializer returned shape {out.shape}, expected {tuple(shape)}")
        return out.astype(dtype)
    fn = _TABLE.get(_canonical(str(initializer)))
    if fn is None:
        raise OptionError(f"unknown initializer {initializer!r}; known: {', '.join(NAMES)}")
    return np.asarray(fn(tuple(shape), rng, _fans(tuple(fan_shape or shape)))).astype(dtype)
