"""`surgery sample-data`: the sample tasks' data as files, compared with the generators in
`sample_models.tasks` and decoded by an independent PNG reader (Pillow)."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from surgery.sample_models import tasks


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_npz_holds_the_generator_samples_and_class_names(tmp_path):
    out = tmp_path / "test.npz"
    r = run("sample-data", "new-shapes", "--n", 40, "--seed", 7, "-o", out)
    assert r.exit_code == 0, r.output
    x, y = tasks.make_shapes(40, tasks.TRANSFER_SHAPES, seed=7)
    counts = ", ".join(f"{c} {int((y == i).sum())}" for i, c in enumerate(tasks.TRANSFER_SHAPES))
    assert r.output == f"wrote {out} (npz): 40 samples of (32, 32, 3); classes: {counts}\n"
    with np.load(out) as f:
        np.testing.assert_array_equal(f["x"], x)
        np.testing.assert_array_equal(f["y"], y)
        assert list(f["class_names"]) == list(tasks.TRANSFER_SHAPES)


def test_image_folder_decodes_to_the_generator_pixels(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    out = tmp_path / "train"
    r = run("sample-data", "new-shapes", "--n", 60, "--per-class", 3, "-o", out)
    assert r.exit_code == 0, r.output
    x, y = tasks.balanced(*tasks.make_shapes(60, tasks.TRANSFER_SHAPES, seed=0), 3)
    assert sorted(os.listdir(out)) == sorted(tasks.TRANSFER_SHAPES)
    files = sorted((c, name) for c in os.listdir(out) for name in os.listdir(out / c))
    assert len(files) == 12
    for i, (image, label) in enumerate(zip(x, y)):
        name = tasks.TRANSFER_SHAPES[label]
        pixels = np.asarray(Image.open(out / name / f"{i:05d}.png"), np.float32) / 255.0
        np.testing.assert_allclose(pixels, image, atol=0.5 / 255 + 1e-6)


def test_gray_images_and_csv_tables(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    r = run("sample-data", "shapes", "--n", 2, "--channels", 1, "-o", tmp_path / "gray")
    assert r.exit_code == 0, r.output
    x, y = tasks.make_shapes(2, tasks.PRETRAIN_SHAPES, seed=0)
    png = Image.open(tmp_path / "gray" / tasks.PRETRAIN_SHAPES[y[0]] / "00000.png")
    assert png.mode == "L"
    np.testing.assert_allclose(np.asarray(png, np.float32) / 255.0, x[0].mean(axis=-1),
                               atol=0.5 / 255 + 1e-6)
    r = run("sample-data", "blobs", "--n", 5, "--seed", 3, "-o", tmp_path / "b.csv")
    assert r.exit_code == 0, r.output
    xb, yb = tasks.make_blobs(5, seed=3)
    rows = list(csv.DictReader(open(tmp_path / "b.csv")))
    assert [row["label"] for row in rows] == [f"blob-{i}" for i in yb]
    np.testing.assert_allclose([[float(row[f"f{j}"]) for j in range(16)] for row in rows], xb,
                               rtol=1e-5, atol=1e-6)


def test_bad_requests_are_one_line_and_write_nothing(tmp_path):
    cases = [
        (["motifs", "-o", tmp_path / "m.csv"],
         f"error: {tmp_path / 'm.csv'}: task motifs is not a table; write it as .npz\n"),
        (["blobs", "-o", tmp_path / "b"],
         f"error: {tmp_path / 'b'}: write task blobs as .npz or .csv\n"),
        (["motifs", "--channels", "1", "-o", tmp_path / "m.npz"],
         "error: --channels 1: only the image tasks (shapes, new-shapes) take --channels, and "
         "only 1 or 3\n"),
    ]
    for args, line in cases:
        r = run("sample-data", *args)
        assert (r.exit_code, r.output) == (2, line)
    assert os.listdir(tmp_path) == []
    (tmp_path / "d.npz").write_bytes(b"mine")
    r = run("sample-data", "blobs", "-o", tmp_path / "d.npz")
    assert r.exit_code == 2 and "already exists" in r.output
    assert (tmp_path / "d.npz").read_bytes() == b"mine"
