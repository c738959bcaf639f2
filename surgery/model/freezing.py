"""`surgery.freeze` / `surgery.unfreeze`: set what trains, by layer, with a report.

Keras saves ``trainable`` per layer, so selectors act on the layers they reach. A selector that
reaches only some variables of a layer (``*/bias``) sets those variables alone: that holds for
the current Python session only (a saved file can't hold it) and tf_keras can't do it at all,
so the CLI refuses it.

Keras saves the flag only of the layers a model's config serializes: every layer of a
Functional or Sequential graph, but of a subclassed layer or model (a keras-hub backbone or
task) only itself and what its own config holds (a task's backbone), not the sublayers its code
builds. So the flag is set on the deepest layer above each selected variable whose flag a file
keeps (a keras-hub backbone as a whole, a plain Dense in a graph). A selection that covers
only part of such a layer (one block of a keras-hub backbone, a keras-hub task's head) holds
for the session only: the report says so, and with ``must_save`` (the CLI) it is refused. A
subclassed layer whose flag Keras saves but does not apply to the sublayers it builds on load
(keras-hub's ResNet backbone) is refused the same way: it is checked by rebuilding a copy
from its config, as Keras loads it.

A frozen BatchNormalization runs in inference mode in Keras 3 and tf_keras (its moving
statistics stay put during `fit`); ``bn="train"`` keeps BatchNorm layers inside a frozen
selection training instead (gamma, beta and statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import InputError, OptionError, PartialLayerError, SelectorError
from ..io.livemodels import framework_of
from ..selection import Selector, select
from ..io.sources import LiveModelSource, open_weights

__all__ = ["FreezeReport", "freeze", "unfreeze", "resolve_layers", "saved_layers"]

_BN = ("BatchNormalization", "SyncBatchNormalization")


@dataclass(frozen=True)
class FreezeReport:
    """What `freeze`/`unfreeze` changed.

    Attributes:
        action: ``freeze`` or ``unfreeze``.
        layers: (layer path, class, trainable before, trainable after) for each layer reached.
        variables: paths of single variables set alone (session only).
        bn_training: BatchNorm layers kept training (``bn="train"``).
        before, after: (trainable, frozen) parameter counts, as Keras counts them
            (``model.trainable_weights``).
        dry_run: nothing was changed.
        unsaved: layers set for the current session only: a saved file can't hold their flag.
    """

    action: str
    layers: tuple[tuple[str, str, bool, bool], ...] = ()
    variables: tuple[str, ...] = ()
    bn_training: tuple[str, ...] = ()
    bn_inference: tuple[str, ...] = ()
    before: tuple[int, int] = (0, 0)
    after: tuple[int, int] = (0, 0)
    dry_run: bool = False
    unsaved: tuple[str, ...] = ()

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
                "params_after": {"trainable": self.after[0], "frozen": self.after[1]},
                "unsaved": list(self.unsaved)}

    def __str__(self) -> str:
        lines = [f"{self.action}{' (dry run: nothing changed)' if self.dry_run else ''}"]
        for path, cls, b, a in self.layers:
            state = "trainable" if a else "frozen"
            change = "" if a == b else f"  (was {'trainable' if b else 'frozen'})"
            if path in self.unsaved:
                change += "  (this session only: a saved file can't hold it)"
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
         allow_partial: bool, must_save: bool = False) -> FreezeReport:
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
    bn_layers = [p for p in whole if type(src.layer_objects[p]).__name__ in _BN]
    kept = set(bn_layers) if not trainable and bn == "train" else set()
    chosen = {v.path for v in src.variables() if v.layer in whole and v.layer not in kept}
    saved = saved_layers(model, src)
    targets, unsaved = _targets(src, chosen, saved)
    rows = [(p, type(src.layer_objects[p]).__name__, bool(src.layer_objects[p].trainable),
             trainable) for p in targets]
    rows += [(p, type(src.layer_objects[p]).__name__, bool(src.layer_objects[p].trainable), True)
             for p in sorted(kept, key=whole.index)]
    unsaved += [p for p in kept if p not in saved]
    if must_save:
        _check_saved(src, unsaved, trainable, targets, saved)
    bn_inf = [p for p in bn_layers if p not in kept] if not trainable else []
    before = _counts(model)
    undo = _remember(model, src) if dry_run else None
    for path, _, _, new in rows:
        src.layer_objects[path].trainable = new
    for path in partial:
        src.variable(path).trainable = trainable
    after = _counts(model)
    if undo is not None:
        undo()
    return FreezeReport("freeze" if not trainable else "unfreeze", tuple(rows), tuple(partial),
                        tuple(sorted(kept, key=whole.index)), tuple(bn_inf), before, after,
                        dry_run, tuple(unsaved))


def _parent(path: str, layers) -> str | None:
    """The nearest layer above `path` (None: the model itself)."""
    parts = path.split("/")
    for i in range(len(parts) - 1, 0, -1):
        if "/".join(parts[:i]) in layers:
            return "/".join(parts[:i])
    return None


def _serialized_names(obj: Any) -> set[str]:
    """Names of the layers `obj`'s config serializes directly (a graph's layers, a task's
    backbone); a config Keras can't build gives none."""
    try:
        config = obj.get_config()
    except Exception:  # no get_config: the model can't be saved as a whole anyway
        return set()
    names: set[str] = set()
    stack: list[Any] = [config]
    while stack:
        item = stack.pop()
        if hasattr(item, "weights") and isinstance(getattr(item, "name", None), str):
            names.add(item.name)  # a layer object a config returns as is
        elif isinstance(item, dict):
            inner = item.get("config")
            if "class_name" in item and isinstance(inner, dict) and \
                    isinstance(inner.get("name"), str):
                names.add(inner["name"])
            else:
                stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return names


def saved_layers(model: Any, src: LiveModelSource | None = None) -> set[str]:
    """The paths of the layers whose ``trainable`` flag a saved file holds: every layer its
    parent's config serializes, below a parent whose flag is held (the model's own layers
    hang below the model)."""
    src = src if src is not None else open_weights(model)
    layers = src.layer_objects
    names: dict[int, set[str]] = {}
    saved: set[str] = set()
    for path in sorted(layers, key=lambda p: p.count("/")):  # parents first
        above = _parent(path, layers)
        if above is not None and above not in saved:
            continue
        parent = model if above is None else layers[above]
        if id(parent) not in names:
            names[id(parent)] = _serialized_names(parent)
        if layers[path].name in names[id(parent)]:
            saved.add(path)
    return saved


def _targets(src: LiveModelSource, chosen: set[str], saved: set[str]
             ) -> tuple[list[str], list[str]]:
    """The layers to set so that exactly `chosen` variables change: for each, the deepest
    layer above it whose flag a file holds, when every variable below that layer is chosen;
    otherwise the outermost layer below that one whose variables are all chosen, for this
    session only.

    Returns:
        (layers to set in model order, those of them a saved file can't hold).
    """
    below: dict[str, list[str]] = {}
    for v in src.variables():
        for path, _ in v.owners:
            below.setdefault(path, []).append(v.path)
    targets: dict[str, None] = {}
    unsaved: dict[str, None] = {}
    for v in src.variables():
        if v.path not in chosen:
            continue
        held = [p for p, _ in v.owners if p in saved]
        layer = held[-1] if held else None
        if layer is not None and all(p in chosen for p in below[layer]):
            targets.setdefault(layer, None)
            continue
        paths = [p for p, _ in v.owners]
        start = paths.index(layer) + 1 if layer is not None else 0
        outer = next(p for p in paths[start:] if all(q in chosen for q in below[p]))
        targets.setdefault(outer, None)
        unsaved.setdefault(outer, None)
    order = {p: i for i, p in enumerate(src.layer_objects)}
    return sorted(targets, key=order.get), sorted(unsaved, key=order.get)


def _check_saved(src, unsaved, trainable, targets, saved) -> None:
    """Refuses (for a file) a selection a saved file can't hold: part of a layer whose flag
    alone is saved, or a subclassed layer Keras would reload trainable."""
    if unsaved:
        path = unsaved[0]
        owners = next(v.owners for v in src.variables() if path in dict(v.owners))
        held = [p for p, _ in owners if p in saved]
        whole = f"select the whole {held[-1]!r}" if held else "select whole saved layers"
        state = "frozen" if trainable else "trainable"
        verb = "unfreeze" if trainable else "freeze"
        raise PartialLayerError(
            f"{path}: Keras doesn't save the trainable flag of this layer (its parent's config "
            f"doesn't hold it), so a saved file would reload it {state}; {whole}, or {verb} "
            "it in Python after loading (surgery.load_model), for the current session",
            layer=path)
    if trainable:
        return
    for path in targets:
        if not _keeps_frozen(src.layer_objects[path]):
            cls = type(src.layer_objects[path]).__name__
            raise PartialLayerError(
                f"{path}: Keras saves this {cls}'s trainable flag but doesn't apply it to the "
                "layers it builds when it loads the file, so a saved file would reload it "
                "trainable; freeze it in Python after loading (surgery.load_model, then "
                "surgery.freeze), or let surgery finetune --freeze freeze it for training",
                layer=path)


def _keeps_frozen(layer: Any) -> bool:
    """Whether Keras, rebuilding `layer` from its config with trainable off as a load does,
    leaves every variable frozen. A layer without sublayers of its own, a Functional or
    Sequential graph (each layer's flag saved) and tf_keras (flags per layer) always do."""
    if framework_of(layer) != "keras" or isinstance(_config_layers(layer), list):
        return True
    if not any(sub.weights for sub in _direct_sublayers(layer)):
        return True
    from ..io.tfimport import keras

    k = keras()
    try:
        data = k.saving.serialize_keras_object(layer)
        data["config"]["trainable"] = False
        data.pop("compile_config", None)
        clone = k.saving.deserialize_keras_object(data)
    except Exception:  # can't be rebuilt alone: then we can't vouch for the file either
        return False
    return bool(clone.weights) and not any(v.trainable for v in clone.weights)


def _config_layers(layer: Any):
    try:
        return layer.get_config().get("layers")
    except Exception:
        return None


def _direct_sublayers(layer: Any) -> list:
    flatten = getattr(layer, "_flatten_layers", None)
    return list(flatten(include_self=False, recursive=False)) if callable(flatten) else []


def _remember(model: Any, src: LiveModelSource):
    """Every layer's and variable's trainable flag, and a function that puts them back (a
    dry run applies the change to count it exactly as Keras would, then undoes it)."""
    layers = [(model, bool(model.trainable))] + [
        (obj, bool(obj.trainable)) for _, obj in sorted(src.layer_objects.items(),
                                                        key=lambda kv: kv[0].count("/"))]
    flags = [(v, bool(getattr(v, "trainable", True))) for v in model.weights]
    keras3 = framework_of(model) == "keras"

    def undo() -> None:
        for obj, flag in layers:  # top down: each setter resets what is below it
            if bool(obj.trainable) != flag:
                obj.trainable = flag
        if keras3:
            for v, flag in flags:
                if bool(v.trainable) != flag:
                    v.trainable = flag
    return undo


def freeze(model: Any, *selectors: Selector, except_: Sequence[Selector] = (),
           bn: str = "inference", dry_run: bool = False, allow_partial: bool = True,
           must_save: bool = False) -> FreezeReport:
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
        must_save: refuse a selection a saved file can't hold (see the module docstring);
            the CLI's freeze and unfreeze pass True. Without it such layers are set for the
            session and listed in the report's `unsaved`.

    Returns:
        A `FreezeReport`.

    Raises:
        PartialLayerError: part of a layer (or, with `must_save`, a selection a file can't
            hold).

    Example:
    ```python
    surgery.freeze(model, except_=["head"])          # train the head only
    surgery.freeze(model, "re:block[12]_.*", bn="train")
    ```
    """
    return _set(model, selectors, except_, trainable=False, bn=bn, dry_run=dry_run,
                allow_partial=allow_partial, must_save=must_save)


def unfreeze(model: Any, *selectors: Selector, except_: Sequence[Selector] = (),
             dry_run: bool = False, allow_partial: bool = True,
             must_save: bool = False) -> FreezeReport:
    """Makes the layers `selectors` reach trainable again (in place).

    Example:
    ```python
    surgery.unfreeze(model, "block3_*")              # fine-tune the top block too
    ```
    """
    return _set(model, selectors, except_, trainable=True, bn="inference", dry_run=dry_run,
                allow_partial=allow_partial, must_save=must_save)
