"""The `surgery` command line: thin wrappers that parse options, call the library, print.

Exit codes: 0 success; 1 a check that was asked for failed (``diff`` found differences);
2 the request or an input is unusable. Errors print one line, ``error: ...``, with no traceback
unless ``--debug`` is given. ``--json`` prints machine-readable output only. ``--help``,
``inspect`` and ``diff`` of files do not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
from typing import Any

import click

os.environ.setdefault("SURGERY_QUIET_TF", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import logging  # noqa: E402

logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes are not for users

import surgery  # noqa: E402
from surgery.errors import SurgeryError  # noqa: E402
from surgery.text import json_safe  # noqa: E402

__all__ = ["main"]


def _debug_requested(args) -> bool:
    args = sys.argv[1:] if args is None else list(args)
    return "--debug" in args or os.environ.get("SURGERY_DEBUG") == "1"


class SurgeryGroup(click.Group):
    """A click group that turns every failure into one ``error:`` line and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        debug = _debug_requested(args)
        with _terminate_as_interrupt(), _native_stderr_quiet(not debug):
            self._main(args, complete_var, debug, **extra)

    def _main(self, args, complete_var, debug, **extra):
        try:
            rv = super().main(args=args, prog_name="surgery",
                              complete_var=complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("error: interrupted; nothing was written", err=True)
            sys.exit(130)
        except click.ClickException as e:
            if debug:
                raise
            hint = ""
            ctx = getattr(e, "ctx", None)
            if ctx is not None:
                hint = f"; see '{ctx.command_path} --help'"
            click.echo(f"error: {e.format_message().rstrip('.')}{hint}", err=True)
            sys.exit(2)
        except SurgeryError as e:
            if debug:
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted; nothing was written", err=True)
            sys.exit(130)
        except Exception as e:  # a bug, not bad input: say so, keep the contract of one line
            if debug:
                raise
            from surgery.text import escape_text

            click.echo(f"error: unexpected {type(e).__name__}: {escape_text(e)} (a bug in "
                       "surgery; rerun with --debug for the traceback and report it)", err=True)
            sys.exit(2)
        sys.exit(rv if isinstance(rv, int) else 0)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM unwinds like Ctrl-C: outputs being written are removed, one error line."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except (ValueError, OSError):  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _native_stderr_quiet(enabled: bool):
    """TensorFlow's C++ runtime writes start-up lines to file descriptor 2 whenever it is
    first imported. For the command's duration, Python's stderr (error lines, warnings) keeps
    the real stream while descriptor 2 points at /dev/null; --debug leaves both alone."""
    try:
        real = enabled and os.environ.get("SURGERY_QUIET_TF") == "1" and \
            sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # CliRunner and other captured streams
        real = False
    if not real:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    stream = open(saved, "w", buffering=1, encoding=sys.stderr.encoding,
                  errors="backslashreplace", closefd=False)
    old = sys.stderr
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        sys.stderr = stream
        yield
    finally:
        stream.flush()
        sys.stderr = old
        os.dup2(saved, 2)
        os.close(saved)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(json_safe(data), indent=2, default=str, allow_nan=False))


def _emit(result: Any, as_json: bool) -> None:
    """Prints a report: its `to_dict()` as JSON, or its `str()` table."""
    if as_json:
        _print_json(result.to_dict())
    else:
        click.echo(str(result))


@click.group(cls=SurgeryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(surgery.__version__, prog_name="surgery")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """Model surgery and transfer learning for TensorFlow/Keras.

    \b
    Examples:
      surgery inspect sample_models/cnn.keras
      surgery transplant pretrained.keras new_model.keras -o filled.keras --rules r.toml
      surgery freeze sample_models/cnn.keras -o head_only.keras --except head
      surgery finetune head_only.keras --data d.npz -o tuned.keras --epochs 5
      surgery edit widen sample_models/cnn.keras -o wide.keras --layer fc --units 96
      surgery diff before.keras after.keras --json
      surgery demo

    Exit codes: 0 success; 1 a check you asked for failed; 2 unusable request or input.
    """


@main.command("inspect")
@click.argument("path")
@click.option("--architecture", metavar="MODEL.keras|config.json",
              help="Names the variables of a bare .weights.h5 file.")
@click.option("--stats", is_flag=True, help="Per-variable mean, std, min, max, zeros, "
              "non-finite count.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def inspect_cmd(path: str, architecture: str | None, stats: bool, as_json: bool) -> int:
    """Layers, variables, shapes, dtypes, trainable flags, initializers, regularizers,
    constraints (and LSTM/GRU gate layouts), parameter counts; --stats adds statistics.

    PATH is a .keras, .weights.h5, Keras 2 .h5 or .npz file (read without TensorFlow), a
    SavedModel/TF Hub directory or a TF checkpoint prefix.

    \b
    Examples:
      surgery inspect sample_models/cnn.keras
      surgery inspect weights.weights.h5 --architecture model.keras --json
      surgery inspect sample_models/lstm.keras --stats
    """
    inv = surgery.inspect(path, architecture=architecture, stats=stats)
    _emit(inv, as_json)
    return 0


@main.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--architecture-a", metavar="MODEL", help="Architecture for a bare .weights.h5 A.")
@click.option("--architecture-b", metavar="MODEL", help="Architecture for a bare .weights.h5 B.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def diff_cmd(a: str, b: str, architecture_a: str | None, architecture_b: str | None,
             as_json: bool) -> int:
    """Compare two models or weights files variable by variable.

    Each variable is: same, changed (max abs difference), shape differs, only in A, only in B.
    Exit code 0 when identical, 1 when they differ, 2 on bad input.

    \b
    Example:
      surgery diff sample_models/cnn.keras finetuned.keras
    """
    d = surgery.diff(a, b, architecture_a=architecture_a, architecture_b=architecture_b)
    _emit(d, as_json)
    return 0 if d.identical else 1


_RULES_HELP = """
\b
Rules (TOML, --rules R.toml; see the README for every adapter):
  match = "structural"          # exact | structural (default) | shape
  skip = ["head/*"]             # targets left initialized, sources ignored
  [[rename]]                    # regex renames of source keys, in order
  from = "^backbone/"
  to = "trunk/"
  [[adapter]]                   # a named conversion for one target variable
  target = "block1_conv/kernel"
  name = "adapt_in_channels"    # RGB -> gray: sum the input channels
  mode = "sum"
  [[adapter]]                   # or for a layer, from named source tensors
  target = "encoder"
  name = "lstm_from_torch"
  sources = { w_ih = "lstm.weight_ih_l0", w_hh = "lstm.weight_hh_l0",
              b_ih = "lstm.bias_ih_l0", b_hh = "lstm.bias_hh_l0" }
"""


def _tolerance(ctx, param, value):
    """--atol: a finite number >= 0 (inf or NaN would pass any edit; a negative one none)."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"{value!r} is not a finite number >= 0; give a tolerance "
                                 "such as 1e-5", ctx=ctx, param=param)
    return value


@main.command("transplant", epilog=_RULES_HELP)
@click.argument("source")
@click.argument("target")
@click.option("-o", "--output", metavar="OUT.keras", help="Where to write the filled model "
              "(required unless --dry-run).")
@click.option("--rules", metavar="RULES.toml", help="Renames, skips, adapters, matching mode.")
@click.option("--strict", is_flag=True, help="Fail (exit 1, nothing written) on missing, "
              "mismatched or non-finite weights, or a rule that matches nothing.")
@click.option("--dry-run", is_flag=True, help="Print the full report; write nothing.")
@click.option("--verify", "do_verify", is_flag=True, help="Run SOURCE and the result on a probe "
              "batch; exit 1 (nothing written) if outputs differ.")
@click.option("--inputs", metavar="X.npz", help="Your own inputs for --verify, compared "
              "besides the random probe families (implies --verify).")
@click.option("--atol", default=1e-5, show_default=True, callback=_tolerance,
              help="Tolerance for --verify.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
@click.option("--source-architecture", metavar="MODEL.keras|config.json",
              help="Names the variables of a bare .weights.h5 SOURCE.")
@click.option("--unsafe", is_flag=True, help="Allow Lambda layers and configs outside Keras.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON only.")
def transplant_cmd(source, target, output, rules, strict, dry_run, do_verify, inputs, atol,
                   overwrite, source_architecture, unsafe, as_json) -> int:
    """Fill TARGET's architecture with SOURCE's weights and write OUT.

    SOURCE: .keras, .weights.h5, Keras 2 .h5, .npz, .safetensors, a SavedModel/Hub directory
    or a TF checkpoint. TARGET: a .keras (or Keras 2 .h5) model whose architecture OUT takes.
    Matching: your rules, then exact paths, then layers of the same class and shapes in model
    order. Shapes never change silently: a mismatch is reported and left initialized unless a
    rule names an adapter. Exit 0 done, 1 a --strict or --verify check failed, 2 bad input.

    \b
    Examples:
      surgery transplant pretrained.keras new_model.keras -o filled.keras
      surgery transplant sample_models/cnn.keras gray.keras -o out.keras --rules gray.toml
      surgery transplant resnet.safetensors model.keras -o out.keras --rules torch.toml --strict
      surgery transplant a.keras b.keras --dry-run --json
    """
    from surgery.errors import CheckFailed

    if not dry_run and not output:
        raise click.UsageError("give -o/--output (or --dry-run)")
    source_path = source
    do_verify = do_verify or inputs is not None
    readers = [source, target, rules, source_architecture, inputs,
               surgery.load_rules(rules).files() if rules else ()]  # + files the rules read
    if source_architecture:
        source = surgery.open_weights(source, architecture=source_architecture)
    try:
        if do_verify or not target.lower().endswith(".keras"):
            model = surgery.load_model(target, safe_mode=not unsafe)
            report = surgery.transplant(source, model, rules, strict=strict, dry_run=dry_run)
            verification = None
            if do_verify and not dry_run:
                verification = surgery.verify(
                    surgery.load_model(source_path, safe_mode=not unsafe), model, inputs,
                    atol=atol)
                if not verification.ok:
                    _emit_report(report, as_json, verification)
                    raise CheckFailed(f"{target}: outputs differ from {source_path} by "
                                      f"{verification.reason}; nothing was written")
            if not dry_run:
                surgery.save_model(model, output, overwrite=overwrite, inputs=readers)
        else:
            verification = None
            report = surgery.transplant_file(source, target, output, rules, strict=strict,
                                             dry_run=dry_run, overwrite=overwrite,
                                             safe_mode=not unsafe, inputs=readers)
    except CheckFailed as e:
        if getattr(e, "report", None) is not None:
            _emit_report(e.report, as_json, None)
        raise
    _emit_report(report, as_json, verification)
    return 0


def _emit_report(report, as_json: bool, verification) -> None:
    if as_json:
        data = report.to_dict()
        if verification is not None:
            data["verify"] = verification.to_dict()
        _print_json(data)
    else:
        click.echo(str(report))
        if verification is not None:
            click.echo(str(verification))


def _edit_model(path: str, output: str | None, *, unsafe: bool, dry_run: bool,
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
                _print_json(data)
            else:
                click.echo(f"{report}\n{v}")
            raise CheckFailed(f"{path}: the edited model's outputs differ by {v.reason}; "
                              "nothing was written")
    if not dry_run:
        surgery.save_model(result, output, overwrite=overwrite, inputs=readers)
    if as_json:
        _print_json({**data, "output": None if dry_run else output})
    else:
        click.echo(str(report))
        if v is not None:
            click.echo(str(v))
        if not dry_run:
            click.echo(f"wrote {output}")
    return 0


def _model_options(f):
    for option in reversed([
        click.argument("model"),
        click.option("-o", "--output", metavar="OUT.keras", help="Where to write the result."),
        click.option("--dry-run", is_flag=True, help="Print the report; write nothing."),
        click.option("--overwrite", is_flag=True, help="Replace an existing OUT."),
        click.option("--unsafe", is_flag=True, help="Allow Lambda layers and configs outside "
                     "Keras."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON only."),
    ]):
        f = option(f)
    return f


def _freeze_command(name: str, trainable: bool):
    verb = "Unfreeze" if trainable else "Freeze"
    doc = f"""{verb} layers of MODEL and write OUT.

    Keras saves trainable per layer, so selectors act on whole layers; one that reaches only
    some variables of a layer (*/bias) is refused. A frozen BatchNorm runs in inference mode
    (its moving statistics stay put); --bn train keeps BatchNorm layers training.

    \b
    Examples:
      surgery {name} sample_models/cnn.keras -o out.keras {'--select head' if trainable else '--except head'}
      surgery {name} sample_models/cnn.keras -o out.keras --select 're:block[12]_.*'{'' if trainable else ' --bn train'}
      surgery {name} sample_models/lstm.keras --select embed --dry-run
    """

    @main.command(name, help=doc)
    @_model_options
    @click.option("--select", "selects", multiple=True, metavar="S",
                  help="Layers to change (glob, re:..., type:...); repeatable.")
    @click.option("--except", "excepts", multiple=True, metavar="S",
                  help="Taken out of the selection; alone: every layer but these.")
    @click.option("--bn", type=click.Choice(["inference", "train"]), default="inference",
                  show_default=True, help="Frozen BatchNorm: inference mode (fixed statistics) "
                  "or keep training." if not trainable else "Ignored by unfreeze.")
    def command(model, output, dry_run, overwrite, unsafe, as_json, selects, excepts, bn):
        if not selects and not excepts:
            raise click.UsageError("give --select S and/or --except S")

        def operation(m):
            fn = surgery.unfreeze if trainable else surgery.freeze
            kwargs = {} if trainable else {"bn": bn}
            report = fn(m, *selects, except_=excepts, dry_run=dry_run, allow_partial=False,
                        **kwargs)
            return m, report
        return _edit_model(model, output, unsafe=unsafe, dry_run=dry_run, overwrite=overwrite,
                           as_json=as_json, operation=operation)

    return command


_freeze_command("freeze", False)
_freeze_command("unfreeze", True)


@main.command("reinit")
@_model_options
@click.option("--select", "selects", multiple=True, required=True, metavar="S",
              help="Variables or layers to reinitialize; repeatable.")
@click.option("--initializer", metavar="NAME", help="A Keras initializer for the kernels "
              "(embeddings, recurrent kernels) among them; biases, BN beta and moving mean get "
              "zeros, gamma and moving variance ones, unless selected by their own path "
              "(default: each variable's own configured initializer).")
@click.option("--seed", type=int, help="Same seed, same values.")
def reinit_cmd(model, output, dry_run, overwrite, unsafe, as_json, selects, initializer, seed):
    """Reinitialize selected variables of MODEL and write OUT.

    Each variable gets its own layer's configured initializer unless --initializer names one.
    Only the selected variables change.

    \b
    Examples:
      surgery reinit sample_models/cnn.keras -o fresh_head.keras --select head --seed 0
      surgery reinit sample_models/cnn.keras -o out.keras --select 'block3_*' --initializer he_normal
    """
    def operation(m):
        return m, surgery.reinitialize(m, *selects, initializer=initializer, seed=seed,
                                       dry_run=dry_run)
    return _edit_model(model, output, unsafe=unsafe, dry_run=dry_run, overwrite=overwrite,
                       as_json=as_json, operation=operation)


def _int_list(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated class indices, got {value!r}") \
            from None


@main.command("head")
@_model_options
@click.option("--classes", type=int, required=True, help="Classes of the new head.")
@click.option("--keep-classes", metavar="I,J,...", help="Old classes carried (in this order) "
              "into new classes 0, 1, ...; their logits stay exactly the same.")
@click.option("--activation", metavar="NAME", help="The new head's activation (default: the "
              "old one).")
@click.option("--layer", "head_layer", metavar="NAME", help="The head layer (default: the last "
              "Dense).")
@click.option("--seed", type=int, help="Seed for the new head's initial weights.")
def head_cmd(model, output, dry_run, overwrite, unsafe, as_json, classes, keep_classes,
             activation, head_layer, seed):
    """Replace MODEL's classification head with one for --classes classes; write OUT.

    Every other weight is carried bitwise. With --keep-classes the listed old classes become
    the first new classes with exactly their old logits; the rest start fresh.

    \b
    Examples:
      surgery head sample_models/cnn.keras -o cnn4.keras --classes 4
      surgery head sample_models/cnn.keras -o cnn4.keras --classes 4 --keep-classes 0,3,7
    """
    from surgery.errors import OptionError

    if classes < 1:  # before the slow part (TensorFlow's import)
        raise OptionError(f"num_classes must be a positive integer, got {classes}")
    keep = _int_list(keep_classes)

    def operation(m):
        new = surgery.replace_head(m, classes, keep_classes=keep, activation=activation,
                                   head=head_layer, seed=seed)
        return new, new._surgery_head_report
    return _edit_model(model, output, unsafe=unsafe, dry_run=dry_run, overwrite=overwrite,
                       as_json=as_json, operation=operation)


def _lr_mults(values) -> dict[str, float]:
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


@main.command("finetune")
@click.argument("model")
@click.option("--data", required=True, metavar="DATA", help=".npz (x, y), .csv, an image "
              "folder, or a saved tf.data directory.")
@click.option("-o", "--output", required=True, metavar="OUT.keras", help="The trained model "
              "(the best epoch's weights).")
@click.option("--train", "trains", multiple=True, metavar="S", help="Train only these "
              "(repeatable); everything else is frozen.")
@click.option("--freeze", "freezes", multiple=True, metavar="S", help="Freeze these "
              "(repeatable); everything else trains.")
@click.option("--bn", type=click.Choice(["inference", "train"]), default="inference",
              show_default=True, help="Frozen BatchNorm: fixed statistics, or keep training.")
@click.option("--epochs", default=5, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=1e-3, show_default=True, help="Base learning rate.")
@click.option("--lr-mult", "lr_mult", multiple=True, metavar="S=X",
              help="Learning-rate multiplier for a selection (repeatable).")
@click.option("--layer-decay", type=float, help="Layer-wise learning-rate decay from the head "
              "down (e.g. 0.8).")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd", "rmsprop"]),
              default="adam", show_default=True)
@click.option("--loss", default="auto", show_default=True, help="auto, or a Keras loss name.")
@click.option("--label", metavar="COLUMN", help="CSV label column (default: label).")
@click.option("--val", metavar="DATA", help="Validation data.")
@click.option("--val-split", type=float, help="Fraction of DATA held out for validation.")
@click.option("--early-stop", type=int, metavar="N", help="Stop after N epochs without "
              "improvement of the validation (or training) loss.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same result.")
@click.option("--strategy", type=click.Choice(["auto", "one", "mirrored", "multiworker"]),
              default="auto", show_default=True, help="tf.distribute strategy.")
@click.option("--l2sp", type=float, metavar="ALPHA", help="L2-SP: pull weights toward their "
              "pretrained values (ALPHA/2 * ||w - w0||^2) instead of toward zero.")
@click.option("--l2sp-head", type=float, metavar="BETA", help="L2-SP's plain L2 on the head.")
@click.option("--mixed-precision", is_flag=True, help="Compute in float16 (GPU) / bfloat16 "
              "(CPU); variables and OUT stay float32.")
@click.option("--lora-rank", type=int, metavar="R", help="Train LoRA adapters of rank R (only "
              "they train, plus what --train names); OUT holds the merged model.")
@click.option("--lora-select", multiple=True, metavar="S", help="Layers that get LoRA "
              "(default: every supported layer --train does not name).")
@click.option("--save-adapters", metavar="A.npz", help="Also write the LoRA adapter weights.")
@click.option("--checkpoint", metavar="DIR", help="Per-epoch checkpoint folder (default: "
              "OUT.ckpt), created by surgery; one of an earlier run needs --resume or "
              "--overwrite; a folder surgery did not create is never used. Its files are "
              "removed after a finished run.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint (same model, data "
              "and settings; --epochs may grow).")
@click.option("--metrics-out", metavar="M.json", help="Per-epoch metrics as JSON.")
@click.option("--plot", metavar="CURVES.png", help="Training curves as PNG (needs "
              "matplotlib: pip install 'surgery[plot]').")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT (and start over in "
              "the checkpoint folder of an earlier run).")
@click.option("--unsafe", is_flag=True, help="Allow Lambda layers and configs outside Keras.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON only.")
def finetune_cmd(model, data, output, trains, freezes, bn, epochs, batch_size, lr, lr_mult,
                 layer_decay, optimizer, loss, label, val, val_split, early_stop, seed,
                 strategy, l2sp, l2sp_head, mixed_precision, lora_rank, lora_select,
                 save_adapters, checkpoint, resume, metrics_out, plot, overwrite, unsafe, quiet,
                 as_json) -> int:
    """Fine-tune part of MODEL on DATA and write the best model to OUT.

    --train S trains only S; --freeze S trains everything but S. Frozen BatchNorm layers run
    in inference mode unless --bn train. The loss is inferred from the head and labels
    (sparse categorical for integer labels and a softmax head, binary for one unit...). A
    checkpoint is written after every epoch: after Ctrl-C, --resume continues where it
    stopped. Same --seed, same result on the same machine.

    \b
    Examples:
      surgery finetune sample_models/cnn.keras --data new_task.npz -o tuned.keras \\
          --train head --train 'block3_*' --epochs 5 --val-split 0.2 --early-stop 2
      surgery finetune model.keras --data table.csv --label target -o tuned.keras
      surgery finetune model.keras --data images/ -o tuned.keras --freeze 'block1_*' \\
          --lr-mult 'block2_*=0.1' --metrics-out metrics.json --plot curves.png
      surgery finetune model.keras --data d.npz -o tuned.keras --lora-rank 4 \\
          --lora-select fc --save-adapters adapters.npz
    """
    from surgery.io.atomic import check_outputs
    from surgery.train.outputs import (check_adapters, check_beside_checkpoint, write_adapters,
                                       write_metrics, write_plot)

    readers = [model, data, val]
    check_outputs([output, metrics_out, plot, save_adapters], inputs=readers,
                  overwrite=overwrite)
    # the checkpoint folder: finetune checks it against the inputs and its own marker
    ckpt = checkpoint or (None if strategy == "multiworker" else f"{output}.ckpt")
    check_beside_checkpoint(ckpt, [output, metrics_out, plot, save_adapters], inputs=readers)
    if save_adapters and not lora_rank:  # before anything is loaded or trained
        check_adapters({})
    if plot:
        from surgery.train.outputs import require_matplotlib
        require_matplotlib()
    extra = {}
    if strategy == "multiworker":
        import logging

        from surgery.train.multiworker import finetune_multiworker as run, make_strategy
        extra["mixed_precision"] = mixed_precision
        extra["distribution"] = make_strategy()  # before anything else touches TensorFlow
        if not (quiet or as_json):
            logging.basicConfig(level=logging.INFO, format="%(message)s")
    else:
        run = surgery.finetune
        extra.update(mixed_precision=mixed_precision, l2sp=l2sp, l2sp_head=l2sp_head,
                     keep_checkpoint=True)  # removed only once OUT is safely written
    m = surgery.load_model(model, safe_mode=not unsafe)
    result = run(m, data, train=trains, freeze=freezes, bn=bn, epochs=epochs,
                 batch_size=batch_size, lr=lr, lr_mult=_lr_mults(lr_mult),
                 layer_decay=layer_decay, optimizer=optimizer, loss=loss, label=label, val=val,
                 val_split=val_split, early_stop=early_stop, seed=seed, strategy=strategy,
                 lora_rank=lora_rank, lora_select=lora_select,
                 checkpoint=ckpt, resume=resume, overwrite=overwrite,
                 verbose=0 if (quiet or as_json) else 1, **extra)
    surgery.save_model(result.model, output, overwrite=overwrite, inputs=readers)
    if metrics_out:
        write_metrics(result, metrics_out, overwrite=overwrite, inputs=readers)
    if plot:
        write_plot(result, plot, overwrite=overwrite, inputs=readers)
    if save_adapters:
        write_adapters(result.adapters, save_adapters, overwrite=overwrite, inputs=readers)
    if hasattr(result, "remove_checkpoint"):
        result.remove_checkpoint()
    if as_json:
        _print_json({**result.to_dict(), "output": output})
    else:
        click.echo(str(result))
        click.echo(f"wrote {output}")
    return 0


@main.group("edit")
def edit_group() -> None:
    """Structural edits of MODEL written to OUT; the input is never touched.

    Every edit prints what changed, the variables carried bitwise, converted and newly
    initialized, and the parameter counts before and after. --verify runs both models on a
    probe batch (for the function-preserving edits: widen, deepen, insert of an identity).

    \b
    Examples:
      surgery edit widen sample_models/cnn.keras -o wide.keras --layer fc --units 96 --verify
      surgery edit deepen sample_models/cnn.keras -o deep.keras --after block2_pool --verify
      surgery edit delete-layer model.keras -o out.keras --layer dropout
      surgery edit insert sample_models/cnn.keras -o out.keras --after fc \\
          --layer-json '{"class_name": "Dropout", "config": {"rate": 0.2, "name": "drop"}}'
    """


def _edit_options(f):
    for option in reversed([
        click.argument("model"),
        click.option("-o", "--output", metavar="OUT.keras", help="Where to write the result."),
        click.option("--dry-run", is_flag=True, help="Print the report; write nothing."),
        click.option("--verify", "do_verify", is_flag=True, help="Compare outputs with MODEL "
                     "on a probe batch; exit 1 (nothing written) if they differ."),
        click.option("--atol", default=1e-5, show_default=True, callback=_tolerance,
                     help="Tolerance for --verify."),
        click.option("--inputs", metavar="X.npz", expose_value=False, help="Your own inputs "
                     "for --verify, besides the random probe families (implies --verify).",
                     callback=lambda ctx, _, value: ctx.meta.__setitem__("verify_inputs",
                                                                         value)),
        click.option("--overwrite", is_flag=True, help="Replace an existing OUT."),
        click.option("--unsafe", is_flag=True, help="Allow Lambda layers and configs outside "
                     "Keras."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON only."),
    ]):
        f = option(f)
    return f


def _run_edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, fn) -> int:
    inputs = click.get_current_context().meta.get("verify_inputs")

    def operation(m):
        result = fn(m)
        return result.model, result.report

    return _edit_model(model, output, unsafe=unsafe, dry_run=dry_run, overwrite=overwrite,
                       as_json=as_json, operation=operation,
                       verify=do_verify or inputs is not None, atol=atol,
                       verify_inputs=inputs)


@edit_group.command("delete-channels")
@_edit_options
@click.option("--layer", required=True, help="The layer whose output channels go.")
@click.option("--channels", metavar="I,J,...", help="Channel indices to delete.")
@click.option("--prune-lowest", type=int, metavar="K", help="Delete the K channels with the "
              "lowest L1 norm.")
@click.option("--ratio", type=float, help="Delete this fraction of channels (lowest L1).")
@click.option("--no-couple", is_flag=True, help="Refuse instead of deleting a coupled group "
              "(inputs of an Add...) together.")
def edit_delete_channels(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                         layer, channels, prune_lowest, ratio, no_couple):
    """Delete output channels of a layer, following the graph (pruning).

    Readers downstream are sliced (Dense, Conv, SeparableConv, RNN input kernels, Flatten ->
    Dense rows, Concatenate offsets), BatchNorm and DepthwiseConv2D on the way too; inputs of
    an Add (and other elementwise merges) lose the same channels together.

    \b
    Examples:
      surgery edit delete-channels sample_models/cnn.keras -o pruned.keras \\
          --layer block2_conv --channels 0,3,5
      surgery edit delete-channels sample_models/cnn.keras -o pruned.keras \\
          --layer block3_conv --ratio 0.25
    """
    from surgery import edit
    given = sum(v is not None for v in (channels, prune_lowest, ratio))
    if given != 1:
        raise click.UsageError("give exactly one of --channels, --prune-lowest, --ratio")

    def run(m):
        chans = _int_list(channels) if channels else edit.lowest_channels(
            m, layer, k=prune_lowest, ratio=ratio)
        return edit.delete_channels(m, layer, chans, couple=not no_couple)
    return _run_edit(model, output, dry_run, False if do_verify is None else do_verify, atol,
                     overwrite, unsafe, as_json, run)


@edit_group.command("widen")
@_edit_options
@click.option("--layer", required=True, help="The Dense or Conv layer to widen.")
@click.option("--units", type=int, required=True, help="Its new width.")
@click.option("--seed", type=int, help="Which units are copied.")
@click.option("--noise", default=0.0, show_default=True, help="Symmetry-breaking noise.")
def edit_widen(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, layer,
               units, seed, noise):
    """Net2WiderNet: widen a layer without changing the function.

    \b
    Example:
      surgery edit widen sample_models/cnn.keras -o wide.keras --layer block3_conv --units 96
    """
    from surgery import edit
    return _run_edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                     lambda m: edit.widen(m, layer, units, seed=seed, noise=noise))


@edit_group.command("deepen")
@_edit_options
@click.option("--after", required=True, help="Insert the identity layer after this one.")
@click.option("--residual", is_flag=True, help="A zero-initialized residual branch instead.")
def edit_deepen(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, after,
                residual):
    """Net2DeeperNet: insert an identity layer (or a zero residual branch).

    \b
    Example:
      surgery edit deepen sample_models/cnn.keras -o deep.keras --after fc --verify
    """
    from surgery import edit
    return _run_edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                     lambda m: edit.deepen(m, after, residual=residual))


@edit_group.command("delete-layer")
@_edit_options
@click.option("--layer", required=True, help="The single-input layer to remove.")
def edit_delete_layer(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                      layer):
    """Delete a layer; its consumers take its input.

    \b
    Example:
      surgery edit delete-layer model.keras -o out.keras --layer dropout
    """
    from surgery import edit
    return _run_edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                     lambda m: edit.delete_layer(m, layer))


_LAYER_JSON_LIMIT = 64 * 1024


def _layer_spec(text: str) -> dict:
    if len(text) > _LAYER_JSON_LIMIT:
        raise click.BadParameter(f"{len(text):,} characters; a layer's config is at most "
                                 f"{_LAYER_JSON_LIMIT:,}", param_hint="--layer-json")
    try:
        return json.loads(text)
    except ValueError as e:
        raise click.BadParameter(f"not JSON ({e})", param_hint="--layer-json") from None
    except RecursionError:
        raise click.BadParameter("nested too deeply; give one layer's {\"class_name\": ..., "
                                 "\"config\": {...}}", param_hint="--layer-json") from None


@edit_group.command("insert")
@_edit_options
@click.option("--after", help="Insert after this layer.")
@click.option("--before", help="Insert before this layer.")
@click.option("--layer-json", required=True, metavar="JSON", help='The layer: {"class_name": '
              '..., "config": {...}} (Keras layers only).')
def edit_insert(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, after,
                before, layer_json):
    """Insert a layer after (or before) an existing one.

    \b
    Example:
      surgery edit insert model.keras -o out.keras --after fc \\
          --layer-json '{"class_name": "Dropout", "config": {"rate": 0.2, "name": "drop"}}'
    """
    from surgery import edit
    spec = _layer_spec(layer_json)
    return _run_edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                     lambda m: edit.insert_layer(m, after, spec, before=before))


@edit_group.command("replace")
@_edit_options
@click.option("--layer", required=True, help="The layer to replace.")
@click.option("--layer-json", required=True, metavar="JSON", help="The new layer's "
              '{"class_name": ..., "config": {...}}.')
def edit_replace(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, layer,
                 layer_json):
    """Replace a layer; weights are carried where names and shapes fit.

    \b
    Example:
      surgery edit replace model.keras -o out.keras --layer fc \\
          --layer-json '{"class_name": "Dense", "config": {"units": 64, "name": "fc"}}'
    """
    from surgery import edit
    spec = _layer_spec(layer_json)
    return _run_edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                     lambda m: edit.replace_layer(m, layer, spec))


@main.command("set")
@_model_options
@click.option("--select", "selects", multiple=True, required=True, metavar="S",
              help="Variables to change (e.g. '*/kernel'); repeatable.")
@click.option("--l2", type=float, help="Add an L2 regularizer with this factor.")
@click.option("--l1", type=float, help="Add an L1 regularizer with this factor.")
@click.option("--initializer", metavar="NAME", help="Configure this initializer.")
@click.option("--constraint", metavar="NAME", help="Add this constraint (max_norm, non_neg, "
              "unit_norm, ...).")
def set_cmd(model, output, dry_run, overwrite, unsafe, as_json, selects, l2, l1, initializer,
            constraint):
    """Change how parameters are set up; weights stay bitwise the same.

    \b
    Examples:
      surgery set sample_models/cnn.keras -o reg.keras --select 'fc/kernel' --l2 1e-4
      surgery set sample_models/cnn.keras -o out.keras --select 'head/kernel' \\
          --initializer he_normal
    """
    chosen = [x for x in (l2 or l1, initializer, constraint) if x]
    if len(chosen) != 1:
        raise click.UsageError("give one of --l2/--l1, --initializer, --constraint")

    class _Report:
        def __init__(self, new):
            self.paths = list(getattr(new, "_surgery_setup_changed", ()))

        def to_dict(self):
            return {"changed": self.paths}

        def __str__(self):
            what = (f"L1L2(l1={l1 or 0}, l2={l2 or 0})" if (l1 or l2) else
                    initializer or constraint)
            return f"set {what} on {len(self.paths)} variables: {', '.join(self.paths)}; " \
                   "weights unchanged"

    def operation(m):
        if l1 or l2:
            new = surgery.set_regularizer(m, *selects, l1=l1 or 0.0, l2=l2 or 0.0)
        elif initializer:
            new = surgery.set_initializer(m, *selects, initializer=initializer)
        else:
            new = surgery.set_constraint(m, *selects, constraint=constraint)
        return new, _Report(new)
    return _edit_model(model, output, unsafe=unsafe, dry_run=dry_run, overwrite=overwrite,
                       as_json=as_json, operation=operation)


@main.command("convert")
@click.argument("model")
@click.option("-o", "--output", required=True, metavar="OUT.keras", help="The Keras 3 model.")
@click.option("--atol", default=1e-5, show_default=True, callback=_tolerance,
              help="Tolerance for the output check.")
@click.option("--inputs", metavar="X.npz", help="Your own inputs for the check, besides the "
              "random probe families.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
@click.option("--unsafe", is_flag=True, help="Allow Lambda layers and configs outside Keras.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def convert_cmd(model, output, atol, inputs, overwrite, unsafe, as_json) -> int:
    """Convert a Keras 2 (tf_keras) .h5 model to a Keras 3 .keras, verified.

    The model is rebuilt as Keras 3 with its weights carried; both versions run on a probe
    batch and OUT is written only if their outputs agree (exit 1 otherwise).

    \b
    Example:
      surgery convert sample_models/keras2_mlp.h5 -o keras3_mlp.keras
    """
    from surgery.errors import CheckFailed, InputError
    from surgery.io.sources import detect_format

    if os.path.exists(model) and detect_format(model) != "hdf5":
        raise InputError(f"{model}: is already a Keras 3 model ({detect_format(model)}); "
                         "convert takes a Keras 2 (tf_keras) .h5 model")
    old = surgery.load_model(model, safe_mode=not unsafe, legacy=True)
    new = surgery.load_model(model, safe_mode=not unsafe)
    weights = surgery.diff(old, new)
    v = surgery.verify(old, new, inputs, atol=atol)
    if not v.ok or not weights.identical:
        raise CheckFailed(f"{model}: the Keras 3 rebuild differs (outputs by {v.reason}; "
                          f"weights {'same' if weights.identical else 'differ'}); nothing was "
                          "written")
    surgery.save_model(new, output, overwrite=overwrite,
                       inputs=[model] + ([inputs] if inputs else []))
    data = {"input": model, "output": output, "variables": len(weights.variables),
            "weights_identical": weights.identical, "verify": v.to_dict()}
    if as_json:
        _print_json(data)
    else:
        click.echo(f"{model} (Keras 2) -> {output} (Keras 3): {len(weights.variables)} "
                   f"variables bitwise the same\n{v}\nwrote {output}")
    return 0


@main.command("export")
@click.argument("model")
@click.option("-o", "--output", required=True, metavar="DIR", help="The SavedModel directory.")
@click.option("--format", "fmt", type=click.Choice(["hub", "savedmodel"]), default="hub",
              show_default=True, help="hub: TF2 Hub module (hub.KerasLayer loads it); "
              "savedmodel: Keras's model.export (signature 'serve').")
@click.option("--overwrite", is_flag=True, help="Replace an existing DIR.")
@click.option("--unsafe", is_flag=True, help="Allow Lambda layers and configs outside Keras.")
def export_cmd(model, output, fmt, overwrite, unsafe) -> int:
    """Export MODEL as a TF Hub module or SavedModel, verified against the model.

    \b
    Examples:
      surgery export sample_models/cnn.keras -o cnn_hub --format hub
      surgery export sample_models/cnn.keras -o cnn_savedmodel --format savedmodel
    """
    from surgery.io.atomic import check_output_dir

    check_output_dir(output, inputs=[model], overwrite=overwrite)  # before the slow part
    m = surgery.load_model(model, safe_mode=not unsafe)
    surgery.export_model(m, output, fmt=fmt, overwrite=overwrite, inputs=[model])
    click.echo(f"wrote {output} ({fmt}); its outputs match the model's")
    return 0


@main.command("apply")
@click.argument("plan")
@click.option("--dry-run", is_flag=True, help="Print what every variable will undergo; write "
              "nothing (finetune steps are not run).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output model.")
@click.option("--inputs", metavar="X.npz", help="Inputs for the plan's [verify] preserve "
              "checks, besides the random probe families (replaces its inputs key).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON only.")
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
    report = p.dry_run() if dry_run else p.apply(overwrite=overwrite or None)
    _emit(report, as_json)
    return 0


@main.group("recipe")
def recipe_group() -> None:
    """The CNN and LSTM transfer recipes.

    \b
    Examples:
      surgery recipe list
      surgery recipe run cnn-channels --set channels=1 -o gray.keras
      surgery recipe run lstm-bidirectional -o bi.keras
    """


@recipe_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def recipe_list(as_json: bool) -> int:
    """List the recipes with their options.

    \b
    Example:
      surgery recipe list
    """
    from surgery.recipes import REGISTRY

    if as_json:
        _print_json({n: {"summary": r.summary, "options": {k: repr(v) for k, v in
                                                           r.options().items()}}
                     for n, r in REGISTRY.items()})
        return 0
    for name, r in REGISTRY.items():
        click.echo(f"{name:<20} {r.summary}")
        opts = ", ".join(f"{k}={v!r}" for k, v in r.options().items())
        click.echo(f"{'':<20} options: {opts}")
    return 0


def _option_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


@recipe_group.command("run")
@click.argument("name")
@click.option("--model", "model_path", metavar="MODEL.keras", help="Your pretrained model "
              "(default: the shipped sample model the recipe is written for).")
@click.option("-o", "--output", metavar="OUT", help="Where to write the resulting model.")
@click.option("--seed", type=int, help="Seed (recipes that train or draw).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="A recipe option (see `surgery recipe list`); VALUE is JSON or text.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON only.")
def recipe_run(name: str, model_path: str | None, output: str | None, seed: int | None,
               settings, overwrite: bool, as_json: bool) -> int:
    """Run recipe NAME (defaults use the shipped sample models).

    \b
    Examples:
      surgery recipe run cnn-new-task -o new_task.keras --seed 0
      surgery recipe run cnn-channels --model my_cnn.keras --set channels=1 -o gray.keras
      surgery recipe run cnn-channels --set channels=3 --set mode=select \\
          --set 'indices=[2, 1, 0]' -o bgr.keras
      surgery recipe run cnn-inflate --set frames=8 -o video.keras
    """
    from surgery.recipes import get_recipe

    recipe = get_recipe(name)
    accepted = recipe.options()
    kwargs = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        if key not in accepted:
            raise click.BadParameter(f"recipe {name} has no option {key!r}; it takes "
                                     f"{', '.join(accepted)}", param_hint="--set")
        if key == "output":  # an output, checked like -o
            if output is not None:
                raise click.BadParameter("give the output once: -o OUT or --set output=OUT, "
                                         "not both", param_hint="--set")
            output = value
            continue
        kwargs[key] = _option_value(value)
    params = inspect_params(recipe)
    if "overwrite" in params:  # every file a recipe writes: replaced only with --overwrite
        kwargs["overwrite"] = overwrite
    if model_path is not None:
        if "model" not in params:
            raise click.BadParameter(f"recipe {name} takes no model", param_hint="--model")
        kwargs["model"] = model_path
    if output is not None:
        if "output" not in accepted:
            raise click.BadParameter(f"recipe {name} writes no model", param_hint="-o")
        from surgery.io.atomic import check_output

        readers = [v for v in kwargs.values() if isinstance(v, str) and os.path.exists(v)]
        default = getattr(params.get("model"), "default", None)
        if not recipe.writes_folder:  # a folder recipe checks each of its files itself
            check_output(output, inputs=readers + [default, kwargs.get("model")],
                         overwrite=overwrite)
        kwargs["output"] = output
    if seed is not None:
        kwargs["seed"] = seed
    if not as_json and "echo" in params:
        kwargs["echo"] = click.echo
    result = recipe.run(**kwargs)
    _emit(result, as_json)
    return 0


def inspect_params(recipe) -> dict:
    import inspect as _inspect

    return dict(_inspect.signature(recipe.load()).parameters)


@main.command("demo")
@click.option("--out", "out_dir", default="demo-out", show_default=True,
              help="Folder for the demo's models and its summary.json.")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(1, 1000),
              help="How many seeds per task (1 or more).")
@click.option("--task", "tasks_", multiple=True, type=click.Choice(["cnn", "lstm"]),
              help="Run only these tasks (default: both).")
@click.option("--overwrite", is_flag=True, help="Replace the demo's files already in --out "
              "(its models and summary.json); without it an existing one is refused.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON only.")
def demo_cmd(out_dir: str, seeds: int, tasks_, overwrite: bool, as_json: bool) -> int:
    """Transfer vs training from scratch on the shipped sample models.

    Runs the CNN new-task recipe (the sample CNN on 4 shapes it never saw) and the LSTM
    encoder-reuse recipe (motif families), each with 20 labels per class, against the same
    architecture trained from scratch on the same data, every training run until its
    training loss stops improving, BatchNorm statistics of layers that trained recomputed on
    the training images, over --seeds seeds; prints the setup, then test accuracy (mean and
    spread), training accuracy, epochs, time and parameters trained.

    \b
    Example:
      surgery demo --out demo-out --seeds 3
    """
    from surgery.recipes.demo import format_table, run_demo

    echo = (lambda line: None) if as_json else click.echo
    summary = run_demo(out_dir, seeds=tuple(range(seeds)), tasks_to_run=tasks_ or
                       ("cnn", "lstm"), overwrite=overwrite, echo=echo)
    if as_json:
        _print_json(summary)
        return 0
    click.echo("")
    click.echo(format_table(summary))
    click.echo(f"\ntotal {summary['seconds']:.0f} s; models and summary.json in {out_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
