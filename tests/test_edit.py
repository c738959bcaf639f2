"""surgery.edit: function-preserving edits run both models and compare; the input model is
bitwise unchanged after every edit; reports and errors are exact."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery import edit
from surgery.errors import OptionError, SelectorError, SurgeryError
from tests.conftest import leftovers, sha256

rng = np.random.default_rng(0)



def values(model):
    with surgery.open_weights(model) as w:
        return {k: w.read(k) for k in w}


def same_outputs(a, b, x, atol=1e-5):
    np.testing.assert_allclose(np.asarray(b(x)), np.asarray(a(x)), atol=atol)


def resnet_block(k):
    L = k.layers
    inp = k.Input((8, 8, 4))
    x = L.Conv2D(4, 3, padding="same", name="conv_a")(inp)
    x = L.BatchNormalization(name="bn_a")(x)
    x = L.ReLU(name="relu_a")(x)
    x = L.Conv2D(4, 3, padding="same", name="conv_b")(x)
    x = L.BatchNormalization(name="bn_b")(x)
    x = L.Add(name="add")([x, inp])
    x = L.ReLU(name="out_relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return k.Model(inp, L.Dense(3, name="head")(x), name="resnet")


def randomize_bn(model):
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(size=b.shape),
                               rng.normal(size=m.shape), rng.uniform(0.5, 2, v.shape)])
    return model


@pytest.mark.parametrize("layer,units", [("conv_a", 7), ("head", None)])
def test_widen_through_bn_in_a_residual_block(keras, layer, units):
    model = randomize_bn(resnet_block(keras))
    before = values(model)
    x = rng.normal(size=(4, 8, 8, 4)).astype("float32")
    if units is None:
        with pytest.raises(SurgeryError, match="feeds no other layer"):
            edit.widen(model, layer, 5)
        return
    new, report = edit.widen(model, layer, units, seed=1)
    same_outputs(model, new, x)
    assert set(report.converted) == {"conv_a/kernel", "conv_a/bias", "bn_a/gamma", "bn_a/beta",
                                     "bn_a/moving_mean", "bn_a/moving_variance",
                                     "conv_b/kernel"}
    assert report.params_after > report.params_before
    for k, v in values(model).items():
        np.testing.assert_array_equal(v, before[k])


def test_widen_refuses_a_coupled_add(keras):
    model = resnet_block(keras)
    with pytest.raises(SurgeryError) as e:
        edit.widen(model, "conv_b", 6)
    assert str(e.value) == ("widen 'conv_b': Add 'add' on the path conv_b -> bn_b -> add mixes "
                            "or reshapes channels, which Net2Wider can't follow; widen another "
                            "layer")


def test_widen_dense_and_flatten(keras):
    L = keras.layers
    model = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(3, 3, name="c"),
                              L.ReLU(), L.Flatten(), L.Dense(5, activation="relu", name="d"),
                              L.Dense(2, name="o")])
    x = rng.normal(size=(3, 6, 6, 2)).astype("float32")
    same_outputs(model, edit.widen(model, "c", 5, seed=0).model, x)
    same_outputs(model, edit.widen(model, "d", 9, seed=0).model, x)
    with pytest.raises(OptionError, match="Net2Wider only grows"):
        edit.widen(model, "d", 3)


def test_deepen_identity_and_residual(keras):
    model = randomize_bn(resnet_block(keras))
    x = rng.normal(size=(4, 8, 8, 4)).astype("float32")
    for after, residual in (("relu_a", False), ("gap", False), ("bn_b", True)):
        new, report = edit.deepen(model, after, residual=residual)
        same_outputs(model, new, x, atol=1e-6)
        assert report.params_after > report.params_before


def test_insert_replace_delete_reports(keras, samples):
    model = surgery.load_model(samples["cnn"])
    before = values(model)
    x = rng.uniform(size=(2, 32, 32, 3)).astype("float32")
    ins = edit.insert_layer(model, "fc", {"class_name": "Dropout",
                                          "config": {"rate": 0.3, "name": "drop"}})
    same_outputs(model, ins.model, x)  # Dropout is the identity at inference
    assert "drop" in [l.name for l in ins.model.layers]
    rep = edit.replace_layer(model, "fc", keras.layers.Dense(32, name="fc"))
    assert ("fc/kernel", "replaced layer") in rep.report.initialized
    assert ("head/kernel", "shape (64, 8) -> (32, 8)") in rep.report.initialized
    dele = edit.delete_layer(model, "block3_relu")
    assert dele.report.changes == ("deleted block3_relu",)
    assert "block3_relu" not in [l.name for l in dele.model.layers]
    for k, v in values(model).items():
        np.testing.assert_array_equal(v, before[k])


def test_edit_errors(keras, samples):
    model = surgery.load_model(samples["cnn"])
    with pytest.raises(SelectorError) as e:
        edit.deepen(model, "fcc")
    assert str(e.value).startswith("no layer 'fcc' in shapes_cnn; closest: fc")
    with pytest.raises(SurgeryError, match="a BatchNormalization; widen works on Dense"):
        edit.widen(model, "block1_bn", 20)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)
    sub = Sub()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(SurgeryError, match="a subclassed model has no graph to edit"):
        surgery.replace_head(sub, 2)


def test_cli_edit_verify_and_bad_input(samples, tmp_path):
    out = tmp_path / "w.keras"
    r = CliRunner().invoke(main, ["edit", "widen", samples["cnn"], "-o", str(out), "--layer",
                                  "fc", "--units", "96", "--verify"])
    assert r.exit_code == 0 and "verify: same outputs" in r.output and out.exists()
    before = sha256(samples["cnn"])
    bad = tmp_path / "b.keras"
    r = CliRunner().invoke(main, ["edit", "deepen", samples["cnn"], "-o", str(bad), "--after",
                                  "nope"])
    assert r.exit_code == 2 and r.output.startswith("error: no layer 'nope' in shapes_cnn")
    assert not bad.exists() and leftovers(str(tmp_path)) == []
    assert sha256(samples["cnn"]) == before


# ------------------------------------------------------------------ delete_channels

def _pruning_net(k):
    L = k.layers
    inp = k.Input((8, 8, 3))
    stem = L.Conv2D(6, 3, padding="same", name="stem")(inp)
    a = L.Conv2D(5, 3, padding="same", name="conv_a")(stem)
    a = L.BatchNormalization(name="bn_a")(a)
    a = L.ReLU(name="relu_a")(a)
    b = L.Conv2D(6, 3, padding="same", name="conv_b")(a)
    b = L.BatchNormalization(name="bn_b")(b)
    x = L.ReLU(name="relu_x")(L.Add(name="add")([b, stem]))
    d = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    d = L.Conv2D(4, 1, name="pw")(d)
    c = L.Concatenate(name="cat")([d, x])
    f = L.Flatten(name="flat")(L.MaxPooling2D(2, name="pool")(c))
    return randomize_bn(k.Model(inp, L.Dense(3, name="head")(f), name="prune"))


def _zero_rows(k, model, rows: dict):
    """The original model with the given reader rows (input channels) zeroed: what a pruned
    model must compute."""
    ref = k.models.clone_model(model)
    for la, lb in zip(model.layers, ref.layers):
        lb.set_weights(la.get_weights())
    with surgery.open_weights(ref) as w:
        for key, (axis, idx) in rows.items():
            value = w.read(key)
            np.moveaxis(value, axis, 0)[idx] = 0
            w.variable(key).assign(value)
    return ref


def _flat_rows(channels, width=10, positions=16):
    return [p * width + c for p in range(positions) for c in channels]


@pytest.mark.parametrize("layer,channels,rows", [
    ("conv_a", [0, 3], {"conv_b/kernel": (-2, [0, 3])}),
    ("conv_b", [1, 4], {"conv_a/kernel": (-2, [1, 4]), "pw/kernel": (-2, [2, 3, 8, 9]),
                        "head/kernel": (0, _flat_rows([5, 8]))}),
    ("pw", [2], {"head/kernel": (0, _flat_rows([2]))}),
])
def test_delete_channels_equals_zeroed_contributions(keras, layer, channels, rows):
    model = _pruning_net(keras)
    before = values(model)
    x = rng.normal(size=(3, 8, 8, 3)).astype("float32")
    new, report = edit.delete_channels(model, layer, channels)
    ref = _zero_rows(keras, model, rows)
    np.testing.assert_allclose(np.asarray(new(x)), np.asarray(ref(x)), atol=1e-4)
    assert report.params_after < report.params_before
    for key, v in values(model).items():
        np.testing.assert_array_equal(v, before[key])
    if layer == "conv_b":
        assert "stem: 6 -> 4 channels (coupled)" in report.changes


def test_delete_channels_layer_by_layer(keras):
    model = _pruning_net(keras)
    new, _ = edit.delete_channels(model, "conv_a", [1])
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    old_a = keras.Model(model.inputs, model.get_layer("relu_a").output)(x)
    new_a = keras.Model(new.inputs, new.get_layer("relu_a").output)(x)
    np.testing.assert_allclose(np.asarray(new_a), np.asarray(old_a)[..., [0, 2, 3, 4]],
                               atol=1e-5)


def test_delete_channels_dense_lstm_embedding(keras):
    L = keras.layers
    seq = keras.Sequential([keras.Input((6,), dtype="int32"), L.Embedding(10, 5, name="emb"),
                            L.Conv1D(4, 3, name="c1"), L.LSTM(3, name="enc"),
                            L.Dense(2, name="head")])
    x = rng.integers(0, 10, (2, 6))
    for layer, chans, rows in (("emb", [0], {"c1/kernel": (-2, [0])}),
                               ("c1", [1, 2], {"enc/kernel": (0, [1, 2])})):
        new, _ = edit.delete_channels(seq, layer, chans)
        ref = _zero_rows(keras, seq, rows)
        np.testing.assert_allclose(np.asarray(new(x)), np.asarray(ref(x)), atol=1e-5)


def test_lowest_channels_and_errors(keras):
    model = _pruning_net(keras)
    chans = edit.lowest_channels(model, "conv_a", k=2)
    kernel = model.get_layer("conv_a").kernel.numpy()
    norms = np.abs(kernel.reshape(-1, 5)).sum(0)
    assert chans == sorted(np.argsort(norms)[:2].tolist())
    assert len(edit.lowest_channels(model, "conv_a", ratio=0.4)) == 2
    with pytest.raises(OptionError) as e:
        edit.delete_channels(model, "conv_a", [7])
    assert str(e.value) == "channel 7 is out of range for 'conv_a' with 5 channels (0..4)"
    with pytest.raises(OptionError, match="would leave 'conv_a' with 0 of 5 channels"):
        edit.delete_channels(model, "conv_a", range(5))
    with pytest.raises(SurgeryError) as e:
        edit.delete_channels(model, "conv_b", [0], couple=False)
    assert str(e.value) == ("delete_channels: Add 'add' couples conv_b, stem; their channels "
                            "must go together (couple=True deletes the whole group)")
    L = keras.layers
    ln = keras.Sequential([keras.Input((4,)), L.Dense(5, name="d"),
                           L.LayerNormalization(name="ln"), L.Dense(2, name="o")])
    with pytest.raises(SurgeryError) as e:
        edit.delete_channels(ln, "d", [0])
    assert str(e.value) == ("delete_channels: LayerNormalization 'ln' on the path d -> ln is "
                            "not supported (it mixes or reshapes channels)")


def _nested_model(k):
    L = k.layers
    bi = k.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="conv1")(bi)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.Conv2D(5, 3, padding="same", name="conv2")(x)
    backbone = k.Model(bi, x, name="backbone")
    inp = k.Input((8, 8, 3))
    y = L.Dense(4, name="pre")(L.GlobalAveragePooling2D(name="gap")(backbone(inp)))
    shared = L.Dense(4, name="shared")
    y = shared(L.Dense(4, name="mid")(shared(y)))
    return randomize_bn(k.Model(inp, L.Dense(2, name="head")(y), name="outer"))


def test_edits_inside_a_nested_backbone(keras):
    model = _nested_model(keras)
    before = values(model)
    x = rng.normal(size=(3, 8, 8, 3)).astype("float32")
    wide, report = edit.widen(model, "backbone/conv1", 9, seed=0)
    same_outputs(model, wide, x)
    assert "backbone/bn1/gamma" in report.converted
    deep, _ = edit.deepen(model, "backbone/relu1")
    same_outputs(model, deep, x, atol=1e-6)
    pruned, report = edit.delete_channels(model, "backbone/conv1", [0, 2])
    assert report.changes[0] == "backbone/conv1: 6 -> 4 channels"
    inner = model.get_layer("backbone")
    ref_inner = _zero_rows(keras, inner, {"conv2/kernel": (-2, [0, 2])})
    new_inner = pruned.get_layer("backbone")
    np.testing.assert_allclose(np.asarray(new_inner(x)), np.asarray(ref_inner(x)), atol=1e-5)
    with pytest.raises(SurgeryError) as e:
        edit.delete_channels(model, "backbone/conv2", [0])
    assert str(e.value) == ("delete_channels: the channels flow out of the nested model "
                            "'backbone' (through conv2); delete them where the outer model "
                            "reads them, at the top level")
    for k, v in values(model).items():
        np.testing.assert_array_equal(v, before[k])


def test_shared_layers_are_named_not_broken(keras):
    model = _nested_model(keras)
    assert list(surgery.open_weights(model)).count("shared/kernel") == 1
    with pytest.raises(SurgeryError) as e:
        edit.widen(model, "mid", 6)
    assert str(e.value) == ("widen 'mid': Dense 'shared' on the path mid -> shared is shared "
                            "(called more than once); widening would give its calls different "
                            "input widths")
    with pytest.raises(SurgeryError, match="'shared' on the path pre -> shared is shared"):
        edit.delete_channels(model, "pre", [0])
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    same_outputs(model, edit.deepen(model, "pre").model, x, atol=1e-6)


def test_delete_channels_into_separable_transpose_timedistributed_bidirectional(keras):
    L = keras.layers
    x_img = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(inp)
    s = L.SeparableConv2D(3, 3, padding="same", depth_multiplier=2, name="sep")(a)
    t = L.Conv2DTranspose(2, 3, strides=2, name="up")(a)
    out = L.Concatenate()([L.GlobalAveragePooling2D()(s), L.GlobalAveragePooling2D()(t)])
    model = keras.Model(inp, out)
    new, report = edit.delete_channels(model, "a", [1, 3])
    assert {"sep: input channels sliced", "up: input channels sliced"} <= set(report.changes)
    ref = _zero_rows(keras, model, {"sep/depthwise_kernel": (-2, [1, 3]),
                                    "up/kernel": (-1, [1, 3])})
    np.testing.assert_allclose(np.asarray(new(x_img)), np.asarray(ref(x_img)), atol=1e-5)

    seq_in = keras.Input((5, 4))
    d = L.Dense(6, name="d")(seq_in)
    td = L.TimeDistributed(L.Dense(3), name="td")(d)
    bi = L.Bidirectional(L.LSTM(2), name="bi")(d)
    seq = keras.Model(seq_in, L.Concatenate()([L.Flatten()(td), bi]))
    x_seq = rng.normal(size=(2, 5, 4)).astype("float32")
    new, _ = edit.delete_channels(seq, "d", [0, 5])
    ref = _zero_rows(keras, seq, {"td/kernel": (-2, [0, 5]), "bi/forward/kernel": (0, [0, 5]),
                                  "bi/backward/kernel": (0, [0, 5])})
    np.testing.assert_allclose(np.asarray(new(x_seq)), np.asarray(ref(x_seq)), atol=1e-5)
