"""The two passes of `export_state_dict`, so that its memory stays flat in the model's size.

The plan pass knows every PyTorch key, shape and dtype, and every report row, before any
tensor is read: each exporter's layout equation (its `shapes` in `export.py`: a Dense kernel
(in, out) becomes (out, in), a conv kernel (*k, in, out) becomes (out, in, *k), ...) turns the
Keras variables' shapes into the PyTorch ones. Where a rule falls outside what its equation covers (an unusual
option, a variable the exporter would refuse), the plan runs that one conversion to learn its
shapes, or its error, and drops the arrays. A template (``like=``) is checked against the plan
before anything is written.

The write pass converts one rule at a time (a layer rule, such as an LSTM, makes its few
tensors together) and hands each tensor to a streaming writer (`stream_safetensors`,
`stream_safetensors_sharded`, `.npz` one zip member at a time), so that at most one rule's
inputs and outputs are in memory at once.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..errors import OptionError, OutputError, RulesError, ShapeError, UnsupportedModelError
from ..selection import closest_paths, compile_selector
from .adapters import TORCH_BN_EPS, check_epsilon, get_adapter, layer_config
from .export import _EXPORTERS, ExportRule, ExportRules, _bytes, _floating, _np_dtype
from .report import ExportReport, ExportRow

__all__ = ["ExportDraft", "ExportPlan", "plan_export", "check_export_memory",
           "resolve_export", "apply_template", "write_export"]

@dataclass(frozen=True)
class _Job:
    """One step of the write pass: an export rule (None for a rename) with the Keras variables
    it reads by role ("" for one tensor), the options it runs with, and what it makes (None
    until known: its equation doesn't cover it, and the plan runs it once); `scratch` is the
    memory its conversion holds beyond its inputs and outputs."""

    rule: ExportRule | None
    reads: Mapping[str, str]
    made: tuple[tuple[str, tuple, str], ...] | None  # (PyTorch key, shape, dtype)
    note: str = ""
    scratch: int = 0
    opts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportDraft:
    """The plan before the rules' settings are checked: the steps (exports in rule order,
    then renames), the variables skipped, and the warnings."""

    jobs: tuple[_Job, ...]
    skipped: tuple[str, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class ExportPlan:
    """What the export writes, before any tensor is read: the steps, the keys in the order
    written with their (shape, dtype) as written, the step making each key, the keys cast to
    a template's dtype, and the report."""

    jobs: tuple[_Job, ...]
    order: tuple[str, ...]
    specs: Mapping[str, tuple[tuple, str]]
    owner: Mapping[str, int]
    casts: Mapping[str, str]
    report: ExportReport


# ------------------------------------------------------------------------ the plan pass

def plan_export(src, spec: ExportRules) -> ExportDraft:
    """The steps the rules ask for, with their outputs' shapes where the exporters' equations
    give them (checked: sources exist, keys unique, every variable covered); nothing is read.
    Then `check_export_memory`, `resolve_export` (the rules' settings checked, the rest of
    the shapes learnt), `apply_template`, `write_export`."""
    covered: dict[str, str] = {}  # Keras path -> what covers it
    skipped, warnings = [], []
    for sel in spec.skips:
        pred = compile_selector(sel)
        hit = [v.path for v in src.variables() if pred(v) and v.path not in covered]
        if not hit:
            warnings.append(f"skip {sel!r} matches no variable of the model")
        skipped += hit
        covered.update(dict.fromkeys(hit, "skip"))
    jobs: list[_Job] = []
    for rule in spec.exports:
        reads = _sources(src, rule)
        for key in reads.values():
            covered[key] = rule.at
        jobs.append(_Job(rule, reads, None))
    written = {key: f"the export of {rule.source!r} at {rule.at}"
               for rule in spec.exports for _, key in rule.targets}
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
                info = src.info(key)
                jobs.append(_Job(None, {"": key}, ((new, _shape(info.shape), info.dtype),)))
                covered[key] = "rename"
                break
    warnings += [f"rename {r.text} matches no variable of the model"
                 for r, n in zip(spec.renames, hits) if n == 0]
    left = [k for k in src if k not in covered]
    if left:
        raise RulesError(f"the export rules don't cover {', '.join(left[:5])}"
                         f"{' ...' if len(left) > 5 else ''}; add a rename, an export or a "
                         "skip for each")
    return ExportDraft(tuple(_derive(src, job) if job.rule is not None else job
                             for job in jobs), tuple(skipped), tuple(warnings))


def _shape(shape) -> tuple:
    return tuple(int(d) for d in shape)


def _little(dtype: str) -> str:
    """The name of `dtype` as written: a big-endian numpy dtype ('>f4', from an .npz
    written on a big-endian machine) becomes its little-endian one ('float32')."""
    try:
        dt = _np_dtype(dtype)
    except TypeError:
        return dtype
    return str(dt.newbyteorder("<")) if dt.byteorder == ">" else dtype


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


def _derive(src, job: _Job) -> _Job:
    """`job` with what its rule makes, where the exporter's equation covers it."""
    rule = job.rule
    ins = {role: (_shape(src.info(k).shape), src.info(k).dtype) for role, k in job.reads.items()}
    got = _EXPORTERS[rule.name].shapes(ins, dict(rule.options))
    if got is None:
        return job
    made, note, scratch = got
    keys, roles = dict(rule.targets), _EXPORTERS[rule.name].roles
    if any(role not in made for role in keys) or \
            any(r not in keys and r in roles[:4] for r in made):
        return job  # the conversion's own checks say what is wrong
    made = tuple((key, _shape(made[role][0]), made[role][1]) for role, key in rule.targets)
    return replace(job, made=made, note=note, scratch=scratch)


def check_export_memory(src, draft: ExportDraft, limit: int | None,
                        template: Mapping[str, str] | None = None) -> None:
    """Refuses (`check_memory`) an export whose largest step needs more than `limit`, before
    anything is read: one rule's inputs (read) + its outputs (made) + what its conversion
    holds besides (the Flatten row reorder, the GRU gate reorder) + the largest of its
    outputs cast to the `template`'s dtype (key -> dtype). A rule whose outputs only its
    conversion can tell is counted as making as much as it reads."""
    from ..io.shards import check_memory, format_size

    template, needs = template or {}, []
    for job in draft.jobs:
        read = sum(_bytes(_shape(src.info(k).shape), src.info(k).dtype)
                   for k in job.reads.values())
        keys = [k for _, k in job.rule.targets] if job.made is None else \
            [k for k, _, _ in job.made]
        made = read if job.made is None else sum(_bytes(s, d) for _, s, d in job.made)
        cast = max([(_bytes(s, template.get(k, _little(d))), template.get(k, _little(d)))
                    for k, s, d in job.made or () if template.get(k, _little(d)) != d],
                   default=(0, ""))  # to a template's dtype, or a big-endian one to little
        if job.rule is None or job.rule.name == "copy":  # the tensor read is written
            made, detail = 0, "read" if cast[0] else "read as it is"
        else:
            detail = (f"{format_size(read)} read + {format_size(made)} made by exporter "
                      f"'{job.rule.name}'")
            if job.scratch:
                detail += f" + {format_size(job.scratch)} held while converting"
        if cast[0]:
            detail += f" + {format_size(cast[0])} cast to {cast[1]}"
        sources = list(job.reads.values())
        what = f"tensor{'s' if len(sources) > 1 else ''} {', '.join(sources)} -> " \
               f"{', '.join(keys)}"
        needs.append((src.name, what, read + made + job.scratch + cast[0], detail))
    check_memory(needs, limit)


def resolve_export(src, draft: ExportDraft, path: str) -> ExportPlan:
    """Each rule's settings checked (BatchNorm epsilon, recurrent activations) and the shapes
    its equation didn't give learnt by running it (its arrays dropped), rule by rule; the plan
    and its report (rows in rule order, then the renames)."""
    done, rows = [], []
    for job in draft.jobs:
        rule = job.rule
        if rule is not None:
            opts = _prepare(src, rule)
            if job.made is None:
                made, notes = [], []
                for key, array, note in _produce(src, rule, job.reads, opts):
                    made.append((key, _shape(array.shape), str(array.dtype)))
                    notes.append(note)
                    del array
                job = replace(job, made=tuple(made), note=notes[0] if notes else "")
            elif rule.name == "batchnorm_to_torch":
                job = replace(job, note=opts.get("_note", "") or job.note)
            job = replace(job, opts=opts)
        done.append(job)
        for key, shape, _ in job.made:
            if rule is None:
                rows.append(ExportRow(key, job.reads[""], "renamed", shape))
            else:
                source = job.reads[""] if "" in job.reads else rule.source.rstrip("/")
                rows.append(ExportRow(key, source, rule.name, shape, job.note))
    report = ExportReport(src.name, path, tuple(rows), draft.skipped,
                          tuple(_epsilon_notes(src)), draft.warnings)
    specs = {key: (shape, dtype) for job in done for key, shape, dtype in job.made}
    owner = {key: i for i, job in enumerate(done) for key, _, _ in job.made}
    return ExportPlan(tuple(done), tuple(specs), specs, owner, {}, report)


def apply_template(plan: ExportPlan, infos: list, name: str, port: Any) -> ExportPlan:
    """`plan` in the template's key order (`infos`, the template's variables), checked
    against its keys, shapes and dtypes (a floating dtype cast to the template's, and the row
    says so), before anything is written; the report with the pairs."""
    missing = [i.path for i in infos if i.path not in plan.specs]
    extra = [k for k in plan.order if k not in {i.path for i in infos}]
    if missing or extra:
        raise RulesError(f"{name}: the export doesn't write the template's keys: missing "
                         f"{', '.join(missing[:5]) or 'none'}, extra "
                         f"{', '.join(extra[:5]) or 'none'}; fix the rules (--rules) so that "
                         "they write exactly the template's keys")
    notes, casts = {}, {}
    for info in infos:
        shape, dtype = plan.specs[info.path]
        if tuple(shape) != tuple(info.shape):
            raise ShapeError(f"{info.path}: the export makes {tuple(shape)} but the template "
                             f"has {tuple(info.shape)}; fix the rule that writes it",
                             variable=info.path, shapes=(tuple(shape), tuple(info.shape)))
        if dtype != info.dtype:
            if not _floating(dtype) or not _floating(info.dtype):  # bfloat16's kind is V
                raise ShapeError(f"{info.path}: the export makes {dtype} but the template "
                                 f"has {info.dtype}; fix the rule that writes it",
                                 variable=info.path)
            casts[info.path] = info.dtype
            notes[info.path] = f"cast {dtype} -> {info.dtype} (the template's)"
    rows = tuple(replace(r, note="; ".join(n for n in (r.note, notes.get(r.key)) if n))
                 for r in plan.report.rows)
    specs = {i.path: (plan.specs[i.path][0], casts.get(i.path, plan.specs[i.path][1]))
             for i in infos}
    return replace(plan, order=tuple(specs), specs=specs, casts=casts,
                   report=replace(plan.report, rows=rows, port=port.pairs))


# ----------------------------------------------------------------------- the conversions

def _prepare(src, rule: ExportRule) -> dict:
    """The rule's options, its layer's settings checked (a BatchNorm's epsilon: its note in
    ``_note``; a recurrent layer's activations)."""
    opts = dict(rule.options)
    if not _EXPORTERS[rule.name].roles:
        return opts
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
    return opts


def _produce(src, rule: ExportRule, reads: Mapping[str, str], opts: dict
             ) -> Iterator[tuple[str, np.ndarray, str]]:
    """(PyTorch key, array, note) for each tensor `rule` writes, its inputs read here."""
    exporter = _EXPORTERS[rule.name]
    arrays = {v: src.read(k) for v, k in reads.items()}
    if not exporter.roles:
        a = arrays.pop("")
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
        del a  # the input, before the output is written
        yield rule.targets[0][1], result.arrays.pop(""), result.note
        return
    layer = rule.source.rstrip("/")
    try:
        out, note = exporter.fn(arrays, opts, layer)
    except (ShapeError, OptionError, UnsupportedModelError) as e:
        raise type(e)(f"{rule.at}: export '{rule.name}' of {layer!r}: {e}",
                      layer=layer) from None
    arrays.clear()  # the inputs, before the outputs are written
    _check_targets(rule, layer, list(out))
    for role, key in rule.targets:
        if role in out:
            yield key, out.pop(role), note


def _check_targets(rule: ExportRule, layer: str, made: list[str]) -> None:
    """A layer rule's targets against the roles its conversion makes."""
    exporter = _EXPORTERS[rule.name]
    extra = [r for r, _ in rule.targets if r not in made]
    if extra:
        raise RulesError(f"{rule.at}: export '{rule.name}' of {layer!r}: the layer has no "
                         f"bias, so there is no {', '.join(extra)} to write; build the PyTorch "
                         f"module with bias=False and drop {', '.join(extra)} from targets")
    missing = [r for r in made if r not in dict(rule.targets) and r in exporter.roles[:4]]
    if missing:
        raise RulesError(f"{rule.at}: export '{rule.name}' of {layer!r} makes "
                         f"{', '.join(missing)} but the rule's targets don't name "
                         f"{'it' if len(missing) == 1 else 'them'}; add "
                         f"{', '.join(r + ' = ...' for r in missing)} to targets")


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


# ------------------------------------------------------------------------ the write pass

class _Tensors:
    """``fetch(key)`` for the writers: converts the rule that makes `key` (the previous
    rule's leftovers dropped first), checks what it made against the plan, and hands out
    each tensor once, cast to the template's dtype. A template that interleaves two rules'
    keys makes a rule run again rather than its tensors wait in memory."""

    def __init__(self, src, plan: ExportPlan):
        self._src, self._plan, self._held = src, plan, {}

    def __call__(self, key: str) -> np.ndarray:
        if key not in self._held:
            self._held = {}
            self._held = self._make(self._plan.jobs[self._plan.owner[key]])
        a = self._held.pop(key)
        if key in self._plan.casts:
            a = a.astype(_np_dtype(self._plan.casts[key]))
        if a.dtype.byteorder == ">":  # safetensors and PyTorch are little-endian
            a = a.astype(a.dtype.newbyteorder("<"))
        return a

    def _make(self, job: _Job) -> dict[str, np.ndarray]:
        if job.rule is None:
            got = {job.made[0][0]: self._src.read(job.reads[""])}
        else:
            got = {key: a for key, a, _ in _produce(self._src, job.rule, job.reads,
                                                    dict(job.opts))}
        for key, shape, dtype in job.made:
            a = got.get(key)
            if a is None or (_shape(a.shape), str(a.dtype)) != (shape, dtype):  # a bug
                raise RuntimeError(f"{key}: the export planned {dtype} {shape} but made "
                                   f"{a if a is None else (a.dtype, a.shape)}; please report")
        return got


def write_export(src, plan: ExportPlan, path: str, sharded: int | None, *, inputs: list,
                 overwrite: bool) -> None:
    """Writes `plan` to `path` (`.safetensors`, `.npz`, or with `sharded` an index and its
    shards), atomically, one rule's tensors in memory at a time."""
    from ..io.atomic import atomic_path
    from ..io.safetensors import DTYPES, stream_safetensors
    from ..io.shards import stream_safetensors_sharded

    specs = [(key, plan.specs[key][0], _little(plan.specs[key][1])) for key in plan.order]
    npz = path.lower().endswith(".npz")
    for key, _, dtype in specs:
        if not npz and dtype not in DTYPES.values():  # named with the output, up front
            raise OutputError(f"{path}: tensor {key!r} has dtype {dtype}, which safetensors "
                              "can't hold", path=path, variable=key)
        if npz and dtype == "bfloat16":
            raise OutputError(f"{path}: tensor {key!r} is bfloat16, which .npz can't hold "
                              "(np.load reads it back as raw bytes); write .safetensors, or "
                              "pass like= a template with float32 tensors to cast it",
                              path=path, variable=key)
    fetch = _Tensors(src, plan)
    if sharded is not None:
        stream_safetensors_sharded(specs, fetch, path, sharded, inputs=inputs,
                                   overwrite=overwrite)
        return
    with atomic_path(path, inputs=inputs, overwrite=overwrite) as tmp:
        if npz:
            _write_npz(plan.order, fetch, tmp)
        else:
            stream_safetensors(specs, fetch, tmp)


def _write_npz(keys, fetch: Callable[[str], np.ndarray], path: str) -> None:
    """What ``np.savez(path, **tensors)`` writes (stored ``KEY.npy`` members, zip64), one
    member at a time."""
    with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED,
                         allowZip64=True) as z:
        for key in keys:
            a = np.asarray(fetch(key))
            if not a.dtype.hasobject:  # C order, so that its own memory can be written
                a = np.ascontiguousarray(a).reshape(a.shape)
            with z.open(key + ".npy", "w", force_zip64=True) as member:
                if a.dtype.hasobject:
                    np.lib.format.write_array(member, a, allow_pickle=True)
                else:  # write_array would copy the bytes (tobytes) for a zip member
                    _npy_header(member, np.lib.format.header_data_from_array_1_0(a))
                    member.write(memoryview(a.reshape(-1).view(np.uint8)))
            del a  # before the next fetch


def _npy_header(member, header: dict) -> None:
    """The .npy header `np.save` writes: version 1.0, or 2.0 for a header over 64 KiB."""
    try:
        np.lib.format.write_array_header_1_0(member, header)
    except ValueError:
        np.lib.format.write_array_header_2_0(member, header)
