"""Text that reaches a terminal: names read from files are escaped and shortened.

Pure Python, the lowest layer: every table and error line (reports, inventories, diffs, the
CLI's `error:` lines) passes names through `escape_text` or `shown`.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["NAME_WIDTH", "escape_text", "shown", "json_safe", "first_line"]

NAME_WIDTH = 80  # the widest a name column gets in a text table; longer names are shortened
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_text(text: str) -> str:
    """`text` with every non-printable character written as a Python escape (``\\x1b``,
    ``\\n``, ``\\u202e``): names read from a file can't move the cursor, clear the screen or
    forge report lines. Printable text (any script) is kept as is; escaping twice changes
    nothing.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _ESCAPES.get(ch) or _escape_char(ch)
                   for ch in text)


def _escape_char(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def first_line(error: BaseException) -> str:
    """An exception's first message line, or its class name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def shown(text: str, width: int = NAME_WIDTH) -> str:
    """`text` escaped (`escape_text`) and, when longer than `width`, shortened to `width`
    characters with an ellipsis in the middle (the end of a path says most about it)."""
    text = str(text)
    if len(text) > 8 * width:  # keep the work proportional to `width`, not to the name
        text = text[:4 * width] + "\u2026" + text[-4 * width:]
    text = escape_text(text)
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "\u2026" + text[len(text) - (width - 1 - head):]


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float (JSON has none) written as the string "nan",
    "inf" or "-inf", in nested dicts, lists and tuples too."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
