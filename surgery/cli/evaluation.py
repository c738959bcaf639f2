"""The evaluate and predict commands: a model on a test set, or on new data."""

from __future__ import annotations

from dataclasses import replace

import click

import surgery

from .app import main
from .options import (emit, json_option, output_option, overwrite_option, print_json,
                      unsafe_option)

_DATA_HELP = ".npz (x, y), .csv, an image folder (one subfolder per class), or a saved " \
             "tf.data directory."


@main.command("evaluate")
@click.argument("model")
@click.option("--data", required=True, metavar="DATA", help=_DATA_HELP)
@click.option("--label", metavar="COLUMN", help="CSV label column (default: label).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--plot", metavar="CONFUSION.png", help="The confusion matrix as PNG (needs "
              "matplotlib: pip install 'surgery[plot]').")
@overwrite_option("Replace an existing --plot file.")
@unsafe_option()
@json_option()
def evaluate_cmd(model, data, label, batch_size, plot, overwrite, unsafe, as_json) -> int:
    """Evaluate MODEL on labelled DATA: loss, accuracy (or MAE/MSE for a regression head),
    and for classifiers the accuracy of each class and the confusion matrix.

    The loss is the one finetune would train with (inferred from the head and the labels).
    Class names come from MODEL (stored by finetune or save_model), else from DATA (CSV
    names, image folders); data with names is matched to MODEL's classes by name.

    \b
    Examples:
      surgery evaluate tuned.keras --data test.npz
      surgery evaluate tuned.keras --data test_images/ --plot confusion.png
      surgery evaluate mlp.keras --data table.csv --label species --json
    """
    from surgery.io.atomic import check_output
    from surgery.train.evaluate import write_confusion_plot
    from surgery.train.outputs import require_matplotlib

    readers = [model, data]
    if plot:
        check_output(plot, inputs=readers, overwrite=overwrite)
        require_matplotlib()
    m = surgery.load_model(model, safe_mode=not unsafe)
    result = replace(surgery.evaluate(m, data, label=label, batch_size=batch_size),
                     model=model)
    if plot:
        write_confusion_plot(result, plot, overwrite=overwrite, inputs=readers)
    if as_json:
        print_json({**result.to_dict(), **({"plot": plot} if plot else {})})
    else:
        emit(result, False)
        if plot:
            click.echo(f"wrote {plot}")
    return 0


@main.command("predict")
@click.argument("model")
@click.option("--data", required=True, metavar="DATA", help=".npz (x; y ignored), .csv "
              "(a label column, if any, is left out), an image folder (with or without class "
              "subfolders), or a saved tf.data directory.")
@output_option("Where to write the predictions (.csv or .npz).", metavar="PREDICTIONS.csv",
               required=True)
@click.option("--label", metavar="COLUMN", help="CSV label column to leave out of the "
              "features (default: label, when there is one).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@overwrite_option("Replace an existing predictions file.")
@unsafe_option()
@json_option("Print a JSON summary only.")
def predict_cmd(model, data, output, label, batch_size, overwrite, unsafe, as_json) -> int:
    """Run MODEL on DATA and write each sample's predicted class and probabilities.

    CSV columns: index, file (image folders), predicted (the class name when MODEL stores
    class names, else the index), probability of the predicted class, then one column per
    class. An .npz holds outputs, predicted, probabilities, class_names (and files). A
    regression head gets its outputs only.

    \b
    Examples:
      surgery predict tuned.keras --data test.npz -o predictions.csv
      surgery predict tuned.keras --data new_images/ -o predictions.npz
    """
    from surgery.io.atomic import check_output
    from surgery.train.evaluate import check_predictions_path, write_predictions

    readers = [model, data]
    check_predictions_path(output)
    check_output(output, inputs=readers, overwrite=overwrite)
    m = surgery.load_model(model, safe_mode=not unsafe)
    result = replace(surgery.predict(m, data, label=label, batch_size=batch_size), model=model)
    write_predictions(result, output, overwrite=overwrite, inputs=readers)
    if as_json:
        print_json({**result.to_dict(), "output": output})
    else:
        click.echo(str(result))
        click.echo(f"wrote {output}")
    return 0
