"""Matching source tensors to target variables: the plan a transplant applies.

Order, each step recorded: (1) explicit rules (regex renames of source keys, skips, adapters);
(2) exact canonical path; (3) structural: layers of the same class with the same variable names
and shapes, aligned in model order (auto-named ``conv2d_3`` vs ``conv2d_7``, a rebuilt model);
(4) only with ``match = "shape"``, a shape that is unique on both sides. Plain Python over
`VariableInfo` records: no arrays are read here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Sequence

from ..entries import VariableInfo
from .rules import AdapterRule, Rules, RulesError
from ..selection import closest_paths, compile_selector

__all__ = ["Step", "TransplantPlan", "build_plan"]


@dataclass(frozen=True)
class Step:
    """What happens to one target variable.

    Attributes:
        target: the target variable's path.
        action: ``copy``, ``adapt``, ``skip``, ``missing`` or ``mismatch``.
        sources: source keys it reads (original keys, in the adapter's role order).
        roles: for layer adapters, the role of each source.
        matched_by: ``rule``, ``exact``, ``structural`` or ``shape``.
        adapter: the adapter rule, for ``adapt``.
        output: for layer adapters, which of the adapter's outputs this target takes.
    """

    target: str
    action: str
    sources: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    matched_by: str | None = None
    adapter: AdapterRule | None = None
    output: str = ""


@dataclass(frozen=True)
class TransplantPlan:
    steps: tuple[Step, ...]
    unused: tuple[str, ...]
    skipped_sources: tuple[str, ...]
    warnings: tuple[str, ...]
    renamed: tuple[tuple[str, str], ...]  # (original key, key after renames)


def _renamed_info(info: VariableInfo, key: str) -> VariableInfo:
    return VariableInfo(key, info.shape, info.dtype, info.trainable, info.layer,
                        info.layer_class, info.owners, info.key)


def build_plan(sources: Sequence[VariableInfo], targets: Sequence[VariableInfo],
               rules: Rules, *, source_name: str = "source") -> TransplantPlan:
    """Matches `sources` onto `targets` under `rules`.

    Raises:
        RulesError: two source tensors renamed onto one target key, a target claimed by two
            adapter rules, an adapter whose source tensors don't exist.
    """
    warnings: list[str] = []
    src_by_key = {s.path: s for s in sources}
    # 1. renames ----------------------------------------------------------------------------
    renamed: dict[str, str] = {}
    origin: dict[str, str] = {}
    hits = [0] * len(rules.renames)
    for s in sources:
        key = s.path
        for i, r in enumerate(rules.renames):
            new = r.pattern.sub(r.replacement, key)
            if new != key or r.pattern.search(key):
                hits[i] += 1
            key = new
        if key in origin:
            raise RulesError(f"two source tensors map onto {key!r}: {origin[key]!r} and "
                             f"{s.path!r}; fix the renames or skip one of them")
        origin[key] = s.path
        renamed[s.path] = key
    for r, n in zip(rules.renames, hits):
        if n == 0:
            warnings.append(f"rename {r.text} matches no source key in {source_name}; closest: "
                            f"{', '.join(closest_paths(r.pattern.pattern, src_by_key, 3))}")
    # skips ---------------------------------------------------------------------------------
    skipped_targets: set[str] = set()
    skipped_sources: list[str] = []
    for sel in rules.skips:
        pred = compile_selector(sel)
        t_hit = {t.path for t in targets if pred(t)}
        s_hit = [s.path for s in sources
                 if s.path not in skipped_sources and
                 (pred(s) or pred(_renamed_info(s, renamed[s.path])))]
        if not t_hit and not s_hit:
            warnings.append(f"skip {sel!r} matches nothing; closest: "
                            f"{', '.join(closest_paths(sel, [t.path for t in targets], 3))}")
        skipped_targets |= t_hit
        skipped_sources += s_hit
    used: set[str] = set(skipped_sources)
    steps: dict[str, Step] = {t.path: Step(t.path, "skip") for t in targets
                              if t.path in skipped_targets}
    claimed: dict[str, AdapterRule] = {}
    target_by_path = {t.path: t for t in targets}

    def resolve(key: str, what: str) -> str:
        if key in src_by_key:
            return key
        if key in origin:
            return origin[key]
        raise RulesError(f"{what}: no source tensor {key!r} in {source_name}; closest: "
                         f"{', '.join(closest_paths(key, list(src_by_key) + list(origin), 3))}")

    def claim(path: str, rule: AdapterRule) -> None:
        if path in claimed:
            raise RulesError(f"{path}: two adapter rules claim it ({claimed[path].name} and "
                             f"{rule.name}); keep one")
        claimed[path] = rule

    # adapters ------------------------------------------------------------------------------
    from .adapters import get_adapter

    for rule in rules.adapters:
        adapter = get_adapter(rule.name)
        if adapter.is_layer:
            layer = rule.target.rstrip("/")
            outs = [f"{layer}/{o}" for o in adapter.outputs]
            missing = [o for o in outs if o not in target_by_path]
            if missing:
                have = [t.path for t in targets if t.layer == layer or
                        t.path.startswith(layer + "/")]
                raise RulesError(f"adapter '{rule.name}' for layer {layer!r}: the target has no "
                                 f"{', '.join(missing)} (its variables: "
                                 f"{', '.join(have) or 'none'}); name a layer with "
                                 f"{', '.join(adapter.outputs)}")
            keys = tuple(resolve(k, f"adapter '{rule.name}' for {layer}")
                         for _, k in rule.sources)
            roles = tuple(r for r, _ in rule.sources)
            used.update(keys)
            for out, path in zip(adapter.outputs, outs):
                claim(path, rule)
                steps[path] = Step(path, "adapt", keys, roles, "rule", rule, out)
            continue
        pred = compile_selector(rule.target)
        matched = [t for t in targets if t.path == rule.target] or \
            [t for t in targets if pred(t)]
        if not matched:
            warnings.append(f"adapter '{rule.name}' target {rule.target!r} matches no target "
                            "variable; closest: "
                            f"{', '.join(closest_paths(rule.target, target_by_path, 3))}")
            continue
        if rule.source is not None and len(matched) > 1:
            raise RulesError(f"adapter '{rule.name}': source {rule.source!r} can't feed "
                             f"{len(matched)} targets ({matched[0].path}, {matched[1].path}...); "
                             "give one target")
        for t in matched:
            key = resolve(rule.source or t.path, f"adapter '{rule.name}' for {t.path}")
            claim(t.path, rule)
            used.add(key)
            steps[t.path] = Step(t.path, "adapt", (key,), (), "rule", rule)

    # 2. exact ------------------------------------------------------------------------------
    for t in targets:
        if t.path in steps:
            continue
        key = origin.get(t.path)
        if key is None or key in used:
            continue
        used.add(key)
        s = src_by_key[key]
        action = "copy" if tuple(s.shape) == tuple(t.shape) else "mismatch"
        steps[t.path] = Step(t.path, action, (key,), (), "rule" if key != t.path else "exact")
    # 3. structural -------------------------------------------------------------------------
    if rules.match in ("structural", "shape"):
        _structural(sources, targets, steps, used)
    # 4. unique shapes ----------------------------------------------------------------------
    if rules.match == "shape":
        free_t = [t for t in targets if t.path not in steps]
        free_s = [s for s in sources if s.path not in used]
        for t in free_t:
            same_t = [x for x in free_t if x.shape == t.shape]
            same_s = [s for s in free_s if s.shape == t.shape]
            if len(same_t) == 1 and len(same_s) == 1:
                used.add(same_s[0].path)
                steps[t.path] = Step(t.path, "copy", (same_s[0].path,), (), "shape")
    ordered = tuple(steps.get(t.path) or Step(t.path, "missing") for t in targets)
    unused = tuple(s.path for s in sources if s.path not in used)
    return TransplantPlan(ordered, unused, tuple(skipped_sources), tuple(warnings),
                          tuple(renamed.items()))


def _layers(infos, free) -> list[tuple[str, tuple, list[VariableInfo]]]:
    groups: dict[str, list[VariableInfo]] = {}
    order: list[str] = []
    for v in infos:
        if not v.layer_class:
            continue
        if v.layer not in groups:
            groups[v.layer] = []
            order.append(v.layer)
        groups[v.layer].append(v)
    out = []
    for layer in order:
        members = groups[layer]
        if all(free(v) for v in members):
            prefix = layer + "/" if layer else ""
            sig = (members[0].layer_class,
                   tuple((v.path[len(prefix):], tuple(v.shape)) for v in members))
            out.append((layer, sig, members))
    return out


def _structural(sources, targets, steps, used) -> None:
    t_layers = _layers(targets, lambda v: v.path not in steps)
    s_layers = _layers(sources, lambda v: v.path not in used)
    if not t_layers or not s_layers:
        return
    matcher = difflib.SequenceMatcher(None, [s[1] for s in s_layers], [t[1] for t in t_layers],
                                      autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            _, _, s_members = s_layers[block.a + k]
            _, _, t_members = t_layers[block.b + k]
            for s, t in zip(s_members, t_members):
                used.add(s.path)
                steps[t.path] = Step(t.path, "copy", (s.path,), (), "structural")
