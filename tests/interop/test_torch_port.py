"""Issue #20 acceptance: zero-rule ports between PyTorch and Keras, against PyTorch itself
(`make test-interop`).

The zoo (tests/interop/zoo.py) holds PyTorch modules with torchvision's module and key names
(VGG16, ResNet18, ResNet50, MobileNetV2, a 2-layer bidirectional LSTM, a GRU, a Conv1D audio
model, and an ambiguous two-branch model), random weights and randomized BatchNorm statistics,
each with a Keras twin under its own layer names. For each model:

- the twin is the same function as the PyTorch module, proved without `surgery`: a
  hand-written numpy mapping (zoo.load_into) fills it and the outputs agree on the sample
  tasks' data (images drawn by make_shapes, make_motifs tokens; decaying tones for audio);
- `--from torch` with no rules (CLI for VGG16 and the BiLSTM, Python for the rest) gives
  PyTorch's outputs;
- the rules written with `--write-rules` reproduce the port bitwise, with no `--from`;
- `export --format torch --like template.safetensors` of the twin (with its own random weights)
  loads with `load_state_dict(strict=True)` and gives the Keras outputs;
- the two-branch model is refused with AmbiguousPort naming both branches.

Tolerance: every output comparison is made twice, on the same (float32-stored) weights.
- float64, strictly to 1e-5: PyTorch on a deep copy `.double()` with float64 inputs, Keras on
  the same twin architecture built under float64 (zoo.float64_twin) with the weights copied
  layer by layer, cast to float64. Float32 rounding is out of the way here (the two frameworks
  then agree to ~1e-13 on the CNNs), so 1e-5 holds for every model, ResNet50 included.
- float32, as users run it: to 1e-5, or, for a model whose float32 arithmetic alone is further
  than that from exact arithmetic (ResNet50: PyTorch float32 vs PyTorch float64 on the same
  weights and inputs differ by ~5e-5), to 3x PyTorch's own float32 error.
Both figures are printed per model and direction (run with -s). The weights are also checked
one by one, with no float noise: the ported Keras variables equal the hand mapping's arrays and
the exported tensors equal the ones the twin's weights came from, bitwise (an LSTM's two biases
only as their sum, to 1e-6).

Times: the whole file takes ~3.7 minutes on 2 shared cores, the float64 checks included
(VGG16 at 96x96: see zoo.py).
"""

from __future__ import annotations

import io
import tomllib
import zipfile

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.interop
torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")

import surgery  # noqa: E402
from surgery.cli import main  # noqa: E402
from tests.interop import zoo  # noqa: E402  (imports torch and keras)

ATOL = 1e-5
SEED, KERAS_SEED = 1, 2  # the torch module's weights; the Keras twin's own weights (export)
PORTED = ("vgg16", "resnet18", "resnet50", "mobilenet_v2", "bilstm", "gru", "audio_cnn")
VIA_CLI = ("vgg16", "bilstm")


class Built:
    """One zoo model's files: the random torch module, its state dict as .safetensors, the
    Keras twin saved as the port's target (its own initial weights), inputs, PyTorch's outputs
    on them, and (once the port test ran) the ported weights."""

    def __init__(self, name: str, folder):
        entry = zoo.ZOO[name]
        self.name, self.entry, self.folder = name, entry, folder
        self.module = zoo.random_module(name, SEED)
        self.state = str(folder / f"{name}.safetensors")
        st.save_file({k: v.contiguous() for k, v in self.module.state_dict().items()},
                     self.state)
        self.twin, self.mapping = entry.keras()  # reused by the tests that fill every weight
        self.target = str(folder / f"{name}_target.keras")
        self.twin.save(self.target)
        self.x = entry.inputs(entry.batch, 7)
        self.want = zoo.torch_logits(self.module, self.x)
        self.ported: str | None = None  # a .keras holding the port's weights
        self.rules: str | None = None  # the rules --write-rules wrote
        self._want64: np.ndarray | None = None
        self._twin64 = None

    @property
    def want64(self) -> np.ndarray:
        """PyTorch's float64 outputs (the module `.double()`) on the same inputs."""
        if self._want64 is None:
            self._want64 = zoo.torch_logits64(self.module, self.x)
        return self._want64

    def keras64(self, model) -> np.ndarray:
        """The float64 twin's outputs with `model`'s weights (cast to float64)."""
        if self._twin64 is None:
            self._twin64 = zoo.float64_twin(self.entry.keras)
        zoo.copy_weights(model, self._twin64)
        return zoo.keras_logits64(self._twin64, self.x)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            cache[name] = Built(name, folder)
        return cache[name]
    return get


def max_diff(what: str, got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, f"{what}: shapes {got.shape} vs {want.shape}"
    return float(np.abs(got - want).max())


def check_outputs(what: str, keras32: np.ndarray, torch32: np.ndarray, keras64: np.ndarray,
                  torch64: np.ndarray) -> tuple[float, float]:
    """Keras vs PyTorch on the same weights and inputs, in float64 strictly to ATOL, and in
    float32 to ATOL or, where PyTorch's own float32 error (float32 vs float64 outputs) is
    larger, to 3x that error. Prints both figures; returns (float64, float32) differences."""
    d64 = max_diff(f"{what} (float64)", keras64, torch64)
    d32 = max_diff(f"{what} (float32)", keras32, torch32)
    noise = max_diff(f"{what} (PyTorch float32 vs float64)", torch32, torch64)
    print(f"\n{what}: max |Keras - PyTorch| float64 {d64:.2e}, float32 {d32:.2e} (logits up "
          f"to {np.abs(torch32).max():.2f}; PyTorch float32 vs float64 {noise:.2e})")
    assert d64 <= ATOL, f"{what}: float64 outputs differ by {d64:.2e} > {ATOL}"
    assert d32 < max(ATOL, 3 * noise), \
        f"{what}: float32 outputs differ by {d32:.2e} > max({ATOL}, 3 x {noise:.2e})"
    return d64, d32


def stored_weights(path: str) -> dict[str, np.ndarray]:
    """Every dataset of a .keras archive's model.weights.h5, read with zipfile and h5py."""
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as f, \
            h5py.File(io.BytesIO(f.read()), "r") as h5:
        h5.visititems(lambda key, obj: out.__setitem__(key, obj[()])
                      if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_bitwise(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    assert sorted(a) == sorted(b), f"{what}: different variables"
    bad = [k for k in a if a[k].shape != b[k].shape or not np.array_equal(a[k], b[k])]
    assert not bad, f"{what}: {bad} differ"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def port(b: Built):
    """Ports `b` with no rules (CLI --from torch --write-rules for VIA_CLI, else
    surgery.transplant(layout="torch")); keeps the ported weights in a .keras; returns the
    ported model."""
    import keras

    b.ported = str(b.folder / f"{b.name}_ported.keras")
    if b.name in VIA_CLI:
        b.rules = str(b.folder / f"{b.name}_mapping.toml")
        r = cli("transplant", b.state, b.target, "-o", b.ported, "--from", "torch",
                "--write-rules", b.rules)
        assert r.exit_code == 0, r.output
        model = keras.saving.load_model(b.ported)
    else:
        model = keras.saving.load_model(b.target)
        report = surgery.transplant(b.state, model, layout="torch")
        assert report.ok, str(report)
        model.save(b.ported)
    return model


def assert_same_as_hand_mapping(b: Built, model) -> None:
    """Every ported variable equals the hand mapping's array: bitwise (transposes and
    permutations are exact), except an LSTM's summed bias (b_ih + b_hh), to 1e-6."""
    zoo.load_into(b.twin, zoo.state_arrays(b.module), b.mapping)
    for name, kind, prefix, _ in b.mapping:
        want = b.twin.get_layer(name).get_weights()
        got = model.get_layer(name).get_weights()
        for i, (u, v) in enumerate(zip(got, want)):
            where = f"{b.name}: {name} <- {prefix} (weight {i})"
            assert u.shape == v.shape, f"{where}: {u.shape} vs {v.shape}"
            if kind in ("lstm", "bilstm") and i % 3 == 2:
                np.testing.assert_allclose(u, v, rtol=0, atol=1e-6, err_msg=where)
            else:
                assert np.array_equal(u, v), f"{where}: max diff {np.abs(u - v).max():.2e}"


# ------------------------------------------------------------------------- the twins (no port)

@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_twin_is_the_same_function(built, name):
    """The reference for everything below, independent of surgery: the hand-written numpy
    mapping makes the Keras twin compute what the PyTorch module computes."""
    import keras

    b = built(name)
    zoo.load_into(b.twin, zoo.state_arrays(b.module), b.mapping)
    got = zoo.keras_logits(b.twin, b.x)
    assert got.shape[1] >= 10
    check_outputs(f"{name} twin (hand mapping)", got, b.want, b.keras64(b.twin), b.want64)
    # the float64 build restored Keras's defaults for every other test
    assert (keras.config.floatx(), keras.config.dtype_policy().name) == ("float32", "float32")
    assert (got.argmax(1) == b.want.argmax(1)).all()


def test_shortcut_first_resnet_twin_is_the_same_function(built):
    """The ResNet18 twin built keras.applications' way (each projection shortcut before the main
    path) is the same function too; the port test below uses it."""
    b = built("resnet18")
    model, mapping = zoo.resnet18_keras(shortcut_first=True)
    zoo.load_into(model, zoo.state_arrays(b.module), mapping)
    check_outputs("resnet18 shortcut-first twin", zoo.keras_logits(model, b.x), b.want,
                  shortcut_first_keras64(model, b.x), b.want64)


def shortcut_first_keras64(model, x) -> np.ndarray:
    twin64 = zoo.float64_twin(lambda: zoo.resnet18_keras(shortcut_first=True))
    zoo.copy_weights(model, twin64)
    return zoo.keras_logits64(twin64, x)


def test_the_twins_reference_can_fail(built):
    """The hand mapping's check is not vacuous: swapping the ambiguous model's two branches, or
    leaving out the flatten-row permutation before VGG's first Linear, changes the outputs."""
    b = built("two_branch")
    state = zoo.state_arrays(b.module)
    for role in ("weight", "bias"):
        state[f"left.{role}"], state[f"right.{role}"] = state[f"right.{role}"], \
            state[f"left.{role}"]
    zoo.load_into(b.twin, state, b.mapping)
    assert np.abs(zoo.keras_logits(b.twin, b.x) - b.want).max() > 1e-2
    module = zoo.randomize(zoo.VGG16(image_size=64), SEED)  # a 2x2x512 map before the flatten
    model, mapping = zoo.vgg16_keras(image_size=64)
    plain = [(n, "linear" if kind == "linear_flat" else kind, p, o) for n, kind, p, o in mapping]
    zoo.load_into(model, zoo.state_arrays(module), plain)
    x = zoo.make_shapes(4, seed=7, size=64)[0]
    assert np.abs(zoo.keras_logits(model, x) - zoo.torch_logits(module, x)).max() > 1e-2


# ---------------------------------------------------------------------- PyTorch -> Keras port

@pytest.mark.parametrize("name", PORTED)
def test_port_from_torch_without_rules(built, name):
    b = built(name)
    model = port(b)
    check_outputs(f"{name} port --from torch", zoo.keras_logits(model, b.x), b.want,
                  b.keras64(model), b.want64)
    assert_same_as_hand_mapping(b, model)


@pytest.mark.parametrize("name", PORTED)
def test_written_rules_reproduce_the_port(built, name):
    """The inferred mapping, written as a rules file, replayed with no --from / layout: the
    same weights, bit for bit, as the port that PyTorch's outputs checked above."""
    b = built(name)
    if b.ported is None:  # this test run on its own
        port(b)
    replayed = str(b.folder / f"{name}_replayed.keras")
    if name in VIA_CLI:
        r = cli("transplant", b.state, b.target, "-o", replayed, "--rules", b.rules)
        assert r.exit_code == 0, r.output
    else:
        b.rules = str(b.folder / f"{name}_mapping.toml")
        written = str(b.folder / f"{name}_written.keras")
        surgery.transplant_file(b.state, b.target, written, layout="torch",
                                write_rules=b.rules)
        assert_bitwise(stored_weights(b.ported), stored_weights(written),
                       f"{name}: transplant_file(layout='torch') vs transplant(layout='torch')")
        surgery.transplant_file(b.state, b.target, replayed, rules=b.rules)
    with open(b.rules, "rb") as f:
        assert tomllib.load(f), f"{b.rules}: empty rules"
    target = stored_weights(b.target)
    ported = stored_weights(b.ported)
    assert all(not np.array_equal(target[k], ported[k]) for k in target
               if target[k].size > 1), f"{name}: a variable kept the target's initial values"
    assert_bitwise(ported, stored_weights(replayed), f"{name}: --rules replay vs the port")


def test_shortcut_first_resnet_is_ported_or_refused(built):
    """Graph order that differs from torch's key order (projection shortcut built first): the
    port either gets PyTorch's outputs or refuses with AmbiguousPort; never a quiet wrong
    pairing."""
    from surgery.errors import AmbiguousPort

    b = built("resnet18")
    model, _ = zoo.resnet18_keras(shortcut_first=True)
    try:
        surgery.transplant(b.state, model, layout="torch")
    except AmbiguousPort as e:
        print(f"\nresnet18 shortcut-first: refused: {e}")
        return
    check_outputs("resnet18 shortcut-first port", zoo.keras_logits(model, b.x), b.want,
                  shortcut_first_keras64(model, b.x), b.want64)


# ---------------------------------------------------------------------- Keras -> PyTorch export

@pytest.mark.parametrize("name", PORTED)
def test_export_like_template(built, name):
    """The twin with its own random weights (an independently seeded module's, mapped by hand)
    exported into the template's names and layouts: PyTorch loads it strictly and computes the
    Keras outputs."""
    b = built(name)
    model = b.twin
    own = zoo.state_arrays(zoo.random_module(name, KERAS_SEED))
    zoo.load_into(model, own, b.mapping)
    source = str(b.folder / f"{name}_own.keras")
    model.save(source)
    out = str(b.folder / f"{name}_exported.safetensors")
    r = cli("export", source, "--format", "torch", "--like", b.state, "-o", out)
    assert r.exit_code == 0, r.output
    exported = st.load_file(out)
    fresh = b.entry.torch()
    fresh.load_state_dict(exported, strict=True)
    fresh.eval()
    template = b.module.state_dict()
    same = [k for k, v in template.items() if v.numel() > 1 and torch.equal(exported[k], v)]
    assert not same, f"the template's values came back: {same}"
    assert_exported_like(name, {k: v.numpy() for k, v in exported.items()}, own)
    check_outputs(f"{name} export --like", zoo.keras_logits(model, b.x),
                  zoo.torch_logits(fresh, b.x), b.keras64(model),
                  zoo.torch_logits64(fresh, b.x))


def assert_exported_like(name: str, exported: dict, own: dict) -> None:
    """The exported tensors are the ones the twin's weights were mapped from: bitwise, except
    LSTM biases (Keras keeps only b_ih + b_hh, so only the sum is determined, to 1e-6) and
    num_batches_tracked (no Keras counterpart)."""
    for key, want in own.items():
        got = exported[key]
        assert got.shape == want.shape and got.dtype == want.dtype, \
            f"{name}: {key} {got.shape} {got.dtype} vs {want.shape} {want.dtype}"
        if key.endswith("num_batches_tracked"):
            continue
        if name == "bilstm" and ".bias_" in key:
            other = key.replace("bias_ih", "bias_hh") if "bias_ih" in key else \
                key.replace("bias_hh", "bias_ih")
            np.testing.assert_allclose(got + exported[other], want + own[other], rtol=0,
                                       atol=1e-6, err_msg=f"{name}: {key} + {other}")
        else:
            assert np.array_equal(got, want), f"{name}: {key} differs"


# ---------------------------------------------------------------------- ambiguity is refused

def test_ambiguous_branches_are_refused(built):
    import keras
    from surgery.errors import AmbiguousPort, RulesError

    assert issubclass(AmbiguousPort, RulesError)
    b = built("two_branch")
    model = keras.saving.load_model(b.target)
    before = [np.asarray(w).copy() for w in model.weights]
    with pytest.raises(AmbiguousPort) as e:
        surgery.transplant(b.state, model, layout="torch")
    message = str(e.value)
    print(f"\ntwo_branch: {message}")
    for name in ("left", "right", "path_p", "path_q"):
        assert name in message, f"{name!r} not named in: {message}"
    after = [np.asarray(w) for w in model.weights]
    assert all(np.array_equal(u, v) for u, v in zip(before, after)), "the model was changed"
    with pytest.raises(AmbiguousPort):
        surgery.port_rules(b.state, model)
    out = b.folder / "two_branch_ported.keras"
    r = cli("transplant", b.state, b.target, "-o", out, "--from", "torch")
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
    assert "left" in r.output and "right" in r.output
    assert not out.exists()


def test_batchnorm_epsilon_that_differs_is_refused(built):
    """A Keras BatchNormalization left at epsilon 1e-3 for PyTorch's 1e-5 is not ported
    quietly: the error names the layer and both values."""
    from surgery.errors import RulesError

    b = built("audio_cnn")
    model, _ = zoo.audio_cnn_keras(epsilon=1e-3)
    with pytest.raises(RulesError) as e:
        surgery.transplant(b.state, model, layout="torch")
    message = str(e.value)
    print(f"\naudio_cnn, Keras epsilon 1e-3: {message}")
    assert message.startswith("tap0_norm: ") and "1e-05" in message and "0.001" in message
