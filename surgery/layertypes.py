"""What `surgery` knows about each Keras layer type, behind one small interface.

A Keras file stores a layer's variables by position (``layers/dense/vars/0``); their names come
from the layer's class and config. Each `LayerType` says which variables a layer of its class
owns, in the order Keras creates them, which of them are trainable, and which config keys set
their initializer, regularizer and constraint. Adding a layer type means adding one entry to
`REGISTRY`. Pure Python: no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

__all__ = ["VariableSpec", "LayerType", "REGISTRY", "layer_type", "variable_specs", "RNN_CELLS"]


@dataclass(frozen=True)
class VariableSpec:
    """One variable a layer owns.

    Attributes:
        name: the variable's own name (``kernel``).
        trainable: False for statistics such as BatchNorm's moving mean.
        setup: the config-key prefix of its initializer/regularizer/constraint (``kernel`` reads
            ``kernel_initializer``, ``kernel_regularizer``, ``kernel_constraint``), or None.
    """

    name: str
    trainable: bool = True
    setup: str | None = None


Condition = Callable[[Mapping], bool]


def _always(_config: Mapping) -> bool:
    return True


def _flag(key: str, default: bool = True) -> Condition:
    return lambda config: bool(config.get(key, default))


@dataclass(frozen=True)
class LayerType:
    """The variables of one layer class, each with the condition under which it exists."""

    variables: tuple[tuple[VariableSpec, Condition], ...]

    def specs(self, config: Mapping) -> list[VariableSpec]:
        """Returns the variables a layer with this `config` owns, in Keras's order."""
        return [spec for spec, exists in self.variables if exists(config)]


def _kernel_bias(kernel: str = "kernel", setup: str = "kernel") -> LayerType:
    return LayerType(
        (
            (VariableSpec(kernel, setup=setup), _always),
            (VariableSpec("bias", setup="bias"), _flag("use_bias")),
        )
    )


_RECURRENT = LayerType(
    (
        (VariableSpec("kernel", setup="kernel"), _always),
        (VariableSpec("recurrent_kernel", setup="recurrent"), _always),
        (VariableSpec("bias", setup="bias"), _flag("use_bias")),
    )
)

_NORM = LayerType(
    (
        (VariableSpec("gamma", setup="gamma"), _flag("scale")),
        (VariableSpec("beta", setup="beta"), _flag("center")),
    )
)

REGISTRY: dict[str, LayerType] = {
    **{name: _kernel_bias() for name in (
        "Dense", "Conv1D", "Conv2D", "Conv3D",
        "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    )},
    "EinsumDense": LayerType(
        (
            (VariableSpec("kernel", setup="kernel"), _always),
            (VariableSpec("bias", setup="bias"), lambda c: bool(c.get("bias_axes"))),
        )
    ),
    "DepthwiseConv1D": _kernel_bias("kernel", "depthwise"),
    "DepthwiseConv2D": _kernel_bias("kernel", "depthwise"),
    **{name: LayerType(
        (
            (VariableSpec("depthwise_kernel", setup="depthwise"), _always),
            (VariableSpec("pointwise_kernel", setup="pointwise"), _always),
            (VariableSpec("bias", setup="bias"), _flag("use_bias")),
        )
    ) for name in ("SeparableConv1D", "SeparableConv2D")},
    "BatchNormalization": LayerType(
        (
            (VariableSpec("gamma", setup="gamma"), _flag("scale")),
            (VariableSpec("beta", setup="beta"), _flag("center")),
            (VariableSpec("moving_mean", False, "moving_mean"), _always),
            (VariableSpec("moving_variance", False, "moving_variance"), _always),
        )
    ),
    "LayerNormalization": _NORM,
    "GroupNormalization": _NORM,
    "Embedding": LayerType(((VariableSpec("embeddings", setup="embeddings"), _always),)),
    "PReLU": LayerType(((VariableSpec("alpha", setup="alpha"), _always),)),
    "Normalization": LayerType(
        tuple((VariableSpec(n, False), _always) for n in ("mean", "variance", "count"))
    ),
    **{name: _RECURRENT for name in (
        "LSTM", "GRU", "SimpleRNN", "LSTMCell", "GRUCell", "SimpleRNNCell",
        "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D",
    )},
}

# Recurrent layers whose variables live in a cell that adds no name to the path.
RNN_CELLS = {
    "LSTM": "LSTMCell",
    "GRU": "GRUCell",
    "SimpleRNN": "SimpleRNNCell",
    "ConvLSTM1D": "ConvLSTM1D",
    "ConvLSTM2D": "ConvLSTM2D",
    "ConvLSTM3D": "ConvLSTM3D",
}


def layer_type(class_name: str) -> LayerType | None:
    """Returns the registered `LayerType` of a Keras class name, or None if unknown."""
    return REGISTRY.get(class_name)


def variable_specs(class_name: str, config: Mapping, count: int) -> list[VariableSpec]:
    """Names the `count` variables a saved layer holds, falling back to positions.

    Args:
        class_name: the layer's Keras class name (``Dense``).
        config: the layer's config (the inner ``config`` dict of its serialization).
        count: how many variables the file holds for it.

    Returns:
        One `VariableSpec` per stored variable; an unknown class, or a count that disagrees
        with the registry, gives positional names ``var0``, ``var1``, ...
    """
    known = layer_type(class_name)
    if known is not None:
        specs = known.specs(config)
        if len(specs) == count:
            return specs
    return [VariableSpec(f"var{i}") for i in range(count)]
