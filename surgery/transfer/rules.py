"""Transplant rules: renames, skips, adapters and the matching mode, from TOML or Python.

```toml
match = "structural"        # "exact", "structural" (default) or "shape"
strict = false              # the CLI's --strict also turns it on
skip = ["head/*"]           # targets left initialized, sources ignored (selectors)

[[rename]]                  # regex renames of source keys, applied in order
from = "^backbone/"
to = "trunk/"

[[adapter]]                 # a named conversion for one target variable...
target = "block1_conv/kernel"
name = "adapt_in_channels"
mode = "sum"

[[adapter]]                 # ...or for one target layer from named source tensors
target = "encoder"
name = "lstm_from_torch"
sources = { w_ih = "rnn.weight_ih_l0", w_hh = "rnn.weight_hh_l0" }
```

The same structure as a Python dict is accepted; a list of ``(pattern, replacement)`` pairs is
a list of renames. Unknown keys and wrong types are errors naming the key and its line.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .adapters import get_adapter
from ..io.archive import read_small_file
from ..errors import OptionError, RulesError
from ..selection import SafePattern, regex_problem

__all__ = ["RulesError", "Rename", "AdapterRule", "Rules", "load_rules", "MATCH_MODES",
           "read_toml", "rename_pattern", "toml_depth", "MAX_RULES_BYTES", "MAX_TOML_DEPTH",
           "Where", "parse_skips", "parse_renames", "type_error"]

MATCH_MODES = ("exact", "structural", "shape")
_TOP = {"match", "strict", "skip", "rename", "adapter"}
_ADAPTER_KEYS = {"target", "name", "source", "sources", "lossy"}
MAX_RULES_BYTES = 1024 * 1024  # a rules file is a short text
MAX_TOML_DEPTH = 32  # arrays and inline tables inside each other
FILE_OPTIONS = ("old_vocab", "new_vocab")  # adapter options that may name a file to read


@dataclass(frozen=True)
class Rename:
    pattern: SafePattern  # re.Pattern's search/sub/fullmatch, refusing over-long names
    replacement: str

    @property
    def text(self) -> str:
        return f"{self.pattern.pattern!r} -> {self.replacement!r}"


@dataclass(frozen=True)
class AdapterRule:
    target: str
    name: str
    source: str | None = None
    sources: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    lossy: bool = False

    @property
    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class Rules:
    """Parsed, validated transplant rules."""

    renames: tuple[Rename, ...] = ()
    skips: tuple[str, ...] = ()
    adapters: tuple[AdapterRule, ...] = ()
    match: str = "structural"
    strict: bool = False
    origin: str = "rules"

    def files(self) -> tuple[str, ...]:
        """The files the rules name (an adapter's vocabulary files): inputs of the command."""
        return tuple(value for a in self.adapters for key, value in a.options
                     if key in FILE_OPTIONS and isinstance(value, str))

    def to_dict(self) -> dict:
        return {"match": self.match, "strict": self.strict, "skip": list(self.skips),
                "rename": [{"from": r.pattern.pattern, "to": r.replacement}
                           for r in self.renames],
                "adapter": [{"target": a.target, "name": a.name, "source": a.source,
                             "sources": dict(a.sources), "lossy": a.lossy, **dict(a.options)}
                            for a in self.adapters]}


class _Where:
    """Names a key and, for files, its line."""

    def __init__(self, origin: str, text: str | None):
        self.origin, self.lines = origin, (text.splitlines() if text else [])

    def __call__(self, key: str, value: Any = None) -> str:
        line = None
        pats = [re.compile(rf"^\s*\[\[?\s*{re.escape(key)}\s*\]\]?"),
                re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")]
        if isinstance(value, str) and len(value) <= 200:
            pats.insert(0, re.compile(rf"{re.escape(key)}\s*=\s*[\"']{re.escape(value)}"))
        for pat in pats:
            for i, text in enumerate(self.lines, 1):
                if pat.search(text):
                    line = i
                    break
            if line:
                break
        return f"{self.origin}:{line}" if line else self.origin

    def in_table(self, table: str, index: int, key: str | None = None) -> str:
        """The line of `key` inside the `index`-th (from 0) ``[[table]]`` of the file, or of
        that table's header; the origin alone when the file has no such table (a dict, an
        inline array)."""
        header = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
        starts = [i for i, text in enumerate(self.lines) if header.search(text)]
        if index >= len(starts):
            return self.origin
        start = starts[index]
        if key is not None:
            pat = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
            for i in range(start + 1, len(self.lines)):
                if self.lines[i].lstrip().startswith("["):
                    break
                if pat.search(self.lines[i]):
                    return f"{self.origin}:{i + 1}"
        return f"{self.origin}:{start + 1}"


Where = _Where


def _type_error(where, key, want, got) -> RulesError:
    return RulesError(f"{where}: '{key}' must be {want}, got {type(got).__name__} {got!r}")


type_error = _type_error


def _regex(text: str, where: str, key: str, *, search: bool = True) -> SafePattern:
    """Compiles a rule's regex from the subset that runs in bounded time (see
    `selection.regex_problem`); `search` for renames (``re.sub``), not for ``re:`` skips."""
    shown = text if len(text) <= 120 else text[:117] + "..."
    try:
        problem = regex_problem(text, search=search)
        compiled = re.compile(text) if problem is None else None
    except (re.error, OverflowError, RecursionError, ValueError) as e:
        raise RulesError(f"{where}: invalid regex in '{key}' {shown!r}: {e}") from None
    if problem is not None:
        raise RulesError(f"{where}: '{key}' pattern {shown!r} {problem}")
    return SafePattern(compiled, RulesError, f"{where}: rename {shown!r}")


def _parse(data: Mapping, origin: str, text: str | None) -> Rules:
    where = _Where(origin, text)
    if not isinstance(data, Mapping):
        raise RulesError(f"{origin}: rules must be a table of match/strict/skip/rename/adapter")
    for key in data:
        if key not in _TOP:
            raise RulesError(f"{where(key)}: unknown key '{key}'; rules know "
                             f"{', '.join(sorted(_TOP))}")
    match = data.get("match", "structural")
    if match not in MATCH_MODES:
        raise RulesError(f"{where('match')}: 'match' must be one of {', '.join(MATCH_MODES)}, "
                         f"got {match!r}")
    strict = data.get("strict", False)
    if not isinstance(strict, bool):
        raise _type_error(where("strict"), "strict", "true or false", strict)
    skips = parse_skips(data, where)
    renames = parse_renames(data, where)
    adapters = []
    raw = data.get("adapter", [])
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list):
        raise _type_error(where("adapter"), "adapter", "a list of tables", raw)
    for item in raw:
        adapters.append(_adapter(item, where))
    return Rules(tuple(renames), tuple(skips), tuple(adapters), match, strict, origin)


def parse_skips(data: Mapping, where: "_Where") -> list[str]:
    """The ``skip`` selectors of a rules table, checked (``re:`` ones for bounded time)."""
    skips = data.get("skip", [])
    if isinstance(skips, str):
        skips = [skips]
    if not isinstance(skips, list) or not all(isinstance(s, str) and s for s in skips):
        raise _type_error(where("skip"), "skip", "a list of selectors", skips)
    for s in skips:
        if s.startswith("re:"):
            _regex(s[3:], where("skip"), "skip", search=False)
    return skips


def parse_renames(data: Mapping, where: "_Where") -> list[Rename]:
    """The ``[[rename]]`` tables of a rules table (or a {from: to} table, or (from, to)
    pairs), each regex checked for bounded time."""
    renames = []
    raw = data.get("rename", [])
    if isinstance(raw, Mapping):
        raw = [{"from": k, "to": v} for k, v in raw.items()]
    if not isinstance(raw, list):
        raise _type_error(where("rename"), "rename", "a list of {from, to} tables", raw)
    for item in raw:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            item = {"from": item[0], "to": item[1]}
        if not isinstance(item, Mapping):
            raise _type_error(where("rename"), "rename", "a {from, to} table", item)
        extra = set(item) - {"from", "to"}
        if extra:
            key = sorted(extra)[0]
            raise RulesError(f"{where(key)}: unknown key '{key}' in a rename; a rename has "
                             "'from' and 'to'")
        for key in ("from", "to"):
            if not isinstance(item.get(key), str):
                raise _type_error(where("rename"), f"rename.{key}", "a string", item.get(key))
        renames.append(Rename(_regex(item["from"], where("from", item["from"]), "from"),
                              item["to"]))
    return renames


def _adapter(item: Any, where: _Where) -> AdapterRule:
    if not isinstance(item, Mapping):
        raise _type_error(where("adapter"), "adapter", "a table", item)
    for key in ("target", "name"):
        if not isinstance(item.get(key), str) or not item.get(key):
            raise _type_error(where("adapter"), f"adapter.{key}", "a string", item.get(key))
    at = where("name", item["name"])
    try:
        adapter = get_adapter(item["name"])
    except OptionError as e:
        raise RulesError(f"{at}: {e}") from None
    misplaced = adapter.misplaced_option(item)
    if misplaced:
        raise RulesError(f"{at}: {misplaced}")
    options = {k: v for k, v in item.items() if k not in _ADAPTER_KEYS}
    for key in options:
        if key not in adapter.options:
            known = ", ".join(sorted(adapter.options)) or "none"
            raise RulesError(f"{where(key)}: unknown key '{key}' for adapter '{adapter.name}'; "
                             f"its options: {known}")
    lossy = item.get("lossy", False)
    if not isinstance(lossy, bool):
        raise _type_error(at, "lossy", "true or false", lossy)
    source = item.get("source")
    if source is not None and not isinstance(source, str):
        raise _type_error(at, "source", "a string", source)
    sources = item.get("sources", {})
    if not isinstance(sources, Mapping) or not all(isinstance(v, str) for v in sources.values()):
        raise _type_error(at, "sources", "a table of role = source key", sources)
    if adapter.is_layer:
        if source is not None:
            raise RulesError(f"{at}: adapter '{adapter.name}' maps a layer; give "
                             f"sources = {{{', '.join(r + ' = ...' for r in adapter.roles)}}}")
        check_roles(at, f"adapter '{adapter.name}'", "sources", adapter.roles,
                    adapter.required, sources)
    elif sources:
        raise RulesError(f"{at}: adapter '{adapter.name}' maps one tensor; use source = "
                         "\"...\", not sources")
    return AdapterRule(item["target"], adapter.name, source, tuple(sorted(sources.items())),
                       tuple(sorted(options.items())), lossy)


def check_roles(at: str, who: str, key: str, roles: Sequence[str], required: int,
                given: Mapping[str, str]) -> None:
    """A layer rule's role table (an adapter's ``sources``, an exporter's ``targets``) names
    the first `required` of `roles` and nothing else."""
    missing = [r for r in roles[:required] if r not in given]
    unknown = [r for r in given if r not in roles]
    if missing or unknown:
        raise RulesError(f"{at}: {who} takes {key} {', '.join(roles)} (the first {required} "
                         f"required); missing {missing or 'none'}, unknown {unknown or 'none'}")


def load_rules(rules: Any = None) -> Rules:
    """Reads rules from a TOML path, a dict, a list of (pattern, replacement) renames, or
    returns `Rules` as is; None gives the default (structural matching, no rules).

    Raises:
        RulesError: unknown key, wrong type, invalid or catastrophic regex, unknown adapter.
        InputError: a rules path that doesn't exist.

    Example:
    ```python
    rules = load_rules({"rename": [{"from": "^backbone/", "to": "trunk/"}],
                        "skip": ["head/*"]})
    ```
    """
    if rules is None:
        return Rules()
    if isinstance(rules, Rules):
        return rules
    if isinstance(rules, (list, tuple)):
        return _parse({"rename": list(rules)}, "rules", None)
    if isinstance(rules, Mapping):
        return _parse(rules, "rules", None)
    if not isinstance(rules, (str, os.PathLike)):
        raise RulesError(f"rules must be a TOML file path, a dict or a list of renames, got "
                         f"{type(rules).__name__}")
    path = os.fspath(rules)
    data, text = read_toml(path)
    return _parse(data, path, text)


def read_toml(path: str, what: str = "rules file", error: type = None) -> tuple[dict, str]:
    """Reads a small TOML file safely: a regular file of at most `MAX_RULES_BYTES`, UTF-8,
    nested at most `MAX_TOML_DEPTH` deep. Returns (data, text).

    Raises:
        InputError: missing, not a regular file (a FIFO, a device), or too large.
        RulesError (or `error`): not UTF-8, nested too deeply, or invalid TOML.
    """
    error = error or RulesError
    raw = read_small_file(path, what, MAX_RULES_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text, so not a TOML {what}") from None
    depth = toml_depth(text)
    if depth > MAX_TOML_DEPTH:
        raise error(f"{path}: arrays or tables nested more than {MAX_TOML_DEPTH} deep; "
                         f"a {what} needs two levels")
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: invalid TOML ({e})") from None
    except RecursionError:  # pragma: no cover - toml_depth refuses such files first
        raise error(f"{path}: TOML nested too deeply") from None


def rename_pattern(text: str, where: str = "rules") -> SafePattern:
    """A rename's regex (`re.sub` semantics), checked like the ``[[rename]]`` of rules."""
    return _regex(text, where, "from")


# Possessive single-character loops keep the matcher's memory flat on long strings; an
# unterminated string runs to the end, so no scan fails and restarts.
_TOML_TOKENS = re.compile(
    r"'{3}.*?(?:'{3}|\Z)"  # multi-line literal string
    r'|"{3}[^"\\]*+(?:(?:\\.|"(?!""))[^"\\]*+)*+(?:"{3}|\Z)'  # multi-line basic string
    r"|'[^'\n]*+'?"  # literal string
    r'|"[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"?'  # basic string
    r"|#[^\n]*+"  # comment
    r"|[\[\]{}]", re.S)


def toml_depth(text: str) -> int:
    """How deep arrays and inline tables nest in a TOML text (strings and comments skipped),
    counted before parsing: tomllib recurses once per level."""
    depth = deepest = 0
    for m in _TOML_TOKENS.finditer(text):
        token = m.group()
        if token in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in ("]", "}"):
            depth = max(0, depth - 1)
    return deepest
