"""Following the README's examples in order never hits "already exists": every command writes
an output name no earlier example wrote (the multi-worker example runs once per machine)."""

from __future__ import annotations

import collections
import os
import re

from tests.conftest import ROOT


def test_readme_examples_write_distinct_outputs():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    seen: collections.Counter = collections.Counter()
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        if "TF_CONFIG" in block:  # one command per machine
            continue
        for line in block.splitlines():
            seen.update(re.findall(r"(?:\s-o|--output|--out)\s+(\S+)", line))
    assert {name: n for name, n in seen.items() if n > 1} == {}
