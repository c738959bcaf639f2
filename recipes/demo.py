"""`surgery demo`: transfer against training from scratch, on the shipped sample models.

For each task (the CNN on 4 shapes it never saw, the LSTM encoder on motif families), with
20 labels per class, the transfer recipe and the same architecture trained from scratch (every
layer, fresh weights) get the same data and the same rules:

- **training**: every training run (the recipe's two phases, the scratch run) goes on until
  its training loss has not improved by `min_delta` for `patience` epochs (Keras's
  `EarlyStopping` on ``loss``), at most `max_epochs`, and keeps its best epoch's weights;
- **BatchNorm**: every BatchNorm layer that ran in training mode (it trained, so `fit` used
  batch statistics while its moving statistics trailed behind at momentum 0.99) gets its
  moving mean and variance recomputed on the training images afterwards
  (`cnn.recompute_bn_statistics`); frozen BatchNorm layers ran in inference mode and keep
  theirs. Without this, a CNN trained from scratch for a few hundred steps predicts one class
  for every image in inference mode.

Both arms are then measured in inference mode on their own training set and on 600 test
samples, over several seeds. The table shows test accuracy (mean, min..max), training
accuracy, epochs run, time and parameters trained.

Example:
```python
from surgery.recipes.demo import run_demo
summary = run_demo("demo-out", seeds=(0, 1, 2))
```
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

import numpy as np

import surgery
from surgery.model.verify import accuracy
from surgery.sample_models import tasks

from . import cnn, lstm
from .base import HERE, Echo, quiet

__all__ = ["run_demo", "TASKS", "format_table", "LABELS_PER_CLASS", "PATIENCE", "MIN_DELTA",
           "MAX_EPOCHS", "demo_outputs", "write_summary"]

SAMPLES = os.path.join(HERE, "sample_models")  # what the demo reads: never written

LABELS_PER_CLASS = 20
PATIENCE = 5        # epochs without an improvement of MIN_DELTA in the training loss
MIN_DELTA = 0.01
MAX_EPOCHS = 100    # cap of each training run
SCRATCH_LR = 3e-3   # the recipes' head learning rate

TASKS = {
    "cnn": ("CNN: 4 new shapes", cnn.new_task,
            lambda seed: tasks.shape_transfer_task(LABELS_PER_CLASS, seed=seed)),
    "lstm": ("LSTM: motif families", lstm.encoder_reuse,
             lambda seed: tasks.motif_transfer_task(LABELS_PER_CLASS, seed=seed)),
}


def _measure(model, data, test, epochs: list[int], max_epochs: int, seconds: float,
             trained_params: int, bn: list[str]) -> dict:
    return {"test_accuracy": accuracy(model, *test),
            "train_accuracy": accuracy(model, *data),
            "epochs": epochs, "hit_cap": any(e >= max_epochs for e in epochs),
            "seconds": seconds, "trained_params": trained_params, "bn_recomputed": bn}


def _model_path(out_dir: str, key: str, arm: str, seed: int) -> str:
    return os.path.join(out_dir, f"{key}_{arm}_seed{seed}.keras")


def demo_outputs(out_dir: str, seeds: Sequence[int], tasks_to_run: Sequence[str]) -> list[str]:
    """Every file the demo writes into `out_dir`: its models, then ``summary.json``."""
    return [_model_path(out_dir, key, arm, seed) for key in tasks_to_run for seed in seeds
            for arm in ("transfer", "scratch")] + [os.path.join(out_dir, "summary.json")]


def write_summary(summary: dict, out_dir: str, *, overwrite: bool = False) -> str:
    """Writes ``summary.json`` into `out_dir` atomically (replacing one only with `overwrite`;
    never through a link, a FIFO or into the sample models); returns its path."""
    from surgery.io.atomic import atomic_path

    path = os.path.join(out_dir, "summary.json")
    with atomic_path(path, inputs=[SAMPLES], overwrite=overwrite) as tmp:
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
    return path


def _run_task(key: str, seed: int, out_dir: str | None, echo: Echo, *, patience: int,
              min_delta: float, max_epochs: int, overwrite: bool = False) -> dict:
    label, recipe, make = TASKS[key]
    data, test = make(seed)
    stop = {"early_stop": patience, "min_delta": min_delta}
    t0 = time.perf_counter()
    transfer = recipe(data=data, seed=seed, head_epochs=max_epochs, tune_epochs=max_epochs,
                      echo=echo, **stop)
    transfer_bn = cnn.recompute_bn_statistics(transfer.model, data[0])
    t_transfer = time.perf_counter() - t0
    t0 = time.perf_counter()
    scratch = cnn.scratch_baseline(transfer.model, data, epochs=max_epochs, lr=SCRATCH_LR,
                                   seed=seed, **stop)
    scratch_bn = cnn.recompute_bn_statistics(scratch.model, data[0])
    t_scratch = time.perf_counter() - t0
    if out_dir:
        for arm, result in (("transfer", transfer), ("scratch", scratch)):
            surgery.save_model(result.model, _model_path(out_dir, key, arm, seed),
                               overwrite=overwrite, inputs=[SAMPLES])
    return {"task": key, "seed": seed,
            "transfer": _measure(transfer.model, data, test, transfer.metrics["epochs"],
                                 max_epochs, t_transfer, transfer.metrics["trained_params"],
                                 transfer_bn),
            "scratch": _measure(scratch.model, data, test, scratch.metrics["epochs"],
                                max_epochs, t_scratch, scratch.metrics["trained_params"],
                                scratch_bn)}


def _summarize(runs: list[dict]) -> dict:
    out = {}
    for key in TASKS:
        mine = [r for r in runs if r["task"] == key]
        if not mine:
            continue
        row = {"label": TASKS[key][0], "seeds": [r["seed"] for r in mine]}
        for arm in ("transfer", "scratch"):
            a = {}
            for what in ("test_accuracy", "train_accuracy"):
                values = [r[arm][what] for r in mine]
                a.update({f"{what}_mean": float(np.mean(values)),
                          f"{what}_min": float(min(values)),
                          f"{what}_max": float(max(values))})
            a.update({"epochs_mean": [float(np.mean(e)) for e in
                                      zip(*[r[arm]["epochs"] for r in mine])],
                      "hit_cap": any(r[arm]["hit_cap"] for r in mine),
                      "seconds_mean": float(np.mean([r[arm]["seconds"] for r in mine])),
                      "trained_params": mine[0][arm]["trained_params"],
                      "bn_recomputed": mine[0][arm]["bn_recomputed"]})
            row[arm] = a
        row["gain_points"] = 100 * (row["transfer"]["test_accuracy_mean"] -
                                    row["scratch"]["test_accuracy_mean"])
        out[key] = row
    return out


def _setup(seeds: Sequence[int], patience: int, min_delta: float, max_epochs: int) -> dict:
    return {"labels_per_class": LABELS_PER_CLASS, "test_samples": 600,
            "seeds": list(seeds), "patience": patience, "min_delta": min_delta,
            "max_epochs": max_epochs, "batch_size": 16,
            "transfer": "new head trained with the backbone frozen (lr 3e-3), then the top "
                        "unfrozen at lr 3e-4: each phase until converged",
            "scratch": f"same architecture, fresh weights, every layer trained at lr "
                       f"{SCRATCH_LR:g} until converged",
            "stopping": f"each training run stops once its training loss has not improved by "
                        f"{min_delta:g} for {patience} epochs (at most {max_epochs}); its best "
                        "epoch is kept",
            "batchnorm": "BatchNorm layers that trained (training mode) get their moving "
                         "statistics recomputed on the training images; frozen ones keep "
                         "theirs; accuracy measured in inference mode"}


def format_table(summary: dict) -> str:
    """The demo's table; given the whole summary (not only its ``tasks``), the setup too."""
    rows = summary.get("tasks", summary)
    lines = []
    setup = summary.get("setup")
    if isinstance(setup, dict):
        seeds = ", ".join(str(s) for s in setup["seeds"])
        lines += [f"setup: {setup['labels_per_class']} labels per class, "
                  f"{setup['test_samples']} test samples, seeds {seeds}, batch "
                  f"{setup['batch_size']}",
                  f"  training: every run until its training loss has not improved by "
                  f"{setup['min_delta']:g} for {setup['patience']} epochs",
                  f"            (at most {setup['max_epochs']} epochs); its best epoch kept",
                  "  BatchNorm: layers that trained get their moving statistics recomputed "
                  "on the",
                  "             training images; frozen ones keep theirs",
                  "  accuracy: inference mode, on the arm's own training set and on the test "
                  "set", ""]
    lines.append(f"{'task':<22} {'arm':<9} {'test acc (min..max)':<20} {'train acc':>9} "
                 f"{'epochs':>7} {'time':>6} {'params trained':>14}")
    for row in rows.values():
        for arm in ("transfer", "scratch"):
            a = row[arm]
            acc = (f"{a['test_accuracy_mean']:.3f} ({a['test_accuracy_min']:.2f}.."
                   f"{a['test_accuracy_max']:.2f})")
            epochs = "+".join(f"{e:.0f}" for e in a["epochs_mean"]) + \
                ("!" if a["hit_cap"] else "")
            lines.append(f"{row['label'] if arm == 'transfer' else '':<22} {arm:<9} "
                         f"{acc:<20} {a['train_accuracy_mean']:>9.3f} {epochs:>7} "
                         f"{a['seconds_mean']:>5.1f}s {a['trained_params']:>14,}")
        n = len(row["seeds"])
        lines.append(f"{'':<22} {'gain':<9} {row['gain_points']:+.1f} test accuracy points "
                     f"over {n} seed{'s' if n > 1 else ''}")
        bn = [f"{arm} {', '.join(row[arm]['bn_recomputed'])}" for arm in ("transfer", "scratch")
              if row[arm]["bn_recomputed"]]
        if bn:
            lines.append(f"  BatchNorm recomputed: {'; '.join(bn)}")
    if any(row[arm]["hit_cap"] for row in rows.values() for arm in ("transfer", "scratch")):
        lines.append("! a training run reached the epoch cap before its loss stopped improving")
    return "\n".join(lines)


def run_demo(out_dir: str | None = "demo-out", *, seeds: Sequence[int] = (0, 1, 2),
             tasks_to_run: Sequence[str] = ("cnn", "lstm"), patience: int = PATIENCE,
             min_delta: float = MIN_DELTA, max_epochs: int = MAX_EPOCHS,
             overwrite: bool = False, echo: Echo = quiet) -> dict:
    """Runs the demo; writes its models and ``summary.json`` into `out_dir` (none if None);
    returns the summary: per task and arm, test and training accuracy (mean/min/max), epochs
    run (per training phase), time, parameters trained, the BatchNorm layers recomputed, and
    the gain in test accuracy points; plus each run and the setup.

    Every file is checked before training starts: an existing one is replaced only with
    `overwrite`; links, special files and the sample models' folder are refused.
    """
    from surgery.errors import OptionError

    seeds, tasks_to_run = list(seeds), list(tasks_to_run)
    if not seeds:
        raise OptionError("the demo needs at least one seed (--seeds 1 or more)")
    unknown = [t for t in tasks_to_run if t not in TASKS]
    if unknown or not tasks_to_run:
        raise OptionError(f"unknown demo task {unknown[0] if unknown else '(none)'!r}; tasks: "
                          f"{', '.join(TASKS)}")
    if out_dir:
        from surgery.io.atomic import check_outputs

        if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
            from surgery.errors import OutputError
            raise OutputError(f"{out_dir}: is not a folder; give a folder for the demo's files",
                              path=out_dir)
        created = not os.path.lexists(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        try:
            check_outputs(demo_outputs(out_dir, seeds, tasks_to_run), inputs=[SAMPLES],
                          overwrite=overwrite)
        except Exception:
            if created:
                os.rmdir(out_dir)  # refused: leave no trace
            raise
    t0 = time.perf_counter()
    runs = []
    for key in tasks_to_run:
        for seed in seeds:
            echo(f"{TASKS[key][0]}, seed {seed}: transfer recipe, then the same architecture "
                 "from scratch, each until its training loss stops improving")
            run = _run_task(key, seed, out_dir, echo, patience=patience, min_delta=min_delta,
                            max_epochs=max_epochs, overwrite=overwrite)
            t, s = run["transfer"], run["scratch"]
            echo(f"  test accuracy: transfer {t['test_accuracy']:.3f}, scratch "
                 f"{s['test_accuracy']:.3f} (training set: {t['train_accuracy']:.3f}, "
                 f"{s['train_accuracy']:.3f}; epochs {'+'.join(map(str, t['epochs']))}, "
                 f"{'+'.join(map(str, s['epochs']))})")
            runs.append(run)
    summary = {"tasks": _summarize(runs), "runs": runs,
               "seconds": round(time.perf_counter() - t0, 1),
               "setup": _setup(seeds, patience, min_delta, max_epochs)}
    if out_dir:
        write_summary(summary, out_dir, overwrite=overwrite)
    return summary
