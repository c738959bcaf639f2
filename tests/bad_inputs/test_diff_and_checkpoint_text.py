"""diff output and TF checkpoint reads (issue #22 §4/§5): names are escaped in the text table,
`--json` is valid JSON even with NaN in a file, and a complex TF checkpoint variable is refused
instead of losing its imaginary part."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.errors import FormatError


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"invalid JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_diff_json_is_valid_with_nan_and_names_are_escaped(tmp_path):
    evil = "w\x1b[2J\nFAKE: all same"
    np.savez(tmp_path / "a.npz", **{evil: np.array([1.0, np.nan]), "b": np.ones(2)})
    np.savez(tmp_path / "b.npz", **{evil: np.array([1.0, 2.0]), "b": np.ones(2)})
    r = CliRunner().invoke(main, ["diff", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"),
                                  "--json"])
    assert r.exit_code == 1, r.output
    data = _strict(r.output)
    assert [v["max_abs_diff"] for v in data["variables"] if v["path"] == evil] == ["inf"]
    r = CliRunner().invoke(main, ["diff", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")])
    assert "\x1b" not in r.output and "\nFAKE" not in r.output
    assert "w\\x1b[2J\\nFAKE: all same" in r.output


def test_complex_checkpoint_variable_is_refused(tmp_path):
    import tensorflow as tf
    ckpt = tf.train.Checkpoint(w=tf.Variable(np.array([1 + 2j], np.complex64)),
                               v=tf.Variable([1.0]))
    prefix = ckpt.save(str(tmp_path / "ck"))
    with surgery.open_weights(prefix) as src:
        np.testing.assert_array_equal(src.read("v"), [1.0])
        with pytest.raises(FormatError) as e:
            src.read("w")
    assert str(e.value) == (f"{prefix}: w/.ATTRIBUTES/VARIABLE_VALUE: holds complex numbers "
                            "(complex64); surgery copies real-valued weights only and would "
                            "lose the imaginary part; store the real and imaginary parts as "
                            "two float arrays")
