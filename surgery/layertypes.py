"""What `surgery` knows about each Keras layer type, behind one small interface.

One table, `REGISTRY`, holds a `LayerType` per Keras class name, and every module that treats
layer types differently reads it: the file layout (`io.h5layout`: which variables a layer owns,
in Keras's order), parameter setup (`model.parameters`, `io.describe`: which config keys set a
variable's initializer, regularizer and constraint; recurrent gate layouts; wrappers),
`model.reinit` (variable roles), `model.lora` (LoRA-capable layers and the variable LoRA
adapts) and the edits (`edit.channels`, `edit.growth`, `edit.inflation`,
`edit.convolutional`: width attribute, channel axis, pass-through and merge kinds, readers,
3D counterparts). Adding a layer type means adding one entry (`register`). Pure Python: no
TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping

__all__ = ["SUBLAYER_ATTRIBUTES", "VariableSpec", "VariableRole", "LayerType", "REGISTRY", "VARIABLE_ROLES",
           "layer_type", "variable_specs", "variable_role", "rnn_cell", "register", "classes"]


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


# Pass-through kinds: how a layer that keeps channels apart treats them.
#   elementwise  value by value, no variables, any layout (activations, dropout, noise)
#   per_channel  value by value with a per-channel variable on the channel axis (PReLU's alpha)
#   spatial      works on the spatial axes of its data_format (pooling, padding, cropping,
#                upsampling); 1D layers without a data_format work channels_last
#   global       global pooling: the spatial axes go (unless keepdims)
#   normalize    per-channel statistics on its `axis` (BatchNormalization), sliced with them
#   depthwise    one filter group per channel (DepthwiseConv), sliced with them
PASS_KINDS = ("elementwise", "per_channel", "spatial", "global", "normalize", "depthwise")


@dataclass(frozen=True)
class LayerType:
    """Everything `surgery` knows about one layer class.

    Attributes:
        variables: the variables it owns, each with the condition (on the config) under which
            it exists, in Keras's order.
        width: the config key and attribute of its output width (``units``, ``filters``,
            ``output_dim``): `delete_channels` can start at it.
        axis: where it keeps (or reads) channels: ``last`` (always the last axis: Dense,
            recurrent layers, Embedding) or ``format`` (per its ``data_format``: axis 1 in
            channels_first, the last axis otherwise); None for layers with no channel axis.
        passes: a pass-through kind (`PASS_KINDS`): the layer keeps each channel apart and its
            output has the same channels as its input.
        merge: ``elementwise`` (inputs combined value by value: they must lose the same
            channels) or ``concatenate``.
        reads: it mixes the channels of its input through an input kernel, so deleting them
            slices that kernel (Dense, convolutions, recurrent layers, wrappers).
        widen: Net2Wider can widen it and split its incoming weights among copies.
        pointwise: acts on each position's last axis alone (Softmax): a 1x1 map gives what
            the vector gave; elementwise layers are pointwise too.
        lora: the variable Keras LoRA adapts (``kernel``, ``embeddings``); None: no LoRA.
        gates: gate names of a recurrent kernel, in Keras's order (LSTM ``i, f, c, o``).
        cell: the class of the cell holding a recurrent layer's variables (``LSTMCell``), whose
            group adds no name to the path.
        wrapper: it wraps one inner layer (``layer`` in its config) whose variables it holds.
        inflate: the class it becomes in a 2D -> 3D inflation (``same``: kept as it is).
    """

    variables: tuple[tuple[VariableSpec, Condition], ...] = ()
    width: str | None = None
    axis: str | None = None
    passes: str | None = None
    merge: str | None = None
    reads: bool = False
    widen: bool = False
    pointwise: bool = False
    lora: str | None = None
    gates: tuple[str, ...] | None = None
    cell: str | None = None
    wrapper: bool = False
    inflate: str | None = None

    def specs(self, config: Mapping) -> list[VariableSpec]:
        """Returns the variables a layer with this `config` owns, in Keras's order."""
        return [spec for spec, exists in self.variables if exists(config)]


@dataclass(frozen=True)
class VariableRole:
    """What a variable of a given name is, whatever layer holds it.

    Attributes:
        setups: config-key prefixes its layer (or cell) may set its initializer with, in the
            order tried (a DepthwiseConv's ``kernel`` is set by ``depthwise_initializer``).
        fresh: the initializer a fresh layer gives it when it is not a weight (``zeros`` for
            biases, ``beta``, moving means; ``ones`` for ``gamma``, moving variances); None for
            weights (kernels, recurrent kernels, embeddings).
    """

    setups: tuple[str, ...]
    fresh: str | None = None


VARIABLE_ROLES: dict[str, VariableRole] = {
    "kernel": VariableRole(("kernel", "depthwise")),
    "bias": VariableRole(("bias",), "zeros"),
    "recurrent_kernel": VariableRole(("recurrent",)),
    "gamma": VariableRole(("gamma",), "ones"),
    "beta": VariableRole(("beta",), "zeros"),
    "moving_mean": VariableRole(("moving_mean",), "zeros"),
    "moving_variance": VariableRole(("moving_variance",), "ones"),
    "embeddings": VariableRole(("embeddings",)),
    "depthwise_kernel": VariableRole(("depthwise",)),
    "pointwise_kernel": VariableRole(("pointwise",)),
    "alpha": VariableRole(("alpha",)),
}


def _kernel_bias(kernel: str = "kernel", setup: str = "kernel", **roles) -> LayerType:
    return LayerType(
        (
            (VariableSpec(kernel, setup=setup), _always),
            (VariableSpec("bias", setup="bias"), _flag("use_bias")),
        ),
        **roles,
    )


_RECURRENT = (
    (VariableSpec("kernel", setup="kernel"), _always),
    (VariableSpec("recurrent_kernel", setup="recurrent"), _always),
    (VariableSpec("bias", setup="bias"), _flag("use_bias")),
)

_NORM = (
    (VariableSpec("gamma", setup="gamma"), _flag("scale")),
    (VariableSpec("beta", setup="beta"), _flag("center")),
)

_LSTM_GATES = ("i", "f", "c", "o")
_ELEMENTWISE = LayerType(passes="elementwise", pointwise=True)
_SPATIAL = LayerType(axis="format", passes="spatial")
_GLOBAL = LayerType(axis="format", passes="global")
_CONV = dict(width="filters", axis="format", reads=True)

REGISTRY: dict[str, LayerType] = {
    "Dense": _kernel_bias(width="units", axis="last", reads=True, widen=True, lora="kernel",
                          pointwise=True, inflate="same"),
    "EinsumDense": LayerType(
        (
            (VariableSpec("kernel", setup="kernel"), _always),
            (VariableSpec("bias", setup="bias"), lambda c: bool(c.get("bias_axes"))),
        ),
        lora="kernel",
    ),
    "Embedding": LayerType(((VariableSpec("embeddings", setup="embeddings"), _always),),
                           width="output_dim", axis="last", lora="embeddings"),
    # keras-hub's token table (Keras's ReversibleEmbedding), position table and RMS norms
    "ReversibleEmbedding": LayerType(
        (
            (VariableSpec("embeddings", setup="embeddings"), _always),
            (VariableSpec("reverse_embeddings", setup="reverse_embeddings"),
             lambda c: not c.get("tie_weights", True)),
        ),
        lora="embeddings",
    ),
    "PositionEmbedding": LayerType(((VariableSpec("embeddings"), _always),)),
    "RMSNormalization": LayerType(((VariableSpec("scale"), _always),)),
    "Conv1D": _kernel_bias(**_CONV, widen=True, lora="kernel"),
    "Conv2D": _kernel_bias(**_CONV, widen=True, lora="kernel", inflate="Conv3D"),
    "Conv3D": _kernel_bias(**_CONV, widen=True, lora="kernel"),
    **{f"Conv{d}DTranspose": _kernel_bias(**_CONV) for d in (1, 2, 3)},
    **{f"DepthwiseConv{d}D": _kernel_bias("kernel", "depthwise", axis="format",
                                          passes="depthwise") for d in (1, 2)},
    **{f"SeparableConv{d}D": LayerType(
        (
            (VariableSpec("depthwise_kernel", setup="depthwise"), _always),
            (VariableSpec("pointwise_kernel", setup="pointwise"), _always),
            (VariableSpec("bias", setup="bias"), _flag("use_bias")),
        ),
        **_CONV,
    ) for d in (1, 2)},
    "BatchNormalization": LayerType(
        (
            *_NORM,
            (VariableSpec("moving_mean", False, "moving_mean"), _always),
            (VariableSpec("moving_variance", False, "moving_variance"), _always),
        ),
        passes="normalize", inflate="same",
    ),
    "LayerNormalization": LayerType(_NORM, inflate="same"),
    "GroupNormalization": LayerType(_NORM),
    "PReLU": LayerType(((VariableSpec("alpha", setup="alpha"), _always),), axis="last",
                       passes="per_channel"),
    "Normalization": LayerType(
        tuple((VariableSpec(n, False), _always) for n in ("mean", "variance", "count"))
    ),
    "LSTM": LayerType(_RECURRENT, axis="last", reads=True, gates=_LSTM_GATES, cell="LSTMCell"),
    "GRU": LayerType(_RECURRENT, axis="last", reads=True, gates=("z", "r", "h"),
                     cell="GRUCell"),
    "SimpleRNN": LayerType(_RECURRENT, axis="last", reads=True, gates=("h",),
                           cell="SimpleRNNCell"),
    **{name: LayerType(_RECURRENT) for name in ("LSTMCell", "GRUCell", "SimpleRNNCell")},
    **{f"ConvLSTM{d}D": LayerType(_RECURRENT, gates=_LSTM_GATES, cell=f"ConvLSTM{d}D")
       for d in (1, 2, 3)},
    "Bidirectional": LayerType(axis="last", reads=True, wrapper=True),
    "TimeDistributed": LayerType(reads=True, wrapper=True),
    # Channel-keeping layers without variables.
    **{name: _ELEMENTWISE for name in (
        "ReLU", "Activation", "Dropout", "LeakyReLU", "ELU", "GaussianNoise",
        "GaussianDropout", "AlphaDropout", "Identity", "ActivityRegularization")},
    **{f"SpatialDropout{d}D": _ELEMENTWISE for d in (1, 2, 3)},
    **{f"{kind}{d}D": _SPATIAL for d in (1, 2, 3)
       for kind in ("MaxPooling", "AveragePooling", "UpSampling", "ZeroPadding", "Cropping")},
    **{f"Global{kind}Pooling{d}D": _GLOBAL for d in (1, 2, 3) for kind in ("Average", "Max")},
    "MaxPooling2D": LayerType(axis="format", passes="spatial", inflate="MaxPooling3D"),
    "AveragePooling2D": LayerType(axis="format", passes="spatial", inflate="AveragePooling3D"),
    "GlobalAveragePooling2D": LayerType(axis="format", passes="global",
                                        inflate="GlobalAveragePooling3D"),
    "GlobalMaxPooling2D": LayerType(axis="format", passes="global",
                                    inflate="GlobalMaxPooling3D"),
    "Softmax": LayerType(pointwise=True, inflate="same"),
    **{name: LayerType(merge="elementwise") for name in (
        "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")},
    "Concatenate": LayerType(merge="concatenate"),
    "InputLayer": LayerType(inflate="same"),
}
for _name in ("ReLU", "Activation", "Dropout", "LeakyReLU"):  # kept by 2D -> 3D inflation
    REGISTRY[_name] = replace(_ELEMENTWISE, inflate="same")

def register(class_name: str, entry: LayerType) -> LayerType | None:
    """Registers (or replaces) the `LayerType` of a Keras class name; returns the old entry.

    Example:
    ```python
    register("MyScale", LayerType(passes="elementwise"))   # edits now follow it
    ```
    """
    if entry.passes is not None and entry.passes not in PASS_KINDS:
        raise ValueError(f"unknown pass-through kind {entry.passes!r}; one of "
                         f"{', '.join(PASS_KINDS)}")
    old = REGISTRY.get(class_name)
    REGISTRY[class_name] = entry
    return old


def classes(**roles) -> tuple[str, ...]:
    """The registered class names whose entries have every given role value, in registry
    order (``classes(widen=True)``; a role given as True matches any truthy value)."""
    def fits(entry: LayerType) -> bool:
        return all(bool(getattr(entry, k)) if v is True else getattr(entry, k) == v
                   for k, v in roles.items())
    return tuple(n for n, e in REGISTRY.items() if fits(e))


def rnn_cell(class_name: str) -> str | None:
    """The cell class holding a recurrent layer's variables (its group adds no name to the
    path: ``LSTM`` -> ``LSTMCell``), or None for other layers."""
    known = layer_type(class_name)
    return known.cell if known is not None else None


def variable_role(name: str) -> VariableRole:
    """The `VariableRole` of a variable name; unknown names are weights set by ``<name>``."""
    return VARIABLE_ROLES.get(name) or VariableRole((name,))


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


_ATTENTION = (("query_dense", "EinsumDense"), ("key_dense", "EinsumDense"),
              ("value_dense", "EinsumDense"), ("_softmax", "Softmax"),
              ("_dropout_layer", "Dropout"), ("output_dense", "EinsumDense"))
_FEEDFORWARD = (("_feedforward_intermediate_dense", "Dense"),
                ("_feedforward_output_dense", "Dense"))
# The sublayers Keras's (3.15) and keras-hub's (0.32) layers hold by attribute: a weights file
# names them only by attribute (``_self_attention_layer``), sorted, with no class. Here in the
# order the live layer tracks them (the live model's order), with their classes.
SUBLAYER_ATTRIBUTES: dict[str, tuple[tuple[str, str], ...]] = {
    "MultiHeadAttention": _ATTENTION,
    "CachedMultiHeadAttention": _ATTENTION,
    "TransformerEncoder": (
        ("_self_attention_layer", "MultiHeadAttention"),
        ("_self_attention_layer_norm", "LayerNormalization"),
        ("_self_attention_dropout", "Dropout"),
        ("_feedforward_layer_norm", "LayerNormalization")) + _FEEDFORWARD + (
        ("_feedforward_dropout", "Dropout"),),
    "TransformerDecoder": (
        ("_self_attention_layer", "CachedMultiHeadAttention"),
        ("_self_attention_layer_norm", "LayerNormalization"),
        ("_self_attention_dropout", "Dropout"),
        ("_cross_attention_layer", "CachedMultiHeadAttention"),
        ("_cross_attention_layer_norm", "LayerNormalization"),
        ("_cross_attention_dropout", "Dropout")) + _FEEDFORWARD + (
        ("_feedforward_layer_norm", "LayerNormalization"),
        ("_feedforward_dropout", "Dropout")),
}
