"""surgery: model surgery and transfer learning for TensorFlow/Keras.

Public names are imported lazily, so ``import surgery`` is cheap and never imports TensorFlow
by itself: reading files (`open_weights`, `inspect`, `diff`) needs only numpy and h5py.
Functions never share a name with a module of the package.

Example:
```python
import surgery
inv = surgery.inspect("sample_models/cnn.keras")
print(inv)
```
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "load_model": "model.saving",
    "save_model": "model.saving",
    "open_weights": "io.sources",
    "WeightSource": "io.sources",
    "inspect": "io.inventory",
    "Inventory": "io.inventory",
    "diff": "io.diff",
    "WeightDiff": "io.diff",
    "select": "selection",
    "transplant": "transfer.transplant",
    "transplant_file": "transfer.transplant",
    "TransplantReport": "transfer.report",
    "load_rules": "transfer.rules",
    "Rules": "transfer.rules",
    "verify": "model.verify",
    "freeze": "model.freezing",
    "unfreeze": "model.freezing",
    "FreezeReport": "model.freezing",
    "reinitialize": "model.reinit",
    "ReinitReport": "model.reinit",
    "replace_head": "model.heads",
    "recompute_bn_statistics": "model.batchnorm",
    "add_head": "model.heads",
    "find_head": "model.heads",
    "enable_lora": "model.lora",
    "merge_lora": "model.lora",
    "learning_rates": "train.learning_rates",
    "finetune": "train.finetune",
    "export_state_dict": "transfer.export",
    "set_regularizer": "model.parameters",
    "set_initializer": "model.parameters",
    "set_constraint": "model.parameters",
    "describe_setup": "io.describe",
    "variable_stats": "io.describe",
    "Plan": "plans.plan",
    "hub_layer": "model.hub",
    "HubLayer": "model.hub",
    "export_model": "model.hub",
    "FinetuneResult": "train.finetune",
    "LearningRates": "train.learning_rates",
    "Verification": "model.verify",
    "accuracy": "model.verify",
    "VariableInfo": "entries",
    "LayerInfo": "entries",
    "SurgeryError": "errors",
    "InputError": "errors",
    "FormatError": "errors",
    "UnsafeModelError": "errors",
    "SelectorError": "errors",
    "ShapeError": "errors",
    "OutputError": "errors",
    "OptionError": "errors",
    "CheckFailed": "errors",
    "OutputExists": "errors",
    "UnsupportedModelError": "errors",
    "EditError": "errors",
    "PartialLayerError": "errors",
    "RulesError": "errors",
    "PlanError": "errors",
    "Interrupted": "errors",
}

# Subpackages reachable as attributes after a plain ``import surgery`` (surgery.edit.widen).
_SUBMODULES = ("edit", "reshape", "errors")

__all__ = sorted(_PUBLIC) + ["__version__", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = value
        return value
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'surgery' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__ (and can't hit a module)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC) | set(_SUBMODULES))
