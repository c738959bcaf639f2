"""The one runner of the model commands: check the output, load, operate, verify, save,
print."""

from __future__ import annotations

import click

import surgery

from .options import print_json


def edit_model(path: str, output: str | None, *, unsafe: bool, dry_run: bool,
                overwrite: bool, as_json: bool, operation, verify: bool = False,
                atol: float = 1e-5, verify_inputs: str | None = None,
                class_names=lambda names: names) -> int:
    """The one runner of the model commands: checks the output before the slow part, loads
    MODEL, runs `operation(model) -> (model_to_save, report)`, verifies when asked (exit 1,
    nothing written, when the result differs), saves atomically, prints.

    MODEL's class names travel to OUT, through `class_names(old names) -> new names or None`
    (`head` keeps only the names of classes it carries), while the head keeps their number; a
    note says when they can't."""
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
    names, note = _class_names_for(path, result, output, class_names)
    if not dry_run:
        surgery.save_model(result, output, overwrite=overwrite, inputs=readers,
                           class_names=names)
    if as_json:
        print_json({**data, "output": None if dry_run else output,
                    **({"class_names_note": note} if note else {})})
    else:
        click.echo(str(report))
        if note:
            click.echo(note)
        if v is not None:
            click.echo(str(v))
        if not dry_run:
            click.echo(f"wrote {output}")
    return 0


def _class_names_for(path: str, result, output: str | None, rename
                     ) -> tuple[list[str] | None, str | None]:
    """(the input's class names if they still fit the result's head, a note if they don't)."""
    from surgery.errors import SurgeryError
    from surgery.io.classnames import check_class_names, class_names
    from surgery.model.saving import _head_width

    names = class_names(path) if path.lower().endswith(".keras") else None
    if not names:
        return None, None
    if output and not output.lower().endswith(".keras"):
        return None, f"class names not stored: only a .keras file holds them ({output})"
    kept = rename(list(names))
    if kept is None:
        return None, "class names not carried: the new head's units are other classes"
    names = kept
    width = _head_width(result)
    try:
        return list(check_class_names(list(names), path, width=width)), None
    except SurgeryError:
        return None, (f"class names not carried: {path} names {len(names)} classes, the "
                      f"result's head has {width} units")


def run_edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, fn) -> int:
    inputs = click.get_current_context().meta.get("verify_inputs")

    def operation(m):
        result = fn(m)
        return result.model, result.report

    return edit_model(model, output, unsafe=unsafe, dry_run=dry_run, overwrite=overwrite,
                       as_json=as_json, operation=operation,
                       verify=do_verify or inputs is not None, atol=atol,
                       verify_inputs=inputs)

