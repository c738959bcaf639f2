"""Bad calls through the Python API (issue #22 §5): every one raises a `SurgeryError`
subclass with a one-line message, never TypeError/AttributeError/AssertionError from inside.
The reference is the contract itself (DESIGN §5): the CLI turns anything else into
"unexpected ... (a bug in surgery)"."""

from __future__ import annotations

import numpy as np
import pytest

import surgery
from surgery.errors import InputError, OptionError, SurgeryError


@pytest.fixture(scope="module")
def setup(samples, tmp_path_factory):
    global TMP
    TMP = tmp_path_factory.mktemp("api")
    cnn = samples["cnn"]
    m = surgery.load_model(cnn)
    calls = {
     "load_model(None)": lambda: surgery.load_model(None),
     "load_model(123)": lambda: surgery.load_model(123),
     "load_model(dir)": lambda: surgery.load_model(str(TMP)),
     "save_model(None)": lambda: surgery.save_model(None, str(TMP / "x.keras")),
     "save_model(m, 5)": lambda: surgery.save_model(m, 5),
     "open_weights(5)": lambda: surgery.open_weights(5),
     "open_weights(None)": lambda: surgery.open_weights(None),
     "inspect(5)": lambda: surgery.inspect(5),
     "diff(m, 5)": lambda: surgery.diff(m, 5),
     "transplant(None, m)": lambda: surgery.transplant(None, m),
     "transplant(cnn, 'path')": lambda: surgery.transplant(cnn, cnn),
     "transplant(cnn, m, rules=5)": lambda: surgery.transplant(cnn, m, rules=5),
     "transplant(cnn, m, rules={'skip': 5})": lambda: surgery.transplant(cnn, m, rules={"skip": 5}),
     "transplant(cnn, m, rules={'rename':[{'from':1}]})": lambda: surgery.transplant(cnn, m, rules={"rename": [{"from": 1}]}),
     "freeze(m, 5)": lambda: surgery.freeze(m, 5),
     "freeze(path)": lambda: surgery.freeze(cnn, "head"),
     "freeze(m, None)": lambda: surgery.freeze(m, None),
     "unfreeze(m, '')": lambda: surgery.unfreeze(m, ""),
     "reinitialize(m, 'head', initializer=5)": lambda: surgery.reinitialize(m, "head", initializer=5),
     "reinitialize(m, 'head', seed='x')": lambda: surgery.reinitialize(m, "head", seed="x"),
     "reinitialize(path)": lambda: surgery.reinitialize(cnn, "head"),
     "replace_head(m, 'x')": lambda: surgery.replace_head(m, "x"),
     "replace_head(m, 3, keep_classes=[99])": lambda: surgery.replace_head(m, 3, keep_classes=[99]),
     "replace_head(m, 3, keep_classes=[0,0])": lambda: surgery.replace_head(m, 3, keep_classes=[0, 0]),
     "replace_head(m, 2, keep_classes=[0,1,2])": lambda: surgery.replace_head(m, 2, keep_classes=[0, 1, 2]),
     "replace_head(path, 3)": lambda: surgery.replace_head(cnn, 3),
     "enable_lora(path)": lambda: surgery.enable_lora(cnn, rank=2),
     "enable_lora(m, rank='x')": lambda: surgery.enable_lora(m, rank="x"),
     "enable_lora(m, 'fc', rank=2, alpha='x')": lambda: surgery.enable_lora(m, "fc", rank=2, alpha="x"),
     "merge_lora(path)": lambda: surgery.merge_lora(cnn),
     "verify(m, m, inputs='nope.npz')": lambda: surgery.verify(m, m, inputs=str(TMP / "nope.npz")),
     "verify(m, m, inputs=np.zeros((2,3)))": lambda: surgery.verify(m, m, inputs=np.zeros((2, 3))),
     "verify(m, 5)": lambda: surgery.verify(m, 5),
     "add_head(m, 0)": lambda: surgery.add_head(m, 0),
     "add_head(m, 3, pooling='x')": lambda: surgery.add_head(m, 3, pooling="x"),
     "learning_rates(path)": lambda: surgery.learning_rates(cnn, {"fc": 0.1}, 1e-3),
     "learning_rates(m, {'fc': 'x'})": lambda: surgery.learning_rates(m, {"fc": "x"}, 1e-3),
     "learning_rates(m, {'fc': 0.1}, -1)": lambda: surgery.learning_rates(m, {"fc": 0.1}, -1),
     "set_regularizer(m, 'fc/kernel', l2='x')": lambda: surgery.set_regularizer(m, "fc/kernel", l2="x"),
     "set_regularizer(m, 'fc/kernel', l2=-1)": lambda: surgery.set_regularizer(m, "fc/kernel", l2=-1),
     "set_initializer(m, 'fc/kernel', initializer='nope')": lambda: surgery.set_initializer(m, "fc/kernel", initializer="nope"),
     "set_constraint(m, 'fc/kernel', constraint='nope')": lambda: surgery.set_constraint(m, "fc/kernel", constraint="nope"),
     "finetune(m, None)": lambda: surgery.finetune(m, None),
     "finetune(m, (x,y) mismatched)": lambda: surgery.finetune(m, (np.zeros((4, 32, 32, 3)), np.zeros(3))),
     "finetune(m, data, epochs=-1)": lambda: surgery.finetune(m, (np.zeros((4, 32, 32, 3)), np.zeros(4)), epochs=-1),
     "finetune(m, data, batch_size=0)": lambda: surgery.finetune(m, (np.zeros((4, 32, 32, 3)), np.zeros(4)), batch_size=0),
     "finetune(m, data, optimizer='x')": lambda: surgery.finetune(m, (np.zeros((4, 32, 32, 3)), np.zeros(4)), optimizer="x"),
     "hub_layer(5)": lambda: surgery.hub_layer(5),
     "hub_layer('/nonexist')": lambda: surgery.hub_layer(str(TMP / "nonexist")),
     "Plan.from_file(5)": lambda: surgery.Plan.from_file(5),
     "Plan.from_file('/tmp')": lambda: surgery.Plan.from_file(str(TMP)),
     "edit.widen(m, 'nope', 5)": lambda: surgery.edit.widen(m, "nope", 5),
     "edit.widen(m, 'fc', 'x')": lambda: surgery.edit.widen(m, "fc", "x"),
     "edit.widen(path)": lambda: surgery.edit.widen(cnn, "fc", 100),
     "edit.deepen(m, 'nope')": lambda: surgery.edit.deepen(m, "nope"),
     "edit.delete_channels(m, 'fc', [999])": lambda: surgery.edit.delete_channels(m, "fc", [999]),
     "edit.delete_channels(m, 'fc', 'x')": lambda: surgery.edit.delete_channels(m, "fc", "x"),
     "edit.delete_channels(m, 'fc', [-1])": lambda: surgery.edit.delete_channels(m, "fc", [-1]),
     "edit.delete_layer(m, 5)": lambda: surgery.edit.delete_layer(m, 5),
     "edit.insert_layer(m, 'fc', 5)": lambda: surgery.edit.insert_layer(m, "fc", 5),
     "edit.replace_layer(m, 'fc', {'class_name': 'Dense'})": lambda: surgery.edit.replace_layer(m, "fc", {"class_name": "Dense"}),
     "reshape.adapt_in_channels(np.zeros((3,3,3,4)), 0)": lambda: surgery.reshape.adapt_in_channels(np.zeros((3, 3, 3, 4)), 0),
     "reshape.adapt_in_channels(list)": lambda: surgery.reshape.adapt_in_channels([1, 2], 2),
     "reshape.inflate_kernel(np.zeros(3), 3)": lambda: surgery.reshape.inflate_kernel(np.zeros(3), 3),
     "reshape.conv_from_torch(np.zeros(3))": lambda: surgery.reshape.conv_from_torch(np.zeros(3)),
     "reshape.lstm_from_torch bad": lambda: surgery.reshape.lstm_from_torch(np.zeros((8, 3)), np.zeros((8, 3)), np.zeros(8), np.zeros(8)),
     "reshape.remap_rows(np.zeros((3,2)), ['a'], ['b'])": lambda: surgery.reshape.remap_rows(np.zeros((3, 2)), ["a"], ["b"]),
     "reshape.net2wider bad": lambda: surgery.reshape.net2wider(np.zeros((3, 4)), np.zeros(4), np.zeros((5, 2)), 6),
     "reshape.reorder_flatten_rows bad": lambda: surgery.reshape.reorder_flatten_rows(np.zeros((10, 3)), (2, 2, 2), source="channels_first", target="channels_last"),
    }
    return calls


NAMES = ['load_model(None)', 'load_model(123)', 'load_model(dir)', 'save_model(None)', 'save_model(m, 5)', 'open_weights(5)', 'open_weights(None)', 'inspect(5)', 'diff(m, 5)', 'transplant(None, m)', "transplant(cnn, 'path')", 'transplant(cnn, m, rules=5)', "transplant(cnn, m, rules={'skip': 5})", "transplant(cnn, m, rules={'rename':[{'from':1}]})", 'freeze(m, 5)', 'freeze(path)', 'freeze(m, None)', "unfreeze(m, '')", "reinitialize(m, 'head', initializer=5)", "reinitialize(m, 'head', seed='x')", 'reinitialize(path)', "replace_head(m, 'x')", 'replace_head(m, 3, keep_classes=[99])', 'replace_head(m, 3, keep_classes=[0,0])', 'replace_head(m, 2, keep_classes=[0,1,2])', 'replace_head(path, 3)', 'enable_lora(path)', "enable_lora(m, rank='x')", "enable_lora(m, 'fc', rank=2, alpha='x')", 'merge_lora(path)', "verify(m, m, inputs='nope.npz')", 'verify(m, m, inputs=np.zeros((2,3)))', 'verify(m, 5)', 'add_head(m, 0)', "add_head(m, 3, pooling='x')", 'learning_rates(path)', "learning_rates(m, {'fc': 'x'})", "learning_rates(m, {'fc': 0.1}, -1)", "set_regularizer(m, 'fc/kernel', l2='x')", "set_regularizer(m, 'fc/kernel', l2=-1)", "set_initializer(m, 'fc/kernel', initializer='nope')", "set_constraint(m, 'fc/kernel', constraint='nope')", 'finetune(m, None)', 'finetune(m, (x,y) mismatched)', 'finetune(m, data, epochs=-1)', 'finetune(m, data, batch_size=0)', "finetune(m, data, optimizer='x')", 'hub_layer(5)', "hub_layer('/nonexist')", 'Plan.from_file(5)', "Plan.from_file('/tmp')", "edit.widen(m, 'nope', 5)", "edit.widen(m, 'fc', 'x')", 'edit.widen(path)', "edit.deepen(m, 'nope')", "edit.delete_channels(m, 'fc', [999])", "edit.delete_channels(m, 'fc', 'x')", "edit.delete_channels(m, 'fc', [-1])", 'edit.delete_layer(m, 5)', "edit.insert_layer(m, 'fc', 5)", "edit.replace_layer(m, 'fc', {'class_name': 'Dense'})", 'reshape.adapt_in_channels(np.zeros((3,3,3,4)), 0)', 'reshape.adapt_in_channels(list)', 'reshape.inflate_kernel(np.zeros(3), 3)', 'reshape.conv_from_torch(np.zeros(3))', 'reshape.lstm_from_torch bad', "reshape.remap_rows(np.zeros((3,2)), ['a'], ['b'])", 'reshape.net2wider bad', 'reshape.reorder_flatten_rows bad']


@pytest.mark.parametrize("name", NAMES)
def test_bad_call_raises_a_surgery_error(setup, name):
    with pytest.raises(SurgeryError) as e:
        setup[name]()
    assert "\n" not in str(e.value) and str(e.value)


@pytest.mark.parametrize("call, cls, message", [
    (lambda m, p: surgery.replace_head(p, 3), InputError,
     "replace_head needs a live Keras model, got str; load it first: model = "
     "surgery.load_model({p!r})"),
    (lambda m, p: surgery.edit.delete_layer(m, 5), OptionError,
     "edit.delete_layer: layer must be a layer name (a string), got 5"),
    (lambda m, p: surgery.set_regularizer(m, "fc/kernel", l2="x"), OptionError,
     "l2 must be a finite number >= 0, got 'x'"),
    (lambda m, p: surgery.reinitialize(m, "head", seed="x"), OptionError,
     "seed must be an integer, got 'x'"),
    (lambda m, p: surgery.transplant(p, m, rules=5), surgery.errors.SurgeryError,
     "rules must be a TOML file path, a dict or a list of renames, got int"),
])
def test_exact_lines(samples, call, cls, message):
    m = surgery.load_model(samples["cnn"])
    with pytest.raises(cls) as e:
        call(m, samples["cnn"])
    assert str(e.value) == message.format(p=samples["cnn"])


def test_submodules_are_reachable_after_import_surgery():
    import importlib
    import subprocess
    import sys
    code = ("import surgery; print(surgery.edit.widen.__name__, "
            "surgery.reshape.adapt_in_channels.__name__, surgery.errors.SurgeryError.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=importlib.import_module("tests.conftest").ROOT)
    assert out.stdout.split() == ["widen", "adapt_in_channels", "SurgeryError"], out.stderr
