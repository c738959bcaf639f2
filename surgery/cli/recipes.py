"""The recipe group and the demo."""

from __future__ import annotations

import os

import click

from .app import main
from .options import emit, json_option, option_value, overwrite_option, print_json


@main.group("recipe")
def recipe_group() -> None:
    """The CNN and LSTM transfer recipes.

    \b
    Examples:
      surgery recipe list
      surgery recipe run cnn-channels --set channels=1 -o gray.keras
      surgery recipe run lstm-bidirectional -o bi.keras
    """


@recipe_group.command("list")
@json_option()
def recipe_list(as_json: bool) -> int:
    """List the recipes with their options.

    \b
    Example:
      surgery recipe list
    """
    from surgery.recipes import REGISTRY

    if as_json:
        print_json({n: {"summary": r.summary, "options": {k: repr(v) for k, v in
                                                           r.options().items()}}
                     for n, r in REGISTRY.items()})
        return 0
    for name, r in REGISTRY.items():
        click.echo(f"{name:<20} {r.summary}")
        opts = ", ".join(f"{k}={v!r}" for k, v in r.options().items())
        click.echo(f"{'':<20} options: {opts}")
    return 0


@recipe_group.command("run")
@click.argument("name")
@click.option("--model", "model_path", metavar="MODEL.keras", help="Your pretrained model "
              "(default: the shipped sample model the recipe is written for).")
@click.option("-o", "--output", metavar="OUT", help="Where to write the resulting model.")
@click.option("--seed", type=int, help="Seed (recipes that train or draw).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="A recipe option (see `surgery recipe list`); VALUE is JSON or text.")
@overwrite_option()
@json_option("Print the result as JSON only.")
def recipe_run(name: str, model_path: str | None, output: str | None, seed: int | None,
               settings, overwrite: bool, as_json: bool) -> int:
    """Run recipe NAME (defaults use the shipped sample models).

    \b
    Examples:
      surgery recipe run cnn-new-task -o new_task.keras --seed 0
      surgery recipe run cnn-channels --model my_cnn.keras --set channels=1 -o gray.keras
      surgery recipe run cnn-channels --set channels=3 --set mode=select \\
          --set 'indices=[2, 1, 0]' -o bgr.keras
      surgery recipe run cnn-inflate --set frames=8 -o video.keras
    """
    from surgery.recipes import get_recipe

    recipe = get_recipe(name)
    accepted = recipe.options()
    kwargs = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        if key not in accepted:
            raise click.BadParameter(f"recipe {name} has no option {key!r}; it takes "
                                     f"{', '.join(accepted)}", param_hint="--set")
        if key == "output":  # an output, checked like -o
            if output is not None:
                raise click.BadParameter("give the output once: -o OUT or --set output=OUT, "
                                         "not both", param_hint="--set")
            output = value
            continue
        kwargs[key] = option_value(value)
    params = inspect_params(recipe)
    if "overwrite" in params:  # every file a recipe writes: replaced only with --overwrite
        kwargs["overwrite"] = overwrite
    if model_path is not None:
        if "model" not in params:
            raise click.BadParameter(f"recipe {name} takes no model", param_hint="--model")
        kwargs["model"] = model_path
    if output is not None:
        if "output" not in accepted:
            raise click.BadParameter(f"recipe {name} writes no model", param_hint="-o")
        from surgery.io.atomic import check_output

        readers = [v for v in kwargs.values() if isinstance(v, str) and os.path.exists(v)]
        default = getattr(params.get("model"), "default", None)
        if not recipe.writes_folder:  # a folder recipe checks each of its files itself
            check_output(output, inputs=readers + [default, kwargs.get("model")],
                         overwrite=overwrite)
        kwargs["output"] = output
    if seed is not None:
        kwargs["seed"] = seed
    if not as_json and "echo" in params:
        kwargs["echo"] = click.echo
    result = recipe.run(**kwargs)
    emit(result, as_json)
    return 0


def inspect_params(recipe) -> dict:
    import inspect as _inspect

    return dict(_inspect.signature(recipe.load()).parameters)


@main.command("demo")
@click.option("--out", "out_dir", default="demo-out", show_default=True,
              help="Folder for the demo's models and its summary.json.")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(1, 1000),
              help="How many seeds per task (1 or more).")
@click.option("--task", "tasks_", multiple=True, type=click.Choice(["cnn", "lstm"]),
              help="Run only these tasks (default: both).")
@overwrite_option("Replace the demo's files already in --out "
                  "(its models and summary.json); without it an existing one is refused.")
@json_option("Print the summary as JSON only.")
def demo_cmd(out_dir: str, seeds: int, tasks_, overwrite: bool, as_json: bool) -> int:
    """Transfer vs training from scratch on the shipped sample models.

    Runs the CNN new-task recipe (the sample CNN on 4 shapes it never saw) and the LSTM
    encoder-reuse recipe (motif families), each with 20 labels per class, against the same
    architecture trained from scratch on the same data, every training run until its
    training loss stops improving, BatchNorm statistics of layers that trained recomputed on
    the training images, over --seeds seeds; prints the setup, then test accuracy (mean and
    spread), training accuracy, epochs, time and parameters trained.

    \b
    Example:
      surgery demo --out demo-out --seeds 3
    """
    from surgery.recipes.demo import format_table, run_demo

    echo = (lambda line: None) if as_json else click.echo
    summary = run_demo(out_dir, seeds=tuple(range(seeds)), tasks_to_run=tasks_ or
                       ("cnn", "lstm"), overwrite=overwrite, echo=echo)
    if as_json:
        print_json(summary)
        return 0
    click.echo("")
    click.echo(format_table(summary))
    click.echo(f"\ntotal {summary['seconds']:.0f} s; models and summary.json in {out_dir}")
    return 0

