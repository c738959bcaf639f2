"""Declarative plans: validation (every problem, with its line), dry run writes nothing and
matches apply, apply is reproducible, a failed verification leaves no output, and every
example plan runs."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.errors import CheckFailed
from surgery.plans.plan import Plan, PlanError
from tests.conftest import ROOT, leftovers

PLANS = os.path.join(ROOT, "examples", "plans")


@pytest.fixture
def plans(tmp_path):
    """The example plans copied with their relative paths intact, outputs in tmp."""
    root = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "examples"), root / "examples",
                    ignore=shutil.ignore_patterns("*.out.*"))
    shutil.copytree(os.path.join(ROOT, "sample_models"), root / "sample_models",
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root / "examples" / "plans"


@pytest.mark.parametrize("name", ["new_head_freeze", "rgb_to_gray", "hub_to_native",
                                  "prune_residual"])
def test_example_plans_run(plans, name):
    report = Plan.from_file(str(plans / f"{name}.toml")).apply()
    assert os.path.exists(report.output)
    saved = json.load(open(plans / f"{name}.out.report.json"))
    assert saved["hashes"]["plan"] and saved["versions"]["keras"]
    assert saved["verification"].get("unexpected_changes", []) == []


def test_dry_run_writes_nothing_and_matches_apply(plans):
    plan = Plan.from_file(str(plans / "new_head_freeze.toml"))
    dry = plan.dry_run()
    assert not list(plans.glob("*.out.*"))
    applied = plan.apply()
    assert dry.variables == applied.variables
    actions = {v["path"]: v["action"] for v in dry.variables}
    assert actions["head/kernel"] == "reshaped (64, 8) -> (64, 4)"
    assert actions["block1_conv/kernel"] == "unchanged, frozen"
    notes = {v["path"]: v.get("steps") for v in dry.variables}
    assert notes["block1_conv/kernel"] == ["step 2: frozen"] and notes["head/bias"][0].startswith(
        "step 1: ")


def test_apply_is_reproducible(plans):
    a = Plan.from_file(str(plans / "prune_residual.toml")).apply()
    first = str(plans / "first.keras")
    shutil.copy(a.output, first)
    b = Plan.from_file(str(plans / "prune_residual.toml")).apply()
    assert surgery.diff(first, b.output).identical


def test_verification_failure_writes_nothing(plans):
    text = (plans / "new_head_freeze.toml").read_text().replace("preserve = [2]",
                                                                "preserve = [1, 2]")
    (plans / "bad.toml").write_text(text)
    with pytest.raises(CheckFailed) as e:
        Plan.from_file(str(plans / "bad.toml")).apply()
    assert str(e.value).startswith(f"{plans / 'bad.toml'}: verification failed: outputs "
                                   "changed by ")
    assert str(e.value).endswith("(atol 1e-05); nothing was written")
    assert not list(plans.glob("*.out.*")) and leftovers(str(plans)) == []


def test_validation_lists_every_problem_with_its_line(plans):
    (plans / "broken.toml").write_text(
        '[target]\nmodel = "../../sample_models/cnn.keras"\ncolour = "red"\n\n'
        '[[step]]\nop = "frezee"\n\n[[step]]\nop = "freeze"\nselect = ["nope"]\n\n'
        '[[step]]\nop = "transplant"\n\n[verify]\npreserve = [7]\n')
    with pytest.raises(PlanError) as e:
        Plan.from_file(str(plans / "broken.toml"))
    p = plans / "broken.toml"
    msg = str(e.value)
    assert msg.startswith("invalid plan (5 problems): ")
    for part in (f"{p}:3: unknown key 'colour' in [target]; it takes model",
                 f"{p}:5: step 1 has op 'frezee'; use one of head, freeze",
                 f"{p}:8: selector 'nope' matches nothing",
                 f"{p}:12: a transplant step needs a [source] model",
                 f"{p}:16: preserve lists step 7; steps are 1..3"):
        assert part in msg, (part, msg)


def test_head_step_on_a_model_without_a_head(plans):
    (plans / "nohead.toml").write_text('[target]\nmodel = "resnet_block.keras"\n\n[[step]]\n'
                                       'op = "edit"\naction = "delete-layer"\nlayer = "head"\n'
                                       '\n[[step]]\nop = "freeze"\nselect = ["stem"]\n')
    Plan.from_file(str(plans / "nohead.toml")).dry_run()  # valid
    (plans / "conv.toml").write_text('[target]\nmodel = "../../sample_models/hub_module"\n\n'
                                     '[[step]]\nop = "head"\nclasses = 3\n')
    with pytest.raises(PlanError, match="a head step on a model without a Dense head"):
        Plan.from_file(str(plans / "conv.toml"))


def test_cli_apply(plans):
    r = CliRunner().invoke(main, ["apply", str(plans / "new_head_freeze.toml"), "--dry-run"])
    assert r.exit_code == 0 and "(dry run: nothing written)" in r.output
    r = CliRunner().invoke(main, ["apply", str(plans / "new_head_freeze.toml"), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["output"].endswith("out.keras")
