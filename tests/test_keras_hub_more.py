"""keras-hub models, the leftovers of issue #19: fine-tuning on dict-input data (`.npz` with
``x.<input name>`` arrays), `set` and `edit` on subclassed models, mixed precision, the layer
order and classes of keras-hub `.keras` files, task files with a preprocessor, and a layer
unfrozen under a frozen ancestor.

Tiny random keras-hub 0.32 models are built from explicit configs (nothing is downloaded), with
dropout 0 where training is compared, so that plain Keras trains them identically. Every claim
is checked against plain Keras / keras-hub: ``compile`` + ``fit`` on the same dict data in the
same order (the stateless shuffle of ``(seed, epoch)`` finetune documents), keras-hub's own
``fit`` on raw strings through its preprocessor, numpy penalties, ``model.trainable_weights``,
the live model's own inventory, and a plain Keras load in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from surgery.cli import main
from tests.test_keras_hub import _resnet
from tests.conftest import ROOT

keras_hub = pytest.importorskip("keras_hub")

SEQ, N, WEIGHT_ATOL = 8, 16, 1e-5
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(45)]
TEXTS = [" ".join(f"w{(7 * i + 3 * j) % 45}" for j in range(1 + i % 5)) for i in range(N)]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ------------------------------------------------------------------ models and data

def _bert(keras, *, seed=1, preprocessor=False):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=32, dropout=0.0, name="bert_backbone")
    pre = None
    if preprocessor:
        pre = keras_hub.models.BertTextClassifierPreprocessor(
            keras_hub.models.BertTokenizer(vocabulary=VOCAB), sequence_length=SEQ)
    return keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=3, dropout=0.0,
                                               preprocessor=pre, name="bert_text_classifier")


def _gpt2(keras, seed=4):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=60, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=32, dropout=0.0, name="gpt2_backbone")
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None,
                                         name="gpt2_causal_lm")


def _two_inputs(keras, seed=2):
    """A plain Functional model with two named inputs, ``a`` and ``b``."""
    keras.utils.set_random_seed(seed)
    L = keras.layers
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    h = L.Dense(6, activation="relu", name="fc")(L.Concatenate(name="cat")([a, b]))
    return keras.Model([a, b], L.Dense(3, name="head")(h), name="two_inputs")


def _nested(keras, seed=6):
    keras.utils.set_random_seed(seed)
    L = keras.layers
    trunk = keras.Sequential([keras.Input((5,)), L.Dense(4, name="feat"),
                              L.BatchNormalization(name="bn")], name="trunk")
    x = keras.Input((5,))
    return keras.Model(x, L.Dense(2, name="fc")(trunk(x)), name="nested")


def _tokens(vocab: int, n: int = N, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(5, vocab, size=(n, SEQ + 1)).astype("int32")


def _bert_x(n: int = N) -> dict:
    t = _tokens(50, n)[:, :SEQ]
    return {"token_ids": t, "padding_mask": np.ones_like(t), "segment_ids": np.zeros_like(t)}


def _labels(n: int = N, classes: int = 3) -> np.ndarray:
    return (np.arange(n) * 7 % classes).astype("int64")


def _npz(path, x: dict, y: np.ndarray) -> str:
    np.savez(path, y=y, **{f"x.{k}": v for k, v in x.items()})
    return str(path)


@pytest.fixture(scope="session")
def files(tmp_path_factory, keras):
    """Each model saved once (``.keras``), kept live too (the reference for file listings),
    with its dict data as an `.npz`."""
    folder = tmp_path_factory.mktemp("hub_more")
    live = {"bert": _bert(keras), "bert_pre": _bert(keras, seed=2, preprocessor=True),
            "gpt2": _gpt2(keras), "resnet": _resnet(keras, 5), "two": _two_inputs(keras),
            "nested": _nested(keras)}
    out = {"live": live}
    for name, model in live.items():
        out[name] = str(folder / f"{name}.keras")
        model.save(out[name])
    frozen = keras.saving.load_model(out["bert"], compile=False)
    frozen.backbone.trainable = False
    out["bert_frozen"] = str(folder / "bert_frozen.keras")
    frozen.save(out["bert_frozen"])
    out["bert_npz"] = _npz(folder / "bert.npz", _bert_x(), _labels())
    t = _tokens(60)
    out["gpt2_npz"] = _npz(folder / "gpt2.npz",
                           {"token_ids": t[:, :-1], "padding_mask": np.ones_like(t[:, :-1])},
                           t[:, 1:])
    r = np.random.default_rng(1)
    out["two_x"] = {"a": r.normal(size=(20, 4)).astype("float32"),
                    "b": r.normal(size=(20, 3)).astype("float32")}
    out["two_y"] = _labels(20)
    out["two_npz"] = _npz(folder / "two.npz", out["two_x"], out["two_y"])
    out["folder"] = folder
    return out


def _orders(seed: int, epochs: int, n: int) -> list[np.ndarray]:
    """The batch order finetune documents: TF's stateless shuffle of (seed, epoch)."""
    import tensorflow as tf

    return [tf.random.experimental.stateless_shuffle(
        tf.range(n), seed=tf.constant([seed, e], tf.int64)).numpy() for e in range(epochs)]


def _take(x, index):
    return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]


def keras_train(keras, model, x, y, *, seed=0, batch_size=32, epochs=1, lr=1e-3,
                eager=False):
    """The reference: plain compile + fit, one epoch at a time in finetune's order."""
    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(lr), run_eagerly=eager,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for e, order in enumerate(_orders(seed, epochs, len(y))):
        model.fit(_take(x, order), y[order], batch_size=batch_size, epochs=e + 1,
                  initial_epoch=e, shuffle=False, verbose=0)
    return model


def _weights(model) -> dict[str, np.ndarray]:
    with surgery.open_weights(model) as w:
        return {p: np.array(w[p]) for p in w.keys()}


def assert_same_weights(got: dict, want: dict, atol: float = WEIGHT_ATOL) -> None:
    assert set(got) == set(want)
    for path in want:
        np.testing.assert_allclose(got[path], want[path], rtol=0, atol=atol, err_msg=path)


# ------------------------------------------------------------------ 1. dict data in finetune

def test_named_input_npz_trains_like_keras(files, keras, tmp_path):
    """A plain two-input model fine-tuned from ``x.a``/``x.b`` arrays: exactly what plain
    Keras fit trains on the same dict, in the same order."""
    out = tmp_path / "two.keras"
    r = run("finetune", files["two"], "--data", files["two_npz"], "-o", out, "--epochs", 1,
            "--batch-size", 8, "--seed", 3, "--lr", 0.01)
    assert r.exit_code == 0, r.output
    assert "x a (4,), b (3,)" in r.output
    ref = keras_train(keras, keras.saving.load_model(files["two"], compile=False),
                      files["two_x"], files["two_y"], seed=3, batch_size=8, lr=0.01,
                      eager=True)
    got = _weights(keras.saving.load_model(str(out), compile=False))
    assert_same_weights(got, _weights(ref))
    assert not np.array_equal(got["head/kernel"], _weights(files["live"]["two"])["head/kernel"])


def test_evaluate_on_named_inputs(files, keras):
    """`surgery.evaluate` on an `.npz` of named inputs: Keras's own evaluate of the dict."""
    model = keras.saving.load_model(files["two"], compile=False)
    result = surgery.evaluate(model, files["two_npz"])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    loss, accuracy = model.evaluate(files["two_x"], files["two_y"], verbose=0)
    np.testing.assert_allclose(result.loss, loss, rtol=1e-5)
    assert result.metrics["accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize("arrays, line", [
    ({"x.a": (20, 4), "x.c": (20, 3)},
     "missing x.b; unknown x.c; the model's inputs are a, b (one array x.<input name> each)"),
    ({"x": (20, 4)},
     "x is one array but the model takes named inputs (a, b); save one array per input: x.a, "
     "x.b"),
    ({"x": (20, 4), "x.a": (20, 4)},
     "has both x and x.a; give the inputs one way: one array x, or one array x.<input name> "
     "per named input"),
    ({"x.a": (20, 4), "x.b": (19, 3)},
     "x.a has 20 samples but x.b has 19; every input needs one entry per sample"),
    ({"x.a": (20, 4), "x.b": (20, 5)},
     "x.b samples have shape (5,) but the model takes (3,)"),
    ({"x.a": (20, 4), "x.b": (20, 3), "x_val.a": (4, 4), "y_val": (4,)},
     "missing x_val.b; the model's inputs are a, b (one array x_val.<input name> each)"),
])
def test_named_input_errors(files, tmp_path, arrays, line):
    """Missing, extra, mixed and ragged named arrays: one line naming the model's inputs."""
    data = tmp_path / "bad.npz"
    y = {"y": np.zeros(20, "int64")}
    np.savez(data, **y, **{k: np.zeros(shape, "int64" if k.startswith("y") else "float32")
                           for k, shape in arrays.items()})
    out = tmp_path / "never.keras"
    r = run("finetune", files["two"], "--data", data, "-o", out)
    assert r.exit_code == 2 and r.output == f"error: {data}: {line}\n", r.output
    assert not out.exists()


def test_causal_lm_labels(files, keras):
    """A causal LM's next-token labels (samples, steps) take the sparse crossentropy from its
    logits (its output is the token table's logits, no softmax); a token id beyond the
    vocabulary is refused before training."""
    from surgery.train.data import Data, check_against_model
    from surgery.train.finetune import infer_loss

    model = files["live"]["gpt2"]
    t = _tokens(60)
    assert infer_loss(model, t[:, 1:]) == ("sparse_categorical_crossentropy", ["accuracy"],
                                           True)
    x = {"token_ids": t[:, :-1], "padding_mask": np.ones_like(t[:, :-1])}
    bad = t[:, 1:].copy()
    bad[3, 2] = 60
    with pytest.raises(surgery.SurgeryError) as e:
        check_against_model(Data(x, bad, None, None, "arrays", "arrays"), model)
    assert str(e.value) == ("arrays: y labels run 5..60 but the model's head has 60 units "
                            "(classes 0..59); replace the head first (surgery head --classes N)")


@pytest.mark.slow
def test_bert_finetune_on_dict_data_equals_keras(files, keras, tmp_path):
    """The issue's command on a keras-hub BertTextClassifier (no preprocessor): finetune
    --train logits on x.token_ids / x.padding_mask / x.segment_ids gives what plain Keras
    trains with the backbone frozen (same dict data, same order); the backbone is bitwise.
    keras-hub 0.32 names the head `logits` (`classifier_dropout` holds no weights)."""
    out = tmp_path / "tuned.keras"
    r = run("finetune", files["bert"], "--data", files["bert_npz"], "--train", "classifier*",
            "-o", out, "--epochs", 1)
    assert r.exit_code == 2 and r.output == (
        "error: selector 'classifier*' matches nothing in bert_text_classifier; closest "
        "paths: logits/kernel\n"), r.output
    r = run("finetune", files["bert"], "--data", files["bert_npz"], "--train", "logits", "-o",
            out, "--epochs", 1, "--batch-size", 8, "--seed", 0)
    assert r.exit_code == 0, r.output
    assert "loss: sparse_categorical_crossentropy (from logits)" in r.output
    ref = keras.saving.load_model(files["bert"], compile=False)
    ref.backbone.trainable = False
    keras_train(keras, ref, _bert_x(), _labels(), seed=0, batch_size=8)
    tuned = keras.saving.load_model(str(out), compile=False)
    got, before = _weights(tuned), _weights(files["live"]["bert"])
    assert_same_weights(got, _weights(ref))
    changed = {p for p in got if not np.array_equal(got[p], before[p])}
    assert changed == {"logits/kernel", "logits/bias"}


@pytest.mark.slow
def test_gpt2_causal_lm_finetune_equals_keras(files, keras, tmp_path):
    """A GPT-2 causal LM fine-tuned on token data (labels: the next tokens): the loss is
    chosen (sparse crossentropy from logits) and every weight is what plain Keras trains."""
    out = tmp_path / "gpt2_tuned.keras"
    r = run("finetune", files["gpt2"], "--data", files["gpt2_npz"], "-o", out, "--epochs", 1,
            "--batch-size", 8, "--seed", 1)
    assert r.exit_code == 0, r.output
    assert "loss: sparse_categorical_crossentropy (from logits)" in r.output
    t = _tokens(60)
    x = {"token_ids": t[:, :-1], "padding_mask": np.ones_like(t[:, :-1])}
    ref = keras_train(keras, keras.saving.load_model(files["gpt2"], compile=False), x, t[:, 1:],
                      seed=1, batch_size=8)
    tuned = keras.saving.load_model(str(out), compile=False)
    assert type(tuned).__name__ == "GPT2CausalLM"
    assert_same_weights(_weights(tuned), _weights(ref))


@pytest.mark.slow
def test_mixed_precision_on_keras_hub_equals_keras(files, keras, tmp_path):
    """--mixed-precision on a keras-hub task: trained in mixed_bfloat16 as plain Keras trains
    the same task built with that policy (its backbone's dtype), written back float32."""
    out = tmp_path / "mixed.keras"
    r = run("finetune", files["bert"], "--data", files["bert_npz"], "--train", "logits", "-o",
            out, "--batch-size", 8, "--mixed-precision")
    assert r.exit_code == 0, r.output
    original = keras.saving.load_model(files["bert"], compile=False)
    config = keras.saving.serialize_keras_object(original)
    config.pop("compile_config", None)
    config["config"]["backbone"]["config"]["dtype"] = "mixed_bfloat16"
    ref = keras.saving.deserialize_keras_object(config)
    ref.set_weights(original.get_weights())
    assert ref.backbone.dtype_policy.name == "mixed_bfloat16"
    ref.backbone.trainable = False
    keras_train(keras, ref, _bert_x(), _labels(), batch_size=8)
    tuned = keras.saving.load_model(str(out), compile=False)
    assert tuned.backbone.dtype_policy.name == "float32"
    assert all(v.dtype == "float32" for v in tuned.weights)
    got, before = _weights(tuned), _weights(original)
    assert_same_weights(got, _weights(ref))
    assert not np.array_equal(got["logits/kernel"], before["logits/kernel"])


# ------------------------------------------------------------------ 2. set and edit

def test_set_on_keras_hub_is_for_the_session(files, keras):
    """keras-hub builds its blocks itself (a BertBackbone's config holds no layer): `set` on
    one of its Dense kernels works on the copy for the session, as Keras computes the
    penalty (numpy reference), the input model untouched; the CLI refuses it, since a
    saved file would reload without it."""
    model = surgery.load_model(files["bert"])
    path = "bert_backbone/transformer_layer_0/feedforward_intermediate_dense/kernel"
    new, report = surgery.set_regularizer(model, path, "logits/kernel", l2=0.01)
    assert report.changed == report.unsaved == (path, "logits/kernel")
    weights = _weights(model)
    want = 0.01 * (np.sum(weights[path] ** 2) + np.sum(weights["logits/kernel"] ** 2))
    np.testing.assert_allclose(float(sum(new.losses)), want, rtol=1e-5)
    assert list(model.losses) == []
    assert_same_weights(_weights(new), weights, atol=0)
    new, report = surgery.set_initializer(model, path, initializer="zeros")
    surgery.reinitialize(new, path)
    assert not np.any(_weights(new)[path]) and np.any(weights[path])
    new, report = surgery.set_constraint(model, "logits/kernel", constraint="non_neg")
    assert report.unsaved == ("logits/kernel",) and np.min(weights["logits/kernel"]) < 0
    _fit_changes(keras, new, _bert_x(4), _labels(4))  # Keras applies it after the step
    assert np.min(_weights(new)["logits/kernel"]) == 0.0


def test_cli_set_on_keras_hub_is_refused(files, tmp_path):
    out = tmp_path / "never.keras"
    r = run("set", files["bert"], "-o", out, "--select",
            "bert_backbone/transformer_layer_0/feedforward_intermediate_dense/kernel",
            "--l2", "0.01")
    assert r.exit_code == 2 and r.output == (
        "error: bert_backbone/transformer_layer_0/feedforward_intermediate_dense/kernel: Keras "
        "doesn't save this layer's regularizer (BertBackbone builds the layer from its own "
        "config, which doesn't hold it), so a saved file would reload without it; set it in "
        "Python after loading (surgery.load_model, then surgery.set_regularizer), for the "
        "current session\n"), r.output
    assert not out.exists()


_TOWER = '''
import keras


@keras.saving.register_keras_serializable(package="p19")
class Tower(keras.Model):
    """A subclassed model whose config holds its layers' own configs."""

    def __init__(self, hidden=None, head=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.deserialize(hidden) if hidden else \\
            keras.layers.Dense(8, activation="relu", name="hidden")
        self.head = keras.layers.deserialize(head) if head else keras.layers.Dense(3, name="head")

    def build(self, input_shape):  # sublayers deserialized with a build config are built
        if not self.hidden.built:
            self.hidden.build(input_shape)
        if not self.head.built:
            self.head.build(tuple(input_shape[:-1]) + (self.hidden.units,))

    def build_from_config(self, config):
        self.build(config["input_shape"])

    def call(self, x):
        return self.head(self.hidden(x))

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "hidden": keras.layers.serialize(self.hidden),
                "head": keras.layers.serialize(self.head)}
'''

_RELOAD_SETUP = """
import json, sys
import numpy as np
import keras
import p19_tower
m = keras.saving.load_model(sys.argv[1], compile=False)
print(json.dumps({"regularizer": keras.saving.serialize_keras_object(
    m.hidden.kernel_regularizer), "loss": float(sum(m.losses)),
    "kernel": np.asarray(m.hidden.kernel).tolist()}))
"""


@pytest.mark.slow
def test_set_on_a_serializable_subclassed_model_is_saved(keras, tmp_path, monkeypatch):
    """A subclassed model whose config holds its layers: `surgery set` writes the regularizer
    into that config, and plain Keras, loading OUT in a fresh process, has it on the layer
    with the penalty numpy computes from the file's kernel; weights bitwise."""
    (tmp_path / "p19_tower.py").write_text(_TOWER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import p19_tower

    keras.utils.set_random_seed(0)
    tower = p19_tower.Tower(name="tower")
    tower.build((None, 5))
    path, out = tmp_path / "tower.keras", tmp_path / "tower_l2.keras"
    tower.save(path)
    r = run("set", path, "-o", out, "--select", "hidden/kernel", "--l2", "0.01", "--import",
            "p19_tower")
    assert r.exit_code == 0, r.output
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])}
    done = subprocess.run([sys.executable, "-c", _RELOAD_SETUP, str(out)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["regularizer"]["class_name"] == "L1L2"
    assert got["regularizer"]["config"] == {"l1": 0.0, "l2": 0.01}
    kernel = np.array(got["kernel"], "float32")
    np.testing.assert_array_equal(kernel, np.asarray(tower.hidden.kernel))
    np.testing.assert_allclose(got["loss"], 0.01 * np.sum(kernel.astype(np.float64) ** 2),
                               rtol=1e-5)


def test_edit_that_needs_a_graph_says_what_to_do(files, tmp_path):
    out = tmp_path / "never.keras"
    r = run("edit", "widen", files["bert"], "-o", out, "--layer", "logits", "--units", 5)
    assert r.exit_code == 2 and r.output == (
        f"error: bert_text_classifier: edit widen needs the layer graph of a Functional or "
        "Sequential model, and keras_hub>BertTextClassifier is a subclassed model whose config "
        "holds none; build the architecture you want from its config in Python (a keras-hub "
        "backbone takes num_layers, hidden_dim, ...), save it, and fill it with surgery "
        f"transplant {files['bert']} NEW.keras -o OUT\n"), r.output
    assert not out.exists()


def test_edit_of_a_task_says_the_class_is_not_kept(files, tmp_path):
    """A graph edit of a keras-hub task (a Functional subclass) writes a plain Functional:
    the report says so, and plain Keras loads it in a fresh process with the task's
    predictions (a Dropout deleted: the same function at inference)."""
    out = tmp_path / "edited.keras"
    r = run("edit", "delete-layer", files["resnet"], "-o", out, "--layer", "output_dropout",
            "--verify")
    assert r.exit_code == 0, r.output
    assert ("  res_net_classifier: the edited model is a plain Functional, not a "
            "ResNetImageClassifier: its graph and weights are kept, the class's own parts (a "
            "keras-hub task's preprocessor, compile settings and methods) are not\n"
            ) in r.output, r.output
    code = (
        "import sys, numpy as np, keras, keras_hub\n"
        "x = np.random.default_rng(0).uniform(0, 1, (3, 16, 16, 3)).astype('float32')\n"
        "a = keras.saving.load_model(sys.argv[1], compile=False)\n"
        "b = keras.saving.load_model(sys.argv[2], compile=False)\n"
        "print(type(a).__name__, type(b).__name__, [type(l).__name__ for l in b.layers],\n"
        "      [l.name for l in b.layers][1:])\n"
        "np.testing.assert_allclose(np.asarray(a.predict(x, verbose=0)),\n"
        "                           np.asarray(b.predict(x, verbose=0)), atol=1e-6)\n")
    done = subprocess.run([sys.executable, "-c", code, str(files["resnet"]), str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == (  # (keras-hub numbers its input layers' names)
        "ResNetImageClassifier Functional ['InputLayer', 'ResNetBackbone', "
        "'GlobalAveragePooling2D', 'Dense'] ['res_net_backbone', 'pooler', 'predictions']")


# ------------------------------------------------------------------ 3. file listings

@pytest.mark.parametrize("name", ["bert", "gpt2", "resnet", "nested", "two"])
def test_file_lists_layers_as_the_live_model(files, name):
    """`surgery inspect FILE` lists layers and variables in the live model's order with its
    classes: the live model that was saved is the reference (its inventory)."""
    r = run("inspect", files[name], "--json")
    assert r.exit_code == 0, r.output
    listing = json.loads(r.output)
    live = surgery.inspect(files["live"][name])
    assert [(row["path"], row["class"]) for row in listing["layers"]] == \
        [(layer.path, layer.class_name) for layer in live.layers]
    assert [row["path"] for row in listing["variables"]] == [v.path for v in live.variables]
    assert "?" not in {row["class"] for row in listing["layers"]}


# ------------------------------------------------------------------ 4. preprocessors, freezes

@pytest.mark.slow
def test_task_with_a_preprocessor_head_and_transplant(files, keras, tmp_path):
    """A task file with a tokenizer (its vocabulary in the archive's assets): inspect reads
    it; `head` and file -> file `transplant` write files plain keras-hub loads and runs on
    raw strings: kept classes give the old logits, a transplanted model what the source
    computes on the same tokens."""
    pre_live = files["live"]["bert_pre"]
    with surgery.open_weights(files["bert_pre"]) as f:
        assert set(f.keys()) == set(_weights(pre_live))
    head = tmp_path / "five.keras"
    r = run("head", files["bert_pre"], "--classes", 5, "--keep-classes", "2,0", "-o", head)
    assert r.exit_code == 0, r.output
    old = keras.saving.load_model(files["bert_pre"])
    new = keras.saving.load_model(str(head))
    np.testing.assert_allclose(new.predict(TEXTS, verbose=0)[:, :2],
                               old.predict(TEXTS, verbose=0)[:, [2, 0]], atol=1e-6)
    filled = tmp_path / "filled.keras"
    r = run("transplant", files["bert"], files["bert_pre"], "-o", filled, "--strict")
    assert r.exit_code == 0, r.output
    source = keras.saving.load_model(files["bert"], compile=False)
    result = keras.saving.load_model(str(filled))
    tokens = old.preprocessor(TEXTS)
    np.testing.assert_allclose(result.predict(TEXTS, verbose=0),
                               np.asarray(source(tokens, training=False)), atol=1e-6)


@pytest.mark.slow
def test_finetune_a_task_with_a_preprocessor(files, keras, tmp_path):
    """The task's preprocessor is not applied to already tokenized data; the result keeps it.
    Reference: keras-hub's own fit on the raw strings (its preprocessor tokenizes them into
    the same arrays), same order."""
    pre = files["live"]["bert_pre"].preprocessor
    x = {k: np.asarray(v) for k, v in pre(TEXTS).items()}
    y = _labels()
    data = _npz(tmp_path / "tokens.npz", x, y)
    out = tmp_path / "tuned.keras"
    r = run("finetune", files["bert_pre"], "--data", data, "--train", "logits", "-o", out,
            "--batch-size", 8, "--seed", 2)
    assert r.exit_code == 0, r.output
    ref = keras.saving.load_model(files["bert_pre"], compile=False)
    ref.backbone.trainable = False
    keras_train(keras, ref, np.array(TEXTS), y, seed=2, batch_size=8)
    tuned = keras.saving.load_model(str(out))
    assert tuned.preprocessor is not None
    assert_same_weights(_weights(tuned), _weights(ref))
    np.testing.assert_allclose(tuned.predict(TEXTS, verbose=0), ref.predict(TEXTS, verbose=0),
                               atol=1e-5)


def _fit_changes(keras, model, x, y) -> set[str]:
    before = _weights(model)
    model.compile(optimizer=keras.optimizers.SGD(0.1), run_eagerly=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, batch_size=len(y), verbose=0, shuffle=False)
    after = _weights(model)
    return {p for p in after if not np.array_equal(before[p], after[p])}


def test_unfreezing_under_a_frozen_ancestor(files, keras, tmp_path):
    """A BERT whose backbone is frozen (saved so), one transformer block unfrozen in Python:
    surgery reports what Keras trains (``trainable_weights``, and the variables `fit`
    changes); the CLI refuses the same unfreeze, which a saved file would lose."""
    model = surgery.load_model(files["bert_frozen"])
    report = surgery.unfreeze(model, "bert_backbone/transformer_layer_1")
    assert report.unsaved == ("bert_backbone/transformer_layer_1",)
    keras_count = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert report.after[0] == keras_count == surgery.inspect(model).trainable_params
    trainable = {v.path for v in surgery.inspect(model).variables if v.trainable}
    assert {p.split("/")[1] for p in trainable if p.startswith("bert_backbone/")} == \
        {"transformer_layer_1"}
    changed = _fit_changes(keras, model, _bert_x(4), _labels(4))
    assert changed and changed <= trainable
    assert "logits/kernel" in changed and any("transformer_layer_1" in p for p in changed)
    out = tmp_path / "never.keras"
    r = run("unfreeze", files["bert_frozen"], "--select", "bert_backbone/transformer_layer_1",
            "-o", out)
    assert r.exit_code == 2 and r.output == (
        "error: bert_backbone/transformer_layer_1: Keras doesn't save the trainable flag of "
        "this layer (its parent's config doesn't hold it), so a saved file would reload it "
        "frozen; select the whole 'bert_backbone', or unfreeze it in Python after loading "
        "(surgery.load_model), for the current session\n"), r.output
