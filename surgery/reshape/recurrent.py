"""Recurrent layouts: PyTorch and TF1 LSTM/GRU weights, and gate-aware unit changes.

Keras packs gates along the last axis: LSTM kernel (in, 4u), recurrent_kernel (u, 4u),
bias (4u,) with gates i, f, c, o; GRU (``reset_after=True``) kernel (in, 3u),
recurrent_kernel (u, 3u), bias (2, 3u) with gates z, r, h, the first bias row for the input
and the second for the recurrent side. PyTorch stores (gates*u, in) weights and two biases;
its LSTM gate order is i, f, g, o (the same as Keras) and its GRU order r, z, n.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_array, gate_units, need, need_rank
from .initializers import Initializer, initialize

__all__ = ["lstm_from_torch", "lstm_to_torch", "gru_from_torch", "gru_to_torch",
           "lstm_from_tf1", "resize_recurrent_units"]


def _gates(arr: np.ndarray, order, gates: int) -> np.ndarray:
    """Reorders gate blocks along the last axis."""
    u = arr.shape[-1] // gates
    blocks = [arr[..., g * u:(g + 1) * u] for g in range(gates)]
    return np.concatenate([blocks[i] for i in order], axis=-1)


def _check_torch(w_ih, w_hh, b_ih, b_hh, gates: int, layer: str, fn: str):
    w_ih, w_hh = as_array(w_ih, fn), as_array(w_hh, fn)
    need_rank(w_ih, (2,), f"{fn}: w_ih", f"a PyTorch {layer} weight ({gates}*hidden, input)")
    need_rank(w_hh, (2,), f"{fn}: w_hh", f"a PyTorch {layer} weight ({gates}*hidden, hidden)")
    u = gate_units(w_ih.T, gates, f"{fn}: w_ih", layer)
    need(w_hh.shape == (gates * u, u),
         f"{fn}: w_hh has shape {w_hh.shape} but w_ih {w_ih.shape} needs ({gates * u}, {u})")
    biases = []
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        b = np.zeros(gates * u, w_ih.dtype) if b is None else as_array(b, fn)
        need(b.shape == (gates * u,),
             f"{fn}: {name} has shape {b.shape} but w_ih {w_ih.shape} needs ({gates * u},)")
        biases.append(b)
    return w_ih, w_hh, biases[0], biases[1]


def _check_keras(kernel, recurrent_kernel, bias, gates: int, layer: str, fn: str):
    """Validates Keras (kernel, recurrent_kernel, bias) of an LSTM (4 gates) or GRU (3)."""
    k, rk, b = (as_array(a, fn) for a in (kernel, recurrent_kernel, bias))
    need_rank(k, (2,), f"{fn}: kernel", f"a Keras {layer} kernel (input, {gates}*units)")
    u = gate_units(k, gates, f"{fn}: kernel", layer)
    need(rk.shape == (u, gates * u), f"{fn}: recurrent_kernel has shape {rk.shape} but kernel "
                                     f"{k.shape} needs ({u}, {gates * u})")
    want = (gates * u,) if gates == 4 else (2, gates * u)
    need(b.shape == want, f"{fn}: bias has shape {b.shape} but kernel {k.shape} needs {want}"
                          + (" (a GRU with reset_after=True)" if gates == 3 else ""))
    return k, rk, b


def lstm_from_torch(w_ih, w_hh, b_ih=None, b_hh=None):
    """PyTorch ``nn.LSTM`` (one layer, one direction) -> Keras (kernel, recurrent_kernel, bias).

    ``kernel = w_ih.T``, ``recurrent_kernel = w_hh.T``, ``bias = b_ih + b_hh`` (same gate
    order). Keras has one bias, so the two PyTorch biases are summed.

    Example:
    ```python
    k, rk, b = lstm_from_torch(s["lstm.weight_ih_l0"], s["lstm.weight_hh_l0"],
                               s["lstm.bias_ih_l0"], s["lstm.bias_hh_l0"])
    ```
    """
    w_ih, w_hh, b_ih, b_hh = _check_torch(w_ih, w_hh, b_ih, b_hh, 4, "LSTM", "lstm_from_torch")
    return w_ih.T.copy(), w_hh.T.copy(), (b_ih + b_hh).astype(w_ih.dtype)


def lstm_to_torch(kernel, recurrent_kernel, bias):
    """Keras LSTM -> PyTorch (w_ih, w_hh, b_ih, b_hh); the bias goes to b_ih, b_hh is zero.

    Example:
    ```python
    w_ih, w_hh, b_ih, b_hh = lstm_to_torch(*layer.get_weights())
    ```
    """
    k, rk, b = _check_keras(kernel, recurrent_kernel, bias, 4, "LSTM", "lstm_to_torch")
    return k.T.copy(), rk.T.copy(), b.copy(), np.zeros_like(b)


_TORCH_TO_KERAS_GRU = (1, 0, 2)  # r, z, n -> z, r, h (the swap is its own inverse)


def gru_from_torch(w_ih, w_hh, b_ih=None, b_hh=None):
    """PyTorch ``nn.GRU`` -> Keras GRU with ``reset_after=True`` (Keras's default).

    Gate blocks r, z, n become z, r, h; the two biases become the rows of Keras's (2, 3u) bias
    (input row first), so the conversion is exact both ways.

    Example:
    ```python
    k, rk, b = gru_from_torch(s["gru.weight_ih_l0"], s["gru.weight_hh_l0"],
                              s["gru.bias_ih_l0"], s["gru.bias_hh_l0"])
    ```
    """
    w_ih, w_hh, b_ih, b_hh = _check_torch(w_ih, w_hh, b_ih, b_hh, 3, "GRU", "gru_from_torch")
    kernel = _gates(w_ih.T, _TORCH_TO_KERAS_GRU, 3)
    recurrent = _gates(w_hh.T, _TORCH_TO_KERAS_GRU, 3)
    bias = np.stack([_gates(b_ih, _TORCH_TO_KERAS_GRU, 3), _gates(b_hh, _TORCH_TO_KERAS_GRU, 3)])
    return kernel, recurrent, bias.astype(w_ih.dtype)


def gru_to_torch(kernel, recurrent_kernel, bias):
    """Keras GRU (``reset_after=True``) -> PyTorch (w_ih, w_hh, b_ih, b_hh).

    Example:
    ```python
    w_ih, w_hh, b_ih, b_hh = gru_to_torch(*gru_layer.get_weights())
    ```
    """
    k, rk, b = _check_keras(kernel, recurrent_kernel, bias, 3, "GRU", "gru_to_torch")
    order = _TORCH_TO_KERAS_GRU
    return (_gates(k, order, 3).T.copy(), _gates(rk, order, 3).T.copy(),
            _gates(b[0], order, 3), _gates(b[1], order, 3))


def lstm_from_tf1(kernel, bias, *, forget_bias: float = 1.0):
    """TF1 ``BasicLSTMCell``/``LSTMCell`` (no peepholes) -> Keras LSTM weights.

    TF1 packs one kernel (input + units, 4u) with gates i, j, f, o (j is the candidate) and adds
    `forget_bias` to f at run time; Keras splits the kernel, orders gates i, f, c, o, and has
    the forget bias in its weights.

    Example:
    ```python
    k, rk, b = lstm_from_tf1(reader.get_tensor("rnn/basic_lstm_cell/kernel"),
                             reader.get_tensor("rnn/basic_lstm_cell/bias"))
    ```
    """
    k, b = as_array(kernel, "lstm_from_tf1"), as_array(bias, "lstm_from_tf1")
    need_rank(k, (2,), "lstm_from_tf1: kernel", "a TF1 LSTM kernel (input + units, 4*units)")
    u = gate_units(k, 4, "lstm_from_tf1: kernel", "LSTM")
    need(k.shape[0] > u, f"lstm_from_tf1: kernel {k.shape} has {k.shape[0]} rows, fewer than "
                         f"input + {u} units")
    need(b.shape == (4 * u,), f"lstm_from_tf1: bias has shape {b.shape} but kernel {k.shape} "
                              f"needs ({4 * u},)")
    order = (0, 2, 1, 3)  # i, j, f, o -> i, f, j(c), o
    packed = _gates(k, order, 4)
    new_bias = _gates(b.astype(np.float64), order, 4)
    new_bias[u:2 * u] += forget_bias
    return packed[:-u].copy(), packed[-u:].copy(), new_bias.astype(b.dtype)


def resize_recurrent_units(kernel, recurrent_kernel, bias, units: int, *, gates: int,
                           keep=None, initializer: Initializer = "glorot_uniform",
                           seed: int | None = None):
    """Changes an LSTM (``gates=4``) or GRU (``gates=3``) to `units` units, gate by gate.

    Growing: each gate block gets new columns from `initializer`, and the new units' rows of
    the recurrent kernel are zero, so the old units' outputs are unchanged. Shrinking: `keep`
    (default the first `units`) selects the units kept in every gate block and in the
    recurrent rows; this is lossy (the dropped units no longer feed the kept ones).

    Returns:
        (kernel, recurrent_kernel, bias); the next layer's input rows change with
        `slice_units`/`pad_units` on ``axis=-2``.

    Example:
    ```python
    k, rk, b = resize_recurrent_units(*lstm.get_weights(), 96, gates=4, seed=0)
    ```
    """
    k, rk, b = (as_array(a, "resize_recurrent_units") for a in (kernel, recurrent_kernel, bias))
    name = {4: "LSTM", 3: "GRU"}.get(gates, f"{gates}-gate")
    u = gate_units(k, gates, "resize_recurrent_units: kernel", name)
    need(rk.shape == (u, gates * u), f"resize_recurrent_units: recurrent_kernel has shape "
                                     f"{rk.shape} but kernel {k.shape} needs ({u}, {gates * u})")
    need(b.shape[-1] == gates * u, f"resize_recurrent_units: bias has shape {b.shape} but "
                                   f"kernel {k.shape} needs last axis {gates * u}")
    need(isinstance(units, (int, np.integer)) and units >= 1,
         f"resize_recurrent_units: units must be a positive integer, got {units!r}")
    if units <= u:
        idx = np.arange(units) if keep is None else np.asarray(list(keep))
        need(len(idx) == units and len(set(idx.tolist())) == units and
             all(0 <= i < u for i in idx),
             f"resize_recurrent_units: keep must list {units} distinct units of {u}, got "
             f"{list(idx)}")
        cols = np.concatenate([g * u + idx for g in range(gates)])
        return k[..., cols].copy(), rk[idx][:, cols].copy(), b[..., cols].copy()
    extra = units - u

    def grow(a, fan, s, zero=False):
        blocks = []
        for g in range(gates):
            old = a[..., g * u:(g + 1) * u]
            shape = old.shape[:-1] + (extra,)
            new = np.zeros(shape, a.dtype) if zero else initialize(
                initializer, shape, fan_shape=fan, seed=None if seed is None else seed + s + g,
                dtype=a.dtype)
            blocks += [old, new]
        return np.concatenate(blocks, axis=-1)

    new_k = grow(k, (k.shape[0], gates * units), 0)
    new_rk = grow(rk, (units, gates * units), 100)
    new_rk = np.concatenate([new_rk, np.zeros((extra, gates * units), rk.dtype)], axis=0)
    new_b = grow(b, None, 0, zero=True)
    return new_k, new_rk, new_b
