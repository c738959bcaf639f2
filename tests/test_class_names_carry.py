"""Class names travel with the model through the commands that keep its classes (the sample
CNN stores its 8 shape names), and are dropped with a note where the head's units change."""

from __future__ import annotations

from click.testing import CliRunner

from cli import main
from surgery.io.classnames import class_names
from surgery.sample_models import tasks


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_model_commands_carry_or_drop_class_names(samples, tmp_path):
    cnn = samples["cnn"]
    assert class_names(cnn) == tasks.PRETRAIN_SHAPES
    out = tmp_path / "frozen.keras"
    r = run("freeze", cnn, "-o", out, "--except", "head")
    assert r.exit_code == 0, r.output
    assert class_names(str(out)) == tasks.PRETRAIN_SHAPES
    out = tmp_path / "new4.keras"
    r = run("head", cnn, "-o", out, "--classes", 4)
    assert r.exit_code == 0, r.output
    assert "\nclass names not carried: the new head's units are other classes\n" in r.output
    assert class_names(str(out)) is None
    out = tmp_path / "kept.keras"
    r = run("head", cnn, "-o", out, "--classes", 3, "--keep-classes", "2,0,7")
    assert r.exit_code == 0, r.output
    assert class_names(str(out)) == ("square", "circle", "vbar")
    out = tmp_path / "pruned.keras"
    r = run("edit", "delete-channels", cnn, "-o", out, "--layer", "head", "--channels", 0)
    assert r.exit_code == 0, r.output
    assert f"\nclass names not carried: {cnn} names 8 classes, the result's head has 7 units\n" \
        in r.output
    assert class_names(str(out)) is None


def test_transplant_keeps_the_target_class_names_on_both_paths(samples, tmp_path):
    cnn = samples["cnn"]
    for extra in ([], ["--verify"]):  # file to file, and through Keras (--verify)
        out = tmp_path / f"t{len(extra)}.keras"
        r = run("transplant", cnn, cnn, "-o", out, *extra)
        assert r.exit_code == 0, r.output
        assert class_names(str(out)) == tasks.PRETRAIN_SHAPES, extra


def test_a_model_whose_head_was_replaced_uses_the_new_data_names(samples, tmp_path):
    """The sample CNN's file names 8 classes; a model descended from it with a 4-unit head is
    not that file's model: finetune takes the data's 4 names, evaluate uses them."""
    import numpy as np

    import surgery

    x, y = tasks.make_shapes(16, tasks.TRANSFER_SHAPES, seed=1)
    data = tmp_path / "new.npz"
    np.savez(data, x=x, y=y, class_names=np.array(tasks.TRANSFER_SHAPES))
    model = surgery.replace_head(surgery.load_model(samples["cnn"]), 4).model
    result = surgery.finetune(model, str(data), train=["head"], epochs=1, verbose=0)
    assert result.class_names == tasks.TRANSFER_SHAPES
    assert surgery.evaluate(model, str(data)).class_names == tasks.TRANSFER_SHAPES
