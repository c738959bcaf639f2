"""Files a fine-tuning run writes besides the model: metrics JSON, curves PNG, LoRA adapters.

Each is written atomically (`atomic_path`). The plot needs matplotlib, an optional extra
(``pip install 'surgery[plot]'``); without it `--plot` fails before training with a clear
message.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .atomic import atomic_path
from .errors import SurgeryError

__all__ = ["write_metrics", "write_plot", "write_adapters", "require_matplotlib"]


def require_matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SurgeryError("--plot needs matplotlib, which is not installed; run "
                           "pip install 'surgery[plot]' (or drop --plot)") from None
    return plt


def write_metrics(result: Any, path: str, *, overwrite: bool = False) -> str:
    """Per-epoch metrics (loss, metrics, seconds, trainable/frozen params) as JSON."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "w") as f:
            json.dump(result.to_dict(), f, indent=2, default=str)
            f.write("\n")
    return path


def write_plot(result: Any, path: str, *, overwrite: bool = False) -> str:
    """Training curves: one panel for the losses, one for each other metric."""
    plt = require_matplotlib()
    history = result.history
    keys = [k for k in history if not k.startswith("val_") and k not in (
        "seconds", "trainable_params", "frozen_params")]
    epochs = [e["epoch"] for e in result.epochs]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(5 * max(1, len(keys)), 3.5))
    axes = np.atleast_1d(axes)
    for ax, key in zip(axes, keys):
        ax.plot(epochs, history[key], marker="o", label=key)
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], marker="o", label=f"val_{key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path


def write_adapters(adapters: dict, path: str, *, overwrite: bool = False) -> str:
    """LoRA adapter weights (``<layer>/lora_kernel_a|b``) as an .npz."""
    if not adapters:
        raise SurgeryError("--save-adapters needs --lora-rank: there are no adapters to save")
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **adapters)
    return path
