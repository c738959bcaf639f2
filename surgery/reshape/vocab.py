"""Carrying embedding (or output-layer) rows across a vocabulary change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

from ..errors import OptionError, ShapeError
from ._checks import as_array, need

__all__ = ["RowRemap", "remap_rows"]

_FILLS = ("mean", "zeros", "random")


@dataclass(frozen=True)
class RowRemap:
    """What `remap_rows` did: tokens carried over, new tokens filled, old tokens dropped."""

    carried: tuple
    new: tuple
    dropped: tuple

    def to_dict(self) -> dict:
        return {"carried": len(self.carried), "new": list(self.new),
                "dropped": list(self.dropped)}

    def __str__(self) -> str:
        return (f"{len(self.carried)} tokens carried, {len(self.new)} new, "
                f"{len(self.dropped)} dropped")


def _unique(vocab: Sequence[Hashable], which: str) -> dict:
    index: dict = {}
    for i, token in enumerate(vocab):
        if token in index:
            raise ShapeError(f"remap_rows: {which} vocabulary lists {token!r} twice (positions "
                             f"{index[token]} and {i}); a vocabulary needs unique tokens")
        index[token] = i
    return index


def remap_rows(matrix, old_vocab: Sequence[Hashable], new_vocab: Sequence[Hashable], *,
               fill: str = "mean", seed: int | None = None, axis: int = 0
               ) -> tuple[np.ndarray, RowRemap]:
    """Moves an embedding table (or an output layer) from one vocabulary to another.

    Each token of `new_vocab` found in `old_vocab` keeps its row; new tokens get the mean of
    the old rows (``mean``), zeros (``zeros``), or normal noise with the old rows' mean and
    standard deviation (``random``, with `seed`).

    Args:
        matrix: the table, with one entry per old token along `axis` (0 for an Embedding
            (vocab, dim); -1 for an output Dense kernel (units, vocab) or its bias (vocab,)).
        old_vocab, new_vocab: tokens in index order.
        fill: ``mean``, ``zeros`` or ``random``.
        seed: for ``random``.
        axis: the vocabulary axis.

    Returns:
        (new matrix, `RowRemap`).

    Example:
    ```python
    table, report = remap_rows(embed, old_tokens, new_tokens, fill="mean")
    ```
    """
    m = as_array(matrix, "remap_rows")
    need(m.ndim >= 1, f"remap_rows: expected a table, got shape {m.shape}")
    if fill not in _FILLS:
        raise OptionError(f"remap_rows: unknown fill {fill!r}; use one of {', '.join(_FILLS)}")
    old_index, new_index = _unique(old_vocab, "old"), _unique(new_vocab, "new")
    need(m.shape[axis] == len(old_index),
         f"remap_rows: matrix {m.shape} has {m.shape[axis]} entries on axis {axis} but the old "
         f"vocabulary has {len(old_index)} tokens")
    rows = np.moveaxis(m, axis, 0)
    out = np.empty((len(new_index),) + rows.shape[1:], dtype=m.dtype)
    work = rows.astype(np.float64)
    mean, std = work.mean(axis=0), work.std(axis=0)
    rng = np.random.default_rng(seed)
    carried, new = [], []
    for token, i in new_index.items():
        j = old_index.get(token)
        if j is not None:
            out[i] = rows[j]
            carried.append(token)
        else:
            new.append(token)
            out[i] = mean if fill == "mean" else 0 if fill == "zeros" else \
                rng.normal(mean, std + 1e-12)
    dropped = tuple(t for t in old_index if t not in new_index)
    return np.moveaxis(out, 0, axis), RowRemap(tuple(carried), tuple(new), dropped)
