"""What surgery prints about hostile names and impossible values (issue #22, output text).

Names read from files may hold escape sequences, carriage returns, newlines and bidi
overrides: printed raw they recolour or clear the terminal and forge report lines. Every text
table and error line escapes them. `inspect --stats --json` must be valid JSON (no bare NaN),
and `--stats` flags values that can't be right.
"""

from __future__ import annotations

import json
import math
import re
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.text import escape_text, shown
from surgery.transfer.report import Entry, TransplantReport
from surgery.io.safetensors import write_safetensors
from tests.conftest import leftovers, sha256

HOSTILE = {
    "fc/kernel\x1b[2K\rerror: forged line": "fc/kernel\\x1b[2K\\rerror: forged line",
    "b\nok: injected": "b\\nok: injected",
    "bidi\u202eld.evil": "bidi\\u202eld.evil",
    "tab\there\x07": "tab\\there\\x07",
}


def _printable_lines(text: str) -> list[str]:
    lines = text.removesuffix("\n").split("\n")
    for line in lines:
        assert line.isprintable(), repr(line)
    return lines


def test_escape_text_reference():
    for raw, escaped in HOSTILE.items():
        assert escape_text(raw) == escaped
        assert escape_text(escaped) == escaped  # escaping twice changes nothing
    assert escape_text("conv/kernel_é_中") == "conv/kernel_é_中"
    assert shown("x" * 100, 11) == "xxxxx\u2026xxxxx"


def test_inspect_escapes_names_from_a_file(tmp_path):
    path = tmp_path / "h.safetensors"
    write_safetensors({name: np.ones(2, np.float32) for name in HOSTILE}, str(path))
    r = CliRunner().invoke(main, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    lines = _printable_lines(r.output)
    # the source line, a blank line, the table header, one row per name, blank, total
    assert len(lines) == 3 + len(HOSTILE) + 2
    rows = lines[3:3 + len(HOSTILE)]
    assert sorted(re.split(r" {2,}", row)[0] for row in rows) == sorted(HOSTILE.values())
    assert all(re.split(r" {2,}", row.strip())[1:] == ["(2,)", "float32", "2"] for row in rows)
    data = json.loads(CliRunner().invoke(main, ["inspect", str(path), "--json"]).output)
    assert sorted(v["path"] for v in data["variables"]) == sorted(HOSTILE)  # JSON keeps them


def test_transplant_report_escapes_names(tmp_path):
    import keras
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
    model.save(tmp_path / "m.keras")
    src = tmp_path / "src.npz"
    np.savez(src, **{name: np.ones(2, np.float32) for name in HOSTILE})
    before = sha256(str(src))
    r = CliRunner().invoke(main, ["transplant", str(src), str(tmp_path / "m.keras"),
                                  "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = _printable_lines(r.output)
    unused = [line for line in lines if line.startswith("unused source tensors")]
    assert len(unused) == 1
    for escaped in HOSTILE.values():
        assert escaped in unused[0]
    assert not any(line.startswith(("error: forged", "ok: injected")) for line in lines)
    assert sha256(str(src)) == before and leftovers(str(tmp_path)) == []


def test_report_object_escapes_every_part():
    name = "head\x1b]0;title\x07/kernel"
    report = TransplantReport(
        source="src\rfile", target="t.keras",
        entries=(Entry(name, "copied", name, "exact", None, (2,), (2,)),
                 Entry("x" * 300, "mismatched", "y\n" * 3, None, None, (1,), (2,))),
        unused=("u\x1b[1m",), nonfinite=((name, 3),), warnings=("rule for z\x1b[0m",))
    lines = _printable_lines(str(report))
    assert lines[0] == "source: src\\rfile"
    assert lines[3].startswith("head\\x1b]0;title\\x07/kernel") and "<- head\\x1b]0" in lines[3]
    assert lines[4].startswith("x" * 39 + "\u2026" + "x" * 40 + "  mismatched")
    assert "left initialized: y\\ny\\ny\\n (1,) vs target (2,)" in lines[4]
    assert "unused source tensors (1): u\\x1b[1m" in lines
    assert "non-finite: head\\x1b]0;title\\x07/kernel has 3 NaN/Inf values" in lines
    assert "warning: rule for z\\x1b[0m" in lines
    assert report.to_dict()["entries"][0]["path"] == name  # data keeps the real name


def test_error_lines_escape_names(tmp_path):
    import keras
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")]).save_weights(
        tmp_path / "m.weights.h5")
    path = tmp_path / "link.weights.h5"
    shutil.copy(tmp_path / "m.weights.h5", path)
    with h5py.File(path, "r+") as f:
        f["layers/dense"]["x\x1b[31m\rfake"] = h5py.SoftLink("/layers")
    r = CliRunner().invoke(main, ["inspect", str(path)])
    assert r.exit_code == 2
    assert r.output == (f"error: {path}: /layers/dense/x\\x1b[31m\\rfake is a soft link; Keras "
                        "never writes them, refusing a crafted weights file\n")


# ------------------------------------------------------------------ --stats


def _no_nan(token):
    raise ValueError(f"invalid JSON constant {token}")


@pytest.fixture
def odd_values(tmp_path):
    arrays = {
        "bn/moving_variance": np.array([1.0, -0.5, 2.0], np.float32),
        "fc/kernel": np.zeros((3, 2), np.float32),
        "fc/bias": np.array([np.nan, np.nan], np.float32),
        "out/kernel": np.array([[1.0, np.inf], [0.5, -1.0]], np.float32),
        "out/bias": np.array([0.0, 1.0], np.float32),
    }
    path = tmp_path / "odd.npz"
    np.savez(path, **arrays)
    return str(path)


def test_stats_json_is_valid_and_flags_impossible_values(odd_values):
    r = CliRunner().invoke(main, ["inspect", odd_values, "--stats", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output, parse_constant=_no_nan)
    got = {v["path"]: v for v in data["variables"]}
    assert got["fc/bias"]["stats"] == {"mean": None, "std": None, "min": None, "max": None,
                                       "zeros": 0.0, "nonfinite": 2}
    assert got["bn/moving_variance"]["stats"]["min"] == -0.5
    assert got["out/kernel"]["stats"]["max"] == 1.0  # the finite values only
    assert {k: v["warnings"] for k, v in got.items()} == {
        "bn/moving_variance": ["negative variance (min -0.5)"],
        "fc/kernel": ["all zeros"],
        "fc/bias": ["2 non-finite values"],
        "out/kernel": ["1 non-finite value"],
        "out/bias": [],
    }
    r = CliRunner().invoke(main, ["inspect", odd_values, "--json"])
    assert all("warnings" not in v and "stats" not in v
               for v in json.loads(r.output)["variables"])


def test_stats_text_has_a_warnings_column(odd_values):
    r = CliRunner().invoke(main, ["inspect", odd_values, "--stats"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("stats "))
    assert lines[header].endswith("nonfinite  warnings")
    rows = {line.split()[0]: line for line in lines[header + 1:header + 6]}
    assert rows["bn/moving_variance"].endswith("0  negative variance (min -0.5)")
    assert rows["fc/kernel"].endswith("100.0%         0  all zeros")
    assert rows["fc/bias"].split()[1:5] == ["nan"] * 4
    assert rows["fc/bias"].endswith("2  2 non-finite values")
    assert rows["out/bias"].endswith("0")


def test_negative_moving_variance_in_a_keras_model(tmp_path):
    """A real BatchNormalization whose moving variance went negative (reference: the value
    set through Keras)."""
    import keras
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(name="bn")])
    model.get_layer("bn").moving_variance.assign(np.array([1.0, -2.0, 0.5], np.float32))
    model.save(tmp_path / "bn.keras")
    inv = surgery.inspect(str(tmp_path / "bn.keras"), stats=True)
    assert inv.warnings == {"bn/gamma": [], "bn/beta": [], "bn/moving_mean": [],
                            "bn/moving_variance": ["negative variance (min -2)"]}
    assert not any(isinstance(x, float) and math.isnan(x)
                   for v in inv.to_dict()["variables"] for x in v["stats"].values())
