"""The finetune command."""

from __future__ import annotations

import math

import click

import surgery
from surgery.train.learning_rates import OPTIMIZERS

from .app import main
from .options import json_option, lr_mults, overwrite_option, print_json, unsafe_option


@main.command("finetune")
@click.argument("model")
@click.option("--data", required=True, metavar="DATA", help=".npz (x, y), .csv, an image "
              "folder, or a saved tf.data directory.")
@click.option("-o", "--output", required=True, metavar="OUT.keras", help="The trained model "
              "(the best epoch's weights).")
@click.option("--train", "trains", multiple=True, metavar="S", help="Train only these "
              "(repeatable); everything else is frozen.")
@click.option("--freeze", "freezes", multiple=True, metavar="S", help="Freeze these "
              "(repeatable); everything else trains.")
@click.option("--bn", type=click.Choice(["inference", "train"]), default="inference",
              show_default=True, help="Frozen BatchNorm: fixed statistics, or keep training.")
@click.option("--epochs", default=1, show_default=True, help="Epochs to train (1 by default, "
              "like Keras's fit and surgery.finetune).")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=1e-3, show_default=True, help="Base learning rate.")
@click.option("--lr-mult", "lr_mult", multiple=True, metavar="S=X",
              help="Learning-rate multiplier for a selection (repeatable).")
@click.option("--layer-decay", type=float, help="Layer-wise learning-rate decay from the head "
              "down (e.g. 0.8).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS),
              default="adam", show_default=True)
@click.option("--loss", default="auto", show_default=True, help="auto, or a Keras loss name.")
@click.option("--label", metavar="COLUMN", help="CSV label column (default: label).")
@click.option("--val", metavar="DATA", help="Validation data.")
@click.option("--val-split", type=float, help="Fraction of DATA held out for validation.")
@click.option("--early-stop", type=int, metavar="N", help="Stop after N epochs without "
              "improvement of the validation (or training) loss.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same result.")
@click.option("--strategy", type=click.Choice(["auto", "one", "mirrored", "multiworker"]),
              default="auto", show_default=True, help="tf.distribute strategy.")
@click.option("--l2sp", type=float, metavar="ALPHA", help="L2-SP: pull weights toward their "
              "pretrained values (ALPHA/2 * ||w - w0||^2) instead of toward zero.")
@click.option("--l2sp-head", type=float, metavar="BETA", help="L2-SP's plain L2 on the head.")
@click.option("--mixed-precision", is_flag=True, help="Compute in float16 (GPU) / bfloat16 "
              "(CPU); variables and OUT stay float32.")
@click.option("--lora-rank", type=int, metavar="R", help="Train LoRA adapters of rank R (only "
              "they train, plus what --train names); OUT holds the merged model.")
@click.option("--lora-select", multiple=True, metavar="S", help="Layers that get LoRA "
              "(default: every supported layer --train does not name).")
@click.option("--save-adapters", metavar="A.npz", help="Also write the LoRA adapter weights.")
@click.option("--checkpoint", metavar="DIR", help="Per-epoch checkpoint folder (default: "
              "OUT.ckpt), created by surgery; one of an earlier run needs --resume or "
              "--overwrite; a folder surgery did not create is never used. Its files are "
              "removed after a finished run.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint (same model, data "
              "and settings; --epochs may grow).")
@click.option("--metrics-out", metavar="M.json", help="Per-epoch metrics as JSON.")
@click.option("--plot", metavar="CURVES.png", help="Training curves as PNG (needs "
              "matplotlib: pip install 'surgery[plot]').")
@overwrite_option("Replace an existing OUT (and start over in "
                  "the checkpoint folder of an earlier run).")
@unsafe_option()
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option("Print the result as JSON only.")
def finetune_cmd(model, data, output, trains, freezes, bn, epochs, batch_size, lr, lr_mult,
                 layer_decay, optimizer, loss, label, val, val_split, early_stop, seed,
                 strategy, l2sp, l2sp_head, mixed_precision, lora_rank, lora_select,
                 save_adapters, checkpoint, resume, metrics_out, plot, overwrite, unsafe, quiet,
                 as_json) -> int:
    """Fine-tune part of MODEL on DATA and write the best model to OUT.

    --train S trains only S; --freeze S trains everything but S. Frozen BatchNorm layers run
    in inference mode unless --bn train. The loss is inferred from the head and labels
    (sparse categorical for integer labels and a softmax head, binary for one unit...). A
    checkpoint is written after every epoch: after Ctrl-C, --resume continues where it
    stopped. Same --seed, same result on the same machine.

    \b
    Examples:
      surgery finetune sample_models/cnn.keras --data new_task.npz -o tuned.keras \\
          --train head --train 'block3_*' --epochs 5 --val-split 0.2 --early-stop 2
      surgery finetune model.keras --data table.csv --label target -o tuned.keras
      surgery finetune model.keras --data images/ -o tuned.keras --freeze 'block1_*' \\
          --lr-mult 'block2_*=0.1' --metrics-out metrics.json --plot curves.png
      surgery finetune model.keras --data d.npz -o tuned.keras --lora-rank 4 \\
          --lora-select fc --save-adapters adapters.npz
    """
    from surgery.io.atomic import check_outputs
    from surgery.train.outputs import (check_adapters, check_beside_checkpoint, write_adapters,
                                       write_metrics, write_plot)

    readers = [model, data, val]
    check_outputs([output, metrics_out, plot, save_adapters], inputs=readers,
                  overwrite=overwrite)
    # the checkpoint folder: finetune checks it against the inputs and its own marker
    ckpt = checkpoint or (None if strategy == "multiworker" else f"{output}.ckpt")
    check_beside_checkpoint(ckpt, [output, metrics_out, plot, save_adapters], inputs=readers)
    if save_adapters and not lora_rank:  # before anything is loaded or trained
        check_adapters({})
    mults = lr_mults(lr_mult)
    _check_numbers(epochs=epochs, batch_size=batch_size, seed=seed, early_stop=early_stop,
                   lora_rank=lora_rank, lr=lr, layer_decay=layer_decay, l2sp=l2sp,
                   l2sp_head=l2sp_head, val_split=val_split, lr_mult=mults)
    if lora_select and not lora_rank:
        from surgery.errors import OptionError

        raise OptionError("--lora-select needs --lora-rank R (the adapters' rank)")
    if val is not None and val_split is not None:
        from surgery.errors import OptionError

        raise OptionError("--val and --val-split both give validation data; pass one")
    if plot:
        from surgery.train.outputs import require_matplotlib
        require_matplotlib()
    extra = {}
    if strategy == "multiworker":
        import logging

        from surgery.train.multiworker import finetune_multiworker as run, make_strategy
        extra["mixed_precision"] = mixed_precision
        extra["distribution"] = make_strategy()  # before anything else touches TensorFlow
        if not (quiet or as_json):
            logging.basicConfig(level=logging.INFO, format="%(message)s")
    else:
        run = surgery.finetune
        extra.update(mixed_precision=mixed_precision, l2sp=l2sp, l2sp_head=l2sp_head,
                     keep_checkpoint=True)  # removed only once OUT is safely written
    m = surgery.load_model(model, safe_mode=not unsafe)
    if resume and strategy != "multiworker" and not as_json:
        extra["callbacks"] = [_resume_note(epochs)]  # said once every check has passed
    result = run(m, data, train=trains, freeze=freezes, bn=bn, epochs=epochs,
                 batch_size=batch_size, lr=lr, lr_mult=mults,
                 layer_decay=layer_decay, optimizer=optimizer, loss=loss, label=label, val=val,
                 val_split=val_split, early_stop=early_stop, seed=seed, strategy=strategy,
                 lora_rank=lora_rank, lora_select=lora_select,
                 checkpoint=ckpt, resume=resume, overwrite=overwrite,
                 verbose=0 if (quiet or as_json) else 1, **extra)
    surgery.save_model(result.model, output, overwrite=overwrite, inputs=readers,
                       class_names=getattr(result, "class_names", None) or None)
    if metrics_out:
        write_metrics(result, metrics_out, overwrite=overwrite, inputs=readers)
    if plot:
        write_plot(result, plot, overwrite=overwrite, inputs=readers)
    if save_adapters:
        write_adapters(result.adapters, save_adapters, overwrite=overwrite, inputs=readers)
    if hasattr(result, "remove_checkpoint"):
        result.remove_checkpoint()
    if as_json:
        print_json({**result.to_dict(), "output": output})
    else:
        click.echo(str(result))
        click.echo(f"wrote {output}")
    return 0


def _check_numbers(**o) -> None:
    """finetune's range checks (`surgery.train.options._check_options`, same words), run
    before TensorFlow is imported (`surgery.train.options` imports no Keras)."""
    from surgery.errors import OptionError
    from surgery.train.options import MAX_COUNT

    for name, low, high in (("epochs", 1, MAX_COUNT), ("batch_size", 1, MAX_COUNT),
                            ("seed", 0, None), ("early_stop", 1, None), ("lora_rank", 1, None)):
        value, flag = o[name], "--" + name.replace("_", "-")
        if value is not None and value < low:
            raise OptionError(f"{flag} must be a whole number of at least {low}, got {value!r}")
        if value is not None and high is not None and value > high:
            raise OptionError(f"{flag} must be at most {high:,}, got {value:,}")
    reals = [("--lr", o["lr"], "above 0", lambda v: v > 0),
             ("--layer-decay", o["layer_decay"], "in (0, 1]", lambda v: 0 < v <= 1),
             ("--l2sp", o["l2sp"], "of at least 0", lambda v: v >= 0),
             ("--l2sp-head", o["l2sp_head"], "of at least 0", lambda v: v >= 0),
             ("--val-split", o["val_split"], "in (0, 1)", lambda v: 0 < v < 1)]
    reals += [(f"--lr-mult {s}", m, "above 0", lambda v: v > 0) for s, m in o["lr_mult"].items()]
    for flag, value, where, ok in reals:
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise OptionError(f"{flag} must be a finite number {where}, got {value!r}")


def _resume_note(epochs: int):
    """A Keras callback that says where a resumed run starts, at its first epoch."""
    from surgery.io.tfimport import keras

    class ResumeNote(keras().callbacks.Callback):
        said = False

        def on_epoch_begin(self, epoch, logs=None):
            if not self.said:
                self.said = True
                click.echo(f"resuming after epoch {epoch} of {epochs}")

    return ResumeNote()
