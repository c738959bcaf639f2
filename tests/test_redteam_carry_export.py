"""Red-team checks of two changes: edits that build fresh layers without random initial values
(surgery/edit/carry.py), and the streaming `export --format torch` (surgery/transfer/
export_write.py).

References: plain Keras (a layer built by Keras with the same initializer, the original model
run on the sample tasks' data, constant initializers' exact values), numpy's own transposes of
the weights written by the in-memory `write_safetensors`, `np.load`, and tracemalloc for
memory.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")
L = keras.layers
C = keras.initializers.Constant

import surgery  # noqa: E402
from surgery import edit  # noqa: E402
from surgery.errors import OutputError  # noqa: E402
from surgery.io.safetensors import write_safetensors  # noqa: E402
from sample_models.tasks import VOCAB, make_blobs, make_motifs  # noqa: E402
from tests.conftest import traced_peak  # noqa: E402


def _trained_looking(model, seed: int = 0) -> None:
    """Values unlike any initializer's (positive: valid BatchNorm variances)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign((np.abs(rng.normal(size=v.shape)) + 0.5).astype(v.dtype))


# ------------------------------------------------------------------ edits: the carry

@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_an_edit_keeps_an_adapted_normalization(kind):
    """Normalization computes with tensors made from its variables when it is built: the copy
    into the fresh layer must reach them (Keras's own load_weights calls finalize_state), or
    the edited model normalizes with mean 0, variance 1. Reference: the original model on the
    blobs task's data."""
    x, _ = make_blobs(256, seed=3)
    x = x * 4.0 + 2.0  # a mean and spread far from 0 and 1
    norm = L.Normalization(name="norm")
    layers = [norm, L.Dense(8, name="fc"), L.Dropout(0.2, name="drop"), L.Dense(3, name="out")]
    if kind == "sequential":
        model = keras.Sequential([keras.Input((16,)), *layers])
    else:
        inp = keras.Input((16,))
        h = inp
        for layer in layers:
            h = layer(h)
        model = keras.Model(inp, h)
    norm.adapt(x)
    new, report = edit.delete_layer(model, "drop")
    assert report.initialized == ()
    np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_mixed_precision_variables_nothing_writes_get_keras_values():
    """mixed_float16: the re-initialized BatchNorm has float32 variables with Keras's initial
    values, the policy is kept, and a function-preserving edit elsewhere changes nothing."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = keras.Input((16,))
        h = L.Dense(16, name="a")(inp)
        h = L.Dense(32, name="b")(h)
        h = L.BatchNormalization(name="bn")(h)
        h = L.Dropout(0.1, name="drop")(h)
        out = L.Dense(4, name="c", dtype="float32")(h)
        model = keras.Model(inp, out)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    _trained_looking(model)
    x, _ = make_blobs(64, seed=1)
    same, _ = edit.delete_layer(model, "drop")
    np.testing.assert_array_equal(same.predict(x, verbose=0), model.predict(x, verbose=0))
    new, report = edit.delete_layer(model, "b")
    bn = new.get_layer("bn")
    assert bn.dtype_policy.name == "mixed_float16"
    for var, want in (("gamma", 1.0), ("beta", 0.0), ("moving_mean", 0.0),
                      ("moving_variance", 1.0)):
        value = getattr(bn, var)
        assert value.dtype == "float32"
        np.testing.assert_array_equal(value.numpy(), np.full(16, want, np.float32))
    assert ("bn/gamma", "shape (32,) -> (16,)") in report.initialized


def test_a_seeded_initializer_gives_what_keras_gives():
    """A seeded initializer draws the same values every time: the re-initialized kernel is the
    kernel of a plain Keras Dense built on the new input width."""
    def init():
        return keras.initializers.GlorotUniform(seed=3)
    inp = keras.Input((8,))
    h = L.Dense(16, name="a")(inp)
    h = L.Dense(32, name="b")(h)
    model = keras.Model(inp, L.Dense(24, name="c", kernel_initializer=init())(h))
    _trained_looking(model)
    new, _ = edit.delete_layer(model, "b")
    reference = L.Dense(24, kernel_initializer=init())
    reference.build((None, 16))
    np.testing.assert_array_equal(new.get_layer("c").kernel.numpy(), reference.kernel.numpy())


ZOO = {  # (input, layers): "x" reads "pre"'s output; deleting "pre" changes x's input width
    "LayerNormalization": ((6,), lambda: L.LayerNormalization(
        gamma_initializer=C(2.0), beta_initializer=C(-1.0), name="x"), L.Dense),
    "EinsumDense": ((6,), lambda: L.EinsumDense(
        "ab,bc->ac", output_shape=5, bias_axes="c", kernel_initializer=C(0.25),
        bias_initializer=C(0.75), name="x"), L.Dense),
    "PReLU": ((6,), lambda: L.PReLU(alpha_initializer=C(0.3), name="x"), L.Dense),
    "Conv2DTranspose": ((5, 5, 2), lambda: L.Conv2DTranspose(
        3, 2, kernel_initializer=C(0.25), bias_initializer=C(0.75), name="x"), L.Conv2D),
    "SeparableConv2D": ((5, 5, 2), lambda: L.SeparableConv2D(
        3, 2, depthwise_initializer=C(0.25), pointwise_initializer=C(0.5),
        bias_initializer=C(0.75), name="x"), L.Conv2D),
    "DepthwiseConv2D": ((5, 5, 2), lambda: L.DepthwiseConv2D(
        2, depthwise_initializer=C(0.25), bias_initializer=C(0.75), name="x"), L.Conv2D),
    "GroupNormalization": ((5, 5, 2), lambda: L.GroupNormalization(
        2, gamma_initializer=C(2.0), beta_initializer=C(-1.0), name="x"), L.Conv2D),
}


@pytest.mark.parametrize("cls", sorted(ZOO))
def test_each_layer_type_gets_its_constants_or_its_old_values(cls):
    """Constant initializers give known values exactly: every variable of the fresh layer is
    either its constant (reported initialized) or the old layer's value (reported copied)."""
    shape, make, pre = ZOO[cls]
    width = 4
    pre_layer = pre(width, 1, name="pre") if pre is L.Conv2D else pre(width, name="pre")
    model = keras.Sequential([keras.Input(shape), pre_layer, make()])
    _trained_looking(model)
    new, report = edit.delete_layer(model, "pre")
    old, fresh = model.get_layer("x"), new.get_layer("x")
    initialized = dict(report.initialized)
    config = old.get_config()
    for variable in fresh.weights:
        path = f"x/{variable.name}"
        if path in report.copied:
            np.testing.assert_array_equal(variable.numpy(), next(
                w.numpy() for w in old.weights if w.name == variable.name), err_msg=path)
            continue
        assert path in initialized, path
        key = {"depthwise_kernel": "depthwise", "pointwise_kernel": "pointwise"}.get(
            variable.name, variable.name)
        if cls == "DepthwiseConv2D" and key == "kernel":
            key = "depthwise"
        want = config[f"{key}_initializer"]["config"]["value"]
        np.testing.assert_array_equal(variable.numpy(), np.full(variable.shape, want,
                                                                np.float32), err_msg=path)
    assert {k: v for k, v in fresh.get_config().items() if k.endswith("_initializer")} == \
        {k: v for k, v in config.items() if k.endswith("_initializer")}


def test_wrappers_shared_layers_and_lora_keep_the_function():
    """Bidirectional (SimpleRNN), TimeDistributed, a shared Dense and a LoRA-enabled Dense
    (adapters trained: lora_kernel_b non-zero) around a deleted Dropout: the edited model
    computes what the original computes on the motif task's token sequences."""
    tokens, _ = make_motifs(16, seed=4)
    inp = keras.Input(tokens.shape[1:], dtype="int32")
    h = L.Embedding(VOCAB, 8, name="emb")(inp)
    h = L.Bidirectional(L.SimpleRNN(6, return_sequences=True), name="bi")(h)
    shared = L.Dense(12, name="shared")
    h = shared(h)
    h = L.Dropout(0.3, name="drop")(h)
    h = L.TimeDistributed(L.Dense(12), name="td")(h)
    h = shared(h)
    lora = L.Dense(5, name="lora")
    out = lora(L.GlobalAveragePooling1D()(h))
    model = keras.Model(inp, out)
    lora.enable_lora(2)
    _trained_looking(model)
    new, report = edit.delete_layer(model, "drop")
    assert report.initialized == () and "lora/lora_kernel_b" in report.copied
    np.testing.assert_allclose(np.asarray(new(tokens)), np.asarray(model(tokens)),
                               rtol=1e-6, atol=1e-6)


class Dense(L.Dense):
    """A user's Dense, of the registry's class name but not Keras's own module: its build
    sees whatever initializer it is configured with (a stand-in must not reach it)."""

    seen: list = []

    def build(self, input_shape):
        Dense.seen.append(type(self.kernel_initializer).__name__)
        super().build(input_shape)


def test_a_users_dense_subclass_is_built_with_its_own_initializers():
    inp = keras.Input((8,))
    h = L.Dense(16, name="a")(inp)
    h = L.Dense(32, name="b")(h)
    model = keras.Model(inp, Dense(64, name="c")(h))
    Dense.seen.clear()
    new, _ = edit.delete_layer(model, "b")
    assert Dense.seen == ["GlorotUniform"]
    kernel, limit = new.get_layer("c").kernel.numpy(), np.sqrt(6 / (16 + 64))
    assert np.all(np.abs(kernel) <= limit) and kernel.std() > 0.8 * limit / np.sqrt(3)


# ---------------------------------------------------------------- export: the stream

LINEAR = {"export": [{"source": "fc/kernel", "name": "linear_to_torch", "target": "fc.weight"}],
          "rename": [{"from": "^fc/bias$", "to": "fc.bias"}]}


def _assert_written(out, want: dict, tmp_path) -> None:
    """The export at `out` holds `want`: an .npz read back by np.load (keys in order, shapes,
    dtypes, values), a .safetensors the same bytes as the in-memory writer makes of `want`."""
    if str(out).endswith(".npz"):
        with np.load(out) as got:
            assert got.files == list(want)
            for key, value in want.items():
                assert got[key].shape == value.shape and got[key].dtype == value.dtype, key
                np.testing.assert_array_equal(got[key], value)
        return
    reference = tmp_path / "want.safetensors"
    write_safetensors(want, str(reference))
    assert out.read_bytes() == reference.read_bytes()


@pytest.mark.parametrize("output", ["out.safetensors", "out.npz"])
def test_a_big_endian_source_exports_little_endian(tmp_path, output):
    """An .npz of big-endian arrays (what np.save writes on a big-endian machine): the export
    holds the same values as the in-memory writer of numpy's transposes, little-endian, as
    safetensors requires."""
    rng = np.random.default_rng(0)
    kernel, bias = (rng.normal(size=s).astype(">f4") for s in ((5, 3), (3,)))
    source = tmp_path / "be.npz"
    np.savez(source, **{"fc/kernel": kernel, "fc/bias": bias})
    want = {"fc.weight": np.ascontiguousarray(kernel.T.astype("<f4")),
            "fc.bias": bias.astype("<f4")}
    out = tmp_path / output
    surgery.export_state_dict(str(source), str(out), LINEAR)
    assert all(value.dtype == np.dtype("<f4") for value in want.values())
    _assert_written(out, want, tmp_path)


def _bf16_source(tmp_path):
    import ml_dtypes

    rng = np.random.default_rng(1)
    state = {"fc/kernel": rng.normal(size=(6, 4)).astype(ml_dtypes.bfloat16),
             "fc/bias": rng.normal(size=(4,)).astype(ml_dtypes.bfloat16)}
    path = tmp_path / "bf16.safetensors"
    write_safetensors(state, str(path))
    return path, state


def test_bfloat16_exports_to_safetensors_as_the_in_memory_writer(tmp_path):
    source, state = _bf16_source(tmp_path)
    out, reference = tmp_path / "out.safetensors", tmp_path / "want.safetensors"
    surgery.export_state_dict(str(source), str(out), LINEAR)
    write_safetensors({"fc.weight": np.ascontiguousarray(state["fc/kernel"].T),
                       "fc.bias": state["fc/bias"]}, str(reference))
    assert out.read_bytes() == reference.read_bytes()


def test_bfloat16_to_npz_is_refused_up_front(tmp_path):
    """numpy has no bfloat16: np.load reads such a member back as raw 2-byte voids ('|V2'),
    which no PyTorch module loads. The export says so, names the tensor, writes nothing."""
    source, _ = _bf16_source(tmp_path)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "o.npz"
    with pytest.raises(OutputError) as e:
        surgery.export_state_dict(str(source), str(out), LINEAR)
    assert str(e.value) == (
        f"{out}: tensor 'fc.weight' is bfloat16, which .npz can't hold (np.load reads it "
        "back as raw bytes); write .safetensors, or pass like= a template with float32 "
        "tensors to cast it")
    assert os.listdir(tmp_path / "out") == []


def test_bfloat16_to_npz_with_a_float32_template(tmp_path):
    """The way out the refusal names: a float32 template; np.load gives numpy's own cast of
    the transposed bfloat16 values of the live model."""
    model = keras.Sequential([keras.Input((6,)), L.Dense(4, name="fc", dtype="bfloat16")])
    _trained_looking(model)
    template = tmp_path / "t.safetensors"
    write_safetensors({"fc.weight": np.zeros((4, 6), np.float32),
                       "fc.bias": np.zeros(4, np.float32)}, str(template))
    out = tmp_path / "o.npz"
    surgery.export_state_dict(model, str(out), LINEAR, like=str(template))
    layer = model.get_layer("fc")
    with np.load(out) as got:
        assert got["fc.weight"].dtype == np.float32
        np.testing.assert_array_equal(got["fc.weight"],
                                      layer.kernel.numpy().T.astype(np.float32))
        np.testing.assert_array_equal(got["fc.bias"], layer.bias.numpy().astype(np.float32))


@pytest.mark.parametrize("output", ["o.safetensors", "o.npz"])
def test_scalars_and_empty_tensors(tmp_path, output):
    """A 0-d tensor stays 0-d and a (0, 4) tensor transposes to (4, 0): the same file as the
    in-memory writer makes (safetensors) or what np.load gives back (npz)."""
    rng = np.random.default_rng(2)
    state = {"scalar": np.array(3.5, np.float32), "empty": np.zeros((0, 4), np.float32),
             "w": rng.normal(size=(2, 3)).astype(np.float32)}
    source = tmp_path / "s.safetensors"
    write_safetensors(state, str(source))
    rules = {"export": [{"source": "empty", "name": "linear_to_torch", "target": "e"},
                        {"source": "w", "name": "transpose", "target": "wt"},
                        {"source": "scalar", "name": "reshape", "shape": [1], "target": "s1"},
                        {"source": "scalar", "name": "copy", "target": "s0"}]}
    want = {"e": np.zeros((4, 0), np.float32), "wt": np.ascontiguousarray(state["w"].T),
            "s1": state["scalar"].reshape(1), "s0": state["scalar"]}
    out = tmp_path / output
    surgery.export_state_dict(str(source), str(out), rules)
    _assert_written(out, want, tmp_path)


@pytest.mark.parametrize("output", ["o.safetensors", "o.npz"])
def test_max_memory_of_a_renamed_tensor_is_what_the_export_holds(tmp_path, output):
    """A rename holds the tensor read (the plan's figure: its bytes, which max_memory then
    accepts exactly). The export's traced peak must stay near it: numpy's write_array copies
    each member's bytes (tobytes) into a zip it can't write straight from memory, which
    doubled the peak of an .npz output."""
    n = 1024 * 1024  # 4 MB of float32
    source = tmp_path / "s.safetensors"
    write_safetensors({"w": np.arange(n, dtype=np.float32)}, str(source))
    rules = {"rename": [{"from": "^w$", "to": "layer.weight"}]}
    out = tmp_path / output
    surgery.export_state_dict(str(source), str(out), rules, max_memory=4 * n)  # warm-up
    peak = traced_peak(lambda: surgery.export_state_dict(
        str(source), str(out), rules, max_memory=4 * n, overwrite=True))
    assert peak < 4 * n * 1.15, f"peak {peak / 1e6:.2f} MB for a 4.2 MB tensor"
    with surgery.open_weights(str(out)) as got:
        np.testing.assert_array_equal(got.read("layer.weight"), np.arange(n, dtype=np.float32))


def test_npz_members_are_what_np_savez_writes(tmp_path):
    """The .npz members, written from each array's memory with a hand-made header, are byte
    for byte numpy's own (np.savez of the same arrays): float, 0-d, empty and bool."""
    rng = np.random.default_rng(3)
    state = {"a": rng.normal(size=(5, 3)).astype(np.float32), "s": np.array(2.0, np.float64),
             "e": np.zeros((0, 3), np.int32), "b": np.array([True, False])}
    source = tmp_path / "s.safetensors"
    write_safetensors(state, str(source))
    out, reference = tmp_path / "o.npz", tmp_path / "want.npz"
    surgery.export_state_dict(str(source), str(out), {"rename": [{"from": "^(.*)$",
                                                                  "to": r"m.\1"}]})
    np.savez(reference, **{f"m.{k}": v for k, v in state.items()})
    with zipfile.ZipFile(out) as got, zipfile.ZipFile(reference) as want:
        assert got.namelist() == want.namelist()
        for name in want.namelist():
            assert got.read(name) == want.read(name), name


# ------------------------------------------------- found here, outside the two changes' files

def test_transplant_into_a_live_model_keeps_an_adapted_normalization():
    x, _ = make_blobs(128, seed=5)
    x = x * 4.0 + 2.0

    def build():
        inp = keras.Input((16,))
        norm = L.Normalization(name="norm")
        return keras.Model(inp, L.Dense(3, name="fc")(norm(inp))), norm

    source, norm = build()
    norm.adapt(x)
    target, _ = build()
    surgery.transplant(source, target)
    np.testing.assert_allclose(target.predict(x, verbose=0), source.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_the_in_memory_writer_takes_big_endian_arrays(tmp_path):
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_safetensors({"w": value.astype(">f4")}, str(tmp_path / "be.safetensors"))
    write_safetensors({"w": value}, str(tmp_path / "le.safetensors"))
    assert (tmp_path / "be.safetensors").read_bytes() == \
        (tmp_path / "le.safetensors").read_bytes()
