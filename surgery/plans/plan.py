"""Declarative surgery plans: `surgery apply PLAN.toml` and `surgery.Plan`.

A plan is a reviewable record of a surgery: the models, an ordered list of steps, what must
be verified and where the result goes. Everything is validated before anything runs (one
error listing every problem with its line); a dry run computes what each variable will
undergo, writing nothing; apply runs the steps, the verification, and writes the model
atomically with a JSON report (plan and input hashes, versions, per-step reports,
verification figures). A failed verification writes nothing (exit 1).

```toml
[source]                      # optional: where transplant steps read from
model = "pretrained.keras"
[target]                      # the model the steps act on
model = "architecture.keras"

[[step]]
op = "head"                   # head | freeze | unfreeze | reinit | transplant | lora | edit | finetune
classes = 4

[verify]
seed = 0                      # random probe inputs (or inputs = "probe.npz")
preserve = [2]                # steps that must keep the outputs (max abs diff <= atol)
atol = 1e-5
changes = ["head/*"]          # variables allowed to change; all others stay bitwise

[output]
model = "out.keras"
report = "out.report.json"
```
Paths are relative to the plan file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io.atomic import atomic_path, check_outputs
from ..errors import CheckFailed, InputError, PlanError, ShapeError, SurgeryError
from ..io.inventory import inspect as inspect_fn
from ..outcomes import Outcome
from .schema import check_plan
from ..transfer.rules import read_toml
from ..selection import select

__all__ = ["Plan", "PlanError", "PlanReport"]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    if os.path.isdir(path):
        for folder, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                with open(os.path.join(folder, name), "rb") as f:
                    h.update(name.encode() + f.read())
    else:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class PlanReport:
    """What a plan did (or, on a dry run, will do): each variable's action and each step's
    note on it, in the report words of `surgery.outcomes`."""

    plan: str
    dry_run: bool
    variables: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    verification: dict = field(default_factory=dict)
    output: str | None = None
    hashes: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"plan": self.plan, "dry_run": self.dry_run, "variables": self.variables,
                "steps": self.steps, "params_before": self.params_before,
                "params_after": self.params_after, "verification": self.verification,
                "output": self.output, "hashes": self.hashes, "versions": self.versions}

    def __str__(self) -> str:
        lines = [f"plan {self.plan}" + (" (dry run: nothing written)" if self.dry_run else "")]
        for i, s in enumerate(self.steps, 1):
            lines.append(f"  step {i}: {s['op']}: {s['summary']}")
        width = max([len(v["path"]) for v in self.variables] + [8])
        for v in self.variables:
            steps = f"  ({'; '.join(v['steps'])})" if v.get("steps") else ""
            lines.append(f"  {v['path']:<{width}}  {v['action']}{steps}")
        lines.append(f"  params {self.params_before:,} -> {self.params_after:,}")
        for key, value in self.verification.items():
            lines.append(f"  verify {key}: {value}")
        if self.output:
            lines.append(f"  wrote {self.output}")
        return "\n".join(lines)


class Plan:
    """A parsed, validated plan.

    Example:
    ```python
    plan = surgery.Plan.from_file("examples/plans/new_head_freeze.toml")
    print(plan.dry_run())
    report = plan.apply()
    ```
    """

    def __init__(self, data: dict, path: str, text: str):
        self.data, self.path, self.text = data, path, text
        self.folder = os.path.dirname(os.path.abspath(path))

    # -------------------------------------------------------------- loading & validation
    @classmethod
    def from_file(cls, path: str) -> "Plan":
        """Reads and validates a plan; raises `PlanError` listing every problem."""
        if not isinstance(path, (str, os.PathLike)):
            raise InputError(f"a plan is a TOML file path, got {type(path).__name__}")
        path = os.fspath(path)
        data, text = read_toml(path, "plan file", error=PlanError)  # the one safe TOML reader
        plan = cls(data, path, text)
        plan.validate()
        return plan

    def _line(self, key: str, nth: int = 0) -> str:
        pats = [re.compile(rf"^\s*\[\[?\s*{re.escape(key)}\s*\]\]?"),
                re.compile(rf"^\s*{re.escape(key)}\s*=")]
        hits = [i for i, t in enumerate(self.text.splitlines(), 1)
                if any(p.search(t) for p in pats)]
        return f"{self.path}:{hits[min(nth, len(hits) - 1)]}" if hits else self.path

    def _step_line(self, index: int) -> str:
        hits = [i for i, t in enumerate(self.text.splitlines(), 1)
                if re.match(r"^\s*\[\[\s*step\s*\]\]", t)]
        return f"{self.path}:{hits[index]}" if index < len(hits) else self._line("step")

    def resolve(self, rel: str) -> str:
        return rel if os.path.isabs(rel) else os.path.join(self.folder, rel)

    def input_paths(self) -> list[str]:
        """Every file the plan reads: the plan itself, its models, rules, data and probes."""
        data = self.data
        paths = [self.path]
        for table in ("target", "source"):
            if isinstance(data.get(table), dict) and isinstance(data[table].get("model"), str):
                paths.append(self.resolve(data[table]["model"]))
        for step in data.get("step", []) if isinstance(data.get("step"), list) else []:
            for key in ("rules", "data", "val"):
                if isinstance(step, dict) and isinstance(step.get(key), str):
                    paths.append(self.resolve(step[key]))
        verify = data.get("verify")
        if isinstance(verify, dict) and isinstance(verify.get("inputs"), str):
            paths.append(self.resolve(verify["inputs"]))
        return paths

    def validate(self) -> None:
        """Raises `PlanError` listing every problem, each with its line in the plan."""
        problems = [f"{self._where(where)}: {text}" for where, text in check_plan(self.data)]
        broken = {where[1] for where, _ in check_plan(self.data)
                  if isinstance(where, tuple) and where[0] == "step"}
        problems += self._missing_files()
        problems += self._check_steps_against_target(broken)
        problems += self._check_verify()
        if problems:
            more = f" ({len(problems)} problems)" if len(problems) > 1 else ""
            raise PlanError(f"invalid plan{more}: " + "; ".join(problems))

    def _where(self, where) -> str:
        if isinstance(where, tuple) and where[0] == "step":
            return self._step_line(where[1])
        if isinstance(where, tuple):  # (table, key): the key's line inside that table
            table, key, current = where[0], where[1], None
            for i, line in enumerate(self.text.splitlines(), 1):
                header = re.match(r"^\s*\[\[?\s*([\w.-]+)\s*\]\]?", line)
                if header:
                    current = header.group(1)
                elif current == table and re.match(rf"^\s*{re.escape(key)}\s*=", line):
                    return f"{self.path}:{i}"
            return self._line(table)
        return self._line(where) if where in self.text else self.path

    def _missing_files(self) -> list[str]:
        data, problems = self.data, []
        for n, table in enumerate(("source", "target")):
            rel = data.get(table, {}).get("model") if isinstance(data.get(table), dict) else None
            if isinstance(rel, str) and rel and not os.path.exists(self.resolve(rel)):
                nth = 0 if table == "source" or "source" not in data else 1
                problems.append(f"{self._line('model', nth)}: [{table}] model {rel!r} does "
                                "not exist")
        for i, step in enumerate(self._steps()):
            where = self._step_line(i)
            if step.get("op") == "transplant" and "source" not in data:
                problems.append(f"{where}: a transplant step needs a [source] model")
            for key, what in (("rules", "rules file"), ("data", "data")):
                if isinstance(step.get(key), str) and step[key] and \
                        not os.path.exists(self.resolve(step[key])):
                    problems.append(f"{where}: {what} {step[key]!r} does not exist")
        return problems

    def _steps(self) -> list[dict]:
        steps = self.data.get("step")
        return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []

    def _check_steps_against_target(self, broken: set[int]) -> list[str]:
        """Selectors and heads are checked against the target until a step reshapes it."""
        target = self.data.get("target")
        rel = target.get("model") if isinstance(target, dict) else None
        if not isinstance(rel, str) or not rel or not os.path.exists(self.resolve(rel)):
            return []
        try:
            inventory = inspect_fn(self.resolve(rel))
        except SurgeryError as e:
            return [f"{self._line('model')}: {e}"]
        problems = []
        steps = self.data.get("step") if isinstance(self.data.get("step"), list) else []
        for i, step in enumerate(steps):
            if i in broken or not isinstance(step, dict):
                continue
            where, op = self._step_line(i), step.get("op")
            if op == "head" and not any(l.class_name == "Dense" for l in inventory.layers):
                problems.append(f"{where}: a head step on a model without a Dense head "
                                f"({rel}); add one first or name the layer")
            if op in ("freeze", "unfreeze", "reinit"):
                for sel in step.get("select", []) + step.get("except", []):
                    try:
                        select(list(inventory.variables), [sel], what=rel)
                    except SurgeryError as e:
                        problems.append(f"{where}: {e}")
            if op in ("head", "edit", "lora"):
                break
        return problems

    def _check_verify(self) -> list[str]:
        verify, problems = self.data.get("verify"), []
        if not isinstance(verify, dict):
            return problems
        n = len(self.data["step"]) if isinstance(self.data.get("step"), list) else 0
        preserve = verify.get("preserve")
        for idx in preserve if isinstance(preserve, list) else []:
            if not isinstance(idx, int) or not 1 <= idx <= n:
                problems.append(f"{self._line('preserve')}: preserve lists step {idx!r}; "
                                f"steps are 1..{n}")
        if isinstance(verify.get("inputs"), str) and verify["inputs"] and \
                not os.path.exists(self.resolve(verify["inputs"])):
            problems.append(f"{self._line('inputs')}: inputs {verify['inputs']!r} do not "
                            "exist")
        return problems

    # -------------------------------------------------------------- running
    def _run_step(self, model, step: dict, source: str | None, dry_run: bool):
        """Runs one step: (model, summary, {variable path: what this step did to it})."""
        import surgery

        op = step["op"]
        if op == "head":
            new, report = surgery.replace_head(model, step["classes"],
                                               keep_classes=step.get("keep_classes"),
                                               activation=step.get("activation"),
                                               head=step.get("layer"), seed=step.get("seed"))
            head = report.layer
            return new, str(report), {f"{head}/kernel": "initialized (new head)",
                                      f"{head}/bias": "initialized (new head)"}
        if op in ("freeze", "unfreeze"):
            return self._freeze_step(model, step)
        if op == "reinit":
            return self._reinit_step(model, step)
        if op == "transplant":
            return self._transplant_step(model, step, source)
        if op == "lora":
            return self._lora_step(model, step)
        if op == "edit":
            return self._edit_step(model, step)
        return self._finetune_step(model, step, dry_run)

    # Each step runner returns (model, summary, {variable path: note}); a note starts with the
    # report word (surgery.outcomes) for what the step did to that variable.
    def _freeze_step(self, model, step: dict):
        """A freeze/unfreeze step: every variable of the layers it reached is noted."""
        import surgery

        op = step["op"]
        fn = surgery.freeze if op == "freeze" else surgery.unfreeze
        kw = {"bn": step.get("bn", "inference")} if op == "freeze" else {}
        r = fn(model, *step.get("select", []), except_=step.get("except", []),
               allow_partial=False, must_save=True, **kw)
        word = Outcome.FROZEN if op == "freeze" else Outcome.TRAINABLE
        reached = {p for p, *_ in r.layers}
        with surgery.open_weights(model) as w:
            notes = {v.path: word.value for v in w.variables()
                     if any(owner in reached for owner, _ in v.owners)}
        return model, f"{len(r.layers)} layers; trainable params {r.after[0]:,}", notes

    def _reinit_step(self, model, step: dict):
        """A reinit step: each variable drawn afresh, with its initializer."""
        import surgery

        r = surgery.reinitialize(model, *step["select"], initializer=step.get("initializer"),
                                 seed=step.get("seed"))
        return model, f"{len(r.variables)} variables {Outcome.REINITIALIZED}", {
            p: f"{Outcome.REINITIALIZED} ({init})" for p, init in r.variables}

    def _transplant_step(self, model, step: dict, source: str | None):
        """A transplant step from the plan's [source]: each target's transplant word."""
        import surgery

        rules = step.get("rules")
        if isinstance(rules, str):
            rules = self.resolve(rules)
        r = surgery.transplant(source, model, rules, strict=step.get("strict", False))
        c = r.counts()
        notes = {e.path: (f"{e.status} from {e.source}" if e.status == Outcome.COPIED else
                          f"{e.status} from {e.source} via {e.adapter}"
                          if e.status == Outcome.CONVERTED else e.status.value)
                 for e in r.entries}
        words = (Outcome.COPIED, Outcome.CONVERTED, Outcome.MISSING, Outcome.MISMATCHED)
        return model, ", ".join(f"{c[w.value]} {w}" for w in words), notes

    def _lora_step(self, model, step: dict):
        """A lora step: the adapters are new variables of the layers reached."""
        import surgery

        r = surgery.enable_lora(model, *step.get("select", []), rank=step["rank"],
                                alpha=step.get("alpha"))
        return model, str(r), {f"{p}/lora_kernel_{x}": f"{Outcome.NEW} (LoRA)"
                               for p in r.layers for x in "ab"}

    def _edit_step(self, model, step: dict):
        """An edit step: its converted and initialized variables, from the edit's report."""
        from .. import edit

        action = step["action"]
        if action == "delete-channels":
            chans = step.get("channels") or edit.lowest_channels(
                model, step["layer"], ratio=step.get("ratio"))
            result = edit.delete_channels(model, step["layer"], chans)
        elif action == "widen":
            result = edit.widen(model, step["layer"], step["units"], seed=step.get("seed"))
        elif action == "deepen":
            result = edit.deepen(model, step["after"], residual=step.get("residual", False))
        elif action == "delete-layer":
            result = edit.delete_layer(model, step["layer"])
        elif action == "insert":
            result = edit.insert_layer(model, step["after"], step["layer_json"])
        else:
            result = edit.change_input(model, tuple(step["shape"]))
        notes = {p: f"{Outcome.CONVERTED} ({result.report.operation})" for p in
                 result.report.converted}
        notes.update({p: f"{Outcome.INITIALIZED} ({why})" for p, why in
                      result.report.initialized})
        return result.model, result.report.operation, notes

    def _finetune_step(self, model, step: dict, dry_run: bool):
        """A finetune step (not run in a dry run)."""
        import surgery

        if dry_run:
            return model, f"would train {step.get('epochs', 1)} epochs on {step['data']} " \
                          "(not run in a dry run)", {}
        r = surgery.finetune(model, self.resolve(step["data"]), train=step.get("train", ()),
                             freeze=step.get("freeze", ()), epochs=step.get("epochs", 1),
                             batch_size=step.get("batch_size", 32), lr=step.get("lr", 1e-3),
                             seed=step.get("seed", 0), bn=step.get("bn", "inference"),
                             verbose=0)
        return r.model, f"trained {len(r.epochs)} epochs, best {r.best_epoch}", {}

    def _execute(self, dry_run: bool) -> tuple[Any, PlanReport]:
        import surgery
        from ..model.verify import _load_inputs, snapshot
        from ..model.verify import verify as compare

        data = self.data
        target_path = self.resolve(data["target"]["model"])
        source = self.resolve(data["source"]["model"]) if "source" in data else None
        original = surgery.load_model(target_path)
        model = surgery.load_model(target_path)
        verify = data.get("verify", {})
        preserve = set(verify.get("preserve", []))
        atol = float(verify.get("atol", 1e-5))
        xs = _load_inputs(self.resolve(verify["inputs"]), original) \
            if preserve and "inputs" in verify else None  # bad inputs fail here, exit 2
        report = PlanReport(self.path, dry_run, params_before=original.count_params())
        worst, diverged = 0.0, []
        notes: dict[str, list[str]] = {}
        for i, step in enumerate(data["step"], 1):
            before = snapshot(model) if i in preserve else None  # steps may act in place
            model, summary, step_notes = self._run_step(model, step, source, dry_run)
            for path, note in step_notes.items():
                notes.setdefault(path, []).append(f"step {i}: {note}")
            entry = {"op": step["op"], "summary": summary}
            if i in preserve:
                try:
                    v = compare(before, model, xs, atol=atol, seed=int(verify.get("seed", 0)))
                    diff = v.max_abs_diff
                    entry["verify"] = v.to_dict()
                    if not v.ok:
                        diverged.append(f"step {i}: {v.reason}")
                except ShapeError:  # the step changed the outputs' shape
                    diff = float("inf")
                entry["max_output_diff"] = diff
                worst = max(worst, diff)
            report.steps.append(entry)
        report.params_after = model.count_params()
        report.variables = _variable_actions(original, model)
        for row in report.variables:
            if row["path"] in notes:
                row["steps"] = notes[row["path"]]
        if preserve:
            report.verification["max_output_diff"] = worst
            report.verification["atol"] = atol
            report.verification["diverged"] = diverged
        allowed = verify.get("changes")
        if allowed is not None:
            from ..selection import compile_selector

            preds = [compile_selector(s) for s in allowed]
            with surgery.open_weights(original) as a, surgery.open_weights(model) as b:
                unexpected = [k for k in a if k in b and a.shape(k) == b.shape(k)
                              and not any(p(a.info(k)) for p in preds)
                              and not np.array_equal(a.read(k), b.read(k))]
            report.verification["unexpected_changes"] = unexpected
        return model, report

    def dry_run(self) -> PlanReport:
        """What the plan will do to every variable; nothing is written (finetune steps are
        not run)."""
        return self._execute(dry_run=True)[1]

    def apply(self, *, overwrite: bool | None = None) -> PlanReport:
        """Runs the plan, verifies, writes the model and the JSON report.

        Raises:
            CheckFailed: verification failed; nothing written.
        """
        import keras as _keras
        import tensorflow as _tf

        import surgery

        out = self.data.get("output", {})
        overwrite = bool(out.get("overwrite", False)) if overwrite is None else overwrite
        inputs = self.input_paths()
        outputs = [self.resolve(out[k]) for k in ("model", "report")
                   if isinstance(out.get(k), str)]
        check_outputs(outputs, inputs=inputs, overwrite=overwrite)  # before the slow part
        model, report = self._execute(dry_run=False)
        v = report.verification
        if v.get("max_output_diff", 0.0) > v.get("atol", 1e-5):
            raise CheckFailed(f"{self.path}: verification failed: outputs changed by "
                              f"{v['max_output_diff']:.3g} (atol {v['atol']:g}); nothing was "
                              "written")
        if v.get("diverged"):
            raise CheckFailed(f"{self.path}: verification failed: {'; '.join(v['diverged'])}; "
                              "nothing was written")
        if v.get("unexpected_changes"):
            raise CheckFailed(f"{self.path}: verification failed: variables changed outside "
                              f"[verify] changes: {', '.join(v['unexpected_changes'][:5])}; "
                              "nothing was written")
        models = [self.resolve(self.data["target"]["model"])] + (
            [self.resolve(self.data["source"]["model"])] if "source" in self.data else [])
        report.hashes = {"plan": _sha256(self.path), **{os.path.relpath(p, self.folder):
                                                          _sha256(p) for p in models}}
        report.versions = {"surgery": surgery.__version__, "keras": _keras.__version__,
                           "tensorflow": _tf.__version__}
        if "model" in out:
            report.output = surgery.save_model(model, self.resolve(out["model"]),
                                               overwrite=overwrite, inputs=inputs)
        if "report" in out:
            with atomic_path(self.resolve(out["report"]), inputs=inputs,
                             overwrite=overwrite) as tmp:
                with open(tmp, "w") as f:
                    json.dump(report.to_dict(), f, indent=2, default=str)
        return report


def _variable_actions(old, new) -> list[dict]:
    """One row per variable of either model, its action in the report words: ``new``,
    ``removed``, ``reshaped (a) -> (b)``, ``changed`` or ``unchanged``, then ``frozen`` or
    ``trainable`` where the flag changed."""
    import surgery

    with surgery.open_weights(old) as a, surgery.open_weights(new) as b:
        rows = []
        for key in b:
            info = b.info(key)
            if key not in a:
                rows.append({"path": key, "action": Outcome.NEW.value})
                continue
            was = a.info(key)
            parts = []
            if a.shape(key) != b.shape(key):
                parts.append(f"{Outcome.RESHAPED} {a.shape(key)} -> {b.shape(key)}")
            elif not np.array_equal(a.read(key), b.read(key)):
                parts.append(Outcome.CHANGED.value)
            else:
                parts.append(Outcome.UNCHANGED.value)
            if was.trainable != info.trainable:
                parts.append((Outcome.TRAINABLE if info.trainable else Outcome.FROZEN).value)
            rows.append({"path": key, "action": ", ".join(parts)})
        for key in a:
            if key not in b:
                rows.append({"path": key, "action": Outcome.REMOVED.value})
    return rows
