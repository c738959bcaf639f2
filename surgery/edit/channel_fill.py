"""The fill of `delete_channels`: writes the pruned values into the new model one variable at a
time (`_Writer`): the producers lose their output units, the layers the channels pass through
lose their per-channel weights (BatchNorm, PReLU, DepthwiseConv), the readers lose the matching
input rows. `_fill` is the `fill` that `core.apply_edits` calls. Moved from
`edit/channels.py`."""

from __future__ import annotations

import numpy as np

from .channel_walk import _entry, _Flow

__all__: list[str] = []


def _keep(n: int, drop) -> list[int]:
    gone = set(drop)
    return [i for i in range(n) if i not in gone]


class _Writer:
    """Writes the pruned values into the new model one variable at a time, recording each."""

    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.done: list[str] = []

    def put(self, key: str, value) -> None:
        self.dst.variable(key).assign(value)
        self.done.append(key)

    def cut(self, key: str, axis: int, drop) -> None:
        """The source variable without the `drop` entries of `axis`."""
        a = self.src.read(key)
        self.put(key, np.take(a, _keep(a.shape[axis], drop), axis=axis))


def _fill_producers(flow: _Flow, w: _Writer) -> None:
    """Replaced layers: their output units go from every variable that has them."""
    for name, drop in flow.producers.items():
        transpose = "Transpose" in type(flow.layers[name]).__name__
        for key in [k for k in w.src if k.startswith(name + "/")]:
            var = key.rsplit("/", 1)[1]
            if var in ("kernel", "pointwise_kernel", "embeddings", "bias"):
                w.cut(key, -2 if transpose and var == "kernel" else -1, drop)
            else:  # a separable conv's depthwise kernel keeps its shape
                w.put(key, w.src.read(key))


def _fill_slices(flow: _Flow, w: _Writer) -> None:
    """Layers the channels pass through with per-channel weights (BatchNorm, PReLU,
    DepthwiseConv): those weights lose the same channels."""
    for name, (how, drop) in flow.slices.items():
        m = int(getattr(flow.layers[name], "depth_multiplier", 1))
        for var in ("gamma", "beta", "moving_mean", "moving_variance", "kernel", "bias",
                    "alpha"):
            key = f"{name}/{var}"
            if key not in w.src:
                continue
            if how == "depthwise" and var == "kernel":  # (..., in, multiplier)
                w.cut(key, -2, drop)
            elif how == "depthwise":  # bias: channel c holds c*m .. c*m+m-1
                w.cut(key, 0, [c * m + j for c in drop for j in range(m)])
            elif how == "per_channel":  # alpha: the input's shape, channels last
                if w.src.shape(key)[-1] > 1:  # 1: shared over the channel axis
                    w.cut(key, -1, drop)
            else:
                w.cut(key, 0, drop)


def _fill_readers(flow: _Flow, w: _Writer) -> None:
    """Layers that read the channels: their input weights lose the matching rows."""
    for name, (drop, _) in flow.readers.items():
        reader_cls = type(flow.layers[name]).__name__
        for key in [k for k in w.src if k.startswith(name + "/")]:
            var = key.rsplit("/", 1)[1]
            # a coupled producer that also reads the channels: cut both axes
            a = (w.dst if key in w.done else w.src).read(key)
            if var == "kernel" and _entry(reader_cls).axis == "last":
                a = np.take(a, _keep(a.shape[0], drop), axis=0)
            elif var == "kernel" and "Transpose" in reader_cls:
                a = np.take(a, _keep(a.shape[-1], drop), axis=-1)
            elif var in ("kernel", "depthwise_kernel"):
                a = np.take(a, _keep(a.shape[-2], drop), axis=-2)
            elif var == "pointwise_kernel":
                m = w.src.shape(f"{name}/depthwise_kernel")[-1]
                gone = [c * m + j for c in drop for j in range(m)]
                a = np.take(a, _keep(a.shape[-2], gone), axis=-2)
            else:
                continue
            w.put(key, a)


def _fill(flow: _Flow):
    """The `fill` for `apply_edits`: writes every variable the deletion changes and returns
    their paths (the edit's converted variables)."""
    def fill(src, dst) -> list[str]:
        w = _Writer(src, dst)
        _fill_producers(flow, w)
        _fill_slices(flow, w)
        _fill_readers(flow, w)
        return list(dict.fromkeys(w.done))
    return fill
