"""Commands that change one model and save it: freeze, unfreeze, reinit, head, set."""

from __future__ import annotations

import click

import surgery

from .app import main
from .options import int_list, model_options
from .runner import edit_model


def _freeze_command(name: str, trainable: bool):
    verb = "Unfreeze" if trainable else "Freeze"
    doc = f"""{verb} layers of MODEL and write OUT.

    Keras saves trainable per layer, so selectors act on whole layers; one that reaches only
    some variables of a layer (*/bias) is refused. A frozen BatchNorm runs in inference mode
    (its moving statistics stay put); --bn train keeps BatchNorm layers training.

    \b
    Examples:
      surgery {name} sample_models/cnn.keras -o out.keras {'--select head' if trainable else '--except head'}
      surgery {name} sample_models/cnn.keras -o out.keras --select 're:block[12]_.*'{'' if trainable else ' --bn train'}
      surgery {name} sample_models/lstm.keras --select embed --dry-run
    """

    @main.command(name, help=doc)
    @model_options
    @click.option("--select", "selects", multiple=True, metavar="S",
                  help="Layers to change (glob, re:..., type:...); repeatable.")
    @click.option("--except", "excepts", multiple=True, metavar="S",
                  help="Taken out of the selection; alone: every layer but these.")
    @click.option("--bn", type=click.Choice(["inference", "train"]), default="inference",
                  show_default=True, help="Frozen BatchNorm: inference mode (fixed statistics) "
                  "or keep training." if not trainable else "Ignored by unfreeze.")
    def command(model, output, dry_run, overwrite, unsafe, as_json, selects, excepts, bn):
        if not selects and not excepts:
            raise click.UsageError("give --select S and/or --except S")

        def operation(m):
            fn = surgery.unfreeze if trainable else surgery.freeze
            kwargs = {} if trainable else {"bn": bn}
            report = fn(m, *selects, except_=excepts, dry_run=dry_run, allow_partial=False,
                        **kwargs)
            return m, report
        return edit_model(model, output, unsafe=unsafe, dry_run=dry_run, overwrite=overwrite,
                           as_json=as_json, operation=operation)

    return command


_freeze_command("freeze", False)


_freeze_command("unfreeze", True)


@main.command("reinit")
@model_options
@click.option("--select", "selects", multiple=True, required=True, metavar="S",
              help="Variables or layers to reinitialize; repeatable.")
@click.option("--initializer", metavar="NAME", help="A Keras initializer for the kernels "
              "(embeddings, recurrent kernels) among them; biases, BN beta and moving mean get "
              "zeros, gamma and moving variance ones, unless selected by their own path "
              "(default: each variable's own configured initializer).")
@click.option("--seed", type=int, help="Same seed, same values.")
def reinit_cmd(model, output, dry_run, overwrite, unsafe, as_json, selects, initializer, seed):
    """Reinitialize selected variables of MODEL and write OUT.

    Each variable gets its own layer's configured initializer unless --initializer names one.
    Only the selected variables change.

    \b
    Examples:
      surgery reinit sample_models/cnn.keras -o fresh_head.keras --select head --seed 0
      surgery reinit sample_models/cnn.keras -o out.keras --select 'block3_*' --initializer he_normal
    """
    def operation(m):
        return m, surgery.reinitialize(m, *selects, initializer=initializer, seed=seed,
                                       dry_run=dry_run)
    return edit_model(model, output, unsafe=unsafe, dry_run=dry_run, overwrite=overwrite,
                       as_json=as_json, operation=operation)


@main.command("head")
@model_options
@click.option("--classes", type=int, required=True, help="Classes of the new head.")
@click.option("--keep-classes", metavar="I,J,...", help="Old classes carried (in this order) "
              "into new classes 0, 1, ...; their logits stay exactly the same.")
@click.option("--activation", metavar="NAME", help="The new head's activation (default: the "
              "old one).")
@click.option("--layer", "head_layer", metavar="NAME", help="The head layer (default: the last "
              "Dense).")
@click.option("--seed", type=int, help="Seed for the new head's initial weights.")
def head_cmd(model, output, dry_run, overwrite, unsafe, as_json, classes, keep_classes,
             activation, head_layer, seed):
    """Replace MODEL's classification head with one for --classes classes; write OUT.

    Every other weight is carried bitwise. With --keep-classes the listed old classes become
    the first new classes with exactly their old logits; the rest start fresh.

    \b
    Examples:
      surgery head sample_models/cnn.keras -o cnn4.keras --classes 4
      surgery head sample_models/cnn.keras -o cnn4.keras --classes 4 --keep-classes 0,3,7
    """
    from surgery.errors import OptionError

    if classes < 1:  # before the slow part (TensorFlow's import)
        raise OptionError(f"num_classes must be a positive integer, got {classes}")
    keep = int_list(keep_classes)

    def operation(m):
        new = surgery.replace_head(m, classes, keep_classes=keep, activation=activation,
                                   head=head_layer, seed=seed)
        return new, new._surgery_head_report
    return edit_model(model, output, unsafe=unsafe, dry_run=dry_run, overwrite=overwrite,
                       as_json=as_json, operation=operation)


@main.command("set")
@model_options
@click.option("--select", "selects", multiple=True, required=True, metavar="S",
              help="Variables to change (e.g. '*/kernel'); repeatable.")
@click.option("--l2", type=float, help="Add an L2 regularizer with this factor.")
@click.option("--l1", type=float, help="Add an L1 regularizer with this factor.")
@click.option("--initializer", metavar="NAME", help="Configure this initializer.")
@click.option("--constraint", metavar="NAME", help="Add this constraint (max_norm, non_neg, "
              "unit_norm, ...).")
def set_cmd(model, output, dry_run, overwrite, unsafe, as_json, selects, l2, l1, initializer,
            constraint):
    """Change how parameters are set up; weights stay bitwise the same.

    \b
    Examples:
      surgery set sample_models/cnn.keras -o reg.keras --select 'fc/kernel' --l2 1e-4
      surgery set sample_models/cnn.keras -o out.keras --select 'head/kernel' \\
          --initializer he_normal
    """
    chosen = [x for x in (l2 or l1, initializer, constraint) if x]
    if len(chosen) != 1:
        raise click.UsageError("give one of --l2/--l1, --initializer, --constraint")

    class _Report:
        def __init__(self, new):
            self.paths = list(getattr(new, "_surgery_setup_changed", ()))

        def to_dict(self):
            return {"changed": self.paths}

        def __str__(self):
            what = (f"L1L2(l1={l1 or 0}, l2={l2 or 0})" if (l1 or l2) else
                    initializer or constraint)
            return f"set {what} on {len(self.paths)} variables: {', '.join(self.paths)}; " \
                   "weights unchanged"

    def operation(m):
        if l1 or l2:
            new = surgery.set_regularizer(m, *selects, l1=l1 or 0.0, l2=l2 or 0.0)
        elif initializer:
            new = surgery.set_initializer(m, *selects, initializer=initializer)
        else:
            new = surgery.set_constraint(m, *selects, constraint=constraint)
        return new, _Report(new)
    return edit_model(model, output, unsafe=unsafe, dry_run=dry_run, overwrite=overwrite,
                       as_json=as_json, operation=operation)

