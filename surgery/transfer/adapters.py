"""Adapters: the named shape conversions a transplant rule may ask for.

An adapter turns source tensors into a target variable's value when their shapes differ. Each
is one entry in `ADAPTERS` with the options it accepts; single-tensor adapters map one source
tensor onto one target variable, layer adapters (``lstm_from_torch``...) map named source
tensors onto the variables of one target layer. An adapter says when its result dropped
source values (``lossy``): a rule must then say ``lossy = true``. Pure numpy.

Growing adapters (``pad``, ``fit``) keep zeros only where the function needs them: the new
input rows of a kernel (the rows read from new units upstream) are zero for the existing
output units, so those units compute what they did. Everything else that is new (new output
units: kernel columns, biases, BatchNorm entries, embedding rows) comes from the target's own
initialized values when the caller passes them (a transplant does), otherwise from the Keras
default of the variable's role (``glorot_uniform`` kernels, zero biases, unit ``gamma``): a
zero column after a ReLU would be a unit that never trains. The note says which entries got
what.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .. import reshape as R
from ..errors import OptionError, RulesError, ShapeError

__all__ = ["Adapted", "Adapter", "ADAPTERS", "get_adapter", "layer_config", "TORCH_BN_EPS",
           "check_epsilon"]

TORCH_BN_EPS = 1e-5  # torch.nn.BatchNorm*d's default eps


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
    misplaced: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)

    @property
    def is_layer(self) -> bool:
        return bool(self.outputs)

    def misplaced_option(self, rule: Mapping[str, Any]) -> str | None:
        """Why a rule sets one of this adapter's options under a rule key (``source =
        "channels_first"`` for ``from_layout``), or None; such a value would be taken as a
        tensor name."""
        for key, (option, values) in self.misplaced.items():
            value = rule.get(key)
            if isinstance(value, str) and value in values:
                return (f"adapter '{self.name}': {key} = {value!r} names the rule's {key} "
                        f"tensor, not a layout; write {option} = {value!r} (its layout "
                        f"options are {', '.join(o for o, _ in self.misplaced.values())})")
        return None


@dataclass(frozen=True)
class _Target:
    """What a single-tensor adapter knows of its target variable: its path and, when the
    caller has them, its current (freshly initialized) values."""

    path: str
    initial: Callable[[], np.ndarray] | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _shape(a) -> tuple:
    return tuple(np.shape(a))


# Variables without input axes: every new entry is a new unit (or token).
_NO_INPUT_AXES = {"bias", "beta", "gamma", "moving_mean", "moving_variance", "mean", "variance",
                  "embeddings", "alpha"}
_ROLE_INIT = {"bias": "zeros", "beta": "zeros", "moving_mean": "zeros", "mean": "zeros",
              "alpha": "zeros", "gamma": "ones", "moving_variance": "ones", "variance": "ones",
              "embeddings": "random_uniform"}


def _role_initializer(name: str, ndim: int) -> str:
    return _ROLE_INIT.get(name, "glorot_uniform" if ndim >= 2 else "zeros")


def _axis_label(axis: int, ndim: int) -> str:
    if ndim == 1:
        return "entries"
    if ndim == 2:
        return ("rows", "columns")[axis]
    return f"axis {axis}"


def _fresh(a: np.ndarray, target: tuple, opts) -> tuple[np.ndarray, str]:
    """Values of the target's shape for the new entries, and where they come from."""
    ctx = opts.get("_target")
    name = ctx.name if ctx is not None else ""
    if "initializer" in opts:
        init = opts["initializer"]
        return (R.initialize(init, target, fan_shape=target, seed=opts.get("seed"),
                             dtype=a.dtype), f"from initializer {init!r}")
    if ctx is not None and ctx.initial is not None:
        values = np.asarray(ctx.initial())
        if tuple(values.shape) == tuple(target):
            return values.astype(a.dtype, copy=True), "from the target's initialized values"
    role = _role_initializer(name, len(target))
    return (R.initialize(role, target, fan_shape=target, seed=opts.get("seed"), dtype=a.dtype),
            f"from {role} (the {name or 'variable'} role's Keras default)")


def _grow(a: np.ndarray, target: tuple, opts) -> tuple[np.ndarray, str]:
    """`a` (no axis longer than `target`) grown to `target`; zeros only in the new input rows
    of the existing output units, target values elsewhere; and a note saying which."""
    if tuple(a.shape) == tuple(target):
        return a, ""
    ctx = opts.get("_target")
    ndim = len(target)
    out, origin = _fresh(a, target, opts)
    inputs = () if ndim < 2 or (ctx is not None and ctx.name in _NO_INPUT_AXES) else \
        range(ndim - 1)
    last_grew = target[-1] > a.shape[-1]
    parts = []
    for axis in range(ndim):
        have, want = a.shape[axis], target[axis]
        if want <= have:
            continue
        span = f"{_axis_label(axis, ndim)} {have}..{want - 1}"
        if axis in inputs:
            index = [slice(None)] * ndim
            index[axis] = slice(have, None)
            index[-1] = slice(0, a.shape[-1])
            out[tuple(index)] = 0
            parts.append(f"{span} zeros (input{', for the existing units' if last_grew else ''})")
        else:
            parts.append(f"{span} {origin}")
    out[tuple(slice(0, n) for n in a.shape)] = a
    return out, "; ".join(parts)


def _fit_axes(a: np.ndarray, target: tuple, allow_crop: bool, allow_pad: bool, opts):
    """(array, cropped, note of what the grown entries hold)."""
    if a.ndim != len(target):
        raise ShapeError(f"source {a.shape} and target {target} have different ranks",
                         shapes=(a.shape, target))
    out, cropped = a, False
    for axis, (have, want) in enumerate(zip(a.shape, target)):
        if want < have:
            if not allow_crop:
                raise ShapeError(f"axis {axis} would shrink {have} -> {want}; use 'slice' or "
                                 "'fit'", shapes=(a.shape, target))
            out, cropped = np.take(out, range(want), axis=axis), True
        elif want > have and not allow_pad:
            raise ShapeError(f"axis {axis} would grow {have} -> {want}; use 'pad' or 'fit'",
                             shapes=(a.shape, target))
    if not allow_pad:
        return out, cropped, ""
    out, note = _grow(out, tuple(target), opts)
    return out, cropped, note


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
    out, cropped, _ = _fit_axes(a, target, True, False, opts)
    return Adapted({"": out}, cropped, f"sliced {a.shape} -> {target}")


@_single
def _pad(a, target, opts):
    out, _, note = _fit_axes(a, target, False, True, opts)
    return Adapted({"": out}, False, f"padded {a.shape} -> {tuple(target)}" +
                   (f": {note}" if note else ""))


@_single
def _fit(a, target, opts):
    out, cropped, note = _fit_axes(a, target, True, True, opts)
    return Adapted({"": out}, cropped, f"fitted {a.shape} -> {tuple(target)}" +
                   (f": {note}" if note else ""))


@_single
def _transpose(a, target, opts):
    axes = opts.get("axes")
    return Adapted({"": np.transpose(a, axes).copy()}, False, f"transposed {a.shape} axes "
                   f"{axes or 'reversed'}")


@_single
def _reshape(a, target, opts):
    if int(np.prod(a.shape)) != int(np.prod(target)):
        raise ShapeError(f"can't reshape {a.shape} ({int(np.prod(a.shape))} values) to {target}",
                         shapes=(a.shape, target))
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


_LAYOUTS = ("channels_first", "channels_last")


@_single
def _flatten_rows(a, target, opts):
    for old, new in (("source", "from_layout"), ("target", "to_layout")):
        if old in opts:
            raise OptionError(f"adapter 'reorder_flatten_rows' has no option '{old}' (it is a "
                              f"rule key); use {new}")
    if "feature_shape" not in opts:
        raise OptionError("adapter 'reorder_flatten_rows' needs feature_shape = [height, width, "
                          "channels]")
    layouts = []
    for key, default in (("from_layout", "channels_first"), ("to_layout", "channels_last")):
        value = opts.get(key, default)
        if value not in _LAYOUTS:
            raise OptionError(f"{key} must be 'channels_first' or 'channels_last', got "
                              f"{value!r}")
        layouts.append(value)
    out = R.reorder_flatten_rows(a, opts["feature_shape"], source=layouts[0],
                                 target=layouts[1])
    return Adapted({"": out}, False, f"Flatten rows {layouts[0]} -> {layouts[1]}")


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
    if "feature_shape" not in opts:
        return Adapted({"": R.linear_from_torch(a)}, False, "PyTorch Linear -> Keras Dense")
    kernel = R.linear_from_torch(a, feature_shape=opts["feature_shape"])  # reordered in place
    return Adapted({"": kernel}, False, "PyTorch Linear after flatten (NCHW) -> Keras Dense "
                                        "after Flatten (NHWC)")


@_single
def _linear_to_torch(a, target, opts):
    if "feature_shape" not in opts:
        return Adapted({"": R.linear_to_torch(a)}, False, "Keras Dense -> PyTorch Linear")
    kernel = R.reorder_flatten_rows(a, opts["feature_shape"], source="channels_last",
                                    target="channels_first")
    return Adapted({"": R.linear_to_torch(kernel)}, False, "Keras Dense after Flatten (NHWC) "
                                                           "-> PyTorch Linear after flatten "
                                                           "(NCHW)")


MAX_VOCAB_BYTES = 64 * 1024 * 1024  # a vocabulary file is text, one token per line


def _vocab(value, what):
    if isinstance(value, str):
        from ..io.archive import read_small_file

        data = read_small_file(value, f"{what} file", MAX_VOCAB_BYTES)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise OptionError(f"adapter 'remap_rows': {what} file {value!r} is not UTF-8 text "
                              f"(byte {e.start}); give one token per line") from None
        return [line for line in re.split(r"\r\n?|\n", text) if line]  # universal newlines
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
    bias = tuple(targets.get("bias") or ())
    if len(bias) == 1:
        raise ShapeError(f"the target GRU has reset_after=False (one {bias} bias), but PyTorch's "
                         f"GRU is reset_after=True (two biases, a (2, {bias[0]}) bias in Keras); "
                         "build the Keras GRU with reset_after=True")
    out = R.gru_from_torch(inputs["w_ih"], inputs["w_hh"], inputs.get("b_ih"),
                           inputs.get("b_hh"))
    return Adapted(dict(zip(("kernel", "recurrent_kernel", "bias"), out)), False,
                   "PyTorch GRU (r,z,n) -> Keras (z,r,h)")


@dataclass(frozen=True)
class _Layer:
    """What a layer adapter knows of its target layer: its path and config (None when the
    caller can't read it)."""

    path: str
    config: Mapping[str, Any] | None = None


def check_epsilon(layer: str, eps: Any, epsilon: Any, mismatch: Any, *, side: str) -> str:
    """Compares PyTorch's BatchNorm `eps` with the Keras layer's `epsilon`.

    Args:
        side: ``import`` (the rule's eps is the source's) or ``export`` (the PyTorch module's).

    Returns:
        A note for the report ("" when they agree).

    Raises:
        OptionError: `eps` is not a positive number, or `mismatch` is not "error" or "ok".
        RulesError: they differ (or `epsilon` is unknown) and `mismatch` is not "ok".
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0 or \
            not math.isfinite(eps):
        raise OptionError(f"eps must be a positive number (PyTorch's BatchNorm eps), got "
                          f"{eps!r}")
    if mismatch not in ("error", "ok"):
        raise OptionError(f"eps_mismatch must be \"error\" or \"ok\", got {mismatch!r}")
    if epsilon is not None and math.isclose(float(epsilon), float(eps), rel_tol=1e-6):
        return ""
    torch_eps, keras = f"{float(eps):g}", "unknown" if epsilon is None else f"{float(epsilon):g}"
    if mismatch == "ok":
        return f"PyTorch eps {torch_eps} vs Keras epsilon {keras} accepted (eps_mismatch = ok)"
    if side == "import":
        text = (f"the PyTorch BatchNorm's eps is {torch_eps} (the rule's eps, default 1e-05) "
                f"but the Keras layer's epsilon is {keras}, so the outputs would differ; build "
                f"the Keras layer with epsilon={torch_eps} (or give the rule the PyTorch "
                "module's eps)")
    else:
        text = (f"the Keras layer's epsilon is {keras} but the PyTorch BatchNorm's eps is "
                f"{torch_eps} (the rule's eps, default 1e-05), so the outputs would differ; "
                f"build the PyTorch BatchNorm with eps={keras} and set eps = {keras} in the rule")
    raise RulesError(f"{layer}: {text}, or add eps_mismatch = \"ok\" to the rule to accept the "
                     "difference", layer=layer)


def _bn_torch(inputs, targets, opts):
    layer = opts.get("_layer") or _Layer("")
    epsilon = (layer.config or {}).get("epsilon")
    note = check_epsilon(layer.path, opts.get("eps", TORCH_BN_EPS), epsilon,
                         opts.get("eps_mismatch", "error"), side="import")
    out = R.batchnorm_from_torch(inputs["weight"], inputs["bias"], inputs["running_mean"],
                                 inputs["running_var"])
    return Adapted(dict(zip(("gamma", "beta", "moving_mean", "moving_variance"), out)), False,
                   note or f"PyTorch BatchNorm -> Keras, eps {float(opts.get('eps', 1e-5)):g} "
                           "= epsilon")


def layer_config(source: Any, layer: str) -> dict | None:
    """The config of `source`'s layer at path `layer`: from the file's config, or from the live
    layer; None when neither says."""
    layer = layer.rstrip("/")
    for info in source.layers():
        if info.path == layer and info.config is not None:
            return info.config
    obj = getattr(source, "layer_objects", {}).get(layer)
    if obj is None:
        return None
    try:
        return obj.get_config()
    except (NotImplementedError, TypeError, ValueError, AttributeError):
        return None


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


_FILL = {"initializer": "initializer name for new units (default: the target's own initialized "
                         "values; new input rows stay zeros for the existing units)",
         "seed": "integer"}
_TORCH_ROLES = ("w_ih", "w_hh", "b_ih", "b_hh")
_RNN_OUT = ("kernel", "recurrent_kernel", "bias")

ADAPTERS: dict[str, Adapter] = {a.name: a for a in [
    Adapter("slice", {"keep": "list of units to keep (default: the first ones)",
                      "axis": "axis of keep (default -1)"}, _slice,
            "crop each axis to the target shape, or keep listed units"),
    Adapter("pad", _FILL, _pad, "grow each axis to the target shape: new units from the "
            "target's initialized values, new input rows zero"),
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
                                     "from_layout": "channels_first|channels_last (default "
                                                    "channels_first)",
                                     "to_layout": "channels_first|channels_last (default "
                                                  "channels_last)"},
            _flatten_rows, "Dense rows after Flatten for another data format",
            misplaced={"source": ("from_layout", _LAYOUTS), "target": ("to_layout", _LAYOUTS)}),
    Adapter("conv_from_torch", {"kind": "conv|depthwise|transpose"}, _conv_from_torch,
            "PyTorch conv weight (O,I,kh,kw) -> Keras kernel"),
    Adapter("conv_to_torch", {"kind": "conv|depthwise|transpose"}, _conv_to_torch,
            "Keras conv kernel -> PyTorch weight"),
    Adapter("linear_from_torch", {"feature_shape": "[height, width, channels] when the Linear "
                                                   "follows a flatten of an NCHW map"},
            _linear_from_torch, "PyTorch Linear (out,in) -> Dense"),
    Adapter("linear_to_torch", {"feature_shape": "[height, width, channels] when the Dense "
                                                 "follows a Flatten of an NHWC map"},
            _linear_to_torch, "Dense kernel -> PyTorch Linear"),
    Adapter("remap_rows", {"old_vocab": "tokens or file", "new_vocab": "tokens or file",
                           "fill": "mean|zeros|random", "seed": "integer", "axis": "integer"},
            _remap, "carry embedding rows across a vocabulary change"),
    Adapter("lstm_from_torch", {}, _lstm_torch, "PyTorch LSTM weights -> Keras LSTM layer",
            roles=_TORCH_ROLES, required=2, outputs=_RNN_OUT),
    Adapter("gru_from_torch", {}, _gru_torch, "PyTorch GRU weights -> Keras GRU layer",
            roles=_TORCH_ROLES, required=2, outputs=_RNN_OUT),
    Adapter("batchnorm_from_torch", {"eps": "PyTorch's eps (default 1e-5), compared with the "
                                            "target layer's epsilon",
                                     "eps_mismatch": "error|ok (default error)"}, _bn_torch,
            "PyTorch BatchNorm weights -> Keras BatchNormalization layer",
            roles=("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
            required=4, outputs=("gamma", "beta", "moving_mean", "moving_variance")),
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


def _nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_nonfinite(v) for v in value)
    return False


def run_adapter(adapter: Adapter, inputs: Mapping[str, np.ndarray],
                targets: Mapping[str, tuple], options: Mapping[str, Any], where: str, *,
                initial: Callable[[], np.ndarray] | None = None,
                layer: Mapping[str, Any] | None = None) -> Adapted:
    """Runs `adapter`, checking every output against its target shape.

    Args:
        initial: for a single-tensor adapter, returns the target variable's current
            (freshly initialized) values: growing adapters take new units from them.
        layer: for a layer adapter, the target layer's config (`layer_config`): adapters
            that compare settings (BatchNorm's epsilon) read it.

    Raises:
        ShapeError: naming `where` (the target), both shapes and the adapter.
        OptionError: a NaN or infinite option value.
    """
    for key, value in options.items():
        if _nonfinite(value):
            raise OptionError(f"{where}: adapter '{adapter.name}' option {key} = {value!r} is "
                              "not a finite number; give a finite value")
    src = ", ".join(f"{_shape(a)}" for a in inputs.values())
    where_kw = {"layer": where} if adapter.is_layer else {"variable": where}
    opts = dict(options)
    if not adapter.is_layer:
        opts["_target"] = _Target(where, initial)
    else:
        opts["_layer"] = _Layer(where.rstrip("/"), layer)
    try:
        result = adapter.fn(dict(inputs), dict(targets), opts)
    except (ShapeError, OptionError) as e:
        raise type(e)(f"{where}: adapter '{adapter.name}' can't map source {src} onto target "
                      f"{_fmt_targets(targets)}: {e}", **where_kw,
                      shapes=_both_sides(inputs, targets)) from None
    except (TypeError, ValueError, IndexError, KeyError) as e:  # options of the wrong kind
        given = ", ".join(f"{k} = {v!r}" for k, v in options.items()) or "no options"
        known = "; ".join(f"{k}: {d}" for k, d in adapter.options.items()) or "none"
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OptionError(f"{where}: adapter '{adapter.name}' can't use {given} ({text}); its "
                          f"options are {known}", **where_kw) from None
    for name, shape in targets.items():
        got = result.arrays.get(name)
        if got is None or tuple(got.shape) != tuple(shape):
            raise ShapeError(f"{where}: adapter '{adapter.name}' made "
                             f"{None if got is None else tuple(got.shape)} from source {src}, "
                             f"but the target is {tuple(shape)}; check the adapter's options",
                             **where_kw, shapes=(None if got is None else got.shape, shape))
    return result


def _both_sides(inputs: Mapping[str, Any], targets: Mapping[str, tuple]) -> tuple:
    """(source shape(s), target shape(s)): one shape per side, or a tuple of them."""
    src = tuple(_shape(a) for a in inputs.values())
    dst = tuple(tuple(s) for s in targets.values())
    return (src[0] if len(src) == 1 else src, dst[0] if len(dst) == 1 else dst)


def _fmt_targets(targets: Mapping[str, tuple]) -> str:
    if list(targets) == [""]:
        return str(tuple(targets[""]))
    return ", ".join(f"{k} {tuple(v)}" for k, v in targets.items())


__all__ += ["run_adapter"]
