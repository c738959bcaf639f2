"""Safe mode: refuse model configs that would run code from outside Keras.

A `.keras` or `.h5` config is data that Keras turns into objects. Safe mode (the default)
refuses, before Keras sees the file: Lambda layers (they carry bytecode or a function
reference), serialized Python functions, and any ``module`` that is not part of Keras. Custom
classes the caller registers through `custom_objects` are allowed: their code is the caller's.
Pure Python, no TensorFlow.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from ..errors import UnsafeModelError

__all__ = ["check_config", "find_unsafe"]

_KERAS_MODULES = ("keras", "tf_keras")
_HINT = "load it with safe_mode=False (CLI: --unsafe) only if you trust the file"


def _walk(node: Any, owner: str) -> Iterator[tuple[Mapping, str]]:
    stack = [(node, owner)]
    while stack:
        item, name = stack.pop()
        if isinstance(item, Mapping):
            cfg = item.get("config")
            if isinstance(cfg, Mapping) and isinstance(cfg.get("name"), str) and \
                    "class_name" in item:
                name = cfg["name"]
            yield item, name
            stack.extend((v, name) for v in item.values() if isinstance(v, (Mapping, list)))
        elif isinstance(item, list):
            stack.extend((v, name) for v in item if isinstance(v, (Mapping, list)))


def find_unsafe(config: Any, custom_objects: Mapping | None = None) -> list[str]:
    """Every reason safe mode would refuse `config`, each naming the layer."""
    allowed = set(custom_objects or ())
    problems: list[str] = []
    lambdas: set[str] = set()
    for item, layer in _walk(config, "<model>"):
        cls = item.get("class_name")
        if cls == "Lambda":
            lambdas.add(layer)
            problems.append(f"layer {layer!r} is a Lambda layer, which runs code stored in the "
                            "file")
        elif cls in ("__lambda__", "function") and item.get("config") is not None and \
                layer not in lambdas:
            problems.append(f"layer {layer!r} holds a serialized Python function")
        module = item.get("module")
        registered = item.get("registered_name")
        if isinstance(module, str) and module.split(".")[0] not in _KERAS_MODULES and \
                cls not in allowed and registered not in allowed:
            problems.append(f"layer {layer!r} names module {module!r}, outside Keras")
    return problems


def check_config(config: Any, where: str, *, custom_objects: Mapping | None = None) -> None:
    """Raises `UnsafeModelError` for the first unsafe thing in `config`.

    Example:
    ```python
    check_config(archive.config, "model.keras")
    ```
    """
    problems = find_unsafe(config, custom_objects)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UnsafeModelError(f"{where}: {problems[0]}{more}; safe mode refuses it; {_HINT}")
