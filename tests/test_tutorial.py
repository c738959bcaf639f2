"""docs/tutorial.md runs as written: every ```sh block's commands run in order in one temporary
folder (the shipped `sample_models/` and `examples/` beside them, as in a clone), each must exit
0, and the ```text block after it is what they print, numbers aside (values may differ in the
last digits between machines; wording, columns and order may not)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT

TUTORIAL = os.path.join(ROOT, "docs", "tutorial.md")
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?")


def blocks(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of a markdown text as (language, body), in order."""
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"^```(\w*)\n(.*?)^```$", text, flags=re.S | re.M)]


def commands(body: str) -> list[tuple[str, int]]:
    """Shell commands of a block with the exit code each must give: comments dropped,
    backslash continuations joined; a trailing ``# exit N`` comment expects N (else 0)."""
    out, current = [], ""
    for line in body.splitlines():
        line = line.rstrip()
        if not current and (not line or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += (line[:-1].strip() if current else line[:-1].rstrip()) + " "
            continue
        command, _, comment = (current + (line.strip() if current else line)).partition("  #")
        m = re.match(r"\s*exit (\d+)", comment)
        out.append((command.strip(), int(m.group(1)) if m else 0))
        current = ""
    return out


def shape(text: str) -> list[str]:
    """Lines with every number masked and runs of spaces collapsed."""
    return [re.sub(r" +", " ", _NUMBER.sub("#", line)).rstrip()
            for line in text.strip().splitlines()]


def test_block_parsing():
    text = ("x\n```sh\n# a comment\nsurgery a b \\\n  --c d  # note\nsurgery diff a b  # exit 1\n"
            "```\n```text\nok 1.5\n```\n")
    (lang1, body1), (lang2, body2) = blocks(text)
    assert (lang1, commands(body1)) == ("sh", [("surgery a b --c d", 0),
                                               ("surgery diff a b", 1)])
    assert (lang2, shape(body2)) == ("text", ["ok #"])


@pytest.mark.slow  # trains and evaluates: a few minutes
def test_tutorial_runs_as_written(tmp_path):
    text = open(TUTORIAL, encoding="utf-8").read()
    os.symlink(os.path.join(ROOT, "sample_models"), tmp_path / "sample_models")
    os.symlink(os.path.join(ROOT, "examples"), tmp_path / "examples")
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    pending: list[tuple[str, str]] = []  # (command, its output) of the last sh block
    ran = 0
    for lang, body in blocks(text):
        if lang == "sh":
            pending = []
            for command, exit_code in commands(body):
                r = subprocess.run(shlex.split(command), cwd=tmp_path, env=env,
                                   capture_output=True, text=True, timeout=900)
                assert r.returncode == exit_code, f"{command}\n{r.stdout}{r.stderr}"
                pending.append((command, r.stdout))
                ran += 1
        elif lang == "text" and pending:
            printed = "".join(out for _, out in pending)
            assert shape(printed) == shape(body), (
                f"the output of {[c for c, _ in pending]} changed:\n{printed}")
            pending = []
    assert ran >= 10
