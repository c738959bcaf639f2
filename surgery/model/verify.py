"""`surgery.verify`: run two models on several probe families and compare what they compute.

Three things are compared on every probe: the models' outputs, their logits (the pre-activation
of an output that ends in softmax or sigmoid, which random probes saturate), and the output of
every layer both models share by name and output shape, so a failure names the first layer
(in graph order) where the two diverge. Neither model is changed: logits come from a sub-model
of the caller's graph and, where the activation sits inside the output layer, from a copy of that
layer with a linear activation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, OptionError, ShapeError

__all__ = ["Verification", "LayerDivergence", "verify", "probe_inputs", "snapshot", "accuracy"]

FAMILIES = ("normal", "uniform", "scale")
_SATURATING = ("softmax", "sigmoid")
_CHUNK = 256


@dataclass(frozen=True)
class LayerDivergence:
    """The first shared layer whose outputs differ: by how much, on which probes."""

    layer: str
    max_abs_diff: float
    tolerance: float
    family: str

    def to_dict(self) -> dict:
        return {"layer": self.layer, "max_abs_diff": self.max_abs_diff,
                "tolerance": self.tolerance, "family": self.family}


@dataclass(frozen=True)
class Verification:
    """The outcome of `verify`.

    `max_abs_diff` is the largest output difference (checked against `atol`);
    `logits_max_abs_diff` the largest pre-activation difference of softmax/sigmoid outputs
    (None where no output has one); `first_divergence` the first shared layer, in the
    reference's graph order, whose outputs differ by more than `atol` scaled by that layer's
    magnitude (max(1, max |reference|)); logits use the same scaled tolerance.
    """

    max_abs_diff: float
    atol: float
    batch: int
    outputs: int
    families: tuple[str, ...] = ()
    probes: int = 0
    logits_max_abs_diff: float | None = None
    logits_tolerance: float | None = None
    layers_compared: int = 0
    first_divergence: LayerDivergence | None = None
    worst_family: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def logits_ok(self) -> bool:
        return self.logits_max_abs_diff is None or \
            bool(self.logits_max_abs_diff <= self.logits_tolerance)

    @property
    def ok(self) -> bool:
        return bool(self.max_abs_diff <= self.atol) and self.logits_ok and \
            self.first_divergence is None

    @property
    def reason(self) -> str:
        """What differs, in one phrase: '0.48 (atol 1e-05); logits by ...; first ...'."""
        parts = [f"{self.max_abs_diff:.3g} (atol {self.atol:g})"]
        if not self.logits_ok:
            parts.append(f"logits by {self.logits_max_abs_diff:.3g} "
                         f"(tolerance {self.logits_tolerance:.3g})")
        d = self.first_divergence
        if d is not None:
            parts.append(f"first divergent layer {d.layer!r} by {d.max_abs_diff:.3g} "
                         f"on {d.family} probes")
        return "; ".join(parts)

    @property
    def compared(self) -> str:
        logits = "yes" if self.logits_max_abs_diff is not None else "no"
        per = f" x {self.batch}" if self.families and "inputs" not in self.families else ""
        n = len(self.families)
        return (f"compared: {n} probe {'family' if n == 1 else 'families'} "
                f"({', '.join(self.families)}){per} = {self.probes} probes; {self.outputs} "
                f"output{'s' * (self.outputs != 1)}; logits {logits}; "
                f"{self.layers_compared} shared layers")

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "atol": self.atol, "ok": self.ok,
                "batch": self.batch, "outputs": self.outputs, "families": list(self.families),
                "probes": self.probes, "logits_max_abs_diff": self.logits_max_abs_diff,
                "logits_tolerance": self.logits_tolerance,
                "layers_compared": self.layers_compared,
                "first_divergence": None if self.first_divergence is None
                else self.first_divergence.to_dict(),
                "worst_family": self.worst_family, "notes": list(self.notes)}

    def __str__(self) -> str:
        verdict = ("same outputs" if self.ok else "OUTPUTS DIFFER"
                   if self.max_abs_diff > self.atol else "LOGITS DIFFER (outputs agree)"
                   if not self.logits_ok else "A LAYER DIFFERS (outputs agree)")
        lines = [f"verify: {verdict}: max |reference - candidate| = {self.max_abs_diff:.3g} "
                 f"(atol {self.atol:g}, {self.probes or self.batch} probe inputs)"]
        if self.logits_max_abs_diff is not None:
            lines.append(f"  logits: max diff {self.logits_max_abs_diff:.3g} (tolerance "
                         f"{self.logits_tolerance:.3g})" + ("" if self.logits_ok else
                                                            "  DIFFER"))
        d = self.first_divergence
        if d is not None:
            lines.append(f"  first divergent layer: {d.layer} (max diff {d.max_abs_diff:.3g}, "
                         f"tolerance {d.tolerance:.3g}, on {d.family} probes)")
        lines.append("  " + self.compared)
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


# ------------------------------------------------------------------ probes

def _all_layers(model: Any):
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        yield layer
        stack.extend(getattr(layer, "layers", []) or [])


def _vocab(model: Any) -> int:
    sizes = [int(l.input_dim) for l in _all_layers(model) if hasattr(l, "input_dim")]
    return min(sizes) if sizes else 2


def _is_int(tensor) -> bool:
    return "int" in str(getattr(tensor.dtype, "name", tensor.dtype))


def _input_scale(model: Any, index: int):
    """A sampler of the input's own scale when a Rescaling/Normalization layer reads it."""
    target = model.inputs[index]
    for layer in getattr(model, "layers", []):
        kind = type(layer).__name__
        if kind not in ("Rescaling", "Normalization"):
            continue
        try:
            if layer.input is not target:
                continue
        except (AttributeError, ValueError):
            continue
        if kind == "Rescaling":
            s = np.asarray(layer.scale, np.float64)
            o = np.asarray(layer.offset, np.float64)
            top = np.where(o < 0, -1.0, 0.0)  # offset < 0: the layer maps onto [-1, 1]
            a, b = (top - o) / s, (1.0 - o) / s
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            return lambda rng, shape: lo + (hi - lo) * rng.uniform(size=shape)
        if not getattr(layer, "invert", False) and getattr(layer, "mean", None) is not None:
            mean = np.asarray(layer.mean, np.float64)
            std = np.sqrt(np.maximum(np.asarray(layer.variance, np.float64), 0.0))
            return lambda rng, shape: mean + std * rng.normal(size=shape)
    return None


def _probe_shape(tensor, batch: int) -> list[int]:
    return [batch] + [d if d is not None else 8 for d in tuple(tensor.shape)[1:]]


def probe_inputs(model: Any, *, batch: int = 8, seed: int = 0,
                 family: str = "normal") -> list[np.ndarray]:
    """Random inputs shaped from `model.inputs`, one array per input.

    Float inputs: `normal` N(0, 1), `uniform` U[0, 1], or `scale`, the input's own range when a
    Rescaling or Normalization layer reads it (U[0, 255] before `Rescaling(1/255)`; U[0, 1]
    where none does). Integer inputs get token ids below the smallest Embedding vocabulary.

    Example:
    ```python
    xs = surgery.model.verify.probe_inputs(model, batch=8, family="uniform")
    ```
    """
    if family not in FAMILIES:
        raise OptionError(f"unknown probe family {family!r}; use one of {', '.join(FAMILIES)}")
    _check_probe_size(model, batch)
    rng = np.random.default_rng([seed, FAMILIES.index(family)] if family != "normal" else seed)
    out = []
    for i, tensor in enumerate(model.inputs):
        shape = _probe_shape(tensor, batch)
        dtype = str(getattr(tensor.dtype, "name", tensor.dtype))
        if _is_int(tensor):
            out.append(rng.integers(0, _vocab(model), shape).astype(dtype))
        elif family == "normal":
            out.append(_draw(rng.normal, shape))
        else:
            sampler = _input_scale(model, i) if family == "scale" else None
            x = sampler(rng, shape) if sampler is not None else _draw(rng.uniform, shape)
            out.append(np.asarray(x, "float32"))
    return out


MAX_PROBE_BYTES = 256 * 1024 * 1024  # one batch of random probes, all inputs together


def _draw(draw, shape: list[int]) -> np.ndarray:
    """float32 draws, made in float64 chunks of 1M (the same values as one float64 draw)."""
    out = np.empty(int(np.prod(shape)), "float32")
    for start in range(0, out.size, 1 << 20):
        out[start:start + (1 << 20)] = draw(size=min(1 << 20, out.size - start))
    return out.reshape(shape)


def _probe_bytes(model: Any, batch: int) -> int:
    return sum(int(np.prod(_probe_shape(t, batch), dtype=object)) * 4
               for t in _declared_inputs(model))


def _check_probe_size(model: Any, batch: int) -> None:
    size = _probe_bytes(model, batch)
    if size > MAX_PROBE_BYTES:
        shapes = ", ".join(str(tuple(t.shape)) for t in _declared_inputs(model))
        raise InputError(f"verify: {getattr(model, 'name', 'the model')} declares inputs of "
                         f"shape {shapes}; a batch of {batch} random probes would take "
                         f"{size / 2 ** 30:.1f} GiB (more than {MAX_PROBE_BYTES >> 20} MiB); "
                         "give your own smaller inputs with --inputs (inputs=)")


def _input_names(model: Any) -> list[str]:
    return [getattr(t, "name", "").split(":")[0] for t in _declared_inputs(model)] or ["x"]


def _read_npz(where: str) -> dict[str, np.ndarray]:
    """The arrays of an inputs .npz, through the checked reader (regular file, zip bombs,
    declared shapes larger than what is stored, pickles)."""
    import zipfile
    import zlib

    from ..io.sources import NpzSource

    src = NpzSource(where)
    out = {}
    try:
        for info in src.variables():
            if np.dtype(info.dtype).kind == "c":
                raise InputError(f"{where}: input {info.path!r} holds complex numbers "
                                 f"({info.dtype}); give real-valued arrays", path=where)
            try:
                with zipfile.ZipFile(where) as zf, zf.open(info.key) as f:
                    out[info.path] = np.lib.format.read_array(f, allow_pickle=False)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
                    NotImplementedError) as e:
                raise InputError(f"{where}: can't read input {info.path!r} ({e}); save the "
                                 "inputs again with numpy.savez", path=where) from None
    finally:
        src.close()
    return out


def _load_inputs(inputs: Any, model: Any) -> list[np.ndarray]:
    names = _input_names(model)
    where = "inputs"
    if isinstance(inputs, (str, os.PathLike)):
        where = os.fspath(inputs)
        if not os.path.lexists(where):
            raise InputError(f"{where}: no such inputs file (an .npz with one array per model "
                             "input)", path=where)
        inputs = _read_npz(where)
        if not all(n in inputs for n in names):
            if len(names) != 1 or not inputs:
                raise InputError(f"{where}: needs arrays named {', '.join(names)}")
            inputs = [inputs["x"] if "x" in inputs else next(iter(inputs.values()))]
    if isinstance(inputs, dict):
        missing = [n for n in names if n not in inputs]
        if missing and len(names) == 1 and len(inputs) == 1:
            inputs = list(inputs.values())
        elif missing:
            raise InputError(f"{where}: no arrays for the model inputs {', '.join(missing)}; "
                             f"give one array per input, named {', '.join(names)}")
        else:
            inputs = [inputs[n] for n in names]
    xs = [np.asarray(inputs)] if isinstance(inputs, np.ndarray) else \
        [np.asarray(x) for x in inputs]
    if len(xs) != len(names):
        raise InputError(f"{where}: {len(xs)} arrays for a model with {len(names)} inputs "
                         f"({', '.join(names)}); give one array per input")
    for name, x in zip(names, xs):
        if x.dtype.kind == "c":
            raise InputError(f"{where}: input {name!r} holds complex numbers ({x.dtype}); "
                             "give real-valued arrays")
        if x.dtype.kind == "f" and x.size and not np.isfinite(x).all():
            bad = int(x.size - np.count_nonzero(np.isfinite(x)))
            raise InputError(f"{where}: input {name!r} holds {bad} NaN or infinite values of "
                             f"{x.size}; give finite inputs (they can't be compared)")
    for name, x, t in zip(names, xs, _declared_inputs(model)):
        want = tuple(t.shape)[1:]
        if x.ndim != len(want) + 1 or any(w is not None and w != g
                                          for w, g in zip(want, x.shape[1:])):
            raise ShapeError(f"{where}: input {name!r} has shape {x.shape} but the model "
                             f"takes {(None,) + want}; give arrays of the model's input shape")
    return xs


# ------------------------------------------------------------------ running a model

def _flat(outputs) -> list[np.ndarray]:
    if isinstance(outputs, dict):
        return [np.asarray(outputs[k]) for k in sorted(outputs)]
    if isinstance(outputs, (list, tuple)):
        return [np.asarray(o) for o in outputs]
    return [np.asarray(outputs)]


def _framework(model: Any):
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras
        return tf_keras
    import keras
    return keras


def _act_name(layer: Any) -> str | None:
    if type(layer).__name__ == "Softmax":
        return "softmax"
    return getattr(getattr(layer, "activation", None), "__name__", None)


def _history_layer(tensor):
    hist = getattr(tensor, "_keras_history", None)
    return None if hist is None else hist[0]


class _Runner:
    """Runs one model on probes: outputs, logits and the named layers' outputs."""

    def __init__(self, model: Any):
        self.model, self.notes, self.layers = model, [], {}
        self.pre: dict[int, tuple[Any, Any]] = {}  # output index -> (tensor, linear copy|None)
        self.sub = None
        if not _declared_inputs(model) or not getattr(model, "outputs", None):
            self.notes.append(f"{model.name}: no graph to look into (a subclassed model?); "
                              "only its outputs were compared")
            return
        for layer in model.layers:
            if type(layer).__name__ == "InputLayer":
                continue
            try:
                out = layer.output
            except (AttributeError, ValueError, RuntimeError):
                continue  # a layer used more than once has no single output
            if hasattr(out, "shape") and not isinstance(out, (list, tuple, dict)):
                self.layers[layer.name] = out
        for i, tensor in enumerate(model.outputs):
            layer = _history_layer(tensor)
            if layer is None or _act_name(layer) not in _SATURATING:
                continue
            try:
                pre = layer.input
            except (AttributeError, ValueError, RuntimeError):
                continue
            if type(layer).__name__ in ("Activation", "Softmax"):
                self.pre[i] = (pre, None)
                continue
            try:
                config = dict(layer.get_config(), activation="linear")
                linear = type(layer).from_config(config)
                linear.build(tuple(pre.shape))
                linear.set_weights(layer.get_weights())
            except Exception as e:  # noqa: BLE001 - a custom layer: say so, compare outputs
                self.notes.append(f"{layer.name}: no linear copy for its logits ({e})")
                continue
            self.pre[i] = (pre, linear)

    def build(self, names: Sequence[str]) -> None:
        if not self.layers and not self.pre:
            return
        k = _framework(self.model)
        outs = list(self.model.outputs) + [t for t, _ in self.pre.values()] + \
            [self.layers[n] for n in names]
        try:
            self.names, self.sub = list(names), k.Model(list(self.model.inputs), outs)
        except Exception as e:  # noqa: BLE001 - an unusual graph: compare the outputs only
            self.pre, self.layers = {}, {}
            self.notes.append(f"{self.model.name}: no sub-model of its layers ({e}); only its "
                              "outputs were compared")

    def run(self, xs: list[np.ndarray]) -> tuple[list, dict, dict]:
        if self.sub is None:
            return _flat(self.model(self._pack(xs), training=False)), {}, {}
        got = [np.asarray(a) for a in self.sub(list(xs), training=False)]
        n = len(self.model.outputs)
        outputs, pre, named = got[:n], got[n:n + len(self.pre)], got[n + len(self.pre):]
        logits = {}
        for (i, (_, linear)), value in zip(self.pre.items(), pre):
            logits[i] = value if linear is None else np.asarray(linear(value))
        return outputs, logits, dict(zip(self.names, named))

    def _pack(self, xs):
        if len(xs) == 1:
            return xs[0]
        if type(self.model).__module__.startswith("tf_keras"):
            import tensorflow as tf
            return tf.nest.pack_sequence_as(self.model.input, xs)
        import keras
        return keras.tree.pack_sequence_as(self.model.input, xs)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| where equal values (NaN in both included) count 0 and NaN on one side inf."""
    if a.size == 0:
        return 0.0
    a, b = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0.0, np.abs(a - b))
    d[np.isnan(d)] = np.inf
    return float(d.max())


def _scale(a: np.ndarray) -> float:
    finite = np.abs(a[np.isfinite(a)]) if a.size else a
    return float(finite.max()) if finite.size else 0.0


def _declared_inputs(model: Any) -> list:
    try:
        return list(model.inputs or [])
    except (AttributeError, ValueError):  # a subclassed or never-built model
        return []


def _probes(model: Any, inputs: Any, *, batch: int, seed: int,
            families: Sequence[str] | None) -> list[tuple[str, list[np.ndarray]]]:
    """(family, arrays) pairs: the random families that fit the model, then `inputs`."""
    declared = _declared_inputs(model)
    if not declared and inputs is None:
        raise InputError(f"verify: {getattr(model, 'name', 'the reference')} declares no "
                         "inputs (a subclassed model?), so no probes can be shaped; give "
                         "inputs= (arrays or an .npz)")
    tokens = bool(declared) and all(_is_int(t) for t in declared)
    if not declared:
        chosen = []
    elif families is not None:
        chosen = list(families)
    elif tokens:
        chosen = ["normal"]  # token ids: every family would draw the same kind of probe
    else:
        chosen = [f for f in FAMILIES if f != "scale" or any(
            _input_scale(model, i) for i in range(len(declared)))]
    if inputs is not None and families is None and \
            _probe_bytes(model, batch) > MAX_PROBE_BYTES:
        chosen = []  # too large to draw: the caller's own inputs are the probes
    probes = [("tokens" if tokens else f, probe_inputs(model, batch=batch, seed=seed,
                                                       family=f)) for f in chosen]
    if inputs is not None:
        probes.append(("inputs", _load_inputs(inputs, model)))
    if not probes:
        raise OptionError("verify: no probes; give inputs or at least one probe family")
    return probes


# ------------------------------------------------------------------ verify

def verify(reference: Any, candidate: Any, inputs: Any = None, *, atol: float = 1e-5,
           batch: int = 8, seed: int = 0, families: Sequence[str] | None = None,
           layers: bool = True) -> Verification:
    """Runs both models on the same probes; compares outputs, logits and shared layers.

    Args:
        reference, candidate: Keras 3 or tf_keras models, or paths `load_model` reads.
        inputs: your own inputs, compared as the `inputs` family: an array (one input), a list
            (one array per input), a dict keyed by input name, or an `.npz` path.
        atol: the tolerance for the outputs; logits and layers use `atol` scaled by their
            magnitude (max(1, max |reference|)).
        batch: probes per random family.
        seed: the probes' seed (each family draws from its own stream).
        families: the random families (default all of `normal`, `uniform`, `scale`; `scale`
            only where a Rescaling/Normalization layer reads an input); `()` with `inputs`
            compares your inputs only.
        layers: also compare every layer the two models share by name and output shape.

    Returns:
        A `Verification`; `ok` is false if outputs, logits or any shared layer differ.

    Raises:
        ShapeError: the two models' outputs have different shapes, or `inputs` do not fit.
        InputError: `inputs` is missing or unreadable.

    Example:
    ```python
    v = surgery.verify(original, edited, inputs="real_images.npz")
    assert v.ok, str(v)
    ```
    """
    from .saving import load_model

    reference, candidate = load_model(reference), load_model(candidate)
    probes = _probes(reference, inputs, batch=batch, seed=seed, families=families)
    ref, cand = _Runner(reference), _Runner(candidate)
    shared = [n for n, t in ref.layers.items() if n in cand.layers
              and tuple(t.shape)[1:] == tuple(cand.layers[n].shape)[1:]] if layers else []
    ref.build(shared)
    cand.build(shared)
    shared = [n for n in shared if n in ref.layers and n in cand.layers]
    out_diff, logit_diff, logit_scale, worst = 0.0, None, 0.0, (0.0, None)
    layer_diff = {n: (0.0, "") for n in shared}
    layer_scale = dict.fromkeys(shared, 0.0)
    outputs = 0
    for family, xs in probes:
        for start in range(0, xs[0].shape[0], _CHUNK):
            chunk = [x[start:start + _CHUNK] for x in xs]
            a_out, a_logits, a_named = ref.run(chunk)
            b_out, b_logits, b_named = cand.run(chunk)
            if [x.shape for x in a_out] != [y.shape for y in b_out]:
                raise ShapeError(f"verify: the reference's outputs {[x.shape for x in a_out]} "
                                 f"and the candidate's {[y.shape for y in b_out]} differ in "
                                 "shape; they don't compute the same function")
            outputs = len(a_out)
            d = max((_diff(x, y) for x, y in zip(a_out, b_out)), default=0.0)
            out_diff = max(out_diff, d)
            for i in a_logits.keys() & b_logits.keys():
                ld = _diff(a_logits[i], b_logits[i])
                logit_diff = max(logit_diff or 0.0, ld)
                logit_scale = max(logit_scale, _scale(a_logits[i]))
                d = max(d, ld)
            if d > worst[0] or worst[1] is None:
                worst = (max(d, worst[0]), family)
            for n in shared:
                a, b = a_named[n], b_named[n]
                dn = _diff(a, b) if a.shape == b.shape else float("inf")
                layer_scale[n] = max(layer_scale[n], _scale(a))
                if dn > layer_diff[n][0]:
                    layer_diff[n] = (dn, family)
    first = None
    for n in shared:
        tol = atol * max(1.0, layer_scale[n])
        if layer_diff[n][0] > tol:
            first = LayerDivergence(n, layer_diff[n][0], tol, layer_diff[n][1])
            break
    notes = list(dict.fromkeys(ref.notes + cand.notes))
    if ref.pre.keys() != cand.pre.keys():
        notes.append("logits compared only where both models end in softmax/sigmoid")
    return Verification(
        out_diff if np.isfinite(out_diff) else float("inf"), float(atol),
        int(probes[0][1][0].shape[0]), outputs, tuple(f for f, _ in probes),
        sum(int(xs[0].shape[0]) for _, xs in probes), logit_diff,
        None if logit_diff is None else atol * max(1.0, logit_scale), len(shared), first,
        worst[1], tuple(notes))


def snapshot(model: Any) -> Any:
    """A copy of `model` (same architecture, weights copied layer by layer), to compare a model
    before and after a step that changes it in place.

    Example:
    ```python
    before = snapshot(model)
    surgery.reinitialize(model, "head/*")
    print(surgery.verify(before, model))
    ```
    """
    copy = _framework(model).models.clone_model(model)
    for src, dst in zip(model.layers, copy.layers):
        dst.set_weights(src.get_weights())
    return copy


def accuracy(model: Any, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of a classifier on integer labels (binary for a one-unit head).

    Example:
    ```python
    from surgery.model.verify import accuracy
    acc = accuracy(model, x_test, y_test)
    ```
    """
    pred = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    if pred.shape[-1] == 1:
        return float(((pred[..., 0] > 0.5).astype(int) == np.asarray(y)).mean())
    return float((pred.argmax(-1) == np.asarray(y)).mean())
