"""PyTorch <-> Keras layouts for convolutions, linear layers and BatchNorm.

PyTorch stores conv weights (out, in/groups, *spatial) and Keras (*spatial, in, out); a
transposed conv is (in, out/groups, *spatial) in PyTorch and (*spatial, out, in) in Keras; a
depthwise conv (groups = in channels) is (in*m, 1, *spatial) in PyTorch and
(*spatial, in, m) in Keras. The arrays alone can't tell these apart, so `kind` says which.
"""

from __future__ import annotations

import numpy as np

from ..errors import OptionError
from ._checks import as_array, need, need_rank, transposed
from .spatial import reordered_rows

__all__ = ["conv_from_torch", "conv_to_torch", "linear_from_torch", "linear_to_torch",
           "batchnorm_from_torch", "batchnorm_to_torch", "batchnorm_config_from_torch"]

_KINDS = ("conv", "depthwise", "transpose")


def _kind(kind: str, fn: str) -> None:
    if kind not in _KINDS:
        raise OptionError(f"{fn}: unknown kind {kind!r}; use one of {', '.join(_KINDS)}")


def conv_from_torch(weight, *, kind: str = "conv", depth_multiplier: int = 1) -> np.ndarray:
    """PyTorch conv weight -> Keras kernel (1-D, 2-D or 3-D convolutions).

    Args:
        weight: ``conv``: (out, in, *k); ``transpose``: (in, out, *k); ``depthwise``:
            (in*m, 1, *k).
        kind: ``conv``, ``depthwise`` or ``transpose``.
        depth_multiplier: m, for ``depthwise``.

    Returns:
        ``conv``: (*k, in, out); ``transpose``: (*k, out, in); ``depthwise``: (*k, in, m).

    Example:
    ```python
    kernel = conv_from_torch(state["conv1.weight"])          # (64,3,7,7) -> (7,7,3,64)
    ```
    """
    _kind(kind, "conv_from_torch")
    w = as_array(weight, "conv_from_torch")
    need_rank(w, (3, 4, 5), "conv_from_torch", "a PyTorch conv weight (out, in, *kernel)")
    spatial = tuple(range(2, w.ndim))
    if kind == "depthwise":
        need(w.shape[1] == 1 and w.shape[0] % depth_multiplier == 0,
             f"conv_from_torch: a depthwise weight is (in*m, 1, *kernel) with m = "
             f"{depth_multiplier}; got {w.shape}")
        channels = w.shape[0] // depth_multiplier
        grouped = w.reshape((channels, depth_multiplier) + w.shape[2:])
        return grouped.transpose(tuple(range(2, grouped.ndim)) + (0, 1)).copy()
    return w.transpose(spatial + (1, 0)).copy()


def conv_to_torch(kernel, *, kind: str = "conv") -> np.ndarray:
    """Keras conv kernel -> PyTorch weight (the inverse of `conv_from_torch`).

    Example:
    ```python
    state["conv1.weight"] = conv_to_torch(model.get_layer("conv1").kernel.numpy())
    ```
    """
    _kind(kind, "conv_to_torch")
    k = as_array(kernel, "conv_to_torch")
    need_rank(k, (3, 4, 5), "conv_to_torch", "a Keras conv kernel (*kernel, in, out)")
    n = k.ndim - 2
    if kind == "depthwise":
        channels, mult = k.shape[-2], k.shape[-1]
        grouped = k.transpose((n, n + 1) + tuple(range(n)))
        return grouped.reshape((channels * mult, 1) + k.shape[:n]).copy()
    return k.transpose((n + 1, n) + tuple(range(n))).copy()


def linear_from_torch(weight, *, feature_shape=None) -> np.ndarray:
    """``nn.Linear`` weight (out, in) -> Keras Dense kernel (in, out).

    Args:
        weight: the PyTorch weight.
        feature_shape: for a Linear after ``torch.flatten`` of a (channels-first) map, that
            map's (height, width, channels): the kernel's rows are reordered for a Keras Dense
            after Flatten of the channels-last map (`reorder_flatten_rows`), in place in the
            new kernel, without a second copy.

    Example:
    ```python
    kernel = linear_from_torch(state["fc.weight"])
    kernel = linear_from_torch(state["classifier.0.weight"], feature_shape=(7, 7, 512))
    ```
    """
    w = as_array(weight, "linear_from_torch")
    need_rank(w, (2,), "linear_from_torch", "a PyTorch Linear weight (out, in)")
    kernel = transposed(w)
    if feature_shape is None:
        return kernel
    return reordered_rows(kernel, feature_shape, "channels_first", "channels_last", own=True)


def linear_to_torch(kernel) -> np.ndarray:
    """Keras Dense kernel (in, out) -> ``nn.Linear`` weight (out, in).

    Example:
    ```python
    state["fc.weight"] = linear_to_torch(kernel)
    ```
    """
    k = as_array(kernel, "linear_to_torch")
    need_rank(k, (2,), "linear_to_torch", "a Keras Dense kernel (in, out)")
    return transposed(k)


def batchnorm_from_torch(weight, bias, running_mean, running_var):
    """``nn.BatchNorm*d`` parameters -> Keras (gamma, beta, moving_mean, moving_variance).

    The arrays map one to one; the layers differ in their settings, not their layout: PyTorch's
    ``eps`` defaults to 1e-5 where Keras's ``epsilon`` defaults to 1e-3, and PyTorch's
    ``momentum`` (weight of the new batch, 0.1) is ``1 - momentum`` in Keras (weight of the old
    statistics, 0.99 by default). Build the Keras layer with `batchnorm_config_from_torch` to
    get the same outputs.

    Example:
    ```python
    gamma, beta, mean, var = batchnorm_from_torch(s["bn.weight"], s["bn.bias"],
                                                  s["bn.running_mean"], s["bn.running_var"])
    ```
    """
    arrays = [as_array(a, "batchnorm_from_torch") for a in (weight, bias, running_mean,
                                                             running_var)]
    for a in arrays:
        need_rank(a, (1,), "batchnorm_from_torch", "1-D BatchNorm parameters")
        need(a.shape == arrays[0].shape,
             f"batchnorm_from_torch: parameters of different lengths {arrays[0].shape} vs "
             f"{a.shape}")
    return tuple(a.copy() for a in arrays)


def batchnorm_to_torch(gamma, beta, moving_mean, moving_variance):
    """Keras BatchNorm variables -> PyTorch (weight, bias, running_mean, running_var).

    Example:
    ```python
    weight, bias, mean, var = batchnorm_to_torch(*bn_layer.get_weights())
    ```
    """
    return batchnorm_from_torch(gamma, beta, moving_mean, moving_variance)


def batchnorm_config_from_torch(eps: float = 1e-5, momentum: float = 0.1) -> dict:
    """Keras ``BatchNormalization`` keyword arguments equivalent to PyTorch's settings.

    Example:
    ```python
    keras.layers.BatchNormalization(**batchnorm_config_from_torch())  # epsilon=1e-5, momentum=0.9
    ```
    """
    return {"epsilon": float(eps), "momentum": float(1.0 - momentum)}
