"""The apply command: declarative surgery plans."""

from __future__ import annotations

import os

import click

import surgery

from .app import main
from .options import emit, json_option, overwrite_option


@main.command("apply")
@click.argument("plan")
@click.option("--dry-run", is_flag=True, help="Print what every variable will undergo; write "
              "nothing (finetune steps are not run).")
@overwrite_option("Replace an existing output model.")
@click.option("--inputs", metavar="X.npz", help="Inputs for the plan's [verify] preserve "
              "checks, besides the random probe families (replaces its inputs key).")
@json_option("Print the report as JSON only.")
def apply_cmd(plan, dry_run, overwrite, inputs, as_json) -> int:
    """Run a declarative surgery plan (TOML): validate, dry-run or apply, verify, report.

    \b
    Examples:
      surgery apply examples/plans/new_head_freeze.toml --dry-run
      surgery apply examples/plans/prune_residual.toml --overwrite
    """
    p = surgery.Plan.from_file(plan)
    if inputs is not None:
        from surgery.errors import InputError
        if not os.path.isfile(inputs):
            raise InputError(f"{inputs}: no such inputs file (an .npz with one array per "
                             "model input)")
        p.data.setdefault("verify", {})["inputs"] = os.path.abspath(inputs)
    if not dry_run:  # the plan's outputs, before the slow part (TensorFlow's import)
        _check_plan_outputs(p, overwrite)
    report = p.dry_run() if dry_run else p.apply(overwrite=overwrite or None)
    emit(report, as_json)
    return 0


def _check_plan_outputs(p, overwrite: bool) -> None:
    """What `Plan.apply` checks first, checked here before TensorFlow is imported: the
    [output] model and report may be written (`--overwrite` or the plan's own overwrite)."""
    from surgery.io.atomic import check_outputs

    out = p.data.get("output", {})
    outputs = [p.resolve(out[k]) for k in ("model", "report") if isinstance(out.get(k), str)]
    check_outputs(outputs, inputs=p.input_paths(),
                  overwrite=overwrite or bool(out.get("overwrite", False)))
