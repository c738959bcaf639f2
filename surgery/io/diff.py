"""`surgery.diff`: compare two models or weights files variable by variable.

Each canonical path gets one status: ``same`` (bitwise), ``changed`` (with the max absolute
difference), ``shape`` (shapes differ), ``dtype`` (same values impossible to compare bitwise:
dtypes differ, compared as float64), ``only_a`` or ``only_b``. Arrays are read one pair at a
time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..text import escape_text, json_safe, shown
from .sources import open_weights

__all__ = ["VariableDiff", "WeightDiff", "diff"]

STATUSES = ("same", "changed", "shape", "only_a", "only_b")


@dataclass(frozen=True)
class VariableDiff:
    """The comparison of one variable.

    Attributes:
        path: canonical path.
        status: one of ``same``, ``changed``, ``shape``, ``only_a``, ``only_b``.
        shape_a, shape_b: the shapes (None where absent).
        max_abs_diff: for ``changed``, the largest absolute difference (inf if a NaN/Inf
            differs).
    """

    path: str
    status: str
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    max_abs_diff: float | None = None


@dataclass(frozen=True)
class WeightDiff:
    """Per-variable differences between two sources (`identical` when all are ``same``)."""

    a: str
    b: str
    variables: tuple[VariableDiff, ...] = field(default=())

    @property
    def identical(self) -> bool:
        return all(v.status == "same" for v in self.variables)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for v in self.variables:
            out[v.status] += 1
        return out

    def of(self, status: str) -> list[VariableDiff]:
        return [v for v in self.variables if v.status == status]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a non-finite difference (NaN/Inf in a file) is written as a string."""
        return {
            "a": self.a, "b": self.b, "identical": self.identical, "counts": self.counts(),
            "variables": [{"path": v.path, "status": v.status,
                           "shape_a": list(v.shape_a) if v.shape_a is not None else None,
                           "shape_b": list(v.shape_b) if v.shape_b is not None else None,
                           "max_abs_diff": json_safe(v.max_abs_diff)}
                          for v in self.variables],
        }

    def __str__(self) -> str:
        lines = [f"a: {escape_text(self.a)}", f"b: {escape_text(self.b)}", ""]
        width = max([len(shown(v.path)) for v in self.variables] + [8])
        for v in self.variables:
            if v.status == "same":
                detail = "same"
            elif v.status == "changed":
                detail = f"changed  max |a-b| = {v.max_abs_diff:.6g}"
            elif v.status == "shape":
                detail = f"shape differs  {v.shape_a} vs {v.shape_b}"
            elif v.status == "only_a":
                detail = f"only in a  {v.shape_a}"
            else:
                detail = f"only in b  {v.shape_b}"
            lines.append(f"{shown(v.path):<{width}}  {detail}")
        c = self.counts()
        lines.append("")
        lines.append("identical" if self.identical else
                     f"{c['same']} same, {c['changed']} changed, {c['shape']} shape differs, "
                     f"{c['only_a']} only in a, {c['only_b']} only in b")
        return "\n".join(lines)


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
                out.append(VariableDiff(key, "only_a", shape_a, None))
                continue
            shape_b = sb.shape(key)
            if shape_a != shape_b:
                out.append(VariableDiff(key, "shape", shape_a, shape_b))
                continue
            d = _compare(sa.read(key), sb.read(key))
            out.append(VariableDiff(key, "same" if d is None else "changed", shape_a, shape_b,
                                    d))
        for key in sb:
            if key not in sa:
                out.append(VariableDiff(key, "only_b", None, sb.shape(key)))
        return WeightDiff(sa.name, sb.name, tuple(out))
    finally:
        for s, orig in ((sa, a), (sb, b)):
            if s is not orig:
                s.close()
