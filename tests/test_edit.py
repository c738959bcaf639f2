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


@pytest.fixture(scope="module")
def keras():
    import keras
    return keras


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
