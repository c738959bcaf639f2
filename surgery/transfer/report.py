"""`TransplantReport`: what a transplant did (or would do) to every target variable.

Each target variable gets one report word (`surgery.outcomes`): ``copied`` (from which source
path, and how it was matched), ``converted`` (by which adapter, both shapes), ``skipped`` (a
skip rule left it initialized), ``missing`` (no source: left initialized), ``mismatched`` (a
source matched but its shape differs and no adapter was given: left initialized). ``unused``
source tensors, non-finite source values and rules that matched nothing are listed too. `str()`
is a table that groups repeated layers (``block{1..3}_conv/kernel``, only where shapes, adapter
and note agree); `to_dict()` is JSON-ready. `ExportReport` says what a PyTorch state-dict export
wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from ..outcomes import Counts, Outcome
from ..text import NAME_WIDTH, escape_text, shown

__all__ = ["Entry", "TransplantReport", "group_paths", "ExportRow", "ExportReport", "port_lines"]

STATUSES = (Outcome.COPIED, Outcome.CONVERTED, Outcome.SKIPPED, Outcome.MISSING,
            Outcome.MISMATCHED)


@dataclass(frozen=True)
class Entry:
    """One target variable's outcome: `status` is a report word (an older spelling such as
    ``adapted`` is read as its word)."""

    path: str
    status: Outcome
    source: str | None = None
    matched_by: str | None = None  # rule | exact | structural | shape
    adapter: str | None = None
    source_shape: tuple | None = None
    target_shape: tuple | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status.value, "source": self.source,
                "matched_by": self.matched_by, "adapter": self.adapter,
                "source_shape": list(self.source_shape) if self.source_shape else None,
                "target_shape": list(self.target_shape) if self.target_shape else None,
                "note": self.note}

    def __post_init__(self):
        object.__setattr__(self, "status", Outcome.of(self.status))


@dataclass(frozen=True)
class TransplantReport:
    """The outcome of `surgery.transplant`.

    Attributes:
        source, target: what was read and filled.
        entries: one `Entry` per target variable, in target order.
        unused: source keys no target took.
        nonfinite: (source key, count of NaN/Inf values) for each source read with any.
        warnings: rules that matched nothing, with the closest keys.
        strict: whether strict checks applied.
        dry_run: True when nothing was changed.
        port: for a port from PyTorch (``layout="torch"``), the inferred pairs
            (`surgery.PortPair`: PyTorch module, Keras layer, transform, why), shown before the
            table.
    """

    source: str
    target: str
    entries: tuple[Entry, ...] = ()
    unused: tuple[str, ...] = ()
    nonfinite: tuple[tuple[str, int], ...] = ()
    warnings: tuple[str, ...] = ()
    strict: bool = False
    dry_run: bool = False
    port: tuple = ()

    def of(self, status: str) -> list[Entry]:
        """The entries with one report word (older spellings accepted)."""
        word = Outcome.of(status)
        return [e for e in self.entries if e.status == word]

    @property
    def copied(self) -> list[Entry]:
        return self.of(Outcome.COPIED)

    @property
    def converted(self) -> list[Entry]:
        return self.of(Outcome.CONVERTED)

    @property
    def adapted(self) -> list[Entry]:
        """The older name of `converted` (the DESIGN §4.3 contract)."""
        return self.converted

    @property
    def skipped(self) -> list[Entry]:
        return self.of(Outcome.SKIPPED)

    @property
    def missing(self) -> list[Entry]:
        return self.of(Outcome.MISSING)

    @property
    def mismatched(self) -> list[Entry]:
        return self.of(Outcome.MISMATCHED)

    @property
    def problems(self) -> list[str]:
        """What strict mode fails on, one line each."""
        out = [f"{e.path}: no source tensor (left initialized)" for e in self.missing]
        out += [f"{e.path}: source {e.source} {e.source_shape} vs target {e.target_shape}"
                for e in self.mismatched]
        out += [f"{key}: {n} non-finite values" for key, n in self.nonfinite]
        out += list(self.warnings)
        return out

    @property
    def ok(self) -> bool:
        """False when strict mode would fail."""
        return not self.problems

    def counts(self) -> Counts:
        """Entries per report word, and the ``unused`` source tensors."""
        out = Counts((s.value, 0) for s in STATUSES)
        for e in self.entries:
            out[e.status.value] += 1
        out[Outcome.UNUSED.value] = len(self.unused)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "dry_run": self.dry_run,
                "strict": self.strict, "ok": self.ok, "counts": self.counts(),
                "entries": [e.to_dict() for e in self.entries], "unused": list(self.unused),
                "nonfinite": [{"source": k, "count": n} for k, n in self.nonfinite],
                "warnings": list(self.warnings), "problems": self.problems,
                **({"port": [p.to_dict() for p in self.port]} if self.port else {})}

    def __str__(self) -> str:
        lines = [f"source: {shown(self.source, 4 * NAME_WIDTH)}",
                 f"target: {shown(self.target, 4 * NAME_WIDTH)}"
                 + ("  (dry run: nothing changed)" if self.dry_run else ""), ""]
        lines += port_lines(self.port, "PyTorch module", "Keras layer")
        rows = []
        for label, group in group_paths(self.entries):
            e = group[0]
            detail = {
                Outcome.COPIED: f"<- {shown(_group_source(group))} ({e.matched_by})",
                Outcome.CONVERTED: f"<- {shown(_group_source(group))} via {e.adapter} "
                                   f"{e.source_shape} -> {e.target_shape}"
                                   + (f"; {e.note}" if e.note else ""),
                Outcome.SKIPPED: "left initialized (skip rule)",
                Outcome.MISSING: "left initialized (no source)",
                Outcome.MISMATCHED: f"left initialized: {shown(str(e.source))} "
                                    f"{e.source_shape} vs target {e.target_shape}; add an "
                                    "adapter or skip it",
            }[e.status]
            rows.append((shown(label), e.status.label, detail))
        width = max([len(r[0]) for r in rows] + [6])
        for label, status, detail in rows:
            lines.append(f"{label:<{width}}  {status:<10}  {detail}")
        if self.unused:
            lines.append("")
            lines.append(f"unused source tensors ({len(self.unused)}): "
                         + ", ".join(shown(label) for label, _ in group_paths(
                             [Entry(k, Outcome.UNUSED, k) for k in self.unused])))
        for key, n in self.nonfinite:
            lines.append(f"non-finite: {shown(key)} has {n} NaN/Inf values")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        c = self.counts()
        lines.append("")
        lines.append(", ".join(f"{c[s.value]} {s.label}" for s in (*STATUSES, Outcome.UNUSED))
                     + ("" if self.ok else "; strict would fail"))
        return "\n".join(escape_text(line) for line in lines)


@dataclass(frozen=True)
class ExportRow:
    """One PyTorch tensor written: its key, the Keras variable(s) it came from, how
    (``renamed`` or an exporter's name), its shape and a note."""

    key: str
    source: str
    how: str
    shape: tuple
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "source": self.source, "how": self.how,
                "shape": list(self.shape), "note": self.note}


@dataclass(frozen=True, eq=False)
class ExportReport(Mapping):
    """What `export_state_dict` wrote; a read-only mapping of PyTorch key -> shape.

    Attributes:
        source, output: the model read and the file written.
        rows: one `ExportRow` per PyTorch tensor, in the order written.
        skipped: Keras variables a skip rule left out.
        notes: what the PyTorch module must be built with (BatchNorm eps other than 1e-5).
        warnings: renames or skips that matched nothing.
        port: with a template (``like=``), the inferred pairs (`surgery.PortPair`: PyTorch
            module, Keras layer, transform, why), shown before the rows.
    """

    source: str
    output: str
    rows: tuple[ExportRow, ...] = ()
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    port: tuple = ()

    def __getitem__(self, key: str) -> tuple:
        for row in self.rows:
            if row.key == key:
                return row.shape
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(row.key for row in self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "output": self.output,
                "tensors": [r.to_dict() for r in self.rows], "skipped": list(self.skipped),
                "notes": list(self.notes), "warnings": list(self.warnings),
                **({"port": [p.to_dict() for p in self.port]} if self.port else {})}

    def __str__(self) -> str:
        lines = [f"source: {shown(self.source, 320)}", f"output: {shown(self.output, 320)}", ""]
        lines += port_lines(self.port, "Keras layer", "PyTorch module", export=True)
        width = max([len(shown(r.key)) for r in self.rows] + [6])
        for r in self.rows:
            detail = f"<- {shown(r.source)} ({r.how}) {r.shape}" + (f"; {r.note}" if r.note
                                                                    else "")
            lines.append(f"{shown(r.key):<{width}}  {detail}")
        if self.skipped:
            lines += ["", f"skipped ({len(self.skipped)}): "
                      + ", ".join(shown(s) for s in self.skipped)]
        lines += [f"note: {n}" for n in self.notes] + [f"warning: {w}" for w in self.warnings]
        lines += ["", f"{len(self.rows)} PyTorch tensors written, {len(self.skipped)} Keras "
                      "variables skipped"]
        return "\n".join(escape_text(line) for line in lines)


def port_lines(pairs, source: str, target: str, *, export: bool = False) -> list[str]:
    """The lines that show a port's pairs before a report's table ([] without a port)."""
    if not pairs:
        return []
    rows = [(shown(p.target_layer if export else p.source_module),
             shown(p.source_module if export else p.target_layer), p.transform, p.reason)
            for p in pairs]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"paired by names and shapes ({len(rows)}; {source} -> {target}, transform, why):"]
    lines += [f"  {a:<{width[0]}} -> {b:<{width[1]}}  {c:<{width[2]}}  {d}"
              for a, b, c, d in rows]
    return lines + [""]


_NUM = re.compile(r"\d+")
_SHOWS_SHAPES = (Outcome.CONVERTED, Outcome.MISMATCHED)  # rows that print both shapes


def _template(path: str) -> tuple[str, list[int]]:
    nums = [int(n) for n in _NUM.findall(path)]
    return _NUM.sub("#", path), nums


def group_paths(entries) -> list[tuple[str, list]]:
    """Groups entries whose paths differ in one number and whose rows say the same: a status,
    a way of matching, an adapter, the note and, where the row shows them (converted,
    mismatched), both shapes. One row then stands for them all.

    ``block1_conv/kernel``, ``block2_conv/kernel``, ``block3_conv/kernel`` (all copied the
    same way) become one row labelled ``block{1..3}_conv/kernel``, placed where the first one
    stood; entries that don't fit a group keep their own rows (``fc1/kernel`` and
    ``fc2/kernel`` converted between other shapes, or with another note, are two rows).
    """
    entries = list(entries)
    buckets: dict[tuple, list] = {}
    order: list[tuple] = []
    for e in entries:
        tpl, nums = _template(e.path)
        shapes = (_shape_key(getattr(e, "source_shape", None)),
                  _shape_key(getattr(e, "target_shape", None))) \
            if e.status in _SHOWS_SHAPES else ()
        key = (tpl, e.status, getattr(e, "matched_by", None), getattr(e, "adapter", None),
               len(nums), shapes, getattr(e, "note", ""))
        if key not in buckets:
            buckets[key] = []
            order.append(key)
        buckets[key].append((e, nums))
    out: list[tuple[str, list]] = []
    for key in order:
        group = buckets[key]
        if len(group) == 1:
            out.append((group[0][0].path, [group[0][0]]))
            continue
        first = group[0][1]
        varying = {k for _, nums in group for k, (a, b) in enumerate(zip(first, nums)) if a != b}
        values = [nums[next(iter(varying))] for _, nums in group] if len(varying) == 1 else []
        if len(varying) != 1 or len(set(values)) != len(values):
            out.extend((e.path, [e]) for e, _ in group)
            continue
        k_var = next(iter(varying))
        parts = _NUM.split(group[0][0].path)
        label = ""
        for k, part in enumerate(parts[:-1]):
            label += part + (f"{{{_span(values)}}}" if k == k_var else str(first[k]))
        label += parts[-1]
        out.append((label, [e for e, _ in group]))
    return out


def _shape_key(shape) -> Any:
    """A shape (or a tuple of shapes) as a hashable key."""
    if shape is None:
        return None
    return tuple(_shape_key(s) if isinstance(s, (tuple, list)) else s for s in shape)


def _span(values: list[int]) -> str:
    if values == list(range(values[0], values[0] + len(values))):
        return f"{values[0]}..{values[-1]}"
    return ",".join(str(v) for v in values)


def _group_source(group) -> str:
    if len(group) == 1:
        return str(group[0].source)
    labels = group_paths([Entry(e.source or "?", e.status) for e in group])
    return labels[0][0] if len(labels) == 1 else f"{group[0].source} ... {group[-1].source}"
