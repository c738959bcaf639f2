"""The one runner of the model commands: check the output, load, operate, verify, save,
print."""

from __future__ import annotations

import click

import surgery

from .options import print_json


def edit_model(path: str, output: str | None, *, unsafe: bool, dry_run: bool,
                overwrite: bool, as_json: bool, operation, verify: bool = False,
                atol: float = 1e-5, verify_inputs: str | None = None) -> int:
    """The one runner of the model commands: checks the output before the slow part, loads
    MODEL, runs `operation(model) -> (model_to_save, report)`, verifies when asked (exit 1,
    nothing written, when the result differs), saves atomically, prints."""
    from surgery.io.atomic import check_output
    from surgery.errors import CheckFailed

    if not dry_run and not output:
        raise click.UsageError("give -o/--output (or --dry-run)")
    readers = [path, verify_inputs]
    if not dry_run:
        check_output(output, inputs=readers, overwrite=overwrite)  # before the slow part
    model = surgery.load_model(path, safe_mode=not unsafe)
    result, report = operation(model)
    data = report.to_dict()
    v = None
    if verify:
        v = surgery.verify(model, result, verify_inputs, atol=atol)
        data["verify"] = v.to_dict()
        if not v.ok:
            if as_json:
                print_json(data)
            else:
                click.echo(f"{report}\n{v}")
            raise CheckFailed(f"{path}: the edited model's outputs differ by {v.reason}; "
                              "nothing was written")
    if not dry_run:
        surgery.save_model(result, output, overwrite=overwrite, inputs=readers)
    if as_json:
        print_json({**data, "output": None if dry_run else output})
    else:
        click.echo(str(report))
        if v is not None:
            click.echo(str(v))
        if not dry_run:
            click.echo(f"wrote {output}")
    return 0


def run_edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, fn) -> int:
    inputs = click.get_current_context().meta.get("verify_inputs")

    def operation(m):
        result = fn(m)
        return result.model, result.report

    return edit_model(model, output, unsafe=unsafe, dry_run=dry_run, overwrite=overwrite,
                       as_json=as_json, operation=operation,
                       verify=do_verify or inputs is not None, atol=atol,
                       verify_inputs=inputs)

