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

This module holds `finetune`, its result and the steps that put a run together; the parts
live in their own modules (and the public ones are re-exported here): the options and their
checks (`MAX_COUNT`) in `train/options.py`; what trains (`set_trainable`, LoRA targets) in
`train/trainable.py`; the loss (`infer_loss`, `loss_object`, `make_loss`, L2-SP) in
`train/losses.py`; clean and mixed-precision model copies in `train/copies.py`; the `fit` loop,
its epoch tracker and the model fingerprint a checkpoint stores (`fingerprint`,
`fingerprint_diff`) in `train/fitting.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .copies import _clean_copy, _float32_serialized, _mixed_copy, _policy_name, _with_dtypes
from .data import Data, as_inputs, check_against_model, flat_arrays, load_data
from .fitting import _fit, fingerprint, fingerprint_diff
from .losses import _l2sp_loss, infer_loss, loss_object, make_loss
from .options import MAX_COUNT, _check_options, _Options
from .trainable import _lora_targets, _refuse_overlap, set_trainable
from ..errors import Interrupted, OptionError, SelectorError, UnsupportedModelError
from ..io.livemodels import framework_of
from ..io.sources import open_weights

__all__ = ["FinetuneResult", "finetune", "infer_loss", "loss_object", "make_loss", "Interrupted",
           "set_trainable", "fingerprint", "fingerprint_diff", "MAX_COUNT"]


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


def _input_paths(model, data, val) -> list[str]:
    from ..model.saving import source_path

    paths = [source_path(model)]
    for d in (data, val):
        if isinstance(d, (str, os.PathLike)):
            paths.append(os.fspath(d))
        elif isinstance(d, Data) and d.kind != "arrays":
            paths.append(d.source)
    return [p for p in paths if p]


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
