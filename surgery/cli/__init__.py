"""The `surgery` command line: thin wrappers that parse options, call the library, print.

Exit codes: 0 success; 1 a check that was asked for failed (``diff`` found differences);
2 the request or an input is unusable; 130 interrupted. Errors print one line, ``error:
...``, with no traceback unless ``--debug`` is given (before or after the command; the exit
code stays the same). ``--json`` prints machine-readable output only. ``--help``, ``inspect``
and ``diff`` of files do not import TensorFlow.

One module per group of commands, registered on the `main` group from `app`:

- `app`: the group, error lines and exit codes, SIGTERM, TensorFlow's native log lines
- `options`: the shared option decorators, value parsers and printing
- `runner`: the one load -> operate -> verify -> save runner of the model commands
- `files`: inspect, diff, transplant, convert, export
- `models`: freeze, unfreeze, reinit, head, set
- `training`: finetune
- `evaluation`: evaluate, predict
- `editing`: the edit group
- `plans`: apply
- `recipes`: the recipe group and demo
- `samples`: sample-data (the sample tasks' data as files)

The repository's top-level ``cli.py`` is the same entry point (``python cli.py ...``).
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("SURGERY_QUIET_TF", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes are not for users

from .app import main  # noqa: E402
from . import (editing, evaluation, files, models, plans, recipes, samples,  # noqa: E402,F401
               training)

__all__ = ["main"]
