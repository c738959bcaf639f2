"""Selectors: pick layers or variables by canonical path (DESIGN.md §4.2).

A selector is a glob (``backbone/*``, ``*/bias``), a regex with ``re:`` (``re:block[34]_.*``),
a layer class with ``type:`` (``type:BatchNormalization``), or in Python a callable taking a
`VariableInfo`. Globs and regexes match a variable's own path or the path of any layer above
it (``trunk`` selects everything inside the nested model ``trunk``); ``type:`` matches the
class of any layer above it. A selector that matches nothing is a `SelectorError` that lists
the closest paths.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Callable, Iterable, Sequence, Union

from .entries import VariableInfo
from .errors import SelectorError

__all__ = ["Selector", "compile_selector", "select", "closest_paths"]

Selector = Union[str, Callable[[VariableInfo], bool]]


def closest_paths(wanted: str, paths: Iterable[str], n: int = 5) -> list[str]:
    """The `n` paths most like `wanted`, best first."""
    paths = list(dict.fromkeys(paths))
    close = difflib.get_close_matches(wanted, paths, n=n, cutoff=0.3)
    return close or paths[:n]


def compile_selector(selector: Selector) -> Callable[[VariableInfo], bool]:
    """Turns one selector into a predicate over `VariableInfo`.

    Raises:
        SelectorError: an empty selector or an invalid regex.
    """
    if callable(selector):
        return selector
    if not isinstance(selector, str) or not selector.strip():
        raise SelectorError(f"empty or invalid selector {selector!r}; use a glob like "
                            "'backbone/*', 're:<regex>' or 'type:<LayerClass>'")
    if selector.startswith("type:"):
        wanted = selector[5:]
        return lambda v: any(cls == wanted for _, cls in v.owners) or v.layer_class == wanted
    if selector.startswith("re:"):
        try:
            pattern = re.compile(selector[3:])
        except re.error as e:
            raise SelectorError(f"invalid regex in selector {selector!r}: {e}") from None
        match = pattern.fullmatch
    else:
        match = re.compile(fnmatch.translate(selector)).match

    def predicate(v: VariableInfo) -> bool:
        if match(v.path):
            return True
        return any(path and match(path) for path, _ in v.owners) or bool(v.layer and
                                                                          match(v.layer))

    return predicate


def select(variables: Sequence[VariableInfo], selectors: Iterable[Selector], *,
           what: str = "model") -> list[VariableInfo]:
    """The variables any of `selectors` matches, in the order of `variables`.

    Args:
        variables: the candidates (`WeightSource.variables()`, `Inventory.variables`).
        selectors: one or more selectors.
        what: what to name in an error (a file or model name).

    Raises:
        SelectorError: a selector matched nothing; the message lists the closest paths.

    Example:
    ```python
    picked = select(src.variables(), ["backbone/*", "type:BatchNormalization"])
    ```
    """
    chosen: set[int] = set()
    for selector in selectors:
        predicate = compile_selector(selector)
        hits = [i for i, v in enumerate(variables) if predicate(v)]
        if not hits:
            label = getattr(selector, "__name__", "callable") if callable(selector) else selector
            candidates = [v.path for v in variables] + [v.layer for v in variables if v.layer]
            key = label[5:] if isinstance(label, str) and label.startswith(("type:",)) else \
                str(label).removeprefix("re:")
            if isinstance(label, str) and label.startswith("type:"):
                classes = sorted({c for v in variables for _, c in v.owners if c})
                raise SelectorError(f"selector {label!r} matches nothing in {what}; layer "
                                    f"classes there: {', '.join(classes[:12]) or 'none'}")
            close = closest_paths(key, candidates)
            raise SelectorError(f"selector {label!r} matches nothing in {what}; closest paths: "
                                f"{', '.join(close) or 'none (no variables)'}")
        chosen.update(hits)
    return [v for i, v in enumerate(variables) if i in chosen]
