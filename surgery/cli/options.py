"""What the commands share: option decorators (one definition of --json, --overwrite,
--unsafe, -o, --dry-run, --verify/--inputs/--atol), value parsers, and printing."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

import click

from surgery.text import json_safe

__all__ = ["stack", "json_option", "overwrite_option", "unsafe_option", "import_option",
           "output_option",
           "dry_run_option", "atol_option", "model_options", "edit_options", "print_json",
           "emit", "emit_report", "tolerance", "int_list", "lr_mults", "layer_spec",
           "option_value"]


# ------------------------------------------------------------------ option decorators

def stack(*decorators: Callable) -> Callable:
    """One decorator applying `decorators` so that --help lists them in the order given."""
    def apply(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return apply


def json_option(help: str = "Print JSON only.") -> Callable:
    return click.option("--json", "as_json", is_flag=True, help=help)


def overwrite_option(help: str = "Replace an existing OUT.") -> Callable:
    return click.option("--overwrite", is_flag=True, help=help)


def unsafe_option() -> Callable:
    """--unsafe, with --import: every command that loads a model takes both."""
    return stack(
        click.option("--unsafe", is_flag=True, help="Allow Lambda layers and configs "
                     "outside Keras."),
        import_option())


_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _trust_modules(ctx, param, value):
    """--import: each MODULE must be installed (checked without importing it, so TensorFlow
    is not loaded before the other checks); it is imported when the model is loaded."""
    import importlib.util

    from surgery.io.safety import forget_modules, trust_modules, trusted_modules

    for module in value or ():
        if not _MODULE.match(module):
            raise click.BadParameter(f"{module!r} is not a Python module name; give one such "
                                     "as keras_hub or my_layers.blocks", ctx=ctx, param=param)
        top = module.split(".", 1)[0]
        try:
            found = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise click.BadParameter(f"no module named {top!r} is installed; pip install "
                                     f"{top.replace('_', '-')} (or fix the name)", ctx=ctx,
                                     param=param)
    added = [m for m in value or () if m not in trusted_modules()]
    trust_modules(added)
    ctx.call_on_close(lambda: forget_modules(added))  # for this command only
    return value


def import_option() -> Callable:
    return click.option("--import", "imports", metavar="MODULE", multiple=True,
                        expose_value=False, callback=_trust_modules,
                        help="Import MODULE before loading the model, so that the layer "
                        "classes it registers with Keras load (repeatable). keras_hub, "
                        "keras_cv and keras_nlp need none.")


def output_option(help: str = "Where to write the result.", *, metavar: str = "OUT.keras",
                  required: bool = False) -> Callable:
    return click.option("-o", "--output", metavar=metavar, required=required, help=help)


def dry_run_option(help: str = "Print the report; write nothing.") -> Callable:
    return click.option("--dry-run", is_flag=True, help=help)


def atol_option(help: str = "Tolerance for --verify.") -> Callable:
    return click.option("--atol", default=1e-5, show_default=True, callback=tolerance,
                        help=help)


def _remember_inputs(ctx, _param, value):
    ctx.meta["verify_inputs"] = value


# ------------------------------------------------------------------ values

def tolerance(ctx, param, value):
    """--atol: a finite number >= 0 (inf or NaN would pass any edit; a negative one none)."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"{value!r} is not a finite number >= 0; give a tolerance "
                                 "such as 1e-5", ctx=ctx, param=param)
    return value


def int_list(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated class indices, got {value!r}") \
            from None


def lr_mults(values) -> dict[str, float]:
    out = {}
    for item in values:
        selector, sep, mult = item.rpartition("=")
        try:
            out[selector] = float(mult)
        except ValueError:
            sep = ""
        if not sep or not selector:
            raise click.BadParameter(f"expected SELECTOR=MULTIPLIER, got {item!r}",
                                     param_hint="--lr-mult")
    return out


LAYER_JSON_LIMIT = 64 * 1024


def layer_spec(text: str) -> dict:
    if len(text) > LAYER_JSON_LIMIT:
        raise click.BadParameter(f"{len(text):,} characters; a layer's config is at most "
                                 f"{LAYER_JSON_LIMIT:,}", param_hint="--layer-json")
    try:
        return json.loads(text)
    except ValueError as e:
        raise click.BadParameter(f"not JSON ({e})", param_hint="--layer-json") from None
    except RecursionError:
        raise click.BadParameter("nested too deeply; give one layer's {\"class_name\": ..., "
                                 "\"config\": {...}}", param_hint="--layer-json") from None


def option_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


# ------------------------------------------------------------------ printing

def print_json(data: Any) -> None:
    click.echo(json.dumps(json_safe(data), indent=2, default=str, allow_nan=False))


def emit(result: Any, as_json: bool) -> None:
    """Prints a report: its `to_dict()` as JSON, or its `str()` table."""
    if as_json:
        print_json(result.to_dict())
    else:
        click.echo(str(result))


def emit_report(report, as_json: bool, verification) -> None:
    if as_json:
        data = report.to_dict()
        if verification is not None:
            data["verify"] = verification.to_dict()
        print_json(data)
    else:
        click.echo(str(report))
        if verification is not None:
            click.echo(str(verification))


# ------------------------------------------------------------------ option bundles

# MODEL -o OUT --dry-run --overwrite --unsafe --json: every command that changes one model
model_options = stack(
    click.argument("model"), output_option(), dry_run_option(), overwrite_option(),
    unsafe_option(), json_option())

# ... and the structural edits' output check
edit_options = stack(
    click.argument("model"), output_option(), dry_run_option(),
    click.option("--verify", "do_verify", is_flag=True, help="Compare outputs with MODEL on a "
                 "probe batch; exit 1 (nothing written) if they differ."),
    atol_option(),
    click.option("--inputs", metavar="X.npz", expose_value=False, callback=_remember_inputs,
                 help="Your own inputs for --verify, besides the random probe families "
                 "(implies --verify)."),
    overwrite_option(), unsafe_option(), json_option())
