"""Spatial changes: kernel size, 2D -> 3D inflation, Dense <-> Conv, Flatten row order."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import OptionError
from ._checks import as_array, need, need_rank

__all__ = ["resize_kernel", "inflate_kernel", "dense_to_conv", "conv_to_dense",
           "reorder_flatten_rows"]

_FORMATS = ("channels_first", "channels_last")


def _interp_axis(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    old = a.shape[axis]
    if old == size:
        return a
    if old == 1:
        return np.repeat(a, size, axis=axis)
    pos = np.linspace(0, old - 1, size)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, old - 1)
    w = (pos - lo).reshape([-1 if i == axis % a.ndim else 1 for i in range(a.ndim)])
    return np.take(a, lo, axis=axis) * (1 - w) + np.take(a, hi, axis=axis) * w


def resize_kernel(kernel, size: int | Sequence[int], *, mode: str = "center") -> np.ndarray:
    """Changes a Conv kernel's spatial size (every axis but the last two).

    Modes:
        ``center``: zero-pads (or crops) around the centre. Growing by an even amount on each
            axis gives a conv equal to the old one under ``padding="same"``.
        ``interpolate``: linear resampling scaled by the ratio of the kernel areas, so a smooth
            kernel keeps its total response (a constant kernel exactly); an approximation for
            a new receptive field, as for patch embeddings.

    Example:
    ```python
    k5 = resize_kernel(k3, 5)                     # (3,3,i,o) -> (5,5,i,o), same function
    ```
    """
    k = as_array(kernel, "resize_kernel")
    need_rank(k, (3, 4, 5), "resize_kernel", "a Conv kernel (spatial..., in, out)")
    spatial = k.shape[:-2]
    size = (size,) * len(spatial) if isinstance(size, (int, np.integer)) else tuple(size)
    need(len(size) == len(spatial) and all(s >= 1 for s in size),
         f"resize_kernel: size {size} does not fit the {len(spatial)} spatial axes of kernel "
         f"{k.shape}")
    if mode == "center":
        out = k
        for axis, (old, new) in enumerate(zip(spatial, size)):
            need((new - old) % 2 == 0,
                 f"resize_kernel: mode 'center' needs an even size change per axis; kernel "
                 f"{k.shape} axis {axis} goes {old} -> {new}; use 'interpolate' or pick "
                 f"{new + 1}")
            if new > old:
                pad = [(0, 0)] * out.ndim
                pad[axis] = ((new - old) // 2,) * 2
                out = np.pad(out, pad)
            elif new < old:
                start = (old - new) // 2
                out = np.take(out, range(start, start + new), axis=axis)
        return out.astype(k.dtype)
    if mode == "interpolate":
        out = k.astype(np.float64)
        for axis, new in enumerate(size):
            out = _interp_axis(out, axis, new)
        scale = np.prod(spatial) / np.prod(size)
        return (out * scale).astype(k.dtype)
    raise OptionError(f"resize_kernel: unknown mode {mode!r}; use 'center' or 'interpolate'")


def inflate_kernel(kernel, depth: int, *, mode: str = "tile") -> np.ndarray:
    """Inflates a 2-D kernel (kh, kw, in, out) to 3-D (depth, kh, kw, in, out), as in I3D.

    Modes:
        ``tile``: the kernel repeated over time and divided by `depth`: a static clip (one frame
            repeated) gives the 2-D model's output at every time step (``padding="valid"`` in
            time, or away from the clip's ends).
        ``center``: the kernel in the middle time slice, zeros elsewhere: each frame is
            processed as the 2-D model did (exact with ``padding="same"``; `depth` odd).

    Example:
    ```python
    k3d = inflate_kernel(k2d, 3)                  # (3,3,3,16) -> (3,3,3,3,16)
    ```
    """
    k = as_array(kernel, "inflate_kernel")
    need_rank(k, (4,), "inflate_kernel", "a Conv2D kernel (kh, kw, in, out)")
    need(isinstance(depth, (int, np.integer)) and depth >= 1,
         f"inflate_kernel: depth must be a positive integer, got {depth!r}")
    if mode == "tile":
        return (np.repeat(k[None].astype(np.float64), depth, axis=0) / depth).astype(k.dtype)
    if mode == "center":
        need(depth % 2 == 1, f"inflate_kernel: mode 'center' needs an odd depth to have a "
                             f"middle slice; got {depth} for kernel {k.shape}")
        out = np.zeros((depth,) + k.shape, dtype=k.dtype)
        out[depth // 2] = k
        return out
    raise OptionError(f"inflate_kernel: unknown mode {mode!r}; use 'tile' or 'center'")


def _feature_shape(feature_shape, what: str) -> tuple[int, int, int]:
    fs = tuple(int(d) for d in feature_shape)
    need(len(fs) == 3 and all(d >= 1 for d in fs),
         f"{what}: feature_shape must be (height, width, channels), got {feature_shape!r}")
    return fs  # type: ignore[return-value]


def dense_to_conv(kernel, feature_shape: Sequence[int]) -> np.ndarray:
    """Flatten + Dense (channels_last) -> a Conv2D whose kernel covers the feature map.

    Args:
        kernel: Dense kernel (h*w*c, units) after a channels_last Flatten.
        feature_shape: (h, w, c) of the map before Flatten.

    Returns:
        Conv2D kernel (h, w, c, units); with ``padding="valid"`` on an (h, w, c) map it gives
        the Dense outputs as a 1x1 score map, and a score map on larger inputs.

    Example:
    ```python
    conv_kernel = dense_to_conv(dense_kernel, (4, 4, 64))
    ```
    """
    k = as_array(kernel, "dense_to_conv")
    need_rank(k, (2,), "dense_to_conv", "a Dense kernel (inputs, units)")
    h, w, c = _feature_shape(feature_shape, "dense_to_conv")
    need(k.shape[0] == h * w * c,
         f"dense_to_conv: kernel {k.shape} has {k.shape[0]} input rows but feature_shape "
         f"{(h, w, c)} flattens to {h * w * c}")
    return k.reshape(h, w, c, k.shape[1]).copy()


def conv_to_dense(kernel) -> np.ndarray:
    """A Conv2D kernel (h, w, c, units) -> the Dense kernel (h*w*c, units) after Flatten.

    Example:
    ```python
    dense_kernel = conv_to_dense(conv_kernel)     # (4,4,64,10) -> (1024,10)
    ```
    """
    k = as_array(kernel, "conv_to_dense")
    need_rank(k, (4,), "conv_to_dense", "a Conv2D kernel (h, w, in, out)")
    return k.reshape(-1, k.shape[-1]).copy()


def reorder_flatten_rows(kernel, feature_shape: Sequence[int], *, source: str,
                         target: str) -> np.ndarray:
    """Reorders the rows of a Dense kernel that follows Flatten, for a data-format change.

    Args:
        kernel: Dense kernel (h*w*c, units).
        feature_shape: (height, width, channels) of the map before Flatten, whatever the layout.
        source, target: ``channels_first`` (rows ordered c, h, w: PyTorch) or
            ``channels_last`` (rows ordered h, w, c: Keras).

    Example:
    ```python
    keras_kernel = reorder_flatten_rows(torch_linear.T, (7, 7, 64),
                                        source="channels_first", target="channels_last")
    ```
    """
    return reordered_rows(as_array(kernel, "reorder_flatten_rows"), feature_shape, source,
                          target)


def reordered_rows(k: np.ndarray, feature_shape: Sequence[int], source: str, target: str, *,
                   own: bool = False) -> np.ndarray:
    """`reorder_flatten_rows` of the array `k`; with `own` (a new C-contiguous array the
    caller made, as `linear_from_torch` does) its rows are moved in place, one cycle at a time
    (one row of scratch memory, not a second kernel)."""
    need_rank(k, (2,), "reorder_flatten_rows", "a Dense kernel (inputs, units)")
    h, w, c = _feature_shape(feature_shape, "reorder_flatten_rows")
    for name, value in (("source", source), ("target", target)):
        if value not in _FORMATS:
            raise OptionError(f"reorder_flatten_rows: {name} must be 'channels_first' or "
                              f"'channels_last', got {value!r}")
    need(k.shape[0] == h * w * c,
         f"reorder_flatten_rows: kernel {k.shape} has {k.shape[0]} rows but feature_shape "
         f"{(h, w, c)} flattens to {h * w * c}")
    units = k.shape[1]
    if source == target:
        return k if own else k.copy()
    if own and k.flags.c_contiguous and k.flags.writeable:
        order = np.arange(h * w * c).reshape((c, h, w) if source == "channels_first" else
                                             (h, w, c))
        order = order.transpose((1, 2, 0) if source == "channels_first" else (2, 0, 1))
        return _permute_rows(k, order.reshape(-1).tolist())
    if source == "channels_first":  # one copy (rows move whole), not two
        return k.reshape(c, h, w, units).transpose(1, 2, 0, 3).copy().reshape(-1, units)
    return k.reshape(h, w, c, units).transpose(2, 0, 1, 3).copy().reshape(-1, units)


def _permute_rows(a: np.ndarray, order: list[int]) -> np.ndarray:
    """``a[i] = a[order[i]]`` for every row i at once, in place: each cycle of the permutation
    is walked with its first row kept aside."""
    done = [False] * len(order)
    row = np.empty(a.shape[1:], a.dtype)  # the cycle's first row, kept aside
    for start in range(len(order)):
        if done[start]:
            continue
        row[...] = a[start]
        i = start
        while order[i] != start:
            a[i] = a[order[i]]
            done[i] = True
            i = order[i]
        a[i] = row
        done[i] = True
    return a
