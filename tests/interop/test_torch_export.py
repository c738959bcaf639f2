"""Keras -> PyTorch against PyTorch itself (issue #16 acceptance, `make test-interop`): a Keras
Conv-BN-ReLU-Pool x2 -> Flatten -> Dense CNN and an Embedding -> LSTM -> BiLSTM -> GRU -> Dense
model, exported by `surgery export --format torch` / `export_state_dict`, load into ordinary
PyTorch modules with `load_state_dict(strict=True)` and give the Keras outputs (logits) to 1e-5
on the sample tasks' own data. The PyTorch modules use torchvision's naming (`features.N`,
`classifier`); BatchNorm statistics are randomized and every eps is explicit."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from surgery.sample_models.tasks import VOCAB, make_motifs, make_shapes
from surgery.cli import main

pytestmark = pytest.mark.interop
torch = pytest.importorskip("torch")
nn = torch.nn
load_file = pytest.importorskip("safetensors.torch").load_file

ATOL = 1e-5
EPS = (1e-3, 1e-5)  # block 1 keeps Keras's default epsilon, block 2 uses PyTorch's

CNN_RULES = """# Keras CNN -> the PyTorch module VGGish below
[[export]]
source = "conv1/kernel"
name = "conv_to_torch"
target = "features.0.weight"
[[export]]
source = "bn1"
name = "batchnorm_to_torch"
eps = 0.001
targets = { weight = "features.1.weight", bias = "features.1.bias", running_mean = "features.1.running_mean", running_var = "features.1.running_var", num_batches_tracked = "features.1.num_batches_tracked" }
[[export]]
source = "conv2/kernel"
name = "conv_to_torch"
target = "features.4.weight"
[[export]]
source = "bn2"
name = "batchnorm_to_torch"
targets = { weight = "features.5.weight", bias = "features.5.bias", running_mean = "features.5.running_mean", running_var = "features.5.running_var", num_batches_tracked = "features.5.num_batches_tracked" }
[[export]]
source = "fc/kernel"
name = "linear_to_torch"
target = "classifier.weight"
feature_shape = [4, 4, 16]
[[rename]]
from = '^conv1/bias$'
to = "features.0.bias"
[[rename]]
from = '^conv2/bias$'
to = "features.4.bias"
[[rename]]
from = '^fc/bias$'
to = "classifier.bias"
"""


class VGGish(nn.Module):
    """torchvision-style: `features` (conv, bn, relu, pool) x 2, flatten, `classifier`."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, eps=EPS[0]), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16, eps=EPS[1]), nn.ReLU(),
            nn.MaxPool2d(2))
        self.classifier = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class Sequence(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.lstm = nn.LSTM(8, 12, batch_first=True)
        self.bilstm = nn.LSTM(12, 6, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(12, 7, batch_first=True)
        self.fc = nn.Linear(7, 4)

    def forward(self, ids):
        h, _ = self.lstm(self.embed(ids))
        h, _ = self.bilstm(h)
        h, _ = self.gru(h)
        return self.fc(h[:, -1])


def _randomize(model, seed):
    """Every weight random; BatchNorm variances positive (randomized statistics)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for v in layer.weights:
            if "variance" in v.path:
                values.append(rng.uniform(0.3, 2.0, v.shape))
            elif "gamma" in v.path:
                values.append(rng.normal(1.0, 0.3, v.shape))
            else:
                values.append(rng.normal(0.0, 0.3, v.shape))
        layer.set_weights([a.astype("float32") for a in values])
    return model


def _keras_cnn(keras):
    L = keras.layers
    return keras.Sequential([
        keras.Input((16, 16, 3)),
        L.Conv2D(8, 3, padding="same", name="conv1"),
        L.BatchNormalization(epsilon=EPS[0], name="bn1"), L.ReLU(), L.MaxPooling2D(2),
        L.Conv2D(16, 3, padding="same", name="conv2"),
        L.BatchNormalization(epsilon=EPS[1], name="bn2"), L.ReLU(), L.MaxPooling2D(2),
        L.Flatten(name="flat"), L.Dense(5, name="fc")], name="cnn")


def test_cnn_exports_to_a_pytorch_module(keras, tmp_path):
    model = _randomize(_keras_cnn(keras), 0)
    model.save(tmp_path / "cnn.keras")
    (tmp_path / "rules.toml").write_text(CNN_RULES)
    out = str(tmp_path / "cnn.safetensors")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "cnn.keras"), "--format", "torch",
                                  "-o", out, "--rules", str(tmp_path / "rules.toml")])
    assert r.exit_code == 0, r.output
    assert "note: bn1: epsilon 0.001; build the PyTorch BatchNorm with eps=0.001" in r.output
    module = VGGish()
    module.load_state_dict(load_file(out), strict=True)
    module.eval()
    images, _ = make_shapes(64, seed=5, size=16)
    noise = np.random.default_rng(1).uniform(size=(16, 16, 16, 3)).astype("float32")
    for x in (images, noise):
        want = np.asarray(model(x, training=False))
        with torch.no_grad():
            got = module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        diff = float(np.abs(got - want).max())
        print(f"cnn export: max |torch - keras| logits = {diff:.2e} (logits up to "
              f"{np.abs(want).max():.1f})")
        assert diff < ATOL


def test_sequence_model_exports_to_pytorch_rnns(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([
        keras.Input((None,), dtype="int32"), L.Embedding(VOCAB, 8, name="embed"),
        L.LSTM(12, return_sequences=True, name="lstm"),
        L.Bidirectional(L.LSTM(6, return_sequences=True), name="bilstm"),
        L.GRU(7, name="gru"), L.Dense(4, name="fc")], name="seq")
    _randomize(model, 1)

    def rnn(source, name, module, suffix=""):
        return {"source": source, "name": name, "targets": {
            role: f"{module}.{key}_l0{suffix}" for role, key in (
                ("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"),
                ("b_hh", "bias_hh"))}}
    rules = {"rename": [{"from": "^embed/embeddings$", "to": "embed.weight"},
                        {"from": "^fc/bias$", "to": "fc.bias"}],
             "export": [rnn("lstm", "lstm_to_torch", "lstm"),
                        rnn("bilstm/forward", "lstm_to_torch", "bilstm"),
                        rnn("bilstm/backward", "lstm_to_torch", "bilstm", "_reverse"),
                        rnn("gru", "gru_to_torch", "gru"),
                        {"source": "fc/kernel", "name": "linear_to_torch", "target": "fc.weight"}]}
    out = str(tmp_path / "seq.safetensors")
    surgery.export_state_dict(model, out, rules)
    module = Sequence()
    module.load_state_dict(load_file(out), strict=True)
    module.eval()
    ids, _ = make_motifs(64, seed=3)
    want = np.asarray(model(ids))
    with torch.no_grad():
        got = module(torch.from_numpy(ids.astype(np.int64))).numpy()
    diff = float(np.abs(got - want).max())
    print(f"sequence export: max |torch - keras| logits = {diff:.2e}")
    assert diff < ATOL
