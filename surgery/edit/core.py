"""The edit engine: build a new model with layers kept, deleted, replaced or inserted, and
carry every weight whose path and shape still fit.

Functional models are rebuilt with `keras.models.clone_model` (a `call_function` rewires the
graph, nested models recursively); Sequential models by editing their layer list. Inputs are
never touched: every layer of the new model is a fresh object (except layers the caller hands
in to insert), and weights travel one tensor at a time by canonical path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..errors import EditError, SelectorError, SurgeryError
from ..model.rebuild import keras_module, model_config
from ..outcomes import Outcome
from ..results import EditResult  # re-exported: edit code builds it from here
from ..selection import closest_paths
from ..io.livemodels import framework_of
from ..io.sources import LiveModelSource
from .carry import Deferred, carry_weights

__all__ = ["EditReport", "EditResult", "apply_edits", "layer_names", "find_layer",
           "graph", "params", "model_config", "shared_layers", "edit_nested"]


@dataclass(frozen=True)
class EditReport:
    """What an edit changed, in the report words of `surgery.outcomes`.

    Attributes:
        operation: e.g. ``widen fc 64 -> 96``.
        changes: one line per structural change.
        copied: variables copied bitwise from the input model (``carried``, the older name,
            still reads them).
        converted: variables written by the edit itself (sliced, widened, identity, ...).
        initialized: variables left as the new model initialized them, with the reason.
        params_before, params_after: parameter counts.
    """

    operation: str
    changes: tuple[str, ...] = ()
    copied: tuple[str, ...] = ()
    converted: tuple[str, ...] = ()
    initialized: tuple[tuple[str, str], ...] = ()
    params_before: int = 0
    params_after: int = 0

    @property
    def carried(self) -> tuple[str, ...]:
        """The older name of `copied`."""
        return self.copied

    def to_dict(self) -> dict:
        return {"operation": self.operation, "changes": list(self.changes),
                Outcome.COPIED.value: list(self.copied),
                Outcome.CONVERTED.value: list(self.converted),
                Outcome.INITIALIZED.value: [{"path": p, "why": w} for p, w in self.initialized],
                "params_before": self.params_before, "params_after": self.params_after}

    def __str__(self) -> str:
        lines = [self.operation] + [f"  {c}" for c in self.changes]
        lines.append(f"  {len(self.copied)} variables {Outcome.COPIED} bitwise, "
                     f"{len(self.converted)} {Outcome.CONVERTED}, {len(self.initialized)} "
                     f"{Outcome.INITIALIZED}")
        for path, why in self.initialized:
            lines.append(f"    {Outcome.INITIALIZED}: {path} ({why})")
        lines.append(f"  params {self.params_before:,} -> {self.params_after:,}")
        return "\n".join(lines)


def params(model) -> int:
    return int(sum(int(np.prod(v.shape)) for v in model.weights))


def layer_names(model) -> list[str]:
    return [l.name for l in model.layers if type(l).__name__ != "InputLayer"]


def find_layer(model, name: str) -> Any:
    """The top-level layer called `name`; unknown names list the closest."""
    for layer in model.layers:
        if layer.name == name:
            return layer
    raise SelectorError(f"no layer {name!r} in {model.name}; closest: "
                        f"{', '.join(closest_paths(name, layer_names(model), 5))}", layer=name)


def graph(model, config: Mapping | None = None
          ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(consumers, inputs): top-level layer name -> the layers reading its output / the layers
    whose outputs it reads, from the model's config (read once; `config`: `model_config`'s,
    when the caller has it)."""
    succ: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    if type(model).__name__ == "Sequential":
        names = layer_names(model)
        for a, b in zip(names, names[1:]):
            succ.setdefault(a, []).append(b)
            pred.setdefault(b, []).append(a)
        return succ, pred
    for lc in (config or model_config(model))["config"]["layers"]:
        for producer in dict.fromkeys(_producers(lc)):
            succ.setdefault(producer, []).append(lc["name"])
            pred.setdefault(lc["name"], []).append(producer)
    return succ, pred


def shared_layers(model, config: Mapping | None = None) -> set[str]:
    """Names of the top-level layers called more than once (shared layers); `config`: as in
    `graph`."""
    if type(model).__name__ == "Sequential":
        return set()
    return {lc["name"] for lc in (config or model_config(model))["config"]["layers"]
            if len(lc.get("inbound_nodes") or []) > 1}


def _producers(layer_config: Mapping) -> list[str]:
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("class_name") == "__keras_tensor__":
                found.append(node["config"]["keras_history"][0])
            for v in node.values():
                walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)
    walk(layer_config.get("inbound_nodes", []))
    return found


def _without_build(node):
    """A config with every nested ``build_config`` removed, so that wrapped layers (in
    TimeDistributed, Bidirectional) are built from the shapes they are called on."""
    if isinstance(node, dict):
        return {k: _without_build(v) for k, v in node.items() if k != "build_config"}
    if isinstance(node, list):
        return [_without_build(v) for v in node]
    return node


def _fresh(layer, k, deferred: Deferred | None = None):
    if type(layer).__name__ == "InputLayer":
        return layer
    new = layer.__class__.from_config(_without_build(layer.get_config()))
    return deferred.defer(new) if deferred is not None else new


def apply_edits(model: Any, *, operation: str, delete: set[str] = frozenset(),
                replace: Mapping[str, Any] | None = None,
                insert_after: Mapping[str, Any] | None = None,
                insert_before: Mapping[str, Any] | None = None,
                input_shape: tuple | None = None, changes: tuple[str, ...] = (),
                fill: Callable[[Any, Any], list[str]] | None = None,
                filled: Iterable[str] = ()) -> EditResult:
    """Builds the edited model and carries the weights.

    Args:
        model: a Functional or Sequential Keras 3 model.
        delete: names of single-input layers to remove (their consumers take their input).
        replace: name -> new layer object.
        insert_after / insert_before: name -> new layer object called on that layer's
            output / before it on its input.
        input_shape: a new input shape (without the batch axis).
        fill: ``fill(old, new) -> converted paths``, run after carrying, for edits that
            compute new values (Net2Net); it gets the two models' weight sources
            (`LiveModelSource`, which `open_weights` hands back as they are).
        filled: names of `replace` layers that `fill` writes whole: built, like the fresh
            copies, without drawing initial values (see `surgery.edit.carry`).
    """
    k = keras_module(model)
    replace = dict(replace or {})
    insert_after = dict(insert_after or {})
    insert_before = dict(insert_before or {})
    known = set(layer_names(model))
    for name in [*delete, *replace, *insert_after, *insert_before]:
        if name not in known:
            find_layer(model, name)  # raises with the closest names
    deferred = Deferred(k)
    for name in filled:
        deferred.defer(replace[name])
    try:
        if type(model).__name__ == "Sequential":
            new = _edit_sequential(model, k, delete, replace, insert_after, insert_before,
                                   input_shape, deferred)
        else:
            new = _edit_functional(model, k, delete, replace, insert_after, insert_before,
                                   input_shape, deferred)
    finally:
        deferred.restore()
    return _carry(model, new, operation, tuple(changes) + _class_lost(model, new), fill,
                  set(replace), deferred)


def _class_lost(model, new) -> tuple[str, ...]:
    """The report line saying that a model of a Functional subclass (a keras-hub task such as
    ``ImageClassifier``, or its backbone) became a plain Functional: the edit rebuilds its
    graph, and the subclass's own parts (preprocessor, compile settings, methods) are not
    carried."""
    before, after = type(model).__name__, type(new).__name__
    if before == after or before in ("Functional", "Sequential", "Model"):
        return ()
    return (f"{model.name}: the edited model is a plain {after}, not a {before}: its graph "
            "and weights are kept, the class's own parts (a keras-hub task's preprocessor, "
            "compile settings and methods) are not",)


def _edit_sequential(model, k, delete, replace, after, before, input_shape, deferred):
    layers = []
    shape = input_shape or tuple(model.inputs[0].shape[1:])
    dtype = model.inputs[0].dtype
    layers.append(k.Input(shape, dtype=dtype))
    for layer in model.layers:
        name = layer.name
        if name in before:
            layers.append(before[name])
        if name in delete:
            continue
        layers.append(replace[name] if name in replace else _fresh(layer, k, deferred))
        if name in after:
            layers.append(after[name])
    try:
        return k.Sequential(layers, name=model.name)
    except Exception as e:  # Keras reports shape errors in several types
        raise EditError(f"{model.name}: the edited model does not build "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                        ) from None


def _input_name(tensor) -> str:
    """The name of the input layer a model input comes from (keras-hub tasks name their
    input tensors ``keras_tensor_N`` but the layer ``input_layer``, as a user sees it)."""
    history = getattr(tensor, "_keras_history", None)
    layer = history[0] if history else None
    return getattr(layer, "name", None) or tensor.name.split(":")[0]


def _inputs_as_named(model, k):
    """New inputs named as the model's input layers, where a tensor's name differs (None
    otherwise: `clone_model` names them after the tensors)."""
    if all(_input_name(t) == t.name.split(":")[0] for t in model.inputs):
        return None
    return k.tree.map_structure(
        lambda t: k.Input(batch_shape=t.shape, dtype=t.dtype, name=_input_name(t),
                          sparse=bool(getattr(t, "sparse", False))), model.input)


def _edit_functional(model, k, delete, replace, after, before, input_shape, deferred):
    if framework_of(model) == "tf_keras":  # its clone_model has no call_function
        raise EditError(f"{model.name}: graph edits of a Keras 2 (tf_keras) Functional model "
                        "are not supported; edit it as Keras 3: surgery.load_model(MODEL.h5) "
                        "without legacy=True, or surgery convert MODEL.h5 -o MODEL.keras")
    if len(model.inputs) != 1 and input_shape is not None:
        raise EditError(f"{model.name}: a new input shape needs a model with one input")

    def clone(layer):
        if layer.name in replace:
            return replace[layer.name]
        return _fresh(layer, k, deferred)

    def call(layer, *args, **kwargs):
        if layer.name in before:
            args = (before[layer.name](args[0]),) + args[1:]
        if layer.name in delete:
            if len(args) != 1:
                raise EditError(f"layer {layer.name!r} takes {len(args)} inputs; only "
                                "single-input layers can be deleted", layer=layer.name)
            return args[0]
        out = layer(*args, **kwargs)
        if layer.name in after:
            out = after[layer.name](out)
        return out

    input_tensors = _inputs_as_named(model, k)
    if input_shape is not None:
        new_input = k.Input(tuple(input_shape), dtype=model.inputs[0].dtype,
                            name=_input_name(model.inputs[0]))
        input_tensors = [new_input] if isinstance(model.input, (list, tuple)) else new_input
    try:
        # Nested models are cloned as whole layers (clone_function), so a nested model handed
        # in as a replacement is used as it is, with its weights.
        return k.models.clone_model(model, input_tensors=input_tensors, clone_function=clone,
                                    call_function=call, recursive=False)
    except SurgeryError:
        raise
    except Exception as e:
        raise EditError(f"{model.name}: the edited model does not build "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                        ) from None


def _carry(old, new, operation, changes, fill, skip, deferred) -> EditResult:
    src, dst = LiveModelSource(old), LiveModelSource(new)  # each model walked once
    copied, left = carry_weights(src, dst, skip)
    converted = fill(src, dst) if fill else []
    done = set(converted)
    deferred.initialize_rest(dst, set(copied) | done)
    initialized = [(path, why) for path, why in left if path not in done]
    copied = [path for path in copied if path not in done]
    return EditResult(new, EditReport(operation, tuple(changes), tuple(copied),
                                      tuple(converted), tuple(initialized), params(old),
                                      params(new)))


def is_graph_model(layer) -> bool:
    return type(layer).__name__ in ("Functional", "Sequential") or (
        hasattr(layer, "layers") and hasattr(layer, "inputs") and
        type(layer).__name__ != "Bidirectional")


def edit_nested(model: Any, path: str, inner_edit: Callable[[Any, str], EditResult],
                operation: str) -> EditResult:
    """Applies `inner_edit(nested_model, rest_of_path)` to the nested model named by the first
    component of `path`, then rebuilds `model` around the edited nested model; the report
    names variables by their full paths."""
    head, rest = path.split("/", 1)
    inner = find_layer(model, head)
    if not is_graph_model(inner):
        raise SelectorError(f"{path!r}: {head!r} is a {type(inner).__name__}, not a nested "
                            "model; name a top-level layer, or a layer inside a nested model",
                            layer=path)
    inner_result = inner_edit(inner, rest)
    new_inner = inner_result.model
    new_inner.name = inner.name if hasattr(new_inner, "name") else head
    outer = apply_edits(model, operation=operation, replace={head: new_inner})
    r = inner_result.report
    prefix = f"{head}/"
    initialized = tuple((f"{prefix}{p}", w) for p, w in r.initialized) + tuple(
        (p, w) for p, w in outer.report.initialized if not p.startswith(prefix))
    report = EditReport(operation, tuple(f"{prefix}{c}" for c in r.changes),
                        tuple(f"{prefix}{p}" for p in r.copied) + outer.report.copied,
                        tuple(f"{prefix}{p}" for p in r.converted), initialized,
                        params(model), params(outer.model))
    return EditResult(outer.model, report)
