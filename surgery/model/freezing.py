"""`surgery.freeze` / `surgery.unfreeze`: set what trains, by layer, with a report.

Keras saves ``trainable`` per layer, so selectors act on the layers they reach. A selector that
reaches only some variables of a layer (``*/bias``) sets those variables alone: that holds for
the current Python session only (a saved file can't hold it) and tf_keras can't do it at all,
so the CLI refuses it. A frozen BatchNormalization runs in inference mode in Keras 3 and tf_keras
(its moving statistics stay put during `fit`); ``bn="train"`` keeps BatchNorm layers inside a
frozen selection training instead (gamma, beta and statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import InputError, OptionError, PartialLayerError, SelectorError
from ..io.livemodels import framework_of
from ..selection import Selector, select
from ..io.sources import LiveModelSource, open_weights

__all__ = ["FreezeReport", "freeze", "unfreeze", "resolve_layers"]

_BN = ("BatchNormalization", "SyncBatchNormalization")


@dataclass(frozen=True)
class FreezeReport:
    """What `freeze`/`unfreeze` changed.

    Attributes:
        action: ``freeze`` or ``unfreeze``.
        layers: (layer path, class, trainable before, trainable after) for each layer reached.
        variables: paths of single variables set alone (session only).
        bn_training: BatchNorm layers kept training (``bn="train"``).
        before, after: (trainable, frozen) parameter counts.
        dry_run: nothing was changed.
    """

    action: str
    layers: tuple[tuple[str, str, bool, bool], ...] = ()
    variables: tuple[str, ...] = ()
    bn_training: tuple[str, ...] = ()
    bn_inference: tuple[str, ...] = ()
    before: tuple[int, int] = (0, 0)
    after: tuple[int, int] = (0, 0)
    dry_run: bool = False

    @property
    def changed(self) -> list[str]:
        return [path for path, _, b, a in self.layers if b != a]

    def to_dict(self) -> dict:
        return {"action": self.action, "dry_run": self.dry_run,
                "layers": [{"path": p, "class": c, "before": b, "after": a}
                           for p, c, b, a in self.layers],
                "variables": list(self.variables), "bn_training": list(self.bn_training),
                "bn_inference": list(self.bn_inference),
                "params_before": {"trainable": self.before[0], "frozen": self.before[1]},
                "params_after": {"trainable": self.after[0], "frozen": self.after[1]}}

    def __str__(self) -> str:
        lines = [f"{self.action}{' (dry run: nothing changed)' if self.dry_run else ''}"]
        for path, cls, b, a in self.layers:
            state = "trainable" if a else "frozen"
            change = "" if a == b else f"  (was {'trainable' if b else 'frozen'})"
            lines.append(f"  {path:<32} {cls:<22} {state}{change}")
        for path in self.variables:
            lines.append(f"  {path:<32} {'(variable)':<22} "
                         f"{'frozen' if self.action == 'freeze' else 'trainable'} "
                         "(this session only: a saved file can't hold it)")
        if self.bn_inference:
            lines.append(f"BatchNorm in inference mode (frozen, statistics fixed): "
                         f"{', '.join(self.bn_inference)}")
        if self.bn_training:
            lines.append(f"BatchNorm kept training (--bn train): {', '.join(self.bn_training)}")
        lines.append(f"params: trainable {self.before[0]:,} -> {self.after[0]:,}, frozen "
                     f"{self.before[1]:,} -> {self.after[1]:,}")
        return "\n".join(lines)


def _counts(model: Any) -> tuple[int, int]:
    src = open_weights(model)
    t = sum(v.size for v in src.variables() if v.trainable)
    return t, sum(v.size for v in src.variables()) - t


def resolve_layers(src: LiveModelSource, selectors: Sequence[Selector],
                   excepts: Sequence[Selector] = (), *, what: str = "model"
                   ) -> tuple[list[str], list[str]]:
    """The layers (whole) and single variables (partial layers) a selection reaches.

    `excepts` alone means everything but them. Raises `SelectorError` for a selector that
    matches nothing, or an except that leaves nothing.
    """
    variables = src.variables()
    chosen = select(variables, selectors, what=what) if selectors else list(variables)
    if excepts:
        removed = {v.path for v in select(variables, excepts, what=what)}
        remaining = [v for v in chosen if v.path not in removed]
        if not remaining:
            raise SelectorError(f"--except {', '.join(map(str, excepts))} removes everything "
                                f"the selection chose in {what}; nothing would change")
        chosen = remaining
    picked = {v.path for v in chosen}
    by_layer: dict[str, list] = {}
    for v in variables:
        by_layer.setdefault(v.layer, []).append(v.path)
    whole, partial = [], []
    for layer, paths in by_layer.items():
        hit = [p for p in paths if p in picked]
        if not hit:
            continue
        if len(hit) == len(paths):
            whole.append(layer)
        else:
            partial.extend(hit)
    return whole, partial


def _set(model: Any, selectors, excepts, *, trainable: bool, bn: str, dry_run: bool,
         allow_partial: bool) -> FreezeReport:
    if bn not in ("inference", "train"):
        raise OptionError(f"bn must be 'inference' or 'train', got {bn!r}")
    src = open_weights(model)
    if not isinstance(src, LiveModelSource):
        raise InputError("freeze/unfreeze act on a live model; load it with "
                         "surgery.load_model first")
    what = getattr(model, "name", "model")
    whole, partial = resolve_layers(src, selectors, excepts, what=what)
    if partial and not allow_partial:
        raise PartialLayerError(
            f"{partial[0]}: the selection reaches only some variables of layer "
            f"{src.info(partial[0]).layer!r}; Keras saves trainable per layer, so a saved file "
            "can't hold it; select whole layers (e.g. "
            f"'{src.info(partial[0]).layer}/*'), or set single variables in Python for the "
            "current session", layer=src.info(partial[0]).layer, variable=partial[0])
    if partial and framework_of(model) == "tf_keras":
        raise PartialLayerError(f"{partial[0]}: tf_keras can't change one variable's trainable "
                                "flag; select whole layers", variable=partial[0])
    before = _counts(model)
    rows, bn_train, bn_inf = [], [], []
    for path in whole:
        layer = src.layer_objects[path]
        cls = type(layer).__name__
        old = bool(layer.trainable)
        new = trainable
        if not trainable and cls in _BN:
            if bn == "train":
                bn_train.append(path)
                new = True
            else:
                bn_inf.append(path)
        rows.append((path, cls, old, new))
        if not dry_run:
            layer.trainable = new
    if not dry_run:
        for path in partial:
            src.variable(path).trainable = trainable
        after = _counts(model)
    else:  # what the counts would become
        new_flag = {path: new for path, _, _, new in rows}
        t = sum(v.size for v in src.variables()
                if (trainable if v.path in partial else new_flag.get(v.layer, v.trainable))
                and v.name not in ("moving_mean", "moving_variance"))
        after = (t, before[0] + before[1] - t)
    return FreezeReport("freeze" if not trainable else "unfreeze", tuple(rows), tuple(partial),
                        tuple(bn_train), tuple(bn_inf), before, after, dry_run)


def freeze(model: Any, *selectors: Selector, except_: Sequence[Selector] = (),
           bn: str = "inference", dry_run: bool = False, allow_partial: bool = True
           ) -> FreezeReport:
    """Freezes the layers `selectors` reach (all layers but `except_` when no selector given).

    Acts in place, like Keras's own ``layer.trainable = False``.

    Args:
        model: a Keras 3 or tf_keras model.
        *selectors: globs, ``re:``, ``type:`` or callables (DESIGN.md §4.2).
        except_: selectors taken out of the selection (alone: freeze everything but them).
        bn: ``inference`` (Keras's rule: frozen BatchNorm runs in inference mode) or
            ``train`` (BatchNorm layers in the selection keep training).
        dry_run: report only.
        allow_partial: allow single variables (session only); the CLI passes False.

    Returns:
        A `FreezeReport`.

    Example:
    ```python
    surgery.freeze(model, except_=["head"])          # train the head only
    surgery.freeze(model, "re:block[12]_.*", bn="train")
    ```
    """
    return _set(model, selectors, except_, trainable=False, bn=bn, dry_run=dry_run,
                allow_partial=allow_partial)


def unfreeze(model: Any, *selectors: Selector, except_: Sequence[Selector] = (),
             dry_run: bool = False, allow_partial: bool = True) -> FreezeReport:
    """Makes the layers `selectors` reach trainable again (in place).

    Example:
    ```python
    surgery.unfreeze(model, "block3_*")              # fine-tune the top block too
    ```
    """
    return _set(model, selectors, except_, trainable=True, bn="inference", dry_run=dry_run,
                allow_partial=allow_partial)
