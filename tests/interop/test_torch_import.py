"""PyTorch -> Keras against PyTorch itself (`make test-interop`): real PyTorch modules' state
dicts, saved with safetensors, transplanted with rules into Keras models give PyTorch's logits
to 1e-5 on the sample tasks' data; a Keras BatchNorm whose epsilon differs from PyTorch's eps is
refused, and the difference it would have made is measured."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from surgery.sample_models.tasks import make_motifs, make_shapes
from surgery.cli import main
from surgery.errors import RulesError
from tests.interop.test_torch_export import EPS, VGGish, Sequence, _keras_cnn

pytestmark = pytest.mark.interop
torch = pytest.importorskip("torch")
save_file = pytest.importorskip("safetensors.torch").save_file

ATOL = 1e-5
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CNN_RULES = """strict = true
[[adapter]]
target = "conv1/kernel"
source = "features.0.weight"
name = "conv_from_torch"
[[adapter]]
target = "bn1"
name = "batchnorm_from_torch"
eps = 0.001
sources = { weight = "features.1.weight", bias = "features.1.bias", running_mean = "features.1.running_mean", running_var = "features.1.running_var", num_batches_tracked = "features.1.num_batches_tracked" }
[[adapter]]
target = "conv2/kernel"
source = "features.4.weight"
name = "conv_from_torch"
[[adapter]]
target = "bn2"
name = "batchnorm_from_torch"
sources = { weight = "features.5.weight", bias = "features.5.bias", running_mean = "features.5.running_mean", running_var = "features.5.running_var", num_batches_tracked = "features.5.num_batches_tracked" }
[[adapter]]
target = "fc/kernel"
source = "classifier.weight"
name = "linear_from_torch"
feature_shape = [4, 4, 16]
[[rename]]
from = '^features\\.0\\.bias$'
to = "conv1/bias"
[[rename]]
from = '^features\\.4\\.bias$'
to = "conv2/bias"
[[rename]]
from = '^classifier\\.bias$'
to = "fc/bias"
"""


def _randomized(module, seed):
    """Every parameter and BatchNorm statistic random (variances positive), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(100)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.7 + 0.3)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return module.eval()


def _torch_logits(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def test_pytorch_cnn_into_keras(keras, tmp_path):
    module = _randomized(VGGish(), 0)
    state = str(tmp_path / "vgg.safetensors")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, state)
    (tmp_path / "rules.toml").write_text(CNN_RULES)
    _keras_cnn(keras).save(tmp_path / "target.keras")
    out = str(tmp_path / "out.keras")
    r = CliRunner().invoke(main, ["transplant", state, str(tmp_path / "target.keras"), "-o", out,
                                  "--rules", str(tmp_path / "rules.toml"), "--strict"])
    assert r.exit_code == 0, r.output
    model = keras.saving.load_model(out)
    images, _ = make_shapes(64, seed=6, size=16)
    want = _torch_logits(module, images.transpose(0, 3, 1, 2).copy())
    diff = float(np.abs(np.asarray(model(images, training=False)) - want).max())
    print(f"cnn import: max |keras - torch| logits = {diff:.2e}")
    assert diff < ATOL


def test_batchnorm_epsilon_mismatch_is_refused_and_would_matter(keras, tmp_path):
    module = _randomized(VGGish(), 1)
    with torch.no_grad():  # small variances, as deep layers of trained networks have
        module.features[5].running_var.uniform_(0.002, 0.02)
    state = str(tmp_path / "vgg.safetensors")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, state)
    L = keras.layers
    target = keras.Sequential([  # bn2 left at Keras's default 1e-3; PyTorch's is 1e-5
        keras.Input((16, 16, 3)), L.Conv2D(8, 3, padding="same", name="conv1"),
        L.BatchNormalization(epsilon=EPS[0], name="bn1"), L.ReLU(), L.MaxPooling2D(2),
        L.Conv2D(16, 3, padding="same", name="conv2"), L.BatchNormalization(name="bn2"),
        L.ReLU(), L.MaxPooling2D(2), L.Flatten(name="flat"), L.Dense(5, name="fc")])
    rules = tmp_path / "rules.toml"
    rules.write_text(CNN_RULES)
    with pytest.raises(RulesError) as e:
        surgery.transplant(state, target, str(rules))
    assert str(e.value).startswith("bn2: the PyTorch BatchNorm's eps is 1e-05 (the rule's eps, "
                                   "default 1e-05) but the Keras layer's epsilon is 0.001")
    rules.write_text(CNN_RULES.replace('name = "batchnorm_from_torch"\nsources',
                                       'name = "batchnorm_from_torch"\neps_mismatch = "ok"\n'
                                       'sources'))
    surgery.transplant(state, target, str(rules))
    images, _ = make_shapes(64, seed=6, size=16)
    want = _torch_logits(module, images.transpose(0, 3, 1, 2).copy())
    diff = float(np.abs(np.asarray(target(images, training=False)) - want).max())
    print(f"cnn import with Keras epsilon 1e-3 for PyTorch eps 1e-5: max diff = {diff:.2e}")
    assert diff > 1000 * ATOL


def test_pytorch_rnns_into_keras(keras, tmp_path):
    from sample_models.tasks import VOCAB
    module = _randomized(Sequence(), 2)
    state = str(tmp_path / "seq.safetensors")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, state)
    L = keras.layers
    model = keras.Sequential([
        keras.Input((None,), dtype="int32"), L.Embedding(VOCAB, 8, name="embed"),
        L.LSTM(12, return_sequences=True, name="lstm"),
        L.Bidirectional(L.LSTM(6, return_sequences=True), name="bilstm"),
        L.GRU(7, name="gru"), L.Dense(4, name="fc")])

    def rnn(target, name, module_name, suffix=""):
        return {"target": target, "name": name, "sources": {
            role: f"{module_name}.{key}_l0{suffix}" for role, key in (
                ("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"),
                ("b_hh", "bias_hh"))}}
    rules = {"rename": [{"from": r"^embed\.weight$", "to": "embed/embeddings"},
                        {"from": r"^fc\.bias$", "to": "fc/bias"}],
             "adapter": [rnn("lstm", "lstm_from_torch", "lstm"),
                         rnn("bilstm/forward", "lstm_from_torch", "bilstm"),
                         rnn("bilstm/backward", "lstm_from_torch", "bilstm", "_reverse"),
                         rnn("gru", "gru_from_torch", "gru"),
                         {"target": "fc/kernel", "source": "fc.weight",
                          "name": "linear_from_torch"}]}
    report = surgery.transplant(state, model, rules, strict=True)
    assert report.ok and not report.unused
    ids, _ = make_motifs(64, seed=4)
    want = _torch_logits(module, ids.astype(np.int64))
    diff = float(np.abs(np.asarray(model(ids)) - want).max())
    print(f"sequence import: max |keras - torch| logits = {diff:.2e}")
    assert diff < ATOL


def test_readme_torch_cnn_example_against_pytorch(keras, tmp_path):
    """examples/rules/torch_cnn.toml, with the PyTorch module its comment describes."""
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3)
            self.bn1 = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8 * 6 * 6, 10)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.bn1(self.conv1(x))), 1))

    module = _randomized(Net(), 3)
    state = str(tmp_path / "net.safetensors")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, state)
    L = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(8, 3, name="conv"),
                              L.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn"),
                              L.ReLU(), L.Flatten(name="flat"), L.Dense(10, name="fc")])
    surgery.transplant(state, model, os.path.join(ROOT, "examples", "rules", "torch_cnn.toml"))
    images, _ = make_shapes(32, seed=7, size=8)
    want = _torch_logits(module, images.transpose(0, 3, 1, 2).copy())
    diff = float(np.abs(np.asarray(model(images, training=False)) - want).max())
    print(f"examples/rules/torch_cnn.toml: max |keras - torch| logits = {diff:.2e}")
    assert diff < ATOL
