"""The training loss of `finetune`: inferred from the head and the labels (`infer_loss`), built
by name honouring ``from_logits`` (`loss_object`, `make_loss`), the output layer's activation
that decides logits, and the L2-SP penalty (Li, Grandvalet & Davoine, ICML 2018). Moved from
`train/finetune.py`, which re-exports the public names."""

from __future__ import annotations

import numpy as np

from ..errors import OptionError, SurgeryError
from ..io.sources import open_weights

__all__ = ["infer_loss", "loss_object", "make_loss"]


def infer_loss(model, y: np.ndarray) -> tuple[str, list[str], bool]:
    """(loss name, metrics, from_logits) from the head's width and activation and the labels.

    A head without softmax/sigmoid outputs logits: its crossentropy takes ``from_logits``.
    Integer labels with one class index per step of a sequence output (a causal LM's next
    tokens, shape (samples, steps) for an output (samples, steps, vocabulary)) take the
    sparse categorical crossentropy too.
    """
    head = _output_activation(model)
    width = int(model.outputs[0].shape[-1])
    integer = y.dtype.kind in "iu"
    if width == 1:
        if integer or set(np.unique(y).tolist()) <= {0.0, 1.0}:
            return "binary_crossentropy", ["accuracy"], head != "sigmoid"
        return "mean_squared_error", ["mean_absolute_error"], False
    if integer and y.ndim == 1:
        return "sparse_categorical_crossentropy", ["accuracy"], head != "softmax"
    out = tuple(model.outputs[0].shape[1:-1])  # a class index per step (a causal LM's tokens)
    if integer and y.ndim > 1 and len(out) == y.ndim - 1 and \
            all(d is None or d == g for d, g in zip(out, y.shape[1:])):
        return "sparse_categorical_crossentropy", ["accuracy"], head != "softmax"
    if y.ndim == 2 and y.shape[1] == width:
        one_hot = bool(np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1))
        if head == "softmax" or one_hot:
            return "categorical_crossentropy", ["accuracy"], head != "softmax"
        return "mean_squared_error", ["mean_absolute_error"], False
    raise OptionError(f"can't infer a loss for labels {y.dtype} {y.shape[1:]} and a head of "
                      f"{width} units ({head}); pass --loss NAME")


# Keras's loss functions by name take probabilities; these classes take `from_logits`.
_CROSSENTROPY = {"sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
                 "categorical_crossentropy": "CategoricalCrossentropy",
                 "binary_crossentropy": "BinaryCrossentropy"}


def loss_object(name: str, from_logits: bool, *, reduction: str | None = "sum_over_batch_size"):
    """The Keras loss object for `name` (a Keras loss name), honouring `from_logits`.

    ``keras.losses.get({"class_name": "sparse_categorical_crossentropy", "config": {...}})``
    returns the plain function and drops the config, so a logits head would be trained as if
    it output probabilities: the classes are built here instead.
    """
    from ..io.tfimport import keras as _keras

    keras = _keras()
    try:
        fn = keras.losses.get(name)
    except (ValueError, TypeError):
        raise OptionError(f"unknown loss {name!r}; use auto or a Keras loss name such as "
                          "sparse_categorical_crossentropy, mse") from None
    canonical = getattr(fn, "__name__", None)
    if canonical in _CROSSENTROPY:
        return getattr(keras.losses, _CROSSENTROPY[canonical])(from_logits=from_logits,
                                                                reduction=reduction)
    return fn  # a per-sample function (Keras reduces it) or a Loss object


def make_loss(model, y: np.ndarray, loss: str = "auto"):
    """(loss object, metrics, description) for `loss` (``auto`` or a Keras loss name).

    A named crossentropy on a head without softmax/sigmoid takes its outputs as logits (the
    description says so): treating logits as probabilities trains nothing useful.
    """
    if not isinstance(loss, str):
        raise OptionError(f"loss must be auto or a Keras loss name, got {loss!r}")
    if loss == "auto":
        name, metrics, from_logits = infer_loss(model, y)
    else:
        name, metrics = loss, []
        from_logits = _output_activation(model) not in ("softmax", "sigmoid")
    obj = loss_object(name, from_logits)
    logits = from_logits and type(obj).__name__ in _CROSSENTROPY.values()
    return obj, metrics, name + (" (from logits)" if logits else "")


def _output_activation(model) -> str:
    try:  # the layer that produced the (first) output; not always the last in model.layers
        layer = model.outputs[0]._keras_history[0]
    except (AttributeError, IndexError, TypeError):
        layer = model.layers[-1]
    while hasattr(layer, "layers") and layer.layers:
        layer = layer.layers[-1]
    name = type(layer).__name__
    if name == "Softmax":
        return "softmax"
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", str(act)) if act is not None else "linear"


def _l2sp_loss(model, base, keras, alpha: float, beta: float):
    """The base loss plus the L2-SP penalty, anchored at the weights as they are now."""
    from ..model.heads import find_head
    from ..model.saving import source_path

    if source_path(model) is None:
        raise OptionError(f"--l2sp needs pretrained weights to anchor to; {model.name} was not "
                          "loaded from a file (load it with surgery.load_model first)")
    try:
        head = find_head(model)
    except SurgeryError:
        head = None
    with open_weights(model) as w:
        head_ids = {id(w.variable(v.path)) for v in w.variables()
                    if head and (v.layer == head or v.layer.startswith(head + "/"))}
    ops = keras.ops
    anchored = [(v, ops.convert_to_tensor(np.array(v.numpy()))) for v in model.trainable_weights
                if id(v) not in head_ids]
    heads = [v for v in model.trainable_weights if id(v) in head_ids]
    base_fn = keras.losses.get(base) if isinstance(base, str) else base

    def loss(y_true, y_pred):
        penalty = 0.0
        for v, anchor in anchored:
            penalty = penalty + ops.sum(ops.square(v - anchor))
        head_term = 0.0
        for v in heads:
            head_term = head_term + ops.sum(ops.square(v))
        return base_fn(y_true, y_pred) + 0.5 * alpha * penalty + 0.5 * beta * head_term

    return loss
