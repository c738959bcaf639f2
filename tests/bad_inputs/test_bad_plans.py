"""Plans with missing or mistyped keys (issue #22 §5): every problem is one `invalid plan` line
naming the plan's line, before anything runs; nothing is written. A fuzz test feeds random
TOML-shaped data to validation: only `PlanError` may escape (`make fuzz` runs more examples)."""

from __future__ import annotations

import os
import shutil

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cli import main
from surgery.errors import SurgeryError
from surgery.plans.plan import Plan, PlanError
from tests.conftest import leftovers

EXAMPLES = int(os.environ.get("SURGERY_FUZZ_EXAMPLES", "60"))


@pytest.fixture()
def folder(tmp_path, samples):
    shutil.copy(samples["cnn"], tmp_path / "cnn.keras")
    return tmp_path


CASES = [
    ('target = 5\n',
     "invalid plan (3 problems): {p}:1: 'target' must be a table ([target]), got 5; {p}:1: a "
     "plan needs [target] model = \"...\"; {p}: a plan needs at least one [[step]]"),
    ('[target]\nmodel = 5\n[[step]]\nop = "freeze"\nselect = ["head"]\n',
     "invalid plan: {p}:2: 'model' in [target] must be a string, got 5"),
    ('[target]\nmodel = "cnn.keras"\n[[step]]\nop = "freeze"\nselect = "head"\n',
     "invalid plan: {p}:3: 'select' in a freeze step (step 1) must be a list of strings, got "
     "'head'"),
    ('[target]\nmodel = "cnn.keras"\n[[step]]\nop = "edit"\naction = "widen"\n',
     "invalid plan (2 problems): {p}:3: an edit widen step (step 1) needs layer = ...; {p}:3: "
     "an edit widen step (step 1) needs units = ..."),
    ('[target]\nmodel = "cnn.keras"\n[[step]]\nop = "edit"\naction = "delete-channels"\n'
     'layer = "fc"\n',
     "invalid plan: {p}:3: an edit delete-channels step (step 1) needs channels = ... or ratio "
     "= ..."),
    ('[target]\nmodel = "cnn.keras"\n[[step]]\nop = "finetune"\n',
     "invalid plan: {p}:3: a finetune step (step 1) needs data = ..."),
    ('[target]\nmodel = "cnn.keras"\n[[step]]\nop = "finetune"\ndata = "d.npz"\nlr = nan\n',
     "invalid plan (2 problems): {p}:3: 'lr' in a finetune step (step 1) must be a finite "
     "number, got nan; {p}:3: data 'd.npz' does not exist"),
    ('[target]\nmodel = "cnn.keras"\n[verify]\natol = "x"\n[[step]]\nop = "freeze"\n'
     'select = ["head"]\n',
     "invalid plan: {p}:4: 'atol' in [verify] must be a number, got 'x'"),
    ('[target]\nmodel = "cnn.keras"\n[output]\nmodel = 5\n[[step]]\nop = "lora"\nrank = -1\n',
     "invalid plan (2 problems): {p}:4: 'model' in [output] must be a string, got 5; {p}:5: "
     "'rank' in a lora step (step 1) must be positive, got -1"),
    ('step = [1]\n[target]\nmodel = "cnn.keras"\n',
     "invalid plan: {p}:1: step 1 must be a table ([[step]] with op = \"...\")"),
    ('[target]\nmodel = "cnn.keras"\n[[step]]\nop = "head"\nclasses = 0\n',
     "invalid plan: {p}:3: 'classes' in a head step (step 1) must be positive, got 0"),
    ('[target]\nmodel = "cnn.keras"\n[[step]]\nop = "reinit"\n',
     "invalid plan: {p}:3: a reinit step (step 1) needs select = ..."),
]


@pytest.mark.parametrize("text, line", CASES)
def test_bad_plan_is_one_line_with_its_lines(folder, text, line):
    plan = folder / "p.toml"
    plan.write_text(text)
    before = sorted(os.listdir(folder))
    r = CliRunner().invoke(main, ["apply", str(plan)])
    assert r.exit_code == 2 and r.output == f"error: {line.format(p=plan)}\n", r.output
    assert sorted(os.listdir(folder)) == before and leftovers(str(folder)) == []


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.floats(allow_nan=True),
                     st.sampled_from(["cnn.keras", "head", "fc", "widen", "freeze", "edit",
                                      "", "re:(", "*", "type:Dense", "x.npz"]))
_keys = st.sampled_from(["model", "op", "select", "except", "classes", "action", "layer",
                         "units", "rank", "data", "lr", "atol", "preserve", "inputs",
                         "channels", "ratio", "shape", "layer_json", "rules", "strict",
                         "bogus"])
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=4)), max_leaves=8)
_plans = st.dictionaries(
    st.sampled_from(["target", "source", "step", "verify", "output", "extra"]),
    st.one_of(_values, st.lists(st.dictionaries(_keys, _values, max_size=5), max_size=3),
              st.dictionaries(_keys, _values, max_size=4)), max_size=5)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(data=_plans)
@example(data={"step": [{"model": None, "op": []}]})  # found by `make fuzz`: unhashable op
@example(data={"target": {"model": "x"}, "step": [{"op": "edit", "action": ["widen"]}]})
def test_fuzzed_plans_only_raise_plan_errors(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzzplan")
    path = folder / "p.toml"
    path.write_text("# fuzzed\n")
    try:
        Plan(data, str(path), "# fuzzed\n").validate()
    except PlanError as e:
        assert "\n" not in str(e)
    except SurgeryError as e:  # pragma: no cover - a wrong class is a failure
        raise AssertionError(f"not a PlanError: {type(e).__name__}: {e}")
