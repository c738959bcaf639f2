"""`surgery.verify`: run two models on the same probe batch and compare their outputs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError, ShapeError

__all__ = ["Verification", "verify", "probe_inputs", "accuracy"]


@dataclass(frozen=True)
class Verification:
    """The outcome of `verify`: the largest absolute output difference against `atol`."""

    max_abs_diff: float
    atol: float
    batch: int
    outputs: int

    @property
    def ok(self) -> bool:
        return bool(self.max_abs_diff <= self.atol)

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "atol": self.atol, "ok": self.ok,
                "batch": self.batch, "outputs": self.outputs}

    def __str__(self) -> str:
        verdict = "same outputs" if self.ok else "OUTPUTS DIFFER"
        return (f"verify: {verdict}: max |reference - candidate| = {self.max_abs_diff:.3g} "
                f"(atol {self.atol:g}, {self.batch} probe inputs)")


def _vocab(model: Any) -> int:
    sizes = [int(l.input_dim) for l in _all_layers(model) if hasattr(l, "input_dim")]
    return min(sizes) if sizes else 2


def _all_layers(model: Any):
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        yield layer
        stack.extend(getattr(layer, "layers", []) or [])


def probe_inputs(model: Any, *, batch: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Random inputs shaped from `model.inputs`: normal floats, or token ids below the
    smallest Embedding vocabulary for integer inputs."""
    rng = np.random.default_rng(seed)
    out = []
    for tensor in model.inputs:
        shape = [batch] + [d if d is not None else 8 for d in tuple(tensor.shape)[1:]]
        dtype = str(getattr(tensor.dtype, "name", tensor.dtype))
        if "int" in dtype:
            out.append(rng.integers(0, _vocab(model), shape).astype(dtype))
        else:
            out.append(rng.normal(size=shape).astype("float32"))
    return out


def _load_inputs(inputs: Any, model: Any) -> list[np.ndarray]:
    if isinstance(inputs, (str, os.PathLike)):
        path = os.fspath(inputs)
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such inputs file (an .npz with one array per model "
                             "input)")
        with np.load(path, allow_pickle=False) as data:
            names = [getattr(t, "name", "").split(":")[0] for t in model.inputs]
            if all(n in data for n in names):
                return [data[n] for n in names]
            if len(model.inputs) == 1 and len(data.files) >= 1:
                return [data["x"] if "x" in data else data[data.files[0]]]
            raise InputError(f"{path}: needs arrays named {', '.join(names)}")
    if isinstance(inputs, np.ndarray):
        return [inputs]
    return list(inputs)


def _flat(outputs) -> list[np.ndarray]:
    if isinstance(outputs, dict):
        return [np.asarray(outputs[k]) for k in sorted(outputs)]
    if isinstance(outputs, (list, tuple)):
        return [np.asarray(o) for o in outputs]
    return [np.asarray(outputs)]


def verify(reference: Any, candidate: Any, inputs: Any = None, *, atol: float = 1e-5,
           batch: int = 8, seed: int = 0) -> Verification:
    """Runs both models on the same inputs and reports the largest output difference.

    Args:
        reference, candidate: Keras 3 or tf_keras models, or paths `load_model` reads.
        inputs: arrays (one per model input), an `.npz` path, or None for random probe inputs
            shaped from the reference (`probe_inputs`).
        atol: the tolerance `ok` checks against.

    Raises:
        ShapeError: the two models' outputs have different shapes.

    Example:
    ```python
    v = surgery.verify(original, edited)
    assert v.ok, str(v)
    ```
    """
    from .modelio import load_model

    reference, candidate = load_model(reference), load_model(candidate)
    xs = probe_inputs(reference, batch=batch, seed=seed) if inputs is None else \
        _load_inputs(inputs, reference)
    feed = xs[0] if len(xs) == 1 else xs
    a = _flat(reference(feed, training=False))
    b = _flat(candidate(feed, training=False))
    if [x.shape for x in a] != [y.shape for y in b]:
        raise ShapeError(f"verify: the reference's outputs {[x.shape for x in a]} and the "
                         f"candidate's {[y.shape for y in b]} differ in shape; they don't "
                         "compute the same function")
    diff = max((float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
                if x.size else 0.0) for x, y in zip(a, b))
    return Verification(diff if np.isfinite(diff) else float("inf"), float(atol),
                        int(xs[0].shape[0]), len(a))


def accuracy(model: Any, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of a classifier on integer labels (binary for a one-unit head).

    Example:
    ```python
    acc = surgery.accuracy(model, x_test, y_test)
    ```
    """
    pred = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    if pred.shape[-1] == 1:
        return float(((pred[..., 0] > 0.5).astype(int) == np.asarray(y)).mean())
    return float((pred.argmax(-1) == np.asarray(y)).mean())
