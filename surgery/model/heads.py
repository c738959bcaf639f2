"""Classification heads: replace one (`replace_head`) or put one on a backbone (`add_head`).

Both return `EditResult(model, report)`: a new model (the input untouched; every weight outside
the head carried bitwise) and a `HeadReport` / `AddHeadReport` of what changed.
`replace_head` finds the head (the last Dense in model order, nested models included,
or the layer you name), gives it `num_classes` units, and with `keep_classes` carries the rows
of the classes that survive, so their logits (pre-activation) are exactly the old ones.

A keras-hub task model (subclassed, no graph to edit) is rebuilt from its own config with the
new ``num_classes``, as Keras would load it, over a copy of the same backbone; `add_head`
copies a subclassed backbone the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import OptionError, SelectorError, UnsupportedModelError
from ..io.livemodels import require_live_model
from .rebuild import carry_weights, copy_model, find_layer_config, is_graph, \
    iter_layer_configs, keras_module, model_config, rebuild, rebuild_serialized, \
    serialized_config
from ..io.sources import open_weights
from ..results import EditResult

__all__ = ["HeadReport", "AddHeadReport", "find_head", "replace_head", "add_head"]


@dataclass(frozen=True)
class HeadReport:
    """What `replace_head` did.

    Attributes:
        layer: canonical path of the head layer.
        old_classes, new_classes: its units before and after.
        kept: the old classes carried, in their new order (new classes 0, 1, ...).
        activation: the new head's activation.
    """

    layer: str
    old_classes: int
    new_classes: int
    kept: tuple[int, ...] = ()
    activation: str = ""

    def to_dict(self) -> dict:
        return {"layer": self.layer, "old_classes": self.old_classes,
                "new_classes": self.new_classes, "kept": list(self.kept),
                "activation": self.activation}

    def __str__(self) -> str:
        kept = f"; classes {list(self.kept)} carried to 0..{len(self.kept) - 1}" if self.kept \
            else "; all classes new"
        return (f"head {self.layer!r}: {self.old_classes} -> {self.new_classes} classes "
                f"({self.activation}){kept}; every other weight copied bitwise")


@dataclass(frozen=True)
class AddHeadReport:
    """What `add_head` added on top of the backbone.

    Attributes:
        layer: the new Dense head's path.
        classes: its units.
        activation: its activation.
        pooling: ``avg``, ``max``, ``flatten``, or None where the backbone already gave vectors.
        pooling_layer: path of the pooling/flatten layer added before the head ("" for none).
    """

    layer: str
    classes: int
    activation: str
    pooling: str | None
    pooling_layer: str = ""

    def to_dict(self) -> dict:
        return {"layer": self.layer, "classes": self.classes, "activation": self.activation,
                "pooling": self.pooling, "pooling_layer": self.pooling_layer or None}

    def __str__(self) -> str:
        before = f"{self.pooling_layer!r} ({self.pooling}) + " if self.pooling_layer else ""
        return (f"added {before}head {self.layer!r}: {self.classes} classes "
                f"({self.activation}); every backbone weight copied bitwise")


def find_head(model: Any, layer: str | None = None) -> str:
    """The canonical path of the classification head: `layer` if given, else the last Dense.

    Raises:
        SelectorError: no such layer / no Dense layer; lists the candidates.
    """
    if not is_graph(model) and serialized_config(model) is not None:
        return _live_head(model, layer)
    config = model_config(model)
    dense = [p for p, lc in iter_layer_configs(config) if lc.get("class_name") == "Dense"]
    if layer is not None:
        lc = find_layer_config(config, layer)
        if lc.get("class_name") != "Dense":
            raise SelectorError(f"layer {layer!r} is a {lc.get('class_name')}, not a Dense head; "
                                f"Dense layers: {', '.join(dense) or 'none'}")
        return layer
    if not dense:
        candidates = [p for p, lc in iter_layer_configs(config)
                      if "units" in (lc.get("config") or {}) or
                      "filters" in (lc.get("config") or {})]
        raise SelectorError(f"{model.name}: no Dense head found; candidates: "
                            f"{', '.join(candidates) or 'none'}; name one with head=... "
                            "(--layer), or add one with add_head")
    return dense[-1]


def _live_head(model: Any, layer: str | None) -> str:
    """`find_head` for a subclassed model (a keras-hub task): the last Dense among its own
    layers (not one inside its backbone), as the live model holds them."""
    objects = open_weights(model).layer_objects
    dense = [p for p, obj in objects.items() if type(obj).__name__ == "Dense" and "/" not in p]
    if layer is not None and layer not in dense:
        what = f"a {type(objects[layer]).__name__}" if layer in objects else \
            "no top-level layer of the model"
        raise SelectorError(f"layer {layer!r} is {what}, not a Dense head; Dense layers: "
                            f"{', '.join(dense) or 'none'}")
    if not dense:
        raise SelectorError(f"{model.name}: no Dense head found; name one with head=... "
                            "(--layer), or add one with add_head")
    return layer or dense[-1]


def _task_head(model: Any, serialized: dict, path: str, num_classes: int,
               activation: str | None) -> tuple[Any, int, str]:
    """(new model, old classes, activation) for a subclassed task model whose config sets its
    head's width (a keras-hub classifier's ``num_classes``): rebuilt from that config."""
    head = open_weights(model).layer_objects[path]
    old = int(head.units)
    cfg = serialized["config"]
    if "/" in path or cfg.get("num_classes") != old:
        raise UnsupportedModelError(
            f"{model.name}: a subclassed model has no graph to edit, and its config doesn't "
            f"set the width of {path!r} (no num_classes = {old}); replace_head works on "
            "Functional and Sequential models and on keras-hub task models")
    cfg["num_classes"] = int(num_classes)
    if activation is not None:
        cfg["activation"] = activation
    new = rebuild_serialized(model, serialized)
    new_head = open_weights(new).layer_objects[path]
    return new, old, str(new_head.get_config().get("activation"))


def replace_head(model: Any, num_classes: int, *, keep_classes: Sequence[int] | None = None,
                 activation: str | None = None, head: str | None = None,
                 seed: int | None = None) -> EditResult[HeadReport]:
    """A new model whose classification head has `num_classes` outputs.

    Args:
        model: a Functional or Sequential Keras 3 / tf_keras model.
        num_classes: units of the new head (>= 1).
        keep_classes: old class indices whose head rows become new classes 0, 1, ... (their
            logits stay exactly the same); the other new classes start fresh.
        activation: the new head's activation (default: the old head's).
        head: the head layer's path (default: the last Dense).
        seed: seed for the new head's initial weights.

    Returns:
        `EditResult(model, report)`: the new model (`model` is untouched) and a `HeadReport`.

    Raises:
        OptionError: `num_classes` < 1, `keep_classes` out of range or longer than
            `num_classes`.
        SelectorError: the head can't be found.

    Example:
    ```python
    new, report = surgery.replace_head(model, 4, keep_classes=[0, 3, 7])
    print(report)  # head 'head': 10 -> 4 classes (...); classes [0, 3, 7] carried to 0..2; ...
    ```
    """
    require_live_model(model, "replace_head")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise OptionError(f"num_classes must be a positive integer, got {num_classes!r}")
    path = find_head(model, head)
    serialized = None if is_graph(model) else serialized_config(model)
    if serialized is None:
        config = model_config(model)
        lc = find_layer_config(config, path)
        old_classes = int(lc["config"]["units"])
    else:
        old_classes = int(open_weights(model).layer_objects[path].units)
    keep = list(keep_classes or [])
    for i in keep:
        if not isinstance(i, (int, np.integer)) or not 0 <= i < old_classes:
            raise OptionError(f"keep class {i!r} is out of range for head {path!r} with "
                              f"{old_classes} classes (0..{old_classes - 1})")
    if len(keep) > num_classes:
        raise OptionError(f"{len(keep)} kept classes don't fit a head of {num_classes}; raise "
                          "num_classes or keep fewer")
    if len(set(keep)) != len(keep):
        raise OptionError(f"keep_classes lists a class twice: {keep}")
    if serialized is not None:
        new, old_classes, act = _task_head(model, serialized, path, num_classes, activation)
    else:
        new, act = _graph_head(model, config, lc, num_classes, activation, seed), None
    carry_weights(model, new, skip=[path])
    if serialized is not None and seed is not None:  # the head's own initializers, seeded
        from .reinit import reinitialize

        reinitialize(new, path, seed=int(seed))
    if keep:
        with open_weights(model) as old_w, open_weights(new) as new_w:
            for name in ("kernel", "bias"):
                key = f"{path}/{name}"
                if key not in old_w:
                    continue
                value = new_w.read(key)
                value[..., :len(keep)] = old_w.read(key)[..., keep]
                new_w.variable(key).assign(value)
    return EditResult(new, HeadReport(path, old_classes, int(num_classes),
                                      tuple(int(i) for i in keep),
                                      act or str(lc["config"].get("activation"))))


def _graph_head(model: Any, config: dict, lc: dict, num_classes: int, activation: str | None,
                seed: int | None) -> Any:
    """A Functional/Sequential model rebuilt with the head's config edited."""
    lc["config"]["units"] = int(num_classes)
    if activation is not None:
        lc["config"]["activation"] = activation
    if seed is not None:
        init = lc["config"].get("kernel_initializer")
        if isinstance(init, dict) and isinstance(init.get("config"), dict):
            init["config"]["seed"] = int(seed)
    return rebuild(model, config)


def add_head(backbone: Any, num_classes: int, *, pooling: str | None = "avg",
             activation: str = "softmax", name: str = "head") -> EditResult[AddHeadReport]:
    """A new model: a copy of `backbone` (weights carried) + pooling + a Dense head.

    Args:
        backbone: a headless Functional/Sequential model (feature maps or vectors out).
        num_classes: units of the head.
        pooling: ``avg`` or ``max`` (global pooling over spatial/time axes), ``flatten``, or
            None for a backbone that already outputs vectors.
        activation: the head's activation.
        name: the head layer's name.

    Returns:
        `EditResult(model, report)`: the new model (`backbone` is untouched) and an
        `AddHeadReport`.

    Raises:
        OptionError: `num_classes` < 1, an unknown `pooling`, or no pooling for a backbone
            whose output is not a vector.
        UnsupportedModelError: a backbone with more than one output.

    Example:
    ```python
    model, report = surgery.add_head(backbone, 5, pooling="avg")
    ```
    """
    require_live_model(backbone, "add_head")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise OptionError(f"num_classes must be a positive integer, got {num_classes!r}")
    if pooling not in ("avg", "max", "flatten", None):
        raise OptionError(f"pooling must be 'avg', 'max', 'flatten' or None, got {pooling!r}")
    k = keras_module(backbone)
    copy_ = copy_model(backbone)  # a subclassed backbone (keras-hub) as Keras copies it
    if len(copy_.outputs) != 1:
        raise UnsupportedModelError(f"{backbone.name}: add_head needs a backbone with one "
                                    f"output, it has {len(copy_.outputs)}")
    x = copy_.outputs[0]
    rank = len(x.shape)
    pool = ""
    if pooling == "flatten":
        pool = f"{name}_flatten"
        x = k.layers.Flatten(name=pool)(x)
    elif pooling is not None and rank in (3, 4, 5):
        kind = {"avg": "GlobalAveragePooling", "max": "GlobalMaxPooling"}[pooling]
        pool = f"{name}_pool"
        x = getattr(k.layers, f"{kind}{rank - 2}D")(name=pool)(x)
    elif rank != 2:
        raise OptionError(f"{backbone.name}: its output has shape {tuple(x.shape)}; give "
                          "pooling='avg', 'max' or 'flatten' to make vectors for the head")
    out = k.layers.Dense(int(num_classes), activation=activation, name=name)(x)
    new = k.Model(copy_.inputs, out, name=f"{backbone.name}_{name}")
    return EditResult(new, AddHeadReport(name, int(num_classes), str(activation),
                                         pooling if pool else None, pool))
