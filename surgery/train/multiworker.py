"""`surgery finetune --strategy multiworker`: a custom training loop on tf.distribute.

Keras 3's `fit` fails under `MultiWorkerMirroredStrategy` (keras-team/keras#20585: "Attempt to
convert a value (PerReplica...)"), so this path trains with `strategy.run` and
`strategy.reduce` over a distributed dataset. The cluster comes from ``TF_CONFIG``; every worker
runs the same command (each with its own ``-o``), the data is sharded by element, gradients are
all-reduced, BatchNorm moving statistics are averaged at the end, and every worker ends with
the same weights. Supported: `train`/`freeze`, `bn`,
epochs, batch size (global), learning rate, optimizer, loss, seed. Per-layer learning rates,
LoRA, early stopping, checkpoints and resume, L2-SP and mixed precision are `fit`-path
features: asked for here, they are refused, never dropped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import numpy as np

from ..errors import OptionError

__all__ = ["finetune_multiworker", "read_tf_config", "make_strategy"]

log = logging.getLogger("surgery.train.multiworker")


def read_tf_config() -> dict:
    """The parsed ``TF_CONFIG``; a clear error when it is missing or malformed."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise OptionError("--strategy multiworker needs TF_CONFIG (the cluster's workers and "
                          "this worker's index), e.g. TF_CONFIG='{\"cluster\": {\"worker\": "
                          "[\"host1:12345\", \"host2:12345\"]}, \"task\": {\"type\": \"worker\","
                          " \"index\": 0}}'; see the README")
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        index = int(config["task"]["index"])
    except (ValueError, KeyError, TypeError):
        raise OptionError("TF_CONFIG is not valid: it needs cluster.worker (a list of "
                          "host:port) and task.index") from None
    if not 0 <= index < len(workers):
        raise OptionError(f"TF_CONFIG task.index {index} is outside the {len(workers)} workers")
    return config


def _average_statistics(strategy, model, tf) -> None:
    """Averages non-trainable state (BatchNorm moving statistics, which each worker updates
    from its own batches) across workers, so every worker ends with the same weights."""
    state = [v for v in model.non_trainable_variables]
    if not state:
        return

    def replica():
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in state])

    means = strategy.run(tf.function(replica))
    for v, m in zip(state, means):
        v.assign(strategy.experimental_local_results(m)[0])


def make_strategy() -> Any:
    """Creates the `MultiWorkerMirroredStrategy` from ``TF_CONFIG``. Call it before anything
    else touches TensorFlow (collective ops must be configured at program startup)."""
    read_tf_config()
    from ..io.tfimport import tensorflow

    return tensorflow().distribute.MultiWorkerMirroredStrategy()


def _train_step(strategy, model, opt, loss_fn, tf):
    """One distributed optimizer step: each replica's gradients of the per-example loss
    averaged over the global batch, applied, and the loss summed over the replicas."""
    variables = model.trainable_variables

    @tf.function
    def step(x, y):
        def replica(x, y):
            with tf.GradientTape() as tape:
                per_example = loss_fn(y, model(x, training=True))
                value = tf.nn.compute_average_loss(per_example,
                                                   global_batch_size=tf.shape(x)[0] *
                                                   strategy.num_replicas_in_sync)
            grads = tape.gradient(value, variables)
            opt.apply_gradients(zip(grads, variables))
            return value
        per_replica = strategy.run(replica, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return step


def _run_epochs(step, dist, model, *, epochs: int, steps: int, verbose: int) -> list[dict]:
    """Runs `epochs` epochs of `steps` steps over the distributed iterator `dist`; one record
    per epoch (mean loss, seconds, trainable and frozen parameter counts)."""
    from .fitting import _params

    records = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        total = 0.0
        for _ in range(steps):
            x, y = next(dist)
            total += float(step(x, y))
        t, f = _params(model)
        records.append({"epoch": epoch + 1, "loss": total / steps,
                        "seconds": round(time.perf_counter() - t0, 3), "trainable_params": t,
                        "frozen_params": f})
        if verbose:
            log.info("epoch %d/%d: loss %.4f", epoch + 1, epochs, total / steps)
    return records


def finetune_multiworker(model: Any, data: Any, *, train=(), freeze=(), bn="inference",
                         epochs=1, batch_size=32, lr=1e-3, optimizer="adam", loss="auto",
                         label=None, val=None, val_split=None, seed=0, lr_mult=None,
                         layer_decay=None, lora_rank=None, lora_select=(), early_stop=None,
                         checkpoint=None, resume=False, overwrite=False, shuffle=True,
                         strategy="multiworker", verbose=1, callbacks=(),
                         distribution: Any = None, mixed_precision=False, l2sp=None,
                         l2sp_head=None) -> Any:
    """Fine-tunes across the workers of ``TF_CONFIG`` (see the module docstring).

    Takes `surgery.finetune`'s options; the ones this loop can't honour (per-layer learning
    rates, LoRA, early stopping, checkpoints and resume, mixed precision, L2-SP, Keras
    callbacks, an unshuffled order) are refused with an `OptionError` naming them, never
    dropped. `overwrite` (which only concerns a checkpoint) is accepted.

    Args:
        distribution: the strategy from `make_strategy` (created first thing in the process);
            made here when None, which works only if nothing touched TensorFlow before.

    Returns:
        A `FinetuneResult` (validation metrics are not computed on this path).
    """
    read_tf_config()
    if strategy not in ("multiworker", "auto"):
        raise OptionError(f"finetune_multiworker runs strategy multiworker, not {strategy!r}")
    unsupported = [name for name, value in (
        ("--lr-mult", lr_mult), ("--layer-decay", layer_decay), ("--lora-rank", lora_rank),
        ("--lora-select", lora_select), ("--early-stop", early_stop),
        ("--checkpoint", checkpoint), ("--resume", resume),
        ("--mixed-precision", mixed_precision), ("--l2sp", l2sp is not None),
        ("--l2sp-head", l2sp_head is not None), ("callbacks", callbacks),
        ("shuffle=False", not shuffle)) if value]
    if unsupported:
        raise OptionError(f"--strategy multiworker does not support {', '.join(unsupported)}; "
                          "use --strategy mirrored (Keras fit) for those")
    from .options import _check_options

    _check_options(dict(epochs=epochs, batch_size=batch_size, seed=seed, early_stop=None,
                        lora_rank=None, lr=lr, layer_decay=None, l2sp=None, l2sp_head=None,
                        val_split=val_split, lr_mult=None, bn=bn, lora_select=(), val=val))
    from ..io import tfimport
    from .data import Data, as_inputs, check_against_model, load_data, samples, train_pipeline
    from .copies import _clean_copy
    from .finetune import FinetuneResult, infer_loss, loss_object, set_trainable
    from .losses import _output_activation
    from .learning_rates import _make

    tf = tfimport.tensorflow()
    keras = tfimport.keras()
    if isinstance(data, tuple):
        data = Data(as_inputs(data[0]), np.asarray(data[1]), None, None, "arrays", "arrays")
        check_against_model(data, model)
    elif not isinstance(data, Data):
        data = load_data(data, model, label=label, val=val, val_split=val_split, seed=seed)
    keras.utils.set_random_seed(seed)
    strategy = distribution or tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = _clean_copy(model)
        set_trainable(model, train, freeze, bn)
        opt = _make(optimizer, lr, keras)
        if loss == "auto":
            name, _, from_logits = infer_loss(model, data.y)
        else:
            name = loss
            from_logits = _output_activation(model) not in ("softmax", "sigmoid")
        # per-example losses (reduction None); from_logits honoured (see loss_object)
        loss_fn = loss_object(name, from_logits, reduction=None)
        opt.build(model.trainable_variables)
    steps = math.ceil(samples(data.x) / batch_size)
    ds = train_pipeline(data.x, data.y, batch_size=batch_size, seed=seed, first_epoch=0,
                        epochs=epochs)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    dist = iter(strategy.experimental_distribute_dataset(ds.with_options(options)))
    step = _train_step(strategy, model, opt, loss_fn, tf)
    records = _run_epochs(step, dist, model, epochs=epochs, steps=steps, verbose=verbose)
    _average_statistics(strategy, model, tf)
    result_model = _clean_copy(model)
    settings = {"train": list(train), "freeze": list(freeze), "bn": bn, "epochs": epochs,
                "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "seed": seed,
                "strategy": "multiworker", "workers": strategy.num_replicas_in_sync}
    return FinetuneResult(result_model, records, epochs, False, name, data.describe(),
                          settings)


