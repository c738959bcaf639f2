"""`surgery.transplant`: fill a target with a source's weights when the two differ.

Plan, then apply: `build_plan` matches names (no arrays read); an evaluation pass reads each
source tensor once, runs the adapters, checks every result against its target, and counts
non-finite values, building the `TransplantReport`; only then (not on a dry run, and not when
strict checks fail) are the values written: assigned one variable at a time into a live model,
or streamed into a new `.keras` archive for file -> file work (no TensorFlow needed).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Iterator, Sequence

import numpy as np

from .adapters import get_adapter, layer_config, run_adapter
from ..entries import VariableInfo
from ..errors import CheckFailed, InputError, OptionError, OutputError
from .matching import TransplantPlan, batchnorm_stat_warnings, build_plan
from ..outcomes import Outcome
from .report import Entry, TransplantReport
from .rules import Rules, RulesError, load_rules
from ..io.sources import WeightSource, open_weights

__all__ = ["transplant", "transplant_file", "evaluate"]


def _path_of(source: Any) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "name", None)
    return name if isinstance(source, WeightSource) and isinstance(name, str) and \
        os.path.exists(name) else None


def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


_COUNT_BLOCK = 1 << 22  # elements per block of an exact non-finite count


def _count_nonfinite(a: np.ndarray) -> int:
    """NaN/Inf values of `a` (as float32), without copying it: a finite sum proves every
    value finite (NaN and Inf propagate through a sum), so only a tensor whose sum is not
    finite is counted exactly, one block at a time."""
    if a.dtype.kind != "f" and str(a.dtype) != "bfloat16":
        return 0
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is what is counted
        if a.dtype != np.float64 and np.isfinite(a.sum(dtype=np.float32)):
            return 0
        flat = a.reshape(-1)
        return sum(int(block.size - np.isfinite(block.astype(np.float32)).sum())
                   for block in (flat[i:i + _COUNT_BLOCK]
                                 for i in range(0, flat.size, _COUNT_BLOCK)))


def evaluate(plan: TransplantPlan, source: WeightSource, targets: list[VariableInfo],
             nonfinite: dict[str, int], initial: WeightSource | None = None
             ) -> Iterator[tuple[VariableInfo, Entry, np.ndarray | None]]:
    """Runs the plan over the source, one target at a time.

    Yields (target info, report entry, array or None); arrays are cast to the target's dtype.
    Counts NaN/Inf values of each source tensor read into `nonfinite`. `initial` (the target,
    before anything is written) gives growing adapters the target's own values for new units.
    Raises the adapters'
    errors (naming the target, both shapes and the adapter) before the caller has written
    anything for that target.
    """
    cache: dict[tuple, Any] = {}
    by_path = {t.path: t for t in targets}
    last_use = {(s.adapter.target, s.adapter.name, s.sources): i  # when a result is dropped
                for i, s in enumerate(plan.steps) if s.adapter is not None}

    def read(key: str) -> np.ndarray:
        a = source.read(key)
        n = _count_nonfinite(a)
        if n:
            nonfinite[key] = n
        return a

    for i, step in enumerate(plan.steps):  # one tensor alive at a time (and one adapter's)
        t = by_path[step.target]
        if step.action in (Outcome.SKIPPED, Outcome.MISSING, Outcome.MISMATCHED):
            s = source.info(step.sources[0]) if step.sources else None
            yield t, Entry(t.path, step.action, s.path if s else None,
                           step.matched_by, None, s.shape if s else None, t.shape), None
            continue
        if step.action == Outcome.COPIED:
            array = read(step.sources[0])
            s = source.info(step.sources[0])
            note = "" if s.dtype == t.dtype else f"cast {s.dtype} -> {t.dtype}"
            yield t, Entry(t.path, Outcome.COPIED, s.path, step.matched_by, None, s.shape,
                           t.shape, note), array.astype(_np_dtype(t.dtype), copy=False)
            del array  # released before the next tensor is read
            continue
        rule = step.adapter
        adapter = get_adapter(rule.name)
        group = (rule.target, rule.name, step.sources)
        if group not in cache:
            if adapter.is_layer:
                inputs = {role: read(k) for role, k in zip(step.roles, step.sources)}
                outs = {o: by_path[f"{rule.target.rstrip('/')}/{o}"].shape
                        for o in adapter.outputs}
                where = rule.target
            else:
                inputs = {"": read(step.sources[0])}
                outs = {"": t.shape}
                where = t.path
            fresh = None if initial is None or adapter.is_layer else \
                (lambda p=t.path: initial.read(p))
            settings = layer_config(initial, where) if adapter.is_layer and initial is not None \
                else None  # the target layer's config: BatchNorm adapters compare epsilon
            result = run_adapter(adapter, inputs, outs, rule.option_dict, where, initial=fresh,
                                 layer=settings)
            del inputs  # the source tensors: not needed past the adapter
            if result.lossy and not rule.lossy:
                raise RulesError(f"{where}: adapter '{rule.name}' would drop source values "
                                 f"({result.note}); add lossy = true to its rule to accept that")
            cache = {group: result}
        result = cache[group]
        array = result.arrays[step.output]
        src_shape = source.info(step.sources[0]).shape if len(step.sources) == 1 else \
            tuple(source.info(k).shape for k in step.sources)
        yield t, Entry(t.path, Outcome.CONVERTED, ", ".join(step.sources), "rule", rule.name,
                       src_shape, t.shape, result.note), array.astype(_np_dtype(t.dtype),
                                                                      copy=False)
        del array, result
        if last_use[group] == i:
            del cache[group]


def _report(plan, source, target_name, entries, nonfinite, strict, dry_run, port=None
            ) -> TransplantReport:
    return TransplantReport(source=source.name, target=target_name, entries=tuple(entries),
                            unused=plan.unused, nonfinite=tuple(nonfinite.items()),
                            warnings=plan.warnings, strict=strict, dry_run=dry_run,
                            port=port.pairs if port is not None else ())


def _port(source: WeightSource, target: Any, rules: Any, layout: str, safe_mode: bool = True
          ) -> tuple[Any, Any]:
    """(rules, PortPlan or None): with ``layout="torch"`` the rules inferred from names and
    shapes (`surgery.port_rules`, the user's `rules` applied first); a `PortPlan` passed as
    `rules` is used as it is."""
    from .port import PortPlan, port_rules

    if isinstance(rules, PortPlan):
        return rules.rules, rules
    if layout == "keras":
        return rules, None
    if layout != "torch":
        raise OptionError(f"layout must be 'keras' or 'torch', got {layout!r}")
    plan = port_rules(source, target, rules, safe_mode=safe_mode)
    return plan.rules, plan


def _check_strict(report: TransplantReport) -> None:
    if report.strict and not report.ok:
        problems = report.problems
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        err = CheckFailed(f"strict transplant into {report.target} failed with "
                          f"{len(problems)} problem{'s' if len(problems) > 1 else ''}: "
                          f"{'; '.join(problems[:3])}{more}; nothing was changed or written",
                          **_first_problem(report))
        err.report = report
        raise err


def _first_problem(report: TransplantReport) -> dict:
    """The structured fields of a strict failure: its first mismatched variable with both
    shapes (source, target), else its first missing variable, else its first non-finite source
    tensor."""
    if report.mismatched:
        first = report.mismatched[0]
        return {"variable": first.path, "shapes": (first.source_shape, first.target_shape)}
    if report.missing:
        return {"variable": report.missing[0].path}
    return {"variable": report.nonfinite[0][0]} if report.nonfinite else {}


def _plan(source: WeightSource, target: WeightSource, rules) -> tuple[Rules, TransplantPlan]:
    rules = load_rules(rules)
    plan = build_plan(source.variables(), target.variables(), rules, source_name=source.name)
    extra = batchnorm_stat_warnings(  # PyTorch BN statistics copied as they are
        plan, target.variables(), lambda layer: (layer_config(target, layer) or {}).get(
            "epsilon"), source_format=source.format)
    return rules, replace(plan, warnings=plan.warnings + extra)


def _memory_needs(plan: TransplantPlan, source: WeightSource, target: WeightSource
                  ) -> list[tuple[str, str, int, str]]:
    """What each step of a file -> file transplant holds at once, from shapes alone (for
    `check_memory`): a copied tensor (and its cast), one adapter's inputs and outputs, or a
    target tensor kept as it is."""
    from ..io.shards import format_size, tensor_bytes

    def size(info: VariableInfo) -> int:
        return tensor_bytes(info.shape, info.dtype)

    by_path = {t.path: t for t in target.variables()}
    needs: list[tuple[str, str, int, str]] = []
    adapters: dict[tuple, tuple[int, int, int]] = {}  # -> (index in needs, read, made)
    for step in plan.steps:
        t = by_path[step.target]
        if step.action == Outcome.COPIED:
            s = source.info(step.sources[0])
            cast = size(t) if s.dtype != t.dtype else 0
            needs.append((source.name, f"tensor {s.path}", size(s) + cast, "read" + (
                f" + {format_size(cast)} cast to {t.dtype}" if cast else " as it is")))
        elif step.action == Outcome.CONVERTED:
            rule = step.adapter
            key = (rule.target, rule.name, step.sources)
            if key not in adapters:
                many = "s" if len(step.sources) > 1 else ""
                needs.append((source.name, f"tensor{many} {', '.join(step.sources)} -> "
                              f"{rule.target}", 0, ""))
                adapters[key] = (len(needs) - 1, sum(size(source.info(k)) for k in step.sources),
                                 0)
            at, read, made = adapters[key]
            adapters[key] = (at, read, made + size(t))
            needs[at] = needs[at][:2] + (read + made + size(t), f"{format_size(read)} read + "
                                         f"{format_size(made + size(t))} made by adapter "
                                         f"'{rule.name}'")
        else:
            needs.append((target.name, f"tensor {t.path}", size(t), "kept from the target"))
    return needs


def _one_pass(src: WeightSource, plan: TransplantPlan, strict: bool, dry_run: bool) -> bool:
    """Whether a transplant into a live model may read each tensor once and assign it as it
    goes (edits carry their weights this way): from another live model, plain copies only
    (once planned, nothing can fail half-way), and no check that must pass before anything
    changes (strict, dry run)."""
    from ..io.sources import LiveModelSource

    return isinstance(src, LiveModelSource) and not strict and not dry_run and \
        all(step.adapter is None for step in plan.steps)


def transplant(source: Any, target: Any, rules: Any = None, *, strict: bool = False,
               dry_run: bool = False, layout: str = "keras") -> TransplantReport:
    """Fills a live `target` model with `source`'s weights, in place (like `load_weights`).

    Args:
        source: a live model or any path `open_weights` reads (`.keras`, `.weights.h5`,
            Keras 2 `.h5`, `.npz`, `.safetensors`, SavedModel/Hub directory, TF checkpoint).
        target: a live Keras 3 or tf_keras model.
        rules: a rules TOML path, dict or `Rules` (renames, skips, adapters, matching mode).
        strict: fail (nothing changed) on missing, mismatched or non-finite weights, or a rule
            that matches nothing.
        dry_run: compute the full report, change nothing.
        layout: ``keras`` (default), or ``torch`` for a PyTorch state dict: the rules are then
            inferred from names and shapes (`surgery.port_rules`; `rules` are yours, applied
            first), and the report's `port` lists the pairs.

    Returns:
        A `TransplantReport` (`.copied`, `.adapted`, `.missing`, `.unused`, `.mismatched`,
        `.ok`, `.to_dict()`, `str()` table).

    Raises:
        CheckFailed: strict checks failed (its `.report` has the details).
        SurgeryError: unreadable source, bad rules, an adapter whose options don't fit.

    Example:
    ```python
    model = build_gray_cnn()
    report = surgery.transplant("sample_models/cnn.keras", model, {
        "adapter": [{"target": "block1_conv/kernel", "name": "adapt_in_channels"}]})
    print(report)
    ```
    """
    from ..io.sources import LiveModelSource

    tgt = open_weights(target)
    if not isinstance(tgt, LiveModelSource):
        raise InputError("transplant fills a live model; for files use "
                         "surgery.transplant_file(source, target, output)")
    src = open_weights(source)
    try:
        rules, port = _port(src, target, rules, layout)
        rules, plan = _plan(src, tgt, rules)
        strict = strict or rules.strict
        nonfinite: dict[str, int] = {}
        if _one_pass(src, plan, strict, dry_run):  # nothing can fail half-way: read once
            entries, written = [], []
            for info, entry, array in evaluate(plan, src, tgt.variables(), nonfinite, tgt):
                entries.append(entry)
                if array is not None:
                    tgt.handles[info.key].assign(array)
                    written.append(info.path)
            tgt.finalize(written)  # Normalization: its mean and variance tensors remade
            return _report(plan, src, tgt.name, entries, nonfinite, strict, dry_run, port)
        # Evaluation pass: every adapter runs and every shape is checked before the model
        # is touched, so a failure leaves it as it was.
        entries = [entry for _, entry, _ in evaluate(plan, src, tgt.variables(), nonfinite, tgt)]
        report = _report(plan, src, tgt.name, entries, nonfinite, strict, dry_run, port)
        _check_strict(report)
        if dry_run:
            return report
        written = []
        for info, _, array in evaluate(plan, src, tgt.variables(), {}, tgt):
            if array is not None:
                tgt.handles[info.key].assign(array)
                written.append(info.path)
        tgt.finalize(written)
        return report
    finally:
        if src is not source:
            src.close()


def transplant_file(source: Any, target: str, output: str, rules: Any = None, *,
                    strict: bool = False, dry_run: bool = False, overwrite: bool = False,
                    safe_mode: bool = True, inputs: Sequence = (),
                    max_shard_size: Any = None, layout: str = "keras",
                    write_rules: Any = None, max_memory: Any = None) -> TransplantReport:
    """File -> file transplant: writes `target`'s architecture with `source`'s weights to
    `output` (a `.keras`, or Keras 3 sharded weights), streaming one tensor at a time without
    TensorFlow.

    Args:
        source: any source `open_weights` reads.
        target: a `.keras` file whose architecture (and initial weights) the output takes.
        output: the `.keras` to write, atomically; never an input. Or a `.weights.json` with
            `max_shard_size`: the target's weights, filled, as Keras 3 sharded weights (the
            layout `model.save_weights(output, max_shard_size=)` writes, which
            `model.load_weights(output)` reads), written as a set: all shards, or none.
        max_shard_size: the largest shard of a `.weights.json` output (bytes, or "2GB",
            "500MB", ...; `surgery.io.shards.parse_size`).
        max_memory: the most memory one step may hold (bytes, or "800MB", "1.5GB"): the
            tensors move one at a time, so a step is one tensor (with its cast), or one
            adapter's inputs and outputs. A larger step is refused (`OptionError`, naming it,
            its size and the limit) before anything is read or written.
        rules, strict, dry_run: as in `transplant`.
        overwrite: replace an existing output.
        inputs: other files the caller read (an architecture file, probe inputs): never
            written.
        safe_mode: refuse a target config that would run code from outside Keras.
        layout: as in `transplant` (``torch`` builds the target's graph from its config, which
            imports TensorFlow).
        write_rules: with ``layout="torch"``, a TOML file to write the inferred rules to (after
            the output, or after a dry run; atomically, never over an input, an existing file
            only with `overwrite`): ``rules=write_rules`` repeats the port exactly.

    Raises:
        CheckFailed, SurgeryError: as `transplant`; nothing is written.

    Example:
    ```python
    surgery.transplant_file("pretrained.keras", "new_arch.keras", "filled.keras")
    ```
    """
    from ..io.atomic import check_output
    from ..io.kerasfile import KerasFileSource
    from ..io.kerasfile_writer import write_keras_archive
    from ..io.safety import check_config
    from ..io.shards import check_memory, check_sharded_output, parse_memory, write_keras_shards

    memory = parse_memory(max_memory)
    readers = [_path_of(source), target, *inputs] + ([rules] if isinstance(rules, str) else [])
    tgt = open_weights(target)
    if not isinstance(tgt, KerasFileSource):
        tgt.close()
        raise InputError(f"{target}: a file -> file transplant writes a .keras target; load "
                         "other targets with surgery.load_model and use surgery.transplant")
    src = open_weights(source)
    try:
        if safe_mode:
            check_config(tgt.config, target)
        rules, port = _port(src, target, rules, layout, safe_mode)
        rules = load_rules(rules)
        readers.extend(rules.files())  # vocabulary files the rules read are inputs too
        _check_rules_output(write_rules, port, readers, output, overwrite)
        limit = None
        if not dry_run:
            limit = check_sharded_output(output, max_shard_size)
            check_output(output, inputs=readers, overwrite=overwrite)
            if not str(output).lower().endswith((".keras", ".weights.json")):
                raise OutputError(f"{output}: a file -> file transplant writes a .keras (or "
                                  "sharded .weights.json); for another kind, load the target "
                                  "(surgery.load_model), transplant into it and save it with "
                                  "surgery.save_model", path=str(output))
        rules, plan = _plan(src, tgt, rules)
        check_memory(_memory_needs(plan, src, tgt), memory)  # before any tensor is read
        strict = strict or rules.strict
        nonfinite: dict[str, int] = {}
        entries: list[Entry] = []
        if dry_run:
            entries = [e for _, e, _ in evaluate(plan, src, tgt.variables(), nonfinite, tgt)]
            report = _report(plan, src, target, entries, nonfinite, strict, True, port)
            _check_strict(report)
            return _written(report, port, write_rules, readers + [output], overwrite)

        def values():
            for info, entry, array in evaluate(plan, src, tgt.variables(), nonfinite, tgt):
                entries.append(entry)
                if array is not None:
                    yield info.key, array
                    del array  # one tensor at a time: released before the next is read

        def check() -> TransplantReport:  # runs before the output is renamed into place
            report = _report(plan, src, output, entries, nonfinite, strict, False, port)
            _check_strict(report)
            return report

        replaced = {t.key for t, step in zip(tgt.variables(), plan.steps)
                    if step.action in (Outcome.COPIED, Outcome.CONVERTED)}
        if limit is not None:  # streamed into the shards as into the archive
            report = write_keras_shards(tgt._h5, output, limit, values=values(),
                                        replaced=replaced, check=check, inputs=readers,
                                        order=[t.key for t in tgt.variables()],
                                        overwrite=overwrite, where=target)[1]
        else:
            report = write_keras_archive(tgt, output, replaced, values(), check,
                                         inputs=readers, overwrite=overwrite)
        return _written(report, port, write_rules, readers + [output], overwrite)
    finally:
        if src is not source:
            src.close()
        tgt.close()


def _check_rules_output(path: Any, port: Any, readers: list, output: Any,
                        overwrite: bool) -> None:
    """`write_rules` asks for a port's rules and names a writable file (before any work)."""
    if path is None:
        return
    if port is None:
        raise OptionError("write_rules writes the rules a port infers: give layout=\"torch\" "
                          "(--from torch)")
    from ..io.atomic import check_output

    check_output(path, inputs=readers + [output], overwrite=overwrite)


def _written(report: TransplantReport, port: Any, path: Any, inputs: list,
             overwrite: bool) -> TransplantReport:
    """Writes the port's rules to `path` (when asked) once the transplant succeeded."""
    if path is not None and port is not None:
        from .port import write_port_rules

        write_port_rules(port, path, inputs=inputs, overwrite=overwrite)
    return report
