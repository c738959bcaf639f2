"""`surgery.port_rules`: PyTorch <-> Keras weight mappings inferred from names and shapes.

No arrays are read. The PyTorch side is grouped by module (the key before its last dot) into
units: a module's ``weight``/``bias`` (and BatchNorm statistics), or one LSTM/GRU layer index
(``weight_ih_l1`` ..., with its ``_reverse`` direction). Units are ordered naturally
(``features.10`` after ``features.9``; within a parent, trailing numbers first, then a leaf
before a container and a weight layer before its norm: ``conv1, bn1, layer1, ..., fc``), so
that the order follows execution for torchvision-style names. The Keras side is the model's
graph (`surgery.transfer.keras_graph`): its weighted layers in topological order, each with the
PyTorch shapes it implies under the documented layout transforms (its signature).

Pairing, in Keras graph order: a layer's candidates are the unpaired units with its signature.
It takes the unit right after the pair of one of its weighted predecessors in PyTorch order
(``conv1`` -> ``bn1``, ``downsample.0`` -> ``downsample.1``, ``bn2`` -> ``conv3``) unless a
layer in parallel wants the same unit; otherwise, when no other unpaired layer of its signature
is in parallel with it (or before it), the first candidate in PyTorch order; otherwise it waits
for the others. What is left undecided is `AmbiguousPort`, naming the layers, the candidates
and the rule that settles it. Counts that differ are errors naming what has no partner.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import AmbiguousPort, OptionError, RulesError, UnsupportedModelError
from .keras_graph import GraphLayer, KerasGraph, keras_graph
from .port_tables import comment, covered, layer_port, toml_key, toml_value, user_tables

__all__ = ["port_rules", "PortPlan", "PortPair", "TorchUnit", "torch_units",
           "write_port_rules", "DIRECTIONS"]

DIRECTIONS = ("from_torch", "to_torch")
_RNN = re.compile(r"^(weight|bias)_(ih|hh)_l(\d+)(_reverse)?$")
_PLAIN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_ROLE_ORDER = ("weight", "bias", "running_mean", "running_var", "w_ih", "w_hh", "b_ih", "b_hh")
_TRAIL = re.compile(r"^(.*?)(\d+)$")
_NORM = re.compile(r"^(bn|norm|ln|gn)|(bn|norm)$", re.I)


@dataclass(frozen=True)
class PortPair:
    """One PyTorch module (or LSTM/GRU layer, ``rnn[l1]``) paired with one Keras layer: the
    layout transform that moves its weights and why they were paired."""

    source_module: str
    target_layer: str
    transform: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"source_module": self.source_module, "target_layer": self.target_layer,
                "transform": self.transform, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.source_module} -> {self.target_layer}: {self.transform}; {self.reason}"


@dataclass(frozen=True)
class PortPlan:
    """An inferred mapping: `rules` in the transplant rules format (``from_torch``) or the
    export rules format (``to_torch``), the user's rules first; `pairs` one `PortPair` each;
    `to_toml()` the same rules as a commented TOML file."""

    direction: str
    source: str
    target: str
    rules: dict
    pairs: tuple[PortPair, ...]
    sections: tuple = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"direction": self.direction, "source": self.source, "target": self.target,
                "pairs": [p.to_dict() for p in self.pairs], "rules": self.rules}

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.pairs)

    def to_toml(self) -> str:
        """The rules as TOML, one comment per pair saying why it was paired."""
        way = ("PyTorch -> Keras (surgery transplant ... --from torch)"
               if self.direction == "from_torch" else
               "Keras -> PyTorch (surgery export ... --format torch --like ...)")
        use = ("surgery transplant SOURCE TARGET -o OUT --rules THIS.toml"
               if self.direction == "from_torch" else
               "surgery export MODEL --format torch -o OUT --rules THIS.toml")
        lines = [f"# {way}:", "# a mapping inferred from names and shapes.",
                 f"# PyTorch: {comment(self.source)}", f"# Keras: {comment(self.target)}",
                 "# Review it, edit it, commit it; this repeats it exactly:", f"#   {use}"]
        for key in ("strict", "match", "skip"):
            if key in self.rules and self.rules[key] != []:
                lines.append(f"{key} = {toml_value(self.rules[key])}")
        for note, tables in self.sections:
            lines += ["", f"# {comment(note)}"]
            for kind, table in tables:
                lines.append(f"[[{kind}]]")
                lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TorchUnit:
    """What one Keras layer pairs with: a PyTorch module's tensors by role (``weight``,
    ``running_mean``; ``w_ih``, ``b_hh_reverse`` for one LSTM/GRU layer)."""

    name: str
    module: str
    keys: tuple[tuple[str, str], ...]
    shapes: tuple[tuple[str, tuple], ...]
    layer: int = -1

    @property
    def signature(self) -> tuple:
        return _signature(dict(self.shapes))

    @property
    def label(self) -> str:
        return f"{self.name or '<top>'} ({_shapes(self.signature)})"


def _signature(shapes: Mapping[str, tuple]) -> tuple:
    def rank(role: str) -> tuple:
        base = role.removesuffix("_reverse")
        return (role != base, _ROLE_ORDER.index(base) if base in _ROLE_ORDER else 99, role)
    return tuple((r, tuple(shapes[r])) for r in sorted(shapes, key=rank)
                 if r != "num_batches_tracked")


def _shapes(signature: tuple) -> str:
    return ", ".join(f"{r} {s}" for r, s in signature)


def _module_key(module: str) -> tuple:
    """Natural order: numbers by value, a leaf before a container, a weight layer before its
    norm, names without a number after those with one."""
    parts = module.split(".") if module else []
    out = []
    for i, part in enumerate(parts):
        m = _TRAIL.match(part)
        prefix, number = (m.group(1), int(m.group(2))) if m else (part, 0)
        out.append((0 if m else 1, number, i < len(parts) - 1, bool(_NORM.search(prefix)),
                    prefix))
    return tuple(out)


def torch_units(variables: Sequence) -> tuple[list[TorchUnit], list[str]]:
    """The units of a PyTorch state dict's `VariableInfo`s, in natural order, and the keys
    whose role the port doesn't know."""
    modules: dict[str, list] = {}
    for info in variables:
        module, _, role = info.path.rpartition(".")
        modules.setdefault(module, []).append((role, info))
    units, unknown = [], []
    for module, members in modules.items():
        plain, rnn = [], {}
        for role, info in members:
            m = _RNN.match(role)
            if m:
                name = f"{'w' if m.group(1) == 'weight' else 'b'}_{m.group(2)}{m.group(4) or ''}"
                rnn.setdefault(int(m.group(3)), []).append((name, info))
            elif role in _PLAIN:
                plain.append((role, info))
            else:
                unknown.append(info.path)
        if plain and rnn:
            unknown += [info.path for _, info in plain]
        elif plain:
            units.append(_unit(module, module, plain))
        for k in sorted(rnn):
            units.append(_unit(f"{module}[l{k}]", module, rnn[k], k))
    units.sort(key=lambda u: (_module_key(u.module), u.layer))
    return units, unknown


def _unit(name, module, members, layer=-1) -> TorchUnit:
    return TorchUnit(name, module, tuple((r, i.path) for r, i in members),
                     tuple((r, tuple(i.shape)) for r, i in members), layer)


def port_rules(source: Any, target: Any, rules: Any = None, *, direction: str = "from_torch",
               safe_mode: bool = True) -> PortPlan:
    """Infers the rules that move weights between a PyTorch state dict and a Keras model.

    Args:
        source: the PyTorch side: a path (`.safetensors`, a sharded index, `.npz`) or an open
            `WeightSource` with PyTorch keys; with ``to_torch``, the template whose keys and
            shapes name the output (its values are never read).
        target: the Keras side: a live Keras 3 model or a `.keras` path (built from its config
            without its weights, in safe mode).
        rules: your rules, applied first (transplant rules for ``from_torch``, export rules for
            ``to_torch``): the variables and keys they cover are taken out of inference.
        direction: ``from_torch`` (transplant rules) or ``to_torch`` (export rules).

    Returns:
        A `PortPlan`: `.rules`, `.pairs`, `.to_toml()`.

    Raises:
        AmbiguousPort: layers whose pairing the names and shapes don't decide.
        RulesError: a Keras layer without a PyTorch module of its shapes, modules left over,
            keys of an unknown role.
        UnsupportedModelError: a nested or subclassed model, a layer the port can't pair.

    Example:
    ```python
    plan = surgery.port_rules("resnet18.safetensors", model)
    print(plan.to_toml())
    ```
    """
    from ..io.sources import open_weights

    if direction not in DIRECTIONS:
        raise OptionError(f"direction must be one of {', '.join(DIRECTIONS)}, got "
                          f"{direction!r}")
    src = open_weights(source)
    try:
        infos, name = src.variables(), src.name
    finally:
        if src is not source:
            src.close()
    graph = keras_graph(target, safe_mode=safe_mode)
    user, tables = user_tables(rules, direction)
    cov_src, cov_tgt = covered(user, direction, infos, graph.variables)
    units, unknown = torch_units([i for i in infos])
    units = [u for u in units if not any(k in cov_src for _, k in u.keys)]
    _refuse_unknown([k for k in unknown if k not in cov_src], name)
    layers = [l for l in graph.layers if not any(p in cov_tgt for _, p, _ in l.variables)]
    ports = {l.path: _layer_port(l, graph.name) for l in layers}
    sigs = {l.path: _signature(ports[l.path].signature(l)) for l in layers}
    for l in layers:
        if l.flatten_problem:
            raise AmbiguousPort(_flatten_message(graph.name, l), layer=l.path)
    _check_counts(layers, sigs, units, name)
    chosen = _pair(layers, sigs, units, graph, ports, direction, name)
    return _plan(direction, name, graph.name, user, tables, layers, chosen, ports)


# ------------------------------------------------------------------ checks

def _layer_port(layer: GraphLayer, model: str):
    """`layer_port`, its refusal prefixed with the model's name."""
    try:
        return layer_port(layer)
    except (UnsupportedModelError, RulesError) as e:
        raise type(e)(f"{model}: {e}", layer=layer.path) from None


def _refuse_unknown(keys: list[str], source: str) -> None:
    if keys:
        more = f" (and {len(keys) - 3} more)" if len(keys) > 3 else ""
        raise RulesError(f"{source}: {', '.join(keys[:3])}{more}: a role the port doesn't know "
                         "(it pairs weight, bias, running_mean, running_var, "
                         "num_batches_tracked and LSTM/GRU weight_ih_l<k>, weight_hh_l<k>, "
                         "bias_ih_l<k>, bias_hh_l<k>[_reverse]); cover them with --rules "
                         "R.toml (a [[rename]], an [[adapter]] or skip = [...])",
                         variable=keys[0])


def _flatten_message(model: str, layer: GraphLayer) -> str:
    return (f"{model}: Dense '{layer.path}': {layer.flatten_problem}, so the row order of the "
            "PyTorch Linear it pairs with can't be derived; add --rules R.toml with [[adapter]] "
            f"target = \"{layer.path}/kernel\", name = \"linear_from_torch\", source = \"<the "
            "Linear's weight>\" (with feature_shape = [height, width, channels] if PyTorch "
            "flattened an NCHW map)")


def _check_counts(layers: list[GraphLayer], sigs: dict, units: list[TorchUnit], source: str
                  ) -> None:
    """As many units of each signature as Keras layers: else the layers without a module,
    then the modules without a layer."""
    by_sig: dict[tuple, list[TorchUnit]] = {}
    for u in units:
        by_sig.setdefault(u.signature, []).append(u)
    need: dict[tuple, list[GraphLayer]] = {}
    for l in layers:
        need.setdefault(sigs[l.path], []).append(l)
    spare = [u for sig, us in by_sig.items() for u in us[len(need.get(sig, ())):]]
    left = ", ".join(u.label for u in spare[:3]) + (" ..." if len(spare) > 3 else "") \
        if spare else "none"
    for sig, group in need.items():
        have = by_sig.get(sig, [])
        if len(group) <= len(have):
            continue
        names = ", ".join(f"'{l.path}'" for l in group[:4]) + (" ..." if len(group) > 4 else "")
        what = (f"no PyTorch module has the shapes Keras layer {group[0].label} needs "
                f"({_shapes(sig)})" if len(group) == 1 and not have else
                f"Keras layers {names} ({group[0].class_name}) need {len(group)} PyTorch "
                f"modules with {_shapes(sig)}, but there are {len(have)}"
                + (f" ({', '.join(u.name for u in have)})" if have else ""))
        raise RulesError(f"{source}: {what}; modules left without a layer: {left}; make the "
                         "two models agree, or cover it with --rules R.toml ([[rename]]/"
                         "[[adapter]])", layer=group[0].path)
    if spare:
        raise RulesError(f"{source}: PyTorch modules with no Keras layer of their shapes: "
                         f"{', '.join(u.label for u in spare[:5])}"
                         f"{' ...' if len(spare) > 5 else ''}; add those layers to the Keras "
                         f"model, or skip them with --rules R.toml (skip = "
                         f"[\"{spare[0].module}.*\"])")


# ------------------------------------------------------------------ pairing

@dataclass
class _State:
    layers: list[GraphLayer]
    sigs: dict
    graph: KerasGraph
    free: list[TorchUnit]
    after: dict[str, TorchUnit | None]
    done: dict[str, tuple[TorchUnit, str]] = field(default_factory=dict)

    def candidates(self, layer: GraphLayer) -> list[TorchUnit]:
        return [u for u in self.free if u.signature == self.sigs[layer.path]]

    def preferred(self, layer: GraphLayer) -> dict[str, tuple[TorchUnit, str]]:
        """The candidates right after a weighted predecessor's pair, by name."""
        names = {u.name for u in self.candidates(layer)}
        out = {}
        for p in layer.preds:
            if p in self.done:
                nxt = self.after[self.done[p][0].name]
                if nxt is not None and nxt.name in names:
                    out[nxt.name] = (nxt, self.done[p][0].name)
        return out

    def choose(self, layer: GraphLayer, pending: list[GraphLayer]
               ) -> tuple[TorchUnit, str] | None:
        names = {l.path for l in pending}
        if any(p in names for p in layer.preds):
            return None  # its predecessors' pairs decide: wait for them
        rivals = [m for m in pending if m is not layer and
                  self.sigs[m.path] == self.sigs[layer.path] and
                  not self.graph.descends(m.path, layer.path)]
        pref = self.preferred(layer)
        if len(pref) == 1:
            unit, after = next(iter(pref.values()))
            if not any(unit.name in self.preferred(m) for m in rivals):
                return unit, f"shape, after {after} (key order)"
        if rivals:
            return None
        cands = self.candidates(layer)
        return cands[0], "only candidate" if len(cands) == 1 else "shape + order"


def _pair(layers, sigs, units, graph, ports, direction, source
          ) -> dict[str, tuple[TorchUnit, str]]:
    after = {u.name: (units[i + 1] if i + 1 < len(units) else None)
             for i, u in enumerate(units)}
    state = _State(layers, sigs, graph, list(units), after)
    pending = list(layers)
    while pending:
        moved = False
        for layer in list(pending):
            got = state.choose(layer, pending)
            if got is not None:
                state.done[layer.path] = got
                state.free.remove(got[0])
                pending.remove(layer)
                moved = True
        if not moved:
            raise _ambiguity(state, pending, ports, direction, source)
    return state.done


def _ambiguity(state: _State, pending, ports, direction, source) -> AmbiguousPort:
    names = {l.path for l in pending}
    stuck = [l for l in pending if not any(p in names for p in l.preds)] or pending
    first = stuck[0]
    group = [l for l in pending if state.sigs[l.path] == state.sigs[first.path]]
    cands = state.candidates(first)
    _, tables = _rules_of(ports[first.path], first, cands[0], direction)
    snippet = "; ".join(f"[[{kind}]] " + ", ".join(f"{toml_key(k)} = {toml_value(v)}"
                                                    for k, v in t.items())
                        for kind, t in tables)
    waiting = len(pending) - len(group)
    return AmbiguousPort(
        f"{source}: Keras layers {', '.join(repr(l.path) for l in group)} ({first.class_name}, "
        f"same shapes, neither feeding the other) could each take PyTorch module "
        f"{' or '.join(u.name for u in cands)}, and the key order doesn't decide; add --rules "
        f"R.toml with {snippet} (or the pairing you mean), and the rest follows"
        + (f" ({waiting} more layer{'s wait' if waiting > 1 else ' waits'} on them)"
           if waiting > 0 else ""), layer=first.path)


def _rules_of(port, layer: GraphLayer, unit: TorchUnit, direction: str) -> tuple[str, list]:
    keys = dict(unit.keys)
    return port.import_rules(layer, keys) if direction == "from_torch" else \
        port.export_rules(layer, keys)


def _plan(direction, source, target, user, user_tables, layers, chosen, ports) -> PortPlan:
    sections, pairs = [], []
    if user_tables:
        sections.append((f"your rules ({user.origin})", tuple(user_tables)))
    for layer in layers:
        unit, reason = chosen[layer.path]
        transform, tables = _rules_of(ports[layer.path], layer, unit, direction)
        pairs.append(PortPair(unit.name, layer.path, transform, reason))
        ends = (unit.name, layer.path) if direction == "from_torch" else (layer.path, unit.name)
        sections.append((f"{ends[0]} -> {ends[1]}: {transform}; {reason}", tuple(tables)))
    kinds = ("rename", "adapter") if direction == "from_torch" else ("rename", "export")
    rules: dict[str, Any] = {"strict": True, "match": "exact"} if direction == "from_torch" \
        else {}
    if user.skips:
        rules["skip"] = list(user.skips)
    for kind in kinds:
        rules[kind] = [t for _, tables in sections for k, t in tables if k == kind]
    return PortPlan(direction, source, target, rules, tuple(pairs), tuple(sections))


def write_port_rules(plan: PortPlan, path: Any, *, inputs: Sequence = (),
                     overwrite: bool = False) -> str:
    """Writes `plan.to_toml()` to `path` atomically (never over an input; an existing file only
    with `overwrite`). Returns the path.

    Example:
    ```python
    write_port_rules(surgery.port_rules("w.safetensors", model), "mapping.toml")
    ```
    """
    from ..io.atomic import atomic_path

    path = os.fspath(path)
    with atomic_path(path, inputs=[p for p in inputs if p], overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(plan.to_toml())
    return path
