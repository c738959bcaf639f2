"""`surgery.export_state_dict`: a Keras model's weights as a PyTorch-layout state dict.

Rules name the PyTorch keys: ``rename`` (regex on canonical paths, copied as they are) and
``export`` entries that convert (``linear_to_torch``, ``conv_to_torch``, ``lstm_to_torch``,
``gru_to_torch``, ``transpose``). Every variable must be covered (or skipped): the ones the
rules miss are an error that lists them. Written as `.safetensors` or `.npz`, atomically.

```toml
skip = ["bn/moving_*"]                      # leave out
[[rename]]
from = "^embed/embeddings$"
to = "embed.weight"
[[export]]
source = "head/kernel"
name = "linear_to_torch"
target = "head.weight"
[[export]]
source = "encoder"                          # a layer: kernel, recurrent_kernel, bias
name = "lstm_to_torch"
targets = { w_ih = "lstm.weight_ih_l0", w_hh = "lstm.weight_hh_l0", b_ih = "lstm.bias_ih_l0", b_hh = "lstm.bias_hh_l0" }
```
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from .. import reshape as R
from ..errors import OptionError
from .rules import RulesError, read_toml, rename_pattern
from ..selection import compile_selector
from ..io.sources import open_weights

__all__ = ["export_state_dict", "EXPORTERS"]

_SINGLE = {
    "linear_to_torch": lambda a, o: R.linear_to_torch(a),
    "conv_to_torch": lambda a, o: R.conv_to_torch(a, kind=o.get("kind", "conv")),
    "transpose": lambda a, o: np.transpose(a, o.get("axes")).copy(),
    "copy": lambda a, o: a,
}
_LAYER = {
    "lstm_to_torch": (R.lstm_to_torch, ("w_ih", "w_hh", "b_ih", "b_hh")),
    "gru_to_torch": (R.gru_to_torch, ("w_ih", "w_hh", "b_ih", "b_hh")),
}
EXPORTERS = tuple(sorted(list(_SINGLE) + list(_LAYER)))


def _load(rules: Any) -> Mapping:
    if isinstance(rules, Mapping):
        return rules
    return read_toml(os.fspath(rules), "export rules file")[0]  # regular, small, shallow


def export_state_dict(model: Any, path: str, rules: Any, *, overwrite: bool = False
                      ) -> dict[str, tuple]:
    """Writes `model`'s weights with PyTorch key names and layouts to `path`.

    Args:
        model: a live model or any source `open_weights` reads.
        path: `.safetensors` or `.npz`.
        rules: a TOML path or dict (module docstring).

    Returns:
        PyTorch key -> shape, for what was written.

    Raises:
        RulesError: unknown keys, unknown exporter, or variables the rules don't cover
            (listed).

    Example:
    ```python
    surgery.export_state_dict(model, "model.safetensors", "examples/rules/torch_lstm_export.toml")
    ```
    """
    from ..io.atomic import atomic_path

    spec = _load(rules)
    unknown = set(spec) - {"rename", "export", "skip"}
    if unknown:
        raise RulesError(f"unknown key '{sorted(unknown)[0]}' in export rules; they know rename, "
                         "export, skip")
    out: dict[str, np.ndarray] = {}
    with open_weights(model) as src:
        covered: set[str] = set()
        for sel in spec.get("skip", []):
            pred = compile_selector(sel)
            covered |= {v.path for v in src.variables() if pred(v)}
        for item in spec.get("export", []):
            name = item.get("name")
            source = item.get("source", "")
            if name in _SINGLE:
                if source not in src:
                    raise RulesError(f"export '{name}': no variable {source!r} in the model")
                out[item["target"]] = _SINGLE[name](src.read(source), item)
                covered.add(source)
            elif name in _LAYER:
                fn, roles = _LAYER[name]
                keys = [f"{source}/{v}" for v in ("kernel", "recurrent_kernel", "bias")]
                missing = [k for k in keys if k not in src]
                if missing:
                    raise RulesError(f"export '{name}': layer {source!r} has no "
                                     f"{', '.join(missing)}")
                arrays = fn(*(src.read(k) for k in keys))
                targets = item.get("targets", {})
                for role, array in zip(roles, arrays):
                    if role in targets:
                        out[targets[role]] = array
                covered.update(keys)
            else:
                raise OptionError(f"unknown exporter {name!r}; known: {', '.join(EXPORTERS)}")
        for r in spec.get("rename", []):
            pattern = rename_pattern(r["from"], "export rules")  # bounded-time subset
            for key in src:
                if key not in covered and pattern.search(key):
                    out[pattern.sub(r["to"], key)] = src.read(key)
                    covered.add(key)
        left = [k for k in src if k not in covered]
        if left:
            raise RulesError(f"the export rules don't cover {', '.join(left[:5])}"
                             f"{' ...' if len(left) > 5 else ''}; add a rename, an export or a "
                             "skip for each")
    with atomic_path(path, overwrite=overwrite) as tmp:
        if path.lower().endswith(".npz"):
            with open(tmp, "wb") as f:
                np.savez(f, **out)
        else:
            from ..io.safetensors import write_safetensors

            write_safetensors(out, tmp)
    return {k: tuple(v.shape) for k, v in out.items()}
