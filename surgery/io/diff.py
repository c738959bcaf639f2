"""`surgery.diff`: compare two models or weights files variable by variable.

Each canonical path gets one report word (`surgery.outcomes`): ``unchanged`` (bitwise),
``changed`` (with the max absolute difference; values of different dtypes are compared as
float64), ``reshaped`` (shapes differ), ``only_in_a`` or ``only_in_b`` (printed ``only in a``).
The older spellings (``same``, ``shape``, ``only_a``, ``only_b``) are still accepted by `of` and
`counts()`. Arrays are read one pair at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..outcomes import Counts, Outcome
from ..text import escape_text, json_safe, shown
from .sources import open_weights

__all__ = ["VariableDiff", "WeightDiff", "diff"]

STATUSES = (Outcome.UNCHANGED, Outcome.CHANGED, Outcome.RESHAPED, Outcome.ONLY_IN_A,
            Outcome.ONLY_IN_B)


@dataclass(frozen=True)
class VariableDiff:
    """The comparison of one variable.

    Attributes:
        path: canonical path.
        status: one of ``unchanged``, ``changed``, ``reshaped``, ``only_in_a``, ``only_in_b``
            (an older spelling passed in is read as its word).
        shape_a, shape_b: the shapes (None where absent).
        max_abs_diff: for ``changed``, the largest absolute difference (inf if a NaN/Inf
            differs).
    """

    path: str
    status: Outcome
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    max_abs_diff: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "status", Outcome.of(self.status))


@dataclass(frozen=True)
class WeightDiff:
    """Per-variable differences between two sources (`identical` when all are ``unchanged``)."""

    a: str
    b: str
    variables: tuple[VariableDiff, ...] = field(default=())

    @property
    def identical(self) -> bool:
        return all(v.status == Outcome.UNCHANGED for v in self.variables)

    def counts(self) -> Counts:
        """Variables per report word (``counts()["same"]``, the older spelling, still works)."""
        out = Counts((s.value, 0) for s in STATUSES)
        for v in self.variables:
            out[v.status.value] += 1
        return out

    def of(self, status: str) -> list[VariableDiff]:
        """The variables with one report word; an older spelling (``only_a``) or the printed
        label (``only in a``) is accepted, and a word that is not a diff status gives []."""
        try:
            word = Outcome(status)
        except ValueError:
            return []
        return [v for v in self.variables if v.status == word]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a non-finite difference (NaN/Inf in a file) is written as a string."""
        return {
            "a": self.a, "b": self.b, "identical": self.identical, "counts": self.counts(),
            "variables": [{"path": v.path, "status": v.status.value,
                           "shape_a": list(v.shape_a) if v.shape_a is not None else None,
                           "shape_b": list(v.shape_b) if v.shape_b is not None else None,
                           "max_abs_diff": json_safe(v.max_abs_diff)}
                          for v in self.variables],
        }

    def __str__(self) -> str:
        lines = [f"a: {escape_text(self.a)}", f"b: {escape_text(self.b)}", ""]
        width = max([len(shown(v.path)) for v in self.variables] + [8])
        for v in self.variables:
            lines.append(f"{shown(v.path):<{width}}  {v.status.label}{_detail(v)}")
        c = self.counts()
        lines.append("")
        lines.append("identical" if self.identical else
                     ", ".join(f"{c[s.value]} {s.label}" for s in STATUSES))
        return "\n".join(lines)


def _detail(v: VariableDiff) -> str:
    """What follows a variable's word in the table: the difference, or the shapes."""
    if v.status == Outcome.CHANGED:
        return f"  max |a-b| = {v.max_abs_diff:.6g}"
    if v.status == Outcome.RESHAPED:
        return f"  {v.shape_a} vs {v.shape_b}"
    if v.status == Outcome.ONLY_IN_A:
        return f"  {v.shape_a}"
    if v.status == Outcome.ONLY_IN_B:
        return f"  {v.shape_b}"
    return ""


def _compare(a: np.ndarray, b: np.ndarray) -> float | None:
    """None when bitwise equal (NaNs in the same places count as equal), else max |a-b|."""
    if a.dtype == b.dtype and a.tobytes() == b.tobytes():
        return None
    fa, fb = a.astype(np.float64), b.astype(np.float64)
    both_nan = np.isnan(fa) & np.isnan(fb)
    if a.dtype == b.dtype and np.array_equal(fa[~both_nan], fb[~both_nan]) and \
            np.array_equal(np.isnan(fa), np.isnan(fb)):
        return None
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(fa - fb)
    d = np.where(both_nan, 0.0, d)
    d = np.where(np.isnan(d), np.inf, d)
    return float(d.max()) if d.size else 0.0


def diff(a: Any, b: Any, *, architecture_a: Any = None, architecture_b: Any = None) -> WeightDiff:
    """Compares two models or weights files variable by variable.

    Args:
        a, b: live models, `WeightSource`s or paths `open_weights` reads.
        architecture_a, architecture_b: architectures for bare `.weights.h5` files.

    Returns:
        A `WeightDiff`: ``.identical``, per-variable status, `str()` table, `to_dict()`.

    Raises:
        SurgeryError: either source can't be read.

    Example:
    ```python
    d = surgery.diff("before.keras", "after.keras")
    print(d.identical, [v.path for v in d.of("changed")])
    ```
    """
    sa = open_weights(a, architecture=architecture_a)
    try:
        sb = open_weights(b, architecture=architecture_b)
    except BaseException:
        if sa is not a:
            sa.close()
        raise
    try:
        out: list[VariableDiff] = []
        for key in sa:
            shape_a = sa.shape(key)
            if key not in sb:
                out.append(VariableDiff(key, Outcome.ONLY_IN_A, shape_a, None))
                continue
            shape_b = sb.shape(key)
            if shape_a != shape_b:
                out.append(VariableDiff(key, Outcome.RESHAPED, shape_a, shape_b))
                continue
            d = _compare(sa.read(key), sb.read(key))
            out.append(VariableDiff(key, Outcome.UNCHANGED if d is None else Outcome.CHANGED,
                                    shape_a, shape_b, d))
        for key in sb:
            if key not in sa:
                out.append(VariableDiff(key, Outcome.ONLY_IN_B, None, sb.shape(key)))
        return WeightDiff(sa.name, sb.name, tuple(out))
    finally:
        for s, orig in ((sa, a), (sb, b)):
            if s is not orig:
                s.close()
