"""The sample-data command: the sample tasks' data as files to train and evaluate on."""

from __future__ import annotations

import click

from .app import main
from .options import json_option, overwrite_option, print_json


@main.command("sample-data")
@click.argument("task", type=click.Choice(["shapes", "new-shapes", "motifs", "motif-families",
                                           "blobs"]))
@click.option("-o", "--output", required=True, metavar="OUT.npz|OUT.csv|FOLDER",
              help=".npz (x, y, class_names); .csv (blobs); a folder of PNGs per class "
              "(shapes, new-shapes).")
@click.option("--n", "n", default=1000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Samples drawn.")
@click.option("--per-class", type=click.IntRange(1, 1_000_000), metavar="K",
              help="Keep the first K samples of each class (a few-label training set).")
@click.option("--seed", default=0, show_default=True, help="Same seed, same samples.")
@click.option("--channels", default=3, show_default=True, type=click.Choice(["1", "3"]),
              help="1: gray images (the mean of RGB), for a 1-channel model.")
@overwrite_option("Replace an existing OUT file.")
@json_option("Print what was written as JSON only.")
def sample_data_cmd(task, output, n, per_class, seed, channels, overwrite, as_json) -> int:
    """Write a sample task's data: the sample models' own tasks, with class names.

    shapes: the sample CNN's 8 shapes; new-shapes: 4 shapes it never saw (the transfer task);
    motifs: the sample LSTM's 6 motifs; motif-families: its transfer task; blobs: 16-d
    vectors. Numpy only, generated here: nothing is downloaded.

    \b
    Examples:
      surgery sample-data new-shapes --per-class 20 --n 400 -o new_train/
      surgery sample-data new-shapes --n 600 --seed 999 -o new_test.npz
      surgery sample-data blobs -o blobs.csv
    """
    from surgery.sample_models.datasets import write_task

    info = write_task(task, output, n=n, seed=seed, per_class=per_class,
                      channels=int(channels), overwrite=overwrite)
    if as_json:
        print_json(info)
        return 0
    counts = ", ".join(f"{c} {k}" for c, k in info["per_class"].items())
    click.echo(f"wrote {output} ({info['format']}): {info['samples']} samples of "
               f"{tuple(info['sample_shape'])}; classes: {counts}")
    return 0
