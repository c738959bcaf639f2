"""Helpers shared by the hostile-file tests: an archive with its weights replaced, and the
one-error-line check (the `clean` model files are a fixture in this folder's conftest)."""

from __future__ import annotations

import zipfile


def one_error(r, line: str) -> None:
    """A CliRunner result that is exit 2 with exactly one `error:` line, `line`."""
    assert r.exit_code == 2, r.output
    assert r.output == f"error: {line}\n", r.output


def rezip(src, dst, h5_path) -> str:
    """A copy of the `.keras` archive `src` at `dst` whose weights file is `h5_path`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = open(h5_path, "rb").read() if name == "model.weights.h5" else zin.read(name)
            zout.writestr(name, data)
    return str(dst)
