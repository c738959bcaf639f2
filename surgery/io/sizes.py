"""Sizes and memory limits: what ``max_shard_size`` and ``max_memory`` read, and how messages
show a number of bytes.

`parse_size` reads a shard size (bytes, ``"500MB"``, ``"2GiB"``), `parse_memory` a memory limit
(a `MemoryLimit`, which remembers its option's name for messages), `format_size` shows bytes in
a message, `tensor_bytes` is one tensor's size in memory, and `check_memory` refuses work whose
largest step needs more memory than the limit allows, before anything is read or written.

Moved from `shards.py`, which still exports every public name.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any, Iterable

import numpy as np

from ..errors import OptionError

__all__ = ["parse_size", "MemoryLimit", "parse_memory", "format_size", "tensor_bytes",
           "check_memory"]


_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")


def parse_size(value: Any, what: str = "max_shard_size") -> int:
    """A shard size in bytes: an int of bytes, or a string: ``"1000000"``, ``"10KB"``,
    ``"500MB"``, ``"2GB"`` (powers of 1000, as Hugging Face reads them), ``"512MiB"``,
    ``"2GiB"`` (powers of 1024); case is ignored.

    Raises:
        OptionError: anything else, a float (Keras's own `max_shard_size` counts GB, so a bare
            number would be ambiguous), or a size under one byte.
    """
    n = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str):
        m = _SIZE.fullmatch(value)
        if m and m.group(2).lower() in _UNITS:
            n = int(Fraction(m.group(1)) * _UNITS[m.group(2).lower()])
    if n is None:
        extra = " (a float is ambiguous: Keras's max_shard_size counts GB)" \
            if isinstance(value, float) else ""
        raise OptionError(f"{what} {value!r}: not a size{extra}; give bytes (1000000) or a size "
                          "with a unit: 10KB, 500MB, 2GB (powers of 1000) or 512MiB, 2GiB "
                          "(powers of 1024)")
    if n < 1:
        raise OptionError(f"{what} {value!r}: a shard must hold at least one byte; give a "
                          "size such as 500MB")
    return n


class MemoryLimit(int):
    """A memory limit in bytes that remembers the option it was given as, for messages
    (``--max-memory`` on the command line, ``max_memory`` in Python)."""

    option: str

    def __new__(cls, n: int, option: str = "max_memory") -> "MemoryLimit":
        limit = super().__new__(cls, n)
        limit.option = option
        return limit


def parse_memory(value: Any, what: str = "max_memory") -> MemoryLimit | None:
    """A memory limit in bytes, or None for none: an int of bytes, or a size as `parse_size`
    reads it (``"800MB"``, ``"1.5GB"``, ``"2GiB"``); a `MemoryLimit` is returned as it is.

    Raises:
        OptionError: anything else (a float, a size under one byte, no unit it knows).
    """
    if value is None or isinstance(value, MemoryLimit):
        return value
    try:
        return MemoryLimit(parse_size(value, what), what)
    except OptionError:
        raise OptionError(f"{what} {value!r}: not a memory size; give bytes (1500000000) or a "
                          "size with a unit: 800MB, 1.5GB (powers of 1000), 2GiB (powers of "
                          "1024)") from None


def format_size(n: int) -> str:
    """Bytes as a message shows them: ``411.1 MB`` (powers of 1000, as `parse_size` reads
    them; rounded up, so that "at least" holds)."""
    for unit, scale in (("GB", 10 ** 9), ("MB", 10 ** 6), ("KB", 10 ** 3)):
        if n >= scale:
            return f"{math.ceil(n * 10 / scale) / 10:.1f} {unit}"
    return f"{n} bytes"


def tensor_bytes(shape: Iterable[int], dtype: str) -> int:
    """The bytes of one tensor in memory (8 per value for a dtype numpy does not know)."""
    try:
        size = 2 if str(dtype) == "bfloat16" else np.dtype(dtype).itemsize
    except TypeError:
        size = 8
    return math.prod(int(d) for d in shape) * size


def check_memory(needs: Iterable[tuple[str, str, int, str]], limit: int | None) -> None:
    """Refuses work whose largest step needs more memory than `limit` allows, before anything
    is read or written.

    Args:
        needs: for every step of the work: (the file it reads, what holds the memory:
            ``tensor fc1/kernel``, the bytes held at once, how they add up).
        limit: bytes (`parse_memory`; a `MemoryLimit` names its option), or None for none.

    Raises:
        OptionError: the largest need (the first of equal ones), named with its file, its
            size, how it adds up and the limit.
    """
    if limit is None:
        return
    what = getattr(limit, "option", "max_memory")
    worst = max(needs, key=lambda need: need[2], default=None)
    if worst is not None and worst[2] > limit:
        path, name, n, detail = worst
        raise OptionError(f"{path}: {name} needs {format_size(n)} ({n} bytes: {detail}) at "
                          f"once, more than {what} {format_size(limit)} allows; raise {what} "
                          f"to at least {format_size(n)}", path=path)
