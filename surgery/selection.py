"""Selectors: pick layers or variables by canonical path (DESIGN.md §4.2).

A selector is a glob (``backbone/*``, ``*/bias``), a regex with ``re:`` (``re:block[34]_.*``),
a layer class with ``type:`` (``type:BatchNormalization``), or in Python a callable taking a
`VariableInfo`. Globs and regexes match a variable's own path or the path of any layer above
it (``trunk`` selects everything inside the nested model ``trunk``); ``type:`` matches the
class of any layer above it. A selector that matches nothing is a `SelectorError` that lists
the closest paths.

Regexes (``re:`` selectors and the renames of transplant rules) run on names read from files,
so they are held to a subset that Python's backtracking matcher runs in bounded time
(`regex_problem`, checked on the tree Python's own parser builds, before compiling): no nested
repetition (``(a+)+``, ``(.*a){25}``), no repeated alternatives, no backreferences or
conditionals, counted repetition up to `MAX_COUNT`, and matching work that grows at most as
n**2 with the length n of a name (each repetition that can give characters back to what
follows it, and searching rather than anchoring with ``^``, multiplies it by n), times a few
alternatives that start alike. Names longer than `MAX_KEY` characters are not matched against
a regex, and one pattern stops after `MAX_SECONDS` of matching in all: both are errors that
say so.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import re._parser as _sre_parse  # Python's own parser: the checked tree is what re compiles
import time
from typing import Callable, Iterable, Sequence, Union

from .entries import VariableInfo
from .errors import RegexRefused as _Refused, SelectorError, SurgeryError

__all__ = ["Selector", "compile_selector", "select", "closest_paths", "regex_problem",
           "SafePattern", "MAX_KEY", "MAX_COUNT", "MAX_PATTERN", "MAX_SECONDS"]

Selector = Union[str, Callable[[VariableInfo], bool]]

MAX_PATTERN = 1000  # characters in one regex
MAX_COUNT = 1000  # the largest n in a{n} / a{m,n}
MAX_KEY = 512  # the longest name a regex is matched against
MAX_SECONDS = 10.0  # total matching time one pattern may take
_MAX_NESTING = 50  # groups inside groups
_MAX_DEGREE = 2  # work grows at most as n**2 with the length n of a name...
_MAX_CHOICES = 256  # ...times the product of the sizes of ambiguous alternatives...
_MAX_WORK = 2 ** 20  # ...bounded by this for a name of MAX_KEY characters
_REPEATS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
_NESTED = "nests repetition inside repetition, which can take exponential time; simplify it"

# ---------------------------------------------------------------- the regex subset
# A character class is (mask of the ASCII characters it matches, whether it may match any
# non-ASCII character): exact for ASCII, conservative beyond it.
_FULL = (1 << 128) - 1
_EMPTY = (0, False)
_ANY = (_FULL, True)


def _ascii_mask(pattern: str) -> int:
    rx = re.compile(pattern)
    return sum(1 << i for i in range(128) if rx.match(chr(i)))


_CATEGORIES = {name: (_ascii_mask(rx), True) for name, rx in (
    ("CATEGORY_DIGIT", r"\d"), ("CATEGORY_NOT_DIGIT", r"\D"), ("CATEGORY_SPACE", r"\s"),
    ("CATEGORY_NOT_SPACE", r"\S"), ("CATEGORY_WORD", r"\w"), ("CATEGORY_NOT_WORD", r"\W"))}


def _union(a: tuple, b: tuple) -> tuple:
    return a[0] | b[0], a[1] or b[1]


def _overlap(a: tuple, b: tuple) -> bool:
    return bool(a[0] & b[0]) or (a[1] and b[1])


def _code_set(lo: int, hi: int, icase: bool) -> tuple:
    mask = 0
    for code in range(lo, min(hi, 127) + 1):
        mask |= 1 << code
        if icase:
            for variant in (chr(code).lower(), chr(code).upper()):
                if ord(variant) < 128:
                    mask |= 1 << ord(variant)
    # case-insensitive letters also match a few non-ASCII letters (the Kelvin sign)
    return mask, hi >= 128 or (icase and any(chr(c).isalpha() for c in range(lo, min(hi, 127) + 1)))


def _char_class(op, av, icase: bool) -> tuple | None:
    """The class of a one-character matcher; None for anything else."""
    name = op.name
    if name == "LITERAL":
        return _code_set(av, av, icase)
    if name == "NOT_LITERAL":
        return _FULL & ~_code_set(av, av, icase)[0], True
    if name == "ANY":
        return _ANY
    if name != "IN":
        return None
    items = list(av)
    negate = bool(items) and items[0][0].name == "NEGATE"
    got = _EMPTY
    for item_op, item_av in items[1 if negate else 0:]:
        kind = item_op.name
        if kind == "LITERAL":
            got = _union(got, _code_set(item_av, item_av, icase))
        elif kind == "RANGE":
            got = _union(got, _code_set(item_av[0], item_av[1], icase))
        elif kind == "CATEGORY":
            got = _union(got, _CATEGORIES.get(item_av.name, _ANY))
        else:
            got = _ANY
    return (_FULL & ~got[0], True) if negate else got


class _Checker:
    """Walks the parsed regex once and estimates how backtracking work grows with the length
    n of a name: `degree` is the power of n (each repetition that can give back characters
    to what follows it multiplies the positions the rest is tried at by n; a search tries n
    starts; a repetition re-run at those positions scans up to n characters), `choices` the
    product of the sizes of alternatives that can start alike."""

    def __init__(self, icase: bool):
        self.icase = icase
        self.ambiguous = 0  # repetitions that can take what follows them
        self.rescans = False  # a repetition re-run at many positions of a given-back run
        self.choices = 1

    # first characters ----------------------------------------------------------------
    def first(self, op, av) -> tuple[tuple, bool]:
        """(class of the first character `op` may consume, whether it can match empty)."""
        cls = _char_class(op, av, self.icase)
        if cls is not None:
            return cls, False
        name = op.name
        if name in ("AT", "ASSERT", "ASSERT_NOT"):
            return _EMPTY, True
        if name == "SUBPATTERN":
            return self.seq_first(av[3])
        if name == "ATOMIC_GROUP":
            return self.seq_first(av)
        if name in _REPEATS:
            cls, empty = self.seq_first(av[2])
            return cls, empty or av[0] == 0
        if name == "BRANCH":
            got, empty = _EMPTY, False
            for branch in av[1]:
                cls, e = self.seq_first(branch)
                got, empty = _union(got, cls), empty or e
            return got, empty
        return _ANY, True

    def seq_first(self, items) -> tuple[tuple, bool]:
        got = _EMPTY
        for op, av in items:
            cls, empty = self.first(op, av)
            got = _union(got, cls)
            if not empty:
                return got, False
        return got, True

    # the walk ------------------------------------------------------------------------
    # `shadow`: the characters an earlier repetition (or the search for a start) may give
    # back, so that what comes next is tried at many positions of one run of them.
    def seq(self, items, follow: tuple, shadow: tuple, depth: int, look: bool = False,
            end: bool = False) -> tuple:
        """Walks a sequence; `end`: the end of a searched pattern follows it, so a
        repetition there succeeds on its first try and re-running it costs nothing (a
        whole-name match, or a ``$``, can still fail there)."""
        if depth > _MAX_NESTING:
            raise _Refused(f"nests groups more than {_MAX_NESTING} deep; simplify it")
        items = list(items)
        follows = []
        cur = follow
        for op, av in reversed(items):
            follows.append(cur)
            cls, empty = self.first(op, av)
            cur = _union(cls, cur) if empty else cls
        for i, ((op, av), after) in enumerate(zip(items, reversed(follows))):
            shadow = self.item(op, av, after, shadow, depth, look, end and i == len(items) - 1)
        return shadow

    def item(self, op, av, follow: tuple, shadow: tuple, depth: int, look: bool,
             end: bool) -> tuple:
        name = op.name
        cls = _char_class(op, av, self.icase)
        if cls is not None:  # a character outside the given-back run ends the shadow
            return shadow if _overlap(cls, shadow) else _EMPTY
        if name == "AT":
            return shadow
        if name in ("GROUPREF", "GROUPREF_EXISTS"):
            raise _Refused("uses a backreference or a conditional group, which can take "
                           "exponential time; surgery's regexes leave them out")
        if name == "SUBPATTERN":
            return self.seq(av[3], follow, shadow, depth + 1, look, end)
        if name == "ATOMIC_GROUP":
            return self.seq(av, _EMPTY, shadow, depth + 1, look)
        if name in ("ASSERT", "ASSERT_NOT"):
            self.seq(av[1], _EMPTY, shadow, depth + 1, True)
            return shadow
        if name == "BRANCH":
            firsts, out = [], _EMPTY
            for branch in av[1]:
                out = _union(out, self.seq(branch, follow, shadow, depth + 1, look, end))
                cls, empty = self.seq_first(branch)
                firsts.append(_union(cls, follow) if empty else cls)
            if any(_overlap(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1:]):
                self.choices *= len(av[1])
            return out
        if name in _REPEATS:
            return self.repeat(name, av, follow, shadow, depth, look, end)
        raise _Refused(f"uses {name.lower()}, which surgery's regexes leave out")

    def repeat(self, name, av, follow: tuple, shadow: tuple, depth: int, look: bool,
               end: bool) -> tuple:
        lo, hi, body = av
        unbounded = hi == _sre_parse.MAXREPEAT
        if lo > MAX_COUNT or (not unbounded and hi > MAX_COUNT):
            raise _Refused(f"repeats {max(lo, 0 if unbounded else hi)} times; counted "
                           f"repetition is limited to {MAX_COUNT}")
        if hi == 0:
            return shadow
        first, empty = self.seq_first(body)
        if hi == 1:  # optional: a choice of two
            out = self.seq(body, follow, shadow, depth + 1, look, end)
            if lo == 0 and name != "POSSESSIVE_REPEAT" and _overlap(first, follow):
                self.choices *= 2
            return _union(out, shadow) if lo == 0 else out
        if _has_choice(body):
            raise _Refused(_NESTED if _has_choice(body, branches=False) else
                           "repeats a group of alternatives, which can take exponential time; "
                           "repeat a character class ([ab]) or spell the repetitions out")
        self.seq(body, _union(first, follow), _EMPTY, depth + 1, look)  # refused constructs
        if empty:
            raise _Refused("repeats something that can match nothing; simplify it")
        ambiguous = look or (lo != hi and name != "POSSESSIVE_REPEAT" and
                             _overlap(first, follow))
        if ambiguous:
            self.ambiguous += 1
            return _union(shadow, first)
        if _overlap(first, shadow) and not end:
            self.rescans = True
        return shadow


def _has_choice(items, branches: bool = True) -> bool:
    """Whether a sequence holds a repetition (or, with `branches`, alternatives)."""
    for op, av in items:
        name = op.name
        if name in _REPEATS or (branches and name == "BRANCH"):
            return True
        if name == "BRANCH" and any(_has_choice(b, False) for b in av[1]):
            return True
        inner = av[3] if name == "SUBPATTERN" else av if name == "ATOMIC_GROUP" else \
            av[1] if name in ("ASSERT", "ASSERT_NOT") else None
        if inner is not None and _has_choice(inner, branches):
            return True
    return False


def _icase(items, flags: int) -> bool:
    if flags & re.IGNORECASE:
        return True
    for op, av in items:
        name = op.name
        if name == "SUBPATTERN" and (av[1] & re.IGNORECASE or _icase(av[3], 0)):
            return True
        inner = av if name == "ATOMIC_GROUP" else av[1] if name in ("ASSERT", "ASSERT_NOT") \
            else av[2] if name in _REPEATS else None
        if inner is not None and _icase(inner, 0):
            return True
        if name == "BRANCH" and any(_icase(b, 0) for b in av[1]):
            return True
    return False


def regex_problem(text: str, *, search: bool = False) -> str | None:
    """Why `text` is outside the regex subset that runs in bounded time (see the module
    docstring), as a phrase to follow the pattern in an error; None when it is inside.

    Args:
        text: the pattern.
        search: True where the pattern is searched for (renames, ``re.sub``), False where it
            must match a whole name (selectors, ``fullmatch``).

    Raises:
        re.error: `text` is not a valid regex.
    """
    if len(text) > MAX_PATTERN:
        return f"is longer than {MAX_PATTERN} characters; shorten it"
    try:
        parsed = _sre_parse.parse(text)
    except OverflowError:
        return f"repeats too many times; counted repetition is limited to {MAX_COUNT}"
    except RecursionError:
        return f"nests groups more than {_MAX_NESTING} deep; simplify it"
    items = list(parsed)
    flags = parsed.state.flags
    anchored = bool(items) and items[0][0].name == "AT" and (
        items[0][1].name == "AT_BEGINNING_STRING" or
        (items[0][1].name == "AT_BEGINNING" and not flags & re.MULTILINE))
    unanchored = search and not anchored
    checker = _Checker(_icase(items, flags))
    try:
        checker.seq(items, _EMPTY, _ANY if unanchored else _EMPTY, 0, end=search)
    except _Refused as e:
        return str(e)
    except RecursionError:
        return f"nests groups more than {_MAX_NESTING} deep; simplify it"
    degree = int(unanchored) + checker.ambiguous + int(checker.rescans)
    if degree > _MAX_DEGREE:
        hint = "anchor it with ^, or " if unanchored else ""
        many = f"{checker.ambiguous} repetitions" if checker.ambiguous != 1 else "1 repetition"
        return (f"can take time growing as n**{degree} on a name of n characters ({many} can "
                f"give characters back to what follows); {hint}make each repetition stop where "
                "the next part starts, e.g. [^/]* instead of .*")
    if checker.choices > _MAX_CHOICES or MAX_KEY ** degree * checker.choices > _MAX_WORK:
        return (f"has alternatives that can start alike ({checker.choices} combinations), "
                "which can take exponential time; make them start with different characters")
    return None


class SafePattern:
    """A compiled regex from the subset, with the `re.Pattern` methods surgery uses (search,
    match, fullmatch, sub, subn). Names longer than `MAX_KEY` characters are refused, and so is
    matching once it has taken `MAX_SECONDS` in all: each call is bounded by the subset, the
    total by that budget. Both raise the error class the pattern was made with."""

    def __init__(self, compiled: re.Pattern, error: type[SurgeryError], label: str):
        self._re, self._error, self._label = compiled, error, label
        self.pattern = compiled.pattern
        self.flags, self.groups = compiled.flags, compiled.groups
        self._spent = 0.0
        self._calls = 0

    def _run(self, call, name: str):
        if not isinstance(name, str):
            raise TypeError(f"expected a name (str), got {type(name).__name__}")
        if len(name) > MAX_KEY:
            from .text import shown

            raise self._error(f"{self._label}: the name '{shown(name)}' is {len(name)} "
                              f"characters long; regexes are matched against names of up to "
                              f"{MAX_KEY} characters; select or rename it with a glob or an "
                              "exact name instead", variable=name)
        if self._spent > MAX_SECONDS:
            raise self._error(f"{self._label}: matching took more than {MAX_SECONDS:g} s over "
                              f"{self._calls} names; simplify the pattern")
        start = time.perf_counter()
        try:
            return call(name)
        finally:
            self._spent += time.perf_counter() - start
            self._calls += 1

    def search(self, name: str, *args):
        return self._run(lambda n: self._re.search(n, *args), name)

    def match(self, name: str, *args):
        return self._run(lambda n: self._re.match(n, *args), name)

    def fullmatch(self, name: str, *args):
        return self._run(lambda n: self._re.fullmatch(n, *args), name)

    def sub(self, repl, name: str, count: int = 0):
        return self._run(lambda n: self._re.sub(repl, n, count), name)

    def subn(self, repl, name: str, count: int = 0):
        return self._run(lambda n: self._re.subn(repl, n, count), name)

    def __eq__(self, other: object) -> bool:  # like re.Pattern: same text, same flags
        return isinstance(other, SafePattern) and (self.pattern, self.flags) == (
            other.pattern, other.flags)

    def __hash__(self) -> int:
        return hash((self.pattern, self.flags))

    def __repr__(self) -> str:
        return f"SafePattern({self.pattern!r})"


def _safe_selector_regex(selector: str) -> SafePattern:
    text = selector[3:]
    try:
        problem = regex_problem(text)
        compiled = re.compile(text) if problem is None else None
    except re.error as e:
        raise SelectorError(f"invalid regex in selector {selector!r}: {e}") from None
    except (OverflowError, RecursionError, ValueError) as e:
        raise SelectorError(f"invalid regex in selector {selector!r}: {e}") from None
    if problem is not None:
        raise SelectorError(f"selector {selector!r} {problem}")
    return SafePattern(compiled, SelectorError, f"selector {selector!r}")


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
        match = _safe_selector_regex(selector).fullmatch
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
