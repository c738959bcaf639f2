"""Checking training data against the model it will train (`check_against_model`): numbers
only and finite, x and y of one length, sample shapes the model's inputs take, named arrays
that are exactly the model's named inputs, named classes and label values that fit the head."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import FormatError, ShapeError
from .data_arrays import Data, samples
from .data_safety import _check_dtype, _check_finite, _check_lengths

__all__ = ["check_against_model"]


def _model_inputs(model) -> dict[str, Any]:
    """The model's input tensors by name: the keys of a model called on a dict (keras-hub's
    ``token_ids``, ``padding_mask``...), else each input layer's name."""
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):
        return {str(k): v for k, v in struct.items()}
    inputs = list(getattr(model, "inputs", None) or [])
    return {str(getattr(t, "name", f"input_{i}")): t for i, t in enumerate(inputs)}


def _named(model) -> bool:
    """The model takes a dict, or several inputs: its data must name them."""
    return isinstance(getattr(model, "_inputs_struct", None), dict) or \
        len(getattr(model, "inputs", None) or []) > 1


def _head_width(model) -> int:
    return int(model.outputs[0].shape[-1])


def _fits(got: tuple, want: tuple) -> bool:
    return len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got))


def _labels_fit(y: np.ndarray, out: tuple) -> bool:
    """Rows shaped like the output (one-hot, targets), or integer class indices for it."""
    got = tuple(y.shape[1:])
    if got == (1,) or _fits(got, out):
        return True
    return y.dtype.kind in "iu" and (_fits(got, out[:-1]) or _fits(got, out[:-1] + (1,)))


def _head_name(model) -> str:
    try:  # the layer that produced the (first) output
        return f" {model.outputs[0]._keras_history[0].name!r}"
    except (AttributeError, IndexError, TypeError):
        return ""


def _check_classes(data: Data, model, width: int) -> None:
    """Refuses named classes (CSV names, image folders) that don't fit the head: as many
    as it has units, or two for a single unit."""
    n = len(data.classes)
    if not n or n == width or (width == 1 and n == 2):
        return
    names = ", ".join(data.classes[:8]) + (", ..." if n > 8 else "")
    units = f"{width} units" if width != 1 else "1 unit (2 classes)"
    raise ShapeError(f"{data.source}: {n} classes ({names}) but the model's head"
                     f"{_head_name(model)} has {units}; replace the head first: surgery head "
                     f"MODEL -o OUT --classes {n}")


def _parts(name: str, x) -> list[tuple[str, np.ndarray]]:
    """(name, array) of each array in `x`: ``x.token_ids``... for a dict by input name."""
    if isinstance(x, dict):
        return [(f"{name}.{k}", v) for k, v in x.items()]
    return [(name, x)]


def _check_arrays(data: Data, labels: bool) -> None:
    """Numbers only, finite, no scalars; as many samples in every array of a pair."""
    pairs = [("x", data.x, "y", data.y)]
    if data.x_val is not None or data.y_val is not None:
        pairs.append(("x_val", data.x_val, "y_val", data.y_val))
    for xn, x, yn, y in pairs:
        for name, arr in ((xn, x), (yn, y)):
            if name.startswith("y") and not labels:
                continue  # data to predict on: labels, if any, are not used
            if arr is None or (isinstance(arr, dict) and not arr):
                raise FormatError(f"{data.source}: {name} is missing; validation data needs "
                                  "both x and y")
            for part, a in _parts(name, arr):
                _check_dtype(a.dtype, part, data.source)
                if a.ndim == 0:
                    raise FormatError(f"{data.source}: {part} is a scalar; it needs one entry "
                                      "per sample")
                _check_finite(a, part, data.source)
        parts = _parts(xn, x)
        for part, a in parts[1:]:
            _check_lengths(len(parts[0][1]), len(a), (parts[0][0], part), data.source)
        if y is not None and labels:
            _check_lengths(samples(x), len(y), (parts[0][0], yn), data.source)
        if samples(x) == 0:
            raise FormatError(f"{data.source}: {xn} holds no samples; add samples")


def _check_shape(source: str, name: str, arr: np.ndarray, tensor) -> None:
    shape = tuple(tensor.shape[1:])
    got = tuple(arr.shape[1:])
    if len(got) != len(shape) or any(w is not None and w != g for w, g in zip(shape, got)):
        raise ShapeError(f"{source}: {name} samples have shape {got} but the model takes "
                         f"{shape}")


def _check_inputs(data: Data, model) -> None:
    """Sample shapes against the model's inputs; named arrays must be the model's inputs,
    all of them and only them."""
    inputs = _model_inputs(model)
    names = ", ".join(sorted(inputs))
    for name, arr in (("x", data.x), ("x_val", data.x_val)):
        if arr is None:
            continue
        if not isinstance(arr, dict):
            if _named(model):
                raise ShapeError(f"{data.source}: {name} is one array but the model takes named "
                                 f"inputs ({names}); save one array per input: "
                                 + ", ".join(f"{name}.{k}" for k in sorted(inputs)))
            _check_shape(data.source, name, arr, model.inputs[0])
            continue
        missing = sorted(set(inputs) - set(arr))
        unknown = sorted(set(arr) - set(inputs))
        if missing or unknown:
            what = "; ".join(
                ([f"missing {', '.join(f'{name}.{k}' for k in missing)}"] if missing else []) +
                ([f"unknown {', '.join(f'{name}.{k}' for k in unknown)}"] if unknown else []))
            raise ShapeError(f"{data.source}: {what}; the model's inputs are {names} (one "
                             f"array {name}.<input name> each)")
        for key, a in arr.items():
            _check_shape(data.source, f"{name}.{key}", a, inputs[key])


def _check_labels(data: Data, model) -> None:
    width = _head_width(model)
    _check_classes(data, model, width)
    out = tuple(model.outputs[0].shape[1:])
    for name, arr in (("y", data.y), ("y_val", data.y_val)):
        if arr is not None and arr.ndim > 1 and not _labels_fit(arr, out):
            raise ShapeError(f"{data.source}: {name} rows have shape {tuple(arr.shape[1:])} but "
                             f"the model's output is {out}; give class indices, or rows "
                             "shaped like the output")
        if arr is None or arr.dtype.kind not in "iu" or arr.size == 0:
            continue
        per_step = arr.ndim > 1 and len(out) > 1 and _fits(tuple(arr.shape[1:]), out[:-1])
        if arr.ndim != 1 and not per_step:  # one class index per sample, or per step (a LM)
            continue
        if arr.min() < 0 or (width > 1 and arr.max() >= width):
            raise ShapeError(f"{data.source}: {name} labels run {int(arr.min())}..{int(arr.max())}"
                             f" but the model's head has {width} units (classes 0..{width - 1});"
                             " replace the head first (surgery head --classes N)")


def check_against_model(data: Data, model, *, labels: bool = True) -> None:
    """Refuses data that can't train `model`: non-numeric or non-finite values, x and y of
    different lengths, sample shapes the model doesn't take (both shapes named), named
    arrays that are not the model's inputs (or one array for a model with named inputs),
    named classes that don't fit the head, labels beyond the head's width. With
    ``labels=False`` (data to predict on) labels and classes are not checked (`y` may be
    None)."""
    _check_arrays(data, labels)
    _check_inputs(data, model)
    if labels:
        _check_labels(data, model)
