"""`surgery.inspect`: what a model or weights file holds.

An `Inventory` lists the layers in order with their class, and every variable with its
canonical path, shape, dtype and trainable flag, with parameter counts and totals. Files are
read without TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .entries import LayerInfo, VariableInfo
from .sources import open_weights

__all__ = ["Inventory", "inspect"]


def _fmt_count(n: int) -> str:
    return f"{n:,}"


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

    @property
    def total_params(self) -> int:
        return sum(v.size for v in self.variables)

    @property
    def trainable_params(self) -> int:
        return sum(v.size for v in self.variables if v.trainable)

    @property
    def non_trainable_params(self) -> int:
        return sum(v.size for v in self.variables if v.trainable is False)

    def layer_params(self, layer_path: str) -> int:
        """Parameters of a layer and everything nested in it."""
        prefix = layer_path + "/"
        return sum(v.size for v in self.variables
                   if v.layer == layer_path or v.path.startswith(prefix))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "format": self.format,
            "layers": [{"path": l.path, "class": l.class_name, "trainable": l.trainable,
                        "depth": l.depth, "params": self.layer_params(l.path)}
                       for l in self.layers],
            "variables": [{"path": v.path, "layer": v.layer, "shape": list(v.shape),
                           "dtype": v.dtype, "trainable": v.trainable, "params": v.size,
                           **self.setup.get(v.path, {}),
                           **({"stats": self.stats[v.path]} if v.path in self.stats else {})}
                          for v in self.variables],
            "totals": {"params": self.total_params, "trainable": self.trainable_params,
                       "non_trainable": self.non_trainable_params},
        }

    def __str__(self) -> str:
        lines = [f"{self.source} ({self.format})"]
        if self.layers:
            lines.append("")
            lines.append(f"{'layer':<36} {'class':<22} {'params':>12}  trainable")
            for l in self.layers:
                name = "  " * l.depth + l.path.rsplit("/", 1)[-1] if l.depth else l.path
                flag = "" if l.trainable is None else ("yes" if l.trainable else "no")
                lines.append(f"{name:<36} {l.class_name:<22} "
                             f"{_fmt_count(self.layer_params(l.path)):>12}  {flag}")
        lines.append("")
        width = max([len(v.path) for v in self.variables] + [8])
        lines.append(f"{'variable':<{width}}  {'shape':<18} {'dtype':<9} {'params':>12}  "
                     "trainable")
        for v in self.variables:
            flag = "" if v.trainable is None else ("yes" if v.trainable else "no")
            lines.append(f"{v.path:<{width}}  {str(v.shape):<18} {v.dtype:<9} "
                         f"{_fmt_count(v.size):>12}  {flag}")
        if any(any(e.values()) for e in self.setup.values()):
            lines.append("")
            lines.append(f"{'setup':<{width}}  initializer / regularizer / constraint")
            for v in self.variables:
                e = self.setup.get(v.path) or {}
                parts = [e.get("initializer") or "-", e.get("regularizer") or "-",
                         e.get("constraint") or "-"]
                gates = f"  [{e['gates']}]" if e.get("gates") else ""
                lines.append(f"{v.path:<{width}}  {' / '.join(parts)}{gates}")
        if self.stats:
            lines.append("")
            lines.append(f"{'stats':<{width}}  {'mean':>10} {'std':>10} {'min':>10} "
                         f"{'max':>10} {'zeros':>6} {'nonfinite':>9}")
            for v in self.variables:
                st = self.stats.get(v.path)
                if st:
                    lines.append(f"{v.path:<{width}}  {st['mean']:>10.4g} {st['std']:>10.4g} "
                                 f"{st['min']:>10.4g} {st['max']:>10.4g} {st['zeros']:>6.1%} "
                                 f"{st['nonfinite']:>9}")
        lines.append("")
        total = f"total params: {_fmt_count(self.total_params)}"
        if any(v.trainable is not None for v in self.variables):
            total += (f"  (trainable {_fmt_count(self.trainable_params)}, non-trainable "
                      f"{_fmt_count(self.non_trainable_params)})")
        lines.append(total)
        return "\n".join(lines)


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
    from .setup import describe_setup, variable_stats

    src = open_weights(source, architecture=architecture)
    try:
        return Inventory(source=src.name, format=src.format, layers=tuple(src.layers()),
                         variables=tuple(src.variables()), setup=describe_setup(src),
                         stats=variable_stats(src) if stats else {})
    finally:
        if src is not source:
            src.close()
