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
    "load_model": "modelio",
    "save_model": "modelio",
    "open_weights": "sources",
    "WeightSource": "sources",
    "inspect": "inventory",
    "Inventory": "inventory",
    "diff": "comparison",
    "WeightDiff": "comparison",
    "select": "selection",
    "transplant": "transplanting",
    "transplant_file": "transplanting",
    "TransplantReport": "report",
    "load_rules": "rules",
    "Rules": "rules",
    "verify": "verification",
    "freeze": "trainability",
    "unfreeze": "trainability",
    "FreezeReport": "trainability",
    "reinitialize": "initialization",
    "ReinitReport": "initialization",
    "replace_head": "heads",
    "add_head": "heads",
    "find_head": "heads",
    "enable_lora": "lora",
    "merge_lora": "lora",
    "learning_rates": "lrgroups",
    "finetune": "finetuning",
    "export_state_dict": "torch_export",
    "set_regularizer": "setup",
    "set_initializer": "setup",
    "set_constraint": "setup",
    "describe_setup": "setup",
    "variable_stats": "setup",
    "Plan": "plans",
    "PlanError": "plans",
    "hub_layer": "hub",
    "HubLayer": "hub",
    "export_model": "hub",
    "FinetuneResult": "finetuning",
    "LearningRates": "lrgroups",
    "Verification": "verification",
    "accuracy": "verification",
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
