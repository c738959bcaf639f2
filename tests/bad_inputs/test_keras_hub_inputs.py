"""Loading models whose classes come from packages (issue #19 item 5): keras-hub classes pass
safe mode as they do in Keras's own; a package that is not installed is named with the
command that installs it; `--import MODULE` loads a package of custom layers; bad `--import`
values are refused before anything is loaded. Each error line is checked exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from surgery.cli import main
from surgery.errors import FormatError
from tests.conftest import ROOT

PACKAGE = "surgery_h11_layers"
_SOURCE = '''
import keras


@keras.saving.register_keras_serializable(package="surgery_h11_layers")
class Twice(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x
'''


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_import_of_a_missing_module_is_refused(tmp_path):
    r = run("freeze", "m.keras", "-o", tmp_path / "o.keras", "--select", "x", "--import",
            "no_such_pkg_h11.layers")
    assert r.exit_code == 2
    assert r.output == ("error: Invalid value for '--import': no module named 'no_such_pkg_h11' "
                        "is installed; pip install no-such-pkg-h11 (or fix the name); see "
                        "'surgery freeze --help'\n")


def test_import_of_a_bad_name_is_refused(tmp_path):
    r = run("head", "m.keras", "-o", tmp_path / "o.keras", "--classes", "2", "--import",
            "os; rm")
    assert r.exit_code == 2
    assert r.output == ("error: Invalid value for '--import': 'os; rm' is not a Python module "
                        "name; give one such as keras_hub or my_layers.blocks; see 'surgery "
                        "head --help'\n")


def _rewrite_config(src: str, dst: str, edit) -> None:
    with zipfile.ZipFile(src) as z:
        members = {name: z.read(name) for name in z.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def test_a_package_that_is_not_installed_is_named(keras, tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")])
    model.save(tmp_path / "m.keras")

    def edit(config):
        layer = config["config"]["layers"][1]
        layer.update(module="not_installed_h11.layers", registered_name="not_installed_h11>Fc")
    _rewrite_config(str(tmp_path / "m.keras"), str(tmp_path / "x.keras"), edit)
    with pytest.raises(FormatError) as e:
        surgery.load_model(str(tmp_path / "x.keras"), safe_mode=False)
    assert str(e.value) == (f"{tmp_path / 'x.keras'}: this model uses not_installed_h11>Fc "
                            "(layer 'fc') from not_installed_h11, which is not installed: pip "
                            "install not-installed-h11")


_BLOCKED = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'keras_hub':
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
import surgery
try:
    surgery.load_model(sys.argv[2])
except surgery.SurgeryError as e:
    print(e)
"""


@pytest.mark.slow
def test_keras_hub_missing_says_pip_install_keras_hub(tmp_path):
    """In a fresh process where keras_hub can't be imported (as where it is not installed),
    a keras-hub file names the package and the command that installs it."""
    pytest.importorskip("keras_hub")
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=20, num_layers=1, num_heads=1,
                                             hidden_dim=4, intermediate_dim=8,
                                             max_sequence_length=8, name="bert_backbone")
    path = tmp_path / "bert.keras"
    backbone.save(path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", _BLOCKED, ROOT, str(path)], text=True,
                          capture_output=True, env=env, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == (
        f"{path}: this model uses keras_hub>BertBackbone (layer 'bert_backbone') from "
        "keras_hub, which is not installed: pip install keras-hub"), done.stderr[-2000:]


def test_keras_hub_missing_in_process(keras, tmp_path, monkeypatch):
    """The same check in this process: keras_hub reported as not installed and its classes
    as unregistered."""
    keras_hub = pytest.importorskip("keras_hub")
    from surgery.model import saving

    backbone = keras_hub.models.BertBackbone(vocabulary_size=20, num_layers=1, num_heads=1,
                                             hidden_dim=4, intermediate_dim=8,
                                             max_sequence_length=8, name="tiny_bert")
    path = tmp_path / "bert.keras"
    backbone.save(path)
    real = keras.saving.get_registered_object
    monkeypatch.setattr(keras.saving, "get_registered_object",
                        lambda name, *a, **k: None if str(name).startswith("keras_hub>")
                        else real(name, *a, **k))
    monkeypatch.setattr(saving, "_installed", lambda package: package != "keras_hub")
    with pytest.raises(FormatError) as e:
        surgery.load_model(str(path))
    assert str(e.value) == (f"{path}: this model uses keras_hub>BertBackbone (layer "
                            "'tiny_bert') from keras_hub, which is not installed: pip install "
                            "keras-hub")


@pytest.fixture
def layers_package(keras, tmp_path, monkeypatch):
    """A package of custom layers on sys.path, used to build and save a model, then
    forgotten (unregistered, unimported), as in a fresh `surgery` process."""
    folder = tmp_path / "pkg"
    (folder / PACKAGE).mkdir(parents=True)
    (folder / PACKAGE / "__init__.py").write_text(_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    import importlib

    module = importlib.import_module(PACKAGE)
    x = keras.Input((3,))
    model = keras.Model(x, keras.layers.Dense(2, name="fc")(module.Twice(name="twice")(x)))
    model.save(tmp_path / "custom.keras")
    objects = keras.saving.get_custom_objects()
    objects.pop(f"{PACKAGE}>Twice", None)
    from keras.src.saving import object_registration

    object_registration.GLOBAL_CUSTOM_NAMES.pop(module.Twice, None)
    sys.modules.pop(PACKAGE, None)
    yield tmp_path / "custom.keras", model
    keras.saving.get_custom_objects().pop(f"{PACKAGE}>Twice", None)
    sys.modules.pop(PACKAGE, None)


def test_import_loads_a_package_of_custom_layers(layers_package, keras, tmp_path):
    path, model = layers_package
    out = tmp_path / "frozen.keras"
    r = run("freeze", path, "--select", "fc", "-o", out)
    assert r.exit_code == 2 and r.output == (
        f"error: {path}: layer 'twice' names module '{PACKAGE}', outside Keras; safe mode "
        "refuses it; load it with safe_mode=False (CLI: --unsafe) only if you trust the file\n")
    r = run("freeze", path, "--select", "fc", "-o", out, "--unsafe")
    assert r.exit_code == 2 and r.output == (
        f"error: {path}: this model uses {PACKAGE}>Twice (layer 'twice') from {PACKAGE}, which "
        f"registers it when imported: pass --import {PACKAGE} (CLI) or import {PACKAGE} first "
        "(Python)\n")
    assert not out.exists()
    r = run("freeze", path, "--select", "fc", "-o", out, "--import", PACKAGE)
    assert r.exit_code == 0, r.output
    loaded = keras.saving.load_model(str(out), compile=False)  # the package is imported now
    x = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6)
    assert [w.name for w in loaded.trainable_weights] == []


def test_safe_mode_accepts_keras_packages_by_name(tmp_path, monkeypatch):
    """Safe mode accepts keras-hub's classes by their package, as Keras's own does, even
    where nothing registered them yet (a fresh process); another package is refused."""
    keras_hub = pytest.importorskip("keras_hub")
    from surgery.errors import UnsafeModelError
    from surgery.io import safety

    backbone = keras_hub.models.BertBackbone(vocabulary_size=20, num_layers=1, num_heads=1,
                                             hidden_dim=4, intermediate_dim=8,
                                             max_sequence_length=8, name="tiny")
    backbone.save(tmp_path / "b.keras")
    with zipfile.ZipFile(tmp_path / "b.keras") as z:
        config = json.loads(z.read("config.json"))
    monkeypatch.setattr(safety, "_registered", lambda name: False)
    safety.check_config(config, "b.keras")
    config["module"] = "keras_hub_lookalike.models"
    with pytest.raises(UnsafeModelError) as e:
        safety.check_config(config, "b.keras")
    assert str(e.value) == ("b.keras: layer 'tiny' names module 'keras_hub_lookalike.models', "
                            "outside Keras; safe mode refuses it; load it with safe_mode=False "
                            "(CLI: --unsafe) only if you trust the file")


def test_import_trusts_a_module_for_one_command_only(tmp_path):
    """--import lasts one command: in one process (CliRunner, a notebook) a module named once
    must not be imported by every later load."""
    from click.testing import CliRunner

    from surgery.cli import main
    from surgery.io.safety import trusted_modules
    from tests.conftest import SAMPLES

    r = CliRunner().invoke(main, ["reinit", os.path.join(SAMPLES, "cnn.keras"), "--select",
                                  "head", "--dry-run", "--import", "json"])
    assert r.exit_code == 0, r.output
    assert trusted_modules() == ()
