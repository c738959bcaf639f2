"""surgery.transplant / transplant_file / `surgery transplant`: sources, matching steps, rules,
adapters, strict, dry run, verify, the report, and every bad input with its exact line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.errors import CheckFailed, InputError, ShapeError
from surgery.transfer.rules import RulesError
from surgery.io.safetensors import write_safetensors
from tests import torch_reference as T
from tests.conftest import ROOT, leftovers, sha256
from tests.models import kitchen_sink, randomize

RULES = os.path.join(ROOT, "examples", "rules")



def values(model):
    with surgery.open_weights(model) as w:
        return {k: w.read(k) for k in w}


def assert_same(a, b):
    d = surgery.diff(a, b)
    assert d.identical, str(d)


# ------------------------------------------------------------------ sources

@pytest.fixture(scope="module")
def sink_files(keras, tmp_path_factory):
    """One randomized model saved in every format a source can have."""
    folder = tmp_path_factory.mktemp("sources")
    model = randomize(kitchen_sink(keras), seed=3)
    model.save(folder / "m.keras")
    model.save_weights(folder / "m.weights.h5")
    model.save_weights(folder / "m.weights.json", max_shard_size=1e-6)
    vals = values(model)
    np.savez(folder / "m.npz", **vals)
    write_safetensors(vals, str(folder / "m.safetensors"))
    import tensorflow as tf
    ckpt = tf.train.Checkpoint(**{k.replace("/", "__"): tf.Variable(v) for k, v in vals.items()})
    prefix = ckpt.write(str(folder / "ckpt"))
    return {"model": model, "folder": folder, "values": vals, "ckpt": prefix}


@pytest.mark.parametrize("fmt", ["live", "keras", "weights.h5", "weights.json", "npz",
                                 "safetensors"])
def test_every_keras3_source_fills_a_fresh_model(keras, sink_files, fmt):
    folder = sink_files["folder"]
    source = {"live": sink_files["model"], "keras": str(folder / "m.keras"),
              "weights.h5": surgery.open_weights(str(folder / "m.weights.h5"),
                                                 architecture=str(folder / "m.keras")),
              "weights.json": surgery.open_weights(str(folder / "m.weights.json"),
                                                   architecture=str(folder / "m.keras")),
              "npz": str(folder / "m.npz"),
              "safetensors": str(folder / "m.safetensors")}[fmt]
    target = kitchen_sink(keras)
    report = surgery.transplant(source, target, strict=True)
    assert report.ok and len(report.copied) == len(sink_files["values"])
    assert_same(sink_files["model"], target)


def test_sharded_weights_really_sharded(sink_files):
    import glob
    shards = glob.glob(str(sink_files["folder"] / "m_*.weights.h5"))
    assert len(shards) > 1
    with surgery.open_weights(str(sink_files["folder"] / "m.weights.json")) as w:
        assert w.format == "weights.json" and w.shape("head/kernel") == (24, 3)


def test_tf_checkpoint_source(keras, sink_files):
    target = kitchen_sink(keras)
    rules = {"rename": [{"from": "__", "to": "/"}]}
    report = surgery.transplant(sink_files["ckpt"], target, rules, strict=True)
    assert report.ok
    assert_same(sink_files["model"], target)


def test_tf_keras_and_legacy_h5_sources_into_keras3(keras, tmp_path):
    import tf_keras
    old = randomize(kitchen_sink(tf_keras), seed=5)
    old.save(tmp_path / "old.h5")
    for source in (old, str(tmp_path / "old.h5")):
        target = kitchen_sink(keras)
        assert surgery.transplant(source, target, strict=True).ok
        assert_same(old, target)


def test_keras3_into_tf_keras(keras):
    import tf_keras
    new = randomize(kitchen_sink(keras), seed=6)
    target = kitchen_sink(tf_keras)
    assert surgery.transplant(new, target, strict=True).ok
    assert_same(new, target)


def test_hub_module_source_into_native_twin(keras, samples):
    twin = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu",
                             name="l1"), keras.layers.Dense(16, activation="relu", name="l2")])
    report = surgery.transplant(samples["hub_module"], twin, strict=True)
    assert report.ok and {e.matched_by for e in report.copied} == {"exact"}
    import tensorflow as tf
    module = tf.saved_model.load(samples["hub_module"])
    x = np.random.default_rng(0).normal(size=(4, 16)).astype("float32")
    np.testing.assert_allclose(twin(x), module(x), atol=1e-6)


def test_bfloat16_safetensors(keras, tmp_path):
    import ml_dtypes
    w = np.arange(12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.bfloat16)
    write_safetensors({"fc/kernel": w, "fc/bias": np.ones(4, ml_dtypes.bfloat16)},
                      str(tmp_path / "bf.safetensors"))
    with surgery.open_weights(str(tmp_path / "bf.safetensors")) as src:
        assert src.dtype("fc/kernel") == "bfloat16"
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="fc")])
    report = surgery.transplant(str(tmp_path / "bf.safetensors"), model, strict=True)
    assert report.copied[0].note == "cast bfloat16 -> float32"
    np.testing.assert_array_equal(model.get_layer("fc").kernel.numpy(), w.astype(np.float32))


# ------------------------------------------------------------------ matching steps

def test_structural_match_across_auto_names(keras):
    def build():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                 keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    a, b = randomize(build(), seed=1), build()
    report = surgery.transplant(a, b, strict=True)
    assert {e.matched_by for e in report.copied} == {"structural"}
    for la, lb in zip(a.layers, b.layers):
        for x, y in zip(la.get_weights(), lb.get_weights()):
            np.testing.assert_array_equal(x, y)


def test_exact_match_wins_and_structural_fills_the_rest(keras):
    src = randomize(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc"),
                                      keras.layers.Dense(2, name="old_head")]), seed=2)
    tgt = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc"),
                            keras.layers.Dense(2, name="new_head")])
    report = surgery.transplant(src, tgt)
    by = {e.path: e.matched_by for e in report.copied}
    assert by == {"fc/kernel": "exact", "fc/bias": "exact", "new_head/kernel": "structural",
                  "new_head/bias": "structural"}


def test_shape_fallback_only_when_asked(keras):
    src = randomize(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a")]), 3)
    tgt = keras.Sequential([keras.Input((4,)), keras.layers.EinsumDense("ab,bc->ac", 3,
                                                                         bias_axes="c",
                                                                         name="b")])
    report = surgery.transplant(src, tgt, {"match": "exact"})
    assert len(report.missing) == 2 and len(report.unused) == 2
    report = surgery.transplant(src, tgt, {"match": "shape"})
    assert {e.matched_by for e in report.copied} == {"shape"}
    np.testing.assert_array_equal(tgt.get_layer("b").kernel.numpy(),
                                  src.get_layer("a").kernel.numpy())


def test_rename_prefix_example(keras):
    def build(trunk_name, head):
        trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="feat")],
                                 name=trunk_name)
        inp = keras.Input((4,))
        return keras.Model(inp, keras.layers.Dense(head, name="head")(trunk(inp)))
    src, tgt = randomize(build("backbone", 5), 4), build("trunk", 2)
    report = surgery.transplant(src, tgt, os.path.join(RULES, "rename_prefix.toml"))
    assert [(e.path, e.source, e.matched_by) for e in report.copied] == [
        ("trunk/feat/kernel", "backbone/feat/kernel", "rule"),
        ("trunk/feat/bias", "backbone/feat/bias", "rule")]
    assert [e.path for e in report.skipped] == ["head/kernel", "head/bias"]
    assert report.ok


def test_mismatch_reported_and_left_initialized(keras):
    src = randomize(keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="fc")]), 1)
    tgt = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
    before = values(tgt)
    report = surgery.transplant(src, tgt)
    assert [(e.path, e.source_shape, e.target_shape) for e in report.mismatched] == [
        ("fc/kernel", (4, 5), (4, 3)), ("fc/bias", (5,), (3,))]
    for k, v in values(tgt).items():
        np.testing.assert_array_equal(v, before[k])
    assert not report.ok
    with pytest.raises(CheckFailed) as e:
        surgery.transplant(src, tgt, strict=True)
    import re
    assert re.fullmatch(r"strict transplant into sequential(_\d+)? failed with 2 problems: "
                        r"fc/kernel: source fc/kernel \(4, 5\) vs target \(4, 3\); fc/bias: "
                        r"source fc/bias \(5,\) vs target \(3,\); nothing was changed or written",
                        str(e.value)), str(e.value)


def test_fit_adapter_and_lossy_flag(keras):
    src = randomize(keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="fc")]), 1)
    tgt = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
    rules = {"adapter": [{"target": "fc/*", "name": "slice"}]}
    with pytest.raises(RulesError) as e:
        surgery.transplant(src, tgt, rules)
    assert str(e.value) == ("fc/kernel: adapter 'slice' would drop source values (sliced (4, 5) "
                            "-> (4, 3)); add lossy = true to its rule to accept that")
    rules["adapter"][0]["lossy"] = True
    report = surgery.transplant(src, tgt, rules, strict=True)
    assert [e.adapter for e in report.adapted] == ["slice", "slice"]
    np.testing.assert_array_equal(tgt.get_layer("fc").kernel.numpy(),
                                  src.get_layer("fc").kernel.numpy()[:, :3])


def test_slice_keep_listed_units(keras):
    src = randomize(keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="fc")]), 1)
    tgt = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="fc")])
    rules = {"adapter": [{"target": "fc/*", "name": "slice", "keep": [4, 1], "lossy": True}]}
    report = surgery.transplant(src, tgt, rules, strict=True)
    assert report.adapted[0].note == "kept units [4, 1] of axis -1"
    np.testing.assert_array_equal(tgt.get_layer("fc").kernel.numpy(),
                                  src.get_layer("fc").kernel.numpy()[:, [4, 1]])


def test_rgb_to_gray_example_preserves_function(keras, samples, tmp_path):
    from surgery.sample_models.build import cnn_model
    gray = cnn_model(channels=1)
    report = surgery.transplant(samples["cnn"], gray, os.path.join(RULES, "rgb_to_gray.toml"))
    assert report.ok and [e.path for e in report.adapted] == ["block1_conv/kernel"]
    rgb = surgery.load_model(samples["cnn"])
    g = np.random.default_rng(0).uniform(size=(4, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(gray(g), rgb(np.repeat(g, 3, -1)), atol=1e-5)


def _torch_cnn_state(rng):
    return {
        "conv1.weight": rng.normal(size=(8, 3, 3, 3)).astype("float32"),
        "conv1.bias": rng.normal(size=8).astype("float32"),
        "bn1.weight": rng.normal(size=8).astype("float32"),
        "bn1.bias": rng.normal(size=8).astype("float32"),
        "bn1.running_mean": rng.normal(size=8).astype("float32"),
        "bn1.running_var": rng.uniform(0.5, 2, size=8).astype("float32"),
        "bn1.num_batches_tracked": np.array(100, dtype=np.int64),
        "fc.weight": rng.normal(size=(10, 8 * 6 * 6)).astype("float32"),
        "fc.bias": rng.normal(size=10).astype("float32"),
    }


def _torch_cnn_forward(s, x_nchw):
    h = T.conv2d(x_nchw, s["conv1.weight"], s["conv1.bias"])
    h = (h - s["bn1.running_mean"][None, :, None, None]) / np.sqrt(
        s["bn1.running_var"][None, :, None, None] + 1e-5)
    h = h * s["bn1.weight"][None, :, None, None] + s["bn1.bias"][None, :, None, None]
    h = np.maximum(h, 0)
    return T.linear(h.reshape(len(h), -1), s["fc.weight"], s["fc.bias"])


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_pytorch_cnn_state_dict_example(keras, tmp_path, fmt):
    state = _torch_cnn_state(np.random.default_rng(7))
    path = str(tmp_path / f"cnn.{fmt}")
    write_safetensors(state, path) if fmt == "safetensors" else np.savez(path, **state)
    L = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(8, 3, name="conv"),
                              L.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn"),
                              L.ReLU(), L.Flatten(name="flat"), L.Dense(10, name="fc")])
    report = surgery.transplant(path, model, os.path.join(RULES, "torch_cnn.toml"))
    assert report.ok and not report.unused
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype("float32")
    np.testing.assert_allclose(model(x.transpose(0, 2, 3, 1)), _torch_cnn_forward(state, x),
                               atol=1e-4)


def test_pytorch_lstm_state_dict_example(keras, tmp_path):
    rng = np.random.default_rng(8)
    V, E, H, C = 20, 6, 5, 3
    state = {"embed.weight": rng.normal(size=(V, E)), "lstm.weight_ih_l0":
             rng.normal(size=(4 * H, E)), "lstm.weight_hh_l0": rng.normal(size=(4 * H, H)),
             "lstm.bias_ih_l0": rng.normal(size=4 * H), "lstm.bias_hh_l0":
             rng.normal(size=4 * H), "head.weight": rng.normal(size=(C, H)),
             "head.bias": rng.normal(size=C)}
    state = {k: v.astype("float32") for k, v in state.items()}
    write_safetensors(state, str(tmp_path / "lstm.safetensors"))
    L = keras.layers
    model = keras.Sequential([keras.Input((7,), dtype="int32"), L.Embedding(V, E, name="embed"),
                              L.LSTM(H, name="encoder"), L.Dense(C, name="head")])
    report = surgery.transplant(str(tmp_path / "lstm.safetensors"), model,
                                os.path.join(RULES, "torch_lstm.toml"))
    assert report.ok and not report.unused
    ids = rng.integers(0, V, (2, 7))
    h = T.lstm(state["embed.weight"][ids], state["lstm.weight_ih_l0"],
               state["lstm.weight_hh_l0"], state["lstm.bias_ih_l0"], state["lstm.bias_hh_l0"])
    want = T.linear(h[:, -1], state["head.weight"], state["head.bias"])
    np.testing.assert_allclose(model(ids), want, atol=1e-4)


# ------------------------------------------------------------------ strict, dry run, report

def test_dry_run_touches_nothing(keras, samples, tmp_path):
    src = samples["cnn"]
    tgt = randomize(keras.models.clone_model(surgery.load_model(src)), seed=9)
    before = values(tgt)
    report = surgery.transplant(src, tgt, dry_run=True)
    assert report.dry_run and len(report.copied) == 19
    for k, v in values(tgt).items():
        np.testing.assert_array_equal(v, before[k])
    before_file = sha256(samples["cnn"])
    r = CliRunner().invoke(main, ["transplant", src, src, "--dry-run"])
    assert r.exit_code == 0 and "(dry run: nothing changed)" in r.output
    assert sha256(samples["cnn"]) == before_file


def test_nonfinite_reported_and_refused_in_strict(keras, tmp_path):
    w = np.ones((4, 3), np.float32)
    w[0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", **{"fc/kernel": w, "fc/bias": np.zeros(3, np.float32)})
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
    report = surgery.transplant(str(tmp_path / "nan.npz"), model, dry_run=True)
    assert report.nonfinite == (("fc/kernel", 1),) and not report.ok
    before = values(model)
    with pytest.raises(CheckFailed, match="fc/kernel: 1 non-finite values"):
        surgery.transplant(str(tmp_path / "nan.npz"), model, strict=True)
    for k, v in values(model).items():
        np.testing.assert_array_equal(v, before[k])


def test_report_table_json_and_grouping(samples, tmp_path):
    out = str(tmp_path / "o.keras")
    report = surgery.transplant_file(samples["cnn"], samples["cnn"], out)
    text = str(report)
    assert "block{1..3}_bn/gamma" in text and "19 copied" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["counts"]["copied"] == 19 and data["ok"] is True
    assert data["entries"][0] == {"path": "block1_conv/kernel", "status": "copied",
                                  "source": "block1_conv/kernel", "matched_by": "exact",
                                  "adapter": None, "source_shape": [3, 3, 3, 16],
                                  "target_shape": [3, 3, 3, 16], "note": ""}


def test_file_to_file_identity_is_bitwise_and_loads(samples, tmp_path):
    import subprocess
    import sys
    for name in ("cnn", "lstm"):
        out = str(tmp_path / f"{name}.keras")
        code = ("import sys, surgery; surgery.transplant_file(sys.argv[1], sys.argv[1], "
                "sys.argv[2]); assert 'tensorflow' not in sys.modules")
        r = subprocess.run([sys.executable, "-c", code, samples[name], out], cwd=ROOT,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert_same(samples[name], out)
        model = surgery.load_model(out)
        assert model.count_params() == surgery.inspect(samples[name]).total_params


# ------------------------------------------------------------------ CLI, verify, bad input

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_transplant_json_and_verify(samples, tmp_path):
    out = tmp_path / "o.keras"
    r = run("transplant", samples["lstm"], samples["lstm"], "-o", out, "--json")
    assert r.exit_code == 0 and json.loads(r.output)["counts"]["copied"] == 6
    out2 = tmp_path / "v.keras"
    r = run("transplant", samples["lstm"], samples["lstm"], "-o", out2, "--verify")
    assert r.exit_code == 0 and "verify: same outputs" in r.output
    assert_same(samples["lstm"], str(out2))


def test_cli_verify_failure_writes_nothing(samples, tmp_path):
    out = tmp_path / "v.keras"
    rules = tmp_path / "r.toml"
    rules.write_text('skip = ["head/*"]\n')
    r = run("transplant", samples["lstm"], samples["lstm"], "-o", out, "--verify", "--rules",
            rules)
    # Skipping the head leaves the target's own head, which is the source's (same file): the
    # function is kept, verify passes and OUT is written with the source's weights.
    assert r.exit_code == 0 and out.exists(), r.output
    assert surgery.diff(samples["lstm"], str(out)).identical
    from surgery.sample_models.build import lstm_model
    fresh = tmp_path / "fresh.keras"
    lstm_model().save(fresh)
    failed = tmp_path / "failed.keras"
    r = run("transplant", samples["lstm"], fresh, "-o", failed, "--verify", "--rules", rules)
    assert r.exit_code == 1 and not failed.exists() and leftovers(str(tmp_path)) == []
    assert f"error: {fresh}: outputs differ from {samples['lstm']} by " in r.output


def test_cli_strict_failure_exit_1_nothing_written(samples, tmp_path):
    from surgery.sample_models.build import cnn_model
    gray = tmp_path / "gray.keras"
    cnn_model(channels=1).save(gray)
    out = tmp_path / "o.keras"
    r = run("transplant", samples["cnn"], gray, "-o", out, "--strict")
    assert r.exit_code == 1 and not out.exists() and leftovers(str(tmp_path)) == []
    assert "error: strict transplant into " in r.output
    r = run("transplant", samples["cnn"], gray, "-o", out, "--rules",
            os.path.join(RULES, "rgb_to_gray.toml"))
    assert r.exit_code == 0 and out.exists()


def _rules_error(tmp_path, text, *args):
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p, run("transplant", *args, "--rules", p, "--dry-run")


@pytest.mark.parametrize("text,message", [
    ('match = "exact"\nfrobnicate = 1\n', "{p}:2: unknown key 'frobnicate'; rules know adapter, "
     "match, rename, skip, strict"),
    ('strict = "yes"\n', "{p}:1: 'strict' must be true or false, got str 'yes'"),
    ('[[rename]]\nfrom = "(a"\nto = "b"\n', "{p}:2: invalid regex in 'from' '(a': missing ), "
     "unterminated subpattern at position 0"),
    ('[[rename]]\nfrom = "(a+)+$"\nto = "b"\n', "{p}:2: 'from' pattern '(a+)+$' nests "
     "repetition inside repetition, which can take exponential time; simplify it"),
    ('[[adapter]]\ntarget = "head/kernel"\nname = "squash"\n', "{p}:3: unknown adapter 'squash'; "
     "known adapters: adapt_in_channels, batchnorm_from_torch, conv_from_torch"),
    ('[[adapter]]\ntarget = "block1_conv/kernel"\nname = "adapt_in_channels"\nmodee = "sum"\n',
     "{p}:4: unknown key 'modee' for adapter 'adapt_in_channels'; its options: indices, mode"),
])
def test_rules_errors(samples, tmp_path, text, message):
    p, r = _rules_error(tmp_path, text, samples["cnn"], samples["cnn"])
    assert r.exit_code == 2
    assert r.output.startswith("error: " + message.format(p=p)), r.output
    assert r.output.count("\n") == 1


def test_rule_matching_nothing_warns_then_fails_strict(samples, tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('[[rename]]\nfrom = "^backbone/"\nto = "trunk/"\n')
    r = run("transplant", samples["cnn"], samples["cnn"], "--dry-run", "--rules", p)
    assert r.exit_code == 0
    assert "warning: rename '^backbone/' -> 'trunk/' matches no source key in" in r.output
    r = run("transplant", samples["cnn"], samples["cnn"], "-o", tmp_path / "o.keras", "--rules",
            p, "--strict")
    assert r.exit_code == 1 and not (tmp_path / "o.keras").exists()


def test_two_sources_onto_one_target(keras):
    src = {"a": np.ones((4, 3), np.float32), "b": np.ones((4, 3), np.float32)}
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
    with pytest.raises(RulesError) as e:
        surgery.transplant(surgery.open_weights(_npz(src)), model,
                           {"rename": [{"from": "^[ab]$", "to": "fc/kernel"}]})
    assert str(e.value) == ("two source tensors map onto 'fc/kernel': 'a' and 'b'; fix the "
                            "renames or skip one of them")


def _npz(arrays):
    import tempfile
    path = os.path.join(tempfile.mkdtemp(), "w.npz")
    np.savez(path, **arrays)
    return path


def test_adapter_options_that_dont_fit(samples, keras):
    from surgery.sample_models.build import cnn_model
    gray = cnn_model(channels=2)
    rules = {"adapter": [{"target": "block1_conv/kernel", "name": "adapt_in_channels",
                          "mode": "repeat"}]}
    with pytest.raises(ShapeError) as e:
        surgery.transplant(samples["cnn"], gray, rules)
    assert str(e.value) == (
        "block1_conv/kernel: adapter 'adapt_in_channels' can't map source (3, 3, 3, 16) onto "
        "target (3, 3, 2, 16): adapt_in_channels: mode 'repeat' needs the new channel count to "
        "be a multiple of the old one; kernel (3, 3, 3, 16) has 3, asked for 2; use 'sum', "
        "'mean' or 'select'")


def test_unrecognised_source_and_output_equal_to_input(samples, tmp_path):
    bad = tmp_path / "x.bin"
    bad.write_text("hello")
    r = run("transplant", bad, samples["cnn"], "-o", tmp_path / "o.keras")
    assert r.exit_code == 2 and "format not recognised" in r.output
    before = sha256(samples["cnn"])
    r = run("transplant", samples["lstm"], samples["cnn"], "-o", samples["cnn"], "--overwrite")
    assert r.exit_code == 2
    assert r.output == (f"error: {samples['cnn']}: this is the input {samples['cnn']}; write "
                        "the output to another path (surgery never writes over its input)\n")
    assert sha256(samples["cnn"]) == before


def test_missing_rules_file(samples, tmp_path):
    r = run("transplant", samples["cnn"], samples["cnn"], "--dry-run", "--rules",
            tmp_path / "nope.toml")
    assert r.exit_code == 2 and r.output == f"error: {tmp_path / 'nope.toml'}: no such rules " \
                                            "file\n"


def test_transplant_refuses_a_path_target(samples):
    with pytest.raises(InputError, match="transplant fills a live model"):
        surgery.transplant(samples["cnn"], samples["cnn"])
