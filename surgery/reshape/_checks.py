"""Validation shared by the reshape functions: one `ShapeError` line naming both shapes."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError

__all__ = ["as_array", "need_rank", "need", "gate_units"]


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
