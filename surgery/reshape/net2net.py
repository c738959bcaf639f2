"""Net2Net (Chen, Goodfellow & Shlens, 2016) in numpy: wider layers, identity layers."""

from __future__ import annotations

import numpy as np

from ._checks import as_array, need, need_rank

__all__ = ["net2wider", "identity_kernel"]


def net2wider(kernel_in, bias_in, kernel_out, units: int, *, bn=None, seed: int | None = None,
              noise: float = 0.0):
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
            (the function then changes slightly).

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
    rng = np.random.default_rng(seed)
    mapping = np.concatenate([np.arange(u), rng.integers(0, u, units - u)])
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
