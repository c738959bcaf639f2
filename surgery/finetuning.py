"""`surgery.finetune`: partial fine-tuning with Keras `fit`, resumable, seeded.

Order: read and check the data; set what trains (`--train` = only these, `--freeze` = these
not; frozen BatchNorm in inference mode unless ``bn="train"``); optional LoRA; the optimizer
(per-layer learning rates through `learning_rates`); the loss (inferred from the head and the
labels when ``auto``); then `fit`, with a checkpoint (weights, optimizer state, epoch, early
stopping state) written after every epoch so that ``resume=True`` continues exactly, and the
best epoch's weights (by validation loss, or training loss without validation) restored at the
end. The returned model is a clean copy (no optimizer, LoRA merged) ready to save.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .datasets import Data, check_against_model, eval_pipeline, load_data, train_pipeline
from .errors import InputError, OptionError, SelectorError, SurgeryError
from .livemodels import framework_of
from .selection import select
from .sources import open_weights

__all__ = ["FinetuneResult", "finetune", "infer_loss", "Interrupted", "set_trainable"]


class Interrupted(SurgeryError):
    """Training was interrupted (Ctrl-C); the last epoch's checkpoint is kept for --resume."""

    exit_code = 130


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
    """

    model: Any
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    loss: str = ""
    data: str = ""
    settings: dict = field(default_factory=dict)
    adapters: dict = field(default_factory=dict)

    @property
    def history(self) -> dict[str, list]:
        keys = [k for k in (self.epochs[0] if self.epochs else {}) if k != "epoch"]
        return {k: [e.get(k) for e in self.epochs] for k in keys}

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early, "loss": self.loss, "data": self.data,
                "settings": self.settings}

    def __str__(self) -> str:
        lines = [f"fine-tuned on {self.data}", f"loss: {self.loss}"]
        for e in self.epochs:
            parts = [f"{k} {v:.4f}" for k, v in e.items()
                     if isinstance(v, float) and k not in ("seconds",)]
            lines.append(f"  epoch {e['epoch']:>3}: {', '.join(parts)} ({e['seconds']:.1f} s)")
        if self.best_epoch is not None:
            lines.append(f"best epoch {self.best_epoch}"
                         + (" (stopped early)" if self.stopped_early else ""))
        return "\n".join(lines)


def infer_loss(model, y: np.ndarray) -> tuple[str, list[str], bool]:
    """(loss name, metrics, from_logits) from the head's width and activation and the labels."""
    head = _output_activation(model)
    width = int(model.outputs[0].shape[-1])
    integer = y.dtype.kind in "iu"
    if width == 1:
        if integer or set(np.unique(y).tolist()) <= {0.0, 1.0}:
            return "binary_crossentropy", ["accuracy"], head != "sigmoid"
        return "mean_squared_error", ["mean_absolute_error"], False
    if integer and y.ndim == 1:
        return "sparse_categorical_crossentropy", ["accuracy"], head != "softmax"
    if y.ndim == 2 and y.shape[1] == width:
        if head in ("softmax",):
            return "categorical_crossentropy", ["accuracy"], False
        return "mean_squared_error", ["mean_absolute_error"], False
    raise SurgeryError(f"can't infer a loss for labels {y.dtype} {y.shape[1:]} and a head of "
                       f"{width} units ({head}); pass --loss NAME")


def _output_activation(model) -> str:
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


def _fingerprint(model) -> dict[str, list]:
    with open_weights(model) as w:
        return {v.path: list(v.shape) for v in w.variables()}


def _fingerprint_diff(saved: dict, now: dict) -> str:
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
    from .tfimport import tensorflow

    tf = tensorflow()
    if name in ("auto", "one"):
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    raise OptionError(f"unknown strategy {name!r}; use auto, one, mirrored or multiworker")


def set_trainable(model, train: Sequence[str], freeze: Sequence[str], bn: str) -> None:
    """`train`: only these train (unfrozen first); `freeze`: these don't. Whole layers only."""
    from .trainability import freeze as freeze_fn, unfreeze as unfreeze_fn

    if train:
        unfreeze_fn(model, *train, allow_partial=False)
        variables = open_weights(model).variables()
        if len(select(variables, train, what=model.name)) < len(variables):
            freeze_fn(model, except_=list(train), bn=bn, allow_partial=False)
    elif freeze:
        freeze_fn(model, *freeze, bn=bn, allow_partial=False)


def _clean_copy(model, config: dict | None = None):
    """A new, uncompiled model from `config` (default: the model's own) with its weights."""
    from .rebuild import carry_weights, model_config, rebuild

    fresh = rebuild(model, config or model_config(model))
    carry_weights(model, fresh)
    return fresh


def _l2sp_loss(model, base, keras, alpha: float, beta: float):
    """The base loss plus the L2-SP penalty, anchored at the weights as they are now."""
    from .heads import find_head
    from .modelio import source_path

    if source_path(model) is None:
        raise SurgeryError(f"--l2sp needs pretrained weights to anchor to; {model.name} was not "
                           "loaded from a file (load it with surgery.load_model first)")
    if alpha < 0 or beta < 0:
        raise OptionError(f"L2-SP factors must be non-negative (got {alpha}, {beta})")
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
    from .tfimport import tensorflow

    gpus = tensorflow().config.list_logical_devices("GPU")
    return "mixed_float16" if gpus else "mixed_bfloat16"


def _with_dtypes(config: dict, original: dict) -> dict:
    """`config` (trainable flags as trained) with each layer's dtype policy from `original`."""
    from .rebuild import iter_layer_configs

    policies = {p: lc.get("config", {}).get("dtype") for p, lc in iter_layer_configs(original)}
    for path, lc in iter_layer_configs(config):
        if path in policies and isinstance(lc.get("config"), dict) and "dtype" in lc["config"]:
            lc["config"]["dtype"] = policies[path]
    return config


def _mixed_copy(model, keras):
    """A copy computing in float16/bfloat16 (variables float32); the output layer stays
    float32 for a stable loss."""
    from .rebuild import iter_layer_configs, model_config

    config = model_config(model)
    layers = list(iter_layer_configs(config))
    policy = {"module": "keras", "class_name": "DTypePolicy",
              "config": {"name": _policy_name(keras)}, "registered_name": None}
    for _, lc in layers[:-1]:
        if isinstance(lc.get("config"), dict) and "dtype" in lc["config"]:
            lc["config"]["dtype"] = dict(policy)
    return _clean_copy(model, config)


def finetune(model: Any, data: Any, *, train: Sequence[str] = (), freeze: Sequence[str] = (),
             bn: str = "inference", epochs: int = 1, batch_size: int = 32, lr: float = 1e-3,
             lr_mult: dict | None = None, layer_decay: float | None = None,
             optimizer: str = "adam", loss: str = "auto", label: str | None = None,
             val: Any = None, val_split: float | None = None, early_stop: int | None = None,
             seed: int = 0, strategy: str = "auto", lora_rank: int | None = None,
             lora_select: Sequence[str] = (), checkpoint: str | None = None,
             resume: bool = False, verbose: int = 1, callbacks: Sequence[Any] = (),
             mixed_precision: bool = False, l2sp: float | None = None,
             l2sp_head: float | None = None) -> FinetuneResult:
    """Fine-tunes the selected part of a Keras 3 model on real data.

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
        loss: ``auto`` or a Keras loss name.
        label: CSV label column. val / val_split: validation data or held-out fraction.
        early_stop: stop after this many epochs without improvement (validation loss, or
            training loss without validation).
        seed: seeds Keras, the shuffle order and the split: same seed, same result.
        strategy: ``auto``/``one`` (default device) or ``mirrored`` (all local devices).
        lora_rank, lora_select: train LoRA adapters on these layers; the result is merged.
        checkpoint: folder for per-epoch checkpoints (default: none unless `resume`).
        resume: continue from `checkpoint`.
        mixed_precision: compute in float16 (GPU, with loss scaling) or bfloat16 (CPU) while
            variables stay float32; the output model keeps the original float32 policy.
        l2sp: L2-SP (Li, Grandvalet & Davoine, ICML 2018): add ``l2sp/2 * ||w - w0||^2`` for
            every trainable weight outside the head, pulling it toward its pretrained value
            w0 instead of toward zero; `l2sp_head` adds ``l2sp_head/2 * ||w||^2`` on the head.
            Applied in the training loss only: the saved model needs no custom code.

    Returns:
        A `FinetuneResult`.

    Raises:
        InputError, ShapeError: data that can't be read or doesn't fit the model.
        SelectorError: `train` and `freeze` overlap, or a selector matches nothing.
        Interrupted: Ctrl-C; the last finished epoch's checkpoint is kept.

    Example:
    ```python
    result = surgery.finetune(model, "data/new_task.npz", train=["head", "block3_*"],
                              epochs=5, lr=1e-3, early_stop=2, seed=0)
    surgery.save_model(result.model, "finetuned.keras")
    ```
    """
    from . import tfimport
    from .lora import enable_lora, merge_lora
    from .lrgroups import learning_rates

    keras = tfimport.keras()
    if framework_of(model) == "tf_keras":
        raise SurgeryError("finetune trains Keras 3 models; convert a Keras 2 model first "
                           "(surgery convert MODEL.h5 -o MODEL.keras)")
    if epochs < 1 or batch_size < 1:
        raise OptionError(f"epochs and batch size must be at least 1 (got {epochs}, "
                          f"{batch_size})")
    if isinstance(data, Data):
        check_against_model(data, model)
    elif isinstance(data, tuple) and len(data) == 2:
        data = Data(np.asarray(data[0]), np.asarray(data[1]), None, None, "arrays", "arrays")
        check_against_model(data, model)
    else:
        data = load_data(data, model, label=label, val=val, val_split=val_split, seed=seed)
    variables = open_weights(model).variables()
    if train and freeze:
        a = {v.path for v in select(variables, train, what=model.name)}
        b = {v.path for v in select(variables, freeze, what=model.name)}
        both = [v.path for v in variables if v.path in a & b]
        if both:
            raise SelectorError(f"--train and --freeze overlap on {', '.join(both[:3])}"
                                f"{' ...' if len(both) > 3 else ''}; a variable can't do both")
    dist = _strategy(strategy)
    scope = dist.scope() if dist is not None else _NullScope()
    keras.utils.set_random_seed(seed)
    from .rebuild import model_config

    original_config = model_config(model)
    with scope:
        if dist is not None or mixed_precision:
            model = _mixed_copy(model, keras) if mixed_precision else _clean_copy(model)
        set_trainable(model, train, freeze, bn)
        if lora_rank:
            enable_lora(model, *lora_select, rank=int(lora_rank))
        if not model.trainable_weights:
            raise SelectorError(f"{model.name}: nothing left to train; check --train/--freeze")
        if lr_mult or layer_decay:
            opt = learning_rates(model, lr_mult or {}, lr, decay=layer_decay,
                                 optimizer=optimizer).optimizer
        else:
            from .lrgroups import _make

            opt = _make(optimizer, lr, keras)
        if loss == "auto":
            loss_name, metrics, from_logits = infer_loss(model, data.y)
            loss_obj = keras.losses.get({"class_name": loss_name,
                                         "config": {"from_logits": from_logits}}) \
                if from_logits else loss_name
            loss_desc = loss_name + (" (from logits)" if from_logits else "")
        else:
            try:
                loss_obj = keras.losses.get(loss)
            except ValueError:
                raise OptionError(f"unknown loss {loss!r}; use auto or a Keras loss name such "
                                  "as sparse_categorical_crossentropy, mse") from None
            metrics, loss_desc = [], loss
        if l2sp is not None or l2sp_head is not None:
            loss_obj = _l2sp_loss(model, loss_obj, keras, l2sp or 0.0, l2sp_head or 0.0)
            loss_desc += f" + L2-SP(alpha={l2sp or 0.0:g}, beta={l2sp_head or 0.0:g})"
        if mixed_precision and _policy_name(keras) == "mixed_float16":
            opt = keras.optimizers.LossScaleOptimizer(opt)
        model.compile(optimizer=opt, loss=loss_obj, metrics=metrics)
    state = _Checkpoint(checkpoint, model, resume)
    first = state.restore(model)
    steps = math.ceil(len(data.x) / batch_size)
    train_ds = train_pipeline(data.x, data.y, batch_size=batch_size, seed=seed,
                              first_epoch=first, epochs=epochs)
    val_ds = eval_pipeline(data.x_val, data.y_val, batch_size=batch_size) \
        if data.x_val is not None else None
    tracker = _Tracker(state, early_stop, val_ds is not None)
    try:
        if first < epochs:
            model.fit(train_ds, epochs=epochs, initial_epoch=first, steps_per_epoch=steps,
                      validation_data=val_ds, callbacks=[tracker, *callbacks], verbose=verbose,
                      shuffle=False)
    except KeyboardInterrupt:
        where = f"; checkpoint in {state.folder}, rerun with --resume" if state.folder else ""
        raise Interrupted(f"interrupted after epoch {len(state.epochs)}{where}; nothing was "
                          "written") from None
    state.load_best(model)
    adapters = {}
    if lora_rank:
        with open_weights(model) as w:
            adapters = {k: w.read(k) for k in w if "/lora_kernel_" in k}
        result_model = merge_lora(model)
    else:
        result_model = _clean_copy(model, _with_dtypes(model_config(model), original_config))
    settings = {"train": list(train), "freeze": list(freeze), "bn": bn, "epochs": epochs,
                "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "seed": seed,
                "strategy": strategy, "lr_mult": lr_mult or {}, "layer_decay": layer_decay,
                "lora_rank": lora_rank, "early_stop": early_stop,
                "mixed_precision": _policy_name(keras) if mixed_precision else None,
                "l2sp": l2sp, "l2sp_head": l2sp_head}
    result = FinetuneResult(result_model, state.epochs, state.best_epoch, tracker.stopped,
                            loss_desc, data.describe(), settings, adapters)
    state.finish()
    return result


class _NullScope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Checkpoint:
    """Per-epoch checkpoint: weights with optimizer state, epoch, early-stopping state."""

    def __init__(self, folder: str | None, model, resume: bool):
        self.folder = folder
        self.resume = resume
        self.epochs: list[dict] = []
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.fingerprint = _fingerprint(model)
        self._best_weights = None
        if resume and not folder:
            raise OptionError("--resume needs a checkpoint folder (--checkpoint DIR, default "
                              "OUT.ckpt)")
        if folder and not resume and os.path.isdir(folder):
            shutil.rmtree(folder)  # a stale checkpoint of an earlier run: start fresh

    def _paths(self):
        return (os.path.join(self.folder, "state.json"),
                os.path.join(self.folder, "last.weights.h5"),
                os.path.join(self.folder, "best.weights.h5"))

    def restore(self, model) -> int:
        if not (self.resume and self.folder):
            return 0
        state_path, last, _ = self._paths()
        if not os.path.isfile(state_path):
            raise InputError(f"{self.folder}: no checkpoint to resume from (state.json "
                             "missing); run without --resume")
        with open(state_path) as f:
            state = json.load(f)
        diff = _fingerprint_diff(state["fingerprint"], self.fingerprint)
        if diff:
            raise InputError(f"{self.folder}: the checkpoint belongs to another model ({diff});"
                             " start without --resume or use the matching model")
        model.optimizer.build(model.trainable_variables)
        model.load_weights(last)
        self.epochs = state["epochs"]
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], \
            state["wait"]
        return int(state["epoch"])

    def save(self, model, epoch: int, improved: bool) -> None:
        if improved:
            self._best_weights = [np.array(v.numpy()) for v in model.weights] \
                if not self.folder else None
        if not self.folder:
            return
        os.makedirs(self.folder, exist_ok=True)
        state_path, last, best = self._paths()
        model.save_weights(last + ".tmp.weights.h5", overwrite=True)
        os.replace(last + ".tmp.weights.h5", last)
        if improved:
            shutil.copyfile(last, best)
        state = {"epoch": epoch, "epochs": self.epochs, "best": self.best,
                 "best_epoch": self.best_epoch, "wait": self.wait,
                 "fingerprint": self.fingerprint}
        with open(state_path + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(state_path + ".tmp", state_path)

    def load_best(self, model) -> None:
        if self.best_epoch is None or self.best_epoch == len(self.epochs):
            return
        if self.folder:
            model.load_weights(self._paths()[2])
        elif self._best_weights is not None:
            for v, value in zip(model.weights, self._best_weights):
                v.assign(value)

    def finish(self) -> None:
        if self.folder and os.path.isdir(self.folder):
            shutil.rmtree(self.folder)


def _callback_base():
    from .tfimport import keras

    return keras().callbacks.Callback


class _Tracker(_callback_base()):
    """Records each epoch, tracks the best, stops early, writes the checkpoint."""

    def __init__(self, state: _Checkpoint, patience: int | None, has_val: bool):
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
