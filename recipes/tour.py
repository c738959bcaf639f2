"""The tour `surgery demo` runs: inspect, round-trip and diff the shipped sample models.

Each step is one library call, in the order a user would make them.

Example:
```python
from surgery.recipes.tour import run_tour
summary_path = run_tour("demo-out", overwrite=True)
```
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

import numpy as np

import surgery
from surgery.sample_models import tasks

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(HERE, "sample_models")


# The tour's files: its own summary name, so that a tour and the demo (summary.json, models
# named <task>_<arm>_seed<N>.keras) can share a folder without either replacing the other.
SUMMARY = "tour-summary.json"
OUTPUTS = ("cnn.keras", "lstm.keras", "keras2_mlp.keras", SUMMARY)


def _sample(name: str) -> str:
    return os.path.join(SAMPLES, name)


def tour_outputs(out_dir: str) -> list[str]:
    """Every file the tour writes into `out_dir`."""
    return [os.path.join(out_dir, n) for n in OUTPUTS]


def run_tour(out_dir: str, *, overwrite: bool = False,
             echo: Callable[[str], None] = lambda s: None) -> str:
    """Runs the tour, writing models and ``tour-summary.json`` into `out_dir`; returns its
    path.

    Every file it writes is checked before anything is written (never over an existing file
    unless `overwrite`, never a link or special file, never into the sample models' folder) and
    written atomically.
    """
    from surgery.io.atomic import atomic_path, check_outputs

    inputs = [SAMPLES]
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        from surgery.errors import OutputError
        raise OutputError(f"{out_dir}: is not a folder; give a folder for the tour's files",
                          path=out_dir)
    created = not os.path.lexists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        check_outputs(tour_outputs(out_dir), inputs=inputs, overwrite=overwrite)
    except Exception:
        if created:
            os.rmdir(out_dir)  # refused: leave no trace
        raise
    t0 = time.perf_counter()
    summary: dict = {"models": {}}

    echo("1. inspect the sample models (files are read without TensorFlow)")
    for name in ("cnn.keras", "lstm.keras", "keras2_mlp.h5", "hub_module"):
        inv = surgery.inspect(_sample(name))
        summary["models"][name] = {"format": inv.format, "params": inv.total_params,
                                   "variables": len(inv.variables)}
        echo(f"   {name:<15} {inv.format:<11} {len(inv.variables):>3} variables "
             f"{inv.total_params:>8,} params")

    echo("2. load, save atomically, and diff: a round trip is bit-identical")
    for name in ("cnn.keras", "lstm.keras"):
        model = surgery.load_model(_sample(name))
        out = surgery.save_model(model, os.path.join(out_dir, name), overwrite=overwrite,
                                 inputs=inputs)
        d = surgery.diff(_sample(name), out)
        summary["models"][name]["round_trip_identical"] = d.identical
        echo(f"   {name:<15} -> {out}: {'identical' if d.identical else 'DIFFERENT'}")

    echo("3. a Keras 2 .h5 model, rebuilt as Keras 3: same weights, same outputs")
    keras2 = surgery.load_model(_sample("keras2_mlp.h5"), legacy=True)
    keras3 = surgery.load_model(_sample("keras2_mlp.h5"))
    x, _ = tasks.make_blobs(64, seed=7)
    gap = float(np.abs(keras2.predict(x, verbose=0) - keras3.predict(x, verbose=0)).max())
    out = surgery.save_model(keras3, os.path.join(out_dir, "keras2_mlp.keras"),
                             overwrite=overwrite, inputs=inputs)
    same = surgery.diff(_sample("keras2_mlp.h5"), out).identical
    summary["models"]["keras2_mlp.h5"].update(converted=out, max_output_diff=gap,
                                              weights_identical=same)
    echo(f"   keras2_mlp.h5 -> {out}: weights {'identical' if same else 'DIFFERENT'}, "
         f"max output difference {gap:.2e}")

    echo("4. a TF Hub module's variables, read from its checkpoint without running it")
    with surgery.open_weights(_sample("hub_module")) as hub:
        for key in hub:
            echo(f"   {key:<10} {str(hub.shape(key)):<9} mean {float(hub[key].mean()):+.4f}")

    summary["seconds"] = round(time.perf_counter() - t0, 1)
    path = os.path.join(out_dir, SUMMARY)
    with atomic_path(path, inputs=inputs, overwrite=overwrite) as tmp:
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
    return path


def run_tour_recipe(*, output: str | None = "demo-out", seed: int = 0,
                    overwrite: bool = False):
    """The tour as a recipe: inspect, round-trip and diff the sample models into the folder
    `output` (its files are replaced only with `overwrite`)."""
    from .base import RecipeResult

    path = run_tour(output or "demo-out", overwrite=overwrite)
    with open(path) as f:
        summary = json.load(f)
    return RecipeResult("tour", None, ["inspect each sample model", "load_model + save_model + "
                                       "diff", "Keras 2 .h5 -> Keras 3", "read the Hub module's "
                                       "variables"], {"models": len(summary["models"])}, path)
