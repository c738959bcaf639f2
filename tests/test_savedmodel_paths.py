"""Issue #16 items 11-12 and the BatchNorm epsilon of plain renames.

One path per SavedModel variable in `surgery inspect DIR` and inside a model built with
`hub_layer(DIR)` (checked against tf_keras's own layer names, weight names and values, and the
model's optimizer and metrics); a module whose `__call__` returns a dict (checked against the
module's own outputs); PyTorch BatchNorm statistics copied by plain renames into a Keras layer
whose epsilon is not PyTorch's (checked against the `batchnorm_from_torch` adapter and
PyTorch's BatchNorm equation).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.errors import CheckFailed, InputError
from surgery.sample_models import tasks
from surgery.transfer.rules import RulesError


def _keras2_cnn(tf_keras, seed):
    """A tf_keras CNN with auto-named layers (conv2d_N, ...), as a user would write it."""
    L = tf_keras.layers
    tf_keras.utils.set_random_seed(seed)
    return tf_keras.Sequential([L.InputLayer((32, 32, 3)), L.Conv2D(4, 3, strides=2),
                                L.BatchNormalization(), L.ReLU(), L.Conv2D(6, 3, strides=2),
                                L.GlobalAveragePooling2D(), L.Dense(8)])


def _own_name(weight) -> str:
    return weight.name.split(":")[0].rsplit("/", 1)[-1]


@pytest.fixture(scope="module")
def keras2(tmp_path_factory):
    """A tf_keras CNN trained two steps (so it holds Adam slots and metric totals) saved by
    tf_keras's ``model.save`` and by ``tf.saved_model.save``, and a clone of it (other
    weights, same layer names)."""
    import tensorflow as tf
    import tf_keras
    out = tmp_path_factory.mktemp("keras2_savedmodels")
    model = _keras2_cnn(tf_keras, 3)
    x, y = tasks.make_shapes(32, seed=1)
    model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.save(str(out / "saved"))
    tf.saved_model.save(model, str(out / "tf_saved"))
    other = tf_keras.models.clone_model(model)
    rng = np.random.default_rng(7)
    other.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                       for w in model.get_weights()])
    return {"model": model, "other": other, "x": x, "saved": str(out / "saved"),
            "tf_saved": str(out / "tf_saved")}


def _expected(model) -> dict[str, np.ndarray]:
    """Path -> value from tf_keras itself: each layer's name, then each weight's own name."""
    return {f"{layer.name}/{_own_name(w)}": w.numpy() for layer in model.layers
            for w in layer.weights}


def _hub_model(keras, path, **kw):
    inp = keras.Input((32, 32, 3))
    return keras.Model(inp, surgery.hub_layer(path, **kw)(inp))


def _values(source) -> dict[str, np.ndarray]:
    with surgery.open_weights(source) as w:
        return {k: w.read(k) for k in w}


def _assert_same(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for k in expected:
        assert np.array_equal(got[k], expected[k]), k


def test_inspect_and_hub_layer_use_tf_keras_layer_names(keras, keras2):
    model = keras2["model"]
    expected = _expected(model)
    with surgery.open_weights(keras2["saved"]) as src:
        assert list(src) == list(expected)  # model order, as tf_keras lists them
    _assert_same(_values(keras2["saved"]), expected)
    hub = _hub_model(keras, keras2["saved"])
    _assert_same(_values(hub), {f"hub/{k}": v for k, v in expected.items()})
    np.testing.assert_allclose(hub(keras2["x"]), model(keras2["x"]), atol=1e-5)
    inv = surgery.inspect(keras2["saved"])
    assert [(l.path, l.class_name) for l in inv.layers] == \
        [(l.name, type(l).__name__) for l in model.layers]


def test_tf_saved_model_save_keeps_tf_keras_weight_names(keras, keras2):
    """No keras_metadata.pb: each variable keeps its tf_keras name (``conv2d/kernel``)."""
    assert not os.path.exists(os.path.join(keras2["tf_saved"], "keras_metadata.pb"))
    model = keras2["model"]
    expected = {w.name.split(":")[0]: w.numpy() for w in model.weights}
    _assert_same(_values(keras2["tf_saved"]), expected)
    _assert_same(_values(_hub_model(keras, keras2["tf_saved"])),
                 {f"hub/{k}": v for k, v in expected.items()})


def test_damaged_keras_metadata_falls_back_to_weight_names(keras2, tmp_path):
    copy = str(tmp_path / "damaged")
    shutil.copytree(keras2["saved"], copy)
    with open(f"{copy}/keras_metadata.pb", "wb") as f:
        f.write(b"\x0a\xff\xff\xff\x0f" + b"{not json")       # a field longer than the file
    expected = {w.name.split(":")[0]: w.numpy() for w in keras2["model"].weights}
    _assert_same(_values(copy), expected)


def test_optimizer_and_metric_variables_are_listed_apart(keras2):
    model = keras2["model"]
    inv = surgery.inspect(keras2["saved"])
    assert inv.total_params == model.count_params()
    assert inv.non_trainable_params == sum(int(np.prod(w.shape))
                                           for w in model.non_trainable_weights)
    slots = {v.name.split(":")[0] for v in model.optimizer.variables}
    optimizer = [s for s in inv.training_state if s.kind == "optimizer"]
    metric = [s for s in inv.training_state if s.kind == "metric"]
    assert slots <= {s.name for s in optimizer}
    assert {s.name for s in optimizer} - slots == {"learning_rate"}
    assert len(metric) == sum(len(m.variables) for m in model.metrics)
    values = sum(int(np.prod(v.shape)) for v in model.optimizer.variables) + 1
    text = str(inv)
    assert f"not parameters: {len(metric)} metric ({len(metric)} values), " \
           f"{len(optimizer)} optimizer ({values:,} values)" in text.splitlines()
    assert text.splitlines()[-1] == (f"total params: {model.count_params():,}  (trainable "
                                     f"{inv.trainable_params:,}, non-trainable "
                                     f"{inv.non_trainable_params:,})")
    data = inv.to_dict()
    assert data["totals"]["params"] == model.count_params()
    assert sorted(e["kind"] for e in data["training_state"]) == \
        ["metric"] * len(metric) + ["optimizer"] * len(optimizer)
    assert not {e["path"] for e in data["training_state"]} & {v["path"] for v in
                                                              data["variables"]}


def test_selector_copied_from_inspect_freezes_in_the_hub_model(keras, keras2):
    conv = keras2["model"].layers[3].name           # the second Conv2D, as inspect lists it
    inspected = [v.path for v in surgery.inspect(keras2["saved"]).variables]
    assert f"{conv}/kernel" in inspected
    hub = _hub_model(keras, keras2["saved"], trainable=True)
    report = surgery.freeze(hub, f"hub/{conv}/*")
    assert report.variables == (f"hub/{conv}/kernel", f"hub/{conv}/bias")
    before = _values(hub)
    hub.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    x, y = tasks.make_shapes(16, seed=2)
    hub.fit(x, y, epochs=1, verbose=0)
    after = _values(hub)
    same = {k for k in before if np.array_equal(before[k], after[k])}
    moving = {k for k in before if "moving_" in k}  # not trained by gradients (BN inference)
    assert same - moving == {f"hub/{conv}/kernel", f"hub/{conv}/bias"}


def test_selector_copied_from_inspect_skips_in_a_transplant_into_the_hub_model(keras, keras2):
    model, other = keras2["model"], keras2["other"]
    dense = model.layers[-1].name
    hub = _hub_model(keras, keras2["saved"])
    rules = {"rename": [{"from": "^", "to": "hub/"}], "skip": [f"hub/{dense}/*"]}
    report = surgery.transplant(other, hub, rules, strict=True)
    assert report.ok and [e.path for e in report.skipped] == [f"hub/{dense}/kernel",
                                                             f"hub/{dense}/bias"]
    import tf_keras
    reference = tf_keras.models.clone_model(other)
    reference.set_weights(other.get_weights())
    reference.layers[-1].set_weights(model.layers[-1].get_weights())
    np.testing.assert_allclose(hub(keras2["x"]), reference(keras2["x"]), atol=1e-5)


def _layered(tf_keras, recurrent: bool):
    """A tf_keras model with every naming case of DESIGN §4.1: a nested model, a wrapper, a
    renamed Keras 2 variable (depthwise_kernel), a custom layer owning a sublayer; with
    `recurrent`, an LSTM (its cell adds no name) and a Bidirectional GRU."""
    L = tf_keras.layers

    class Custom(L.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.inner = L.Dense(3, name="inner_fc")

        def build(self, shape):
            self.scale = self.add_weight(name="scale", shape=(3,))

        def call(self, x):
            return self.inner(x) * self.scale

    tf_keras.utils.set_random_seed(9)
    ti = tf_keras.Input((5, 6))
    trunk = tf_keras.Model(ti, L.Dense(4, name="feat")(ti), name="trunk")
    inp = tf_keras.Input((5, 6))
    x = trunk(inp)
    if recurrent:
        x = L.LSTM(4, return_sequences=True, name="enc")(x)
        x = L.Bidirectional(L.GRU(3, return_sequences=True), name="bi")(x)
    x = L.TimeDistributed(L.Dense(2), name="td")(x)
    x = L.DepthwiseConv2D(1, name="dw")(L.Reshape((5, 2, 1), name="reshape")(x))
    model = tf_keras.Model(inp, Custom(name="custom")(L.Flatten(name="flatten")(x)))
    rng = np.random.default_rng(2)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.weights])
    return model


def _layered_expected(model) -> dict[str, object]:
    """The canonical paths DESIGN §4.1 gives each variable, written out by hand, with the
    tf_keras variable each one is."""
    out = {"trunk/feat/kernel": model.get_layer("trunk").get_layer("feat").kernel,
           "trunk/feat/bias": model.get_layer("trunk").get_layer("feat").bias}
    if "enc" in [l.name for l in model.layers]:
        enc, bi = model.get_layer("enc").cell, model.get_layer("bi")
        for name in ("kernel", "recurrent_kernel", "bias"):
            out[f"enc/{name}"] = getattr(enc, name)
        for side, layer in (("forward", bi.forward_layer), ("backward", bi.backward_layer)):
            for name in ("kernel", "recurrent_kernel", "bias"):
                out[f"bi/{side}/{name}"] = getattr(layer.cell, name)
    custom = model.get_layer("custom")
    out.update({"td/kernel": model.get_layer("td").layer.kernel,
                "td/bias": model.get_layer("td").layer.bias,
                "dw/kernel": model.get_layer("dw").depthwise_kernel,
                "dw/bias": model.get_layer("dw").bias, "custom/scale": custom.scale,
                "custom/inner_fc/kernel": custom.inner.kernel,
                "custom/inner_fc/bias": custom.inner.bias})
    return out


def _check_layered(keras, tmp_path, recurrent: bool) -> None:
    import tf_keras
    model = _layered(tf_keras, recurrent)
    model.save(str(tmp_path / "layered"))
    expected = _layered_expected(model)
    with surgery.open_weights(str(tmp_path / "layered")) as src:
        assert list(src) == list(expected)
    values = {k: v.numpy() for k, v in expected.items()}
    _assert_same(_values(str(tmp_path / "layered")), values)
    inp = keras.Input((5, 6))
    layer = surgery.hub_layer(str(tmp_path / "layered"))
    hub = keras.Model(inp, layer(inp))
    _assert_same(_values(hub), {f"hub/{k}": v for k, v in values.items()})
    x = np.random.default_rng(4).normal(size=(3, 5, 6)).astype("float32")
    np.testing.assert_allclose(hub(x), model(x), atol=1e-5)
    inv = surgery.inspect(str(tmp_path / "layered"))
    named = [("trunk", "Functional"), ("trunk/feat", "Dense")] + \
        ([("enc", "LSTM"), ("bi", "Bidirectional")] if recurrent else []) + \
        [("td", "TimeDistributed"), ("reshape", "Reshape"), ("dw", "DepthwiseConv2D"),
         ("flatten", "Flatten"), ("custom", "Custom"), ("custom/inner_fc", "Dense")]
    assert [(l.path, l.class_name) for l in inv.layers] == named


def test_nested_model_wrapper_depthwise_and_custom_layer_paths(keras, tmp_path):
    _check_layered(keras, tmp_path, recurrent=False)


@pytest.mark.slow
def test_recurrent_layer_paths(keras, tmp_path):
    """Saving recurrent layers as a tf_keras SavedModel takes ~25 s here."""
    _check_layered(keras, tmp_path, recurrent=True)


def test_keras2_savedmodel_into_a_keras3_twin_without_rules(keras, keras2):
    model = keras2["model"]
    L = keras.layers
    names = [l.name for l in model.layers]
    twin = keras.Sequential([keras.Input((32, 32, 3)), L.Conv2D(4, 3, strides=2, name=names[0]),
                             L.BatchNormalization(name=names[1]), L.ReLU(name=names[2]),
                             L.Conv2D(6, 3, strides=2, name=names[3]),
                             L.GlobalAveragePooling2D(name=names[4]), L.Dense(8, name=names[5])])
    report = surgery.transplant(keras2["saved"], twin, strict=True)
    assert report.ok and {e.matched_by for e in report.copied} == {"exact"}
    np.testing.assert_allclose(twin(keras2["x"]), model(keras2["x"]), atol=1e-5)


def test_plain_module_and_keras3_export_keep_object_graph_paths(keras, samples, tmp_path):
    assert list(surgery.open_weights(samples["hub_module"])) == [
        "l1/kernel", "l1/bias", "l2/kernel", "l2/bias"]
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc"),
                          keras.layers.BatchNormalization(name="bn")])
    m.export(str(tmp_path / "exp"), verbose=False)
    inspected = _values(str(tmp_path / "exp"))
    assert list(inspected) == [f"variables/{i}" for i in range(6)]
    for i, v in enumerate(m.variables):  # the export's `variables` list is model.variables
        assert np.array_equal(inspected[f"variables/{i}"], v.numpy())
    inp = keras.Input((4,))
    hub = keras.Model(inp, surgery.hub_layer(str(tmp_path / "exp"), signature="serve")(inp))
    _assert_same(_values(hub), {f"hub/{k}": v for k, v in inspected.items()})


@pytest.fixture(scope="module")
def dict_module(tmp_path_factory):
    import tensorflow as tf
    rng = np.random.default_rng(5)
    root = tf.train.Checkpoint()
    root.body = tf.Variable(rng.normal(size=(16, 8)).astype("float32"))
    root.head = tf.Variable(rng.normal(size=(8, 4)).astype("float32"))
    root.variables = [root.body, root.head]
    root.trainable_variables = list(root.variables)

    @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32)])
    def call(x):
        embedding = tf.nn.relu(tf.matmul(x, root.body))
        return {"logits": tf.matmul(embedding, root.head), "embedding": embedding}

    root.__call__ = call
    path = str(tmp_path_factory.mktemp("dict_module") / "m")
    tf.saved_model.save(root, path)
    return path


def test_dict_outputs_come_back_as_a_dict_from_one_set_of_variables(keras, dict_module):
    import tensorflow as tf
    module = tf.saved_model.load(dict_module)
    x, _ = tasks.make_blobs(8, seed=3)
    inp = keras.Input((16,))
    layer = surgery.hub_layer(dict_module, trainable=True)
    out = layer(inp)
    assert sorted(out) == ["embedding", "logits"]
    model = keras.Model(inp, {"logits": out["logits"], "embedding": out["embedding"]})
    assert len(model.weights) == 2 and list(_values(model)) == ["hub/body", "hub/head"]
    got, want = model(x), module(x)
    for key in ("logits", "embedding"):
        np.testing.assert_array_equal(np.asarray(got[key]), want[key].numpy())
    only = surgery.hub_layer(dict_module, output_key="embedding")
    np.testing.assert_array_equal(keras.Model(inp, only(inp))(x), want["embedding"].numpy())


def test_output_key_is_checked_when_the_layer_is_built(dict_module, samples):
    with pytest.raises(InputError) as e:
        surgery.hub_layer(dict_module, output_key="probs")
    assert str(e.value) == (f"{dict_module}: no output 'probs'; the module's __call__ returns "
                            "embedding, logits; pass output_key= one of them, or none for the "
                            "whole dict")
    with pytest.raises(InputError) as e:
        surgery.hub_layer(samples["hub_module"], output_key="logits")
    assert str(e.value) == (f"{samples['hub_module']}: no output 'logits'; the module's "
                            "__call__ returns one tensor, not a dict; drop output_key")


# BatchNorm statistics from PyTorch copied by plain renames --------------------------------

def _torch_bn(rng) -> dict[str, np.ndarray]:
    return {"bn1.weight": rng.normal(1, .2, 3).astype("float32"),
            "bn1.bias": rng.normal(0, .2, 3).astype("float32"),
            "bn1.running_mean": rng.uniform(.2, .6, 3).astype("float32"),
            "bn1.running_var": rng.uniform(.01, .05, 3).astype("float32")}


RENAMES = {"rename": [{"from": r"^bn1\.weight$", "to": "bn/gamma"},
                      {"from": r"^bn1\.bias$", "to": "bn/beta"},
                      {"from": r"^bn1\.running_mean$", "to": "bn/moving_mean"},
                      {"from": r"^bn1\.running_var$", "to": "bn/moving_variance"}]}
ADAPTER = {"adapter": [{"target": "bn", "name": "batchnorm_from_torch", "sources": {
    r: f"bn1.{r}" for r in ("weight", "bias", "running_mean", "running_var")}}]}
WARNING = ("bn: bn1.running_var is copied from a PyTorch BatchNorm (eps 1e-05 by default) but "
           "the Keras layer's epsilon is 0.001, so the outputs would differ; build the Keras "
           "layer with epsilon=1e-05, or convert the layer with the batchnorm_from_torch "
           "adapter and the PyTorch module's eps (eps_mismatch = \"ok\" accepts the difference)")


@pytest.fixture()
def torch_bn(tmp_path):
    state = _torch_bn(np.random.default_rng(11))
    path = str(tmp_path / "bn.npz")
    np.savez(path, **state)
    return path, state


def _bn_model(keras, epsilon):
    return keras.Sequential([keras.Input((32, 32, 3)),
                             keras.layers.BatchNormalization(epsilon=epsilon, name="bn")])


def _torch_equation(state, x):
    """PyTorch's BatchNorm2d in eval mode (eps 1e-5), channels last."""
    return (x - state["bn1.running_mean"]) / np.sqrt(state["bn1.running_var"] + 1e-5) * \
        state["bn1.weight"] + state["bn1.bias"]


def test_renamed_torch_statistics_warn_where_the_adapter_refuses(keras, torch_bn):
    path, state = torch_bn
    x, _ = tasks.make_shapes(4, seed=5)
    with pytest.raises(RulesError, match="^bn: the PyTorch BatchNorm's eps is 1e-05"):
        surgery.transplant(path, _bn_model(keras, 1e-3), ADAPTER)     # the adapter's behaviour
    model = _bn_model(keras, 1e-3)
    report = surgery.transplant(path, model, RENAMES)
    assert report.warnings == (WARNING,) and not report.ok
    assert f"warning: {WARNING}" in str(report).splitlines()
    assert np.abs(model(x) - _torch_equation(state, x)).max() > 1e-3   # the warning is real
    strict = _bn_model(keras, 1e-3)
    with pytest.raises(CheckFailed) as e:
        surgery.transplant(path, strict, RENAMES, strict=True)
    assert str(e.value) == (f"strict transplant into {strict.name} failed with 1 problem: "
                            f"{WARNING}; nothing was changed or written")
    model = _bn_model(keras, 1e-5)           # PyTorch's epsilon: both paths agree, no warning
    report = surgery.transplant(path, model, RENAMES, strict=True)
    assert report.ok and report.warnings == ()
    np.testing.assert_allclose(model(x), _torch_equation(state, x), atol=1e-5)
    adapted = _bn_model(keras, 1e-5)
    assert surgery.transplant(path, adapted, ADAPTER, strict=True).ok
    np.testing.assert_array_equal(model(x), adapted(x))


def test_renamed_torch_statistics_fail_strict_in_the_cli(keras, torch_bn, tmp_path):
    path, _ = torch_bn
    target = str(tmp_path / "bn.keras")
    _bn_model(keras, 1e-3).save(target)
    rules = tmp_path / "rules.toml"
    rules.write_text("".join(f'[[rename]]\nfrom = \'{r["from"]}\'\nto = "{r["to"]}"\n'
                             for r in RENAMES["rename"]))
    out = tmp_path / "out.keras"
    r = CliRunner().invoke(main, ["transplant", path, target, "-o", str(out), "--rules",
                                  str(rules), "--strict"])
    assert r.exit_code == 1 and WARNING in r.output and not out.exists()
    r = CliRunner().invoke(main, ["transplant", path, target, "-o", str(out), "--rules",
                                  str(rules)])
    assert r.exit_code == 0 and f"warning: {WARNING}" in r.output.splitlines()


def test_keras_sources_with_moving_statistics_do_not_warn(keras):
    src = _bn_model(keras, 1e-3)
    report = surgery.transplant(src, _bn_model(keras, 1e-3), strict=True)
    assert report.ok and report.warnings == ()

