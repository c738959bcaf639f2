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
from typing import Any, Callable, Mapping

import numpy as np

from .. import reshape as R
from ..errors import OptionError, OutputError, RulesError, UnsupportedModelError
from .adapters import get_adapter
from .report import ExportReport
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
    shapes: Callable | None = None  # the layout equation (below)


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


# Each exporter's layout equation: (the inputs' (shape, dtype) by role, the rule's options)
# -> ({role: (shape, dtype)} made, note, scratch bytes), or None where the equation does not
# cover them (the plan then runs the conversion once). Notes are the conversions' own.

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


def _numeric(dtype: str) -> bool:
    try:
        return _np_dtype(dtype).kind in "fiub" or dtype == "bfloat16"
    except TypeError:
        return False


def _ints(value: Any, low: int) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= low for d in value)


def _bytes(shape: tuple, dtype: str) -> int:
    from ..io.shards import tensor_bytes

    return tensor_bytes(shape, dtype)


def _copy_shapes(ins, opts):
    return {"": ins[""]}, "", 0


def _linear_shapes(ins, opts):
    (shape, dtype) = ins[""]
    if len(shape) != 2 or not _numeric(dtype):
        return None
    made = {"": ((shape[1], shape[0]), dtype)}
    if "feature_shape" not in opts:
        return made, "Keras Dense -> PyTorch Linear", 0
    fs = opts["feature_shape"]
    if not (_ints(fs, 1) and len(fs) == 3 and math.prod(fs) == shape[0]):
        return None
    return made, ("Keras Dense after Flatten (NHWC) -> PyTorch Linear after flatten "
                  "(NCHW)"), _bytes(shape, dtype)  # the rows reordered, then transposed


def _conv_shapes(ins, opts):
    (shape, dtype), kind = ins[""], opts.get("kind", "conv")
    if kind not in ("conv", "depthwise", "transpose") or len(shape) not in (3, 4, 5) or \
            not _numeric(dtype):
        return None
    n = len(shape) - 2
    out = ((shape[n] * shape[n + 1], 1) if kind == "depthwise" else
           (shape[n + 1], shape[n])) + shape[:n]
    return {"": (out, dtype)}, f"Keras {kind} -> PyTorch", 0


def _transpose_shapes(ins, opts):
    (shape, dtype), axes = ins[""], opts.get("axes")
    if axes is None:
        return {"": (shape[::-1], dtype)}, f"transposed {shape} axes reversed", 0
    if not (_ints(axes, 0) and axes and sorted(axes) == list(range(len(shape)))):
        return None
    return {"": (tuple(shape[i] for i in axes), dtype)}, f"transposed {shape} axes {axes}", 0


def _reshape_shapes(ins, opts):
    (shape, dtype) = ins[""]
    target = opts.get("shape", shape)
    if not (_ints(target, 0) and math.prod(target) == math.prod(shape)):
        return None
    return {"": (tuple(target), dtype)}, f"reshaped {shape} -> {tuple(target)}", 0


def _recurrent_shapes(gates: int, kind: str):
    def shapes(ins, opts):
        (k, kd), (rk, rkd) = ins["kernel"], ins["recurrent_kernel"]
        b, bd = ins.get("bias", (None, None))
        if not all(_numeric(d) for d in (kd, rkd, bd or kd)) or len(k) != 2 or k[1] % gates:
            return None
        u = k[1] // gates
        if rk != (u, gates * u) or b not in (None, (gates * u,) if gates == 4 else
                                             (2, gates * u)):
            return None
        made = {"w_ih": ((gates * u, k[0]), kd), "w_hh": ((gates * u, u), rkd)}
        if b is not None:
            made.update(b_ih=((gates * u,), bd), b_hh=((gates * u,), bd))
        scratch = 0 if gates == 4 else max(_bytes(k, kd), _bytes(rk, rkd))  # gates reordered
        return made, f"Keras {kind} -> PyTorch", scratch
    return shapes


def _batchnorm_shapes(ins, opts):
    first = next(iter(ins.values()))
    if any(len(s) != 1 or s != first[0] or not _numeric(d) for s, d in ins.values()):
        return None
    made = {role: ins.get(v, first) for role, v in (("weight", "gamma"), ("bias", "beta"),
                                                    ("running_mean", "moving_mean"),
                                                    ("running_var", "moving_variance"))}
    made["num_batches_tracked"] = ((), "int64")
    return made, opts.get("_note", "") or "Keras BatchNormalization -> PyTorch", 0


_EXPORTERS = {e.name: e for e in [
    _Exporter("copy", {}, shapes=_copy_shapes),
    _Exporter("linear_to_torch", get_adapter("linear_to_torch").options, shapes=_linear_shapes),
    _Exporter("conv_to_torch", get_adapter("conv_to_torch").options, shapes=_conv_shapes),
    _Exporter("transpose", get_adapter("transpose").options, shapes=_transpose_shapes),
    _Exporter("reshape", {"shape": "the PyTorch shape, a list (same values)"},
              shapes=_reshape_shapes),
    _Exporter("lstm_to_torch", {}, ("kernel", "recurrent_kernel", "bias"),
              ("w_ih", "w_hh", "b_ih", "b_hh"), 2, _recurrent(R.lstm_to_torch, 4, "LSTM"),
              ("kernel", "recurrent_kernel"), _recurrent_shapes(4, "LSTM")),
    _Exporter("gru_to_torch", {}, ("kernel", "recurrent_kernel", "bias"),
              ("w_ih", "w_hh", "b_ih", "b_hh"), 2, _recurrent(R.gru_to_torch, 3, "GRU"),
              ("kernel", "recurrent_kernel"), _recurrent_shapes(3, "GRU")),
    _Exporter("batchnorm_to_torch",
              {"eps": "the PyTorch BatchNorm's eps (default 1e-5), compared with the layer's "
                      "epsilon", "eps_mismatch": "error|ok (default error)"},
              ("gamma", "beta", "moving_mean", "moving_variance"),
              ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"), 5,
              _batchnorm, ("moving_mean", "moving_variance"), _batchnorm_shapes),
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
        max_memory: the most memory one step of the export may hold (bytes, or "800MB",
            "1.5GB"). The export streams: it converts one rule at a time (a layer rule such as
            an LSTM makes its few tensors together) and writes each tensor as it comes, so a
            step holds one rule's inputs and outputs (plus a conversion's scratch: the Flatten
            row reorder, the GRU gate reorder; and a tensor cast to a template's dtype),
            whatever the model's size. A step that needs more is refused (`OptionError`, naming
            it) before anything is read.
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
    from ..io.atomic import check_output
    from ..io.shards import check_sharded_output, parse_memory
    from ..io.sources import open_weights
    from . import export_write as W

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
    template = None
    if port is not None:
        with open_weights(like) as t:  # its header: keys, shapes, dtypes
            template = (t.variables(), t.name)
    src = open_weights(model)
    try:
        draft = W.plan_export(src, spec)  # shapes from the rules: nothing read yet
        W.check_export_memory(src, draft, memory,
                              template and {i.path: i.dtype for i in template[0]})
        plan = W.resolve_export(src, draft, path)
        if port is not None:
            plan = W.apply_template(plan, *template, port)  # before anything is written
        W.write_export(src, plan, path, sharded, inputs=readers, overwrite=overwrite)
    finally:
        if src is not model:
            src.close()
    if write_rules is not None:
        from .port import write_port_rules

        write_port_rules(port, write_rules, inputs=readers + [path], overwrite=overwrite)
    return plan.report


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

