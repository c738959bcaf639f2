"""Parameter setup: initializers/regularizers/constraints shown match the configs, --stats
match numpy, set_* keep weights bitwise and add the expected loss, L2-SP stays closer to the
start than plain fine-tuning, and the README walk-through's commands run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.sample_models import tasks
from surgery.errors import OptionError, SurgeryError
from tests.conftest import SAMPLES


def sample(name):
    return os.path.join(SAMPLES, name)


def test_setup_matches_layer_configs():
    inv = surgery.inspect(sample("dense_784.keras"))
    assert inv.setup["hidden/kernel"]["initializer"].startswith("HeNormal(")
    assert inv.setup["hidden/kernel"]["regularizer"] == "L2(l2=0.0001)"
    assert inv.setup["head/bias"]["initializer"] == "Zeros()"
    lstm = surgery.inspect(sample("text_lstm.keras"))
    assert lstm.setup["lstm/kernel"]["gates"] == "4 gates i,f,c,o x 128 units"
    assert lstm.setup["lstm/recurrent_kernel"]["initializer"] == "Orthogonal(gain=1.0)"
    assert [v.shape for v in lstm.variables if v.layer == "lstm"] == [
        (128, 512), (128, 512), (512,)]
    live = surgery.load_model(sample("dense_784.keras"))
    assert surgery.inspect(live).setup["hidden/kernel"] == inv.setup["hidden/kernel"]


def test_stats_match_numpy():
    inv = surgery.inspect(sample("cnn_28.keras"), stats=True)
    with surgery.open_weights(sample("cnn_28.keras")) as w:
        k = w["conv/kernel"].astype(np.float64)
    st = inv.stats["conv/kernel"]
    assert st["mean"] == pytest.approx(k.mean()) and st["std"] == pytest.approx(k.std())
    assert st["min"] == k.min() and st["max"] == k.max()
    assert st["zeros"] == (k == 0).mean() and st["nonfinite"] == 0
    r = CliRunner().invoke(main, ["inspect", sample("cnn_28.keras"), "--stats", "--json"])
    assert json.loads(r.output)["variables"][0]["stats"]["mean"] == pytest.approx(k.mean())


def _config_changes(old, new, what: str) -> list[str]:
    """The variables whose `<prefix>_<what>` config entry differs between two models, read
    from Keras's own layer configs (the reference for a SetupReport's `changed`)."""
    found = []
    for a, b in zip(old.layers, new.layers):
        ca, cb = a.get_config(), b.get_config()
        for key in cb:
            if key.endswith(f"_{what}") and ca.get(key) != cb[key]:
                found.append(f"{b.name}/{key[:-len(what) - 1]}")
    return found


def test_set_regularizer_keeps_weights_and_adds_the_loss():
    model = surgery.load_model(sample("cnn_28.keras"))
    result = surgery.set_regularizer(model, "head/kernel", l2=0.01)
    new, report = result
    assert isinstance(result, surgery.EditResult) and result.model is new
    assert isinstance(report, surgery.SetupReport)
    assert list(report.changed) == _config_changes(model, new, "regularizer") == ["head/kernel"]
    assert str(report) == "set L1L2(l1=0, l2=0.01) on 1 variables: head/kernel; weights unchanged"
    assert report.to_dict() == {"setting": "regularizer", "value": "L1L2(l1=0, l2=0.01)",
                                "changed": ["head/kernel"]}
    assert not [a for a in vars(new) if a.startswith("_surgery")]
    assert surgery.diff(model, new).identical
    kernel = new.get_layer("head").kernel.numpy().astype(np.float64)
    new(np.zeros((1, 28, 28, 1), "float32"))
    losses = [float(l) for l in new.losses]
    assert losses == [pytest.approx(0.01 * (kernel ** 2).sum(), rel=1e-5)]
    with pytest.raises(SurgeryError) as e:
        surgery.set_regularizer(surgery.load_model(sample("cnn.keras")),
                                "block1_bn/moving_mean", l2=0.1)
    assert str(e.value) == ("block1_bn/moving_mean: layer 'block1_bn' (BatchNormalization) has "
                            "no regularizer setting for this variable; select kernels, biases "
                            "or embeddings")


def test_set_initializer_and_constraint_and_errors():
    model = surgery.load_model(sample("dense_784.keras"))
    new, report = surgery.set_initializer(model, "head/kernel", initializer="zeros")
    assert (report.setting, report.value) == ("initializer", "zeros")
    assert list(report.changed) == _config_changes(model, new, "initializer") == ["head/kernel"]
    assert surgery.diff(model, new).identical
    surgery.reinitialize(new, "head/kernel")
    assert not new.get_layer("head").kernel.numpy().any()
    con, report = surgery.set_constraint(model, "*/kernel", constraint="non_neg")
    assert list(report.changed) == _config_changes(model, con, "constraint") == [
        "hidden/kernel", "head/kernel"]
    assert str(report) == ("set non_neg on 2 variables: hidden/kernel, head/kernel; weights "
                           "unchanged")
    assert surgery.inspect(con).setup["hidden/kernel"]["constraint"].startswith("NonNeg")
    with pytest.raises(OptionError) as e:
        surgery.set_initializer(model, "head/kernel", initializer="nope")
    assert str(e.value).startswith("unknown initializer 'nope'; known: glorot_uniform")
    with pytest.raises(OptionError, match="unknown constraint 'tight'"):
        surgery.set_constraint(model, "head/kernel", constraint="tight")


@pytest.mark.slow  # over 10 s (DESIGN §8: the fast tier keeps short tests)
def test_l2sp_stays_closer_and_loads_with_plain_keras(tmp_path):
    import keras
    (data, _) = tasks.shape_transfer_task(10, seed=0)

    def run(l2sp):
        m, _ = surgery.replace_head(surgery.load_model(sample("cnn.keras")), 4, seed=0)
        start = {k: surgery.open_weights(m).read(k) for k in surgery.open_weights(m)}
        r = surgery.finetune(m, data, epochs=2, lr=3e-3, seed=0, verbose=0, l2sp=l2sp)
        with surgery.open_weights(r.model) as w:
            return r, sum(float(((w.read(k) - start[k]) ** 2).sum()) for k in start
                          if not k.startswith("head/"))
    plain, d_plain = run(None)
    l2sp, d_l2sp = run(1.0)
    assert d_l2sp < 0.5 * d_plain
    path = surgery.save_model(l2sp.model, tmp_path / "l2sp.keras")
    keras.saving.load_model(path)  # no custom objects needed
    fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(SurgeryError, match="--l2sp needs pretrained weights to anchor to"):
        surgery.finetune(fresh, (np.zeros((4, 4)), np.zeros(4, int)), l2sp=1.0, verbose=0)


def test_readme_walkthrough_commands(tmp_path):
    """The README's parameter-setup walk-through, command by command."""
    def run(*args):
        r = CliRunner().invoke(main, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return r.output
    out = run("inspect", sample("text_lstm.keras"))
    assert "4 gates i,f,c,o x 128 units" in out
    assert "HeNormal" in run("inspect", sample("dense_784.keras"))
    run("reinit", sample("dense_784.keras"), "-o", tmp_path / "re.keras", "--select", "head",
        "--initializer", "lecun_normal", "--seed", 0)
    run("set", sample("cnn_28.keras"), "-o", tmp_path / "reg.keras", "--select", "head/kernel",
        "--l2", 0.001)
    x, y = tasks.make_digits_like(64, seed=5)
    np.savez(tmp_path / "digits.npz", x=x, y=y)
    run("finetune", tmp_path / "reg.keras", "--data", tmp_path / "digits.npz", "-o",
        tmp_path / "tuned.keras", "--train", "head", "--epochs", 1, "--l2sp", 0.1, "--quiet")
    assert "L2(l2=0.001)" in run("inspect", tmp_path / "reg.keras") or \
        "L1L2(l1=0.0, l2=0.001)" in run("inspect", tmp_path / "reg.keras")
