"""tests/mutation.py itself: the mutants it makes from a known snippet (compared with a list
written by hand), and a toy package whose weak test lets a mutant survive (so the check can
fail), run both ways (fork and a fresh interpreter)."""

from __future__ import annotations

import ast
import textwrap

import pytest

from tests import mutation as M

SNIPPET = textwrap.dedent('''\
    LIMIT = [1, 2][0]


    def clamp(x, hi):
        """Docstring: x < hi is not code."""
        if x < hi:
            return x
        return hi


    def last(a):
        return a[len(a) - 1]


    def flip(m):
        return m.T


    def positive(x):
        return x > 0


    def message(n):
        return f"{n + 1} units"


    def moved(a, np):
        return np.take(a, [0], axis=-2).transpose((1, 0))
    ''')


def test_mutants_of_a_known_snippet():
    got = [(m.line, m.function, m.kind, m.before, m.after)
           for m in M.generate_mutants(SNIPPET, "snippet.py")]
    # in source order; `[0]` is a list, not a subscript, so no off-by-one there
    assert got == [
        (6, "clamp", "compare", "x < hi", "x <= hi"),
        (12, "last", "arith", "len(a) - 1", "len(a) + 1"),
        (12, "last", "off-by-one", "1", "0"),
        (12, "last", "off-by-one", "1", "2"),
        (16, "flip", "drop-T", "m.T", "m"),
        (20, "positive", "compare", "x > 0", "x >= 0"),
        (20, "positive", "return-not", "x > 0", "not (x > 0)"),
        (28, "moved", "axis", "np.take(a, [0], axis=-2)", "np.take(a, [0], axis=-1)"),
        (28, "moved", "axis", "np.take(a, [0], axis=-2)", "np.take(a, [0], axis=-3)"),
        (28, "moved", "drop-transpose", "np.take(a, [0], axis=-2).transpose((1, 0))",
         "np.take(a, [0], axis=-2)"),
        (28, "moved", "swap-axes", "np.take(a, [0], axis=-2).transpose((1, 0))",
         "np.take(a, [0], axis=-2).transpose((0, 1))"),
    ]


def test_applied_mutant_is_the_expected_source_and_keeps_line_numbers():
    mutants = {(m.line, m.kind, m.after): m for m in M.generate_mutants(SNIPPET, "s.py")}
    out = M.apply_mutant(SNIPPET, mutants[(12, "arith", "len(a) + 1")])
    assert out == SNIPPET.replace("a[len(a) - 1]", "a[(len(a) + 1)]")
    multi = "def f(a, b):\n    return (a <\n            b)\n"
    (m,) = [m for m in M.generate_mutants(multi, "m.py") if m.kind == "compare"]
    out = M.apply_mutant(multi, m)
    assert out.count("\n") == multi.count("\n")
    assert ast.dump(ast.parse(out)) == ast.dump(ast.parse("def f(a, b):\n    return a <= b\n"))


def test_sample_is_seeded_and_spread_over_functions():
    ms = M.generate_mutants(SNIPPET, "s.py")
    a, b = M.sample_mutants(ms, 5, 0), M.sample_mutants(ms, 5, 0)
    assert a == b and len(a) == 5
    assert len({m.function for m in a}) == 5  # five functions before any repeats


TOY_MODULE = textwrap.dedent('''\
    def above(x, lo):
        return x > lo
    ''')
# Weak: never tries x == lo, so `>` -> `>=` survives; `not (x > lo)` is caught.
TOY_TEST = textwrap.dedent('''\
    from toypkg.mod import above


    def test_above():
        assert above(3, 1) is True
        assert above(0, 1) is False
    ''')


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "fresh-interpreter"])
def test_weak_toy_test_lets_a_mutant_survive(tmp_path, fork):
    (tmp_path / "toypkg").mkdir()
    (tmp_path / "toypkg" / "__init__.py").write_text("")
    (tmp_path / "toypkg" / "mod.py").write_text(TOY_MODULE)
    (tmp_path / "toytests").mkdir()
    (tmp_path / "toytests" / "test_toy.py").write_text(TOY_TEST)
    config = M.Config(root=str(tmp_path), groups=(
        M.Group("toy", ("toypkg/mod.py",), ("toytests/test_toy.py",)),), mutants=10,
        preload=(), marker="", fork=fork, pytest_args=("-p", "no:hypothesispytest"))
    lines: list[str] = []
    result = M.run_mutation(config, log=lines.append)
    status = {o.mutant.after: o.status for o in result.outcomes}
    assert status == {"x >= lo": "survived", "not (x > lo)": "killed"}
    killed = [o for o in result.outcomes if o.status == "killed"]
    assert killed[0].by == "toytests/test_toy.py::test_above"
    assert result.score == 0.5 and M.exit_status(result, 0.8) == 1
    assert "  toypkg/mod.py:2 in above: compare: x > lo -> x >= lo" in M.render(result, config)
    assert (tmp_path / "toypkg" / "mod.py").read_text() == TOY_MODULE  # never written


def test_known_equivalent_mutants_are_matched_by_line_text(monkeypatch):
    ms = [m for m in M.generate_mutants(SNIPPET, "s.py") if m.function == "last"]
    entry = ("s.py", "last", "return a[len(a)", "1", "2")
    monkeypatch.setattr(M, "EQUIVALENT", {entry: "a toy entry"})
    assert [m.after for m in ms if M.is_equivalent(m, SNIPPET)] == ["2"]
    changed = SNIPPET.replace("return a[len(a) - 1]", "return a[-1 + len(a)]")
    assert not any(M.is_equivalent(m, changed) for m in M.generate_mutants(changed, "s.py"))
