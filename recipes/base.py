"""What every recipe returns, and the defaults they share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_CNN = os.path.join(HERE, "sample_models", "cnn.keras")
SAMPLE_LSTM = os.path.join(HERE, "sample_models", "lstm.keras")

Echo = Callable[[str], None]


def quiet(_line: str) -> None:
    """The default `echo`: recipes report through their result, not by printing."""


@dataclass
class RecipeResult:
    """A recipe's outcome.

    Attributes:
        name: the recipe.
        model: the resulting model.
        steps: the library calls it made, in order, one line each.
        metrics: figures it measured (accuracy, max output difference, parameter counts...).
        output: where the model was written, if anywhere.
    """

    name: str
    model: Any
    steps: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    output: str | None = None

    def to_dict(self) -> dict:
        return {"recipe": self.name, "steps": self.steps, "metrics": self.metrics,
                "output": self.output}

    def __str__(self) -> str:
        lines = [f"recipe {self.name}:"] + [f"  {i}. {s}" for i, s in enumerate(self.steps, 1)]
        for key, value in self.metrics.items():
            shown = f"{value:.4g}" if isinstance(value, float) else value
            lines.append(f"  {key}: {shown}")
        if self.output:
            lines.append(f"  wrote {self.output}")
        return "\n".join(lines)


def finish(name: str, model: Any, steps: list[str], test=None, output: str | None = None,
           *, overwrite: bool = False, inputs=(), **metrics) -> RecipeResult:
    """The common end of a training recipe: parameter counts, test accuracy, optional save
    (never over an existing file unless `overwrite`, never over one of `inputs`)."""
    import numpy as np

    import surgery
    from surgery.model.verify import accuracy

    metrics = {"trained_params": int(sum(int(np.prod(v.shape))
                                         for v in model.trainable_weights)),
               "total_params": model.count_params(), **metrics}
    if test is not None:
        metrics["accuracy"] = accuracy(model, *test)
        steps.append("accuracy(model, x_test, y_test)")
    if output:
        surgery.save_model(model, output, overwrite=overwrite, inputs=inputs)
    return RecipeResult(name, model, steps, metrics, output)
