"""freeze/unfreeze, reinitialize, heads, LoRA, per-layer learning rates: each proven by a real
`fit`, by running both models, or bitwise, on Keras 3 and (where it applies) tf_keras."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.errors import OptionError, SelectorError, SurgeryError
from tests.conftest import leftovers, sha256

rng = np.random.default_rng(0)



@pytest.fixture(scope="module")
def tf_keras():
    import tf_keras
    return tf_keras


def conv_bn_model(k):
    L = k.layers
    inp = k.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(6, activation="tanh", name="fc")(x)
    return k.Model(inp, L.Dense(3, activation="softmax", name="head")(x), name="cbn")


def values(model):
    with surgery.open_weights(model) as w:
        return {key: w.read(key) for key in w}


def fit(model, k, steps=3, lr=0.05, optimizer=None):
    r = np.random.default_rng(42)
    x = r.normal(0.5, 1.5, (32, 8, 8, 3)).astype("float32")
    y = r.integers(0, 3, 32)
    model.compile(optimizer=optimizer or k.optimizers.SGD(lr), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=1, steps_per_epoch=steps, verbose=0)


@pytest.mark.parametrize("framework", ["keras", "tf_keras"])
@pytest.mark.parametrize("bn", ["inference", "train"])
def test_frozen_bitwise_after_fit_and_bn_rule(framework, bn, keras, tf_keras):
    k = keras if framework == "keras" else tf_keras
    model = conv_bn_model(k)
    report = surgery.freeze(model, except_=["head"], bn=bn)
    assert "head" not in report.changed and "c1" in report.changed
    before = values(model)
    fit(model, k)
    after = values(model)
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    bn_vars = {"bn1/gamma", "bn1/beta", "bn1/moving_mean", "bn1/moving_variance"}
    if bn == "inference":
        assert changed == {"head/kernel", "head/bias"}
        assert report.bn_inference == ("bn1",)
    else:
        assert changed == {"head/kernel", "head/bias"} | bn_vars
        assert report.bn_training == ("bn1",)


def test_freeze_report_counts_and_save_load(keras, tmp_path):
    model = conv_bn_model(keras)
    report = surgery.freeze(model, "c1", "fc")
    total = model.count_params()
    assert report.after[0] == sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert report.after[0] + report.after[1] == total
    out = surgery.save_model(model, tmp_path / "f.keras")
    again = surgery.load_model(out)
    assert [l.trainable for l in again.layers] == [l.trainable for l in model.layers]
    assert json.loads(json.dumps(report.to_dict()))["params_after"]["frozen"] == report.after[1]
    un = surgery.unfreeze(again, "c1")
    assert un.changed == ["c1"] and again.get_layer("c1").trainable


def test_partial_layer_selection(keras, tf_keras):
    model = conv_bn_model(keras)
    report = surgery.freeze(model, "*/bias")
    assert "fc/bias" in report.variables and model.get_layer("fc").trainable
    assert not model.get_layer("fc").bias.trainable
    with pytest.raises(SurgeryError) as e:
        surgery.freeze(conv_bn_model(keras), "*/bias", allow_partial=False)
    assert str(e.value).startswith("c1/bias: the selection reaches only some variables of "
                                   "layer 'c1'; Keras saves trainable per layer")
    with pytest.raises(SurgeryError, match="tf_keras can't change one variable's trainable"):
        surgery.freeze(conv_bn_model(tf_keras), "*/bias")


def test_freeze_errors(keras):
    model = conv_bn_model(keras)
    with pytest.raises(SelectorError) as e:
        surgery.freeze(model, "haed")
    assert str(e.value).startswith("selector 'haed' matches nothing in cbn; closest paths: head")
    with pytest.raises(SelectorError) as e:
        surgery.freeze(model, "head", except_=["head"])
    assert str(e.value) == ("--except head removes everything the selection chose in cbn; "
                            "nothing would change")


# ------------------------------------------------------------------ reinitialize

@pytest.mark.parametrize("framework", ["keras", "tf_keras"])
def test_reinit_only_selection_and_reproducible(framework, keras, tf_keras):
    k = keras if framework == "keras" else tf_keras
    a, b = conv_bn_model(k), conv_bn_model(k)
    for la, lb in zip(a.layers, b.layers):
        lb.set_weights(la.get_weights())
    before = values(a)
    ra = surgery.reinitialize(a, "fc", seed=3)
    surgery.reinitialize(b, "fc", seed=3)
    va, vb = values(a), values(b)
    for p in before:
        if p.startswith("fc/"):
            np.testing.assert_array_equal(va[p], vb[p])
        else:
            np.testing.assert_array_equal(va[p], before[p])
    assert not np.array_equal(va["fc/kernel"], before["fc/kernel"])
    assert dict(ra.variables) == {"fc/kernel": "GlorotUniform", "fc/bias": "Zeros"}


def test_reinit_named_initializer_and_lstm_forget_bias(keras):
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4, name="enc")])
    surgery.reinitialize(model, "enc/bias", seed=0)
    np.testing.assert_array_equal(model.get_layer("enc").cell.bias.numpy(),
                                  np.r_[np.zeros(4), np.ones(4), np.zeros(8)])
    surgery.reinitialize(model, "enc/kernel", initializer="ones")
    np.testing.assert_array_equal(model.get_layer("enc").cell.kernel.numpy(), np.ones((3, 16)))
    with pytest.raises(OptionError) as e:
        surgery.reinitialize(model, "enc", initializer="glorious")
    assert str(e.value).startswith("unknown initializer 'glorious'; known: glorot_uniform")


# ------------------------------------------------------------------ heads

@pytest.mark.parametrize("framework", ["keras", "tf_keras"])
def test_replace_head_keeps_weights_and_kept_logits(framework, keras, tf_keras):
    k = keras if framework == "keras" else tf_keras
    L = k.layers
    inp = k.Input((5,))
    h = L.Dense(8, activation="relu", name="fc")(inp)
    logits = L.Dense(10, name="head")(h)
    model = k.Model(inp, L.Softmax(name="probs")(logits), name="ten")
    before = values(model)
    new, report = surgery.replace_head(model, 4, keep_classes=[0, 3, 7])
    assert new.output_shape == (None, 4)
    # the report against the two models' own layers
    old_head, new_head = model.get_layer("head"), new.get_layer("head")
    assert isinstance(report, surgery.HeadReport)
    assert (report.layer, report.old_classes, report.new_classes, report.kept) == (
        "head", old_head.units, new_head.units, (0, 3, 7)) == ("head", 10, 4, (0, 3, 7))
    assert report.activation == new_head.get_config()["activation"] == "linear"
    assert str(report) == ("head 'head': 10 -> 4 classes (linear); classes [0, 3, 7] carried to "
                           "0..2; every other weight copied bitwise")
    assert json.loads(json.dumps(report.to_dict())) == {
        "layer": "head", "old_classes": 10, "new_classes": 4, "kept": [0, 3, 7],
        "activation": "linear"}
    assert not [a for a in vars(new) if a.startswith("_surgery")]
    for p, v in values(new).items():
        if not p.startswith("head/"):
            np.testing.assert_array_equal(v, before[p])
    np.testing.assert_array_equal(values(model)["head/kernel"], before["head/kernel"])
    x = rng.normal(size=(6, 5)).astype("float32")
    old_logits = k.Model(model.inputs, model.get_layer("head").output)(x)
    new_logits = k.Model(new.inputs, new.get_layer("head").output)(x)
    # The kept classes' head rows are bitwise the old ones, so their logits are the same
    # (up to BLAS summation order on a differently shaped matmul: 1 ulp).
    np.testing.assert_array_equal(values(new)["head/kernel"][:, :3],
                                  before["head/kernel"][:, [0, 3, 7]])
    np.testing.assert_array_equal(values(new)["head/bias"][:3], before["head/bias"][[0, 3, 7]])
    np.testing.assert_allclose(np.asarray(new_logits)[:, :3],
                               np.asarray(old_logits)[:, [0, 3, 7]], atol=1e-6, rtol=0)


def test_replace_head_in_nested_model_and_sample(keras, samples):
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="feat"),
                              keras.layers.Dense(5, name="cls")], name="net")
    inp = keras.Input((4,))
    model = keras.Model(inp, inner(inp))
    result = surgery.replace_head(model, 2)
    assert isinstance(result, surgery.EditResult)
    assert result.model.output_shape == (None, 2) and result.report.layer == "net/cls"
    assert result.model.layers[-1].get_layer("cls").units == 2
    assert (result.report.old_classes, result.report.kept) == (5, ())
    cnn = surgery.load_model(samples["cnn"])
    assert surgery.replace_head(cnn, 3).model.output_shape == (None, 3)


def test_head_errors(keras):
    convs = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, name="c")])
    with pytest.raises(SelectorError) as e:
        surgery.replace_head(convs, 3)
    assert str(e.value) == (f"{convs.name}: no Dense head found; candidates: c; name one with "
                            "head=... (--layer), or add one with add_head")
    model = conv_bn_model(keras)
    with pytest.raises(OptionError) as e:
        surgery.replace_head(model, 4, keep_classes=[0, 9])
    assert str(e.value) == "keep class 9 is out of range for head 'head' with 3 classes (0..2)"
    with pytest.raises(OptionError, match="num_classes must be a positive integer, got 0"):
        surgery.replace_head(model, 0)
    with pytest.raises(SelectorError, match="layer 'c1' is a Conv2D, not a Dense head"):
        surgery.replace_head(model, 2, head="c1")


def test_add_head(keras):
    backbone = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c")],
                                name="bb")
    model, report = surgery.add_head(backbone, 5)
    assert model.output_shape == (None, 5)
    np.testing.assert_array_equal(model.get_layer("c").kernel.numpy(),
                                  backbone.get_layer("c").kernel.numpy())
    assert model.get_layer("c") is not backbone.get_layer("c")
    assert isinstance(report, surgery.AddHeadReport)
    assert (report.layer, report.classes, report.activation, report.pooling,
            report.pooling_layer) == ("head", 5, "softmax", "avg", "head_pool")
    assert str(report) == ("added 'head_pool' (avg) + head 'head': 5 classes (softmax); every "
                           "backbone weight copied bitwise")
    # reference: the same head built by hand in plain Keras on the original backbone
    head = model.get_layer(report.layer)
    dense = keras.layers.Dense(5, activation="softmax")
    ref = keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D(), dense])
    dense.set_weights(head.get_weights())
    x = rng.normal(size=(4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(ref(x)), atol=1e-6, rtol=0)
    assert type(model.get_layer(report.pooling_layer)).__name__ == "GlobalAveragePooling2D"
    flat, report = surgery.add_head(backbone, 3, pooling="flatten", activation="linear")
    assert (report.pooling, report.pooling_layer) == ("flatten", "head_flatten")
    assert flat.get_layer("head").kernel.shape == (6 * 6 * 4, 3)
    vectors = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="f")], name="vec")
    _, report = surgery.add_head(vectors, 2)  # already vectors: nothing pooled
    assert (report.pooling, report.pooling_layer) == (None, "")
    assert report.to_dict() == {"layer": "head", "classes": 2, "activation": "softmax",
                                "pooling": None, "pooling_layer": None}


# ------------------------------------------------------------------ LoRA

def test_lora_trains_adapters_only_and_merge_matches(keras):
    L = keras.layers
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="fc"),
                              L.Dense(3, name="head")], name="small")
    report = surgery.enable_lora(model, "fc", rank=2)
    assert report.layers == ("fc",) and report.trainable_after < report.trainable_before
    paths = list(surgery.open_weights(model))
    assert "fc/lora_kernel_a" in paths and "fc/lora_kernel_b" in paths
    surgery.freeze(model, "head")
    before = values(model)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.normal(size=(32, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    after = values(model)
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed == {"fc/lora_kernel_a", "fc/lora_kernel_b"}
    merged = surgery.merge_lora(model)
    assert not any("lora" in p for p in surgery.open_weights(merged))
    np.testing.assert_allclose(merged(x), model(x), atol=1e-5)
    assert "fc/lora_kernel_a" in values(model)  # input untouched


def test_lora_errors(keras, tf_keras):
    model = conv_bn_model(keras)
    with pytest.raises(SurgeryError) as e:
        surgery.enable_lora(model, "bn1", rank=2)
    assert str(e.value) == ("layer 'bn1' is a BatchNormalization, which has no LoRA; LoRA works "
                            "on Dense, EinsumDense, Embedding, ReversibleEmbedding, Conv1D, "
                            "Conv2D, Conv3D")
    with pytest.raises(SurgeryError, match="tf_keras models have no LoRA"):
        surgery.enable_lora(conv_bn_model(tf_keras), rank=2)


# ------------------------------------------------------------------ learning rates

def test_per_layer_learning_rates_step_sizes(keras):
    L = keras.layers
    def build():
        m = keras.Sequential([keras.Input((4,)), L.Dense(4, name="a"), L.Dense(1, name="b")])
        return m
    m1, m2 = build(), build()
    for l1, l2 in zip(m1.layers, m2.layers):
        l2.set_weights(l1.get_weights())
    x, y = rng.normal(size=(16, 4)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")
    lr = surgery.learning_rates(m1, {"a": 0.1}, 0.01, optimizer="sgd")
    assert [(m, len(p)) for m, _, p in lr.groups] == [(1.0, 2), (0.1, 2)]
    m1.compile(optimizer=lr.optimizer, loss="mse")
    m2.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    before = values(m1)
    m1.train_on_batch(x, y)
    m2.train_on_batch(x, y)
    a1, a2 = values(m1), values(m2)
    for p in before:
        d1, d2 = a1[p] - before[p], a2[p] - before[p]
        ratio = 0.1 if p.startswith("a/") else 1.0
        np.testing.assert_allclose(d1, d2 * ratio, rtol=1e-3, atol=2e-7)  # float32 deltas


def test_layer_decay_groups(keras):
    model = conv_bn_model(keras)
    lr = surgery.learning_rates(model, base_lr=1.0, decay=0.5)
    factors = {p: m for m, _, paths in lr.groups for p in paths}
    assert factors["head/kernel"] == 1.0 and factors["fc/kernel"] == 0.5
    assert factors["c1/kernel"] == 0.125
    with pytest.raises(SurgeryError, match="need Keras 3"):
        import tf_keras
        surgery.learning_rates(conv_bn_model(tf_keras), {"c1": 0.1})


# ------------------------------------------------------------------ CLI

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_freeze_head_reinit(samples, tmp_path):
    out = tmp_path / "f.keras"
    r = run("freeze", samples["cnn"], "-o", out, "--except", "head")
    assert r.exit_code == 0 and "wrote" in r.output
    inv = surgery.inspect(str(out))
    assert {v.path for v in inv.variables if v.trainable} == {"head/kernel", "head/bias"}
    r = run("head", samples["cnn"], "-o", tmp_path / "h.keras", "--classes", 4,
            "--keep-classes", "0,3,7", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["kept"] == [0, 3, 7]
    r = run("reinit", samples["cnn"], "-o", tmp_path / "r.keras", "--select", "head",
            "--seed", 1)
    assert r.exit_code == 0
    d = surgery.diff(samples["cnn"], str(tmp_path / "r.keras"))
    assert {v.path for v in d.of("changed")} == {"head/kernel", "head/bias"}
    with surgery.open_weights(str(tmp_path / "r.keras")) as w:
        np.testing.assert_array_equal(w["head/bias"], np.zeros(8))  # its Zeros initializer


def test_cli_bad_inputs_write_nothing(samples, tmp_path):
    before = sha256(samples["cnn"])
    out = tmp_path / "o.keras"
    cases = [
        (["freeze", samples["cnn"], "-o", out, "--select", "*/bias"],
         "error: fc/bias: the selection reaches only some variables of layer 'fc'; "),
        (["head", samples["cnn"], "-o", out, "--classes", 4, "--keep-classes", "0,8"],
         "error: keep class 8 is out of range for head 'head' with 8 classes (0..7)\n"),
        (["head", samples["cnn"], "-o", out, "--classes", 0],
         "error: num_classes must be a positive integer, got 0\n"),
        (["reinit", samples["cnn"], "-o", out, "--select", "head", "--initializer", "nope"],
         "error: unknown initializer 'nope'; known: "),
        (["freeze", samples["cnn"], "-o", out, "--select", "nope"],
         "error: selector 'nope' matches nothing in shapes_cnn; closest paths: "),
    ]
    for args, start in cases:
        r = run(*args)
        assert r.exit_code == 2, r.output
        assert r.output.count("\n") == 1 and r.output.startswith(start), r.output
    r = run("freeze", samples["cnn"], "-o", out, "--select", "fc/bias")
    assert r.exit_code == 2 and r.output.startswith("error: fc/bias: the selection reaches only")
    assert not out.exists() and leftovers(str(tmp_path)) == []
    assert sha256(samples["cnn"]) == before
