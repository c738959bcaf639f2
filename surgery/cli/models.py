"""Commands that change one model and save it: freeze, unfreeze, reinit, head, set."""

from __future__ import annotations

import click

import surgery

from .app import main
from .options import int_list, model_options
from .runner import edit_model

# Names Keras 3.15's `initializers.get` / `constraints.get` accept (exactly as written); an
# unknown one is refused before the model is loaded (tests/test_cli_before_tf.py checks these
# lists against Keras itself). Registered custom names (`package>Name`) go to Keras.
INITIALIZER_NAMES = frozenset(
    "Constant GlorotNormal GlorotUniform HeNormal HeUniform Identity IdentityInitializer "
    "LecunNormal LecunUniform Ones Orthogonal OrthogonalInitializer RandomNormal "
    "RandomUniform STFT STFTInitializer TruncatedNormal VarianceScaling Zeros constant "
    "glorot_normal glorot_uniform he_normal he_uniform identity lecun_normal lecun_uniform "
    "normal one ones orthogonal random_normal random_uniform stft truncated_normal uniform "
    "variance_scaling zero zeros".split())
CONSTRAINT_NAMES = frozenset(
    "MaxNorm MinMaxNorm NonNeg UnitNorm max_norm min_max_norm non_neg unit_norm".split())


def check_name(kind: str, name: str | None, known: str) -> None:
    """Refuses an initializer or constraint name Keras would not know, in the library's words
    (`known` lists the usual ones), before TensorFlow is imported."""
    names = INITIALIZER_NAMES if kind == "initializer" else CONSTRAINT_NAMES
    if name is not None and ">" not in name and name not in names:
        from surgery.errors import OptionError

        raise OptionError(f"unknown {kind} {name!r}; known: {known}")


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
                        must_save=True, **kwargs)
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
    from surgery.errors import OptionError
    from surgery.model.reinit import _KNOWN

    check_name("initializer", initializer, _KNOWN)  # before the slow part (TensorFlow)
    if seed is not None and not 0 <= seed < 2 ** 31:
        raise OptionError(f"seed must be between 0 and {2 ** 31 - 1}, got {seed}")

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
    if keep and len(keep) > classes:
        raise OptionError(f"{len(keep)} kept classes don't fit a head of {classes}; raise "
                          "num_classes or keep fewer")
    if keep and len(set(keep)) != len(keep):
        raise OptionError(f"keep_classes lists a class twice: {keep}")

    def operation(m):
        return surgery.replace_head(m, classes, keep_classes=keep, activation=activation,
                                    head=head_layer, seed=seed)

    def names(old):  # the kept classes keep their names when they fill the new head
        return [old[i] for i in keep] if keep and len(keep) == classes and \
            max(keep) < len(old) else None
    return edit_model(model, output, unsafe=unsafe, dry_run=dry_run, overwrite=overwrite,
                      as_json=as_json, operation=operation, class_names=names)


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
    _check_setup(l1, l2, initializer, constraint)  # before the slow part (TensorFlow)

    class _Report:  # the SetupReport, printed; its JSON keeps the one key `set` has printed
        def __init__(self, report):
            self.report = report

        def to_dict(self):
            return {"changed": list(self.report.changed)}

        def __str__(self):
            return str(self.report)

    def operation(m):
        if l1 or l2:
            new, report = surgery.set_regularizer(m, *selects, l1=l1 or 0.0, l2=l2 or 0.0,
                                                  must_save=True)
        elif initializer:
            new, report = surgery.set_initializer(m, *selects, initializer=initializer,
                                                  must_save=True)
        else:
            new, report = surgery.set_constraint(m, *selects, constraint=constraint,
                                                 must_save=True)
        return new, _Report(report)
    return edit_model(model, output, unsafe=unsafe, dry_run=dry_run, overwrite=overwrite,
                       as_json=as_json, operation=operation)


def _check_setup(l1, l2, initializer, constraint) -> None:
    """`set`'s values, checked as the library checks them, before TensorFlow is imported."""
    import math

    from surgery.errors import OptionError
    from surgery.model.parameters import _KNOWN

    for name, value in (("l1", l1), ("l2", l2)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise OptionError(f"{name} must be a finite number >= 0, got {value!r}")
    check_name("initializer", initializer, _KNOWN["initializer"])
    check_name("constraint", constraint, _KNOWN["constraint"])
