"""Refreshes the outputs shown in docs/tutorial.md: runs every ```sh block's commands in a
fresh folder (with the repository's sample_models/ and examples/ beside them) and writes what
they print into the ```text block that follows. `make test-slow` checks the result
(tests/test_tutorial.py).

Run it from the repository with the project's environment: ``python docs/fill_outputs.py``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from tests.test_tutorial import commands  # noqa: E402  (one parser for both)


def main() -> None:
    path = os.path.join(HERE, "tutorial.md")
    text = open(path, encoding="utf-8").read()
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep +
           os.environ.get("PATH", ""), "TF_CPP_MIN_LOG_LEVEL": "3"}
    pattern = re.compile(r"^```sh\n(.*?)^```\n(\n```text\n.*?^```\n)?", re.S | re.M)
    with tempfile.TemporaryDirectory() as work:
        for name in ("sample_models", "examples"):
            os.symlink(os.path.join(ROOT, name), os.path.join(work, name))

        def fill(m: re.Match) -> str:
            printed = ""
            for command, want in commands(m.group(1)):
                r = subprocess.run(shlex.split(command), cwd=work, env=env,
                                   capture_output=True, text=True)
                if r.returncode != want:
                    sys.exit(f"{command}: exit {r.returncode}\n{r.stdout}{r.stderr}")
                printed += r.stdout
            return f"```sh\n{m.group(1)}```\n\n```text\n{printed}```\n"

        text = pattern.sub(fill, text)
    open(path, "w", encoding="utf-8").write(text)


if __name__ == "__main__":
    main()
