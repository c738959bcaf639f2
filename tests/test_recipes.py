"""Recipes and `surgery demo`: each recipe proves what it promises."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import main
from recipes.demo import run_demo


def test_demo_one_seed_transfer_beats_scratch(tmp_path):
    summary = run_demo(str(tmp_path), seeds=(0,))
    for key, row in summary["tasks"].items():
        assert row["gain_points"] >= 10, (key, row)
        assert row["transfer"]["trained_params"] < row["scratch"]["trained_params"] or \
            key == "lstm"
    saved = json.load(open(tmp_path / "summary.json"))
    assert set(saved["tasks"]) == {"cnn", "lstm"}
    assert (tmp_path / "cnn_transfer_seed0.keras").exists()


@pytest.mark.slow
def test_demo_three_seeds_transfer_beats_scratch_by_ten_points(tmp_path):
    summary = run_demo(str(tmp_path), seeds=(0, 1, 2))
    for key, row in summary["tasks"].items():
        assert row["gain_points"] >= 10, (key, row)
        assert len(row["seeds"]) == 3


@pytest.mark.slow
def test_demo_cli_prints_table(tmp_path):
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--seeds", "1", "--task",
                                  "lstm"])
    assert r.exit_code == 0, r.output
    assert "LSTM: motif families" in r.output and "gain" in r.output
