"""Commands that read and move weights between files: inspect, diff, transplant, convert,
export."""

from __future__ import annotations

import os
from typing import Callable

import click

import surgery

from .app import main
from .options import (atol_option, dry_run_option, emit, emit_report, json_option,
                      overwrite_option, print_json, unsafe_option)


@main.command("inspect")
@click.argument("path")
@click.option("--architecture", metavar="MODEL.keras|config.json",
              help="Names the variables of a bare .weights.h5 or .weights.json file.")
@click.option("--stats", is_flag=True, help="Per-variable mean, std, min, max, zeros, "
              "non-finite count.")
@json_option()
def inspect_cmd(path: str, architecture: str | None, stats: bool, as_json: bool) -> int:
    """Layers, variables, shapes, dtypes, trainable flags, initializers, regularizers,
    constraints (and LSTM/GRU gate layouts), parameter counts; --stats adds statistics.

    PATH is a .keras, .weights.h5, Keras 2 .h5 or .npz file (read without TensorFlow), a
    SavedModel/TF Hub directory or a TF checkpoint prefix.

    \b
    Examples:
      surgery inspect sample_models/cnn.keras
      surgery inspect weights.weights.h5 --architecture model.keras --json
      surgery inspect sample_models/lstm.keras --stats
    """
    inv = surgery.inspect(path, architecture=architecture, stats=stats)
    emit(inv, as_json)
    return 0


@main.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--architecture-a", metavar="MODEL", help="Architecture for a bare .weights.h5 A.")
@click.option("--architecture-b", metavar="MODEL", help="Architecture for a bare .weights.h5 B.")
@json_option()
def diff_cmd(a: str, b: str, architecture_a: str | None, architecture_b: str | None,
             as_json: bool) -> int:
    """Compare two models or weights files variable by variable.

    Each variable is: unchanged, changed (max abs difference), reshaped, only in a, only in b.
    Exit code 0 when identical, 1 when they differ, 2 on bad input.

    \b
    Example:
      surgery diff sample_models/cnn.keras finetuned.keras
    """
    d = surgery.diff(a, b, architecture_a=architecture_a, architecture_b=architecture_b)
    emit(d, as_json)
    return 0 if d.identical else 1


_RULES_HELP = """
\b
Rules (TOML, --rules R.toml; see the README for every adapter):
  match = "structural"          # exact | structural (default) | shape
  skip = ["head/*"]             # targets left initialized, sources ignored
  [[rename]]                    # regex renames of source keys, in order
  from = "^backbone/"
  to = "trunk/"
  [[adapter]]                   # a named conversion for one target variable
  target = "block1_conv/kernel"
  name = "adapt_in_channels"    # RGB -> gray: sum the input channels
  mode = "sum"
  [[adapter]]                   # or for a layer, from named source tensors
  target = "encoder"
  name = "lstm_from_torch"
  sources = { w_ih = "lstm.weight_ih_l0", w_hh = "lstm.weight_hh_l0",
              b_ih = "lstm.bias_ih_l0", b_hh = "lstm.bias_hh_l0" }
"""


def _shard_size(ctx, param, value):
    """--max-shard-size: bytes, or 10KB, 500MB, 2GB, 512MiB (checked before TensorFlow)."""
    if value is None:
        return None
    from surgery.io.shards import parse_size

    return parse_size(value, "--max-shard-size")


def _check_sharded(output: str | None, max_shard_size: int | None) -> None:
    """OUT and --max-shard-size go together (before TensorFlow's import)."""
    if output is not None:
        from surgery.io.shards import check_sharded_output

        check_sharded_output(output, max_shard_size, what="--max-shard-size")


max_shard_size_option = click.option(
    "--max-shard-size", metavar="SIZE", callback=_shard_size,
    help="Write OUT.weights.json as Keras 3 sharded weights (the layout "
    "model.save_weights(OUT, max_shard_size=) writes; model.load_weights(OUT) reads it), each "
    "shard at most SIZE: 2GB, 500MB, 10KB (powers of 1000), 512MiB, or bytes. A variable "
    "larger than SIZE gets a shard of its own. The shards and the index appear all, or none.")


def _memory_size(ctx, param, value):
    """--max-memory: bytes, or 800MB, 1.5GB, 2GiB (checked before TensorFlow)."""
    from surgery.io.shards import parse_memory

    return parse_memory(value, "--max-memory")


def max_memory_option(what: str) -> Callable:
    """--max-memory, with `what` one step holds on that command."""
    return click.option("--max-memory", metavar="SIZE", callback=_memory_size,
                        help=f"The most memory {what} may hold (800MB, 1.5GB, 2GiB, bytes): "
                        "more is an error naming it, its size and the limit (exit 2), before "
                        "anything is written.")


def _refuse_memory_limit(max_memory: int | None) -> None:
    """--max-memory bounds the file -> file paths only (before TensorFlow's import)."""
    if max_memory is not None:
        from surgery.errors import OptionError

        raise OptionError("--max-memory applies to file -> file transplants (a .keras TARGET "
                          "and a .keras or .weights.json OUT, without --verify), which hold one "
                          "tensor at a time; this one loads the models into TensorFlow, whose "
                          "memory it can't bound")


def _check_convert_memory(model: str, max_memory: int | None) -> None:
    """convert holds the whole model twice (as Keras 2 and as Keras 3, to compare them): its
    size from the file's headers, against --max-memory, before TensorFlow's import."""
    if max_memory is None:
        return
    from surgery.io.shards import check_memory, format_size, tensor_bytes

    with surgery.open_weights(model) as src:
        total = sum(tensor_bytes(v.shape, v.dtype) for v in src.variables())
    check_memory([(model, "the model, loaded twice (as Keras 2 and as Keras 3, to compare "
                   "them),", 2 * total, f"2 x {format_size(total)}")], max_memory)


@main.command("transplant", epilog=_RULES_HELP)
@click.argument("source")
@click.argument("target")
@click.option("-o", "--output", metavar="OUT.keras", help="Where to write the filled model "
              "(required unless --dry-run): a .keras, or sharded weights OUT.weights.json "
              "with --max-shard-size.")
@click.option("--rules", metavar="RULES.toml", help="Renames, skips, adapters, matching mode.")
@click.option("--strict", is_flag=True, help="Fail (exit 1, nothing written) on missing, "
              "mismatched or non-finite weights, or a rule that matches nothing.")
@dry_run_option("Print the full report; write nothing.")
@click.option("--verify", "do_verify", is_flag=True, help="Run SOURCE and the result on a probe "
              "batch; exit 1 (nothing written) if outputs differ.")
@click.option("--inputs", metavar="X.npz", help="Your own inputs for --verify, compared "
              "besides the random probe families (implies --verify).")
@atol_option("Tolerance for --verify.")
@overwrite_option()
@max_shard_size_option
@max_memory_option("one tensor (or one adapter's inputs and outputs)")
@click.option("--source-architecture", metavar="MODEL.keras|config.json",
              help="Names the variables of a bare .weights.h5 or .weights.json SOURCE.")
@click.option("--from", "layout", type=click.Choice(["keras", "torch"]), default="keras",
              show_default=True, help="torch: SOURCE is a PyTorch state dict (.safetensors, "
              ".npz): the rules are inferred from names and shapes (the pairs are printed "
              "before the table), --rules on top; an ambiguous pairing is an error naming the "
              "rule that settles it.")
@click.option("--write-rules", metavar="MAPPING.toml", help="With --from torch: write the "
              "inferred rules as a commented TOML file (on --dry-run too); --rules "
              "MAPPING.toml then repeats the port exactly.")
@unsafe_option()
@json_option("Print the report as JSON only.")
def transplant_cmd(source, target, output, rules, strict, dry_run, do_verify, inputs, atol,
                   overwrite, max_shard_size, max_memory, source_architecture, layout,
                   write_rules, unsafe, as_json) -> int:
    """Fill TARGET's architecture with SOURCE's weights and write OUT.

    SOURCE: .keras, .weights.h5, Keras 2 .h5, .npz, .safetensors, sharded weights
    (.weights.json, model.safetensors.index.json), a SavedModel/Hub directory or a TF
    checkpoint. TARGET: a .keras (or Keras 2 .h5) model whose architecture OUT takes.
    Matching: your rules, then exact paths, then layers of the same class and shapes in model
    order. Shapes never change silently: a mismatch is reported and left initialized unless a
    rule names an adapter. Exit 0 done, 1 a --strict or --verify check failed, 2 bad input.

    \b
    Examples:
      surgery transplant pretrained.keras new_model.keras -o filled.keras
      surgery transplant sample_models/cnn.keras gray.keras -o out.keras --rules gray.toml
      surgery transplant resnet.safetensors model.keras -o out.keras --rules torch.toml --strict
      surgery transplant resnet.safetensors model.keras -o out.keras --from torch \\
          --write-rules mapping.toml
      surgery transplant a.keras b.keras --dry-run --json
      surgery transplant big.keras new.keras -o out.weights.json --max-shard-size 2GB
    """
    from surgery.errors import CheckFailed

    if not dry_run and not output:
        raise click.UsageError("give -o/--output (or --dry-run)")
    source_path = source
    do_verify = do_verify or inputs is not None
    legacy_source = _verifiable_source(source) if do_verify and not dry_run else False
    readers = [source, target, rules, source_architecture, inputs,
               surgery.load_rules(rules).files() if rules else ()]  # + files the rules read
    check_inputs_file(inputs)
    _check_write_rules(write_rules, layout, readers + [output], overwrite)
    if not dry_run:  # before the slow part (TensorFlow's import)
        from surgery.io.atomic import check_output

        _check_sharded(output, max_shard_size)
        check_output(output, inputs=readers, overwrite=overwrite)
    if source_architecture:
        source = surgery.open_weights(source, architecture=source_architecture)
    try:
        streamable = (output or "").lower().endswith((".keras", ".weights.json"))
        if do_verify or not target.lower().endswith(".keras") or (output and not streamable):
            _refuse_memory_limit(max_memory)
            model = surgery.load_model(target, safe_mode=not unsafe)
            port = _port(source, model, rules, layout, unsafe)
            report = surgery.transplant(source, model, port or rules, strict=strict,
                                        dry_run=dry_run, layout=layout)
            verification = None
            if do_verify and not dry_run:
                reference = surgery.load_model(source_path, safe_mode=not unsafe,
                                               legacy=legacy_source)
                verification = surgery.verify(reference, model, inputs, atol=atol)
                if not verification.ok:
                    emit_report(report, as_json, verification)
                    raise CheckFailed(f"{target}: outputs differ from {source_path} by "
                                      f"{verification.reason}; nothing was written")
            if not dry_run:
                surgery.save_model(model, output, overwrite=overwrite, inputs=readers,
                                   class_names=_target_class_names(target, output),
                                   max_shard_size=max_shard_size)
            if write_rules:
                from surgery.transfer.port import write_port_rules

                write_port_rules(port, write_rules, inputs=readers + [output],
                                 overwrite=overwrite)
        else:
            verification = None
            port = _port(source, target, rules, layout, unsafe)
            report = surgery.transplant_file(source, target, output, port or rules,
                                             strict=strict, dry_run=dry_run,
                                             overwrite=overwrite, safe_mode=not unsafe,
                                             inputs=readers, max_shard_size=max_shard_size,
                                             max_memory=max_memory,
                                             layout=layout, write_rules=write_rules)
    except CheckFailed as e:
        if getattr(e, "report", None) is not None:
            emit_report(e.report, as_json, None)
        raise
    _emit_transplant(report, as_json, verification, port, dry_run, write_rules)
    return 0


def _check_write_rules(path: str | None, layout: str, inputs: list, overwrite: bool) -> None:
    """--write-rules goes with --from torch and names a writable file (before TensorFlow)."""
    if path is None:
        return
    if layout != "torch":
        raise click.UsageError("--write-rules writes the rules --from torch infers; add "
                               "--from torch")
    from surgery.io.atomic import check_output

    check_output(path, inputs=inputs, overwrite=overwrite)


def _port(source: str, target, rules: str | None, layout: str, unsafe: bool):
    """The inferred `PortPlan` for --from torch (None for --from keras)."""
    if layout != "torch":
        return None
    return surgery.port_rules(source, target, rules, safe_mode=not unsafe)


def _emit_transplant(report, as_json: bool, verification, port, dry_run: bool,
                     write_rules: str | None) -> None:
    """The report (its pairs first); with --from torch, the rules on --dry-run (JSON: always,
    as "rules") and where they were written."""
    if port is None or not as_json:
        emit_report(report, as_json, verification)
    if port is None:
        return
    if as_json:
        data = report.to_dict()
        data["rules"] = port.rules
        data["rules_file"] = write_rules
        print_json(data)
        return
    if dry_run:
        click.echo("\n" + port.to_toml().rstrip("\n"))
    if write_rules:
        click.echo(f"wrote {write_rules} (the inferred rules: --rules {write_rules} repeats "
                   "this port)")


@main.command("convert")
@click.argument("model")
@click.option("-o", "--output", required=True, metavar="OUT.keras", help="The Keras 3 model "
              "(or its sharded weights, OUT.weights.json with --max-shard-size).")
@atol_option("Tolerance for the output check.")
@click.option("--inputs", metavar="X.npz", help="Your own inputs for the check, besides the "
              "random probe families.")
@overwrite_option()
@max_shard_size_option
@max_memory_option("the model, loaded twice (as Keras 2 and as Keras 3, to compare them),")
@unsafe_option()
@json_option()
def convert_cmd(model, output, atol, inputs, overwrite, max_shard_size, max_memory, unsafe,
                as_json) -> int:
    """Convert a Keras 2 (tf_keras) .h5 model to a Keras 3 .keras, verified.

    The model is rebuilt as Keras 3 with its weights carried; both versions run on a probe
    batch and OUT is written only if their outputs agree (exit 1 otherwise).

    \b
    Example:
      surgery convert sample_models/keras2_mlp.h5 -o keras3_mlp.keras
      surgery convert big_keras2.h5 -o keras3.weights.json --max-shard-size 500MB
    """
    from surgery.errors import CheckFailed, InputError
    from surgery.io.sources import detect_format

    if os.path.exists(model) and detect_format(model) != "hdf5":
        raise InputError(f"{model}: is already a Keras 3 model ({detect_format(model)}); "
                         "convert takes a Keras 2 (tf_keras) .h5 model")
    from surgery.io.atomic import check_output

    check_inputs_file(inputs)
    _check_sharded(output, max_shard_size)
    check_output(output, inputs=[model, inputs], overwrite=overwrite)  # before TensorFlow
    _check_convert_memory(model, max_memory)
    old = surgery.load_model(model, safe_mode=not unsafe, legacy=True)
    new = surgery.load_model(model, safe_mode=not unsafe)
    weights = surgery.diff(old, new)
    v = surgery.verify(old, new, inputs, atol=atol)
    if not v.ok or not weights.identical:
        raise CheckFailed(f"{model}: the Keras 3 rebuild differs (outputs by {v.reason}; "
                          f"weights {'same' if weights.identical else 'differ'}); nothing was "
                          "written")
    surgery.save_model(new, output, overwrite=overwrite,
                       inputs=[model] + ([inputs] if inputs else []),
                       max_shard_size=max_shard_size)
    data = {"input": model, "output": output, "variables": len(weights.variables),
            "weights_identical": weights.identical, "verify": v.to_dict()}
    if as_json:
        print_json(data)
    else:
        click.echo(f"{model} (Keras 2) -> {output} (Keras 3): {len(weights.variables)} "
                   f"variables bitwise the same\n{v}\nwrote {output}")
    return 0


@main.command("export")
@click.argument("model")
@click.option("-o", "--output", required=True, metavar="DIR|FILE", help="The SavedModel "
              "directory (hub, savedmodel), or the .safetensors/.npz state dict (torch).")
@click.option("--format", "fmt", type=click.Choice(["hub", "savedmodel", "torch"]),
              default="hub", show_default=True, help="hub: TF2 Hub module (hub.KerasLayer "
              "loads it); savedmodel: Keras's model.export (signature 'serve'); torch: a "
              "PyTorch state dict with PyTorch key names and layouts (needs --rules).")
@click.option("--rules", metavar="RULES.toml", help="torch: renames, exporters and skips that "
              "name every PyTorch key (see the README); with --like, applied first.")
@click.option("--like", metavar="TEMPLATE.safetensors", help="torch: a state dict saved from "
              "the PyTorch module (any values; only its keys and shapes are read): the names "
              "are inferred from names and shapes, and OUT has exactly its keys, shapes and "
              "dtypes.")
@click.option("--write-rules", metavar="EXPORT.toml", help="torch, with --like: write the "
              "inferred export rules; --rules EXPORT.toml then repeats the export exactly.")
@overwrite_option("Replace an existing output.")
@unsafe_option()
@click.option("--max-shard-size", metavar="SIZE", help="torch: write a Hugging Face sharded "
              "checkpoint (-o NAME.safetensors.index.json) with shards of at most SIZE "
              "(2GB, 500MB, bytes).")
@max_memory_option("torch: one step of the export (one rule's inputs and outputs: it "
                   "streams, one rule at a time)")
@json_option("torch: print the export report as JSON only.")
def export_cmd(model, output, fmt, rules, like, write_rules, max_shard_size, max_memory,
               overwrite, unsafe, as_json) -> int:
    """Export MODEL as a TF Hub module or SavedModel (verified against the model), or its
    weights as a PyTorch state dict.

    \b
    Examples:
      surgery export sample_models/cnn.keras -o cnn_hub --format hub
      surgery export sample_models/cnn.keras -o cnn_savedmodel --format savedmodel
      surgery export sample_models/lstm.keras --format torch -o lstm.safetensors \\
          --rules examples/rules/torch_lstm_export.toml
      surgery export model.keras --format torch --like template.safetensors \\
          -o model.safetensors --write-rules export.toml

    \b
    torch writes .safetensors (or .npz) without torch or TensorFlow: load it with
    model.load_state_dict(safetensors.torch.load_file(OUT), strict=True).
    """
    if fmt == "torch":
        return _export_torch(model, output, rules, overwrite, as_json, max_shard_size, like,
                             write_rules, max_memory)
    if max_shard_size:
        raise click.UsageError("--max-shard-size applies to --format torch only")
    for value, name in ((rules, "--rules"), (as_json, "--json"), (like, "--like"),
                        (write_rules, "--write-rules"), (max_memory, "--max-memory")):
        if value:
            raise click.UsageError(f"{name} applies to --format torch only")
    from surgery.io.atomic import check_output_dir

    check_output_dir(output, inputs=[model], overwrite=overwrite)  # before the slow part
    m = surgery.load_model(model, safe_mode=not unsafe)
    surgery.export_model(m, output, fmt=fmt, overwrite=overwrite, inputs=[model])
    click.echo(f"wrote {output} ({fmt}); its outputs match the model's")
    return 0


def _export_torch(model: str, output: str, rules: str | None, overwrite: bool,
                  as_json: bool, max_shard_size: str | None = None, like: str | None = None,
                  write_rules: str | None = None, max_memory: int | None = None) -> int:
    """`export --format torch`: the output, the rules and the template checked before the
    model is read."""
    from surgery.io.atomic import check_output
    from surgery.io.shards import check_sharded_output
    from surgery.transfer.export import load_export_rules

    if not rules and not like:
        raise click.UsageError("--format torch needs --rules R.toml naming the PyTorch key of "
                               "every variable (see examples/rules/torch_lstm_export.toml), or "
                               "--like TEMPLATE.safetensors to infer them")
    if write_rules and not like:
        raise click.UsageError("--write-rules writes the rules --like infers; add --like "
                               "TEMPLATE.safetensors")
    readers = [p for p in (model, rules, like) if p]
    if check_sharded_output(output, max_shard_size, kind="safetensors",
                            what="--max-shard-size") is None:
        check_output(output, inputs=readers, overwrite=overwrite)
    if write_rules:
        check_output(write_rules, inputs=readers + [output], overwrite=overwrite)
    spec = load_export_rules(rules) if rules else None
    if like:
        surgery.open_weights(like).close()  # a readable state dict, before TensorFlow
    report = surgery.export_state_dict(model, output, spec, like=like, write_rules=write_rules,
                                       overwrite=overwrite, inputs=(rules,) if rules else (),
                                       max_shard_size=max_shard_size, max_memory=max_memory)
    emit(report, as_json)
    if not as_json:
        click.echo(f"wrote {output} (torch state dict, {len(report)} tensors)")
        if write_rules:
            click.echo(f"wrote {write_rules} (the inferred export rules: --rules "
                       f"{write_rules} repeats this export)")
    return 0


def check_inputs_file(inputs: str | None) -> None:
    """--inputs X.npz names an existing file (checked before TensorFlow is imported)."""
    if inputs is not None and not os.path.lexists(inputs):
        from surgery.errors import InputError

        raise InputError(f"{inputs}: no such inputs file (an .npz with one array per model "
                         "input)", path=inputs)


def _verifiable_source(path: str) -> bool:
    """Checks (before anything slow) that --verify can run SOURCE as a model; True for a Keras
    2 `.h5`, which runs in tf_keras, the framework that wrote it (rebuilding it in Keras 3
    would check surgery's own translation against itself)."""
    from surgery.errors import InputError
    from surgery.io.sources import detect_format

    kind = detect_format(path)
    if kind not in ("keras", "hdf5") or path.lower().endswith(".weights.h5"):
        raise InputError(f"{path}: --verify runs SOURCE as a model, and this {kind} file holds "
                         "weights only; give a .keras or Keras 2 .h5 model as SOURCE, or drop "
                         "--verify and check the result with your own data (surgery evaluate)",
                         path=path)
    return kind == "hdf5"


def _target_class_names(target: str, output: str) -> list[str] | None:
    """TARGET's class names, kept in OUT (as the file-to-file path keeps them)."""
    if not (target.lower().endswith(".keras") and output.lower().endswith(".keras")):
        return None
    from surgery.io.classnames import class_names

    names = class_names(target)
    return list(names) if names else None
