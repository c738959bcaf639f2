"""What trains in a `finetune` run: `set_trainable` (``--train`` / ``--freeze``, whole layers),
the layers LoRA adapters go on, and the refusal of ``--train`` and ``--freeze`` selectors that
reach the same variable. Moved from `train/finetune.py`, which re-exports `set_trainable`."""

from __future__ import annotations

from typing import Sequence

from ..errors import SelectorError
from ..io.sources import open_weights
from ..selection import select

__all__ = ["set_trainable"]


def set_trainable(model, train: Sequence[str], freeze: Sequence[str], bn: str, *,
                  lora: bool = False) -> None:
    """`train`: only these train (unfrozen first); `freeze`: these don't. Whole layers only.

    With `lora`, everything `train` does not name is frozen: LoRA adapters (enabled after
    this) and `train` are what trains.
    """
    from ..model.freezing import freeze as freeze_fn, unfreeze as unfreeze_fn

    if train:
        unfreeze_fn(model, *train, allow_partial=False)
        variables = open_weights(model).variables()
        if len(select(variables, train, what=model.name)) < len(variables):
            freeze_fn(model, except_=list(train), bn=bn, allow_partial=False)
    elif lora:
        if freeze:  # redundant with LoRA (everything is frozen), but must match something
            select(open_weights(model).variables(), freeze, what=model.name)
        freeze_fn(model, bn=bn, allow_partial=False)
    elif freeze:
        freeze_fn(model, *freeze, bn=bn, allow_partial=False)


def _lora_targets(model, lora_select: Sequence, train: Sequence) -> list:
    """The LoRA selectors: `lora_select`, or every supported layer `train` doesn't train."""
    from ..model.lora import supported

    src = open_weights(model)
    trained = {v.layer for v in select(src.variables(), train, what=model.name)} \
        if train else set()
    if lora_select:
        both = sorted(trained & {v.layer for v in select(src.variables(), lora_select,
                                                         what=model.name)})
        if both:
            raise SelectorError(f"--train and --lora-select overlap on {', '.join(both[:3])}; a "
                                "layer trains either fully or through LoRA adapters")
        return list(lora_select)
    layers = [p for p, layer in src.layer_objects.items()
              if type(layer).__name__ in supported() and p not in trained]
    if not layers:
        raise SelectorError(f"{model.name}: no layer left for LoRA ({', '.join(supported())}) "
                            "outside --train; name some with --lora-select")
    return [(lambda v, p=p: v.layer == p) for p in layers]


def _refuse_overlap(model, train: Sequence, freeze: Sequence) -> None:
    """Refuses `train` and `freeze` selectors that reach the same variable."""
    if not (train and freeze):
        return
    variables = open_weights(model).variables()
    a = {v.path for v in select(variables, train, what=model.name)}
    b = {v.path for v in select(variables, freeze, what=model.name)}
    both = [v.path for v in variables if v.path in a & b]
    if both:
        raise SelectorError(f"--train and --freeze overlap on {', '.join(both[:3])}"
                            f"{' ...' if len(both) > 3 else ''}; a variable can't do both")
