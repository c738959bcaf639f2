"""`surgery.verify` can disagree: each broken model here is built by hand (plain Keras, no
surgery function), and verify must fail on it and name the first layer where it departs from
its reference; each correct change, also built by hand, must pass. The references are the
original models (or hand-built equivalents), never the project's output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

keras = pytest.importorskip("keras")
L = keras.layers

from cli import main  # noqa: E402
from surgery.errors import InputError, ShapeError  # noqa: E402
from surgery.model.verify import probe_inputs, verify  # noqa: E402
from tests.conftest import leftovers  # noqa: E402


def _randomize(model, seed):
    """Distinct random weights, layer by layer; BatchNorm variances kept positive."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):
            g, b, m, v = (w.shape for w in ws)
            ws = [rng.uniform(0.5, 1.5, g), rng.normal(size=b), rng.normal(size=m),
                  rng.uniform(0.5, 2.0, v)]
        elif ws:
            ws = [rng.normal(scale=0.5, size=w.shape) for w in ws]
        layer.set_weights([w.astype("float32") for w in ws])
    return model


def _weights(model):
    return {l.name: [w.copy() for w in l.get_weights()] for l in model.layers}


# ------------------------------------------------------------------ hand-built models

def conv_bn(width=4):
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(width, 3, padding="same", name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.Conv2D(5, 3, padding="same", name="conv2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="head")(x))


def widen_by_hand(narrow, kernel_copies, bn_copies):
    """Net2WiderNet of conv1 from 4 to 6 channels, written out: new channel j copies
    channel kernel_copies[j] in conv1 and bn_copies[j] in bn1; conv2's input rows are
    divided by how often kernel_copies uses each channel."""
    wide = conv_bn(len(kernel_copies))
    g = np.asarray(kernel_copies)
    k, b = narrow.get_layer("conv1").get_weights()
    wide.get_layer("conv1").set_weights([k[..., g], b[g]])
    wide.get_layer("bn1").set_weights([w[np.asarray(bn_copies)]
                                       for w in narrow.get_layer("bn1").get_weights()])
    k2, b2 = narrow.get_layer("conv2").get_weights()
    counts = np.bincount(g, minlength=k.shape[-1])[g]
    wide.get_layer("conv2").set_weights([k2[:, :, g, :] / counts[None, None, :, None], b2])
    wide.get_layer("head").set_weights(narrow.get_layer("head").get_weights())
    return wide


def saturated_mlp(activation="relu", identity_after_fc=False):
    """Dense(32, fc) -> Dense(10, softmax): head bias 1000 on class 0, so the softmax is
    exactly one-hot on every probe, whatever fc computes."""
    inp = keras.Input((16,), name="x")
    x = L.Dense(32, activation=activation, name="fc")(inp)
    if identity_after_fc:
        x = L.Dense(32, name="ident")(x)
    model = keras.Model(inp, L.Dense(10, activation="softmax", name="head")(x))
    rng = np.random.default_rng(1)
    model.get_layer("fc").set_weights([rng.normal(size=(16, 32)).astype("float32"),
                                       rng.normal(size=32).astype("float32")])
    bias = np.zeros(10, "float32")
    bias[0] = 1000.0
    model.get_layer("head").set_weights([rng.normal(size=(32, 10)).astype("float32"), bias])
    if identity_after_fc:
        model.get_layer("ident").set_weights([np.eye(32, dtype="float32"),
                                              np.zeros(32, "float32")])
    return model


def mlp(units):
    inp = keras.Input((16,), name="x")
    x = L.Dense(units, activation="relu", name="fc")(inp)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="head")(x))


def channels_first_cnn(filters=4):
    """Conv3D: TensorFlow runs channels_first Conv1D/2D on GPUs only, Conv3D on CPUs too
    (through XLA; a 4x4x4 volume with 4 filters there adds the bias wrongly, so 6x6x6)."""
    inp = keras.Input((3, 6, 6, 6), name="volume")
    x = L.Conv3D(filters, 3, padding="same", data_format="channels_first", name="conv")(inp)
    x = L.MaxPooling3D(2, data_format="channels_first", name="pool")(x)
    x = L.Flatten(name="flat")(x)  # raw NCDHW order: row = c * 27 + spatial index
    x = L.Dense(6, activation="relu", name="fc")(x)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="head")(x))


def rescaled(act):
    inp = keras.Input((16,), name="x")
    x = L.Rescaling(1 / 255, name="scale")(inp)
    x = L.Dense(8, use_bias=False, name="fc")(x)
    x = act(x)
    model = keras.Model(inp, L.Dense(3, name="head")(x))
    rng = np.random.default_rng(2)
    for name in ("fc", "head"):
        layer = model.get_layer(name)
        layer.set_weights([rng.normal(size=w.shape).astype("float32")
                           for w in layer.get_weights()])
    return model


@pytest.fixture(scope="module")
def narrow():
    return _randomize(conv_bn(4), 0)


# ------------------------------------------------------------------ verify passes

def test_same_function_passes_and_says_what_was_compared(narrow):
    twin = conv_bn(4)  # built separately, weights copied layer by layer
    for a, b in zip(narrow.layers, twin.layers):
        b.set_weights(a.get_weights())
    v = verify(narrow, twin)
    assert v.ok and v.max_abs_diff == 0.0 and v.logits_max_abs_diff == 0.0
    assert v.first_divergence is None and v.layers_compared == 6
    assert v.families == ("normal", "uniform") and v.probes == 16
    assert str(v).splitlines()[-1] == ("  compared: 2 probe families (normal, uniform) x 8 = 16 "
                                       "probes; 1 output; logits yes; 6 shared layers")
    assert v.to_dict()["ok"] is True and v.to_dict()["families"] == ["normal", "uniform"]


def test_identity_dense_inserted_passes():
    v = verify(saturated_mlp(), saturated_mlp(identity_after_fc=True))
    assert v.ok, str(v)
    assert v.layers_compared == 2 and v.logits_max_abs_diff < 1e-3


def test_correct_widen_passes(narrow):
    v = verify(narrow, widen_by_hand(narrow, [0, 1, 2, 3, 1, 2], [0, 1, 2, 3, 1, 2]))
    assert v.ok, str(v)
    assert v.layers_compared == 3  # conv2, gap, head: conv1, bn1, relu1 changed shape


# ------------------------------------------------------------------ verify fails

def test_widen_with_bn_copies_drawn_differently_fails_at_conv2(narrow):
    broken = widen_by_hand(narrow, [0, 1, 2, 3, 1, 2], [0, 1, 2, 3, 2, 0])
    v = verify(narrow, broken)
    assert not v.ok
    assert v.first_divergence.layer == "conv2"
    assert v.first_divergence.max_abs_diff > 0.1
    assert "first divergent layer: conv2" in str(v)


def test_relu_replaced_by_linear_under_a_saturated_softmax_fails_on_logits():
    reference, broken = saturated_mlp("relu"), saturated_mlp(None)
    v = verify(reference, broken)
    assert v.max_abs_diff == 0.0  # the softmax outputs alone can't tell the two apart
    assert not v.logits_ok and v.logits_max_abs_diff > 1.0
    assert not v.ok and v.first_divergence.layer == "fc"
    assert str(v).startswith("verify: LOGITS DIFFER (outputs agree): max |reference - "
                             "candidate| = 0 (atol 1e-05, 16 probe inputs)\n  logits: ")
    assert v.reason.startswith("0 (atol 1e-05); logits by ")
    assert v.reason.endswith("; first divergent layer 'fc' by "
                             f"{v.first_divergence.max_abs_diff:.3g} on "
                             f"{v.first_divergence.family} probes")


@pytest.mark.parametrize("damage", ["negative_variance", "gamma_redrawn"])
def test_broken_batchnorm_fails_at_the_bn(narrow, damage):
    broken = conv_bn(4)
    for a, b in zip(narrow.layers, broken.layers):
        b.set_weights(a.get_weights())
    gamma, beta, mean, var = narrow.get_layer("bn1").get_weights()
    rng = np.random.default_rng(5)
    if damage == "negative_variance":
        var = -var
    else:
        gamma = rng.normal(size=gamma.shape).astype("float32")
    broken.get_layer("bn1").set_weights([gamma, beta, mean, var])
    v = verify(narrow, broken)
    assert not v.ok and v.first_divergence.layer == "bn1"
    if damage == "negative_variance":  # NaN on one side only counts as an infinite difference
        assert v.max_abs_diff == float("inf") and v.first_divergence.max_abs_diff == float("inf")


def test_dead_padded_units_differ_from_live_ones_though_the_function_is_kept():
    source = _randomize(mlp(8), 3)
    k, b = source.get_layer("fc").get_weights()
    hk, hb = source.get_layer("head").get_weights()
    rng = np.random.default_rng(4)
    new_cols = rng.normal(size=(16, 4)).astype("float32")
    padded = {}
    for kind, cols in (("live", new_cols), ("dead", np.zeros_like(new_cols))):
        m = mlp(12)
        m.get_layer("fc").set_weights([np.concatenate([k, cols], 1),
                                       np.concatenate([b, np.zeros(4, "float32")])])
        m.get_layer("head").set_weights([np.concatenate([hk, np.zeros((4, 3), "float32")]),
                                         hb])
        padded[kind] = m
    # Both keep the source's function: the padded units feed zero rows of the head.
    assert verify(source, padded["live"]).ok and verify(source, padded["dead"]).ok
    # Against the live pad, the dead units are a difference verify names, outputs aside.
    v = verify(padded["live"], padded["dead"])
    assert not v.ok and v.max_abs_diff <= 1e-5 and v.logits_ok
    assert v.first_divergence.layer == "fc"
    assert str(v).startswith("verify: A LAYER DIFFERS (outputs agree): ")


def test_channels_first_pruning_of_the_wrong_flatten_rows_fails_at_fc():
    model = _randomize(channels_first_cnn(4), 6)
    zeroed = channels_first_cnn(4)  # the reference: channel 1 zeroed, nothing removed
    for a, b in zip(model.layers, zeroed.layers):
        b.set_weights(a.get_weights())
    k, b = model.get_layer("conv").get_weights()
    k0, b0 = k.copy(), b.copy()
    k0[..., 1], b0[1] = 0.0, 0.0
    zeroed.get_layer("conv").set_weights([k0, b0])
    keep = [0, 2, 3]
    rows = np.arange(4 * 27)
    fk, fb = model.get_layer("fc").get_weights()
    pruned = {}
    for kind, kept_rows in (("right", rows // 27 != 1), ("wrong", rows % 4 != 1)):
        m = channels_first_cnn(3)
        m.get_layer("conv").set_weights([k[..., keep], b[keep]])
        m.get_layer("fc").set_weights([fk[kept_rows], fb])
        m.get_layer("head").set_weights(model.get_layer("head").get_weights())
        pruned[kind] = m
    # One family: each channels_first Conv3D call on a CPU compiles an XLA kernel (~1 s).
    assert verify(zeroed, pruned["right"], families=("uniform",)).ok
    v = verify(zeroed, pruned["wrong"], families=("uniform",))
    assert not v.ok and v.first_divergence.layer == "fc"


# ------------------------------------------------------------------ probe families, inputs

def test_the_inputs_own_scale_catches_what_unit_probes_miss():
    reference, clipped = rescaled(L.ReLU(name="act")), rescaled(L.ReLU(1.0, name="act"))
    assert verify(reference, clipped, families=("normal", "uniform")).ok
    v = verify(reference, clipped)
    assert v.families == ("normal", "uniform", "scale")
    assert not v.ok and v.first_divergence.layer == "act"
    assert v.first_divergence.family == "scale"
    x = probe_inputs(reference, family="scale")[0]
    assert x.min() >= 0.0 and x.max() <= 255.0 and x.max() > 200.0


def test_user_inputs_in_every_form(tmp_path):
    reference, clipped = rescaled(L.ReLU(name="act")), rescaled(L.ReLU(1.0, name="act"))
    x = np.random.default_rng(0).uniform(0, 255, (5, 16)).astype("float32")
    np.savez(tmp_path / "x.npz", x=x)
    for given in (x, [x], {"x": x}, str(tmp_path / "x.npz")):
        v = verify(reference, clipped, given, families=())
        assert v.families == ("inputs",) and v.probes == 5
        assert not v.ok and v.first_divergence.family == "inputs"
    v = verify(reference, reference, x)
    assert v.ok and v.families == ("normal", "uniform", "scale", "inputs") and v.probes == 29


def test_bad_inputs_say_what_to_give(tmp_path):
    model = mlp(8)
    with pytest.raises(ShapeError) as e:
        verify(model, model, np.zeros((4, 15), "float32"))
    assert str(e.value) == ("inputs: input 'x' has shape (4, 15) but the model takes "
                            "(None, 16); give arrays of the model's input shape")
    with pytest.raises(InputError) as e:
        verify(model, model, str(tmp_path / "none.npz"))
    assert str(e.value) == (f"{tmp_path / 'none.npz'}: no such inputs file (an .npz with one "
                            "array per model input)")


def test_two_inputs_and_a_subclassed_model():
    def two(scale):
        a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
        x = L.Concatenate(name="cat")([L.Dense(5, name="da")(a), b])
        m = keras.Model([a, b], L.Dense(2, activation="sigmoid", name="head")(x))
        _randomize(m, 8)
        k, bias = m.get_layer("da").get_weights()
        m.get_layer("da").set_weights([k * scale, bias])
        return m

    rng = np.random.default_rng(9)
    given = {"a": rng.normal(size=(3, 4)).astype("float32"),
             "b": rng.normal(size=(3, 3)).astype("float32")}
    assert verify(two(1.0), two(1.0), given).ok
    v = verify(two(1.0), two(1.5), given)
    assert not v.ok and v.first_divergence.layer == "da" and v.logits_max_abs_diff > 0

    class Sub(keras.Model):
        def __init__(self):
            super().__init__(name="sub")
            self.d = L.Dense(3, activation="softmax")

        def call(self, x):
            return self.d(x)

    sub = Sub()
    x = np.ones((2, 4), "float32")
    sub(x)
    v = verify(sub, sub, x)
    assert v.ok and v.families == ("inputs",) and v.layers_compared == 0 and v.notes == (
        "sub: no graph to look into (a subclassed model?); only its outputs were compared",)
    with pytest.raises(InputError) as e:
        verify(sub, sub)
    assert str(e.value) == ("verify: sub declares no inputs (a subclassed model?), so no "
                            "probes can be shaped; give inputs= (arrays or an .npz)")


def test_deterministic_and_leaves_both_models_untouched(narrow):
    broken = widen_by_hand(narrow, [0, 1, 2, 3, 1, 2], [0, 1, 2, 3, 2, 0])
    before = (_weights(narrow), _weights(broken), narrow.get_config(), broken.get_config())
    first, second = verify(narrow, broken).to_dict(), verify(narrow, broken).to_dict()
    assert first == second
    after = (_weights(narrow), _weights(broken), narrow.get_config(), broken.get_config())
    for x, y in zip(before[:2], after[:2]):
        assert x.keys() == y.keys() and all(
            all(np.array_equal(a, b) for a, b in zip(x[k], y[k])) for k in x)
    assert before[2:] == after[2:]
    assert all(len(l._inbound_nodes) == 1 for l in narrow.layers[1:])  # no nodes added


# ------------------------------------------------------------------ command line

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verify_cli")
    paths = {"mlp": folder / "mlp.keras", "linear_fc": folder / "linear_fc.keras",
             "x": folder / "x.npz"}
    saturated_mlp("relu").save(paths["mlp"])
    saturated_mlp(None).save(paths["linear_fc"])
    np.savez(paths["x"], x=np.random.default_rng(3).normal(size=(6, 16)).astype("float32"))
    return paths


def test_cli_edit_replace_relu_by_linear_verify_exit_1_nothing_written(saved, tmp_path):
    out = tmp_path / "out.keras"
    spec = json.dumps({"class_name": "Dense", "config": {"units": 32, "activation": "linear",
                                                         "name": "fc"}})
    r = run("edit", "replace", saved["mlp"], "-o", out, "--layer", "fc", "--layer-json", spec,
            "--verify")
    assert r.exit_code == 1, r.output
    assert not out.exists() and leftovers(str(tmp_path)) == []
    assert f"error: {saved['mlp']}: the edited model's outputs differ by 0 (atol 1e-05); " \
           "logits by " in r.output
    assert "first divergent layer 'fc'" in r.output


def test_cli_inputs_on_edit_and_transplant(saved, tmp_path):
    out = tmp_path / "drop.keras"
    spec = json.dumps({"class_name": "Dropout", "config": {"rate": 0.5, "name": "drop"}})
    r = run("edit", "insert", saved["mlp"], "-o", out, "--after", "fc", "--layer-json", spec,
            "--inputs", saved["x"], "--json")  # --inputs implies --verify
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["verify"]["ok"] and data["verify"]["families"][-1] == "inputs"
    out2 = tmp_path / "t.keras"
    r = run("transplant", saved["mlp"], saved["linear_fc"], "-o", out2, "--inputs", saved["x"])
    assert r.exit_code == 1 and not out2.exists()
    assert "first divergent layer 'fc'" in r.output


def test_cli_inputs_on_convert(samples, tmp_path):
    from surgery.sample_models import tasks

    blobs = tmp_path / "blobs.npz"
    np.savez(blobs, x=tasks.make_blobs(16, seed=7)[0].astype("float32"))
    out = tmp_path / "k3.keras"
    r = run("convert", samples["keras2_mlp"], "-o", out, "--inputs", blobs, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["verify"]["families"] == ["normal", "uniform", "inputs"]


def test_cli_inputs_on_apply(saved, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(f'[target]\nmodel = "{saved["mlp"]}"\n\n[[step]]\nop = "freeze"\n'
                    'select = ["fc"]\n\n[verify]\npreserve = [1]\n\n[output]\nmodel = '
                    f'"{tmp_path / "planned.keras"}"\n')
    r = run("apply", plan, "--inputs", saved["x"], "--json")
    assert r.exit_code == 0, r.output
    step = json.loads(r.output)["steps"][0]
    assert step["verify"]["ok"] and step["verify"]["families"][-1] == "inputs"
    r = run("apply", plan, "--inputs", tmp_path / "missing.npz")
    assert r.exit_code == 2 and f"error: {tmp_path / 'missing.npz'}: no such inputs file" \
        in r.output
