"""Net2Net (Chen, Goodfellow & Shlens, 2016) in numpy: wider layers, identity layers."""

from __future__ import annotations

import numpy as np

import math

from ..errors import OptionError
from ._checks import as_array, need, need_rank

__all__ = ["net2wider", "net2wider_mapping", "identity_kernel"]


def net2wider_mapping(width: int, units: int, *, seed: int | None = None) -> np.ndarray:
    """Which old unit each of the `units` new units copies: ``0..width-1`` first, then random
    picks. Draw it once and pass it to every `net2wider` call of one edit (the kernel, each
    reader, each BatchNorm), so all of them agree on the copies.

    Example:
    ```python
    g = net2wider_mapping(64, 96, seed=0)        # g[:64] == arange(64)
    ```
    """
    need(isinstance(width, (int, np.integer)) and width > 0,
         f"net2wider_mapping: width must be a positive integer, got {width!r}")
    need(isinstance(units, (int, np.integer)) and units >= width,
         f"net2wider_mapping: can't widen from {width} to {units!r} units; Net2Wider only "
         "grows (use delete_channels to shrink)")
    rng = np.random.default_rng(seed)
    return np.concatenate([np.arange(width), rng.integers(0, width, int(units) - width)])


def check_noise(noise, where: str = "net2wider") -> float:
    """`noise` as a float; NaN, infinite or negative noise is an `OptionError`."""
    try:
        value = float(noise)
    except (TypeError, ValueError):
        raise OptionError(f"{where}: noise must be a number, got {noise!r}") from None
    if not math.isfinite(value) or value < 0:
        raise OptionError(f"{where}: noise must be a finite number >= 0, got {noise!r}; pass "
                          "e.g. 0.01 (or 0 for an exact copy)")
    return value


def net2wider(kernel_in, bias_in, kernel_out, units: int, *, bn=None, seed: int | None = None,
              noise: float = 0.0, mapping=None):
    """Net2WiderNet: widen the units between two layers without changing the function.

    New unit j copies a randomly chosen old unit g(j) (its incoming kernel column, bias and
    BatchNorm parameters); every copy of a unit, the original included, has its outgoing
    weights divided by the number of copies. With ``noise=0`` the widened pair computes
    exactly the old function (through any elementwise activation and a BatchNorm between).

    Args:
        kernel_in: the first layer's kernel (..., in, u): Dense (in, u) or Conv (..., in, u).
        bias_in: its bias (u,), or None for a layer without bias.
        kernel_out: the next layer's kernel (..., u, out).
        units: the new width (at least u).
        bn: (gamma, beta, moving_mean, moving_variance) of a BatchNorm between them, or None.
        seed: which units are copied.
        noise: relative noise added to the copies' incoming weights to break symmetry
            (the function then changes slightly); finite and >= 0.
        mapping: the copies, from `net2wider_mapping` (overrides `seed` for the choice of
            copies). Pass the same mapping to every call that widens one layer: two calls
            with ``seed=None`` and no mapping pick different copies.

    Returns:
        (kernel_in, bias_in, kernel_out) or, with `bn`, (kernel_in, bias_in, kernel_out, bn).

    Example:
    ```python
    k1, b1, k2 = net2wider(k1, b1, k2, units=96, seed=0)
    ```
    """
    k1, k2 = as_array(kernel_in, "net2wider"), as_array(kernel_out, "net2wider")
    need_rank(k1, (2, 3, 4, 5), "net2wider: kernel_in", "a Dense or Conv kernel (..., in, u)")
    need_rank(k2, (2, 3, 4, 5), "net2wider: kernel_out", "a Dense or Conv kernel (..., u, out)")
    u = k1.shape[-1]
    need(k2.shape[-2] == u, f"net2wider: kernel_out {k2.shape} takes {k2.shape[-2]} inputs but "
                            f"kernel_in {k1.shape} has {u} units")
    need(isinstance(units, (int, np.integer)) and units >= u,
         f"net2wider: can't widen kernel_in {k1.shape} from {u} to {units} units; Net2Wider "
         "only grows (use delete_channels to shrink)")
    b1 = None if bias_in is None else as_array(bias_in, "net2wider")
    if b1 is not None:
        need(b1.shape == (u,), f"net2wider: bias_in has shape {b1.shape} but kernel_in "
                               f"{k1.shape} needs ({u},)")
    noise = check_noise(noise)
    rng = np.random.default_rng(seed)
    if mapping is None:
        mapping = np.concatenate([np.arange(u), rng.integers(0, u, units - u)])
    else:
        mapping = np.asarray(mapping)
        need(mapping.shape == (units,) and mapping.dtype.kind in "iu" and
             bool(np.all(mapping[:u] == np.arange(u))) and
             bool(np.all((mapping >= 0) & (mapping < u))),
             f"net2wider: mapping {mapping.shape} must list {units} units: 0..{u - 1} first, "
             f"then copies of units in 0..{u - 1} (use net2wider_mapping({u}, {units}))")
    counts = np.bincount(mapping, minlength=u).astype(np.float64)
    new_k1 = np.take(k1, mapping, axis=-1)
    if noise and units > u:
        scale = float(np.std(k1)) or 1.0
        extra = rng.normal(0.0, noise * scale, new_k1[..., u:].shape)
        new_k1[..., u:] = (new_k1[..., u:] + extra).astype(k1.dtype)
    new_k2 = (np.take(k2, mapping, axis=-2).astype(np.float64) /
              counts[mapping].reshape((-1, 1))).astype(k2.dtype)
    new_b1 = None if b1 is None else np.take(b1, mapping)
    if bn is None:
        return new_k1, new_b1, new_k2
    bn_arrays = tuple(as_array(a, "net2wider: bn") for a in bn)
    need(len(bn_arrays) == 4 and all(a.shape == (u,) for a in bn_arrays),
         f"net2wider: bn must be (gamma, beta, moving_mean, moving_variance), each ({u},); got "
         f"{[a.shape for a in bn_arrays]}")
    return new_k1, new_b1, new_k2, tuple(np.take(a, mapping) for a in bn_arrays)


def identity_kernel(units: int, *, kernel_size: tuple[int, ...] = (), dtype=np.float32
                    ) -> np.ndarray:
    """An identity Dense kernel (units, units), or a Conv kernel (*kernel_size, units, units)
    that passes each channel through its centre tap (Net2DeeperNet; odd sizes).

    Example:
    ```python
    k = identity_kernel(64, kernel_size=(3, 3))   # Conv2D(64, 3, padding="same") == identity
    ```
    """
    need(all(s % 2 == 1 for s in kernel_size),
         f"identity_kernel: kernel size {kernel_size} needs odd sizes to have a centre tap")
    k = np.zeros(tuple(kernel_size) + (units, units), dtype=dtype)
    k[tuple(s // 2 for s in kernel_size)] = np.eye(units, dtype=dtype)
    return k
