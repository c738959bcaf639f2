"""Red-team findings (issue #22 §5): bad option values that ended in "unexpected X ... (a bug
in surgery)" are one `error:` line; a dry run fails exactly where the real run would."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from cli import main


@pytest.mark.parametrize("args, line", [
    (["reinit", "{cnn}", "--dry-run", "--select", "fc", "--initializer", "constant"],
     "initializer 'constant' needs arguments ('value'); pass a config from Python, e.g. "
     "{{'class_name': 'Constant', 'config': {{'value': 0.1}}}}, or name one without arguments"),
    (["reinit", "{cnn}", "--dry-run", "--select", "fc/bias", "--initializer", "orthogonal"],
     "fc/bias: Orthogonal can't fill shape (64,) (The tensor to initialize must be at least "
     "two-dimensional. Received: shape=(64,) of rank 1.); select the kernels only or choose "
     "another initializer"),
    (["reinit", "{cnn}", "-o", "{out}", "--select", "fc/bias", "--initializer", "orthogonal"],
     "fc/bias: Orthogonal can't fill shape (64,) (The tensor to initialize must be at least "
     "two-dimensional. Received: shape=(64,) of rank 1.); select the kernels only or choose "
     "another initializer"),
    (["reinit", "{cnn}", "--dry-run", "--select", "fc", "--seed", "1180591620717411303424"],
     "seed must be between 0 and 2147483647, got 1180591620717411303424"),
    (["edit", "delete-channels", "{cnn}", "--dry-run", "--layer", "block1_conv", "--ratio",
      "nan"],
     "edit.lowest_channels: ratio must be a number between 0 and 1 (the fraction of channels "
     "to delete), got nan"),
    (["convert", "{cnn}", "-o", "{out}"],
     "{cnn}: is already a Keras 3 model (keras); convert takes a Keras 2 (tf_keras) .h5 model"),
])
def test_one_error_line(samples, tmp_path, args, line):
    fill = {"cnn": samples["cnn"], "out": str(tmp_path / "out.keras")}
    r = CliRunner().invoke(main, [a.format(**fill) for a in args])
    assert r.exit_code == 2 and r.output == f"error: {line.format(**fill)}\n", r.output
    assert os.listdir(tmp_path) == []
