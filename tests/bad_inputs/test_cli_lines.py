"""Errors are one line (issue #22 §5): the real `surgery` script prints nothing but the
`error:` line even when TensorFlow was imported before the error (its C++ start-up lines go
to /dev/null), and a deeply nested --layer-json is a usage error, not a RecursionError."""

from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner

from cli import main
from tests.conftest import ROOT, leftovers


def test_apply_prints_only_the_error_line(tmp_path, samples):
    plan = tmp_path / "p.toml"
    plan.write_text(f'[target]\nmodel = "{samples["cnn"]}"\n[[step]]\nop = "edit"\n'
                    'action = "widen"\nlayer = "fc"\nunits = 3\n[output]\n'
                    'model = "out.keras"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("SURGERY_QUIET_TF",
                                                            "TF_CPP_MIN_LOG_LEVEL")}
    r = subprocess.run([sys.executable, "-c", "from cli import main; main()", "apply",
                        str(plan)], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("error: widen 'fc': 3 units is not more than its 64; Net2Wider only "
                        "grows (use delete_channels to shrink)\n"), r.stderr
    assert not (tmp_path / "out.keras").exists() and leftovers(str(tmp_path)) == []


def test_deeply_nested_layer_json(tmp_path, samples):
    deep = "[" * 20000 + "]" * 20000
    r = CliRunner().invoke(main, ["edit", "insert", samples["cnn"], "-o",
                                  str(tmp_path / "o.keras"), "--after", "fc", "--layer-json",
                                  deep])
    assert r.exit_code == 2
    assert r.output == ("error: Invalid value for --layer-json: nested too deeply; give one "
                        "layer's {\"class_name\": ..., \"config\": {...}}; see 'surgery edit "
                        "insert --help'\n")
    assert os.listdir(tmp_path) == []
