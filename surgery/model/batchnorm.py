"""Precise BatchNorm: recompute a model's moving statistics from data after training."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io.livemodels import require_live_model
from ..io.tfimport import keras

__all__ = ["recompute_bn_statistics"]


def recompute_bn_statistics(model: Any, x: np.ndarray, *, batch_size: int = 256) -> list[str]:
    """Sets the moving mean and variance of each trainable BatchNormalization layer to the
    exact mean and (biased) variance of its inputs over `x` ("precise BatchNorm").

    A trainable BatchNorm runs in training mode during `fit`: the weights learn against batch
    statistics while the moving statistics trail behind (momentum 0.99 keeps ~28% of their
    initial values after 125 steps), so inference can be far from what was trained. Frozen
    BatchNorm layers ran in inference mode and keep their statistics. Layers are done from
    the input up, each measured with the layers below already updated, in inference mode.
    Changes `model` in place (its statistics, as `fit` does); top-level layers of a
    functional model only.

    Returns:
        The names of the layers whose statistics were recomputed.

    Example:
    ```python
    surgery.recompute_bn_statistics(result.model, x_train)
    ```
    """
    require_live_model(model, "recompute_bn_statistics")
    k = keras()
    done = []
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization" or not layer.trainable:
            continue
        probe = k.Model(model.inputs, layer.input)
        axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
        total, total_sq, count = 0.0, 0.0, 0
        for i in range(0, len(x), batch_size):
            f = np.asarray(probe([x[i:i + batch_size]], training=False), np.float64)
            f = np.moveaxis(f, axis, -1).reshape(-1, f.shape[axis])
            total, total_sq, count = total + f.sum(0), total_sq + (f * f).sum(0), \
                count + len(f)
        mean = total / count
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(np.maximum(total_sq / count - mean * mean, 0.0)
                                     .astype(np.float32))
        done.append(layer.name)
    return done
