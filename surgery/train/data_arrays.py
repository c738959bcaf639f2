"""Training data in memory: `Data` (what `load_data` returns) and the helpers over `x`, which
is one array or a dict of arrays by input name (a keras-hub text model's ``token_ids``,
``padding_mask``...). Re-exported by `train.data`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Data", "samples", "as_inputs", "flat_arrays"]


@dataclass
class Data:
    """Arrays for training (and validation), and where they came from. `x` (and `x_val`) is
    one array, or a dict of arrays by input name for a model with named inputs (a keras-hub
    text model's ``token_ids``, ``padding_mask``...), as Keras's `fit` takes them."""

    x: np.ndarray | dict[str, np.ndarray]
    y: np.ndarray
    x_val: np.ndarray | dict[str, np.ndarray] | None
    y_val: np.ndarray | None
    kind: str
    source: str
    classes: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # an image folder's files, relative to it, in sample order

    def describe(self) -> str:
        y = "no labels" if self.y is None else f"y {self.y.dtype}"
        val = f", {samples(self.x_val)} validation" if self.x_val is not None else ""
        shape = ", ".join(f"{k} {tuple(v.shape[1:])}" for k, v in self.x.items()) \
            if isinstance(self.x, dict) else f"{tuple(self.x.shape[1:])}"
        return (f"{self.source} ({self.kind}): {samples(self.x)} training samples{val}, x "
                f"{shape}, {y}")


def samples(x) -> int:
    """The number of samples in `x`: one array, or a dict of arrays by input name."""
    if isinstance(x, dict):
        return len(next(iter(x.values()))) if x else 0
    return len(x)


def _take(x, index):
    """The samples `index` of `x` (an array, or a dict of arrays by input name)."""
    return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]


def as_inputs(x):
    """`x` as the arrays `Data` holds: a dict of arrays by input name stays a dict."""
    if isinstance(x, dict):
        return {str(k): np.asarray(v) for k, v in x.items()}
    return np.asarray(x)


def flat_arrays(*items) -> tuple:
    """`items` with every dict of arrays spelled out as (name, array) pairs, sorted by name:
    what a checkpoint hashes to recognise its data."""
    out: list = []
    for item in items:
        if isinstance(item, dict):
            for key in sorted(item):
                out += [np.array(str(key)), item[key]]
        else:
            out.append(item)
    return tuple(out)
