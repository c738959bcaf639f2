"""LSTM transfer recipes. Each composes `surgery` functions in a visible order.

Example:
```python
from recipes import lstm
result = lstm.encoder_reuse(seed=0)    # the sample LSTM's encoder on motif families
print(result)
```
"""

from __future__ import annotations

from typing import Any

import numpy as np

import surgery
from sample_models import tasks

from .base import SAMPLE_LSTM, Echo, RecipeResult, quiet

__all__ = ["encoder_reuse"]


def encoder_reuse(model: Any = SAMPLE_LSTM, data=None, test=None, *,
                  classes: int | None = None, head_epochs: int = 15, tune_epochs: int = 10,
                  lr: float = 3e-3, tune_lr: float = 3e-4, batch_size: int = 16,
                  per_class: int = 20, seed: int = 0, output: str | None = None,
                  echo: Echo = quiet) -> RecipeResult:
    """The pretrained Embedding + LSTM encoder -> a classifier for another task.

    1. load the pretrained model; 2. a new head; 3. train the head, encoder frozen; 4. unfreeze
    everything at a lower learning rate; 5. measure test accuracy.

    Args:
        model: the pretrained sequence model (default: sample_models/lstm.keras).
        data, test: (x, y) arrays or data paths; default: motif families (3 classes, each two
            pretraining motifs, noisier sequences), `per_class` labels each.

    Example:
    ```python
    r = encoder_reuse(seed=0)
    print(r.metrics["accuracy"])
    ```
    """
    if data is None:
        data, test = tasks.motif_transfer_task(per_class, seed=seed)
    classes = classes or int(np.max(np.asarray(data[1]))) + 1
    steps = []
    m = surgery.load_model(model)
    steps.append(f"load_model({model!r})")
    m = surgery.replace_head(m, classes, seed=seed)
    steps.append(f"replace_head(model, {classes})")
    echo("  training the new head, encoder frozen")
    r1 = surgery.finetune(m, data, train=["head"], epochs=head_epochs, batch_size=batch_size,
                          lr=lr, seed=seed, verbose=0)
    steps.append(f"finetune(train=['head'], epochs={head_epochs}, lr={lr})")
    echo(f"  unfreezing the encoder at lr {tune_lr}")
    r2 = surgery.finetune(r1.model, data, train=["head", "encoder", "embed"],
                          epochs=tune_epochs, batch_size=batch_size, lr=tune_lr, seed=seed,
                          verbose=0)
    steps.append(f"finetune(train=['head', 'encoder', 'embed'], epochs={tune_epochs}, "
                 f"lr={tune_lr})")
    metrics = {"trained_params": r2.epochs[-1]["trainable_params"],
               "total_params": r2.model.count_params()}
    if test is not None:
        metrics["accuracy"] = surgery.accuracy(r2.model, *test)
        steps.append("accuracy(model, x_test, y_test)")
    if output:
        surgery.save_model(r2.model, output, overwrite=True)
    return RecipeResult("lstm-encoder", r2.model, steps, metrics, output)
