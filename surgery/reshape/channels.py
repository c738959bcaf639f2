"""Channel and unit changes: input channels of a kernel, output units of any layer.

Kernels are Keras-layout: (..., in, out) for Dense (in, out), Conv1D (k, in, out), Conv2D
(kh, kw, in, out) and Conv3D (kd, kh, kw, in, out).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import OptionError
from ._checks import as_array, need, need_rank
from .initializers import Initializer, initialize

__all__ = ["adapt_in_channels", "slice_units", "pad_units"]

_MODES = ("sum", "mean", "repeat", "select")


def adapt_in_channels(kernel, channels: int, *, mode: str = "sum",
                      indices: Sequence[int | None] | None = None) -> np.ndarray:
    """Adapts a kernel's input-channel axis (axis -2) from any count to any other.

    Modes:
        ``sum``: each new channel gets the sum of the old channels' weights divided by
            `channels`: an image whose new channels all equal g gives the output the old kernel
            gave for g replicated across its channels (RGB -> gray with ``channels=1``).
        ``mean``: each new channel gets the mean of the old channels' weights.
        ``repeat``: old channels tiled cyclically and scaled by old/new: an input tiled the same
            way gives the old output. Needs ``channels`` to be a multiple of the old count.
        ``select``: ``indices[c]`` names the old channel new channel c takes (BGR -> RGB is
            ``[2, 1, 0]``; 4-band -> RGB ``[0, 1, 2]``); ``None`` makes a new zero channel,
            which leaves the output unchanged whatever that channel holds.

    Args:
        kernel: array (..., in, out), rank 2 to 5.
        channels: the new input-channel count.
        mode: one of ``sum``, ``mean``, ``repeat``, ``select``.
        indices: for ``select``, one entry per new channel.

    Returns:
        A new kernel (..., channels, out) of the input's dtype.

    Raises:
        ShapeError: wrong rank, or counts that don't divide for ``repeat``, or bad indices.
        OptionError: unknown mode.

    Example:
    ```python
    gray = adapt_in_channels(rgb_kernel, 1, mode="sum")          # (3,3,3,16) -> (3,3,1,16)
    rgb = adapt_in_channels(bgr_kernel, 3, mode="select", indices=[2, 1, 0])
    ```
    """
    k = as_array(kernel, "adapt_in_channels")
    need_rank(k, (2, 3, 4, 5), "adapt_in_channels", "a Dense or Conv kernel (..., in, out)")
    old = k.shape[-2]
    need(isinstance(channels, (int, np.integer)) and channels >= 1,
         f"adapt_in_channels: channels must be a positive integer, got {channels!r}")
    if mode not in _MODES:
        raise OptionError(f"adapt_in_channels: unknown mode {mode!r}; use one of "
                          f"{', '.join(_MODES)}")
    work = k.astype(np.float64)
    if mode in ("sum", "mean"):
        reduced = work.sum(axis=-2, keepdims=True) if mode == "sum" else \
            work.mean(axis=-2, keepdims=True)
        if mode == "sum":
            reduced = reduced / channels
        out = np.repeat(reduced, channels, axis=-2)
    elif mode == "repeat":
        need(channels % old == 0,
             f"adapt_in_channels: mode 'repeat' needs the new channel count to be a multiple "
             f"of the old one; kernel {k.shape} has {old}, asked for {channels}; use 'sum', "
             "'mean' or 'select'")
        out = np.take(work, np.arange(channels) % old, axis=-2) * (old / channels)
    else:
        need(indices is not None and len(indices) == channels,
             f"adapt_in_channels: mode 'select' needs {channels} indices (one per new channel), "
             f"got {None if indices is None else len(indices)}")
        slices = []
        for c, i in enumerate(indices):
            if i is None:
                slices.append(np.zeros_like(np.take(work, [0], axis=-2)))
                continue
            need(isinstance(i, (int, np.integer)) and -old <= i < old,
                 f"adapt_in_channels: index {i!r} for new channel {c} is out of range for a "
                 f"kernel {k.shape} with {old} input channels")
            slices.append(np.take(work, [int(i)], axis=-2))
        out = np.concatenate(slices, axis=-2)
    return out.astype(k.dtype)


def slice_units(array, keep: Sequence[int], *, axis: int = -1) -> np.ndarray:
    """Keeps only the units `keep` along `axis` (in that order).

    For a layer's own kernel/bias (``axis=-1``) the kept units' outputs are unchanged; for the
    next layer's kernel use ``axis=-2`` (its input axis). Embedding tables slice rows with
    ``axis=0`` (vocabulary) or ``axis=-1`` (dimensions).

    Example:
    ```python
    k2, b2 = slice_units(kernel, [0, 3, 7]), slice_units(bias, [0, 3, 7])
    ```
    """
    a = as_array(array, "slice_units")
    need(a.ndim >= 1, f"slice_units: expected an array with at least one axis, got shape "
                      f"{a.shape}")
    n = a.shape[axis]
    keep = list(keep)
    need(len(keep) > 0, f"slice_units: keep is empty; an array {a.shape} needs at least one "
                        "unit")
    for i in keep:
        need(isinstance(i, (int, np.integer)) and -n <= i < n,
             f"slice_units: unit {i!r} is out of range for axis {axis} of shape {a.shape}")
    need(len(set(int(i) % n for i in keep)) == len(keep),
         f"slice_units: keep lists a unit twice: {keep}")
    return np.take(a, keep, axis=axis).copy()


def pad_units(array, units: int, *, axis: int = -1, initializer: Initializer = "zeros",
              fan_shape: tuple | None = None, seed: int | None = None) -> np.ndarray:
    """Grows `axis` to `units`, new entries drawn from `initializer` (old entries untouched).

    Args:
        array: kernel, bias or embedding table.
        units: the new length of `axis` (at least the current one).
        axis: the axis to grow: -1 for a layer's own units, -2 for the next layer's inputs.
        initializer: a Keras initializer name or callable (zeros by default: for the next
            layer's input rows, zeros keep its output unchanged).
        fan_shape: shape whose fans scale the draw (defaults to the grown array's shape).
        seed: fixed seed.

    Example:
    ```python
    kernel10 = pad_units(kernel8, 10, initializer="glorot_uniform", seed=0)
    ```
    """
    a = as_array(array, "pad_units")
    need(a.ndim >= 1, f"pad_units: expected an array with at least one axis, got shape "
                      f"{a.shape}")
    n = a.shape[axis]
    need(isinstance(units, (int, np.integer)) and units >= n,
         f"pad_units: can't grow axis {axis} of shape {a.shape} to {units} units; use "
         "slice_units to shrink")
    new_shape = list(a.shape)
    new_shape[axis] = units - n
    grown = list(a.shape)
    grown[axis] = units
    fresh = initialize(initializer, tuple(new_shape), fan_shape=fan_shape or tuple(grown),
                       seed=seed, dtype=a.dtype)
    return np.concatenate([a, fresh], axis=axis)
