"""`finetune`'s options: the range checks run before anything else (`_check_options`, also
used by the multi-worker loop; `MAX_COUNT`, the largest epoch count and batch size) and the
options gathered once for the training steps (`_Options`, with the JSON-ready record of the
run a checkpoint compares). Moved from `train/finetune.py`, which re-exports `MAX_COUNT`."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

from .copies import _policy_name
from ..errors import OptionError

__all__ = ["MAX_COUNT"]


def _real(name: str, value: Any, *, low: float, high: float | None = None,
          low_open: bool = True, high_open: bool = False, optional: bool = False) -> None:
    """Refuses a value that is not a finite real number in the given range."""
    if value is None and optional:
        return
    rng = (f"above {low:g}" if low_open else f"of at least {low:g}") if high is None else \
        f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and \
        math.isfinite(value) and (value > low if low_open else value >= low) and \
        (high is None or (value < high if high_open else value <= high))
    if not ok:
        raise OptionError(f"{name} must be a finite number {rng}, got {value!r}")


def _whole(name: str, value: Any, *, low: int, optional: bool = False,
           high: int | None = None) -> None:
    if value is None and optional:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise OptionError(f"{name} must be a whole number of at least {low}, got {value!r}")
    if high is not None and value > high:
        raise OptionError(f"{name} must be at most {high:,}, got {value:,}")


MAX_COUNT = 2**31 - 1  # the largest epoch count and batch size TensorFlow's int32 counters hold


def _check_options(o: dict) -> None:
    """Refuses non-finite, out-of-range and contradictory options before anything runs."""
    _whole("--epochs", o["epochs"], low=1, high=MAX_COUNT)
    _whole("--batch-size", o["batch_size"], low=1, high=MAX_COUNT)
    _whole("--seed", o["seed"], low=0)
    _whole("--early-stop", o["early_stop"], low=1, optional=True)
    _whole("--lora-rank", o["lora_rank"], low=1, optional=True)
    _real("--lr", o["lr"], low=0)
    _real("--layer-decay", o["layer_decay"], low=0, high=1, optional=True)
    _real("--l2sp", o["l2sp"], low=0, low_open=False, optional=True)
    _real("--l2sp-head", o["l2sp_head"], low=0, low_open=False, optional=True)
    _real("--val-split", o["val_split"], low=0, high=1, high_open=True, optional=True)
    for selector, mult in (o["lr_mult"] or {}).items():
        _real(f"--lr-mult {selector}", mult, low=0)
    if o["bn"] not in ("inference", "train"):
        raise OptionError(f"--bn must be inference or train, got {o['bn']!r}")
    if o["lora_select"] and not o["lora_rank"]:
        raise OptionError("--lora-select needs --lora-rank R (the adapters' rank)")
    if o["val"] is not None and o["val_split"] is not None:
        raise OptionError("--val and --val-split both give validation data; pass one")


def _names(selectors: Sequence) -> list:
    return [s if isinstance(s, str) else getattr(s, "__qualname__", repr(s))
            for s in selectors or ()]


@dataclass(frozen=True)
class _Options:
    """`finetune`'s training options, gathered once for the steps below."""

    train: Sequence = ()
    freeze: Sequence = ()
    bn: str = "inference"
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    lr_mult: dict | None = None
    layer_decay: float | None = None
    optimizer: str = "adam"
    loss: str = "auto"
    early_stop: int | None = None
    seed: int = 0
    strategy: str = "auto"
    lora_rank: int | None = None
    lora_select: Sequence = ()
    shuffle: bool = True
    mixed_precision: bool = False
    l2sp: float | None = None
    l2sp_head: float | None = None

    def settings(self, keras) -> dict:
        """What was asked, JSON-ready: the result's and the checkpoint's record of the run."""
        return {"train": _names(self.train), "freeze": _names(self.freeze), "bn": self.bn,
                "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "optimizer": self.optimizer, "loss": self.loss, "seed": self.seed,
                "shuffle": bool(self.shuffle), "strategy": self.strategy,
                "lr_mult": {str(k): v for k, v in (self.lr_mult or {}).items()},
                "layer_decay": self.layer_decay, "lora_rank": self.lora_rank,
                "lora_select": _names(self.lora_select), "early_stop": self.early_stop,
                "mixed_precision": _policy_name(keras) if self.mixed_precision else None,
                "l2sp": self.l2sp, "l2sp_head": self.l2sp_head}
