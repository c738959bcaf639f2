"""The edit group: structural edits (delete-channels, widen, deepen, delete-layer, insert,
replace)."""

from __future__ import annotations

import click

from .app import main
from .options import edit_options, int_list, layer_spec
from .runner import run_edit


@main.group("edit")
def edit_group() -> None:
    """Structural edits of MODEL written to OUT; the input is never touched.

    Every edit prints what changed, the variables carried bitwise, converted and newly
    initialized, and the parameter counts before and after. --verify runs both models on a
    probe batch (for the function-preserving edits: widen, deepen, insert of an identity).

    \b
    Examples:
      surgery edit widen sample_models/cnn.keras -o wide.keras --layer fc --units 96 --verify
      surgery edit deepen sample_models/cnn.keras -o deep.keras --after block2_pool --verify
      surgery edit delete-layer model.keras -o out.keras --layer dropout
      surgery edit insert sample_models/cnn.keras -o out.keras --after fc \\
          --layer-json '{"class_name": "Dropout", "config": {"rate": 0.2, "name": "drop"}}'
    """


@edit_group.command("delete-channels")
@edit_options
@click.option("--layer", required=True, help="The layer whose output channels go.")
@click.option("--channels", metavar="I,J,...", help="Channel indices to delete.")
@click.option("--prune-lowest", type=int, metavar="K", help="Delete the K channels with the "
              "lowest L1 norm.")
@click.option("--ratio", type=float, help="Delete this fraction of channels (lowest L1).")
@click.option("--no-couple", is_flag=True, help="Refuse instead of deleting a coupled group "
              "(inputs of an Add...) together.")
def edit_delete_channels(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                         layer, channels, prune_lowest, ratio, no_couple):
    """Delete output channels of a layer, following the graph (pruning).

    Readers downstream are sliced (Dense, Conv, SeparableConv, RNN input kernels, Flatten ->
    Dense rows, Concatenate offsets), BatchNorm and DepthwiseConv2D on the way too; inputs of
    an Add (and other elementwise merges) lose the same channels together.

    \b
    Examples:
      surgery edit delete-channels sample_models/cnn.keras -o pruned.keras \\
          --layer block2_conv --channels 0,3,5
      surgery edit delete-channels sample_models/cnn.keras -o pruned.keras \\
          --layer block3_conv --ratio 0.25
    """
    from surgery import edit
    given = sum(v is not None for v in (channels, prune_lowest, ratio))
    if given != 1:
        raise click.UsageError("give exactly one of --channels, --prune-lowest, --ratio")

    def run(m):
        chans = int_list(channels) if channels else edit.lowest_channels(
            m, layer, k=prune_lowest, ratio=ratio)
        return edit.delete_channels(m, layer, chans, couple=not no_couple)
    return run_edit(model, output, dry_run, False if do_verify is None else do_verify, atol,
                     overwrite, unsafe, as_json, run)


@edit_group.command("widen")
@edit_options
@click.option("--layer", required=True, help="The Dense or Conv layer to widen.")
@click.option("--units", type=int, required=True, help="Its new width.")
@click.option("--seed", type=int, help="Which units are copied.")
@click.option("--noise", default=0.0, show_default=True, help="Symmetry-breaking noise.")
def edit_widen(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, layer,
               units, seed, noise):
    """Net2WiderNet: widen a layer without changing the function.

    \b
    Example:
      surgery edit widen sample_models/cnn.keras -o wide.keras --layer block3_conv --units 96
    """
    from surgery import edit
    return run_edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                     lambda m: edit.widen(m, layer, units, seed=seed, noise=noise))


@edit_group.command("deepen")
@edit_options
@click.option("--after", required=True, help="Insert the identity layer after this one.")
@click.option("--residual", is_flag=True, help="A zero-initialized residual branch instead.")
def edit_deepen(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, after,
                residual):
    """Net2DeeperNet: insert an identity layer (or a zero residual branch).

    \b
    Example:
      surgery edit deepen sample_models/cnn.keras -o deep.keras --after fc --verify
    """
    from surgery import edit
    return run_edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                     lambda m: edit.deepen(m, after, residual=residual))


@edit_group.command("delete-layer")
@edit_options
@click.option("--layer", required=True, help="The single-input layer to remove.")
def edit_delete_layer(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                      layer):
    """Delete a layer; its consumers take its input.

    \b
    Example:
      surgery edit delete-layer model.keras -o out.keras --layer dropout
    """
    from surgery import edit
    return run_edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                     lambda m: edit.delete_layer(m, layer))


@edit_group.command("insert")
@edit_options
@click.option("--after", help="Insert after this layer.")
@click.option("--before", help="Insert before this layer.")
@click.option("--layer-json", required=True, metavar="JSON", help='The layer: {"class_name": '
              '..., "config": {...}} (Keras layers only).')
def edit_insert(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, after,
                before, layer_json):
    """Insert a layer after (or before) an existing one.

    \b
    Example:
      surgery edit insert model.keras -o out.keras --after fc \\
          --layer-json '{"class_name": "Dropout", "config": {"rate": 0.2, "name": "drop"}}'
    """
    from surgery import edit
    spec = layer_spec(layer_json)
    return run_edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                     lambda m: edit.insert_layer(m, after, spec, before=before))


@edit_group.command("replace")
@edit_options
@click.option("--layer", required=True, help="The layer to replace.")
@click.option("--layer-json", required=True, metavar="JSON", help="The new layer's "
              '{"class_name": ..., "config": {...}}.')
def edit_replace(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, layer,
                 layer_json):
    """Replace a layer; weights are carried where names and shapes fit.

    \b
    Example:
      surgery edit replace model.keras -o out.keras --layer fc \\
          --layer-json '{"class_name": "Dense", "config": {"units": 64, "name": "fc"}}'
    """
    from surgery import edit
    spec = layer_spec(layer_json)
    return run_edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                     lambda m: edit.replace_layer(m, layer, spec))

