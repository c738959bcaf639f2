"""TF Hub modules in Keras 3 (`hub_layer`), Keras 2 -> 3 (`convert`), `export` to Hub format:
each checked against `hub.KerasLayer` / tf_keras / the model itself."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.sample_models import tasks
from surgery.errors import InputError
from tests.conftest import sha256



def values(model):
    with surgery.open_weights(model) as w:
        return {k: w.read(k) for k in w}


def test_hub_layer_matches_hub_keraslayer(keras, samples):
    import tensorflow_hub as hub
    import tf_keras
    x, _ = tasks.make_blobs(32, seed=1)
    inp = keras.Input((16,))
    model = keras.Model(inp, surgery.hub_layer(samples["hub_module"])(inp))
    ref = tf_keras.Sequential([tf_keras.Input((16,)), hub.KerasLayer(samples["hub_module"])])
    np.testing.assert_allclose(model(x), ref.predict(x, verbose=0), atol=1e-5)
    assert list(surgery.open_weights(model)) == ["hub/l1/kernel", "hub/l1/bias",
                                                 "hub/l2/kernel", "hub/l2/bias"]


def test_partial_fine_tuning_of_a_hub_module(keras, samples):
    inp = keras.Input((16,))
    x = surgery.hub_layer(samples["hub_module"], trainable=True)(inp)
    model = keras.Model(inp, keras.layers.Dense(8, activation="softmax", name="head")(x))
    report = surgery.freeze(model, "hub/l1/*")
    assert report.variables == ("hub/l1/kernel", "hub/l1/bias")
    before = values(model)
    xb, yb = tasks.make_blobs(64, seed=3)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(xb, yb, epochs=2, verbose=0)
    after = values(model)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {"hub/l2/kernel", "hub/l2/bias", "head/kernel", "head/bias"}


def test_hub_layer_errors(keras, samples, tmp_path):
    with pytest.raises(InputError) as e:
        surgery.hub_layer(str(tmp_path))
    assert str(e.value) == f"{tmp_path}: not a SavedModel or TF Hub module (no saved_model.pb)"
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    m.export(str(tmp_path / "exp"), verbose=False)
    with pytest.raises(InputError) as e:
        surgery.hub_layer(str(tmp_path / "exp"))
    assert str(e.value) == (f"{tmp_path / 'exp'}: the module has no __call__; pass signature= "
                            "one of serve, serving_default")
    with pytest.raises(InputError, match="no signature 'predict'; it has serve, serving_default"):
        surgery.hub_layer(str(tmp_path / "exp"), signature="predict")
    layer = surgery.hub_layer(str(tmp_path / "exp"), signature="serve")
    inp = keras.Input((4,))
    out = keras.Model(inp, layer(inp))(np.ones((1, 4), "float32"))
    np.testing.assert_allclose(out, m(np.ones((1, 4), "float32")), atol=1e-6)


def test_hub_weights_into_a_native_twin_readme_example(keras, samples):
    twin = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu",
                             name="l1"), keras.layers.Dense(16, activation="relu", name="l2")])
    assert surgery.transplant(samples["hub_module"], twin, strict=True).ok
    inp = keras.Input((16,))
    hub_model = keras.Model(inp, surgery.hub_layer(samples["hub_module"])(inp))
    x, _ = tasks.make_blobs(16, seed=4)
    np.testing.assert_allclose(twin(x), hub_model(x), atol=1e-6)


def test_convert_keras2_to_keras3(samples, tmp_path):
    out = tmp_path / "k3.keras"
    r = CliRunner().invoke(main, ["convert", samples["keras2_mlp"], "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "8 variables bitwise the same" in r.output and "verify: same outputs" in r.output
    assert surgery.diff(samples["keras2_mlp"], str(out)).identical
    assert type(surgery.load_model(str(out))).__module__.startswith("keras")


@pytest.mark.parametrize("fmt", ["hub", "savedmodel"])
def test_export_loads_and_matches(samples, tmp_path, fmt):
    out = tmp_path / f"exported_{fmt}"
    r = CliRunner().invoke(main, ["export", samples["lstm"], "-o", str(out), "--format", fmt])
    assert r.exit_code == 0, r.output
    model = surgery.load_model(samples["lstm"])
    x = tasks.make_motifs(8, seed=2)[0]
    if fmt == "hub":
        import tensorflow_hub as hub
        import tf_keras
        ref = tf_keras.Sequential([tf_keras.Input((tasks.SEQ_LEN,), dtype="int32"),
                                   hub.KerasLayer(str(out))])
        np.testing.assert_allclose(ref.predict(x, verbose=0), model(x), atol=1e-5)
    else:
        import keras
        layer = keras.layers.TFSMLayer(str(out), call_endpoint="serve")
        np.testing.assert_allclose(layer(x), model(x), atol=1e-5)
    r = CliRunner().invoke(main, ["export", samples["lstm"], "-o", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output
    assert not [n for n in os.listdir(tmp_path) if ".surgery-tmp-" in n]


def test_state_dict_keys_not_covered_are_listed(samples, tmp_path):
    from surgery.transfer.rules import RulesError
    before = sha256(samples["lstm"])
    model = surgery.load_model(samples["lstm"])
    with pytest.raises(RulesError) as e:
        surgery.export_state_dict(model, str(tmp_path / "x.safetensors"),
                                  {"rename": [{"from": "^embed/embeddings$", "to": "e"}]})
    assert str(e.value) == ("the export rules don't cover encoder/kernel, "
                            "encoder/recurrent_kernel, encoder/bias, head/kernel, head/bias; "
                            "add a rename, an export or a skip for each")
    assert not (tmp_path / "x.safetensors").exists() and os.listdir(tmp_path) == []
    assert sha256(samples["lstm"]) == before


def test_signature_with_several_outputs_needs_output_key(keras, tmp_path):
    import tensorflow as tf
    root = tf.train.Checkpoint()
    root.w = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def two(x):
        return {"double": x * root.w, "half": x / root.w}

    tf.saved_model.save(root, str(tmp_path / "m"), signatures={"two": two})
    with pytest.raises(InputError) as e:
        surgery.hub_layer(str(tmp_path / "m"), signature="two")
    assert str(e.value) == (f"{tmp_path / 'm'}: signature 'two' returns double, half; pass "
                            "output_key= one of them")
    layer = surgery.hub_layer(str(tmp_path / "m"), signature="two", output_key="half")
    inp = keras.Input((3,))
    out = keras.Model(inp, layer(inp))(np.ones((1, 3), "float32"))
    np.testing.assert_allclose(out, 0.5)


def _safetensors(path, header: bytes, data: bytes = b"") -> str:
    import struct
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)
    return str(path)


@pytest.mark.parametrize("header,data,message", [
    (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
     b'"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}', b"\0" * 12,
     "tensor 'b' overlaps the tensor before it"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', b"\0" * 8,
     "4 bytes of gap before tensor 'a'"),
    (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 8,
     "tensor 'a' runs past the end of the file"),
    (b'{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}', b"\0" * 8,
     "tensor 'a' spans 8 bytes but float32 (3,) needs 12"),
    (b'{"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4,
     "tensor 'a' has unknown dtype 'Q9'"),
    (b'not json', b"", "safetensors header: malformed JSON"),
])
def test_safetensors_header_invalid(tmp_path, header, data, message):
    from surgery.errors import FormatError
    path = _safetensors(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(FormatError) as e:
        surgery.open_weights(path)
    assert message in str(e.value) and str(e.value).startswith(f"{path}: ")
