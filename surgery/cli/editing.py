"""The edit group: structural edits (delete-channels, widen, deepen, delete-layer, insert,
replace, change-input, inflate, fully-convolutional). Every option that can be checked without
the model is checked before the model is loaded (and TensorFlow imported)."""

from __future__ import annotations

import math
import os

import click

from .app import main
from .options import edit_options, layer_spec
from .runner import run_edit


# ------------------------------------------------------------------ checks before TensorFlow

def _edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, fn) -> int:
    """`run_edit` after the checks that need no model: --inputs names an existing file."""
    inputs = click.get_current_context().meta.get("verify_inputs")
    if inputs is not None and not os.path.lexists(inputs):
        from surgery.errors import InputError

        raise InputError(f"{inputs}: no such inputs file (an .npz with one array per model "
                         "input)", path=inputs)
    return run_edit(model, output, dry_run, bool(do_verify), atol, overwrite, unsafe, as_json,
                    _graph_only(fn, model, click.get_current_context().info_name))


def _graph_only(fn, path: str, operation: str):
    """`fn`, with the refusal of a subclassed model (a keras-hub task: no graph of its
    layers to edit) saying what to do instead."""
    from surgery.errors import UnsupportedModelError

    def run(m):
        try:
            return fn(m)
        except UnsupportedModelError:
            from surgery.io.tfimport import keras
            from surgery.model.rebuild import is_graph

            if is_graph(m):
                raise
            cls = keras().saving.get_registered_name(type(m))
            raise UnsupportedModelError(
                f"{m.name}: edit {operation} needs the layer graph of a Functional or "
                f"Sequential model, and {cls} is a subclassed model whose config holds none; "
                "build the architecture you want from its config in Python (a keras-hub "
                "backbone takes num_layers, hidden_dim, ...), save it, and fill it with "
                f"surgery transplant {path} NEW.keras -o OUT") from None
    return run


def _channel_list(ctx, param, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        chans = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        chans = []
    if not chans or any(c < 0 for c in chans):
        raise click.BadParameter(f"expected comma-separated channel indices (0, 1, ...), got "
                                 f"{value!r}", ctx=ctx, param=param)
    return chans


def _ratio(ctx, param, value: float | None) -> float | None:
    if value is not None and not 0 < value < 1:  # NaN fails too
        from surgery.errors import OptionError

        raise OptionError("edit.lowest_channels: ratio must be a number between 0 and 1 (the "
                          f"fraction of channels to delete), got {value!r}")
    return value


def _check_noise(layer: str, noise: float) -> None:
    if not (math.isfinite(noise) and noise >= 0):  # the library's own words, before the load
        from surgery.errors import OptionError

        raise OptionError(f"widen {layer!r}: noise must be a finite number >= 0, got {noise!r}; "
                          "pass e.g. 0.01 (or 0 for an exact copy)")


def _shape(ctx, param, value: str | None) -> tuple | None:
    """H,W,C: positive integers; ``none`` leaves an axis free (any size)."""
    if value is None:
        return None
    try:
        dims = tuple(None if v.strip().lower() == "none" else int(v)
                     for v in value.split(","))
    except ValueError:
        dims = ()
    if not dims or any(d is not None and d < 1 for d in dims):
        raise click.BadParameter(f"expected comma-separated positive sizes such as 32,32,1 "
                                 f"(none for any size), got {value!r}", ctx=ctx, param=param)
    return dims


@main.group("edit")
def edit_group() -> None:
    """Structural edits of MODEL written to OUT; the input is never touched.

    Every edit prints what changed, the variables copied bitwise, converted and
    initialized, and the parameter counts before and after. --verify runs both models on a
    probe batch (for the function-preserving edits: widen, deepen, insert of an identity);
    --inputs X.npz adds your own inputs to it (and implies --verify).

    \b
    Examples:
      surgery edit widen sample_models/cnn.keras -o wide.keras --layer fc --units 96 --verify
      surgery edit deepen sample_models/cnn.keras -o deep.keras --after block2_pool --verify
      surgery edit delete-layer model.keras -o out.keras --layer dropout
      surgery edit insert sample_models/cnn.keras -o out.keras --after fc \\
          --layer-json '{"class_name": "Dropout", "config": {"rate": 0.2, "name": "drop"}}'
      surgery edit change-input sample_models/cnn.keras -o gray.keras --shape 32,32,1
      surgery edit inflate sample_models/cnn.keras -o video.keras --frames 8
      surgery edit fully-convolutional sample_models/cnn_28.keras -o fcn.keras
    """


@edit_group.command("delete-channels")
@edit_options
@click.option("--layer", required=True, help="The layer whose output channels go.")
@click.option("--channels", metavar="I,J,...", callback=_channel_list,
              help="Channel indices to delete.")
@click.option("--prune-lowest", type=click.IntRange(min=1), metavar="K", help="Delete the K "
              "channels with the lowest L1 norm.")
@click.option("--ratio", type=float, callback=_ratio, help="Delete this fraction of channels "
              "(lowest L1).")
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
        chans = channels if channels is not None else edit.lowest_channels(
            m, layer, k=prune_lowest, ratio=ratio)
        return edit.delete_channels(m, layer, chans, couple=not no_couple)
    return _edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, run)


@edit_group.command("widen")
@edit_options
@click.option("--layer", required=True, help="The Dense or Conv layer to widen.")
@click.option("--units", type=click.IntRange(min=1), required=True, help="Its new width.")
@click.option("--seed", type=int, help="Which units are copied.")
@click.option("--noise", default=0.0, show_default=True, help="Symmetry-breaking noise "
              "(finite, >= 0).")
def edit_widen(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, layer,
               units, seed, noise):
    """Net2WiderNet: widen a layer without changing the function.

    \b
    Example:
      surgery edit widen sample_models/cnn.keras -o wide.keras --layer block3_conv --units 96
    """
    from surgery import edit
    _check_noise(layer, noise)
    return _edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
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
    return _edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
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
    return _edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
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
    if (after is None) == (before is None):
        raise click.UsageError("give exactly one of --after, --before")
    spec = layer_spec(layer_json)
    return _edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
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
    return _edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                 lambda m: edit.replace_layer(m, layer, spec))


@edit_group.command("change-input")
@edit_options
@click.option("--shape", required=True, metavar="H,W,C", callback=_shape, help="The new "
              "input shape without the batch axis (none for an axis of any size).")
def edit_change_input(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                      shape):
    """Give MODEL another input shape: another resolution (with global pooling), or another
    channel count, whose first layer then starts fresh (fill it with `surgery transplant`
    and an adapt_in_channels rule).

    \b
    Examples:
      surgery edit change-input sample_models/cnn.keras -o gray.keras --shape 32,32,1
      surgery edit change-input sample_models/cnn.keras -o big.keras --shape 64,64,3
    """
    from surgery import edit
    return _edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                 lambda m: edit.change_input(m, shape))


@edit_group.command("inflate")
@edit_options
@click.option("--frames", type=click.IntRange(min=1), metavar="N", help="Clip length of the "
              "new input (default: any length).")
@click.option("--depth", type=click.IntRange(min=1), default=3, show_default=True,
              metavar="D", help="Temporal kernel size of the inflated convolutions (odd for "
              "--mode center).")
@click.option("--mode", type=click.Choice(["center", "tile"]), default="center",
              show_default=True, help="center: each frame is processed exactly as the 2D model "
              "did; tile: I3D's kernel spread over time.")
def edit_inflate(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json, frames,
                 depth, mode):
    """2D -> 3D (I3D): a video model for clips of --frames frames from an image CNN.

    Each Conv2D becomes a Conv3D (its kernel inflated over --depth frames), pooling gets a
    time axis of 1, global pooling covers time too; BatchNorm, activations and Dense layers
    are kept. With --mode center a static clip (one image repeated) gives the 2D model's
    prediction for that image.

    \b
    Examples:
      surgery edit inflate sample_models/cnn.keras -o video.keras --frames 8
      surgery edit inflate sample_models/cnn.keras -o video.keras --depth 3 --mode tile
    """
    from surgery import edit
    if mode == "center" and depth % 2 == 0:
        raise click.BadParameter(f"mode center needs an odd depth (a middle frame), got "
                                 f"{depth}; use an odd --depth or --mode tile",
                                 param_hint="--depth")
    return _edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                 lambda m: edit.inflate(m, frames=frames, depth=depth, mode=mode))


@edit_group.command("fully-convolutional")
@edit_options
@click.option("--input-shape", metavar="H,W,C", callback=_shape, help="The new input shape "
              "(default: the old one; larger inputs give a score map; none for any size).")
def edit_fully_convolutional(model, output, dry_run, do_verify, atol, overwrite, unsafe,
                             as_json, input_shape):
    """Flatten + Dense head -> convolutions: the first Dense after Flatten becomes a Conv2D
    covering the feature map it read, later ones 1x1 convolutions. At the old input size
    OUT outputs a 1x1 map holding the old predictions; on larger inputs, a score map.

    \b
    Examples:
      surgery edit fully-convolutional sample_models/cnn_28.keras -o fcn.keras
      surgery edit fully-convolutional sample_models/cnn_28.keras -o fcn56.keras \\
          --input-shape 56,56,1
    """
    from surgery import edit
    return _edit(model, output, dry_run, do_verify, atol, overwrite, unsafe, as_json,
                 lambda m: edit.fully_convolutional(m, input_shape=input_shape))
