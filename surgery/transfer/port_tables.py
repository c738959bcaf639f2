"""The rules tables a PyTorch port writes.

`LAYER_PORTS` holds, per Keras layer class, how it pairs with a PyTorch module
(`surgery.transfer.port`): the PyTorch shapes it implies under the documented layout transforms
(conv OIHW <-> HWIO, depthwise (C*m, 1, kh, kw) <-> (kh, kw, C, m), transposed conv, Linear
(out, in), LSTM 4H / GRU 3H gates with two biases), the settings no PyTorch module computes, and
the rules that move its weights either way: ``[[rename]]`` tables with anchored, escaped regexes
for plain copies, ``[[adapter]]`` (transplant) or ``[[export]]`` (export) tables for layout
transforms. Also: the user's rules as tables and what they already cover, and TOML text.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from ..errors import RulesError, UnsupportedModelError
from .adapters import TORCH_BN_EPS
from .keras_graph import GraphLayer

__all__ = ["LAYER_PORTS", "SUPPORTED", "TORCH_LN_EPS", "layer_port", "user_tables", "covered",
           "toml_value", "toml_key", "comment"]

def _rename(source: str, target: str) -> tuple[str, dict]:
    """A [[rename]] of exactly `source` to `target` (the replacement's backslashes escaped)."""
    return "rename", {"from": "^" + re.escape(source) + "$", "to": target.replace("\\", "\\\\")}


class _Port:
    """How one kind of Keras layer pairs with a PyTorch module: `signature` (PyTorch role ->
    shape), `check` (settings no PyTorch module computes), and the rules either way: a
    transform name and [("rename"|"adapter"|"export", table)]."""

    def check(self, layer: GraphLayer) -> None:
        """Raises for settings the port can't carry (the layer names itself)."""

    def signature(self, layer: GraphLayer) -> dict[str, tuple]:
        raise NotImplementedError

    def import_rules(self, layer: GraphLayer, keys: Mapping[str, str]) -> tuple[str, list]:
        raise NotImplementedError

    def export_rules(self, layer: GraphLayer, keys: Mapping[str, str]) -> tuple[str, list]:
        raise NotImplementedError


class _Weighted(_Port):
    """A kernel (PyTorch ``weight``, through `adapter`/`exporter`) and an optional bias."""

    def __init__(self, kernel: str, adapter: str, exporter: str, kind: str = ""):
        self.kernel, self.adapter, self.exporter, self.kind = kernel, adapter, exporter, kind

    def torch_shape(self, k: tuple) -> tuple:
        if self.kind == "depthwise":
            return (k[-2] * k[-1], 1, *k[:-2])
        if self.kind in ("conv", "transpose", "linear"):
            return (k[-1], k[-2], *k[:-2])
        return k

    def signature(self, layer):
        out = {"weight": self.torch_shape(layer.shape(self.kernel))}
        if layer.shape("bias") is not None:
            out["bias"] = layer.shape("bias")
        return out

    def _options(self, layer) -> dict:
        opts = {"kind": self.kind} if self.kind in ("depthwise", "transpose") else {}
        if self.kind == "linear" and layer.feature_shape:
            opts["feature_shape"] = list(layer.feature_shape)
        if self.adapter == "reshape" and self.torch_shape(layer.shape(self.kernel)) != \
                layer.shape(self.kernel):
            opts["shape"] = list(self.torch_shape(layer.shape(self.kernel)))
        return opts

    def _transform(self, name: str, opts: dict) -> str:
        shown = ", ".join(f"{k} {v}" for k, v in opts.items() if k != "shape")
        return name + (f" ({shown})" if shown else "")

    def import_rules(self, layer, keys):
        kernel = f"{layer.path}/{self.kernel}"
        opts = self._options(layer)
        if self.adapter == "copy" or (self.adapter == "reshape" and "shape" not in opts):
            out, name = [_rename(keys["weight"], kernel)], "copy"
        else:
            opts.pop("shape", None)
            out = [("adapter", {"target": kernel, "source": keys["weight"], "name": self.adapter,
                                **opts})]
            name = self._transform(self.adapter, opts)
        if "bias" in keys:
            out.append(_rename(keys["bias"], f"{layer.path}/bias"))
        return name, out

    def export_rules(self, layer, keys):
        kernel = f"{layer.path}/{self.kernel}"
        opts = self._options(layer)
        if self.exporter == "copy" or (self.exporter == "reshape" and "shape" not in opts):
            out, name = [_rename(kernel, keys["weight"])], "copy"
        else:
            out = [("export", {"source": kernel, "name": self.exporter, "target": keys["weight"],
                               **opts})]
            name = self._transform(self.exporter, opts)
        if "bias" in keys:
            out.append(_rename(f"{layer.path}/bias", keys["bias"]))
        return name, out


class _PReLU(_Weighted):
    def __init__(self):
        super().__init__("alpha", "reshape", "reshape", "prelu")

    def torch_shape(self, k):
        return (k[-1],) if k else (1,)

    def check(self, layer):
        alpha = layer.shape("alpha") or ()
        if math.prod(alpha) != (alpha[-1] if alpha else 1):
            raise UnsupportedModelError(
                f"layer {layer.label} has alpha {alpha}, one per position; a PyTorch PReLU has "
                "one per channel: build it with shared_axes on every axis but the channels, or "
                "cover it with --rules R.toml", layer=layer.path)


_BN_ROLES = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
             ("moving_variance", "running_var"))
TORCH_LN_EPS = 1e-5  # torch.nn.LayerNorm's default eps


class _BatchNorm(_Port):
    def check(self, layer):
        missing = [k for k, _ in _BN_ROLES if layer.shape(k) is None]
        if missing:
            raise UnsupportedModelError(
                f"layer {layer.label} has no {', '.join(missing)} (center/scale off), but the "
                "port pairs it with an affine PyTorch BatchNorm; cover it with --rules R.toml",
                layer=layer.path)

    def signature(self, layer):
        return {role: layer.shape(k) for k, role in _BN_ROLES}

    def import_rules(self, layer, keys):
        roles = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        _check_bn_eps(layer, keys)
        return "batchnorm_from_torch", [("adapter", {
            "target": layer.path, "name": "batchnorm_from_torch",
            "sources": {r: keys[r] for r in roles if r in keys}})]

    def export_rules(self, layer, keys):
        roles = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        if "num_batches_tracked" not in keys:
            raise RulesError(f"{keys['weight'].rpartition('.')[0]}: the template has no "
                             "num_batches_tracked, which batchnorm_to_torch writes; save the "
                             "template from a PyTorch BatchNorm with track_running_stats=True",
                             layer=layer.path)
        return "batchnorm_to_torch", [("export", {
            "source": layer.path, "name": "batchnorm_to_torch",
            "targets": {r: keys[r] for r in roles}})]


def _check_bn_eps(layer: GraphLayer, keys: Mapping[str, str]) -> None:
    """A state dict doesn't store a BatchNorm's eps: a Keras epsilon other than PyTorch's
    default is refused, with the rule that settles it when the module was built otherwise."""
    eps = layer.config.get("epsilon")
    if eps is None or math.isclose(float(eps), TORCH_BN_EPS, rel_tol=1e-6):
        return
    module = keys["weight"].rpartition(".")[0]
    sources = ", ".join(f'{r} = "{keys[r]}"' for r in ("weight", "bias", "running_mean",
                                                       "running_var") if r in keys)
    raise RulesError(
        f"{layer.path}: the Keras layer's epsilon is {float(eps):g} but PyTorch's BatchNorm eps "
        f"is {TORCH_BN_EPS:g} unless the module was built otherwise (a state dict doesn't "
        f"store it), so the outputs would differ; build the Keras layer with "
        f"epsilon={TORCH_BN_EPS:g}, or, if {module} was built with eps={float(eps):g}, add "
        f'--rules R.toml with [[adapter]] target = "{layer.path}", name = '
        f'"batchnorm_from_torch", eps = {float(eps):g}, sources = {{ {sources} }}',
        layer=layer.path)


class _LayerNorm(_Port):
    def check(self, layer):
        gamma = layer.shape("gamma") or layer.shape("beta") or ()
        if len(gamma) != 1:
            raise UnsupportedModelError(f"layer {layer.label} normalizes over {gamma}; the port "
                                        "pairs LayerNormalization over the last axis only",
                                        layer=layer.path)
        eps = float(layer.config.get("epsilon", 1e-3))
        if not math.isclose(eps, TORCH_LN_EPS, rel_tol=1e-6):
            raise RulesError(f"layer {layer.label} has epsilon {eps:g} but PyTorch's LayerNorm "
                             f"eps is {TORCH_LN_EPS:g} by default, so the outputs would differ; "
                             "build the Keras layer with epsilon=1e-05, or cover it with --rules "
                             "R.toml ([[rename]]s of its weight and bias) to accept the "
                             "difference", layer=layer.path)

    def signature(self, layer):
        return {role: layer.shape(k) for k, role in (("gamma", "weight"), ("beta", "bias"))
                if layer.shape(k) is not None}

    def import_rules(self, layer, keys):
        return "copy", [_rename(keys[role], f"{layer.path}/{k}")
                        for k, role in (("gamma", "weight"), ("beta", "bias")) if role in keys]

    def export_rules(self, layer, keys):
        return "copy", [_rename(f"{layer.path}/{k}", keys[role])
                        for k, role in (("gamma", "weight"), ("beta", "bias")) if role in keys]


class _Recurrent(_Port):
    """LSTM (4 gates) and GRU (3 gates, reset_after=True); a Bidirectional's two directions
    pair with one PyTorch layer's plain and ``_reverse`` weights."""

    def __init__(self, kind: str):
        self.kind = kind  # LSTM | GRU

    def _parts(self, layer):
        if layer.class_name == "Bidirectional":
            return [("forward/", "", layer.inner_config), ("backward/", "_reverse",
                                                            layer.inner_config)]
        return [("", "", layer.config)]

    def check(self, layer):
        config = self._parts(layer)[0][2]
        wants = [("activation", "tanh"), ("recurrent_activation", "sigmoid"), ("use_bias", True)]
        if self.kind == "GRU":
            wants.append(("reset_after", True))
        for key, want in wants:
            if config.get(key, want) != want:
                raise UnsupportedModelError(
                    f"layer {layer.label} has {key}={config.get(key)!r}, but PyTorch's "
                    f"{self.kind} computes {key}={want!r}; rebuild the Keras layer with "
                    f"{key}={want!r}", layer=layer.path)

    def signature(self, layer):
        out = {}
        for prefix, suffix, _ in self._parts(layer):
            k, rk = layer.shape(prefix + "kernel"), layer.shape(prefix + "recurrent_kernel")
            out.update({"w_ih" + suffix: (k[1], k[0]), "w_hh" + suffix: (rk[1], rk[0]),
                        "b_ih" + suffix: (k[1],), "b_hh" + suffix: (k[1],)})
        return out

    def _rules(self, layer, keys, way: str) -> tuple[str, list]:
        name = f"{self.kind.lower()}_{way}_torch"
        out = []
        for prefix, suffix, _ in self._parts(layer):
            roles = {r: keys[r + suffix] for r in ("w_ih", "w_hh", "b_ih", "b_hh")}
            where = layer.path + ("/" + prefix.rstrip("/") if prefix else "")
            out.append(("adapter", {"target": where, "name": name, "sources": roles})
                       if way == "from" else
                       ("export", {"source": where, "name": name, "targets": roles}))
        return name, out

    def import_rules(self, layer, keys):
        return self._rules(layer, keys, "from")

    def export_rules(self, layer, keys):
        return self._rules(layer, keys, "to")


_CONV = {f"Conv{d}D": "conv" for d in (1, 2, 3)}
_CONV.update({f"DepthwiseConv{d}D": "depthwise" for d in (1, 2)})
_CONV.update({f"Conv{d}DTranspose": "transpose" for d in (1, 2, 3)})
LAYER_PORTS: dict[str, _Port] = {
    **{cls: _Weighted("kernel", "conv_from_torch", "conv_to_torch", kind)
       for cls, kind in _CONV.items()},
    "Dense": _Weighted("kernel", "linear_from_torch", "linear_to_torch", "linear"),
    "Embedding": _Weighted("embeddings", "copy", "copy"),
    "BatchNormalization": _BatchNorm(),
    "LayerNormalization": _LayerNorm(),
    "LSTM": _Recurrent("LSTM"),
    "GRU": _Recurrent("GRU"),
    "PReLU": _PReLU(),
}
SUPPORTED = ("Conv1D/2D/3D, DepthwiseConv1D/2D, Conv1D/2D/3DTranspose, Dense, Embedding, "
             "BatchNormalization, LayerNormalization, LSTM, GRU, Bidirectional(LSTM/GRU), "
             "PReLU")


def layer_port(layer: GraphLayer) -> _Port:
    """The `_Port` of `layer` (a Bidirectional's by its wrapped class), checked.

    Raises:
        UnsupportedModelError: a class the port doesn't pair, or settings no PyTorch module
            computes.
    """
    cls = layer.inner if layer.class_name == "Bidirectional" else layer.class_name
    port = LAYER_PORTS.get(cls) if layer.class_name in LAYER_PORTS or \
        (layer.class_name == "Bidirectional" and cls in ("LSTM", "GRU")) else None
    if port is None:
        raise UnsupportedModelError(
            f"layer {layer.label} has weights the PyTorch port can't pair (it pairs "
            f"{SUPPORTED}); cover its variables with --rules R.toml ([[rename]]/[[adapter]], "
            "or skip them)", layer=layer.path)
    port.check(layer)
    return port


# ------------------------------------------------------------------ the user's rules

def user_tables(rules: Any, direction: str) -> tuple[Any, list]:
    """The user's rules, parsed, and as (kind, table) items for the merged rules."""
    if direction == "from_torch":
        from .rules import load_rules

        user = load_rules(rules)
        tables = [("rename", {"from": r.pattern.pattern, "to": r.replacement})
                  for r in user.renames]
        for a in user.adapters:
            table = {"target": a.target, "name": a.name, **({"source": a.source} if a.source
                                                            else {})}
            table.update({"sources": dict(a.sources)} if a.sources else {})
            table.update({"lossy": True} if a.lossy else {})
            tables.append(("adapter", {**table, **dict(a.options)}))
        return user, tables
    from .export import load_export_rules

    user = load_export_rules(rules if rules is not None else {})
    tables = [("rename", {"from": r.pattern.pattern, "to": r.replacement})
              for r in user.renames]
    for e in user.exports:
        where = {"target": e.targets[0][1]} if e.targets[0][0] == "" else \
            {"targets": dict(e.targets)}
        tables.append(("export", {"source": e.source, "name": e.name, **where,
                                  **dict(e.options)}))
    return user, tables


def covered(user: Any, direction: str, sources: Sequence, targets: Sequence
             ) -> tuple[set[str], set[str]]:
    """(PyTorch keys, Keras variable paths) the user's rules already cover."""
    from ..selection import compile_selector

    torch_side, keras_side = set(), set()
    paths = {t.path for t in targets}
    for sel in user.skips:
        pred = compile_selector(sel)
        (torch_side if direction == "from_torch" else set()).update(
            s.path for s in sources if pred(s))
        keras_side.update(t.path for t in targets if pred(t))
    if direction == "to_torch":
        for e in user.exports:
            keras_side.update(p for p in paths if p == e.source or
                              p.startswith(e.source.rstrip("/") + "/"))
            torch_side.update(key for _, key in e.targets)
        for path in paths:
            for r in user.renames:
                if r.pattern.search(path):
                    keras_side.add(path)
                    torch_side.add(r.pattern.sub(r.replacement, path))
                    break
        return torch_side, keras_side
    from .adapters import get_adapter

    original = {}
    for s in sources:
        key = s.path
        for r in user.renames:
            key = r.pattern.sub(r.replacement, key)
        original[key] = s.path
        if key != s.path or key in paths:
            torch_side.add(s.path)
            keras_side.update({key} & paths)
    for a in user.adapters:
        adapter = get_adapter(a.name)
        if adapter.is_layer:
            keras_side.update(f"{a.target.rstrip('/')}/{o}" for o in adapter.outputs)
            torch_side.update(original.get(k, k) for _, k in a.sources)
            continue
        pred = compile_selector(a.target)
        hit = [p for p in paths if p == a.target] or [t.path for t in targets if pred(t)]
        keras_side.update(hit)
        torch_side.update(original.get(k, k) for k in ([a.source] if a.source else hit))
    return torch_side, keras_side


# ------------------------------------------------------------------ TOML text

def comment(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in str(text))


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)


def toml_value(value: Any) -> str:
    """`value` (str, bool, number, list, table) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")) \
            if not math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    text = str(value)
    if "\\" in text and "'" not in text and text.isprintable():
        return f"'{text}'"  # a literal string: regexes stay readable
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif not c.isprintable():
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'
