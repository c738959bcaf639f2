"""The `tf.data` pipelines training and evaluation read their batches from: `train_pipeline`
shuffles each epoch statelessly from ``(seed, epoch)``, so a resumed run sees the same batches
as an uninterrupted one."""

from __future__ import annotations

import numpy as np

from .data_arrays import samples

__all__ = ["train_pipeline", "eval_pipeline"]


def train_pipeline(x, y: np.ndarray, *, batch_size: int, seed: int, first_epoch: int,
                   epochs: int):
    """A tf.data pipeline over epochs ``first_epoch..epochs-1``: each epoch's order is a
    stateless shuffle seeded by ``(seed, epoch)``, batched, prefetched. `x` is one array or
    a dict of arrays by input name (batches then give the dict, as Keras's `fit` takes it)."""
    from ..io.tfimport import tensorflow

    tf = tensorflow()
    n = samples(x)
    x_t, y_t = tf.nest.map_structure(tf.constant, x), tf.constant(y)

    def epoch(e):
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack(
            [tf.cast(seed, tf.int64), e]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size).map(
            lambda idx: (tf.nest.map_structure(lambda t: tf.gather(t, idx), x_t),
                         tf.gather(y_t, idx)))

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch).prefetch(
        tf.data.AUTOTUNE)


def eval_pipeline(x, y: np.ndarray, *, batch_size: int):
    from ..io.tfimport import tensorflow

    tf = tensorflow()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache().prefetch(
        tf.data.AUTOTUNE)
