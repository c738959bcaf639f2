"""Small models built in tests, one per case of the path scheme (DESIGN.md §4.1)."""

from __future__ import annotations

import numpy as np


def kitchen_sink(k):
    """Conv, BN, LSTM, Bidirectional(GRU), TimeDistributed, a nested Sequential, a shared layer,
    LayerNorm, Flatten, Dense head; `k` is `keras` or `tf_keras`."""
    L = k.layers
    inp = k.Input((8, 3), name="x")
    x = L.Conv1D(4, 3, name="c1")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.LSTM(5, name="enc", return_sequences=True)(x)
    x = L.Bidirectional(L.GRU(3, return_sequences=True), name="bi")(x)
    x = L.TimeDistributed(L.Dense(2), name="td")(x)
    trunk = k.Sequential([L.Dense(4, name="feat"), L.BatchNormalization(name="sbn"),
                          L.Dense(4, name="feat2")], name="trunk")
    x = trunk(x)
    shared = L.Dense(4, name="shared")
    x = shared(shared(x))
    x = L.LayerNormalization(name="ln")(x)
    x = L.Flatten(name="flat")(x)
    out = L.Dense(3, name="head")(x)
    return k.Model(inp, out, name="sink")


KITCHEN_SINK_PATHS = [
    "c1/kernel", "c1/bias", "bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance",
    "enc/kernel", "enc/recurrent_kernel", "enc/bias",
    "bi/forward/kernel", "bi/forward/recurrent_kernel", "bi/forward/bias",
    "bi/backward/kernel", "bi/backward/recurrent_kernel", "bi/backward/bias",
    "td/kernel", "td/bias",
    "trunk/feat/kernel", "trunk/feat/bias", "trunk/sbn/gamma", "trunk/sbn/beta",
    "trunk/sbn/moving_mean", "trunk/sbn/moving_variance", "trunk/feat2/kernel",
    "trunk/feat2/bias", "shared/kernel", "shared/bias", "ln/gamma", "ln/beta",
    "head/kernel", "head/bias",
]


def deep_nest(k):
    """A model nested two levels deep inside a Functional model."""
    L = k.layers
    inner = k.Sequential([k.Input((4,)), L.Dense(3, name="conv_like")], name="block")
    mid = k.Sequential([k.Input((4,)), inner, L.Dense(2, name="proj")], name="stage")
    inp = k.Input((4,))
    return k.Model(inp, L.Dense(1, name="out")(mid(inp)), name="outer")


DEEP_NEST_PATHS = ["stage/block/conv_like/kernel", "stage/block/conv_like/bias",
                   "stage/proj/kernel", "stage/proj/bias", "out/kernel", "out/bias"]


def randomize(model, seed=0):
    """Gives every variable distinct random values (layer by layer), so swaps are detected."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([rng.normal(size=w.shape).astype(w.dtype) + 1.5 for w in ws])
    return model
