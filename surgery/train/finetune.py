"""`surgery.finetune`: partial fine-tuning with Keras `fit`, resumable, seeded.

Order: read and check the data; set what trains (`--train` = only these, `--freeze` = these
not; frozen BatchNorm in inference mode unless ``bn="train"``); optional LoRA; the optimizer
(per-layer learning rates through `learning_rates`); the loss (inferred from the head and the
labels when ``auto``; a head without softmax/sigmoid outputs logits); then `fit`, with a
checkpoint (weights, optimizer state, epoch, early stopping state; see `TrainingCheckpoint`)
written after every epoch so that ``resume=True`` continues exactly, and the best epoch's
weights (by validation loss, or training loss without validation) restored at the end. The
returned model is a clean copy (no optimizer, LoRA merged) ready to save.

Apart from the best-epoch restore, a run is exactly what plain Keras trains with the same
frozen layers, ``compile(optimizer, loss)`` and ``fit`` in the same batch order
(tests/test_finetune_vs_keras.py).
"""

from __future__ import annotations

import math
import numbers
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .data import (Data, as_inputs, check_against_model, eval_pipeline, flat_arrays, load_data,
                   samples, train_pipeline)
from ..errors import Interrupted, OptionError, SelectorError, SurgeryError, UnsupportedModelError
from ..io.livemodels import framework_of
from ..selection import select
from ..io.sources import open_weights

__all__ = ["FinetuneResult", "finetune", "infer_loss", "loss_object", "make_loss", "Interrupted",
           "set_trainable"]


@dataclass
class FinetuneResult:
    """What `finetune` did.

    Attributes:
        model: the trained model (clean: uncompiled, LoRA merged), best epoch's weights.
        epochs: one dict per epoch run: loss, metrics, val_loss..., seconds, trainable and
            frozen parameter counts.
        best_epoch: 1-based epoch whose weights `model` holds.
        stopped_early: early stopping ended the run.
        loss: the loss used; settings: what was asked.
        class_names: each output unit's class: the data's (CSV names, image folders), else
            the ones the model's file stores; () when neither has any.
    """

    model: Any
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    loss: str = ""
    data: str = ""
    settings: dict = field(default_factory=dict)
    adapters: dict = field(default_factory=dict)
    checkpoint: Any = field(default=None, repr=False, compare=False)
    resumed_after: int | None = None  # epochs the checkpoint held when the run resumed
    class_names: tuple[str, ...] = ()

    def remove_checkpoint(self) -> None:
        """Removes a checkpoint kept with ``keep_checkpoint=True`` (only the files it wrote)."""
        if self.checkpoint is not None:
            self.checkpoint.finish()
            self.checkpoint = None

    @property
    def history(self) -> dict[str, list]:
        keys = [k for k in (self.epochs[0] if self.epochs else {}) if k != "epoch"]
        return {k: [e.get(k) for e in self.epochs] for k in keys}

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early, "loss": self.loss, "data": self.data,
                "settings": self.settings, "class_names": list(self.class_names),
                "resumed_after": self.resumed_after}

    def __str__(self) -> str:
        lines = [f"fine-tuned on {self.data}", f"loss: {self.loss}"]
        if self.resumed_after is not None:
            lines.append(f"resumed after epoch {self.resumed_after} of "
                         f"{self.settings.get('epochs', '?')}")
        if self.class_names:
            from ..io.inventory import classes_line

            lines.append(classes_line(self.class_names))
        for e in self.epochs:
            parts = [f"{k} {v:.4f}" for k, v in e.items()
                     if isinstance(v, float) and k not in ("seconds",)]
            lines.append(f"  epoch {e['epoch']:>3}: {', '.join(parts)} ({e['seconds']:.1f} s)")
        if self.best_epoch is not None:
            lines.append(f"best epoch {self.best_epoch}"
                         + (" (stopped early)" if self.stopped_early else ""))
        return "\n".join(lines)


def infer_loss(model, y: np.ndarray) -> tuple[str, list[str], bool]:
    """(loss name, metrics, from_logits) from the head's width and activation and the labels.

    A head without softmax/sigmoid outputs logits: its crossentropy takes ``from_logits``.
    Integer labels with one class index per step of a sequence output (a causal LM's next
    tokens, shape (samples, steps) for an output (samples, steps, vocabulary)) take the
    sparse categorical crossentropy too.
    """
    head = _output_activation(model)
    width = int(model.outputs[0].shape[-1])
    integer = y.dtype.kind in "iu"
    if width == 1:
        if integer or set(np.unique(y).tolist()) <= {0.0, 1.0}:
            return "binary_crossentropy", ["accuracy"], head != "sigmoid"
        return "mean_squared_error", ["mean_absolute_error"], False
    if integer and y.ndim == 1:
        return "sparse_categorical_crossentropy", ["accuracy"], head != "softmax"
    out = tuple(model.outputs[0].shape[1:-1])  # a class index per step (a causal LM's tokens)
    if integer and y.ndim > 1 and len(out) == y.ndim - 1 and \
            all(d is None or d == g for d, g in zip(out, y.shape[1:])):
        return "sparse_categorical_crossentropy", ["accuracy"], head != "softmax"
    if y.ndim == 2 and y.shape[1] == width:
        one_hot = bool(np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1))
        if head == "softmax" or one_hot:
            return "categorical_crossentropy", ["accuracy"], head != "softmax"
        return "mean_squared_error", ["mean_absolute_error"], False
    raise OptionError(f"can't infer a loss for labels {y.dtype} {y.shape[1:]} and a head of "
                      f"{width} units ({head}); pass --loss NAME")


# Keras's loss functions by name take probabilities; these classes take `from_logits`.
_CROSSENTROPY = {"sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
                 "categorical_crossentropy": "CategoricalCrossentropy",
                 "binary_crossentropy": "BinaryCrossentropy"}


def loss_object(name: str, from_logits: bool, *, reduction: str | None = "sum_over_batch_size"):
    """The Keras loss object for `name` (a Keras loss name), honouring `from_logits`.

    ``keras.losses.get({"class_name": "sparse_categorical_crossentropy", "config": {...}})``
    returns the plain function and drops the config, so a logits head would be trained as if
    it output probabilities: the classes are built here instead.
    """
    from ..io.tfimport import keras as _keras

    keras = _keras()
    try:
        fn = keras.losses.get(name)
    except (ValueError, TypeError):
        raise OptionError(f"unknown loss {name!r}; use auto or a Keras loss name such as "
                          "sparse_categorical_crossentropy, mse") from None
    canonical = getattr(fn, "__name__", None)
    if canonical in _CROSSENTROPY:
        return getattr(keras.losses, _CROSSENTROPY[canonical])(from_logits=from_logits,
                                                                reduction=reduction)
    return fn  # a per-sample function (Keras reduces it) or a Loss object


def make_loss(model, y: np.ndarray, loss: str = "auto"):
    """(loss object, metrics, description) for `loss` (``auto`` or a Keras loss name).

    A named crossentropy on a head without softmax/sigmoid takes its outputs as logits (the
    description says so): treating logits as probabilities trains nothing useful.
    """
    if not isinstance(loss, str):
        raise OptionError(f"loss must be auto or a Keras loss name, got {loss!r}")
    if loss == "auto":
        name, metrics, from_logits = infer_loss(model, y)
    else:
        name, metrics = loss, []
        from_logits = _output_activation(model) not in ("softmax", "sigmoid")
    obj = loss_object(name, from_logits)
    logits = from_logits and type(obj).__name__ in _CROSSENTROPY.values()
    return obj, metrics, name + (" (from logits)" if logits else "")


def _output_activation(model) -> str:
    try:  # the layer that produced the (first) output; not always the last in model.layers
        layer = model.outputs[0]._keras_history[0]
    except (AttributeError, IndexError, TypeError):
        layer = model.layers[-1]
    while hasattr(layer, "layers") and layer.layers:
        layer = layer.layers[-1]
    name = type(layer).__name__
    if name == "Softmax":
        return "softmax"
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", str(act)) if act is not None else "linear"


def _params(model) -> tuple[int, int]:
    t = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return t, sum(int(np.prod(v.shape)) for v in model.weights) - t


def fingerprint(model) -> dict[str, list]:
    with open_weights(model) as w:
        return {v.path: list(v.shape) for v in w.variables()}


def fingerprint_diff(saved: dict, now: dict) -> str:
    only_saved = [p for p in saved if p not in now]
    only_now = [p for p in now if p not in saved]
    shapes = [f"{p} {tuple(saved[p])} vs {tuple(now[p])}" for p in saved
              if p in now and saved[p] != now[p]]
    parts = []
    if shapes:
        parts.append("shapes differ: " + ", ".join(shapes[:3]))
    if only_saved:
        parts.append("only in the checkpoint: " + ", ".join(only_saved[:3]))
    if only_now:
        parts.append("only in the model: " + ", ".join(only_now[:3]))
    return "; ".join(parts)


def _strategy(name: str):
    from ..io.tfimport import tensorflow

    tf = tensorflow()
    if name in ("auto", "one"):
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        raise OptionError("strategy multiworker trains through its own loop: call "
                          "surgery.train.multiworker.finetune_multiworker (the CLI does)")
    raise OptionError(f"unknown strategy {name!r}; use auto, one, mirrored or multiworker")


def set_trainable(model, train: Sequence[str], freeze: Sequence[str], bn: str, *,
                  lora: bool = False) -> None:
    """`train`: only these train (unfrozen first); `freeze`: these don't. Whole layers only.

    With `lora`, everything `train` does not name is frozen: LoRA adapters (enabled after
    this) and `train` are what trains.
    """
    from ..model.freezing import freeze as freeze_fn, unfreeze as unfreeze_fn

    if train:
        unfreeze_fn(model, *train, allow_partial=False)
        variables = open_weights(model).variables()
        if len(select(variables, train, what=model.name)) < len(variables):
            freeze_fn(model, except_=list(train), bn=bn, allow_partial=False)
    elif lora:
        if freeze:  # redundant with LoRA (everything is frozen), but must match something
            select(open_weights(model).variables(), freeze, what=model.name)
        freeze_fn(model, bn=bn, allow_partial=False)
    elif freeze:
        freeze_fn(model, *freeze, bn=bn, allow_partial=False)


def _lora_targets(model, lora_select: Sequence, train: Sequence) -> list:
    """The LoRA selectors: `lora_select`, or every supported layer `train` doesn't train."""
    from ..model.lora import supported

    src = open_weights(model)
    trained = {v.layer for v in select(src.variables(), train, what=model.name)} \
        if train else set()
    if lora_select:
        both = sorted(trained & {v.layer for v in select(src.variables(), lora_select,
                                                         what=model.name)})
        if both:
            raise SelectorError(f"--train and --lora-select overlap on {', '.join(both[:3])}; a "
                                "layer trains either fully or through LoRA adapters")
        return list(lora_select)
    layers = [p for p, layer in src.layer_objects.items()
              if type(layer).__name__ in supported() and p not in trained]
    if not layers:
        raise SelectorError(f"{model.name}: no layer left for LoRA ({', '.join(supported())}) "
                            "outside --train; name some with --lora-select")
    return [(lambda v, p=p: v.layer == p) for p in layers]


def _clean_copy(model, config: dict | None = None):
    """A new, uncompiled model from `config` (default: the model's own; a subclassed model
    that serializes, such as a keras-hub task, is copied as Keras saves and loads it) with
    its weights."""
    from ..model.rebuild import carry_weights, copy_model, rebuild

    if config is None:
        return copy_model(model)
    fresh = rebuild(model, config)
    carry_weights(model, fresh)
    return fresh


def _l2sp_loss(model, base, keras, alpha: float, beta: float):
    """The base loss plus the L2-SP penalty, anchored at the weights as they are now."""
    from ..model.heads import find_head
    from ..model.saving import source_path

    if source_path(model) is None:
        raise OptionError(f"--l2sp needs pretrained weights to anchor to; {model.name} was not "
                          "loaded from a file (load it with surgery.load_model first)")
    try:
        head = find_head(model)
    except SurgeryError:
        head = None
    with open_weights(model) as w:
        head_ids = {id(w.variable(v.path)) for v in w.variables()
                    if head and (v.layer == head or v.layer.startswith(head + "/"))}
    ops = keras.ops
    anchored = [(v, ops.convert_to_tensor(np.array(v.numpy()))) for v in model.trainable_weights
                if id(v) not in head_ids]
    heads = [v for v in model.trainable_weights if id(v) in head_ids]
    base_fn = keras.losses.get(base) if isinstance(base, str) else base

    def loss(y_true, y_pred):
        penalty = 0.0
        for v, anchor in anchored:
            penalty = penalty + ops.sum(ops.square(v - anchor))
        head_term = 0.0
        for v in heads:
            head_term = head_term + ops.sum(ops.square(v))
        return base_fn(y_true, y_pred) + 0.5 * alpha * penalty + 0.5 * beta * head_term

    return loss


def _policy_name(keras) -> str:
    from ..io.tfimport import tensorflow

    gpus = tensorflow().config.list_logical_devices("GPU")
    return "mixed_float16" if gpus else "mixed_bfloat16"


def _with_dtypes(config: dict, original: dict) -> dict:
    """`config` (trainable flags as trained) with each layer's dtype policy from `original`."""
    from ..model.rebuild import iter_layer_configs

    policies = {p: lc.get("config", {}).get("dtype") for p, lc in iter_layer_configs(original)}
    for path, lc in iter_layer_configs(config):
        if path in policies and isinstance(lc.get("config"), dict) and "dtype" in lc["config"]:
            lc["config"]["dtype"] = policies[path]
    return config


def _float_policies(config: Any, policy, names: tuple = ("float32",)) -> None:
    """Replaces, in place, every dtype policy named in `names` that a serialized layer holds
    (a keras-hub backbone's ``dtype``, which its layers follow) with `policy(old)`, in a
    fixed walk order; integer inputs keep theirs."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            old = item.get("dtype")
            name = (old.get("config") or {}).get("name") if isinstance(old, dict) else old
            if "name" in item and name in names:
                item["dtype"] = policy(old)
            stack.extend(v for k, v in item.items() if k != "dtype")
        elif isinstance(item, list):
            stack.extend(item)


def _mixed_serialized(model, keras):
    """A subclassed model that serializes (a keras-hub task), copied with the mixed policy
    wherever its config holds a float32 one (a keras-hub head follows its backbone's policy,
    and Keras's losses compute in float32)."""
    from ..model.rebuild import carry_weights, rebuild_serialized, serialized_config

    config = serialized_config(model)
    if config is None:
        raise UnsupportedModelError(f"{model.name}: --mixed-precision trains a copy with another "
                                    "dtype policy, and this subclassed model has no config to "
                                    "copy it from (no get_config); train it without "
                                    "--mixed-precision")
    name = _policy_name(keras)
    _float_policies(config, lambda old: {"module": "keras", "class_name": "DTypePolicy",
                                         "config": {"name": name}, "registered_name": None})
    fresh = rebuild_serialized(model, config)
    carry_weights(model, fresh)
    return fresh


def _float32_serialized(model, original: dict, keras):
    """The trained subclassed model (trainable flags as trained) with the dtype policies of
    `original` (its serialized config before mixed precision), weights carried by path."""
    from ..model.rebuild import carry_weights, rebuild_serialized, serialized_config

    config = serialized_config(model)
    policies = []
    _float_policies(original, lambda old: policies.append(old) or old)
    _float_policies(config, lambda old: policies.pop(0) if policies else old,
                    (_policy_name(keras),))
    fresh = rebuild_serialized(model, config)
    carry_weights(model, fresh)
    return fresh


def _mixed_copy(model, keras):
    """A copy computing in float16/bfloat16 (variables float32); the output layer stays
    float32 for a stable loss."""
    from ..model.rebuild import is_graph, iter_layer_configs, model_config

    if not is_graph(model):
        return _mixed_serialized(model, keras)
    config = model_config(model)
    layers = list(iter_layer_configs(config))
    policy = {"module": "keras", "class_name": "DTypePolicy",
              "config": {"name": _policy_name(keras)}, "registered_name": None}
    for _, lc in layers[:-1]:
        if isinstance(lc.get("config"), dict) and "dtype" in lc["config"]:
            lc["config"]["dtype"] = dict(policy)
    return _clean_copy(model, config)


def _real(name: str, value: Any, *, low: float, high: float | None = None,
          low_open: bool = True, high_open: bool = False, optional: bool = False) -> None:
    """Refuses a value that is not a finite real number in the given range."""
    if value is None and optional:
        return
    rng = (f"above {low:g}" if low_open else f"of at least {low:g}") if high is None else \
        f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and \
        math.isfinite(value) and (value > low if low_open else value >= low) and \
        (high is None or (value < high if high_open else value <= high))
    if not ok:
        raise OptionError(f"{name} must be a finite number {rng}, got {value!r}")


def _whole(name: str, value: Any, *, low: int, optional: bool = False,
           high: int | None = None) -> None:
    if value is None and optional:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise OptionError(f"{name} must be a whole number of at least {low}, got {value!r}")
    if high is not None and value > high:
        raise OptionError(f"{name} must be at most {high:,}, got {value:,}")


MAX_COUNT = 2**31 - 1  # the largest epoch count and batch size TensorFlow's int32 counters hold


def _check_options(o: dict) -> None:
    """Refuses non-finite, out-of-range and contradictory options before anything runs."""
    _whole("--epochs", o["epochs"], low=1, high=MAX_COUNT)
    _whole("--batch-size", o["batch_size"], low=1, high=MAX_COUNT)
    _whole("--seed", o["seed"], low=0)
    _whole("--early-stop", o["early_stop"], low=1, optional=True)
    _whole("--lora-rank", o["lora_rank"], low=1, optional=True)
    _real("--lr", o["lr"], low=0)
    _real("--layer-decay", o["layer_decay"], low=0, high=1, optional=True)
    _real("--l2sp", o["l2sp"], low=0, low_open=False, optional=True)
    _real("--l2sp-head", o["l2sp_head"], low=0, low_open=False, optional=True)
    _real("--val-split", o["val_split"], low=0, high=1, high_open=True, optional=True)
    for selector, mult in (o["lr_mult"] or {}).items():
        _real(f"--lr-mult {selector}", mult, low=0)
    if o["bn"] not in ("inference", "train"):
        raise OptionError(f"--bn must be inference or train, got {o['bn']!r}")
    if o["lora_select"] and not o["lora_rank"]:
        raise OptionError("--lora-select needs --lora-rank R (the adapters' rank)")
    if o["val"] is not None and o["val_split"] is not None:
        raise OptionError("--val and --val-split both give validation data; pass one")


def _names(selectors: Sequence) -> list:
    return [s if isinstance(s, str) else getattr(s, "__qualname__", repr(s))
            for s in selectors or ()]


def _input_paths(model, data, val) -> list[str]:
    from ..model.saving import source_path

    paths = [source_path(model)]
    for d in (data, val):
        if isinstance(d, (str, os.PathLike)):
            paths.append(os.fspath(d))
        elif isinstance(d, Data) and d.kind != "arrays":
            paths.append(d.source)
    return [p for p in paths if p]


def _ordered_pipeline(x: np.ndarray, y: np.ndarray, *, batch_size: int, epochs: int):
    """Batches in the data's own order, every epoch (``shuffle=False``)."""
    from ..io.tfimport import tensorflow

    tf = tensorflow()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).repeat(
        max(epochs, 1)).prefetch(tf.data.AUTOTUNE)


def finetune(model: Any, data: Any, *, train: Sequence[str] = (), freeze: Sequence[str] = (),
             bn: str = "inference", epochs: int = 1, batch_size: int = 32, lr: float = 1e-3,
             lr_mult: dict | None = None, layer_decay: float | None = None,
             optimizer: str = "adam", loss: str = "auto", label: str | None = None,
             val: Any = None, val_split: float | None = None, early_stop: int | None = None,
             seed: int = 0, strategy: str = "auto", lora_rank: int | None = None,
             lora_select: Sequence[str] = (), checkpoint: str | None = None,
             resume: bool = False, overwrite: bool = False, shuffle: bool = True,
             verbose: int = 1, callbacks: Sequence[Any] = (), mixed_precision: bool = False,
             l2sp: float | None = None, l2sp_head: float | None = None,
             keep_checkpoint: bool = False) -> FinetuneResult:
    """Fine-tunes the selected part of a Keras 3 model on real data.

    A model with named inputs (a keras-hub text model) takes a dict of arrays by input name
    (an `.npz` with ``x.token_ids``, ``x.padding_mask``...). A keras-hub task's preprocessor
    is not applied during training (the data is preprocessed already: token ids, images as
    arrays); the result keeps it.

    Args:
        model: a Keras 3 model (changed in place as training goes; the result holds a clean
            copy with the best weights).
        data: a data path (`.npz`, `.csv`, image folder, saved `tf.data`), a `Data`, or an
            ``(x, y)`` pair.
        train: selectors of what trains (everything else is frozen).
        freeze: selectors of what is frozen (everything else trains).
        bn: ``inference`` (frozen BatchNorm keeps its statistics) or ``train``.
        epochs, batch_size, lr, optimizer: the usual; `optimizer` is adam, adamw, sgd, rmsprop.
        lr_mult: selector -> learning-rate multiplier; layer_decay: from the head down.
        loss: ``auto`` or a Keras loss name. A crossentropy on a head without softmax/sigmoid
            takes the outputs as logits (``from_logits=True``).
        label: CSV label column. val / val_split: validation data or held-out fraction.
        early_stop: stop after this many epochs without improvement (validation loss, or
            training loss without validation).
        seed: seeds Keras, the shuffle order and the split: same seed, same result.
        strategy: ``auto``/``one`` (default device) or ``mirrored`` (all local devices).
        lora_rank, lora_select: train LoRA adapters on these layers (default: every supported
            layer `train` doesn't name); everything else is frozen unless `train` names it.
            The result is merged.
        checkpoint: folder for per-epoch checkpoints (default: none). It must be new, or a
            checkpoint folder of an earlier run (``resume`` or ``overwrite``); see
            `TrainingCheckpoint`.
        resume: continue from `checkpoint` (same model, data and settings; more epochs).
        overwrite: start over in an existing checkpoint folder of an earlier run.
        keep_checkpoint: leave the finished run's checkpoint in place; the caller removes it
            with `result.remove_checkpoint()` once the trained model is safely written (the
            CLI does), so a failing final write never loses the training.
        shuffle: each epoch in a stateless shuffle order seeded by ``(seed, epoch)``
            (default), or in the data's own order.
        mixed_precision: compute in float16 (GPU, with loss scaling) or bfloat16 (CPU) while
            variables stay float32; the output model keeps the original float32 policy.
        l2sp: L2-SP (Li, Grandvalet & Davoine, ICML 2018): add ``l2sp/2 * ||w - w0||^2`` for
            every trainable weight outside the head, pulling it toward its pretrained value
            w0 instead of toward zero; `l2sp_head` adds ``l2sp_head/2 * ||w||^2`` on the head.
            Applied in the training loss only: the saved model needs no custom code.

    Returns:
        A `FinetuneResult`.

    Raises:
        OptionError: a non-finite or out-of-range option, a checkpoint of other settings.
        InputError, ShapeError: data that can't be read or doesn't fit the model; a
            checkpoint of another model or other data.
        FormatError: a damaged checkpoint. OutputError: a checkpoint folder that is not the
            tool's own, holds an input, or exists without `resume`/`overwrite`.
        SelectorError: `train` and `freeze` overlap, or a selector matches nothing.
        Interrupted: Ctrl-C; the last finished epoch's checkpoint is kept.

    Example:
    ```python
    result = surgery.finetune(model, "data/new_task.npz", train=["head", "block3_*"],
                              epochs=5, lr=1e-3, early_stop=2, seed=0)
    surgery.save_model(result.model, "finetuned.keras")
    ```
    """
    from ..io import tfimport
    from ..model.rebuild import is_graph, model_config, serialized_config
    from .outputs import TrainingCheckpoint

    _check_options(dict(epochs=epochs, batch_size=batch_size, seed=seed, early_stop=early_stop,
                        lora_rank=lora_rank, lr=lr, layer_decay=layer_decay, l2sp=l2sp,
                        l2sp_head=l2sp_head, val_split=val_split, lr_mult=lr_mult, bn=bn,
                        lora_select=lora_select, val=val))
    keras = tfimport.keras()
    if framework_of(model) == "tf_keras":
        raise UnsupportedModelError("finetune trains Keras 3 models; convert a Keras 2 model first "
                                    "(surgery convert MODEL.h5 -o MODEL.keras)")
    o = _Options(train=train, freeze=freeze, bn=bn, epochs=epochs, batch_size=batch_size, lr=lr,
                 lr_mult=lr_mult, layer_decay=layer_decay, optimizer=optimizer, loss=loss,
                 early_stop=early_stop, seed=seed, strategy=strategy, lora_rank=lora_rank,
                 lora_select=lora_select, shuffle=shuffle, mixed_precision=mixed_precision,
                 l2sp=l2sp, l2sp_head=l2sp_head)
    inputs = _input_paths(model, data, val)
    data = _training_data(model, data, label=label, val=val, val_split=val_split, seed=seed)
    names = _class_names(model, data)
    _refuse_overlap(model, train, freeze)
    settings = o.settings(keras)
    state = TrainingCheckpoint(checkpoint, model=model, settings=settings, resume=resume,
                               overwrite=overwrite, inputs=inputs,
                               data_arrays=flat_arrays(data.x, data.y, data.x_val, data.y_val))
    dist = _strategy(strategy)
    keras.utils.set_random_seed(seed)
    original_config = model_config(model) if is_graph(model) else \
        serialized_config(model) if mixed_precision else None
    model, loss_desc = _compiled(model, data, o, keras, dist)
    tracker = _fit(model, data, o, state, verbose=verbose, callbacks=callbacks)
    result_model, adapters = _finish(model, o, state, original_config)
    result = FinetuneResult(result_model, state.epochs, state.best_epoch, tracker.stopped,
                            loss_desc, data.describe(), settings, adapters,
                            class_names=names, resumed_after=state.first if resume else None)
    if keep_checkpoint:
        result.checkpoint = state
    else:
        state.finish()
    return result


@dataclass(frozen=True)
class _Options:
    """`finetune`'s training options, gathered once for the steps below."""

    train: Sequence = ()
    freeze: Sequence = ()
    bn: str = "inference"
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    lr_mult: dict | None = None
    layer_decay: float | None = None
    optimizer: str = "adam"
    loss: str = "auto"
    early_stop: int | None = None
    seed: int = 0
    strategy: str = "auto"
    lora_rank: int | None = None
    lora_select: Sequence = ()
    shuffle: bool = True
    mixed_precision: bool = False
    l2sp: float | None = None
    l2sp_head: float | None = None

    def settings(self, keras) -> dict:
        """What was asked, JSON-ready: the result's and the checkpoint's record of the run."""
        return {"train": _names(self.train), "freeze": _names(self.freeze), "bn": self.bn,
                "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "optimizer": self.optimizer, "loss": self.loss, "seed": self.seed,
                "shuffle": bool(self.shuffle), "strategy": self.strategy,
                "lr_mult": {str(k): v for k, v in (self.lr_mult or {}).items()},
                "layer_decay": self.layer_decay, "lora_rank": self.lora_rank,
                "lora_select": _names(self.lora_select), "early_stop": self.early_stop,
                "mixed_precision": _policy_name(keras) if self.mixed_precision else None,
                "l2sp": self.l2sp, "l2sp_head": self.l2sp_head}


def _training_data(model, data, *, label, val, val_split, seed) -> Data:
    """`data` as a checked `Data`: a `Data` or an ``(x, y)`` pair checked against the model,
    anything else read by `load_data`."""
    if isinstance(data, Data):
        check_against_model(data, model)
    elif isinstance(data, tuple) and len(data) == 2:
        data = Data(as_inputs(data[0]), np.asarray(data[1]), None, None, "arrays", "arrays")
        check_against_model(data, model)
    else:
        data = load_data(data, model, label=label, val=val, val_split=val_split, seed=seed)
    return data


def _class_names(model, data: Data) -> tuple[str, ...]:
    """The data's class names, which must be those the model's file stores (if any), or
    the stored ones for data without names."""
    from ..io.classnames import agreed_class_names
    from ..model.saving import source_path

    return agreed_class_names(source_path(model), data.classes, data_source=data.source,
                              width=int(model.outputs[0].shape[-1]))


def _refuse_overlap(model, train: Sequence, freeze: Sequence) -> None:
    """Refuses `train` and `freeze` selectors that reach the same variable."""
    if not (train and freeze):
        return
    variables = open_weights(model).variables()
    a = {v.path for v in select(variables, train, what=model.name)}
    b = {v.path for v in select(variables, freeze, what=model.name)}
    both = [v.path for v in variables if v.path in a & b]
    if both:
        raise SelectorError(f"--train and --freeze overlap on {', '.join(both[:3])}"
                            f"{' ...' if len(both) > 3 else ''}; a variable can't do both")


def _compiled(model, data: Data, o: _Options, keras, dist):
    """(model, loss description): the model to train (a copy under a strategy or mixed
    precision) with what trains set, LoRA enabled, and compiled with the optimizer and loss,
    all inside the strategy's scope."""
    from ..model.lora import enable_lora

    with dist.scope() if dist is not None else _NullScope():
        if dist is not None or o.mixed_precision:
            model = _mixed_copy(model, keras) if o.mixed_precision else _clean_copy(model)
        set_trainable(model, o.train, o.freeze, o.bn, lora=bool(o.lora_rank))
        if o.lora_rank:
            enable_lora(model, *_lora_targets(model, o.lora_select, o.train),
                        rank=int(o.lora_rank))
        if not model.trainable_weights:
            raise SelectorError(f"{model.name}: nothing left to train; check --train/--freeze")
        opt = _optimizer(model, o, keras)
        loss_obj, metrics, loss_desc = make_loss(model, data.y, o.loss)
        if o.l2sp is not None or o.l2sp_head is not None:
            loss_obj = _l2sp_loss(model, loss_obj, keras, o.l2sp or 0.0, o.l2sp_head or 0.0)
            loss_desc += f" + L2-SP(alpha={o.l2sp or 0.0:g}, beta={o.l2sp_head or 0.0:g})"
        if o.mixed_precision and _policy_name(keras) == "mixed_float16":
            opt = keras.optimizers.LossScaleOptimizer(opt)
        model.compile(optimizer=opt, loss=loss_obj, metrics=metrics)
    return model, loss_desc


def _optimizer(model, o: _Options, keras):
    """The optimizer: per-layer learning rates when asked, else one learning rate."""
    from .learning_rates import _make, learning_rates

    if o.lr_mult or o.layer_decay:
        return learning_rates(model, o.lr_mult or {}, o.lr, decay=o.layer_decay,
                              optimizer=o.optimizer).optimizer
    return _make(o.optimizer, o.lr, keras)


def _fit(model, data: Data, o: _Options, state, *, verbose: int, callbacks: Sequence):
    """Runs `fit` from the checkpoint's first unfinished epoch; returns the `_Tracker`.
    Ctrl-C raises `Interrupted`, the last finished epoch's checkpoint kept."""
    first = state.restore(model)
    steps = math.ceil(samples(data.x) / o.batch_size)
    if o.shuffle:
        train_ds = train_pipeline(data.x, data.y, batch_size=o.batch_size, seed=o.seed,
                                  first_epoch=first, epochs=o.epochs)
    else:
        train_ds = _ordered_pipeline(data.x, data.y, batch_size=o.batch_size,
                                     epochs=o.epochs - first)
    val_ds = eval_pipeline(data.x_val, data.y_val, batch_size=o.batch_size) \
        if data.x_val is not None else None
    tracker = _Tracker(state, o.early_stop, val_ds is not None)
    preprocessor = getattr(model, "preprocessor", None)
    try:
        if first < o.epochs:
            if preprocessor is not None:  # a keras-hub task: the data is preprocessed already
                model.preprocessor = None
            model.fit(train_ds, epochs=o.epochs, initial_epoch=first, steps_per_epoch=steps,
                      validation_data=val_ds, callbacks=[tracker, *callbacks], verbose=verbose,
                      shuffle=False)
    except KeyboardInterrupt:
        where = f"; checkpoint in {state.folder}, rerun with --resume" if state.folder else ""
        raise Interrupted(f"interrupted after epoch {len(state.epochs)}{where}; nothing was "
                          "written") from None
    finally:
        if preprocessor is not None:
            model.preprocessor = preprocessor
    return tracker


def _finish(model, o: _Options, state, original_config: dict | None) -> tuple[Any, dict]:
    """(result model, LoRA adapters): the best epoch's weights in a clean model, LoRA merged
    (its adapters kept apart), or an uncompiled copy with the original dtype policies."""
    from ..model.lora import merge_lora
    from ..model.rebuild import keras_module, model_config

    state.load_best(model)
    adapters = {}
    if o.lora_rank:
        with open_weights(model) as w:
            adapters = {k: w.read(k) for k in w if "/lora_kernel_" in k}
        result_model = merge_lora(model)
    elif original_config is None:  # a subclassed model (keras-hub): Keras's own copy
        result_model = _clean_copy(model)
    elif "layers" not in (original_config.get("config") or {}):  # subclassed, mixed precision
        result_model = _float32_serialized(model, original_config, keras_module(model))
    else:
        result_model = _clean_copy(model, _with_dtypes(model_config(model), original_config))
    return result_model, adapters


class _NullScope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _callback_base():
    from ..io.tfimport import keras

    return keras().callbacks.Callback


class _Tracker(_callback_base()):
    """Records each epoch, tracks the best, stops early, writes the checkpoint."""

    def __init__(self, state, patience: int | None, has_val: bool):
        super().__init__()
        self.state, self.patience = state, patience
        self.monitor = "val_loss" if has_val else "loss"
        self.stopped = False
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        t, f = _params(self.model)
        record = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
                  "seconds": round(time.perf_counter() - self._t0, 3),
                  "trainable_params": t, "frozen_params": f}
        st = self.state
        st.epochs.append(record)
        value = logs.get(self.monitor)
        improved = value is not None and (st.best is None or value < st.best)
        if improved:
            st.best, st.best_epoch, st.wait = float(value), epoch + 1, 0
        else:
            st.wait += 1
        if self.patience is not None and st.wait >= self.patience:
            self.model.stop_training = True
            self.stopped = True
        st.save(self.model, epoch + 1, improved)
