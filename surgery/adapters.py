"""Adapters: the named shape conversions a transplant rule may ask for.

An adapter turns source tensors into a target variable's value when their shapes differ. Each
is one entry in `ADAPTERS` with the options it accepts; single-tensor adapters map one source
tensor onto one target variable, layer adapters (``lstm_from_torch``...) map named source
tensors onto the variables of one target layer. An adapter says when its result dropped
source values (``lossy``): a rule must then say ``lossy = true``. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from . import reshape as R
from .errors import OptionError, ShapeError

__all__ = ["Adapted", "Adapter", "ADAPTERS", "get_adapter"]


@dataclass(frozen=True)
class Adapted:
    """An adapter's result: output arrays by variable name ("" for single), lossy, a note."""

    arrays: dict[str, np.ndarray]
    lossy: bool = False
    note: str = ""


@dataclass(frozen=True)
class Adapter:
    """One named conversion.

    Attributes:
        name: the name rules use.
        options: allowed option names -> a short description of the expected value.
        fn: ``fn(inputs, target_shapes, options) -> Adapted``.
        roles: for layer adapters, the source roles it takes (required first, then optional).
        required: how many of `roles` are required.
        outputs: for layer adapters, the target variable names it fills.
        summary: one line for `--help` and errors.
    """

    name: str
    options: Mapping[str, str]
    fn: Callable[..., Adapted]
    summary: str
    roles: tuple[str, ...] = ()
    required: int = 0
    outputs: tuple[str, ...] = ()

    @property
    def is_layer(self) -> bool:
        return bool(self.outputs)


def _shape(a) -> tuple:
    return tuple(np.shape(a))


def _fit_axes(a: np.ndarray, target: tuple, allow_crop: bool, allow_pad: bool, opts):
    if a.ndim != len(target):
        raise ShapeError(f"source {a.shape} and target {target} have different ranks")
    out, cropped = a, False
    for axis, (have, want) in enumerate(zip(a.shape, target)):
        if want < have:
            if not allow_crop:
                raise ShapeError(f"axis {axis} would shrink {have} -> {want}; use 'slice' or "
                                 "'fit'")
            out, cropped = np.take(out, range(want), axis=axis), True
        elif want > have:
            if not allow_pad:
                raise ShapeError(f"axis {axis} would grow {have} -> {want}; use 'pad' or 'fit'")
            out = R.pad_units(out, want, axis=axis, initializer=opts.get("initializer", "zeros"),
                              fan_shape=target, seed=opts.get("seed"))
    return out, cropped


def _single(fn):
    def run(inputs, targets, opts):
        (array,), (shape,) = list(inputs.values()), list(targets.values())
        return fn(array, shape, opts)
    return run


@_single
def _slice(a, target, opts):
    if "keep" in opts:
        axis = int(opts.get("axis", -1))
        out = R.slice_units(a, opts["keep"], axis=axis)
        return Adapted({"": out}, out.shape[axis] < a.shape[axis],
                       f"kept units {list(opts['keep'])} of axis {axis}")
    out, cropped = _fit_axes(a, target, True, False, opts)
    return Adapted({"": out}, cropped, f"sliced {a.shape} -> {target}")


@_single
def _pad(a, target, opts):
    out, _ = _fit_axes(a, target, False, True, opts)
    return Adapted({"": out}, False, f"padded {a.shape} -> {target} with "
                                     f"{opts.get('initializer', 'zeros')}")


@_single
def _fit(a, target, opts):
    out, cropped = _fit_axes(a, target, True, True, opts)
    return Adapted({"": out}, cropped, f"fitted {a.shape} -> {target}")


@_single
def _transpose(a, target, opts):
    axes = opts.get("axes")
    return Adapted({"": np.transpose(a, axes).copy()}, False, f"transposed {a.shape} axes "
                   f"{axes or 'reversed'}")


@_single
def _reshape(a, target, opts):
    if int(np.prod(a.shape)) != int(np.prod(target)):
        raise ShapeError(f"can't reshape {a.shape} ({int(np.prod(a.shape))} values) to {target}")
    return Adapted({"": a.reshape(target).copy()}, False, f"reshaped {a.shape} -> {target}")


@_single
def _in_channels(a, target, opts):
    mode = opts.get("mode", "sum")
    out = R.adapt_in_channels(a, target[-2], mode=mode, indices=opts.get("indices"))
    lossy = mode == "select" and len({i for i in opts.get("indices") or [] if i is not None}) \
        < a.shape[-2]
    return Adapted({"": out}, lossy, f"{a.shape[-2]} -> {target[-2]} input channels ({mode})")


@_single
def _resize(a, target, opts):
    mode = opts.get("mode", "center")
    out = R.resize_kernel(a, tuple(target[:-2]), mode=mode)
    lossy = mode == "center" and any(t < s for t, s in zip(target[:-2], a.shape[:-2]))
    return Adapted({"": out}, lossy, f"kernel {a.shape[:-2]} -> {tuple(target[:-2])} ({mode})")


@_single
def _inflate(a, target, opts):
    mode = opts.get("mode", "tile")
    return Adapted({"": R.inflate_kernel(a, target[0], mode=mode)}, False,
                   f"2D -> 3D, depth {target[0]} ({mode})")


@_single
def _dense_to_conv(a, target, opts):
    return Adapted({"": R.dense_to_conv(a, tuple(target[:3]))}, False,
                   f"Dense {a.shape} -> Conv {target}")


@_single
def _conv_to_dense(a, target, opts):
    return Adapted({"": R.conv_to_dense(a)}, False, f"Conv {a.shape} -> Dense {target}")


@_single
def _flatten_rows(a, target, opts):
    if "feature_shape" not in opts:
        raise OptionError("adapter 'reorder_flatten_rows' needs feature_shape = [height, width, "
                          "channels]")
    out = R.reorder_flatten_rows(a, opts["feature_shape"],
                                 source=opts.get("source", "channels_first"),
                                 target=opts.get("target", "channels_last"))
    return Adapted({"": out}, False, f"Flatten rows {opts.get('source', 'channels_first')} -> "
                                     f"{opts.get('target', 'channels_last')}")


@_single
def _conv_from_torch(a, target, opts):
    kind = opts.get("kind", "conv")
    mult = target[-1] if kind == "depthwise" else 1
    return Adapted({"": R.conv_from_torch(a, kind=kind, depth_multiplier=mult)}, False,
                   f"PyTorch {kind} {a.shape} -> Keras {target}")


@_single
def _conv_to_torch(a, target, opts):
    kind = opts.get("kind", "conv")
    return Adapted({"": R.conv_to_torch(a, kind=kind)}, False, f"Keras {kind} -> PyTorch")


@_single
def _linear_from_torch(a, target, opts):
    kernel = R.linear_from_torch(a)
    if "feature_shape" not in opts:
        return Adapted({"": kernel}, False, "PyTorch Linear -> Keras Dense")
    kernel = R.reorder_flatten_rows(kernel, opts["feature_shape"], source="channels_first",
                                    target="channels_last")
    return Adapted({"": kernel}, False, "PyTorch Linear after flatten (NCHW) -> Keras Dense "
                                        "after Flatten (NHWC)")


@_single
def _linear_to_torch(a, target, opts):
    return Adapted({"": R.linear_to_torch(a)}, False, "Keras Dense -> PyTorch Linear")


def _vocab(value, what):
    if isinstance(value, str):
        try:
            with open(value, encoding="utf-8") as f:
                return [line.rstrip("\n") for line in f if line.rstrip("\n")]
        except OSError as e:
            raise OptionError(f"adapter 'remap_rows': can't read {what} file {value!r} "
                              f"({e.strerror})") from None
    if isinstance(value, list):
        return value
    raise OptionError(f"adapter 'remap_rows': {what} must be a list of tokens or a file path")


@_single
def _remap(a, target, opts):
    for key in ("old_vocab", "new_vocab"):
        if key not in opts:
            raise OptionError(f"adapter 'remap_rows' needs {key} (a list of tokens or a file "
                              "with one token per line)")
    out, report = R.remap_rows(a, _vocab(opts["old_vocab"], "old_vocab"),
                               _vocab(opts["new_vocab"], "new_vocab"),
                               fill=opts.get("fill", "mean"), seed=opts.get("seed"),
                               axis=opts.get("axis", 0))
    return Adapted({"": out}, bool(report.dropped), f"vocabulary: {report}")


def _lstm_torch(inputs, targets, opts):
    out = R.lstm_from_torch(inputs["w_ih"], inputs["w_hh"], inputs.get("b_ih"),
                            inputs.get("b_hh"))
    return Adapted(dict(zip(("kernel", "recurrent_kernel", "bias"), out)), False,
                   "PyTorch LSTM -> Keras (biases summed)")


def _gru_torch(inputs, targets, opts):
    out = R.gru_from_torch(inputs["w_ih"], inputs["w_hh"], inputs.get("b_ih"),
                           inputs.get("b_hh"))
    return Adapted(dict(zip(("kernel", "recurrent_kernel", "bias"), out)), False,
                   "PyTorch GRU (r,z,n) -> Keras (z,r,h)")


def _lstm_tf1(inputs, targets, opts):
    out = R.lstm_from_tf1(inputs["kernel"], inputs["bias"],
                          forget_bias=float(opts.get("forget_bias", 1.0)))
    return Adapted(dict(zip(("kernel", "recurrent_kernel", "bias"), out)), False,
                   f"TF1 LSTM (i,j,f,o) -> Keras (i,f,c,o), forget_bias "
                   f"{opts.get('forget_bias', 1.0)}")


def _recurrent_units(inputs, targets, opts):
    k, rk, b = inputs["kernel"], inputs["recurrent_kernel"], inputs["bias"]
    tk, trk = targets["kernel"], targets["recurrent_kernel"]
    units = trk[0]
    gates = tk[-1] // units if units else 0
    old = rk.shape[0]
    out = R.resize_recurrent_units(k, rk, b, units, gates=gates, keep=opts.get("keep"),
                                   initializer=opts.get("initializer", "glorot_uniform"),
                                   seed=opts.get("seed"))
    return Adapted(dict(zip(("kernel", "recurrent_kernel", "bias"), out)), units < old,
                   f"{old} -> {units} units, gate by gate ({gates} gates)")


_FILL = {"initializer": "initializer name for new entries (default zeros)", "seed": "integer"}
_TORCH_ROLES = ("w_ih", "w_hh", "b_ih", "b_hh")
_RNN_OUT = ("kernel", "recurrent_kernel", "bias")

ADAPTERS: dict[str, Adapter] = {a.name: a for a in [
    Adapter("slice", {"keep": "list of units to keep (default: the first ones)",
                      "axis": "axis of keep (default -1)"}, _slice,
            "crop each axis to the target shape, or keep listed units"),
    Adapter("pad", _FILL, _pad, "grow each axis to the target shape, new entries initialized"),
    Adapter("fit", _FILL, _fit, "crop or grow each axis to the target shape"),
    Adapter("transpose", {"axes": "list of axes (default: reversed)"}, _transpose,
            "transpose axes"),
    Adapter("reshape", {}, _reshape, "same values, target shape"),
    Adapter("adapt_in_channels", {"mode": "sum|mean|repeat|select", "indices": "list for select"},
            _in_channels, "change the input-channel count of a kernel (e.g. RGB -> gray)"),
    Adapter("resize_kernel", {"mode": "center|interpolate"}, _resize,
            "change a conv kernel's spatial size"),
    Adapter("inflate_kernel", {"mode": "tile|center"}, _inflate, "2D -> 3D kernel (I3D)"),
    Adapter("dense_to_conv", {}, _dense_to_conv, "Flatten+Dense kernel -> Conv kernel"),
    Adapter("conv_to_dense", {}, _conv_to_dense, "Conv kernel -> Flatten+Dense kernel"),
    Adapter("reorder_flatten_rows", {"feature_shape": "[height, width, channels]",
                                     "source": "channels_first|channels_last",
                                     "target": "channels_first|channels_last"},
            _flatten_rows, "Dense rows after Flatten for another data format"),
    Adapter("conv_from_torch", {"kind": "conv|depthwise|transpose"}, _conv_from_torch,
            "PyTorch conv weight (O,I,kh,kw) -> Keras kernel"),
    Adapter("conv_to_torch", {"kind": "conv|depthwise|transpose"}, _conv_to_torch,
            "Keras conv kernel -> PyTorch weight"),
    Adapter("linear_from_torch", {"feature_shape": "[height, width, channels] when the Linear "
                                                   "follows a flatten of an NCHW map"},
            _linear_from_torch, "PyTorch Linear (out,in) -> Dense"),
    Adapter("linear_to_torch", {}, _linear_to_torch, "Dense kernel -> PyTorch Linear"),
    Adapter("remap_rows", {"old_vocab": "tokens or file", "new_vocab": "tokens or file",
                           "fill": "mean|zeros|random", "seed": "integer", "axis": "integer"},
            _remap, "carry embedding rows across a vocabulary change"),
    Adapter("lstm_from_torch", {}, _lstm_torch, "PyTorch LSTM weights -> Keras LSTM layer",
            roles=_TORCH_ROLES, required=2, outputs=_RNN_OUT),
    Adapter("gru_from_torch", {}, _gru_torch, "PyTorch GRU weights -> Keras GRU layer",
            roles=_TORCH_ROLES, required=2, outputs=_RNN_OUT),
    Adapter("lstm_from_tf1", {"forget_bias": "number (default 1.0)"}, _lstm_tf1,
            "TF1 BasicLSTMCell kernel+bias -> Keras LSTM layer", roles=("kernel", "bias"),
            required=2, outputs=_RNN_OUT),
    Adapter("resize_recurrent_units", {"keep": "list of units", **_FILL}, _recurrent_units,
            "LSTM/GRU to another unit count, gate by gate", roles=_RNN_OUT, required=3,
            outputs=_RNN_OUT),
]}


def get_adapter(name: str) -> Adapter:
    """The adapter called `name`; an unknown name lists the known ones."""
    adapter = ADAPTERS.get(name)
    if adapter is None:
        raise OptionError(f"unknown adapter {name!r}; known adapters: "
                          f"{', '.join(sorted(ADAPTERS))}")
    return adapter


def run_adapter(adapter: Adapter, inputs: Mapping[str, np.ndarray],
                targets: Mapping[str, tuple], options: Mapping[str, Any], where: str) -> Adapted:
    """Runs `adapter`, checking every output against its target shape.

    Raises:
        ShapeError: naming `where` (the target), both shapes and the adapter.
    """
    src = ", ".join(f"{_shape(a)}" for a in inputs.values())
    try:
        result = adapter.fn(dict(inputs), dict(targets), dict(options))
    except (ShapeError, OptionError) as e:
        raise type(e)(f"{where}: adapter '{adapter.name}' can't map source {src} onto target "
                      f"{_fmt_targets(targets)}: {e}") from None
    for name, shape in targets.items():
        got = result.arrays.get(name)
        if got is None or tuple(got.shape) != tuple(shape):
            raise ShapeError(f"{where}: adapter '{adapter.name}' made "
                             f"{None if got is None else tuple(got.shape)} from source {src}, "
                             f"but the target is {tuple(shape)}; check the adapter's options")
    return result


def _fmt_targets(targets: Mapping[str, tuple]) -> str:
    if list(targets) == [""]:
        return str(tuple(targets[""]))
    return ", ".join(f"{k} {tuple(v)}" for k, v in targets.items())


__all__ += ["run_adapter"]
