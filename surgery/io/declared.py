"""Config against weights: the widths a model config declares must match what its file stores.

Keras builds every layer from its config before it reads a single weight, so a 15 KB config
with ``units=250000000`` allocates gigabytes before Keras notices that the stored kernel is
``(4, 3)``. `check_declared_widths` compares, before Keras sees the file, each weighted layer's
declared width (units, filters, vocabulary and embedding sizes) with the shape stored for it,
and refuses a disagreement with one line. Pure Python: no TensorFlow.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ..errors import FormatError

__all__ = ["check_declared_widths"]

# class -> (variable, axis of the stored shape, expected size from the config)
_Rule = tuple[str, int, Callable[[Mapping], Any]]


def _key(name: str, factor: int = 1) -> Callable[[Mapping], Any]:
    def get(config: Mapping) -> Any:
        value = config.get(name)
        return value * factor if isinstance(value, int) and not isinstance(value, bool) \
            else None
    return get


_CONV = [("kernel", -1, _key("filters"))]
_RULES: dict[str, list[_Rule]] = {
    "Dense": [("kernel", -1, _key("units"))],
    "Conv1D": _CONV, "Conv2D": _CONV, "Conv3D": _CONV,
    "Conv1DTranspose": [("kernel", -2, _key("filters"))],
    "Conv2DTranspose": [("kernel", -2, _key("filters"))],
    "Conv3DTranspose": [("kernel", -2, _key("filters"))],
    "SeparableConv1D": [("pointwise_kernel", -1, _key("filters"))],
    "SeparableConv2D": [("pointwise_kernel", -1, _key("filters"))],
    "Embedding": [("embeddings", 0, _key("input_dim")), ("embeddings", 1, _key("output_dim"))],
    "LSTM": [("kernel", -1, _key("units", 4)), ("recurrent_kernel", 0, _key("units"))],
    "GRU": [("kernel", -1, _key("units", 3)), ("recurrent_kernel", 0, _key("units"))],
    "SimpleRNN": [("kernel", -1, _key("units")), ("recurrent_kernel", 0, _key("units"))],
}


def check_declared_widths(source: Any, where: str) -> None:
    """Raises `FormatError` when a layer's config declares another width than its stored
    weights have (checked for Dense, convolutions, Embedding and the recurrent layers).

    Example:
    ```python
    with surgery.open_weights("model.keras") as src:
        check_declared_widths(src, "model.keras")
    ```
    """
    stored = {v.path: v.shape for v in source.variables()}
    for layer in source.layers():
        rules = _RULES.get(layer.class_name)
        if not rules or not isinstance(layer.config, Mapping):
            continue
        for name, axis, expected in rules:
            shape = stored.get(f"{layer.path}/{name}")
            want = expected(layer.config)
            if shape is None or want is None or not shape or abs(axis) > len(shape):
                continue
            if shape[axis] != want:
                key = {"Dense": "units", "Embedding": "input_dim" if axis == 0 else
                       "output_dim"}.get(layer.class_name,
                                         "filters" if "Conv" in layer.class_name else "units")
                raise FormatError(
                    f"{where}: layer {layer.path!r} ({layer.class_name}) declares "
                    f"{key}={layer.config.get(key)!r} but the file stores {name} "
                    f"{tuple(shape)}; the config and the weights disagree (a damaged or "
                    "edited file), so it is refused before anything is built")
