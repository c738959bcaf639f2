"""One error hierarchy (issue #17 item 3): every error class lives in surgery/errors.py and
subclasses `SurgeryError`; library code raises specific subclasses (never the bare base) and no
`assert` for input checks; errors carry structured fields (path, layer, variable, shapes) that
match what the failing call was given."""

from __future__ import annotations

import ast
import builtins
import functools
import inspect
import os

import numpy as np
import pytest

import surgery
from surgery import errors
from surgery.errors import (EditError, OutputError, OutputExists, SelectorError, ShapeError,
                            SurgeryError)
from tests.conftest import ROOT

LIBRARY = os.path.join(ROOT, "surgery")


@functools.cache
def _library_files() -> tuple:
    """(path relative to the repository, parsed module) for every library module, parsed once."""
    out = []
    for folder, _, names in os.walk(LIBRARY):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                out.append((os.path.relpath(path, ROOT), ast.parse(open(path).read(), path)))
    return tuple(out)


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def test_no_library_module_raises_the_bare_base_class():
    bare = []
    for rel, tree in _library_files():
        if rel == os.path.join("surgery", "errors.py"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _name(node.func) == "SurgeryError":
                bare.append(f"{rel}:{node.lineno}")
    assert not bare, "raise a SurgeryError subclass, not the base: " + ", ".join(bare)


def test_no_exception_class_is_defined_outside_errors_py():
    # Exception classes by name: the builtin ones, then (to a fixed point) every class in the
    # library whose base is one of them, so an indirect subclass is caught too.
    known = {n for n, v in vars(builtins).items()
             if inspect.isclass(v) and issubclass(v, Exception)} | set(errors.__all__)
    classes = [(rel, node) for rel, tree in _library_files() for node in ast.walk(tree)
               if isinstance(node, ast.ClassDef)]
    changed = True
    while changed:
        changed = False
        for _, node in classes:
            if node.name not in known and any(_name(b) in known for b in node.bases):
                known.add(node.name)
                changed = True
    outside = [f"{rel}:{node.lineno} {node.name}" for rel, node in classes
               if rel != os.path.join("surgery", "errors.py")
               and any(_name(b) in known for b in node.bases)]
    assert not outside, "define error classes in surgery/errors.py: " + ", ".join(outside)


def test_the_name_check_above_can_see_a_local_error_class():
    tree = ast.parse("class Local(SurgeryError):\n    pass\nclass Deeper(Local):\n    pass\n")
    known = {"SurgeryError"}
    for node in tree.body:
        if any(_name(b) in known for b in node.bases):
            known.add(node.name)
    assert known == {"SurgeryError", "Local", "Deeper"}


def test_every_class_in_errors_py_is_a_surgery_error_and_public():
    defined = {n: c for n, c in vars(errors).items()
               if inspect.isclass(c) and c.__module__ == errors.__name__}
    assert set(defined) == set(errors.__all__)
    assert all(issubclass(c, SurgeryError) for c in defined.values())
    public = [n for n in defined if n != "RegexRefused"]  # raised and caught inside selection
    assert all(getattr(surgery, n) is defined[n] for n in public)
    assert set(public) <= set(surgery.__all__)


def test_moved_classes_are_still_importable_from_their_old_modules():
    from surgery.plans.plan import PlanError
    from surgery.transfer.rules import RulesError

    assert RulesError is errors.RulesError and PlanError is errors.PlanError
    assert surgery.PlanError is errors.PlanError and surgery.RulesError is errors.RulesError
    assert issubclass(OutputExists, OutputError)
    assert errors.Interrupted.exit_code == 130 and errors.CheckFailed.exit_code == 1
    assert SurgeryError.exit_code == EditError.exit_code == 2


def test_no_assert_in_library_code():
    found = [f"{rel}:{node.lineno}" for rel, tree in _library_files()
             for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    assert not found, "raise a SurgeryError subclass instead of assert: " + ", ".join(found)


def test_fields_default_to_none_and_the_message_stays_one_escaped_line():
    e = ShapeError("fc/kernel: source (3, 4)\nvs \x1b[31m(3, 2)", variable="fc/kernel",
                   shapes=([3, 4], (3, 2)))
    assert str(e) == "fc/kernel: source (3, 4) vs \\x1b[31m(3, 2)"
    assert (e.path, e.layer, e.variable, e.shapes) == (None, None, "fc/kernel", ((3, 4), (3, 2)))
    bare = OutputError("x")
    assert (bare.path, bare.layer, bare.variable, bare.shapes) == (None, None, None, None)


def test_an_existing_output_is_output_exists_with_its_path(tmp_path):
    from surgery.io.atomic import atomic_dir, atomic_path, check_output

    out = tmp_path / "out.npz"
    out.write_bytes(b"keep")
    with pytest.raises(OutputExists) as e:
        check_output(out)
    assert str(e.value) == f"{out}: already exists; pass --overwrite (overwrite=True) to replace it"
    assert e.value.path == str(out)
    # The same class when another process creates the file while ours is being written.
    late = tmp_path / "late.npz"
    with pytest.raises(OutputExists) as e:
        with atomic_path(late) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"ours")
            late.write_bytes(b"theirs")
    assert e.value.path == str(late) and late.read_bytes() == b"theirs"
    folder = tmp_path / "export"
    folder.mkdir()
    with pytest.raises(OutputExists) as e:
        with atomic_dir(folder):
            pass
    assert e.value.path == str(folder)
    assert out.read_bytes() == b"keep"


def test_an_adapter_that_cannot_bridge_two_shapes_names_both():
    from surgery.transfer.adapters import get_adapter, run_adapter

    kernel = np.ones((4, 3), np.float32)
    with pytest.raises(ShapeError) as e:
        run_adapter(get_adapter("slice"), {"": kernel}, {"": (5, 3)}, {}, "fc/kernel")
    assert str(e.value) == ("fc/kernel: adapter 'slice' can't map source (4, 3) onto target "
                            "(5, 3): axis 0 would grow 4 -> 5; use 'pad' or 'fit'")
    assert e.value.variable == "fc/kernel" and e.value.shapes == ((4, 3), (5, 3))


def test_a_selector_that_matches_nothing_is_a_selector_error(tmp_path):
    from surgery.selection import select

    path = tmp_path / "w.npz"
    np.savez(path, **{"fc/kernel": np.zeros((3, 2)), "fc/bias": np.zeros(2)})
    src = surgery.open_weights(str(path))
    with pytest.raises(SelectorError, match=r"selector 'head/\*' matches nothing in .*closest "
                                            r"paths: "):
        select(src.variables(), ["head/*"], what=str(path))
    assert [v.path for v in select(src.variables(), ["fc/*"])] == ["fc/kernel", "fc/bias"]


def test_a_strict_transplant_names_the_mismatched_variable_and_both_shapes(keras, tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")])
    before = [w.copy() for w in model.get_weights()]
    path = tmp_path / "src.npz"
    np.savez(path, **{"fc/kernel": np.ones((3, 4), np.float32),
                      "fc/bias": np.ones(2, np.float32)})
    with pytest.raises(errors.CheckFailed) as e:
        surgery.transplant(str(path), model, strict=True)
    assert "fc/kernel: source fc/kernel (3, 4) vs target (3, 2)" in str(e.value)
    assert e.value.variable == "fc/kernel" and e.value.shapes == ((3, 4), (3, 2))
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_an_edit_refusal_names_the_layer(keras):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="hidden"),
                              keras.layers.Dense(2, name="out")])
    with pytest.raises(EditError) as e:
        surgery.edit.widen(model, "out", 3)
    assert str(e.value) == ("layer 'out' feeds no other layer; widening it changes the model's "
                            "output width")
    assert e.value.layer == "out"
    with pytest.raises(SelectorError) as e:
        surgery.edit.widen(model, "hiden", 8)
    assert e.value.layer == "hiden" and "closest: hidden" in str(e.value)


@pytest.mark.parametrize("call", ["enable_lora", "learning_rates"])
def test_a_path_where_a_live_model_is_needed_is_an_input_error(call, tmp_path):
    args = {"enable_lora": lambda f: f("model.keras", rank=2),
            "learning_rates": lambda f: f("model.keras", {"fc": 0.1}, 1e-3)}[call]
    with pytest.raises(errors.InputError, match=f"{call} needs a live Keras model, got str; "
                                                 r"load it first"):
        args(getattr(surgery, call))
