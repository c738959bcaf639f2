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
from ..outcomes import Outcome
from .rules import AdapterRule, Rules, RulesError
from ..selection import closest_paths, compile_selector

__all__ = ["Step", "TransplantPlan", "build_plan", "batchnorm_stat_warnings"]

KERAS_FORMATS = ("keras", "weights.h5", "legacy-h5", "weights.json", "model")
_TORCH_BN_STATS = (".running_var", ".running_mean")


@dataclass(frozen=True)
class Step:
    """What happens to one target variable.

    Attributes:
        target: the target variable's path.
        action: the report word (`surgery.outcomes`) it will get: ``copied``, ``converted``,
            ``skipped``, ``missing`` or ``mismatched``.
        sources: source keys it reads (original keys, in the adapter's role order).
        roles: for layer adapters, the role of each source.
        matched_by: ``rule``, ``exact``, ``structural`` or ``shape``.
        adapter: the adapter rule, for ``converted``.
        output: for layer adapters, which of the adapter's outputs this target takes.
    """

    target: str
    action: Outcome
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
    """Matches `sources` onto `targets` under `rules`, in the module docstring's order.

    Raises:
        RulesError: two source tensors renamed onto one target key, a target claimed by two
            adapter rules, an adapter whose source tensors don't exist.
    """
    m = _Matching(sources, targets, source_name)
    m.rename(rules.renames)                        # 1. rules: renames, skips, adapters
    m.skip(rules.skips)
    m.adapt(rules.adapters)
    m.exact()                                      # 2. exact canonical path
    if rules.match in ("structural", "shape"):     # 3. structural
        _structural(sources, targets, m.steps, m.used)
    if rules.match == "shape":                     # 4. unique shapes
        m.unique_shapes()
    return m.plan()


class _Matching:
    """The state of one `build_plan` run; each method is one matching step and records what
    it decided in `steps` (target path -> `Step`), `used` (source keys taken) and
    `warnings`."""

    def __init__(self, sources: Sequence[VariableInfo], targets: Sequence[VariableInfo],
                 source_name: str):
        self.sources, self.targets, self.source_name = sources, targets, source_name
        self.src_by_key = {s.path: s for s in sources}
        self.target_by_path = {t.path: t for t in targets}
        self.renamed: dict[str, str] = {}  # original key -> key after renames
        self.origin: dict[str, str] = {}   # key after renames -> original key
        self.warnings: list[str] = []
        self.skipped_sources: list[str] = []
        self.used: set[str] = set()
        self.steps: dict[str, Step] = {}
        self.claimed: dict[str, AdapterRule] = {}

    def rename(self, renames) -> None:
        """Applies the regex renames to every source key, in order; warns for a rename that
        matches nothing; refuses two keys renamed onto one."""
        hits = [0] * len(renames)
        for s in self.sources:
            key = s.path
            for i, r in enumerate(renames):
                new = r.pattern.sub(r.replacement, key)
                if new != key or r.pattern.search(key):
                    hits[i] += 1
                key = new
            if key in self.origin:
                raise RulesError(f"two source tensors map onto {key!r}: {self.origin[key]!r} "
                                 f"and {s.path!r}; fix the renames or skip one of them")
            self.origin[key] = s.path
            self.renamed[s.path] = key
        for r, n in zip(renames, hits):
            if n == 0:
                self.warnings.append(
                    f"rename {r.text} matches no source key in {self.source_name}; closest: "
                    f"{', '.join(closest_paths(r.pattern.pattern, self.src_by_key, 3))}")

    def skip(self, skips) -> None:
        """Marks the targets a skip selector reaches as skipped and the sources it reaches
        (by original or renamed key) as used; warns for a selector that reaches neither."""
        skipped_targets: set[str] = set()
        for sel in skips:
            pred = compile_selector(sel)
            t_hit = {t.path for t in self.targets if pred(t)}
            s_hit = [s.path for s in self.sources
                     if s.path not in self.skipped_sources and
                     (pred(s) or pred(_renamed_info(s, self.renamed[s.path])))]
            if not t_hit and not s_hit:
                self.warnings.append(
                    f"skip {sel!r} matches nothing; closest: "
                    f"{', '.join(closest_paths(sel, [t.path for t in self.targets], 3))}")
            skipped_targets |= t_hit
            self.skipped_sources += s_hit
        self.used = set(self.skipped_sources)
        self.steps = {t.path: Step(t.path, Outcome.SKIPPED) for t in self.targets
                      if t.path in skipped_targets}

    def resolve(self, key: str, what: str) -> str:
        """The original source key for `key` (original or renamed); an error naming `what`
        when there is none."""
        if key in self.src_by_key:
            return key
        if key in self.origin:
            return self.origin[key]
        known = list(self.src_by_key) + list(self.origin)
        raise RulesError(f"{what}: no source tensor {key!r} in {self.source_name}; closest: "
                         f"{', '.join(closest_paths(key, known, 3))}")

    def claim(self, path: str, rule: AdapterRule) -> None:
        """Records that `rule` fills target `path`; refuses a second adapter rule for it."""
        if path in self.claimed:
            raise RulesError(f"{path}: two adapter rules claim it ({self.claimed[path].name} "
                             f"and {rule.name}); keep one")
        self.claimed[path] = rule

    def adapt(self, adapter_rules) -> None:
        """Plans every adapter rule: layer adapters fill all their outputs, variable adapters
        every target their selector reaches."""
        from .adapters import get_adapter

        for rule in adapter_rules:
            adapter = get_adapter(rule.name)
            if adapter.is_layer:
                self._adapt_layer(rule, adapter)
            else:
                self._adapt_variables(rule)

    def _adapt_layer(self, rule: AdapterRule, adapter) -> None:
        """A layer adapter: its sources by role, one converted step per output variable."""
        layer = rule.target.rstrip("/")
        outs = [f"{layer}/{o}" for o in adapter.outputs]
        missing = [o for o in outs if o not in self.target_by_path]
        if missing:
            have = [t.path for t in self.targets if t.layer == layer or
                    t.path.startswith(layer + "/")]
            raise RulesError(f"adapter '{rule.name}' for layer {layer!r}: the target has no "
                             f"{', '.join(missing)} (its variables: "
                             f"{', '.join(have) or 'none'}); name a layer with "
                             f"{', '.join(adapter.outputs)}")
        keys = tuple(self.resolve(k, f"adapter '{rule.name}' for {layer}")
                     for _, k in rule.sources)
        roles = tuple(r for r, _ in rule.sources)
        self.used.update(keys)
        for out, path in zip(adapter.outputs, outs):
            self.claim(path, rule)
            self.steps[path] = Step(path, Outcome.CONVERTED, keys, roles, "rule", rule, out)

    def _adapt_variables(self, rule: AdapterRule) -> None:
        """A variable adapter: the target named exactly, else every target its selector
        reaches, each from its own source key (or the rule's one `source`)."""
        pred = compile_selector(rule.target)
        matched = [t for t in self.targets if t.path == rule.target] or \
            [t for t in self.targets if pred(t)]
        if not matched:
            self.warnings.append(
                f"adapter '{rule.name}' target {rule.target!r} matches no target variable; "
                f"closest: {', '.join(closest_paths(rule.target, self.target_by_path, 3))}")
            return
        if rule.source is not None and len(matched) > 1:
            raise RulesError(f"adapter '{rule.name}': source {rule.source!r} can't feed "
                             f"{len(matched)} targets ({matched[0].path}, {matched[1].path}...); "
                             "give one target")
        for t in matched:
            key = self.resolve(rule.source or t.path, f"adapter '{rule.name}' for {t.path}")
            self.claim(t.path, rule)
            self.used.add(key)
            self.steps[t.path] = Step(t.path, Outcome.CONVERTED, (key,), (), "rule", rule)

    def exact(self) -> None:
        """Each free target takes the free source whose (renamed) key is its path: copied
        when the shapes agree, mismatched otherwise."""
        for t in self.targets:
            if t.path in self.steps:
                continue
            key = self.origin.get(t.path)
            if key is None or key in self.used:
                continue
            self.used.add(key)
            s = self.src_by_key[key]
            action = Outcome.COPIED if tuple(s.shape) == tuple(t.shape) else Outcome.MISMATCHED
            self.steps[t.path] = Step(t.path, action, (key,), (),
                                      "rule" if key != t.path else "exact")

    def unique_shapes(self) -> None:
        """A free target whose shape no other free target has takes the one free source of
        that shape, if there is exactly one."""
        free_t = [t for t in self.targets if t.path not in self.steps]
        free_s = [s for s in self.sources if s.path not in self.used]
        for t in free_t:
            same_t = [x for x in free_t if x.shape == t.shape]
            same_s = [s for s in free_s if s.shape == t.shape]
            if len(same_t) == 1 and len(same_s) == 1:
                self.used.add(same_s[0].path)
                self.steps[t.path] = Step(t.path, Outcome.COPIED, (same_s[0].path,), (),
                                          "shape")

    def plan(self) -> TransplantPlan:
        """The plan in target order; a target no step reached is missing."""
        ordered = tuple(self.steps.get(t.path) or Step(t.path, Outcome.MISSING)
                        for t in self.targets)
        unused = tuple(s.path for s in self.sources if s.path not in self.used)
        return TransplantPlan(ordered, unused, tuple(self.skipped_sources),
                              tuple(self.warnings), tuple(self.renamed.items()))


def batchnorm_stat_warnings(plan: TransplantPlan, targets: Sequence[VariableInfo],
                            epsilon_of, *, source_format: str) -> tuple[str, ...]:
    """One warning per Keras BatchNormalization whose moving statistics are plain copies of
    PyTorch running statistics (source keys ending in ``.running_var``/``.running_mean``,
    from a source that is not a Keras model) while its epsilon is not PyTorch's default: the
    `batchnorm_from_torch` adapter refuses the same transfer, since the outputs differ.

    Args:
        epsilon_of: target layer path -> its epsilon (None when unknown).
    """
    import math

    from .adapters import TORCH_BN_EPS

    if source_format in KERAS_FORMATS:
        return ()
    by_path = {t.path: t for t in targets}
    found: dict[str, str] = {}  # layer -> the source key to name (running_var first)
    for step in plan.steps:
        if step.action != Outcome.COPIED:
            continue
        t, (key,) = by_path[step.target], step.sources  # a copy reads one source tensor
        if key.endswith(_TORCH_BN_STATS) and t.layer_class.endswith("BatchNormalization") and \
                (t.layer not in found or key.endswith(".running_var")):
            found[t.layer] = key
    out = []
    for layer, key in found.items():
        epsilon = epsilon_of(layer)
        if epsilon is not None and math.isclose(float(epsilon), TORCH_BN_EPS, rel_tol=1e-6):
            continue
        keras = "unknown" if epsilon is None else f"{float(epsilon):g}"
        out.append(f"{layer}: {key} is copied from a PyTorch BatchNorm (eps "
                   f"{TORCH_BN_EPS:g} by default) but the Keras layer's epsilon is {keras}, "
                   f"so the outputs would differ; build the Keras layer with "
                   f"epsilon={TORCH_BN_EPS:g}, or convert the layer with the "
                   "batchnorm_from_torch adapter and the PyTorch module's eps (eps_mismatch = "
                   "\"ok\" accepts the difference)")
    return tuple(out)


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
                steps[t.path] = Step(t.path, Outcome.COPIED, (s.path,), (), "structural")
