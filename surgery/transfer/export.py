"""`surgery.export_state_dict`: a Keras model's weights as a PyTorch-layout state dict.

Rules name the PyTorch keys: ``rename`` (regex on canonical paths, copied as they are; the
first rename that matches a path applies) and ``export`` entries that convert. Every variable
must be covered (or skipped): the ones the rules miss are an error that lists them. The rules
are checked like transplant rules before anything is read: unknown keys and options, wrong
types, an unknown exporter, two rules writing one PyTorch key and unsafe regexes are errors
naming the file and line. Written as `.safetensors` or `.npz`, atomically.

```toml
skip = ["bn/moving_*"]                      # leave out
[[rename]]
from = "^embed/embeddings$"
to = "embed.weight"
[[export]]
source = "head/kernel"
name = "linear_to_torch"
target = "head.weight"
feature_shape = [7, 7, 64]                  # when the Dense follows a Flatten of a 7x7x64 map
[[export]]
source = "encoder"                          # a layer: kernel, recurrent_kernel, bias
name = "lstm_to_torch"
targets = { w_ih = "lstm.weight_ih_l0", w_hh = "lstm.weight_hh_l0", b_ih = "lstm.bias_ih_l0", b_hh = "lstm.bias_hh_l0" }
[[export]]
source = "bn1"                              # gamma, beta, moving_mean, moving_variance
name = "batchnorm_to_torch"
targets = { weight = "bn1.weight", bias = "bn1.bias", running_mean = "bn1.running_mean", running_var = "bn1.running_var", num_batches_tracked = "bn1.num_batches_tracked" }
```
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from .. import reshape as R
from ..errors import OptionError, OutputError, RulesError, ShapeError, UnsupportedModelError
from ..selection import closest_paths, compile_selector
from .adapters import TORCH_BN_EPS, check_epsilon, get_adapter, layer_config
from .report import ExportReport, ExportRow
from .rules import (Rename, Where, check_roles, parse_renames, parse_skips, read_toml,
                    type_error)

__all__ = ["export_state_dict", "load_export_rules", "ExportRules", "ExportRule",
           "ExportReport", "EXPORTERS"]

_TOP = ("export", "rename", "skip")
_RULE_KEYS = ("source", "name", "target", "targets")


@dataclass(frozen=True)
class _Exporter:
    """One conversion: a single tensor (`variables` empty) or a layer's `variables` to PyTorch
    tensors by role (the first `required` roles required)."""

    name: str
    options: Mapping[str, str]
    variables: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    required: int = 0
    fn: Callable | None = None
    needs: tuple[str, ...] = ()  # the layer variables that must exist


def _recurrent(fn, gates: int, kind: str):
    def run(arrays: dict, opts: dict, layer: str) -> tuple[dict, str]:
        k, rk, b = arrays["kernel"], arrays["recurrent_kernel"], arrays.get("bias")
        if kind == "GRU" and b is not None and b.ndim == 1:
            raise UnsupportedModelError(
                f"the Keras GRU has reset_after=False (a {b.shape} bias), but PyTorch's GRU is "
                "reset_after=True; rebuild the Keras GRU with reset_after=True and retrain or "
                "transplant into it")
        bias = b if b is not None else np.zeros(
            (gates * rk.shape[0],) if kind == "LSTM" else (2, gates * rk.shape[0]), k.dtype)
        out = dict(zip(("w_ih", "w_hh", "b_ih", "b_hh"), fn(k, rk, bias)))
        if b is None:
            del out["b_ih"], out["b_hh"]
        return out, f"Keras {kind} -> PyTorch"
    return run


def _batchnorm(arrays: dict, opts: dict, layer: str) -> tuple[dict, str]:
    size = next(a.shape for a in arrays.values())
    dtype = next(a.dtype for a in arrays.values())
    gamma = arrays.get("gamma", np.ones(size, dtype))  # scale=False: a unit weight
    beta = arrays.get("beta", np.zeros(size, dtype))   # center=False: a zero bias
    out = dict(zip(("weight", "bias", "running_mean", "running_var"),
                   R.batchnorm_to_torch(gamma, beta, arrays["moving_mean"],
                                        arrays["moving_variance"])))
    out["num_batches_tracked"] = np.array(0, np.int64)
    return out, opts.get("_note", "") or "Keras BatchNormalization -> PyTorch"


_EXPORTERS = {e.name: e for e in [
    _Exporter("copy", {}),
    _Exporter("linear_to_torch", get_adapter("linear_to_torch").options),
    _Exporter("conv_to_torch", get_adapter("conv_to_torch").options),
    _Exporter("transpose", get_adapter("transpose").options),
    _Exporter("reshape", {"shape": "the PyTorch shape, a list (same values)"}),
    _Exporter("lstm_to_torch", {}, ("kernel", "recurrent_kernel", "bias"),
              ("w_ih", "w_hh", "b_ih", "b_hh"), 2, _recurrent(R.lstm_to_torch, 4, "LSTM"),
              ("kernel", "recurrent_kernel")),
    _Exporter("gru_to_torch", {}, ("kernel", "recurrent_kernel", "bias"),
              ("w_ih", "w_hh", "b_ih", "b_hh"), 2, _recurrent(R.gru_to_torch, 3, "GRU"),
              ("kernel", "recurrent_kernel")),
    _Exporter("batchnorm_to_torch",
              {"eps": "the PyTorch BatchNorm's eps (default 1e-5), compared with the layer's "
                      "epsilon", "eps_mismatch": "error|ok (default error)"},
              ("gamma", "beta", "moving_mean", "moving_variance"),
              ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"), 5,
              _batchnorm, ("moving_mean", "moving_variance")),
]}
EXPORTERS = tuple(sorted(_EXPORTERS))


@dataclass(frozen=True)
class ExportRule:
    """One ``[[export]]`` table: `targets` are (role, PyTorch key) for layer exporters, or
    ("", key) for single tensors; `at` is its file:line."""

    source: str
    name: str
    targets: tuple[tuple[str, str], ...]
    options: tuple[tuple[str, Any], ...] = ()
    at: str = "export rules"


@dataclass(frozen=True)
class ExportRules:
    """Parsed, validated export rules (`load_export_rules`)."""

    renames: tuple[Rename, ...] = ()
    rename_at: tuple[str, ...] = ()
    skips: tuple[str, ...] = ()
    exports: tuple[ExportRule, ...] = ()
    origin: str = "export rules"


def load_export_rules(rules: Any) -> ExportRules:
    """Reads and checks export rules from a TOML path or a dict (module docstring).

    Raises:
        RulesError: an unknown key, exporter or option, a wrong type, an unsafe regex, or two
            rules writing one PyTorch key, naming the file and line.
        InputError: a rules path that doesn't exist.
    """
    if isinstance(rules, ExportRules):
        return rules
    if isinstance(rules, Mapping):
        data, where = rules, Where("export rules", None)
    elif isinstance(rules, (str, os.PathLike)):
        path = os.fspath(rules)
        data, text = read_toml(path, "export rules file")
        where = Where(path, text)
    else:
        raise RulesError(f"export rules must be a TOML file path or a dict, got "
                         f"{type(rules).__name__}")
    for key in data:
        if key not in _TOP:
            raise RulesError(f"{where(key)}: unknown key '{key}'; export rules know "
                             f"{', '.join(_TOP)}")
    renames = parse_renames(data, where)
    raw = data.get("export", [])
    raw = [raw] if isinstance(raw, Mapping) else raw
    if not isinstance(raw, list):
        raise type_error(where("export"), "export", "a list of tables", raw)
    exports = tuple(_export_rule(item, i, where) for i, item in enumerate(raw))
    written: dict[str, ExportRule] = {}
    for rule in exports:
        for _, key in rule.targets:
            if key in written:
                raise RulesError(f"{rule.at}: export '{rule.name}' of {rule.source!r} writes "
                                 f"{key!r}, which the export of {written[key].source!r} at "
                                 f"{written[key].at} writes too; give each PyTorch key one rule")
            written[key] = rule
    return ExportRules(tuple(renames), tuple(where("from", r.pattern.pattern) for r in renames),
                       tuple(parse_skips(data, where)), exports, where.origin)


def _export_rule(item: Any, index: int, where: Where) -> ExportRule:
    at = where.in_table("export", index)
    if not isinstance(item, Mapping):
        raise type_error(at, "export", "a table", item)
    for key in ("name", "source"):
        if not isinstance(item.get(key), str) or not item.get(key):
            raise type_error(where.in_table("export", index, key), f"export.{key}",
                             "a non-empty string", item.get(key))
    name, at = item["name"], where.in_table("export", index, "name")
    exporter = _EXPORTERS.get(name)
    if exporter is None:
        raise RulesError(f"{at}: unknown exporter {name!r}; known: {', '.join(EXPORTERS)}")
    for key in item:
        if key not in _RULE_KEYS and key not in exporter.options:
            known = ", ".join(sorted(exporter.options)) or "none"
            raise RulesError(f"{where.in_table('export', index, key)}: unknown key '{key}' "
                             f"for exporter '{name}'; its options: {known} (rule keys: "
                             f"{', '.join(_RULE_KEYS)})")
    if exporter.roles:
        if "target" in item:
            raise RulesError(f"{at}: exporter '{name}' maps a layer; give targets = "
                             f"{{{', '.join(r + ' = ...' for r in exporter.roles)}}}")
        targets = item.get("targets")
        if not isinstance(targets, Mapping) or not targets or \
                not all(isinstance(v, str) and v for v in targets.values()):
            raise type_error(where.in_table("export", index, "targets"), "export.targets",
                             "a table of role = PyTorch key", targets)
        check_roles(at, f"exporter '{name}'", "targets", exporter.roles, exporter.required,
                    targets)
        pairs = tuple((r, targets[r]) for r in exporter.roles if r in targets)
    else:
        if "targets" in item:
            raise RulesError(f"{at}: exporter '{name}' maps one tensor; use target = \"...\", "
                             "not targets")
        if not isinstance(item.get("target"), str) or not item.get("target"):
            raise type_error(where.in_table("export", index, "target"), "export.target",
                             "a non-empty string (the PyTorch key)", item.get("target"))
        pairs = (("", item["target"]),)
    options = tuple((k, v) for k, v in item.items() if k not in _RULE_KEYS)
    return ExportRule(item["source"], name, pairs, options, at)


def export_state_dict(model: Any, path: str, rules: Any = None, *, like: Any = None,
                      write_rules: Any = None, overwrite: bool = False, inputs: tuple = (),
                      max_shard_size: Any = None, max_memory: Any = None) -> ExportReport:
    """Writes `model`'s weights with PyTorch key names and layouts to `path`.

    Args:
        model: a live model or any source `open_weights` reads (a `.keras` file is read
            without TensorFlow).
        path: `.safetensors` or `.npz`; never one of the inputs. With `max_shard_size`, a
            Hugging Face ``NAME.safetensors.index.json`` and its shards, written as a set.
        max_shard_size: the largest shard (bytes, or "2GB", "500MB").
        max_memory: the most memory the export may hold (bytes, or "800MB", "1.5GB"): it
            holds every PyTorch tensor until it writes them (and the largest one twice while
            converting it); more is refused (`OptionError`) before anything is read.
        rules: a TOML path or dict (module docstring); with `like`, your rules applied
            first (the variables and keys they cover are left out of inference).
        like: a PyTorch state dict saved from the module to fill (`.safetensors`, `.npz`;
            any values, never read): its keys and shapes decide the names, inferred from
            names and shapes (`surgery.port_rules(..., direction="to_torch")`), and the output
            has exactly its keys, shapes and dtypes (checked before writing).
        write_rules: with `like`, a TOML file to write the inferred export rules to (after
            the output; atomically, never over an input): ``rules=write_rules`` repeats it.
        overwrite: replace an existing `path` (and `write_rules`).
        inputs: other files the caller read (never written).

    Returns:
        An `ExportReport`: PyTorch key -> shape, with what each came from and notes on how to
        build the PyTorch module (BatchNorm eps).

    Raises:
        RulesError: bad rules (file:line), variables the rules don't cover (listed), a
            BatchNorm whose epsilon differs from the rule's eps.
        ShapeError, OptionError: an exporter whose options don't fit the variable.
        OutputError: `path` is an input, exists without `overwrite`, or is not `.safetensors`
            or `.npz`.

    Example:
    ```python
    surgery.export_state_dict(model, "model.safetensors", "examples/rules/torch_lstm_export.toml")
    ```
    """
    from ..io.atomic import atomic_path, check_output
    from ..io.sources import open_weights

    from ..io.shards import check_sharded_output, parse_memory, write_safetensors_sharded

    path = os.fspath(path)
    memory = parse_memory(max_memory)
    readers = [p for p in (model, rules, like, *inputs) if isinstance(p, (str, os.PathLike))]
    sharded = check_sharded_output(path, max_shard_size, kind="safetensors",
                                   what="max_shard_size")
    if sharded is None:
        if not path.lower().endswith((".safetensors", ".npz")):
            raise OutputError(f"{path}: a PyTorch state dict is written as .safetensors or "
                              ".npz; give the output one of those names", path=path)
        check_output(path, inputs=readers, overwrite=overwrite)  # before reading anything
    port = _port(model, rules, like, write_rules, readers + [path], overwrite)
    spec = load_export_rules(port.rules if port is not None else rules)
    src = open_weights(model)
    try:
        _check_memory(src, memory)
        out, report = _convert(src, spec, path)
    finally:
        if src is not model:
            src.close()
    if port is not None:
        out, report = _like_template(out, report, like, port)
    if sharded is not None:
        write_safetensors_sharded(out, path, sharded, inputs=readers, overwrite=overwrite)
    else:
        with atomic_path(path, inputs=readers, overwrite=overwrite) as tmp:
            if path.lower().endswith(".npz"):
                with open(tmp, "wb") as f:
                    np.savez(f, **out)
            else:
                from ..io.safetensors import write_safetensors

                write_safetensors(out, tmp)
    if write_rules is not None:
        from .port import write_port_rules

        write_port_rules(port, write_rules, inputs=readers + [path], overwrite=overwrite)
    return report


def _port(model: Any, rules: Any, like: Any, write_rules: Any, inputs: list,
          overwrite: bool) -> Any:
    """The `PortPlan` a template asks for (None without one), and the checks of
    `write_rules` (before anything is read)."""
    from ..io.atomic import check_output
    from .port import PortPlan, port_rules

    if like is None:
        if write_rules is not None:
            raise OptionError("write_rules writes the rules a template infers: give like="
                              "TEMPLATE (--like)")
        if rules is None:
            raise RulesError("exporting a PyTorch state dict needs rules naming every "
                             "PyTorch key, or like=TEMPLATE (a state dict saved from the "
                             "PyTorch module) to infer them")
        return None
    if write_rules is not None:
        check_output(write_rules, inputs=inputs, overwrite=overwrite)
    if isinstance(rules, PortPlan):
        return rules
    return port_rules(like, model, rules, direction="to_torch")


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _floating(name: str) -> bool:
    try:
        return _np_dtype(name).kind == "f" or name == "bfloat16"
    except TypeError:
        return False


def _like_template(out: dict, report: ExportReport, like: Any, port: Any
                   ) -> tuple[dict, ExportReport]:
    """`out` in the template's key order, checked against its keys, shapes and dtypes (a
    floating dtype cast to the template's, and the row says so); the report with the pairs."""
    from dataclasses import replace

    from ..io.sources import open_weights

    with open_weights(like) as template:
        infos = template.variables()
        name = template.name
    missing = [i.path for i in infos if i.path not in out]
    extra = [k for k in out if k not in {i.path for i in infos}]
    if missing or extra:
        raise RulesError(f"{name}: the export doesn't write the template's keys: missing "
                         f"{', '.join(missing[:5]) or 'none'}, extra "
                         f"{', '.join(extra[:5]) or 'none'}; fix the rules (--rules) so that "
                         "they write exactly the template's keys")
    notes = {}
    for info in infos:
        a = out[info.path]
        if tuple(a.shape) != tuple(info.shape):
            raise ShapeError(f"{info.path}: the export makes {tuple(a.shape)} but the template "
                             f"has {tuple(info.shape)}; fix the rule that writes it",
                             variable=info.path, shapes=(tuple(a.shape), tuple(info.shape)))
        if str(a.dtype) != info.dtype:
            if a.dtype.kind != "f" or not _floating(info.dtype):
                raise ShapeError(f"{info.path}: the export makes {a.dtype} but the template "
                                 f"has {info.dtype}; fix the rule that writes it",
                                 variable=info.path)
            out[info.path] = a.astype(_np_dtype(info.dtype))
            notes[info.path] = f"cast {a.dtype} -> {info.dtype} (the template's)"
    rows = tuple(replace(r, note="; ".join(n for n in (r.note, notes.get(r.key)) if n))
                 for r in report.rows)
    return {i.path: out[i.path] for i in infos}, replace(report, rows=rows, port=port.pairs)


def _check_memory(src: Any, limit: int | None) -> None:
    """The export holds every tensor it writes until it writes them, and reads the largest
    while those are held: that, from the variables' shapes, against `limit`."""
    from ..io.shards import check_memory, format_size, tensor_bytes

    sizes = [tensor_bytes(v.shape, v.dtype) for v in src.variables()]
    total, largest = sum(sizes), max(sizes, default=0)
    check_memory([(src.name, f"the export of its {len(sizes)} tensors", total + largest,
                   f"{format_size(total)} held until written + the largest, "
                   f"{format_size(largest)}, read again while converting")], limit)


def _convert(src, spec: ExportRules, path: str) -> tuple[dict[str, np.ndarray], ExportReport]:
    """Every tensor the rules produce (checked: sources exist, keys unique, every variable
    covered) and the report."""
    covered: dict[str, str] = {}  # Keras path -> what covers it
    skipped, warnings = [], []
    for sel in spec.skips:
        pred = compile_selector(sel)
        hit = [v.path for v in src.variables() if pred(v) and v.path not in covered]
        if not hit:
            warnings.append(f"skip {sel!r} matches no variable of the model")
        skipped += hit
        covered.update(dict.fromkeys(hit, "skip"))
    jobs: list[tuple[ExportRule, dict[str, str]]] = []
    for rule in spec.exports:
        reads = _sources(src, rule)
        for key in reads.values():
            covered[key] = rule.at
        jobs.append((rule, reads))
    written = {key: f"the export of {rule.source!r} at {rule.at}"
               for rule in spec.exports for _, key in rule.targets}
    renamed: list[tuple[str, str]] = []
    hits = [0] * len(spec.renames)
    for key in src:
        if key in covered:
            continue
        for i, r in enumerate(spec.renames):
            if r.pattern.search(key):
                new, hits[i] = r.pattern.sub(r.replacement, key), hits[i] + 1
                if new in written:
                    raise RulesError(f"{spec.rename_at[i]}: rename {r.text} writes {new!r} "
                                     f"from {key!r}, which {written[new]} writes too; give "
                                     "each PyTorch key one rule")
                written[new] = f"the rename of {key!r} at {spec.rename_at[i]}"
                renamed.append((key, new))
                covered[key] = "rename"
                break
    warnings += [f"rename {r.text} matches no variable of the model"
                 for r, n in zip(spec.renames, hits) if n == 0]
    left = [k for k in src if k not in covered]
    if left:
        raise RulesError(f"the export rules don't cover {', '.join(left[:5])}"
                         f"{' ...' if len(left) > 5 else ''}; add a rename, an export or a "
                         "skip for each")
    out: dict[str, np.ndarray] = {}
    rows: list[ExportRow] = []
    for rule, reads in jobs:
        for key, array, note in _run(src, rule, reads):
            out[key] = array
            source = reads[""] if "" in reads else rule.source.rstrip("/")
            rows.append(ExportRow(key, source, rule.name, tuple(array.shape), note))
    for key, new in renamed:
        out[new] = src.read(key)
        rows.append(ExportRow(new, key, "renamed", tuple(out[new].shape)))
    report = ExportReport(src.name, path, tuple(rows), tuple(skipped),
                          tuple(_epsilon_notes(src)), tuple(warnings))
    return out, report


def _sources(src, rule: ExportRule) -> dict[str, str]:
    """The Keras variables a rule reads, by variable name ("" for a single tensor)."""
    exporter = _EXPORTERS[rule.name]
    if not exporter.variables:
        if rule.source not in src:
            raise RulesError(f"{rule.at}: export '{rule.name}': no variable {rule.source!r} in "
                             f"the model; closest: {', '.join(closest_paths(rule.source, src, 3))}")
        return {"": rule.source}
    layer = rule.source.rstrip("/")
    reads = {v: f"{layer}/{v}" for v in exporter.variables if f"{layer}/{v}" in src}
    need = [v for v in exporter.needs if v not in reads]
    if need:
        raise RulesError(f"{rule.at}: export '{rule.name}': layer {layer!r} has no "
                         f"{', '.join(f'{layer}/{v}' for v in need)}; closest: "
                         f"{', '.join(closest_paths(f'{layer}/{need[0]}', src, 3))}")
    return reads


def _run(src, rule: ExportRule, reads: dict[str, str]) -> Iterator[tuple[str, np.ndarray, str]]:
    """(PyTorch key, array, note) for each tensor `rule` writes."""
    exporter, opts = _EXPORTERS[rule.name], dict(rule.options)
    arrays = {v: src.read(k) for v, k in reads.items()}
    if not exporter.roles:
        a = arrays[""]
        if rule.name == "copy":
            yield rule.targets[0][1], a, ""
            return
        adapter = get_adapter(rule.name)
        try:
            shape = tuple(opts.get("shape", a.shape)) if rule.name == "reshape" else a.shape
            result = adapter.fn({"": a}, {"": shape}, opts)
        except (ShapeError, OptionError) as e:
            raise type(e)(f"{rule.at}: export '{rule.name}' of {rule.source!r} {a.shape} with "
                          f"{_given(opts)}: {e}", variable=rule.source) from None
        except (TypeError, ValueError, IndexError, KeyError) as e:  # options of the wrong kind
            known = "; ".join(f"{k}: {d}" for k, d in adapter.options.items()) or "none"
            raise OptionError(f"{rule.at}: export '{rule.name}' of {rule.source!r} {a.shape} "
                              f"can't use {_given(opts)} ({e}); its options are {known}",
                              variable=rule.source) from None
        yield rule.targets[0][1], result.arrays[""], result.note
        return
    layer = rule.source.rstrip("/")
    config = _settings(src, layer)
    if rule.name == "batchnorm_to_torch":
        try:
            opts["_note"] = check_epsilon(layer, opts.get("eps", TORCH_BN_EPS),
                                          config.get("epsilon"),
                                          opts.get("eps_mismatch", "error"), side="export")
        except OptionError as e:
            raise OptionError(f"{rule.at}: export '{rule.name}' of {layer!r}: {e}",
                              layer=layer) from None
    _check_recurrent_config(rule, config)
    try:
        out, note = exporter.fn(arrays, opts, layer)
    except (ShapeError, OptionError, UnsupportedModelError) as e:
        raise type(e)(f"{rule.at}: export '{rule.name}' of {layer!r}: {e}",
                      layer=layer) from None
    extra = [r for r, _ in rule.targets if r not in out]
    if extra:
        raise RulesError(f"{rule.at}: export '{rule.name}' of {layer!r}: the layer has no "
                         f"bias, so there is no {', '.join(extra)} to write; build the PyTorch "
                         f"module with bias=False and drop {', '.join(extra)} from targets")
    missing = [r for r in out if r not in dict(rule.targets) and r in exporter.roles[:4]]
    if missing:
        raise RulesError(f"{rule.at}: export '{rule.name}' of {layer!r} makes "
                         f"{', '.join(missing)} but the rule's targets don't name "
                         f"{'it' if len(missing) == 1 else 'them'}; add "
                         f"{', '.join(r + ' = ...' for r in missing)} to targets")
    for role, key in rule.targets:
        if role in out:
            yield key, out[role], note


def _check_recurrent_config(rule: ExportRule, config: Mapping) -> None:
    """PyTorch's LSTM/GRU compute tanh and sigmoid; a Keras layer set otherwise can't match."""
    if rule.name not in ("lstm_to_torch", "gru_to_torch"):
        return
    kind = {"lstm_to_torch": "LSTM", "gru_to_torch": "GRU"}[rule.name]
    for key, want in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        have = config.get(key, want)
        if have != want:
            raise UnsupportedModelError(
                f"{rule.at}: export '{rule.name}' of {rule.source!r}: the layer's {key} is "
                f"{have!r} but PyTorch's {kind} uses {want!r}, so no PyTorch {kind} computes "
                "this layer; rebuild it with the defaults and retrain", layer=rule.source)


def _settings(src, layer: str) -> dict:
    """The Keras config of `layer`; for a Bidirectional direction (``bi/forward``), the
    wrapped layer's."""
    config = layer_config(src, layer)
    if config is None and layer.rsplit("/", 1)[-1] in ("forward", "backward"):
        parent = layer_config(src, layer.rsplit("/", 1)[0]) or {}
        inner = parent.get("backward_layer") if layer.endswith("/backward") else None
        inner = inner or parent.get("layer") or {}
        config = inner.get("config") if isinstance(inner, Mapping) else None
    return dict(config or {})


def _given(opts: Mapping) -> str:
    return ", ".join(f"{k} = {v!r}" for k, v in opts.items()) or "no options"


def _epsilon_notes(src) -> list[str]:
    """A note for each BatchNormalization whose epsilon is not PyTorch's default."""
    notes = []
    for info in src.layers():
        if info.class_name not in ("BatchNormalization", "SyncBatchNormalization"):
            continue
        eps = (layer_config(src, info.path) or {}).get("epsilon")
        if eps is None:
            notes.append(f"{info.path}: the layer's epsilon is unknown; build the PyTorch "
                         "BatchNorm with the Keras layer's epsilon as eps")
        elif not math.isclose(float(eps), TORCH_BN_EPS, rel_tol=1e-6):
            notes.append(f"{info.path}: epsilon {float(eps):g}; build the PyTorch BatchNorm "
                         f"with eps={float(eps):g} (PyTorch's default is 1e-05)")
    return notes
