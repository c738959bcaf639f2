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
ORDER = ["errors", "text", "entries", "reshape", "selection", "layertypes", "io", "transfer",
         "model", "edit", "train", "plans", "sample_models", "recipes", "cli"]


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


_LOW = ["surgery.errors", "surgery.text", "surgery.entries", "surgery.reshape",
        "surgery.selection", "surgery.layertypes", "surgery.io.sources", "surgery.io.inventory",
        "surgery.io.diff", "surgery.io.describe", "surgery.io.atomic",
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
