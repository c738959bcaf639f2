"""The package layout (README "Layout"): imports point downward only, and the low layers never
pull TensorFlow. Read from the source with `ast`, so a new upward import fails here by name."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Lowest first: a module may import from its own group and the groups before it.
ORDER = ["errors", "text", "entries", "outcomes", "results", "reshape", "selection",
         "layertypes", "io", "transfer", "model", "edit", "train", "plans", "sample_models",
         "recipes", "cli"]


# folders of the repository installed inside the surgery package (pyproject's package-dir)
_MAPPED = {"surgery": "surgery", "recipes": "surgery.recipes",
           "sample_models": "surgery.sample_models"}


def _modules():
    for top, package in _MAPPED.items():
        base = os.path.join(ROOT, top)
        for folder, _, names in os.walk(base):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, base)[:-3].replace(os.sep, ".")
                    module = package if rel == "__init__" else f"{package}.{rel}"
                    module = module[:-9] if module.endswith(".__init__") else module
                    yield path, module, name == "__init__.py"


def _group(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "surgery" and len(parts) > 1 else None


def _imports(path: str, module: str, is_package: bool):
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[:len(base) - (node.level - 1)]
                target = ".".join(parent + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_every_module_belongs_to_a_known_group():
    groups = {_group(m) for _, m, _ in _modules()} - {None}
    assert groups <= set(ORDER), f"add {sorted(groups - set(ORDER))} to ORDER and the README"


def test_imports_point_downward_only():
    upward = []
    for path, module, is_package in _modules():
        own = _group(module)
        if own is None:
            continue
        for target in _imports(path, module, is_package):
            other = _group(target)
            if other in ORDER and ORDER.index(other) > ORDER.index(own):
                upward.append(f"{module} imports {target}")
    assert not upward, "upward imports: " + "; ".join(sorted(set(upward)))


_LOW = ["surgery.errors", "surgery.text", "surgery.entries", "surgery.outcomes",
        "surgery.results",
        "surgery.reshape", "surgery.selection", "surgery.layertypes", "surgery.io.sources",
        "surgery.io.inventory", "surgery.io.diff", "surgery.io.describe", "surgery.io.atomic",
        "surgery.io.classnames",
        "surgery.transfer.rules", "surgery.transfer.matching", "surgery.transfer.transplant",
        "surgery.plans.schema"]
_BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'tensorflow_hub'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("module", _LOW)
def test_low_modules_import_no_tensorflow(module):
    code = _BLOCK + f"import importlib; importlib.import_module({module!r}); print('ok')"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.strip() == "ok", r.stderr[-2000:]


def test_a_file_transplant_runs_without_tensorflow(tmp_path, samples):
    code = _BLOCK + (f"import surgery; r = surgery.transplant_file({samples['cnn']!r}, "
                     f"{samples['cnn']!r}, {str(tmp_path / 'o.keras')!r}); print(r.ok)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.strip() == "True", r.stderr[-2000:]


# ------------------------------------------------------- the public API (issue #17, item 5)

# Helpers that are not top-level names, and where they stay reachable.
_HELPERS = {"find_head": "surgery.model.heads", "select": "surgery.selection",
            "describe_setup": "surgery.io.describe", "variable_stats": "surgery.io.describe",
            "accuracy": "surgery.model.verify", "VariableInfo": "surgery.entries",
            "LayerInfo": "surgery.entries"}


def test_every_public_name_resolves_and_helpers_stay_in_their_modules():
    import importlib

    import surgery

    unresolved = []
    for name in surgery.__all__:
        try:
            getattr(surgery, name)
        except (AttributeError, ImportError) as e:
            unresolved.append(f"{name}: {e}")
    assert not unresolved, unresolved
    assert len(surgery.__all__) == len(set(surgery.__all__))
    for name, module in _HELPERS.items():
        assert name not in surgery.__all__, name
        assert hasattr(importlib.import_module(module), name), (module, name)
        with pytest.raises(AttributeError):
            getattr(surgery, name)


def _classes(hint) -> list[type]:
    import typing

    if isinstance(hint, type) and not typing.get_args(hint):
        return [hint]
    origin = typing.get_origin(hint)
    found = [origin] if isinstance(origin, type) else []
    return found + [c for arg in typing.get_args(hint) for c in _classes(arg)]


def test_what_the_public_functions_return_is_public():
    """Every surgery class a public function is annotated to return (EditResult[HeadReport],
    FreezeReport, ...) is a top-level name too: a user can name what they get back."""
    import inspect
    import typing

    import surgery

    public = {id(getattr(surgery, n)) for n in surgery.__all__}
    missing = set()
    for name in surgery.__all__:
        fn = getattr(surgery, name)
        if not inspect.isfunction(fn):
            continue
        for cls in _classes(typing.get_type_hints(fn).get("return")):
            if cls.__module__.startswith("surgery") and id(cls) not in public:
                missing.add(f"{name} -> {cls.__name__}")
    assert not missing, sorted(missing)


def test_structure_changing_functions_return_an_edit_result():
    import typing

    import surgery

    for name, report in [("replace_head", "HeadReport"), ("add_head", "AddHeadReport"),
                         ("set_regularizer", "SetupReport"), ("set_initializer", "SetupReport"),
                         ("set_constraint", "SetupReport")]:
        hint = typing.get_type_hints(getattr(surgery, name))["return"]
        assert typing.get_origin(hint) is surgery.EditResult, name
        assert typing.get_args(hint) == (getattr(surgery, report),), name
    import surgery.edit
    assert surgery.edit.EditResult is surgery.EditResult


def test_readme_names_exist():
    """Every `surgery.X.Y` the README names, and every `from surgery... import name` line in
    it, resolves (a module or an attribute; or a data folder pyproject installs as a
    subpackage, like `surgery.examples`)."""
    import importlib
    import re
    import tomllib

    import surgery

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        mapped = tomllib.load(f)["tool"]["setuptools"].get("package-dir", {})
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    dotted = set(re.findall(r"\bsurgery((?:\.[A-Za-z_]\w*)+)", text))
    dotted |= {f"{m[len('surgery'):]}.{n}" for m, n in
               re.findall(r"from (surgery(?:\.\w+)*) import (\w+)", text)}
    assert {".replace_head", ".add_head", ".finetune", ".edit.delete_channels"} <= dotted
    broken = []
    for name in sorted(dotted):
        obj, where = surgery, "surgery"
        for part in name.strip(".").split("."):
            where = f"{where}.{part}"
            if hasattr(obj, part):
                obj = getattr(obj, part)
                continue
            try:
                obj = importlib.import_module(where)
            except ImportError:
                if not os.path.isdir(os.path.join(ROOT, mapped.get(where, "\0"))):
                    broken.append(where)
                break
    assert not broken, broken


def test_finetune_defaults_agree_with_keras_fit():
    """`surgery.finetune`, the multi-worker loop and `surgery finetune` train as many epochs
    as Keras's own `fit` does by default."""
    import inspect

    import keras

    import surgery
    from surgery.cli import main
    from surgery.train.multiworker import finetune_multiworker

    fit = inspect.signature(keras.Model.fit).parameters["epochs"].default
    assert fit == 1
    assert inspect.signature(surgery.finetune).parameters["epochs"].default == fit
    assert inspect.signature(finetune_multiworker).parameters["epochs"].default == fit
    options = {p.name: p for p in main.commands["finetune"].params}
    assert options["epochs"].default == fit
