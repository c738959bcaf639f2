"""The report words: one vocabulary for what happened to a variable.

Every report that says what happened to a variable (the transplant report and the matching
plan behind it, edit reports, plan reports and dry runs, `diff`) uses these words and only
these, each with one meaning:

| word | meaning |
| --- | --- |
| ``copied`` | its value was taken bitwise from a source variable (transplant, edit) |
| ``converted`` | computed from source values by a named adapter or by the edit itself |
| ``initialized`` | it holds what the new model's initializer drew (new layer, new shape) |
| ``reinitialized`` | drawn afresh from an initializer on request (`reinitialize`) |
| ``skipped`` | a skip rule kept every source from it: left initialized |
| ``missing`` | no source tensor for it: left initialized |
| ``mismatched`` | a source matched, its shape differs, no adapter named: left initialized |
| ``unused`` | a source tensor that no target took |
| ``unchanged`` | bitwise the same value on both sides (before and after, or A and B) |
| ``changed`` | same path and shape, other values |
| ``reshaped`` | same path, another shape |
| ``new`` | only in the result of an operation |
| ``removed`` | only in the input of an operation |
| ``only_in_a`` / ``only_in_b`` | in only one of two compared sources (printed ``only in a``) |
| ``frozen`` / ``trainable`` | not trained / trained by `fit` |

`Outcome` is a `str` enum: a member equals its word (``Outcome.COPIED == "copied"``), prints as
it, and is written as it in JSON. Where a user passes a word in (``WeightDiff.of("only_a")``,
``report.counts()["adapted"]``), the older spellings and the printed labels are accepted too
(`Outcome.of`).
"""

from __future__ import annotations

from enum import StrEnum

from .errors import OptionError

__all__ = ["Outcome", "Counts", "MEANINGS", "ALIASES"]


class Outcome(StrEnum):
    """What happened to a variable (see the module docstring for each word's meaning)."""

    COPIED = "copied"
    CONVERTED = "converted"
    INITIALIZED = "initialized"
    REINITIALIZED = "reinitialized"
    SKIPPED = "skipped"
    MISSING = "missing"
    MISMATCHED = "mismatched"
    UNUSED = "unused"
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    RESHAPED = "reshaped"
    NEW = "new"
    REMOVED = "removed"
    ONLY_IN_A = "only_in_a"
    ONLY_IN_B = "only_in_b"
    FROZEN = "frozen"
    TRAINABLE = "trainable"

    @property
    def label(self) -> str:
        """The word as reports print it (``only in a``)."""
        return self.value.replace("_", " ")

    @property
    def meaning(self) -> str:
        """One line: what the word means."""
        return MEANINGS[self]

    @classmethod
    def of(cls, word: str) -> "Outcome":
        """The outcome a word names: its own spelling, its printed label, or an older
        spelling (``same``, ``shape``, ``only_a``, ``adapted``, ``carried``, ``kept``,
        ``deleted``, ``unfrozen``...).

        Raises:
            OptionError: not a report word; lists the words.
        """
        try:
            return cls(word)
        except ValueError:
            raise OptionError(f"unknown report word {word!r}; the words: "
                              f"{', '.join(m.value for m in cls)}") from None

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            key = " ".join(value.strip().lower().split())
            word = ALIASES.get(key, key.replace(" ", "_"))
            for member in cls:
                if member.value == word:
                    return member
        return None


MEANINGS: dict[Outcome, str] = {
    Outcome.COPIED: "its value was taken bitwise from a source variable",
    Outcome.CONVERTED: "its value was computed from source values by a named adapter or by "
                       "the edit itself",
    Outcome.INITIALIZED: "it holds what the new model's initializer drew",
    Outcome.REINITIALIZED: "drawn afresh from an initializer on request",
    Outcome.SKIPPED: "a skip rule kept every source from it: left initialized",
    Outcome.MISSING: "no source tensor for it: left initialized",
    Outcome.MISMATCHED: "a source matched but its shape differs and no adapter was named: "
                        "left initialized",
    Outcome.UNUSED: "a source tensor that no target took",
    Outcome.UNCHANGED: "bitwise the same value on both sides",
    Outcome.CHANGED: "same path and shape, other values",
    Outcome.RESHAPED: "same path, another shape",
    Outcome.NEW: "only in the result of an operation",
    Outcome.REMOVED: "only in the input of an operation",
    Outcome.ONLY_IN_A: "only in the first of two compared sources",
    Outcome.ONLY_IN_B: "only in the second of two compared sources",
    Outcome.FROZEN: "not trained by fit",
    Outcome.TRAINABLE: "trained by fit",
}

# Older spellings and printed phrases a user may still pass in -> the word.
ALIASES: dict[str, str] = {
    "same": "unchanged", "kept": "unchanged", "identical": "unchanged",
    "shape": "reshaped", "shape differs": "reshaped",
    "only_a": "only_in_a", "only_b": "only_in_b",
    "adapted": "converted", "adapt": "converted", "copy": "copied", "carried": "copied",
    "skip": "skipped", "mismatch": "mismatched",
    "deleted": "removed", "unfrozen": "trainable",
}


class Counts(dict):
    """Counts per word (a plain dict of words, JSON-ready) that also answers to an older
    spelling or a printed label: ``counts["same"]`` is ``counts["unchanged"]``."""

    def __missing__(self, key):
        try:
            word = Outcome(key).value
        except ValueError:
            raise KeyError(key) from None
        if word == key or word not in self:
            raise KeyError(key)
        return self[word]

    def __contains__(self, key) -> bool:
        if dict.__contains__(self, key):
            return True
        try:
            return dict.__contains__(self, Outcome(key).value)
        except ValueError:
            return False

    def get(self, key, default=None):
        return self[key] if key in self else default
