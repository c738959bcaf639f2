"""The errors `surgery` raises on bad input.

Every error the library raises because of what it was given is a `SurgeryError`. Its message is
one line that names the file, layer or variable, gives both sides where two things differ, and
says what to do next. The CLI prints it as ``error: <message>`` and exits with `exit_code`.
"""

from __future__ import annotations

__all__ = [
    "SurgeryError",
    "InputError",
    "FormatError",
    "UnsafeModelError",
    "SelectorError",
    "ShapeError",
    "OutputError",
    "OptionError",
    "CheckFailed",
]


class SurgeryError(Exception):
    """Base of every error `surgery` raises on bad input (CLI exit code 2)."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: a multi-line message would break the CLI's `error:` contract; other
        # control characters (from names read out of files: ESC, CR, bidi overrides) are
        # escaped so that they can't reach the terminal.
        text = " ".join(str(message).split("\n"))
        if not text.isprintable():
            text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
        super().__init__(text)


class InputError(SurgeryError):
    """A path that is missing, unreadable or of a kind `surgery` does not read."""


class FormatError(SurgeryError):
    """A file that claims a format but breaks it (truncated, malformed, hostile)."""


class UnsafeModelError(SurgeryError):
    """A model that would run code from outside Keras while `safe_mode` is on."""


class SelectorError(SurgeryError):
    """A selector that matches nothing, or is malformed."""


class ShapeError(SurgeryError):
    """Two arrays whose shapes can't be bridged."""


class OutputError(SurgeryError):
    """An output path that can't or mustn't be written."""


class OptionError(SurgeryError):
    """An option whose value is not valid (an unknown mode, initializer or adapter name)."""


class CheckFailed(SurgeryError):
    """A check the user asked for ran and failed (CLI exit code 1)."""

    exit_code = 1
