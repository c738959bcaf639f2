"""PyTorch's documented layer equations, written in numpy (torch is not a test dependency).

Each function follows the formula in the PyTorch documentation of the layer it names, in
PyTorch's own layouts (NCHW activations, (out, in, kh, kw) weights, (gates*hidden, in) RNN
weights)."""

from __future__ import annotations

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def conv2d(x, w, b=None, stride=1, groups=1):
    """torch.nn.functional.conv2d, no padding: x (N, C, H, W), w (O, C/groups, kh, kw)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    per_group = o // groups
    for oc in range(o):
        g = oc // per_group
        xs = x[:, g * cg:(g + 1) * cg]
        for y in range(oh):
            for xx in range(ow):
                patch = xs[:, :, y * stride:y * stride + kh, xx * stride:xx * stride + kw]
                out[:, oc, y, xx] = (patch * w[oc]).sum(axis=(1, 2, 3))
    if b is not None:
        out += b[None, :, None, None]
    return out


def conv_transpose2d(x, w, b=None, stride=1):
    """torch.nn.functional.conv_transpose2d, no padding: x (N, C, H, W), w (C, O, kh, kw)."""
    n, c, h, wd = x.shape
    _, o, kh, kw = w.shape
    out = np.zeros((n, o, (h - 1) * stride + kh, (wd - 1) * stride + kw))
    for y in range(h):
        for xx in range(wd):
            contrib = np.einsum("nc,cokl->nokl", x[:, :, y, xx], w)
            out[:, :, y * stride:y * stride + kh, xx * stride:xx * stride + kw] += contrib
    if b is not None:
        out += b[None, :, None, None]
    return out


def linear(x, w, b=None):
    """torch.nn.functional.linear: x @ w.T + b."""
    return x @ w.T + (0 if b is None else b)


def lstm(x, w_ih, w_hh, b_ih, b_hh):
    """torch.nn.LSTM, one layer, batch_first: returns all hidden states (N, T, H)."""
    n, t, _ = x.shape
    hidden = w_hh.shape[1]
    h = np.zeros((n, hidden))
    c = np.zeros((n, hidden))
    outs = []
    for step in range(t):
        gates = x[:, step] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = np.split(gates, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outs.append(h)
    return np.stack(outs, axis=1)


def gru(x, w_ih, w_hh, b_ih, b_hh):
    """torch.nn.GRU, one layer, batch_first: returns all hidden states (N, T, H)."""
    n, t, _ = x.shape
    hidden = w_hh.shape[1]
    h = np.zeros((n, hidden))
    outs = []
    for step in range(t):
        gi = x[:, step] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        i_r, i_z, i_n = np.split(gi, 3, axis=-1)
        h_r, h_z, h_n = np.split(gh, 3, axis=-1)
        r = sigmoid(i_r + h_r)
        z = sigmoid(i_z + h_z)
        nn = np.tanh(i_n + r * h_n)
        h = (1 - z) * nn + z * h
        outs.append(h)
    return np.stack(outs, axis=1)


def tf1_basic_lstm(x, kernel, bias, forget_bias=1.0):
    """TF1 BasicLSTMCell unrolled: [x, h] @ kernel + bias -> i, j, f, o."""
    n, t, _ = x.shape
    hidden = kernel.shape[1] // 4
    h = np.zeros((n, hidden))
    c = np.zeros((n, hidden))
    outs = []
    for step in range(t):
        z = np.concatenate([x[:, step], h], axis=-1) @ kernel + bias
        i, j, f, o = np.split(z, 4, axis=-1)
        c = c * sigmoid(f + forget_bias) + sigmoid(i) * np.tanh(j)
        h = np.tanh(c) * sigmoid(o)
        outs.append(h)
    return np.stack(outs, axis=1)
