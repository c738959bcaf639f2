"""surgery.layertypes: the one registry of layer types. The modules that treat layer types
differently keep no tables of Keras class names of their own (checked on their source), and a
newly registered entry is followed by the edits (checked against plain Keras and against the
original model's outputs)."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest

from surgery import edit, layertypes
from surgery.errors import SurgeryError
from surgery.layertypes import REGISTRY, LayerType

ROOT = pathlib.Path(__file__).resolve().parents[1] / "surgery"
CONSUMERS = ["edit/channels.py", "edit/channel_walk.py", "edit/channel_fill.py",
             "edit/channel_graph.py", "edit/growth.py", "edit/inflation.py",
             "edit/convolutional.py",
             "io/h5layout.py", "model/lora.py", "model/parameters.py", "io/describe.py",
             "model/reinit.py", "io/h5names.py", "io/h5keras3.py", "io/h5legacy.py"]
rng = np.random.default_rng(0)


def _class_names() -> set[str]:
    import keras

    return set(REGISTRY) | {n for n in dir(keras.layers) if n[:1].isupper()}


def _tables(source: str, names: set[str]) -> list[str]:
    """Module-level names bound to a tuple/list/set/dict (literal, comprehension or sum of
    them) holding a Keras class name, or the fixed part of one (``f"{kind}{d}D"`` built from
    ``"MaxPooling"``)."""
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if not isinstance(value, (ast.Tuple, ast.List, ast.Set, ast.Dict, ast.ListComp,
                                  ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.BinOp,
                                  ast.Call)):
            continue
        strings = [c.value for c in ast.walk(value)
                   if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        if any(s in names or (len(s) > 3 and s[:1].isupper() and s.isalnum()
                              and any(n.startswith(s) for n in names)) for s in strings):
            found.append(", ".join(ast.unparse(t) for t in targets))
    return found


def test_the_check_finds_a_table_of_class_names():
    names = _class_names()
    source = ('_PASS = ("ReLU", "Dropout")\n_SPATIAL = tuple(f"{k}{d}D" for d in (1, 2) '
              'for k in ("MaxPooling", "Cropping"))\n_KERNEL = {"Embedding": "embeddings"}\n'
              '_MIXING = ("softmax", "log_softmax")\n_FOLLOWS = ("elementwise", "spatial")\n')
    assert _tables(source, names) == ["_PASS", "_SPATIAL", "_KERNEL"]


@pytest.mark.parametrize("module", CONSUMERS)
def test_consumers_keep_no_table_of_layer_classes(module):
    assert _tables((ROOT / module).read_text(), _class_names()) == []


def _scale_class(keras):
    class Scale(keras.layers.Layer):
        """Halves its input, value by value: a custom pass-through."""

        def call(self, x):
            return x * 0.5

    return Scale


def _model(keras, scale):
    L = keras.layers
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(6, 3, padding="same", name="conv")(inp)
    x = scale(name="scale")(x)
    x = L.Flatten(name="flat")(x)
    model = keras.Model(inp, L.Dense(4, name="head")(x))
    for v in model.weights:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    return model


def test_a_registered_pass_through_is_followed(keras, monkeypatch):
    scale = _scale_class(keras)
    model = _model(keras, scale)
    with pytest.raises(SurgeryError, match="Scale 'scale' on the path conv -> scale is not "
                       "supported"):
        edit.delete_channels(model, "conv", [1, 4])
    with pytest.raises(SurgeryError, match="Scale 'scale' on the path conv -> scale mixes"):
        edit.widen(model, "conv", 9, seed=0)

    monkeypatch.setitem(REGISTRY, scale.__name__, LayerType(passes="elementwise"))
    x = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    pruned, _ = edit.delete_channels(model, "conv", [1, 4])
    # Reference: the same network built by hand in Keras with channels 1 and 4 left out.
    keep = [0, 2, 3, 5]
    kernel, bias = (np.asarray(v) for v in model.get_layer("conv").weights)
    head_k, head_b = (np.asarray(v) for v in model.get_layer("head").weights)
    inp = keras.Input((6, 6, 3))
    y = keras.layers.Conv2D(4, 3, padding="same")(inp)
    y = keras.layers.Flatten()(y * 0.5)
    out = keras.layers.Dense(4)(y)
    ref = keras.Model(inp, out)
    ref.set_weights([kernel[..., keep], bias[keep],
                     head_k.reshape(36, 6, 4)[:, keep].reshape(-1, 4), head_b])
    np.testing.assert_allclose(np.asarray(pruned(x)), np.asarray(ref(x)), atol=1e-5)

    wider, _ = edit.widen(model, "conv", 9, seed=0)
    assert wider.get_layer("conv").filters == 9
    np.testing.assert_allclose(np.asarray(wider(x)), np.asarray(model(x)), atol=1e-4)


def _prelu_model(keras, pool):
    L = keras.layers
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(5, 3, padding="same", name="conv")(inp)
    x = L.PReLU(name="prelu")(x)
    x = pool(x)
    x = L.Flatten(name="flat")(x)
    model = keras.Model(inp, L.Dense(3, name="head")(x))
    for v in model.weights:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    return model


@pytest.mark.parametrize("pool", ["UpSampling2D", "ZeroPadding2D", "Cropping2D",
                                  "MaxPooling2D"])
def test_widen_follows_prelu_and_every_spatial_layer(keras, pool):
    """Net2Wider through a PReLU (its alpha widened with the copies, not redrawn) and the
    spatial layers delete_channels already followed: the original model's outputs."""
    model = _prelu_model(keras, getattr(keras.layers, pool)(name="pool"))
    x = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    wider, report = edit.widen(model, "conv", 8, seed=1)
    np.testing.assert_allclose(np.asarray(wider(x)), np.asarray(model(x)), atol=1e-4)
    assert "prelu/alpha" in report.converted


def test_delete_channels_slices_prelu_alpha(keras):
    model = _prelu_model(keras, keras.layers.Identity(name="pool"))
    x = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    pruned, _ = edit.delete_channels(model, "conv", [2])
    keep = [0, 1, 3, 4]
    kernel, bias = (np.asarray(v) for v in model.get_layer("conv").weights)
    alpha = np.asarray(model.get_layer("prelu").weights[0])
    head_k, head_b = (np.asarray(v) for v in model.get_layer("head").weights)
    ref = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, padding="same"),
                            keras.layers.PReLU(), keras.layers.Flatten(),
                            keras.layers.Dense(3)])
    ref.set_weights([kernel[..., keep], bias[keep], alpha[..., keep],
                     head_k.reshape(36, 5, 3)[:, keep].reshape(-1, 3), head_b])
    np.testing.assert_allclose(np.asarray(pruned(x)), np.asarray(ref(x)), atol=1e-5)


def test_register_refuses_an_unknown_pass_kind(monkeypatch):
    monkeypatch.setattr(layertypes, "REGISTRY", dict(REGISTRY))
    with pytest.raises(ValueError, match="unknown pass-through kind 'sideways'"):
        layertypes.register("Mine", LayerType(passes="sideways"))
    assert layertypes.register("Mine", LayerType(passes="spatial")) is None
    assert layertypes.layer_type("Mine").passes == "spatial"


def test_roles_every_consumer_reads():
    """The lists the consumers used to keep, as the registry now gives them."""
    c = layertypes.classes
    assert c(widen=True) == ("Dense", "Conv1D", "Conv2D", "Conv3D")
    assert c(lora=True) == ("Dense", "EinsumDense", "Embedding", "ReversibleEmbedding",
                            "Conv1D", "Conv2D", "Conv3D")
    assert sorted(c(merge="elementwise")) == ["Add", "Average", "Maximum", "Minimum",
                                              "Multiply", "Subtract"]
    assert REGISTRY["Embedding"].width == "output_dim" and REGISTRY["Embedding"].lora == \
        "embeddings"
    assert REGISTRY["GRU"].gates == ("z", "r", "h")
    assert c(wrapper=True) == ("Bidirectional", "TimeDistributed")
    assert REGISTRY["MaxPooling2D"].inflate == "MaxPooling3D"
    assert layertypes.variable_role("moving_variance").fresh == "ones"
    assert layertypes.rnn_cell("LSTM") == "LSTMCell" and layertypes.rnn_cell("Dense") is None
    assert layertypes.variable_role("kernel").setups == ("kernel", "depthwise")
