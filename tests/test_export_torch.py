"""Keras -> PyTorch state-dict export (issue #16 items 6, 7, 9): the exported tensors, run
through PyTorch's documented equations in numpy (tests/torch_reference.py, PyTorch's NCHW and
(gates*hidden, in) layouts), give the Keras model's outputs; the CLI writes the same file; the
transplant report groups only rows that say the same. Real PyTorch checks both directions in
tests/interop (make test-interop)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from surgery.cli import main
from surgery.outcomes import Outcome
from surgery.transfer.report import Entry, TransplantReport
from tests import torch_reference as T
from tests.conftest import ROOT
from tests.conftest import sha256

CNN_RULES = """# Keras conv -> bn -> relu -> pool -> flatten -> fc as PyTorch's
#   features = [Conv2d(2, 3, 3), BatchNorm2d(3, eps=1e-3), ReLU(), MaxPool2d(2)]; flatten; fc
[[export]]
source = "conv/kernel"
name = "conv_to_torch"
target = "features.0.weight"
[[export]]
source = "bn"
name = "batchnorm_to_torch"
eps = 0.001
targets = { weight = "features.1.weight", bias = "features.1.bias", running_mean = "features.1.running_mean", running_var = "features.1.running_var", num_batches_tracked = "features.1.num_batches_tracked" }
[[export]]
source = "fc/kernel"
name = "linear_to_torch"
target = "fc.weight"
feature_shape = [2, 2, 3]
[[rename]]
from = '^conv/bias$'
to = "features.0.bias"
[[rename]]
from = '^fc/bias$'
to = "fc.bias"
"""


@pytest.fixture(scope="module")
def cnn(keras, tmp_path_factory):
    """A Keras Conv-BN-ReLU-Pool -> Flatten -> Dense CNN, BatchNorm statistics randomized, and
    its rules file."""
    L = keras.layers
    model = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(3, 3, name="conv"),
                              L.BatchNormalization(epsilon=1e-3, name="bn"), L.ReLU(),
                              L.MaxPooling2D(2), L.Flatten(name="flat"), L.Dense(4, name="fc")])
    rng = np.random.default_rng(3)
    bn = model.get_layer("bn")
    bn.set_weights([rng.normal(1, .3, 3), rng.normal(0, .3, 3), rng.normal(0, .5, 3),
                    rng.uniform(.2, 2, 3)])
    folder = tmp_path_factory.mktemp("export_cnn")
    model.save(folder / "cnn.keras")
    (folder / "cnn.toml").write_text(CNN_RULES)
    return model, str(folder / "cnn.keras"), str(folder / "cnn.toml")


def _torch_cnn(s, x_nhwc):
    """The PyTorch module of CNN_RULES's comment, in numpy, on NCHW inputs."""
    x = x_nhwc.transpose(0, 3, 1, 2).astype(np.float64)
    h = T.conv2d(x, s["features.0.weight"], s["features.0.bias"])
    h = (h - s["features.1.running_mean"][None, :, None, None]) / np.sqrt(
        s["features.1.running_var"][None, :, None, None] + 1e-3) \
        * s["features.1.weight"][None, :, None, None] + s["features.1.bias"][None, :, None, None]
    h = np.maximum(h, 0)
    n, c, hh, ww = h.shape
    h = h.reshape(n, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))  # MaxPool2d(2)
    return T.linear(h.reshape(n, -1), s["fc.weight"], s["fc.bias"])  # torch.flatten(h, 1)


def _read(path):
    with surgery.open_weights(path) as w:
        return {k: w.read(k) for k in w}


def test_flatten_dense_cnn_exports_to_a_channels_first_module(cnn, tmp_path):
    model, _, rules = cnn
    out = str(tmp_path / "cnn.safetensors")
    report = surgery.export_state_dict(model, out, rules)
    s = _read(out)
    assert sorted(s) == sorted(report) == sorted(
        ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
         "features.1.running_mean", "features.1.running_var",
         "features.1.num_batches_tracked", "fc.weight", "fc.bias"])
    assert s["features.1.num_batches_tracked"].shape == () and \
        s["features.1.num_batches_tracked"].dtype == np.int64
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 2)).astype("float32")
    want = np.asarray(model(x, training=False))
    np.testing.assert_allclose(_torch_cnn(s, x), want, atol=1e-5)
    assert report.notes == ("bn: epsilon 0.001; build the PyTorch BatchNorm with eps=0.001 "
                            "(PyTorch's default is 1e-05)",)
    # Without feature_shape the rows stay in NHWC order: the same check must catch that.
    s2 = dict(s, **{"fc.weight": model.get_layer("fc").kernel.numpy().T})
    assert np.abs(_torch_cnn(s2, x) - want).max() > 1e-2


def test_recurrent_stack_exports_to_torch_lstm_bilstm_gru(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((6, 3)), L.LSTM(5, return_sequences=True, name="lstm"),
                              L.Bidirectional(L.LSTM(4, return_sequences=True), name="bi"),
                              L.GRU(3, name="gru"), L.Dense(2, name="fc")])
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(0, .5, w.shape) for w in model.get_weights()])

    def rnn(source, name, module, suffix=""):
        return {"source": source, "name": name, "targets": {
            r: f"{module}.{k}_l0{suffix}" for r, k in (("w_ih", "weight_ih"),
                                                      ("w_hh", "weight_hh"),
                                                      ("b_ih", "bias_ih"), ("b_hh", "bias_hh"))}}
    rules = {"export": [rnn("lstm", "lstm_to_torch", "lstm"),
                        rnn("bi/forward", "lstm_to_torch", "bi"),
                        rnn("bi/backward", "lstm_to_torch", "bi", "_reverse"),
                        rnn("gru", "gru_to_torch", "gru"),
                        {"source": "fc/kernel", "name": "linear_to_torch", "target": "fc.weight"}],
             "rename": [{"from": "^fc/bias$", "to": "fc.bias"}]}
    out = str(tmp_path / "seq.safetensors")
    surgery.export_state_dict(model, out, rules)
    s = _read(out)
    assert len(s) == 4 * 4 + 2

    def lstm(x, m, suffix=""):
        return T.lstm(x, *(s[f"{m}.{k}_l0{suffix}"] for k in ("weight_ih", "weight_hh",
                                                              "bias_ih", "bias_hh")))
    x = rng.normal(size=(4, 6, 3))
    h = lstm(x, "lstm")
    h = np.concatenate([lstm(h, "bi"), lstm(h[:, ::-1], "bi", "_reverse")[:, ::-1]], axis=-1)
    h = T.gru(h, *(s[f"gru.{k}_l0"] for k in ("weight_ih", "weight_hh", "bias_ih",
                                              "bias_hh")))[:, -1]
    got = T.linear(h, s["fc.weight"], s["fc.bias"])
    np.testing.assert_allclose(got, np.asarray(model(x.astype("float32"))), atol=1e-5)


def test_cli_export_torch(cnn, tmp_path):
    model, path, rules = cnn
    out = str(tmp_path / "m.safetensors")
    before = sha256(path)
    r = CliRunner().invoke(main, ["export", path, "--format", "torch", "-o", out,
                                  "--rules", rules])
    assert r.exit_code == 0, r.output
    assert f"\n{'fc.weight':<30}  <- fc/kernel (linear_to_torch) (4, 12); Keras Dense after " \
           "Flatten (NHWC) -> PyTorch Linear after flatten (NCHW)\n" in r.output
    assert r.output.rstrip().endswith(f"wrote {out} (torch state dict, 9 tensors)")
    x = np.random.default_rng(2).normal(size=(4, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(_torch_cnn(_read(out), x),
                               np.asarray(model(x, training=False)), atol=1e-5)
    assert sha256(path) == before
    # The output is checked before the model is read: an existing output, a missing model.
    r = CliRunner().invoke(main, ["export", str(tmp_path / "absent.keras"), "--format", "torch",
                                  "-o", out, "--rules", rules])
    assert r.exit_code == 2 and r.output.strip() == \
        f"error: {out}: already exists; pass --overwrite (overwrite=True) to replace it"
    r = CliRunner().invoke(main, ["export", path, "--format", "torch", "-o", path,
                                  "--rules", rules, "--overwrite"])
    assert r.exit_code == 2 and r.output.strip() == (
        f"error: {path}: this is the input {path}; write the output to another path (surgery "
        "never writes over its input)")
    assert sha256(path) == before


@pytest.mark.parametrize("args, message", [
    (["--format", "torch", "-o", "x.safetensors"], "--format torch needs --rules R.toml"),
    (["--format", "hub", "-o", "d", "--rules", "r.toml"], "--rules applies to --format torch"),
    (["--format", "torch", "-o", "x.pt", "--rules", "r.toml"],
     "x.pt: a PyTorch state dict is written as .safetensors or .npz"),
])
def test_cli_export_torch_usage(cnn, tmp_path, args, message):
    (tmp_path / "r.toml").write_text("")
    r = CliRunner().invoke(main, ["export", cnn[1], *[a if a in ("torch", "hub") or
                                                      a.startswith("-") else
                                                      str(tmp_path / a) for a in args]])
    assert r.exit_code == 2 and message.replace("x.pt", str(tmp_path / "x.pt")) in r.output, \
        r.output
    assert sorted(os.listdir(tmp_path)) == ["r.toml"]


def _entry(path, source, shape_in, shape_out, note, adapter="linear_from_torch"):
    return Entry(path, Outcome.CONVERTED, source, "rule", adapter, shape_in, shape_out, note)


def test_report_groups_only_rows_that_say_the_same():
    flat = "PyTorch Linear after flatten (NCHW) -> Keras Dense after Flatten (NHWC)"
    plain = "PyTorch Linear -> Keras Dense"
    report = TransplantReport("vgg.safetensors", "vgg.keras", (
        _entry("fc1/kernel", "fc1.weight", (4096, 25088), (25088, 4096), flat),
        _entry("fc2/kernel", "fc2.weight", (4096, 4096), (4096, 4096), plain),
        _entry("fc3/kernel", "fc3.weight", (4096, 4096), (4096, 4096), plain),
        _entry("conv1/kernel", "conv1.weight", (8, 3, 3, 3), (3, 3, 3, 8), "", "conv_from_torch"),
        _entry("conv2/kernel", "conv2.weight", (16, 8, 3, 3), (3, 3, 8, 16), "",
               "conv_from_torch"),
        Entry("bn1/gamma", Outcome.COPIED, "bn1/gamma", "exact", None, (8,), (8,)),
        Entry("bn2/gamma", Outcome.COPIED, "bn2/gamma", "exact", None, (16,), (16,))))
    rows = str(report).splitlines()[3:9]
    assert rows == [
        "fc1/kernel       converted   <- fc1.weight via linear_from_torch (4096, 25088) -> "
        f"(25088, 4096); {flat}",
        "fc{2..3}/kernel  converted   <- fc{2..3}.weight via linear_from_torch (4096, 4096) -> "
        f"(4096, 4096); {plain}",
        "conv1/kernel     converted   <- conv1.weight via conv_from_torch (8, 3, 3, 3) -> "
        "(3, 3, 3, 8)",
        "conv2/kernel     converted   <- conv2.weight via conv_from_torch (16, 8, 3, 3) -> "
        "(3, 3, 8, 16)",
        "bn{1..2}/gamma   copied      <- bn{1..2}/gamma (exact)",
        "",
    ]


def test_readme_export_command(keras, tmp_path, monkeypatch):
    """The README's `surgery export ... --format torch` line, run as written: the state dict
    it writes, through PyTorch's Embedding/LSTM/Linear equations, gives the sample model's
    logits on the sample task's sequences."""
    import re
    import shlex
    import shutil

    from sample_models.tasks import make_motifs
    from tests.conftest import ROOT, SAMPLES
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    lines = [line for block in re.findall(r"```sh\n(.*?)```", text, re.S)
             for line in block.splitlines() if line.startswith("surgery export") and
             "--format torch -o lstm.safetensors" in line]
    assert len(lines) == 1
    monkeypatch.chdir(tmp_path)
    os.symlink(os.path.join(ROOT, "examples"), "examples")
    os.mkdir("sample_models")
    shutil.copy(os.path.join(SAMPLES, "lstm.keras"), "sample_models/lstm.keras")
    r = CliRunner().invoke(main, shlex.split(lines[0])[1:])
    assert r.exit_code == 0, r.output
    s = _read("lstm.safetensors")
    model = keras.saving.load_model("sample_models/lstm.keras")
    ids, _ = make_motifs(16, seed=2)
    h = T.lstm(s["embed.weight"][ids], *(s[f"lstm.{k}_l0"] for k in ("weight_ih", "weight_hh",
                                                                      "bias_ih", "bias_hh")))
    encoded = np.asarray(keras.Model(model.inputs, model.get_layer("encoder").output)([ids]))
    np.testing.assert_allclose(h[:, -1], encoded, atol=1e-5)
    head = model.get_layer("head")  # softmax after it: compare the logits
    np.testing.assert_allclose(T.linear(h[:, -1], s["head.weight"], s["head.bias"]),
                               encoded @ head.kernel.numpy() + head.bias.numpy(), atol=1e-5)


def test_export_sharded_equals_the_single_file(tmp_path):
    """--max-shard-size writes a Hugging Face index + shards holding exactly the tensors of
    the single-file export (read back through the index)."""
    import surgery

    lstm = os.path.join(ROOT, "sample_models", "lstm.keras")
    rules = os.path.join(ROOT, "examples", "rules", "torch_lstm_export.toml")
    single, index = str(tmp_path / "one.safetensors"), str(tmp_path / "m.safetensors.index.json")
    for out, extra in ((single, []), (index, ["--max-shard-size", "10KB"])):
        r = CliRunner().invoke(main, ["export", lstm, "--format", "torch", "-o", out,
                                      "--rules", rules, *extra])
        assert r.exit_code == 0, r.output
    assert len([n for n in os.listdir(tmp_path) if n.startswith("m-0")]) > 1
    with surgery.open_weights(single) as a, surgery.open_weights(index) as b:
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a.read(key), b.read(key))
