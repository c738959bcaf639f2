"""A small config declaring a huge layer (issue #22 §3): `units=250000000` in a 15 KB `.keras`
whose stored kernel is (4, 3) is refused before Keras builds (allocates) anything. Checked in
a subprocess under a 3 GiB address-space limit: building the declared layer would need
4 GB, so only a check that runs before Keras can pass."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile

import pytest

from tests.conftest import ROOT, sha256


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            zout.writestr(name, data)


def _layers(config):
    return {l["config"]["name"]: l for l in config["config"]["layers"]}


@pytest.fixture(scope="module")
def small(keras, tmp_path_factory):
    folder = tmp_path_factory.mktemp("declared")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc"),
                              keras.layers.Dense(2, name="head")])
    model.save(folder / "m.keras")
    return folder


@pytest.mark.parametrize("layer, key, value, stored", [
    ("fc", "units", 250_000_000, "kernel (4, 3)"),
    ("head", "units", 7, "kernel (3, 2)"),
])
def test_declared_width_must_match_the_stored_weights(small, layer, key, value, stored):
    bad = small / f"{layer}-{value}.keras"

    def edit(config):
        _layers(config)[layer]["config"][key] = value

    _rewrite(small / "m.keras", bad, edit)
    before = sha256(str(bad))
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        import surgery
        try:
            surgery.load_model({str(bad)!r})
        except surgery.SurgeryError as e:
            print("refused:", e)
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.stdout.strip() == (
        f"refused: {bad}: layer {layer!r} (Dense) declares {key}={value} but the file stores "
        f"{stored}; the config and the weights disagree (a damaged or edited file), so it is "
        "refused before anything is built"), r.stderr[-1500:]
    assert sha256(str(bad)) == before


def test_matching_widths_load(small):
    import surgery
    model = surgery.load_model(str(small / "m.keras"))
    assert [l.name for l in model.layers] == ["fc", "head"]
