"""Safe mode: refuse model configs that would run code from outside Keras.

A `.keras` or `.h5` config is data that Keras turns into objects. Safe mode (the default)
refuses, before Keras sees the file: Lambda layers (they carry bytecode or a function
reference), serialized Python functions, and any ``module`` from a package that Keras's own
safe mode would not import. Like Keras, it accepts the classes of installed Keras packages
(``keras_hub``, ``keras_cv``, ``keras_nlp``): safe mode is about code stored in the file, not
about registered classes. Classes the caller passes in `custom_objects`, classes registered
with Keras by code the caller imported, and the packages the caller names with `trust_modules`
(CLI: ``--import``) are allowed too: their code is the caller's. Pure Python, no TensorFlow.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Iterator, Mapping

from ..errors import UnsafeModelError

__all__ = ["check_config", "find_unsafe", "trust_modules", "forget_modules", "trusted_modules",
           "KERAS_PACKAGES", "package_of"]

_KERAS_MODULES = ("keras", "tf_keras")
# Packages whose classes Keras's own safe mode imports by the config's `module` name.
KERAS_PACKAGES = ("keras", "tf_keras", "keras_hub", "keras_cv", "keras_nlp")
_TRUSTED: dict[str, None] = {}  # modules the caller named (`trust_modules`), in order


def package_of(module: str) -> str:
    """The top-level package of a dotted module name (``keras_hub.src.models`` ->
    ``keras_hub``)."""
    return module.split(".", 1)[0]


def trust_modules(modules: Iterable[str]) -> None:
    """Accepts, from now on in this process, the classes of `modules`' packages in safe mode;
    `surgery.load_model` imports these modules before it loads a model, so that the classes
    they register with Keras are found (CLI: ``--import MODULE``)."""
    for module in modules:
        _TRUSTED.setdefault(module, None)


def forget_modules(modules: Iterable[str]) -> None:
    """Undoes `trust_modules` for `modules` (the CLI trusts ``--import`` modules for one
    command only)."""
    for module in modules:
        _TRUSTED.pop(module, None)


def trusted_modules() -> tuple[str, ...]:
    """The modules `trust_modules` was given, in order."""
    return tuple(_TRUSTED)


def _registered(name: Any) -> bool:
    """True when Keras is already imported and knows `name` (``package>Class``): the caller
    imported the code that registered it."""
    keras = sys.modules.get("keras")
    if not isinstance(name, str) or not name or keras is None:
        return False
    try:
        return keras.saving.get_registered_object(name) is not None
    except Exception:  # a half-imported Keras: not registered as far as we can tell
        return False
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
        trusted = KERAS_PACKAGES + tuple(package_of(m) for m in _TRUSTED)
        if isinstance(module, str) and package_of(module) not in trusted and \
                cls not in allowed and registered not in allowed and not _registered(registered):
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
