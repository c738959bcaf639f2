"""The CLI in-process with CliRunner; the no-TensorFlow rule in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli import main
from tests.conftest import ROOT


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_help_has_examples():
    r = run("--help")
    assert r.exit_code == 0 and "surgery inspect sample_models/cnn.keras" in r.output
    for cmd in ("inspect", "diff", "demo", "transplant"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Example" in r.output, cmd


def test_inspect_table_and_json(samples):
    r = run("inspect", samples["cnn"])
    assert r.exit_code == 0 and "head/kernel" in r.output and "total params:" in r.output
    r = run("inspect", samples["lstm"], "--json")
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert data["format"] == "keras" and data["variables"][0]["path"] == "embed/embeddings"


def test_diff_exit_codes(samples):
    r = run("diff", samples["cnn"], samples["cnn"])
    assert r.exit_code == 0 and r.output.strip().endswith("identical")
    r = run("diff", samples["cnn"], samples["lstm"], "--json")
    assert r.exit_code == 1
    assert json.loads(r.output)["identical"] is False


def test_bad_input_is_one_error_line_exit_2(tmp_path):
    missing = str(tmp_path / "nope.keras")
    r = run("inspect", missing)
    assert r.exit_code == 2
    assert r.output == f"error: {missing}: no such file or directory\n"


def test_usage_error_is_one_line():
    r = run("inspect")
    assert r.exit_code == 2
    assert r.output == "error: Missing argument 'PATH'; see 'surgery inspect --help'\n"


def test_debug_shows_traceback_and_keeps_the_exit_code(tmp_path):
    missing = str(tmp_path / "nope")
    line = f"error: {missing}: no such file or directory\n"
    for args in (["--debug", "inspect", missing], ["inspect", missing, "--debug"]):
        r = run(*args)  # the flag before or after the command
        assert r.exit_code == 2, (args, r.output)
        assert r.output.startswith("Traceback (most recent call last):"), r.output
        assert "surgery.errors.InputError: " in r.output and r.output.endswith(line)
    r = run("inspect", missing)
    assert r.exit_code == 2 and r.output == line
    r = run("inspect", "--", "--debug")  # after --, a value (a file called --debug)
    assert r.exit_code == 2 and r.output == "error: --debug: no such file or directory\n"


_BLOCK_TF = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'tensorflow_hub'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
sys.argv = ['surgery'] + sys.argv[1:]
from cli import main
main()
"""


@pytest.mark.parametrize("args", [
    ["--help"],
    ["inspect", "{cnn}"],
    ["inspect", "{keras2_mlp}", "--json"],
    ["diff", "{cnn}", "{lstm}"],
])
def test_file_commands_do_not_import_tensorflow(samples, args):
    argv = [a.format(**samples) for a in args]
    r = subprocess.run([sys.executable, "-c", _BLOCK_TF, *argv], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode in (0, 1), r.stderr
    assert "blocked" not in r.stderr and r.stdout


def test_console_script_smoke(samples):
    exe = os.path.join(os.path.dirname(sys.executable), "surgery")
    r = subprocess.run([exe, "inspect", samples["lstm"]], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "encoder/kernel" in r.stdout
