"""Packaging: the wheel installs everything inside the `surgery` package (no generic top-level
`cli`, `recipes` or `sample_models`), with the sample models and examples the recipes and the
demo read. The fast tests check pyproject against the tree; the slow one builds the wheel,
installs it in a fresh venv and runs `surgery demo` and `surgery recipe run` from it."""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.conftest import ROOT

_MAPPED = {"recipes": "surgery.recipes", "sample_models": "surgery.sample_models",
           "examples": "surgery.examples"}


def _setuptools() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def _data_files(folder: str) -> list[str]:
    """Files the package needs besides its Python modules, relative to `folder`."""
    out = []
    for here, dirs, names in os.walk(os.path.join(ROOT, folder)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            if not name.endswith((".py", ".pyc")):
                out.append(os.path.relpath(os.path.join(here, name), os.path.join(ROOT, folder)))
    return sorted(out)


def test_every_package_folder_is_listed():
    listed = set(_setuptools()["packages"])
    found = {"surgery." + os.path.relpath(here, os.path.join(ROOT, "surgery")).replace(os.sep, ".")
             for here, _, names in os.walk(os.path.join(ROOT, "surgery"))
             if "__init__.py" in names and "__pycache__" not in here}
    found = {p.replace("surgery..", "surgery") for p in found} | set(_MAPPED.values())
    assert listed == found, (sorted(listed - found), sorted(found - listed))
    assert _setuptools()["package-dir"] == {v: k for k, v in _MAPPED.items()}
    assert "py-modules" not in _setuptools()  # no generic top-level module in site-packages


@pytest.mark.parametrize("folder", ["sample_models", "examples"])
def test_every_data_file_is_shipped(folder):
    patterns = _setuptools()["package-data"][_MAPPED[folder]]
    missing = [f for f in _data_files(folder)
               if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert not missing, f"add to [tool.setuptools.package-data] {_MAPPED[folder]!r}: {missing}"


@pytest.mark.slow  # builds a wheel and a venv: about a minute
def test_wheel_runs_demo_and_a_recipe_from_a_fresh_venv(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), ROOT], check=True,
                   cwd=tmp_path)
    (wheel,) = wheels.glob("surgery-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"surgery", wheel.name[:-4].rsplit("-", 3)[0] + ".dist-info"}, tops
    for needed in ("surgery/py.typed", "surgery/sample_models/cnn.keras",
                   "surgery/sample_models/hub_module/saved_model.pb",
                   "surgery/examples/rules/torch_lstm.toml", "surgery/recipes/cnn.py",
                   "surgery/cli/__init__.py"):
        assert needed in names, needed
    # a fresh venv holding only the wheel; its dependencies come from this venv's
    # site-packages, appended after the fresh one (this project's editable install is not
    # activated there: .pth files are read only in site directories)
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(fresh)], check=True)
    subprocess.run([str(fresh / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True)
    site = subprocess.run([str(fresh / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = subprocess.run([sys.executable, "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(ours + "\n")
    work = tmp_path / "work"  # not the repository: its ./surgery must not be found
    work.mkdir()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    python = str(fresh / "bin" / "python")
    where = subprocess.run([python, "-c", "import surgery.recipes, surgery; "
                            "print(surgery.__file__); print(surgery.recipes.__file__)"],
                           cwd=work, env=env, check=True, capture_output=True, text=True)
    assert all(line.startswith(site) for line in where.stdout.split()), where.stdout
    surgery_cmd = [str(fresh / "bin" / "surgery")]  # the console script pip installed
    r = subprocess.run(surgery_cmd + ["recipe", "run", "cnn-channels", "--set", "channels=1",
                                      "-o", "gray.keras"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (work / "gray.keras").is_file()
    r = subprocess.run(surgery_cmd + ["demo", "--out", "demo-out", "--seeds", "1",
                                      "--task", "lstm"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (work / "demo-out" / "summary.json").is_file()
