"""`surgery.evaluate` and `surgery.predict`: a model on a test set, without writing Python.

`evaluate` reads labelled data the way `finetune` does (`load_data`: .npz, CSV, image folder,
saved tf.data, checked against the model), runs the model in inference mode and reports the
loss `finetune` would train with (`infer_loss`: sparse categorical crossentropy for integer
labels, binary for one unit, MSE for real-valued targets, from logits for a head without
softmax/sigmoid), the metric that fits the head (accuracy, binary accuracy, or MAE and MSE),
and for classifiers the accuracy of each class (its recall) and the confusion matrix. The loss
is the data loss alone: regularization penalties that Keras's `evaluate` adds are left out.

`predict` takes data with or without labels and returns the outputs, the predicted class of
each sample and the class names, when the model's file stores them (``save_model(...,
class_names=...)``, `finetune` from CSV names or image folders). `write_predictions` writes
them as CSV or .npz, `write_confusion_plot` the confusion matrix as PNG.
"""

from __future__ import annotations

import csv
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .data import Data, as_inputs, check_against_model, load_data, samples
from ..errors import OptionError, OutputError, ShapeError, UnsupportedModelError
from ..io.atomic import atomic_path
from ..io.classnames import check_class_names, names_of_origin
from ..text import shown

__all__ = ["Evaluation", "Predictions", "evaluate", "predict", "write_predictions",
           "write_confusion_plot"]

_CLASSIFIER_LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy")
_MATRIX_TEXT_LIMIT = 20  # classes up to which the text report prints the confusion matrix


def _label(i: int, names: Sequence[str], width: int = 24) -> str:
    return shown(f"{i} {names[i]}" if names else str(i), width)


@dataclass(frozen=True)
class Evaluation:
    """A model's loss and metrics on labelled data.

    Attributes:
        model, data: what was evaluated on what (paths or names).
        samples: how many samples.
        loss_name, loss: the loss `finetune` would use, and its mean over the samples.
        metrics: ``accuracy`` for classifiers (binary accuracy for one unit), or
            ``mean_absolute_error`` and ``mean_squared_error`` for regression heads.
        class_names: each output unit's class (the model's stored names, else the data's);
            () when unknown.
        confusion: classifiers: counts, rows the true class, columns the predicted one.
        mapped: the data's labels were mapped onto the model's classes by name.
    """

    model: str
    data: str
    samples: int
    loss_name: str
    loss: float
    metrics: dict = field(default_factory=dict)
    class_names: tuple[str, ...] = ()
    confusion: tuple[tuple[int, ...], ...] | None = None
    mapped: bool = False

    @property
    def support(self) -> tuple[int, ...]:
        """Samples of each true class."""
        return tuple(sum(row) for row in self.confusion or ())

    @property
    def per_class(self) -> tuple[float | None, ...]:
        """Accuracy within each true class (recall); None for a class without samples."""
        return tuple(row[i] / n if n else None
                     for i, (row, n) in enumerate(zip(self.confusion or (), self.support)))

    def to_dict(self) -> dict:
        names = self.class_names
        return {"model": self.model, "data": self.data, "samples": self.samples,
                "loss_name": self.loss_name, "loss": self.loss, "metrics": dict(self.metrics),
                "class_names": list(names) or None, "labels_mapped_by_name": self.mapped,
                "per_class": [{"class": i, "name": names[i] if names else None, "samples": n,
                               "accuracy": acc}
                              for i, (n, acc) in enumerate(zip(self.support, self.per_class))],
                "confusion": [list(r) for r in self.confusion] if self.confusion else None}

    def __str__(self) -> str:
        lines = [f"{shown(self.model)} on {shown(self.data)}: {self.samples} samples"]
        if self.mapped:
            lines.append("labels mapped onto the model's classes by name")
        rows = [(f"loss ({self.loss_name})", self.loss)] + list(self.metrics.items())
        width = max(len(k) for k, _ in rows)
        lines += [f"{k:<{width}}  {v:.4f}" for k, v in rows]
        if self.confusion:
            lines += ["", *self._per_class_lines(), "", *self._matrix_lines()]
        return "\n".join(lines)

    def _per_class_lines(self) -> list[str]:
        labels = [_label(i, self.class_names) for i in range(len(self.confusion))]
        w = max(len(x) for x in labels + ["class"])
        out = [f"{'class':<{w}}  {'samples':>7}  accuracy"]
        for label, n, acc in zip(labels, self.support, self.per_class):
            out.append(f"{label:<{w}}  {n:>7}  {'-' if acc is None else f'{acc:.4f}':>8}")
        return out

    def _matrix_lines(self) -> list[str]:
        k = len(self.confusion)
        if k > _MATRIX_TEXT_LIMIT:
            return [f"confusion matrix: {k} x {k}, in --json (and --plot)"]
        labels = [_label(i, self.class_names) for i in range(k)]
        w = max(len(x) for x in labels)
        cw = max(4, len(str(max(max(r) for r in self.confusion))) + 1)
        out = ["confusion matrix (rows: true class, columns: predicted class)",
               " " * w + "".join(f"{i:>{cw}}" for i in range(k))]
        out += [f"{label:<{w}}" + "".join(f"{c:>{cw}}" for c in row)
                for label, row in zip(labels, self.confusion)]
        return out


@dataclass(frozen=True, eq=False)
class Predictions:
    """A model's outputs on data, and what they say.

    Attributes:
        model, data: what predicted on what.
        kind: how the outputs were read: ``softmax``, ``logits`` (softmax taken for the
            probabilities), ``sigmoid`` (one unit: two classes), ``logit`` (one linear unit
            with two class names), ``multilabel`` (sigmoid units), ``regression``.
        outputs: the model's outputs, (samples, units).
        probabilities: classifiers: (samples, classes); None for regression.
        predicted: classifiers: each sample's class index; None for regression.
        class_names: each class's name, when the model's file stores them; else ().
        files: an image folder's files (relative to it), in sample order; else ().
    """

    model: str
    data: str
    kind: str
    outputs: np.ndarray
    probabilities: np.ndarray | None = None
    predicted: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def counts(self) -> list[int]:
        """Samples predicted as each class (classifiers)."""
        if self.predicted is None:
            return []
        return np.bincount(self.predicted, minlength=self.probabilities.shape[1]).tolist()

    def to_dict(self) -> dict:
        return {"model": self.model, "data": self.data, "samples": len(self.outputs),
                "kind": self.kind, "class_names": list(self.class_names) or None,
                "predicted_counts": self.counts() or None}

    def __str__(self) -> str:
        lines = [f"{shown(self.model)} on {shown(self.data)}: {len(self.outputs)} samples "
                 f"({self.kind})"]
        counts = self.counts()
        if counts:
            lines.append("predicted: " + ", ".join(
                f"{_label(i, self.class_names, 40)}={n}" for i, n in enumerate(counts)))
        return "\n".join(lines)


# ------------------------------------------------------------------ shared steps

def _model_name(model) -> str:
    from ..model.saving import source_path

    return source_path(model) or getattr(model, "name", "model")


def _head_width(model) -> int:
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1:
        raise UnsupportedModelError(f"{getattr(model, 'name', 'model')}: has {len(outputs)} "
                                    "outputs; evaluate and predict take models with one output")
    return int(outputs[0].shape[-1])


def _check_batch(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or \
            batch_size < 1:
        raise OptionError(f"batch size must be a whole number of at least 1, got {batch_size!r}")


def _read(model, data, *, label, labels: bool) -> Data:
    """`data` as a checked `Data`: a path read by `load_data`, a `Data`, or an (x, y) pair."""
    if isinstance(data, Data):
        check_against_model(data, model, labels=labels)
        return data
    if isinstance(data, tuple) and len(data) == 2:
        data = Data(as_inputs(data[0]), None if data[1] is None else np.asarray(data[1]),
                    None, None, "arrays", "arrays")
        check_against_model(data, model, labels=labels)
        return data
    return load_data(data, model, label=label, labels=labels)


def _stored(model, width: int) -> tuple[str, ...]:
    from ..model.saving import source_path

    return names_of_origin(source_path(model), width) or ()


def _names(model, width: int, given) -> tuple[str, ...]:
    if given is not None:
        return check_class_names(given, "class_names", width=width, error=OptionError)
    return _stored(model, width)


def _outputs(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    out = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    return out.reshape(samples(x), -1) if out.ndim == 1 else out


# ------------------------------------------------------------------ evaluate

def _by_name(model, data: Data, names: tuple[str, ...]) -> tuple[np.ndarray, bool]:
    """The labels as the model's class indices: data with class names (CSV, image folders)
    is mapped onto the model's names; the data's classes must be among them."""
    if not names or not data.classes or data.classes == names:
        return data.y, False
    unknown = [c for c in data.classes if c not in names]
    if unknown:
        raise ShapeError(f"{data.source}: classes {', '.join(unknown[:8])} are not among the "
                         f"model's ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}); "
                         "evaluate on data with the model's classes", path=data.source)
    order = np.array([names.index(c) for c in data.classes], np.int64)
    return order[data.y], True


def _outputs_and_loss(model, x: np.ndarray, y: np.ndarray, batch_size: int, name: str,
                      from_logits: bool) -> tuple[np.ndarray, float]:
    """The outputs and the mean loss, batch by batch in one traced function, so that the loss
    sees the head's logits where Keras keeps them (a softmax/sigmoid output remembers its
    input), exactly as Keras's own `evaluate` computes it."""
    from ..io.tfimport import tensorflow
    from .finetune import loss_object

    tf = tensorflow()
    fn = loss_object(name, from_logits, reduction=None)

    @tf.function(reduce_retracing=True)
    def step(xb, yb):
        out = model(xb, training=False)
        return out, fn(yb, out)

    outs, total = [], 0.0
    for xb, yb in tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size):
        out, per_sample = step(xb, yb)
        outs.append(np.asarray(out, np.float32))
        total += float(np.sum(np.asarray(per_sample), dtype=np.float64))
    out = np.concatenate(outs)
    return out.reshape(samples(x), -1), total / samples(x)


def _truth_and_guess(name: str, from_logits: bool, y: np.ndarray, out: np.ndarray):
    """(true class, predicted class, number of classes) for a classifier's loss."""
    if name in _CLASSIFIER_LOSSES:
        true = y.reshape(len(y)) if name.startswith("sparse") else np.argmax(y, axis=-1)
        return true.astype(np.int64), np.argmax(out, axis=-1), out.shape[-1]
    threshold = 0.0 if from_logits else 0.5
    return y.reshape(len(y)).astype(np.int64), (out.reshape(len(y)) > threshold).astype(
        np.int64), 2


def _confusion(true: np.ndarray, guess: np.ndarray, k: int) -> tuple[tuple[int, ...], ...]:
    counts = np.bincount(true * k + guess, minlength=k * k).reshape(k, k)
    return tuple(tuple(int(c) for c in row) for row in counts)


def evaluate(model: Any, data: Any, *, label: str | None = None, batch_size: int = 32,
             class_names: Sequence[str] | None = None) -> Evaluation:
    """Evaluates a model on labelled data: loss, the metric fitting its head, and for
    classifiers the accuracy of each class and the confusion matrix.

    Args:
        model: a Keras model with one output (not changed: never compiled or trained).
        data: a data path (`.npz` with x, y; `.csv`; an image folder; saved `tf.data`), a
            `Data`, or an ``(x, y)`` pair.
        label: the CSV label column (default ``label``).
        batch_size: samples per forward pass.
        class_names: each output unit's class; default: the names the model's file stores,
            else the data's (CSV names, image folders). Data with class names is mapped onto
            the model's by name.

    Returns:
        An `Evaluation`; `str()` is a table, `to_dict()` is JSON-ready.

    Raises:
        InputError, FormatError, ShapeError: data that can't be read or doesn't fit the model
            (as `finetune` refuses it); class names that don't fit the head.
        OptionError: a bad batch size or class name list; labels no loss fits.
        UnsupportedModelError: a model with several outputs.

    Example:
    ```python
    result = surgery.evaluate(surgery.load_model("tuned.keras"), "test.npz")
    print(result.metrics["accuracy"], result.per_class)
    ```
    """
    from .finetune import infer_loss

    _check_batch(batch_size)
    width = _head_width(model)
    data = _read(model, data, label=label, labels=True)
    names = _names(model, width, class_names)
    y, mapped = _by_name(model, data, names)
    name, _, from_logits = infer_loss(model, y)
    out, loss = _outputs_and_loss(model, data.x, y, batch_size, name, from_logits)
    if name in _CLASSIFIER_LOSSES or name == "binary_crossentropy":
        true, guess, k = _truth_and_guess(name, from_logits, y, out)
        metrics = {"accuracy": float(np.mean(true == guess))}
        confusion = _confusion(true, guess, k)
        names = names or (data.classes if len(data.classes) == k else ())
    else:
        diff = out.astype(np.float64) - y.reshape(out.shape)
        metrics = {"mean_absolute_error": float(np.mean(np.abs(diff))),
                   "mean_squared_error": float(np.mean(diff * diff))}
        confusion = None
    return Evaluation(str(_model_name(model)), f"{data.source} ({data.kind})", len(y), name,
                      loss, metrics, tuple(names), confusion, mapped)


# ------------------------------------------------------------------ predict

def _kind(model, width: int, names: tuple[str, ...]) -> str:
    from .losses import _output_activation

    act = _output_activation(model)
    if act == "softmax":
        return "softmax"
    if act == "sigmoid":
        return "sigmoid" if width == 1 else "multilabel"
    if act in ("linear", "None", "none"):
        if width > 1:
            return "logits"
        return "logit" if len(names) == 2 else "regression"
    return "regression"


def _probabilities(kind: str, out: np.ndarray) -> np.ndarray | None:
    x = out.astype(np.float64)
    if kind in ("softmax", "multilabel"):
        return x
    if kind == "logits":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if kind in ("sigmoid", "logit"):
        p = x[:, :1] if kind == "sigmoid" else 1.0 / (1.0 + np.exp(-x[:, :1]))
        return np.concatenate([1.0 - p, p], axis=1)
    return None


def predict(model: Any, data: Any, *, label: str | None = None, batch_size: int = 32,
            class_names: Sequence[str] | None = None) -> Predictions:
    """Runs a model on data (labels optional) and reads its outputs as classes.

    Args:
        model: a Keras model with one output (not changed).
        data: a path (an .npz with `x`, a CSV with or without its label column, an image
            folder with or without class subfolders, saved `tf.data`), a `Data`, or an
            ``(x, None)`` pair.
        label: the CSV label column to leave out of the features (default ``label``, when
            the CSV has one).
        batch_size: samples per forward pass.
        class_names: each output unit's class; default: the names the model's file stores.

    Returns:
        `Predictions`: outputs, probabilities, predicted class indices, class names.

    Raises:
        InputError, FormatError, ShapeError: data that can't be read or doesn't fit.
        OptionError, UnsupportedModelError: as `evaluate`.

    Example:
    ```python
    p = surgery.predict(surgery.load_model("tuned.keras"), "new_images/")
    print([p.class_names[i] for i in p.predicted[:5]])
    ```
    """
    _check_batch(batch_size)
    width = _head_width(model)
    data = _read(model, data, label=label, labels=False)
    names = _names(model, width, class_names)
    out = _outputs(model, data.x, batch_size)
    kind = _kind(model, width, names)
    probs = _probabilities(kind, out)
    guess = None if probs is None else np.argmax(probs, axis=-1).astype(np.int64)
    return Predictions(str(_model_name(model)), f"{data.source} ({data.kind})", kind, out,
                       probs, guess, names, data.files)


# ------------------------------------------------------------------ files

def _columns(p: Predictions) -> tuple[list[str], list[np.ndarray]]:
    """CSV header and value columns (after index and file)."""
    if p.predicted is None:
        k = p.outputs.shape[1]
        return (["output"] if k == 1 else [f"output_{i}" for i in range(k)]), \
            [p.outputs[:, i] for i in range(k)]
    k = p.probabilities.shape[1]
    classes = list(p.class_names) if p.class_names else [str(i) for i in range(k)]
    best = p.probabilities[np.arange(len(p.predicted)), p.predicted]
    return ["predicted", "probability", *classes], [None, best] + [p.probabilities[:, i]
                                                                   for i in range(k)]


def _write_csv(p: Predictions, tmp: str) -> None:
    header, cols = _columns(p)
    names = list(p.class_names)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["index", *(["file"] if p.files else []), *header])
        for i in range(len(p.outputs)):
            row: list[Any] = [i, *([p.files[i]] if p.files else [])]
            for c in cols:
                if c is None:  # the predicted class: its name when known
                    row.append(names[p.predicted[i]] if names else int(p.predicted[i]))
                else:
                    row.append(f"{float(c[i]):.6g}")
            w.writerow(row)


def _write_npz(p: Predictions, tmp: str) -> None:
    arrays = {"outputs": p.outputs, "class_names": np.array(p.class_names, dtype=str)}
    if p.predicted is not None:
        arrays.update(predicted=p.predicted, probabilities=p.probabilities)
    if p.files:
        arrays["files"] = np.array(p.files, dtype=str)
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)


def check_predictions_path(path: str) -> str:
    """``csv`` or ``npz`` from the output's name; anything else is an `OutputError`."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in (".csv", ".npz"):
        raise OutputError(f"{path}: predictions are written as .csv or .npz; give one of "
                          "those names", path=path)
    return ext[1:]


def write_predictions(predictions: Predictions, path: str, *, overwrite: bool = False,
                      inputs: Sequence = ()) -> str:
    """Writes predictions atomically: a CSV (index, file for image folders, predicted class
    — its name when known —, its probability, one column per class) or an .npz
    (``outputs``, ``predicted``, ``probabilities``, ``class_names``, ``files``)."""
    kind = check_predictions_path(path)
    with atomic_path(path, inputs=inputs, overwrite=overwrite) as tmp:
        (_write_csv if kind == "csv" else _write_npz)(predictions, tmp)
    return path


def write_confusion_plot(evaluation: Evaluation, path: str, *, overwrite: bool = False,
                         inputs: Sequence = ()) -> str:
    """The confusion matrix as a PNG heat map (needs matplotlib)."""
    from .outputs import require_matplotlib

    if not evaluation.confusion:
        raise OptionError(f"{evaluation.model}: a regression head has no confusion matrix; "
                          "drop --plot")
    plt = require_matplotlib()
    matrix = np.array(evaluation.confusion)
    k = len(matrix)
    labels = [_label(i, evaluation.class_names, 16) for i in range(k)]
    size = min(4 + 0.5 * k, 30)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=90 if k > 6 else 0)
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"accuracy {evaluation.metrics['accuracy']:.4f} on {evaluation.samples} "
                 "samples")
    if k <= _MATRIX_TEXT_LIMIT:
        for (r, c), n in np.ndenumerate(matrix):
            ax.text(c, r, str(n), ha="center", va="center",
                    color="white" if n > matrix.max() / 2 else "black")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_path(path, inputs=inputs, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path
