"""The shape of a surgery plan: tables, keys, their types and what each step requires.

Pure Python over the parsed TOML: `check_plan(data)` returns every problem as ``(key, text)``
pairs (the key locates the line in the plan), so that a plan with missing or mistyped keys
fails validation with one line per problem instead of failing half-way through a run.
"""

from __future__ import annotations

from typing import Any, Iterator

__all__ = ["TABLES", "STEPS", "EDITS", "check_plan"]

_STRS = ("list of strings", lambda v: isinstance(v, list) and
         all(isinstance(x, str) and x for x in v))
_INTS = ("list of integers", lambda v: isinstance(v, list) and
         all(isinstance(x, int) and not isinstance(x, bool) for x in v))
_INT = ("integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
_NUM = ("number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
_STR = ("string", lambda v: isinstance(v, str) and v != "")
_BOOL = ("true or false", lambda v: isinstance(v, bool))
_RULES = ("rules file name or inline table", lambda v: isinstance(v, (str, dict)))
_TABLE = ("table", lambda v: isinstance(v, dict))

TABLES: dict[str, dict[str, tuple]] = {
    "source": {"model": _STR},
    "target": {"model": _STR},
    "verify": {"seed": _INT, "inputs": _STR, "preserve": _INTS, "atol": _NUM,
               "changes": _STRS},
    "output": {"model": _STR, "report": _STR, "overwrite": _BOOL},
}
STEPS: dict[str, dict[str, tuple]] = {
    "head": {"classes": _INT, "keep_classes": _INTS, "activation": _STR, "layer": _STR,
             "seed": _INT},
    "freeze": {"select": _STRS, "except": _STRS, "bn": _STR},
    "unfreeze": {"select": _STRS, "except": _STRS},
    "reinit": {"select": _STRS, "initializer": _STR, "seed": _INT},
    "transplant": {"rules": _RULES, "strict": _BOOL},
    "lora": {"select": _STRS, "rank": _INT, "alpha": _NUM},
    "edit": {"action": _STR, "layer": _STR, "channels": _INTS, "ratio": _NUM, "units": _INT,
             "after": _STR, "residual": _BOOL, "shape": _INTS, "seed": _INT,
             "layer_json": _TABLE},
    "finetune": {"data": _STR, "train": _STRS, "freeze": _STRS, "epochs": _INT,
                 "batch_size": _INT, "lr": _NUM, "seed": _INT, "bn": _STR},
}
_REQUIRED = {"head": ("classes",), "reinit": ("select",), "lora": ("rank",),
             "finetune": ("data",), "edit": ("action",)}
# edit action -> keys it needs (a tuple inside means "one of these")
EDITS: dict[str, tuple] = {
    "delete-channels": ("layer", ("channels", "ratio")),
    "widen": ("layer", "units"),
    "deepen": ("after",),
    "delete-layer": ("layer",),
    "insert": ("after", "layer_json"),
    "change-input": ("shape",),
}
_POSITIVE = {"classes", "rank", "units", "epochs", "batch_size"}


def _types(keys: dict[str, Any], schema: dict[str, tuple], where: str, table: str = ""
           ) -> Iterator[tuple[Any, str]]:
    for key, value in keys.items():
        if key == "op":
            continue
        loc = (table, key) if table else key
        if key not in schema:
            yield loc, (f"unknown key '{key}' in {where}; it takes "
                        f"{', '.join(sorted(schema))}")
            continue
        name, ok = schema[key]
        if not ok(value):
            yield loc, f"'{key}' in {where} must be a {name}, got {value!r}"
        elif key in _POSITIVE and value <= 0:
            yield loc, f"'{key}' in {where} must be positive, got {value!r}"
        elif key in ("lr", "atol", "alpha", "ratio") and not (value == value and
                                                              abs(value) != float("inf")):
            yield loc, f"'{key}' in {where} must be a finite number, got {value!r}"


def _step(i: int, step: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(step, dict):
        yield "step", f"step {i} must be a table ([[step]] with op = \"...\")"
        return
    op = step.get("op")
    if not isinstance(op, str) or op not in STEPS:
        yield "step", f"step {i} has op {op!r}; use one of {', '.join(STEPS)}"
        return
    where = f"a {op} step (step {i})"
    bad = list(_types(step, STEPS[op], where))
    yield from bad
    for key in _REQUIRED.get(op, ()):
        if key not in step:
            yield "step", f"{where} needs {key} = ..."
    if op == "edit" and "action" in step:
        action = step["action"]
        if not isinstance(action, str) or action not in EDITS:
            yield "action", (f"edit action {action!r} (step {i}); use one of "
                             f"{', '.join(EDITS)}")
            return
        for need in EDITS[action]:
            alts = need if isinstance(need, tuple) else (need,)
            if not any(k in step for k in alts):
                yield "step", (f"an edit {action} step (step {i}) needs "
                               f"{' or '.join(k + ' = ...' for k in alts)}")


def check_plan(data: dict) -> list[tuple[str, str]]:
    """Every structural problem of a parsed plan, as (where, message) pairs: `where` is the
    key or table to locate in the text, ``(table, key)`` for a key of a table, or
    ``("step", index)`` for a problem in one step.

    Example:
    ```python
    check_plan({"target": {"model": 5}})
    # [('model', "'model' in [target] must be a string, got 5"), ('step', ...)]
    ```
    """
    problems: list[tuple[str, str]] = []
    for key in data:
        if key not in TABLES and key != "step":
            problems.append((key, f"unknown table '{key}'; plans know "
                                  f"{', '.join(sorted([*TABLES, 'step']))}"))
    for table, schema in TABLES.items():
        if table not in data:
            continue
        if not isinstance(data[table], dict):
            problems.append((table, f"'{table}' must be a table ([{table}]), got "
                                    f"{data[table]!r}"))
            continue
        problems.extend(_types(data[table], schema, f"[{table}]", table))
    target = data.get("target")
    if not isinstance(target, dict) or "model" not in target:
        problems.append(("target", 'a plan needs [target] model = "..."'))
    steps = data.get("step")
    if not isinstance(steps, list) or not steps:
        problems.append(("step", "a plan needs at least one [[step]]"))
        steps = []
    for i, step in enumerate(steps, 1):
        problems.extend((("step", i - 1), text) for _, text in _step(i, step))
    return problems
