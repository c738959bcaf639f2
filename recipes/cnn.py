"""CNN transfer recipes. Each composes `surgery` functions in a visible order.

Example:
```python
from recipes import cnn
result = cnn.new_task(seed=0)          # the sample CNN on 4 shapes it never saw
print(result)
```
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

import surgery
from sample_models import tasks

from .base import SAMPLE_CNN, Echo, RecipeResult, quiet

__all__ = ["new_task", "scratch_baseline"]


def _default_task(per_class: int, seed: int):
    return tasks.shape_transfer_task(per_class, seed=seed)


def _trained_params(model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def new_task(model: Any = SAMPLE_CNN, data=None, test=None, *, classes: int | None = None,
             head_epochs: int = 15, tune_epochs: int = 10, lr: float = 3e-3,
             tune_lr: float = 3e-4, top: Sequence[str] = ("fc", "block3_*"),
             batch_size: int = 16, per_class: int = 20, seed: int = 0,
             output: str | None = None, echo: Echo = quiet) -> RecipeResult:
    """Pretrained CNN -> a new task, in Keras's two-phase transfer procedure.

    1. load the pretrained model; 2. a new head for the task's classes; 3. train the head
    with the backbone frozen; 4. unfreeze the top block (`top`) at a lower learning rate,
    BatchNorm kept in inference mode; 5. measure test accuracy.

    Args:
        model: the pretrained CNN (default: sample_models/cnn.keras).
        data, test: (x, y) arrays or data paths; default: the 4 shapes the sample CNN never
            saw, `per_class` labels each, and 600 test images.

    Example:
    ```python
    r = new_task(seed=0)
    print(r.metrics["accuracy"])
    ```
    """
    if data is None:
        data, test = _default_task(per_class, seed)
    classes = classes or int(np.max(np.asarray(data[1]))) + 1
    steps = []
    m = surgery.load_model(model)
    steps.append(f"load_model({model!r})")
    m = surgery.replace_head(m, classes, seed=seed)
    steps.append(f"replace_head(model, {classes})")
    echo(f"  head: {classes} classes; training the head, backbone frozen")
    r1 = surgery.finetune(m, data, train=["head"], epochs=head_epochs, batch_size=batch_size,
                          lr=lr, seed=seed, verbose=0)
    steps.append(f"finetune(train=['head'], epochs={head_epochs}, lr={lr})")
    echo(f"  unfreezing {', '.join(top)} at lr {tune_lr}, BatchNorm in inference mode")
    r2 = surgery.finetune(r1.model, data, train=["head", *top], bn="inference",
                          epochs=tune_epochs, batch_size=batch_size, lr=tune_lr, seed=seed,
                          verbose=0)
    steps.append(f"finetune(train=['head', {', '.join(repr(t) for t in top)}], "
                 f"bn='inference', epochs={tune_epochs}, lr={tune_lr})")
    metrics = {"trained_params": r2.epochs[-1]["trainable_params"],
               "total_params": r2.model.count_params()}
    if test is not None:
        metrics["accuracy"] = surgery.accuracy(r2.model, *test)
        steps.append("accuracy(model, x_test, y_test)")
    if output:
        surgery.save_model(r2.model, output, overwrite=True)
    return RecipeResult("cnn-new-task", r2.model, steps, metrics, output)


def scratch_baseline(architecture: Any, data, test=None, *, epochs: int, lr: float,
                     batch_size: int = 16, seed: int = 0, name: str = "scratch"
                     ) -> RecipeResult:
    """The same architecture, fresh weights, every layer trained, on the same data for the
    same epochs."""
    from surgery.rebuild import model_config, rebuild
    from surgery.tfimport import keras

    keras().utils.set_random_seed(seed)
    fresh = rebuild(architecture, model_config(architecture))
    r = surgery.finetune(fresh, data, train=["*"], epochs=epochs, batch_size=batch_size, lr=lr,
                         seed=seed, verbose=0)
    metrics = {"trained_params": r.epochs[-1]["trainable_params"],
               "total_params": r.model.count_params()}
    if test is not None:
        metrics["accuracy"] = surgery.accuracy(r.model, *test)
    return RecipeResult(name, r.model, ["rebuild (fresh weights)",
                                        f"finetune(train=['*'], epochs={epochs}, lr={lr})"],
                        metrics)
