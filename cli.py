"""The `surgery` command line. The commands live in `surgery/cli/` (one module per group of
commands, see its docstring); this file is the repository's entry point: ``python cli.py
inspect sample_models/cnn.keras`` runs what the installed ``surgery`` command runs.

(Note for contributors: the commands moved from here to surgery/cli/ — edit them there.)
"""

from surgery.cli import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    main()
