"""surgery: model surgery and transfer learning for TensorFlow/Keras.

Public names are imported lazily, so ``import surgery`` is cheap and never imports TensorFlow
by itself: reading files (`open_weights`, `inspect`, `diff`) needs only numpy and h5py.
Functions never share a name with a module of the package. The top level holds the verbs, what
they return and what they raise; helpers stay in their modules (`surgery.model.heads.find_head`,
`surgery.selection.select`, `surgery.io.describe.describe_setup`, `surgery.model.verify.accuracy`,
`surgery.entries.VariableInfo`).

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
    # verbs
    "load_model": "model.saving",
    "save_model": "model.saving",
    "open_weights": "io.sources",
    "inspect": "io.inventory",
    "diff": "io.diff",
    "transplant": "transfer.transplant",
    "transplant_file": "transfer.transplant",
    "load_rules": "transfer.rules",
    "export_state_dict": "transfer.export",
    "port_rules": "transfer.port",
    "verify": "model.verify",
    "freeze": "model.freezing",
    "unfreeze": "model.freezing",
    "reinitialize": "model.reinit",
    "replace_head": "model.heads",
    "add_head": "model.heads",
    "recompute_bn_statistics": "model.batchnorm",
    "enable_lora": "model.lora",
    "merge_lora": "model.lora",
    "set_regularizer": "model.parameters",
    "set_initializer": "model.parameters",
    "set_constraint": "model.parameters",
    "hub_layer": "model.hub",
    "export_model": "model.hub",
    "learning_rates": "train.learning_rates",
    "finetune": "train.finetune",
    "evaluate": "train.evaluate",
    "predict": "train.evaluate",
    "class_names": "io.classnames",
    "Plan": "plans.plan",
    # what they return
    "Outcome": "outcomes",
    "WeightSource": "io.sources",
    "Inventory": "io.inventory",
    "WeightDiff": "io.diff",
    "TransplantReport": "transfer.report",
    "ExportReport": "transfer.report",
    "PortPlan": "transfer.port",
    "PortPair": "transfer.port",
    "Rules": "transfer.rules",
    "Verification": "model.verify",
    "FreezeReport": "model.freezing",
    "ReinitReport": "model.reinit",
    "LoraReport": "model.lora",
    "EditResult": "results",
    "HeadReport": "model.heads",
    "AddHeadReport": "model.heads",
    "SetupReport": "model.parameters",
    "HubLayer": "model.hub",
    "LearningRates": "train.learning_rates",
    "FinetuneResult": "train.finetune",
    "Evaluation": "train.evaluate",
    "Predictions": "train.evaluate",
    # what they raise (every class of surgery/errors.py but RegexRefused, which never leaves
    # surgery.selection)
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
    "AmbiguousPort": "errors",
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
