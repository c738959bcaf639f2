"""The `fit` loop of `finetune`: batches in the data's own order (``shuffle=False``), `fit` run
from the checkpoint's first unfinished epoch (`_fit`), the callback that records each epoch,
tracks the best, stops early and writes the checkpoint (`_Tracker`), and what it records of
the model: trainable and frozen parameter counts, and the fingerprint (variable paths and
shapes) a checkpoint stores to recognise its model (`fingerprint`, `fingerprint_diff`). Moved
from `train/finetune.py`, which re-exports the public names.

Importing this module imports Keras (`_Tracker` subclasses Keras's `Callback`)."""

from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np

from .data import Data, eval_pipeline, samples, train_pipeline
from .options import _Options
from ..errors import Interrupted
from ..io.sources import open_weights

__all__ = ["fingerprint", "fingerprint_diff"]


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


def _ordered_pipeline(x: np.ndarray, y: np.ndarray, *, batch_size: int, epochs: int):
    """Batches in the data's own order, every epoch (``shuffle=False``)."""
    from ..io.tfimport import tensorflow

    tf = tensorflow()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).repeat(
        max(epochs, 1)).prefetch(tf.data.AUTOTUNE)


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
