"""Recipes: the common CNN and LSTM transfers, end to end, each a short function composing
`surgery` functions in a visible order. `surgery recipe list` shows them; `surgery recipe run
NAME` runs one with the shipped sample models by default.

Example:
```python
from surgery.recipes import REGISTRY
result = REGISTRY["cnn-channels"].run(channels=1)
print(result)
```
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

__all__ = ["Recipe", "REGISTRY", "get_recipe"]


@dataclass(frozen=True)
class Recipe:
    name: str
    module: str
    function: str
    summary: str
    writes_folder: bool = False  # `output` names a folder the recipe fills (it checks each file)

    def load(self) -> Callable:
        import importlib

        return getattr(importlib.import_module(f"surgery.recipes.{self.module}"), self.function)

    def options(self) -> dict[str, object]:
        """Keyword options the recipe accepts, with their defaults."""
        sig = inspect.signature(self.load())
        return {n: p.default for n, p in sig.parameters.items()
                if p.kind == p.KEYWORD_ONLY and n not in ("echo", "overwrite")}

    def run(self, **kwargs):
        return self.load()(**kwargs)


REGISTRY = {r.name: r for r in [
    Recipe("cnn-new-task", "cnn", "new_task", "pretrained CNN -> new head, backbone frozen, "
           "then the top block unfrozen at a lower learning rate"),
    Recipe("cnn-channels", "cnn", "input_channels", "adapt a pretrained CNN to gray, "
           "multispectral or reordered (BGR) input channels"),
    Recipe("cnn-resolution", "cnn", "resolution", "run a CNN on larger inputs (global pooling, "
           "or Flatten+Dense made fully convolutional)"),
    Recipe("cnn-inflate", "cnn", "inflate_3d", "2D CNN -> 3D CNN for clips (I3D); a static "
           "clip gives the 2D prediction"),
    Recipe("cnn-grow", "cnn", "grow", "widen and deepen a trained CNN (Net2Net), then keep "
           "training"),
    Recipe("lstm-encoder", "lstm", "encoder_reuse", "pretrained Embedding+LSTM encoder -> a "
           "classifier for another task, frozen then unfrozen"),
    Recipe("lstm-vocab", "lstm", "vocabulary", "move the Embedding to a new vocabulary; known "
           "tokens keep their vectors"),
    Recipe("lstm-bidirectional", "lstm", "bidirectional", "unidirectional LSTM -> "
           "Bidirectional, forward direction carried, same outputs at the start"),
    Recipe("lstm-grow", "lstm", "grow", "more LSTM units (same function) and one more layer "
           "close to identity"),
    Recipe("lstm-torch", "lstm", "pytorch_roundtrip", "export to a PyTorch-layout "
           ".safetensors and import back, outputs equal"),
    Recipe("tour", "tour", "run_tour_recipe", "inspect, round-trip and diff the sample models",
           writes_folder=True),
]}


def get_recipe(name: str) -> Recipe:
    from surgery.errors import OptionError

    if name not in REGISTRY:
        raise OptionError(f"unknown recipe {name!r}; recipes: {', '.join(REGISTRY)} "
                          "(surgery recipe list)")
    return REGISTRY[name]
