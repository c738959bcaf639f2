"""keras-hub models, first class (issue #19): tiny random keras-hub 0.32 models built from
explicit configs (no presets: nothing is downloaded). Every claim is checked against plain
keras-hub / Keras: `keras.saving.load_model` of the same file (in a fresh process where
trainable flags are concerned), the live model's own variables and `trainable_weights`, and
`fit`."""

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
from tests.conftest import ROOT

keras_hub = pytest.importorskip("keras_hub")

rng = np.random.default_rng(0)
SEQ = 8


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _bert(keras, layers: int, seed: int):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=layers, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=32, name="bert_backbone")  # fixed names: one session builds several
    return keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=3,
                                               preprocessor=None, name="bert_text_classifier")


def _gpt2(keras, seed: int):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=60, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=32, name="gpt2_backbone")
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None,
                                         name="gpt2_causal_lm")


def _resnet(keras, seed: int):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(16, 16, 3), name="res_net_backbone")
    return keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=4,
                                                  preprocessor=None, name="res_net_classifier")


def _nested(keras):
    """A plain Keras model with a nested Sequential holding a BatchNorm (item 6)."""
    L = keras.layers
    trunk = keras.Sequential([keras.Input((5,)), L.Dense(4, name="feat"),
                              L.BatchNormalization(name="bn")], name="trunk")
    x = keras.Input((5,))
    return keras.Model(x, L.Dense(2, name="fc")(trunk(x)))


def _randomize(model):
    """Non-default values everywhere (BatchNorm statistics included), so that a copy that
    lands in the wrong variable is seen."""
    for v in model.weights:
        v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype(v.dtype))
    return model


def text_inputs(n: int = 4, vocab: int = 50, segments: bool = True) -> dict:
    x = {"token_ids": rng.integers(1, vocab, size=(n, SEQ)).astype("int32"),
         "padding_mask": np.ones((n, SEQ), "int32")}
    if segments:
        x["segment_ids"] = np.zeros((n, SEQ), "int32")
    return x


INPUTS = {"bert": lambda: text_inputs(), "bert2": lambda: text_inputs(),
          "gpt2": lambda: text_inputs(vocab=60, segments=False),
          "resnet": lambda: rng.uniform(0, 1, size=(4, 16, 16, 3)).astype("float32")}


@pytest.fixture(scope="session")
def hub(tmp_path_factory, keras):
    """Each model saved once as `.keras` (and its bare `.weights.h5`): two BERT classifiers
    of 4 layers (other seeds), one of 2, a GPT-2 causal LM, a ResNet classifier, a BERT
    backbone alone and a plain nested Keras model."""
    folder = tmp_path_factory.mktemp("hub")
    models = {"bert": _bert(keras, 4, 1), "bert_b": _bert(keras, 4, 2),
              "bert2": _bert(keras, 2, 3), "gpt2": _gpt2(keras, 4), "resnet": _resnet(keras, 5),
              "nested": _nested(keras)}
    models["backbone"] = models["bert"].backbone
    _randomize(models["resnet"])
    _randomize(models["nested"])
    paths = {}
    for name, model in models.items():
        paths[name] = str(folder / f"{name}.keras")
        model.save(paths[name])
        model.save_weights(str(folder / f"{name}.weights.h5"))
    return paths


def _table(src) -> dict:
    return {v.path: (v.shape, v.dtype, v.trainable) for v in src.variables()}


def _out(model, x) -> np.ndarray:
    """The model's output in inference mode (a direct call: no predict-function tracing)."""
    return np.asarray(model(x, training=False))


def _trainable_params(model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


# ------------------------------------------------------------------ 1. files read everywhere

@pytest.mark.parametrize("name", ["bert", "gpt2", "resnet", "backbone"])
def test_keras_file_paths_are_the_live_paths(hub, keras, name):
    """The `.keras` file of a keras-hub model names every variable as the live model does
    (plain Keras's own load of the same file): paths, shapes, dtypes, trainable, values."""
    live = keras.saving.load_model(hub[name], compile=False)
    with surgery.open_weights(hub[name]) as f, surgery.open_weights(live) as m:
        assert _table(f) == _table(m)
        assert len(_table(f)) == len(live.weights)
        for path in m.keys():
            np.testing.assert_array_equal(f[path], m[path], err_msg=path)


@pytest.mark.parametrize("name", ["bert", "gpt2", "resnet", "nested"])
def test_bare_weights_paths_are_the_live_paths(hub, keras, name):
    """Item 6: a bare `.weights.h5` (no architecture) gives the live paths too: no extra
    ``layers/`` segment for nested models, Embedding ``embeddings``, BatchNorm and
    LayerNorm names, moving statistics not trainable; with --architecture the same."""
    live = keras.saving.load_model(hub[name], compile=False)
    bare = hub[name].replace(".keras", ".weights.h5")
    with surgery.open_weights(bare) as f, surgery.open_weights(live) as m, \
            surgery.open_weights(bare, architecture=hub[name]) as a:
        assert _table(f) == _table(m) == _table(a)
        for path in m.keys():
            np.testing.assert_array_equal(f[path], m[path], err_msg=path)
    if name == "nested":
        assert list(_table(f)) == ["trunk/feat/kernel", "trunk/feat/bias", "trunk/bn/gamma",
                                   "trunk/bn/beta", "trunk/bn/moving_mean",
                                   "trunk/bn/moving_variance", "fc/kernel", "fc/bias"]


def test_cli_inspect_counts_what_keras_counts(hub, keras):
    live = keras.saving.load_model(hub["bert"], compile=False)
    r = run("inspect", hub["bert"], "--json")
    assert r.exit_code == 0, r.output
    totals = json.loads(r.output)["totals"]
    assert totals["params"] == sum(int(np.prod(v.shape)) for v in live.weights)
    assert totals["trainable"] == _trainable_params(live)
    r = run("inspect", hub["bert"])
    assert r.exit_code == 0 and "bert_backbone/token_embedding/embeddings" in r.output


def test_cli_diff_agrees_with_the_live_weights(hub, keras):
    a = keras.saving.load_model(hub["bert"], compile=False)
    b = keras.saving.load_model(hub["bert_b"], compile=False)
    r = run("diff", hub["bert"], hub["bert_b"], "--json")
    assert r.exit_code == 1, r.output
    rows = {row["path"]: row["status"] for row in json.loads(r.output)["variables"]}
    with surgery.open_weights(a) as wa, surgery.open_weights(b) as wb:
        expected = {p: "unchanged" if np.array_equal(wa[p], wb[p]) else "changed"
                    for p in wa.keys()}
    assert rows == expected and "changed" in rows.values()
    assert run("diff", hub["bert"], hub["bert"]).exit_code == 0


def test_diff_statuses_accept_printed_words(hub):
    d = surgery.diff(hub["bert"], hub["bert2"])
    only = d.of("only in a")
    assert only and only == d.of("only_in_a")
    assert {v.path.split("/")[1] for v in only} == {"transformer_layer_2", "transformer_layer_3"}


def test_transplant_file_to_file_is_bitwise(hub, keras, tmp_path):
    """Same architecture: the output holds the source's weights bitwise and predicts what
    the source predicts (plain Keras loads of both files)."""
    out = tmp_path / "filled.keras"
    r = run("transplant", hub["bert"], hub["bert_b"], "-o", out, "--strict")
    assert r.exit_code == 0, r.output
    source = keras.saving.load_model(hub["bert"], compile=False)
    filled = keras.saving.load_model(str(out), compile=False)
    for a, b in zip(source.weights, filled.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = INPUTS["bert"]()
    np.testing.assert_array_equal(_out(source, x), _out(filled, x))


def test_transplant_bert_four_layers_into_two(hub, keras, tmp_path):
    """BERT 4 -> 2 layers, file -> file: layers 0-1 and everything else copied, layers 2-3
    unused; the result predicts what a 2-layer keras-hub BERT given those weights by Keras's
    own set_weights predicts."""
    out = tmp_path / "two.keras"
    r = run("transplant", hub["bert"], hub["bert2"], "-o", out, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    unused = {path.split("/")[1] for path in report["unused"]}
    assert unused == {"transformer_layer_2", "transformer_layer_3"}
    assert report["counts"]["missing"] == 0 and report["counts"]["mismatched"] == 0
    assert report["counts"]["copied"] == len(report["entries"])
    source = keras.saving.load_model(hub["bert"], compile=False)
    reference = _bert(keras, 2, 9)
    for layer in reference.backbone.layers:
        if layer.weights:
            layer.set_weights(source.backbone.get_layer(layer.name).get_weights())
    reference.get_layer("logits").set_weights(source.get_layer("logits").get_weights())
    result = keras.saving.load_model(str(out), compile=False)
    x = INPUTS["bert"]()
    np.testing.assert_array_equal(_out(result, x), _out(reference, x))


def test_transplant_bare_weights_with_architecture(hub, keras, tmp_path):
    """A bare `.weights.h5` source named through --source-architecture (a keras-hub
    `.keras`)."""
    out = tmp_path / "from_bare.keras"
    bare = hub["gpt2"].replace(".keras", ".weights.h5")
    target = tmp_path / "gpt2_other.keras"
    _gpt2(keras, 11).save(target)
    r = run("transplant", bare, target, "-o", out, "--strict", "--source-architecture",
            hub["gpt2"])
    assert r.exit_code == 0, r.output
    source = keras.saving.load_model(hub["gpt2"], compile=False)
    filled = keras.saving.load_model(str(out), compile=False)
    for a, b in zip(source.weights, filled.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_load_model_is_keras_own_load(hub, keras):
    """surgery.load_model (safe mode on) accepts keras-hub classes, as Keras's safe mode
    does, and gives the model Keras gives."""
    ours = surgery.load_model(hub["gpt2"])
    theirs = keras.saving.load_model(hub["gpt2"], compile=False)
    assert type(ours).__name__ == "GPT2CausalLM"
    x = INPUTS["gpt2"]()
    np.testing.assert_array_equal(_out(ours, x), _out(theirs, x))


# ------------------------------------------------------------------ 3. freezes survive saving

_RELOAD = """
import json, sys
import numpy as np
import keras
out = {}
for path in sys.argv[1:]:
    m = keras.saving.load_model(path, compile=False)
    out[path] = sum(int(np.prod(v.shape)) for v in m.trainable_weights)
print(json.dumps(out))
"""


def _reload_counts(paths: list[str]) -> dict[str, int]:
    """Trainable parameter counts of each file as plain Keras loads it in a fresh process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", _RELOAD, *paths], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_frozen_backbone_reloads_frozen(hub, keras, tmp_path):
    """The fast check: a frozen keras-hub backbone reloads (plain Keras, this process)
    with the trainable count the report gave: the head alone."""
    out = tmp_path / "frozen.keras"
    r = run("freeze", hub["bert"], "--select", "bert_backbone", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert [row["path"] for row in report["layers"]] == ["bert_backbone"]
    reloaded = keras.saving.load_model(str(out), compile=False)
    assert report["params_after"]["trainable"] == _trainable_params(reloaded) == 16 * 3 + 3


@pytest.mark.slow
def test_frozen_files_reload_with_the_reported_counts(hub, keras, tmp_path):
    """Every frozen model is reloaded by plain Keras in a fresh process: its trainable count
    is the one the report gave (before the fix, a frozen BERT backbone came back fully
    trainable)."""
    cases = {
        "backbone": ("freeze", hub["bert"], "--select", "bert_backbone"),
        "all_but_head": ("freeze", hub["bert"], "--except", "logits"),
        "gpt2": ("freeze", hub["gpt2"], "--select", "gpt2_backbone"),
        "nested_bn_train": ("freeze", hub["nested"], "--select", "trunk", "--bn", "train"),
        "nested": ("freeze", hub["nested"], "--except", "fc"),
    }
    reported = {}
    for name, args in cases.items():
        out = str(tmp_path / f"{name}.keras")
        r = run(*args, "-o", out, "--json")
        assert r.exit_code == 0, (name, r.output)
        reported[out] = json.loads(r.output)["params_after"]["trainable"]
    again = str(tmp_path / "unfrozen.keras")
    r = run("unfreeze", str(tmp_path / "backbone.keras"), "--select", "bert_backbone", "-o",
            again, "--json")
    assert r.exit_code == 0, r.output
    reported[again] = json.loads(r.output)["params_after"]["trainable"]
    model = surgery.load_model(hub["bert"])  # the Python API, saved by surgery
    report = surgery.freeze(model, "bert_backbone", must_save=True)
    surgery.save_model(model, str(tmp_path / "python.keras"))
    reported[str(tmp_path / "python.keras")] = report.after[0]
    assert report.after[0] == _trainable_params(model) == 51  # the head alone
    assert _reload_counts(list(reported)) == reported


@pytest.mark.parametrize("model, select, line", [
    ("bert", "bert_backbone/transformer_layer_0",
     "bert_backbone/transformer_layer_0: Keras doesn't save the trainable flag of this layer "
     "(its parent's config doesn't hold it), so a saved file would reload it trainable; select "
     "the whole 'bert_backbone', or freeze it in Python after loading (surgery.load_model), "
     "for the current session"),
    ("bert", "logits",
     "logits: Keras doesn't save the trainable flag of this layer (its parent's config doesn't "
     "hold it), so a saved file would reload it trainable; select whole saved layers, or "
     "freeze it in Python after loading (surgery.load_model), for the current session"),
    ("resnet", "res_net_backbone",
     "res_net_backbone: Keras saves this ResNetBackbone's trainable flag but doesn't apply it "
     "to the layers it builds when it loads the file, so a saved file would reload it "
     "trainable; freeze it in Python after loading (surgery.load_model, then surgery.freeze), "
     "or let surgery finetune --freeze freeze it for training"),
])
def test_freeze_a_file_cant_hold_is_refused(hub, tmp_path, model, select, line):
    out = tmp_path / "never.keras"
    r = run("freeze", hub[model], "--select", select, "-o", out)
    assert r.exit_code == 2 and r.output == f"error: {line}\n", r.output
    assert not out.exists()


def test_session_freeze_is_exact_and_says_it_is_not_saved(hub, keras):
    """In Python a freeze a file can't hold still works for the session, as Keras trains it,
    and the report lists it as unsaved."""
    model = surgery.load_model(hub["resnet"])
    report = surgery.freeze(model, "res_net_backbone")
    assert report.unsaved == () and report.after[0] == _trainable_params(model)
    model = surgery.load_model(hub["bert"])
    report = surgery.freeze(model, "bert_backbone/transformer_layer_0")
    assert report.unsaved == ("bert_backbone/transformer_layer_0",)
    assert report.after[0] == _trainable_params(model)
    assert "this session only" in str(report)


# ------------------------------------------------------------------ 3. trainable accounting

def _fit_changes(model, x, y) -> set[str]:
    """The canonical paths of the variables a few steps of `fit` change."""
    with surgery.open_weights(model) as w:
        before = {p: np.array(w[p]) for p in w.keys()}
    model.compile(optimizer=keras_optimizer(), loss=model_loss(model), run_eagerly=True)
    model.fit(x, y, epochs=1, batch_size=len(y), verbose=0, shuffle=False)
    with surgery.open_weights(model) as w:
        return {p for p in w.keys() if not np.array_equal(before[p], w[p])}


def keras_optimizer():
    import keras
    return keras.optimizers.SGD(0.1)


def model_loss(model):
    import keras
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_counts_follow_keras_with_keras_hub_lora(hub, keras):
    """keras-hub's backbone.enable_lora freezes the backbone and leaves its query/value
    layers trainable: inspect counts what Keras trains, and fit changes exactly the
    variables surgery calls trainable (nothing it calls frozen)."""
    model = surgery.load_model(hub["bert"])
    model.backbone.enable_lora(2)
    inv = surgery.inspect(model)
    assert inv.trainable_params == _trainable_params(model) > 51
    trainable = {v.path for v in inv.variables if v.trainable}
    x, y = INPUTS["bert"](), np.array([0, 1, 2, 1])
    changed = _fit_changes(model, x, y)
    assert changed and changed <= trainable
    assert any("lora_kernel_b" in p for p in changed)


def test_counts_follow_keras_with_a_frozen_parent(hub, keras):
    """A frozen nested model with one layer made trainable again (the state keras-hub's
    LoRA leaves): counts and fit agree with Keras."""
    model = keras.saving.load_model(hub["nested"], compile=False)
    trunk = model.get_layer("trunk")
    trunk.trainable = False
    trunk.get_layer("feat").trainable = True
    inv = surgery.inspect(model)
    assert inv.trainable_params == _trainable_params(model) == 4 * 5 + 4 + 4 * 2 + 2
    trainable = {v.path for v in inv.variables if v.trainable}
    assert trainable == {"trunk/feat/kernel", "trunk/feat/bias", "fc/kernel", "fc/bias"}
    x = rng.normal(size=(8, 5)).astype("float32")
    assert _fit_changes(model, x, np.arange(8) % 2) == trainable


# ------------------------------------------------------------------ 7. LoRA

def test_lora_on_reversible_embedding(hub, keras):
    """keras-hub's token table (a ReversibleEmbedding) takes surgery's LoRA as Keras's own
    enable_lora gives it; the counts are what Keras trains."""
    model = surgery.load_model(hub["gpt2"])
    report = surgery.enable_lora(model, "gpt2_backbone/token_embedding", rank=2)
    table = model.backbone.token_embedding
    assert report.layers == ("gpt2_backbone/token_embedding",) and table.lora_enabled
    assert report.trainable_after == _trainable_params(model)
    assert surgery.inspect(model).trainable_params == _trainable_params(model)


def test_merge_lora_on_keras_hub_lora(hub, keras):
    """keras-hub's own backbone.enable_lora, then surgery.merge_lora on the subclassed task
    (rebuilt from its config, as Keras loads it): the merged model computes what the LoRA
    model computes, holds no adapters, and keeps every other weight bitwise."""
    model = surgery.load_model(hub["bert"])
    model.backbone.enable_lora(2)
    for v in model.weights:  # adapters that do something (B starts at zero)
        if "lora_kernel_b" in v.path:
            v.assign(rng.normal(0, 0.1, size=v.shape).astype("float32"))
    merged = surgery.merge_lora(model)
    assert type(merged).__name__ == "BertTextClassifier" and merged is not model
    assert not [v for v in merged.weights if "lora" in v.path]
    x = INPUTS["bert"]()
    np.testing.assert_allclose(_out(merged, x), _out(model, x), atol=1e-5)
    original = keras.saving.load_model(hub["bert"], compile=False)
    with surgery.open_weights(merged) as m, surgery.open_weights(original) as o:
        same = [p for p in o.keys() if np.array_equal(m[p], o[p])]
        changed = set(o.keys()) - set(same)
    assert changed and all(p.endswith(("query/kernel", "value/kernel")) for p in changed)


# ------------------------------------------------------------------ 5. rebuilding subclassed

def test_head_on_a_keras_hub_task_keeps_classes(hub, keras, tmp_path):
    """CLI head --classes on a keras-hub classifier: the task is rebuilt with the new class
    count over the same backbone; kept classes give exactly their old logits (the original
    model loaded by plain Keras is the reference), every backbone weight is bitwise."""
    out = tmp_path / "five.keras"
    r = run("head", hub["bert"], "--classes", 5, "--keep-classes", "2,0", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["layer"] == "logits"
    old = keras.saving.load_model(hub["bert"], compile=False)
    new = keras.saving.load_model(str(out), compile=False)
    assert type(new).__name__ == "BertTextClassifier" and new.num_classes == 5
    x = INPUTS["bert"]()
    np.testing.assert_array_equal(_out(new, x)[:, :2], _out(old, x)[:, [2, 0]])
    with surgery.open_weights(old) as a, surgery.open_weights(new) as b:
        for p in a.keys():
            if not p.startswith("logits/"):
                np.testing.assert_array_equal(a[p], b[p], err_msg=p)
        assert b.shape("logits/kernel") == (16, 5)


@pytest.mark.slow
def test_finetune_a_keras_hub_classifier(hub, keras, tmp_path):
    """CLI finetune --train on a keras-hub ResNet classifier: a few steps train the head
    only; the backbone comes out bitwise (plain Keras loads of input and output)."""
    data = tmp_path / "d.npz"
    x = rng.uniform(0, 1, size=(8, 16, 16, 3)).astype("float32")
    np.savez(data, x=x, y=np.arange(8) % 4)
    out = tmp_path / "tuned.keras"
    r = run("finetune", hub["resnet"], "--data", data, "--train", "predictions", "-o", out,
            "--batch-size", 4, "--lr", 0.1, "--epochs", 1)
    assert r.exit_code == 0, r.output
    old = keras.saving.load_model(hub["resnet"], compile=False)
    new = keras.saving.load_model(str(out), compile=False)
    assert type(new).__name__ == "ResNetImageClassifier"
    with surgery.open_weights(old) as a, surgery.open_weights(new) as b:
        changed = {p for p in a.keys() if not np.array_equal(a[p], b[p])}
    assert changed == {"predictions/kernel", "predictions/bias"}


def test_add_head_on_a_keras_hub_backbone(hub, keras):
    """add_head copies a subclassed backbone as Keras copies it: the backbone's features are
    exactly the original backbone's."""
    resnet = keras.saving.load_model(hub["resnet"], compile=False)
    backbone = resnet.backbone
    model, report = surgery.add_head(backbone, 3, pooling="avg")
    assert report.classes == 3 and model.output_shape == (None, 3)
    x = INPUTS["resnet"]()
    features = keras.Model(model.inputs, model.get_layer("head_pool").input)
    np.testing.assert_array_equal(_out(features, x), _out(backbone, x))


def test_head_needs_a_dense_head(hub):
    """A causal LM's output is its token table (no Dense head): said, with what to do."""
    model = surgery.load_model(hub["gpt2"])
    with pytest.raises(surgery.SurgeryError) as e:
        surgery.replace_head(model, 3)
    assert str(e.value) == ("gpt2_causal_lm: no Dense head found; name one with head=... "
                            "(--layer), or add one with add_head")
