"""The errors `surgery` raises on bad input: the one place every error class is defined.

Every error the library raises because of what it was given is a `SurgeryError` subclass (never
the bare base). Its message is one line that names the file, layer or variable, gives both sides
where two things differ, and says what to do next. The CLI prints it as ``error: <message>`` and
exits with `exit_code`. The same facts travel as fields, for code that handles the error:
`path` (the file or folder), `layer`, `variable` (a canonical weight path or source key) and
`shapes` (both sides of a shape difference, in the order the message names them: source, then
target); each is None where the raise had nothing to give.

Example:
```python
try:
    surgery.save_model(model, "out.keras")
except surgery.OutputExists as e:
    print("keeping", e.path)
```
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
    "OutputExists",
    "CheckFailed",
    "UnsupportedModelError",
    "EditError",
    "PartialLayerError",
    "RulesError",
    "AmbiguousPort",
    "PlanError",
    "Interrupted",
    "RegexRefused",
]


class SurgeryError(Exception):
    """Base of every error `surgery` raises on bad input (CLI exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, layer: str | None = None,
                 variable: str | None = None, shapes: tuple | None = None):
        # One line, always: a multi-line message would break the CLI's `error:` contract; other
        # control characters (from names read out of files: ESC, CR, bidi overrides) are
        # escaped so that they can't reach the terminal.
        text = " ".join(str(message).split("\n"))
        if not text.isprintable():
            text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
        super().__init__(text)
        self.path = None if path is None else str(path)
        self.layer = layer
        self.variable = variable
        self.shapes = None if shapes is None else tuple(
            tuple(s) if isinstance(s, (list, tuple)) else s for s in shapes)


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


class OutputExists(OutputError):
    """The output already exists and overwriting was not asked for (``--overwrite``)."""


class OptionError(SurgeryError):
    """An option whose value is not valid (an unknown mode, initializer or adapter name)."""


class CheckFailed(SurgeryError):
    """A check the user asked for ran and failed (CLI exit code 1)."""

    exit_code = 1


class UnsupportedModelError(SurgeryError):
    """A model, or a layer in it, that the operation does not support: a subclassed model with
    no graph, a tf_keras model where Keras 3 is needed, a layer type without LoRA."""


class EditError(SurgeryError):
    """A structural edit that can't be done on this model: a graph it can't follow, a shared or
    unsupported layer on the way, or an edited model Keras can't build."""


class PartialLayerError(SurgeryError):
    """A selector reached only some variables of a layer where whole layers are needed."""


class RulesError(SurgeryError):
    """A rules file or dict that can't be used (unknown key, wrong type, invalid regex)."""


class AmbiguousPort(RulesError):
    """A PyTorch <-> Keras port whose pairing the names and shapes don't decide (two same-shaped
    layers in parallel, a Flatten whose order can't be told): the message names the layers, the
    candidate modules and the rule that settles it."""


class PlanError(SurgeryError):
    """A plan that can't run: every problem, with its line."""


class Interrupted(SurgeryError):
    """Training was interrupted (Ctrl-C); the last epoch's checkpoint is kept for --resume."""

    exit_code = 130


class RegexRefused(SurgeryError):
    """A regex outside the subset `surgery` runs (it could take super-linear time). Raised and
    caught inside `surgery.selection`, which reports it as the caller's own error class."""
