"""The `surgery` group: one ``error:`` line and an exit code for every failure, SIGTERM
unwinding like Ctrl-C, TensorFlow's native start-up lines kept off the terminal."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import click

import surgery
from surgery.errors import SurgeryError

__all__ = ["main", "SurgeryGroup"]


def _debug_requested(args) -> bool:
    args = sys.argv[1:] if args is None else list(args)
    return "--debug" in _options_part(args) or os.environ.get("SURGERY_DEBUG") == "1"


def _options_part(args: list[str]) -> list[str]:
    """The arguments before a ``--`` (after it, everything is a value)."""
    return args[:args.index("--")] if "--" in args else args


def _debug_first(args) -> list[str]:
    """``--debug`` is the group's flag; accept it after the command too (``surgery inspect x
    --debug``) by moving it to the front."""
    args = sys.argv[1:] if args is None else list(args)
    head = _options_part(args)
    if "--debug" not in head:
        return args
    return ["--debug"] + [a for a in head if a != "--debug"] + args[len(head):]


class SurgeryGroup(click.Group):
    """A click group that turns every failure into one ``error:`` line and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        debug = _debug_requested(args)
        args = _debug_first(args)
        _python_loggers_quiet(not debug)
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
            _traceback(debug)
            hint = ""
            ctx = getattr(e, "ctx", None)
            if ctx is not None:
                hint = f"; see '{ctx.command_path} --help'"
            click.echo(f"error: {e.format_message().rstrip('.')}{hint}", err=True)
            sys.exit(2)
        except SurgeryError as e:
            _traceback(debug)
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted; nothing was written", err=True)
            sys.exit(130)
        except Exception as e:  # a bug, not bad input: say so, keep the contract of one line
            _traceback(debug)
            from surgery.text import escape_text

            click.echo(f"error: unexpected {type(e).__name__}: {escape_text(e)} (a bug in "
                       "surgery; rerun with --debug for the traceback and report it)", err=True)
            sys.exit(2)
        sys.exit(rv if isinstance(rv, int) else 0)


def _traceback(debug: bool) -> None:
    """--debug: the traceback first, then the same error line and exit code as without it."""
    if debug:
        import traceback

        traceback.print_exc(file=sys.stderr)


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


def _python_loggers_quiet(enabled: bool) -> None:
    """TensorFlow's and absl's Python loggers (retracing notes, Keras's absl warnings) keep
    their warnings to themselves unless --debug; errors still show. Python-level, for every
    command alike (the native lines are `_native_stderr_quiet`'s)."""
    if enabled:
        import logging

        for name in ("tensorflow", "absl"):
            logging.getLogger(name).setLevel(logging.ERROR)


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

