"""Issue #16 items 5, 8, 10: export rules checked like transplant rules (file:line, unknown keys,
duplicates, regex safety), BatchNorm eps compared on import and export, a PyTorch pickle and a
reset_after=False GRU target named for what they are. Each error is one exact line, and nothing
is written or changed."""

from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import pytest

import surgery
from surgery.errors import (FormatError, OptionError, RulesError, ShapeError,
                            UnsupportedModelError)

OPTS = "(rule keys: source, name, target, targets)"


@pytest.fixture(scope="module")
def cnn(keras, tmp_path_factory):
    """conv (3x3, 3 -> 3) -> bn (Keras's default epsilon 1e-3) -> flatten -> fc, as .keras."""
    L = keras.layers
    model = keras.Sequential([keras.Input((4, 4, 3)), L.Conv2D(3, 3, name="conv"),
                              L.BatchNormalization(name="bn"), L.Flatten(name="flat"),
                              L.Dense(2, name="fc")], name="cnn")
    path = tmp_path_factory.mktemp("export_rules") / "cnn.keras"
    model.save(path)
    return str(path)


def _export(model, tmp_path, text):
    rules = tmp_path / "r.toml"
    rules.write_text(text)
    out = tmp_path / "out.safetensors"
    try:
        return surgery.export_state_dict(model, str(out), str(rules)), str(rules)
    finally:
        if not isinstance(text, str) or "EXPECT_WRITTEN" not in text:
            assert not out.exists()


def _error(kind, model, tmp_path, text):
    with pytest.raises(kind) as e:
        _export(model, tmp_path, text)
    assert "\n" not in str(e.value)
    return str(e.value), str(tmp_path / "r.toml")


def test_misspelt_option_names_its_line(cnn, tmp_path):
    text, p = _error(RulesError, cnn, tmp_path, """skip = ["conv/*", "bn/*", "fc/bias"]
[[export]]
source = "fc/kernel"
name = "linear_to_torch"
target = "fc.weight"
feature_shpe = [2, 2, 3]
""")
    assert text == (f"{p}:6: unknown key 'feature_shpe' for exporter 'linear_to_torch'; its "
                    f"options: feature_shape {OPTS}")


def test_option_the_exporter_does_not_apply(cnn, tmp_path):
    text, p = _error(RulesError, cnn, tmp_path, """skip = ["bn/*", "fc/*", "conv/bias"]
[[export]]
source = "conv/kernel"
name = "conv_to_torch"
feature_shape = [2, 2, 3]
target = "conv.weight"
""")
    assert text == (f"{p}:5: unknown key 'feature_shape' for exporter 'conv_to_torch'; its "
                    f"options: kind {OPTS}")


def test_rule_without_target(cnn, tmp_path):
    text, p = _error(RulesError, cnn, tmp_path, """skip = ["conv/*", "bn/*", "fc/bias"]

[[export]]
source = "fc/kernel"
name = "linear_to_torch"
""")
    assert text == (f"{p}:3: 'export.target' must be a non-empty string (the PyTorch key), got "
                    "NoneType None")


def test_two_rules_writing_one_key(cnn, tmp_path):
    text, p = _error(RulesError, cnn, tmp_path, """skip = ["conv/*", "bn/*"]
[[export]]
source = "fc/kernel"
name = "linear_to_torch"
target = "fc.weight"
[[export]]
source = "fc/bias"
name = "copy"
target = "fc.weight"
""")
    assert text == (f"{p}:8: export 'copy' of 'fc/bias' writes 'fc.weight', which the export of "
                    f"'fc/kernel' at {p}:4 writes too; give each PyTorch key one rule")


def test_rename_writing_a_key_an_export_writes(cnn, tmp_path):
    text, p = _error(RulesError, cnn, tmp_path, """skip = ["conv/*", "bn/*"]
[[rename]]
from = '^fc/bias$'
to = "fc.weight"
[[export]]
source = "fc/kernel"
name = "linear_to_torch"
target = "fc.weight"
""")
    assert text == (f"{p}:3: rename '^fc/bias$' -> 'fc.weight' writes 'fc.weight' from "
                    f"'fc/bias', which the export of 'fc/kernel' at {p}:7 writes too; give "
                    "each PyTorch key one rule")


def test_two_variables_renamed_onto_one_key(cnn, tmp_path):
    text, p = _error(RulesError, cnn, tmp_path, """skip = ["bn/*", "fc/*"]
[[rename]]
from = '^conv/(kernel|bias)$'
to = "conv.weight"
""")
    assert text == (f"{p}:3: rename '^conv/(kernel|bias)$' -> 'conv.weight' writes "
                    f"'conv.weight' from 'conv/bias', which the rename of 'conv/kernel' at "
                    f"{p}:3 writes too; give each PyTorch key one rule")


def test_catastrophic_regex_refused_with_its_line(cnn, tmp_path):
    text, p = _error(RulesError, cnn, tmp_path, """skip = ["re:(a+)+$"]
""")
    assert text.startswith(f"{p}:1: 'skip' pattern '(a+)+$' ")
    text, p = _error(RulesError, cnn, tmp_path, """
[[rename]]
from = '(x*)*y'
to = "z"
""")
    assert text.startswith(f"{p}:3: 'from' pattern '(x*)*y' ")


@pytest.mark.parametrize("text, line, message", [
    ('exports = []\n', 1, "unknown key 'exports'; export rules know export, rename, skip"),
    ('[[export]]\nsource = "fc/kernel"\nname = "linear_to_pytorch"\ntarget = "w"\n', 3,
     "unknown exporter 'linear_to_pytorch'; known: batchnorm_to_torch, conv_to_torch, copy, "
     "gru_to_torch, linear_to_torch, lstm_to_torch, reshape, transpose"),
    ('[[export]]\nsource = "fc/kernel"\nname = "linear_to_torch"\ntargets = { w = "w" }\n', 3,
     "exporter 'linear_to_torch' maps one tensor; use target = \"...\", not targets"),
    ('[[export]]\nsource = "bn"\nname = "batchnorm_to_torch"\ntarget = "bn.weight"\n', 3,
     "exporter 'batchnorm_to_torch' maps a layer; give targets = {weight = ..., bias = ..., "
     "running_mean = ..., running_var = ..., num_batches_tracked = ...}"),
    ('[[export]]\nsource = "bn"\nname = "batchnorm_to_torch"\n'
     'targets = { weight = "w", bias = "b", running_mean = "m", mean = "x" }\n', 3,
     "exporter 'batchnorm_to_torch' takes targets weight, bias, running_mean, running_var, "
     "num_batches_tracked (the first 5 required); missing ['running_var', "
     "'num_batches_tracked'], unknown ['mean']"),
])
def test_malformed_rules(cnn, tmp_path, text, line, message):
    got, p = _error(RulesError, cnn, tmp_path, text)
    assert got == f"{p}:{line}: {message}"


def test_dict_rules_are_checked_too(cnn, tmp_path):
    with pytest.raises(RulesError) as e:
        surgery.export_state_dict(cnn, str(tmp_path / "o.safetensors"), {"export": [
            {"source": "fc/kernel", "name": "linear_to_torch", "target": "w",
             "feature_shpe": [2, 2, 3]}]})
    assert str(e.value) == ("export rules: unknown key 'feature_shpe' for exporter "
                            f"'linear_to_torch'; its options: feature_shape {OPTS}")


def test_feature_shape_that_does_not_fit(cnn, tmp_path):
    text, p = _error(ShapeError, cnn, tmp_path, """skip = ["conv/*", "bn/*", "fc/bias"]
[[export]]
source = "fc/kernel"
name = "linear_to_torch"
target = "fc.weight"
feature_shape = [3, 3, 3]
""")
    assert text == (f"{p}:4: export 'linear_to_torch' of 'fc/kernel' (12, 2) with "
                    "feature_shape = [3, 3, 3]: reorder_flatten_rows: kernel (12, 2) has 12 rows "
                    "but feature_shape (3, 3, 3) flattens to 27")


# -- item 8: BatchNorm eps --------------------------------------------------------------------

BN_RULE = """skip = ["conv/*", "fc/*"]
[[export]]
source = "bn"
name = "batchnorm_to_torch"
targets = { weight = "bn.weight", bias = "bn.bias", running_mean = "bn.running_mean", running_var = "bn.running_var", num_batches_tracked = "bn.num_batches_tracked" }
"""


def test_export_refuses_an_epsilon_pytorch_would_not_use(cnn, tmp_path):
    text, p = _error(RulesError, cnn, tmp_path, BN_RULE)
    assert text == ("bn: the Keras layer's epsilon is 0.001 but the PyTorch BatchNorm's eps is "
                    "1e-05 (the rule's eps, default 1e-05), so the outputs would differ; build "
                    "the PyTorch BatchNorm with eps=0.001 and set eps = 0.001 in the rule, or add "
                    "eps_mismatch = \"ok\" to the rule to accept the difference")


def test_export_with_the_layers_eps_names_it_in_the_report(cnn, tmp_path):
    report, _ = _export(cnn, tmp_path, BN_RULE + "eps = 0.001\n# EXPECT_WRITTEN\n")
    assert report.notes == ("bn: epsilon 0.001; build the PyTorch BatchNorm with eps=0.001 "
                            "(PyTorch's default is 1e-05)",)
    assert "note: bn: epsilon 0.001; build the PyTorch BatchNorm with eps=0.001" in str(report)


def test_export_bad_eps_value(cnn, tmp_path):
    text, p = _error(OptionError, cnn, tmp_path, BN_RULE + 'eps = "small"\n')
    assert text == (f"{p}:4: export 'batchnorm_to_torch' of 'bn': eps must be a positive number "
                    "(PyTorch's BatchNorm eps), got 'small'")


def _torch_bn(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"bn1.weight": rng.normal(1, .2, n).astype("float32"),
            "bn1.bias": rng.normal(0, .2, n).astype("float32"),
            "bn1.running_mean": rng.normal(0, .5, n).astype("float32"),
            "bn1.running_var": rng.uniform(.01, .05, n).astype("float32"),
            "bn1.num_batches_tracked": np.array(7, np.int64)}


BN_IMPORT = {"adapter": [{"target": "bn", "name": "batchnorm_from_torch", "sources": {
    "weight": "bn1.weight", "bias": "bn1.bias", "running_mean": "bn1.running_mean",
    "running_var": "bn1.running_var", "num_batches_tracked": "bn1.num_batches_tracked"}}]}


@pytest.fixture()
def torch_bn_file(tmp_path):
    path = tmp_path / "bn.npz"
    np.savez(path, **_torch_bn())
    return str(path)


def _bn_model(keras, epsilon):
    return keras.Sequential([keras.Input((2, 2, 3)),
                             keras.layers.BatchNormalization(epsilon=epsilon, name="bn")])


def test_import_refuses_a_keras_epsilon_other_than_pytorchs(keras, torch_bn_file):
    model = _bn_model(keras, 1e-3)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(RulesError) as e:
        surgery.transplant(torch_bn_file, model, BN_IMPORT)
    assert str(e.value) == (
        "bn: the PyTorch BatchNorm's eps is 1e-05 (the rule's eps, default 1e-05) but the Keras "
        "layer's epsilon is 0.001, so the outputs would differ; build the Keras layer with "
        "epsilon=1e-05 (or give the rule the PyTorch module's eps), or add eps_mismatch = \"ok\" "
        "to the rule to accept the difference")
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_import_with_matching_eps_equals_pytorchs_equation(keras, torch_bn_file):
    s = _torch_bn()
    x = np.random.default_rng(1).normal(size=(5, 2, 2, 3)).astype("float32")
    for keras_eps, rule_eps in ((1e-5, None), (1e-3, 1e-3)):
        model = _bn_model(keras, keras_eps)
        rules = {"adapter": [dict(BN_IMPORT["adapter"][0])]}
        if rule_eps is not None:
            rules["adapter"][0]["eps"] = rule_eps
        report = surgery.transplant(torch_bn_file, model, rules, strict=True)
        assert [e.status.value for e in report.entries] == ["converted"] * 4
        eps = rule_eps or 1e-5  # torch.nn.BatchNorm2d in eval mode, its documented formula
        want = (x - s["bn1.running_mean"]) / np.sqrt(s["bn1.running_var"] + eps) \
            * s["bn1.weight"] + s["bn1.bias"]
        np.testing.assert_allclose(np.asarray(model(x, training=False)), want, atol=1e-5)


def test_import_eps_mismatch_ok_is_said_in_the_report(keras, torch_bn_file):
    model = _bn_model(keras, 1e-3)
    rules = {"adapter": [dict(BN_IMPORT["adapter"][0], eps_mismatch="ok")]}
    report = surgery.transplant(torch_bn_file, model, rules)
    assert report.converted[0].note == ("PyTorch eps 1e-05 vs Keras epsilon 0.001 accepted "
                                        "(eps_mismatch = ok)")
    assert "accepted (eps_mismatch = ok)" in str(report)


# -- item 10: a PyTorch pickle, a reset_after=False GRU target ---------------------------------

def _convert_line(p):
    out = os.path.splitext(p)[0] + ".safetensors"
    return (f"{p}: a PyTorch pickle (torch.save), which surgery does not read: unpickling can run "
            "any code; convert the state dict to safetensors with torch installed: python -c "
            "\"import torch; from safetensors.torch import save_file; "
            f"save_file(torch.load({p!r}), {out!r})\" and pass {out}")


def _hostile_pickle(marker: str) -> bytes:
    """A protocol-2 pickle that creates `marker` when unpickled."""
    return b"\x80\x02cbuiltins\nopen\n(S'" + marker.encode() + b"'\nS'w'\ntR."


def test_pth_zip_is_named_and_never_unpickled(tmp_path):
    marker = str(tmp_path / "unpickled")
    p = str(tmp_path / "x.pth")
    with zipfile.ZipFile(p, "w") as z:  # torch.save's layout: <name>/data.pkl, data/0, ...
        z.writestr("x/data.pkl", _hostile_pickle(marker))
        z.writestr("x/version", "3\n")
        z.writestr("x/data/0", b"\0" * 16)
    for call in (surgery.inspect, surgery.open_weights, surgery.load_model):
        with pytest.raises(FormatError) as e:
            call(p)
        assert str(e.value) == _convert_line(p)
    assert not os.path.exists(marker)
    pickle.loads(_hostile_pickle(marker + "2")).close()  # the payload is live: the test has teeth
    assert os.path.exists(marker + "2")


def test_legacy_pickle_is_named(tmp_path):
    marker = str(tmp_path / "unpickled")
    p = str(tmp_path / "old.pt")
    with open(p, "wb") as f:
        f.write(_hostile_pickle(marker))
    with pytest.raises(FormatError) as e:
        surgery.inspect(p)
    assert str(e.value) == _convert_line(p)
    assert not os.path.exists(marker)


def test_cli_inspect_pth(tmp_path):
    from click.testing import CliRunner

    from surgery.cli import main
    p = str(tmp_path / "x.pth")
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    r = CliRunner().invoke(main, ["inspect", p])
    assert r.exit_code == 2
    assert r.output.strip() == f"error: {_convert_line(p)}"


def test_gru_target_with_reset_after_false(keras, tmp_path):
    rng = np.random.default_rng(0)
    src = {"gru.weight_ih_l0": rng.normal(size=(12, 3)), "gru.weight_hh_l0":
           rng.normal(size=(12, 4)), "gru.bias_ih_l0": rng.normal(size=12),
           "gru.bias_hh_l0": rng.normal(size=12)}
    path = tmp_path / "gru.npz"
    np.savez(path, **{k: v.astype("float32") for k, v in src.items()})
    model = keras.Sequential([keras.Input((5, 3)),
                              keras.layers.GRU(4, reset_after=False, name="gru")])
    rules = {"adapter": [{"target": "gru", "name": "gru_from_torch", "sources": {
        "w_ih": "gru.weight_ih_l0", "w_hh": "gru.weight_hh_l0", "b_ih": "gru.bias_ih_l0",
        "b_hh": "gru.bias_hh_l0"}}]}
    with pytest.raises(ShapeError) as e:
        surgery.transplant(str(path), model, rules)
    assert str(e.value) == (
        "gru: adapter 'gru_from_torch' can't map source (12,), (12,), (12, 4), (12, 3) onto "
        "target kernel (3, 12), recurrent_kernel (4, 12), bias (12,): the target GRU has "
        "reset_after=False (one (12,) bias), but PyTorch's GRU is reset_after=True (two biases, "
        "a (2, 12) bias in Keras); build the Keras GRU with reset_after=True")


def test_export_of_a_reset_after_false_gru(keras, tmp_path):
    model = keras.Sequential([keras.Input((5, 3)),
                              keras.layers.GRU(4, reset_after=False, name="gru")])
    rules = {"export": [{"source": "gru", "name": "gru_to_torch", "targets": {
        "w_ih": "a", "w_hh": "b", "b_ih": "c", "b_hh": "d"}}]}
    with pytest.raises(UnsupportedModelError) as e:
        surgery.export_state_dict(model, str(tmp_path / "o.safetensors"), rules)
    assert str(e.value) == (
        "export rules: export 'gru_to_torch' of 'gru': the Keras GRU has reset_after=False "
        "(a (12,) bias), but PyTorch's GRU is reset_after=True; rebuild the Keras GRU with "
        "reset_after=True and retrain or transplant into it")
    assert os.listdir(tmp_path) == []


BAD = ["x", -1, 0, 1.5, True, None, [], [1, "a"], [[1]], {"a": 1}, float("nan"), 10 ** 12]


def test_any_bad_value_is_one_surgery_error_line(cnn, tmp_path):
    """Whatever value a rule gives a key or option, export ends in one SurgeryError line."""
    from surgery.errors import SurgeryError
    base = {"source": "fc/kernel", "name": "linear_to_torch", "target": "fc.weight"}
    bn = {"source": "bn", "name": "batchnorm_to_torch", "targets": {
        "weight": "w", "bias": "b", "running_mean": "m", "running_var": "v",
        "num_batches_tracked": "n"}}
    cases = [dict(base, **{key: v}) for key in ("source", "name", "target", "targets",
                                                "feature_shape") for v in BAD]
    cases += [dict(bn, **{key: v}) for key in ("eps", "eps_mismatch", "targets") for v in BAD]
    cases += [{"source": "conv/kernel", "name": "conv_to_torch", "target": "c", "kind": v}
              for v in BAD]
    for rule in cases:
        rules = {"skip": ["conv/*", "bn/*", "fc/*"], "export": [rule]}
        for top in ({}, {"rename": BAD[len(str(rule)) % len(BAD)]},
                    {"skip": BAD[len(str(rule)) % len(BAD)]}):
            try:
                surgery.export_state_dict(cnn, str(tmp_path / "o.safetensors"),
                                          dict(rules, **top), overwrite=True)
            except SurgeryError as e:
                assert "\n" not in str(e)
