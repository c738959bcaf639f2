"""`surgery.inspect`: what a model or weights file holds.

An `Inventory` lists the layers in order with their class, and every variable with its
canonical path, shape, dtype and trainable flag, with parameter counts and totals. Files are
read without TensorFlow.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..entries import LayerInfo, VariableInfo
from ..text import NAME_WIDTH, escape_text, shown
from .classnames import class_names
from .describe import state_lines
from .sources import open_weights

__all__ = ["Inventory", "inspect", "stat_warnings", "classes_line"]

_CLASS_WIDTH = 40
_SETUP_WIDTH = 4 * NAME_WIDTH


def _fmt_count(n: int) -> str:
    return f"{n:,}"


def _json_number(value: Any) -> Any:
    """NaN and infinities become None: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def classes_line(names, limit: int = 50) -> str:
    """``classes: 0 circle, 1 square, ...``: each output unit's index and class name (names
    escaped and shortened; past `limit` classes, the count)."""
    parts = [f"{i} {shown(n, 40)}" for i, n in enumerate(names[:limit])]
    more = f", ... ({len(names)} classes)" if len(names) > limit else ""
    return f"classes: {', '.join(parts)}{more}"


def stat_warnings(variable: VariableInfo, stats: dict) -> list[str]:
    """What the statistics of one variable say can't be right: a negative moving variance,
    non-finite values, a kernel that is all zeros."""
    out = []
    name = variable.name
    low = stats.get("min")
    if name.endswith(("moving_variance", "running_var")) and isinstance(low, float) and \
            low < 0:
        out.append(f"negative variance (min {low:.4g})")
    bad = stats.get("nonfinite")
    if bad:
        out.append(f"{bad} non-finite value{'s' if bad != 1 else ''}")
    kernel = name.endswith("kernel") or (name.endswith(".weight") and len(variable.shape) >= 2)
    if kernel and variable.size and stats.get("zeros") == 1.0:
        out.append("all zeros")
    return out


@dataclass(frozen=True)
class Inventory:
    """The layers and variables of a source.

    Attributes:
        source: the path or model name.
        format: the source's format (``keras``, ``legacy-h5``, ...).
        layers: `LayerInfo` per layer, in model order.
        variables: `VariableInfo` per variable, in model order.
    """

    source: str
    format: str
    layers: tuple[LayerInfo, ...] = field(default=())
    variables: tuple[VariableInfo, ...] = field(default=())
    setup: dict = field(default_factory=dict, compare=False)
    stats: dict = field(default_factory=dict, compare=False)
    class_names: tuple[str, ...] | None = None
    training_state: tuple = field(default=(), compare=False)  # describe.StateVariable

    @property
    def total_params(self) -> int:
        return sum(v.size for v in self.variables)

    @property
    def trainable_params(self) -> int:
        return sum(v.size for v in self.variables if v.trainable)

    @property
    def non_trainable_params(self) -> int:
        return sum(v.size for v in self.variables if v.trainable is False)

    @property
    def warnings(self) -> dict[str, list[str]]:
        """Per variable with statistics: impossible values (`stat_warnings`); empty lists
        where nothing is wrong. Empty without ``stats=True``."""
        return {v.path: stat_warnings(v, self.stats[v.path]) for v in self.variables
                if v.path in self.stats}

    def layer_params(self, layer_path: str) -> int:
        """Parameters of a layer and everything nested in it."""
        prefix = layer_path + "/"
        return sum(v.size for v in self.variables
                   if v.layer == layer_path or v.path.startswith(prefix))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; statistics that are NaN or infinite (a tensor with no finite value)
        are None, so the output is valid JSON."""
        warnings = self.warnings
        return {
            "source": self.source,
            "format": self.format,
            "layers": [{"path": l.path, "class": l.class_name, "trainable": l.trainable,
                        "depth": l.depth, "params": self.layer_params(l.path)}
                       for l in self.layers],
            "variables": [{"path": v.path, "layer": v.layer, "shape": list(v.shape),
                           "dtype": v.dtype, "trainable": v.trainable, "params": v.size,
                           **self.setup.get(v.path, {}),
                           **({"stats": {k: _json_number(x) for k, x in self.stats[v.path].items()},
                               "warnings": warnings[v.path]} if v.path in self.stats else {})}
                          for v in self.variables],
            "totals": {"params": self.total_params, "trainable": self.trainable_params,
                       "non_trainable": self.non_trainable_params},
            "class_names": None if self.class_names is None else list(self.class_names),
            "training_state": [v.to_dict() for v in self.training_state],
        }

    def __str__(self) -> str:
        """A text table. Names are escaped (`report.escape_text`) and shortened to
        `report.NAME_WIDTH` characters, so a hostile name can neither forge lines nor widen
        every row."""
        lines = [f"{shown(self.source, _SETUP_WIDTH)} ({self.format})"]
        if self.class_names:
            lines.append(classes_line(self.class_names))
        if self.layers:
            names = []
            for l in self.layers:
                name = "  " * l.depth + l.path.rsplit("/", 1)[-1] if l.depth else l.path
                names.append(shown(name))
            lw = max([len(n) for n in names] + [36])
            lines.append("")
            lines.append(f"{'layer':<{lw}} {'class':<22} {'params':>12}  trainable")
            for name, l in zip(names, self.layers):
                flag = "" if l.trainable is None else ("yes" if l.trainable else "no")
                lines.append(f"{name:<{lw}} {shown(l.class_name, _CLASS_WIDTH):<22} "
                             f"{_fmt_count(self.layer_params(l.path)):>12}  {flag}")
        lines.append("")
        paths = [shown(v.path) for v in self.variables]
        width = max([len(p) for p in paths] + [8])
        lines.append(f"{'variable':<{width}}  {'shape':<18} {'dtype':<9} {'params':>12}  "
                     "trainable")
        for path, v in zip(paths, self.variables):
            flag = "" if v.trainable is None else ("yes" if v.trainable else "no")
            lines.append(f"{path:<{width}}  {str(v.shape):<18} {shown(v.dtype, 20):<9} "
                         f"{_fmt_count(v.size):>12}  {flag}")
        if any(any(e.values()) for e in self.setup.values()):
            lines.append("")
            lines.append(f"{'setup':<{width}}  initializer / regularizer / constraint")
            for path, v in zip(paths, self.variables):
                e = self.setup.get(v.path) or {}
                parts = [e.get("initializer") or "-", e.get("regularizer") or "-",
                         e.get("constraint") or "-"]
                gates = f"  [{e['gates']}]" if e.get("gates") else ""
                lines.append(f"{path:<{width}}  {shown(' / '.join(parts), _SETUP_WIDTH)}"
                             f"{shown(gates, NAME_WIDTH)}")
        if self.stats:
            warnings = self.warnings
            lines.append("")
            lines.append(f"{'stats':<{width}}  {'mean':>10} {'std':>10} {'min':>10} "
                         f"{'max':>10} {'zeros':>6} {'nonfinite':>9}  warnings")
            for path, v in zip(paths, self.variables):
                st = self.stats.get(v.path)
                if st:
                    lines.append(f"{path:<{width}}  {st['mean']:>10.4g} {st['std']:>10.4g} "
                                 f"{st['min']:>10.4g} {st['max']:>10.4g} {st['zeros']:>6.1%} "
                                 f"{st['nonfinite']:>9}  {'; '.join(warnings[v.path])}".rstrip())
        lines += state_lines(self.training_state, shown)
        lines.append("")
        total = f"total params: {_fmt_count(self.total_params)}"
        if any(v.trainable is not None for v in self.variables):
            total += (f"  (trainable {_fmt_count(self.trainable_params)}, non-trainable "
                      f"{_fmt_count(self.non_trainable_params)})")
        lines.append(total)
        return "\n".join(escape_text(line) for line in lines)


def inspect(source: Any, *, architecture: Any = None, stats: bool = False) -> Inventory:
    """Lists the layers and variables of a model or weights file.

    Args:
        source: a live model, a `WeightSource`, or a path `open_weights` reads.
        architecture: for a bare `.weights.h5`, the `.keras`/`config.json` that names it.
        stats: also compute per-variable statistics (mean, std, min, max, fraction of
            zeros, non-finite count), one tensor at a time.

    Returns:
        An `Inventory`; `str()` is a table, `to_dict()` is JSON-ready.

    Raises:
        SurgeryError: the source can't be read.

    Example:
    ```python
    inv = surgery.inspect("sample_models/cnn.keras")
    print(inv.total_params, [v.path for v in inv.variables][:3])
    ```
    """
    from .describe import describe_setup, variable_stats

    src = open_weights(source, architecture=architecture)
    try:
        names = class_names(src.name) if src.format == "keras" and \
            isinstance(source, (str, os.PathLike)) else None
        return Inventory(source=src.name, format=src.format, layers=tuple(src.layers()),
                         variables=tuple(src.variables()), setup=describe_setup(src),
                         stats=variable_stats(src) if stats else {}, class_names=names,
                         training_state=tuple(getattr(src, "state", ())))
    finally:
        if src is not source:
            src.close()
