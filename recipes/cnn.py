"""CNN transfer recipes. Each composes `surgery` functions in a visible order.

Example:
```python
from surgery.recipes import cnn
result = cnn.new_task(seed=0)          # the sample CNN on 4 shapes it never saw
print(result)
```
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

import surgery
from surgery.model.verify import accuracy
from surgery.sample_models import tasks

from .base import SAMPLE_CNN, Echo, RecipeResult, finish, quiet

__all__ = ["new_task", "scratch_baseline", "input_channels",
           "resolution", "inflate_3d", "grow"]


def _default_task(per_class: int, seed: int):
    return tasks.shape_transfer_task(per_class, seed=seed)


def _trained_params(model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def _until_converged(early_stop: int | None, min_delta: float) -> tuple[list, str]:
    """Keras's `EarlyStopping` on the training loss (stop once it has not improved by
    `min_delta` for `early_stop` epochs; the `epochs` given stay the cap) and its step text;
    no callback when `early_stop` is None."""
    if not early_stop:
        return [], ""
    from surgery.io.tfimport import keras

    stop = keras().callbacks.EarlyStopping(monitor="loss", patience=int(early_stop),
                                           min_delta=float(min_delta))
    return [stop], f" (at most; early_stop={early_stop} on loss, min_delta={min_delta:g})"


def new_task(model: Any = SAMPLE_CNN, data=None, test=None, *, classes: int | None = None,
             head_epochs: int = 15, tune_epochs: int = 10, lr: float = 3e-3,
             tune_lr: float = 3e-4, top: Sequence[str] = ("fc", "block3_*"),
             batch_size: int = 16, per_class: int = 20, seed: int = 0,
             output: str | None = None,
             overwrite: bool = False, early_stop: int | None = None, min_delta: float = 0.0,
             echo: Echo = quiet) -> RecipeResult:
    """Pretrained CNN -> a new task, in Keras's two-phase transfer procedure.

    1. load the pretrained model; 2. a new head for the task's classes; 3. train the head
    with the backbone frozen; 4. unfreeze the top block (`top`) at a lower learning rate; the
    BatchNorm layers left frozen stay in inference mode (one inside `top`, like `block3_bn`,
    trains in training mode); 5. measure test accuracy.

    Args:
        model: the pretrained CNN (default: sample_models/cnn.keras).
        data, test: (x, y) arrays or data paths; default: the 4 shapes the sample CNN never
            saw, `per_class` labels each, and 600 test images.
        early_stop, min_delta: stop each phase once its training loss has not improved by
            `min_delta` for `early_stop` epochs; `head_epochs`/`tune_epochs` are then caps.

    Example:
    ```python
    r = new_task(seed=0)
    print(r.metrics["accuracy"])
    ```
    """
    if data is None:
        data, test = _default_task(per_class, seed)
    classes = classes or int(np.max(np.asarray(data[1]))) + 1
    steps = []
    m = surgery.load_model(model)
    steps.append(f"load_model({model!r})")
    m = surgery.replace_head(m, classes, seed=seed).model
    steps.append(f"replace_head(model, {classes})")
    echo(f"  head: {classes} classes; training the head, backbone frozen")
    stop, until = _until_converged(early_stop, min_delta)
    r1 = surgery.finetune(m, data, train=["head"], epochs=head_epochs, batch_size=batch_size,
                          lr=lr, seed=seed, verbose=0, callbacks=stop)
    steps.append(f"finetune(train=['head'], epochs={head_epochs}{until}, lr={lr})")
    echo(f"  unfreezing {', '.join(top)} at lr {tune_lr}, frozen BatchNorm in inference mode")
    stop, until = _until_converged(early_stop, min_delta)
    r2 = surgery.finetune(r1.model, data, train=["head", *top], bn="inference",
                          epochs=tune_epochs, batch_size=batch_size, lr=tune_lr, seed=seed,
                          verbose=0, callbacks=stop)
    steps.append(f"finetune(train=['head', {', '.join(repr(t) for t in top)}], "
                 f"bn='inference', epochs={tune_epochs}{until}, lr={tune_lr})")
    return finish("cnn-new-task", r2.model, steps, test, output, overwrite=overwrite,
                  inputs=[model, data, test], epochs=[len(r1.epochs), len(r2.epochs)])


def scratch_baseline(architecture: Any, data, test=None, *, epochs: int, lr: float,
                     batch_size: int = 16, seed: int = 0, name: str = "scratch",
                     early_stop: int | None = None, min_delta: float = 0.0) -> RecipeResult:
    """The same architecture, fresh weights, every layer trained, on the same data for the
    same epochs (or, with `early_stop`, until the training loss has not improved by
    `min_delta` for `early_stop` epochs, `epochs` being the cap)."""
    from surgery.model.rebuild import model_config, rebuild
    from surgery.io.tfimport import keras

    keras().utils.set_random_seed(seed)
    fresh = rebuild(architecture, model_config(architecture))
    stop, until = _until_converged(early_stop, min_delta)
    r = surgery.finetune(fresh, data, train=["*"], epochs=epochs, batch_size=batch_size, lr=lr,
                         seed=seed, verbose=0, callbacks=stop)
    metrics = {"trained_params": r.epochs[-1]["trainable_params"],
               "total_params": r.model.count_params(), "epochs": [len(r.epochs)]}
    if test is not None:
        metrics["accuracy"] = accuracy(r.model, *test)
    return RecipeResult(name, r.model, ["rebuild (fresh weights)",
                                        f"finetune(train=['*'], epochs={epochs}{until}, "
                                        f"lr={lr})"], metrics)


def _images(n: int, seed: int, size: int = tasks.IMAGE_SIZE):
    return tasks.make_shapes(n, seed=seed, size=size)[0]


MAX_CHANNELS = 4096  # input channels cnn-channels builds a model for


def input_channels(model: Any = SAMPLE_CNN, *, channels: int = 1, mode: str = "sum",
                   indices: Sequence[int | None] | None = None, seed: int = 0,
                   output: str | None = None,
                   overwrite: bool = False, echo: Echo = quiet) -> RecipeResult:
    """Adapt a pretrained CNN to another input: gray (``channels=1``, ``sum``), multispectral
    (``channels=6``, ``repeat``), or reordered channels (``channels=3``, ``select`` with
    ``indices=[2, 1, 0]`` for BGR input).

    1. `edit.change_input` to the new channel count (the first conv starts fresh);
    2. `transplant` the pretrained weights with an ``adapt_in_channels`` adapter;
    3. measure the largest output difference against the original model on matching inputs
       (gray replicated, channels tiled, channels reordered): 0 up to float rounding.

    Example:
    ```python
    r = input_channels(channels=1)          # an RGB model that takes gray images
    ```
    """
    from surgery import edit
    from surgery.errors import OptionError, UnsupportedModelError

    if not isinstance(channels, int) or isinstance(channels, bool) or \
            not 1 <= channels <= MAX_CHANNELS:
        raise OptionError(f"cnn-channels: channels must be a whole number in 1..{MAX_CHANNELS}, "
                          f"got {channels!r}")
    src = surgery.load_model(model)
    shape = tuple(src.inputs[0].shape)
    if len(shape) != 4:
        where = model if isinstance(model, str) else "the model"
        raise UnsupportedModelError(f"{where}: its input has shape {shape}, not (batch, height, "
                                    "width, channels); cnn-channels needs a 2D CNN (use --model "
                                    "with an image model)")
    h, w, c = shape[1:]
    steps = [f"load_model({model!r})"]
    new, report = edit.change_input(src, (h, w, channels))
    steps.append(f"edit.change_input(model, ({h}, {w}, {channels}))")
    with surgery.open_weights(src) as w:  # the first kernel reads the input channels
        first = next(v.path for v in w.variables() if v.name in ("kernel", "depthwise_kernel"))
    rule = {"target": first, "name": "adapt_in_channels", "mode": mode}
    if indices is not None:
        rule["indices"] = list(indices)
    lossy = mode == "select" and len({i for i in indices or [] if i is not None}) < c
    rule["lossy"] = lossy
    t = surgery.transplant(src, new, {"adapter": [rule]}, strict=True)
    steps.append(f"transplant(pretrained, new, adapter {rule})")
    x = _images(16, seed)
    if mode in ("sum", "mean"):
        gray = x.mean(-1, keepdims=True)
        feed_new, feed_old = np.repeat(gray, channels, -1), np.repeat(gray, c, -1)
    elif mode == "repeat":
        feed_new, feed_old = np.tile(x, (1, 1, 1, channels // c)), x
    else:
        idx = list(indices or range(channels))
        feed_new = np.stack([x[..., i] if i is not None else np.zeros_like(x[..., 0])
                             for i in idx], -1)
        feed_old = x
    diff = float(np.abs(np.asarray(new(feed_new)) - np.asarray(src(feed_old))).max())
    scale = "" if mode != "mean" else " (mean keeps weight scale, not outputs)"
    steps.append(f"compare outputs on matching inputs{scale}")
    metrics = {"max_output_diff": diff, "converted": [e.path for e in t.converted]}
    if output:
        surgery.save_model(new, output, overwrite=overwrite, inputs=[model])
    return RecipeResult("cnn-channels", new, steps, metrics, output)


def resolution(model: Any = SAMPLE_CNN, *, size: int = 64, seed: int = 0,
               output: str | None = None,
               overwrite: bool = False, echo: Echo = quiet) -> RecipeResult:
    """Run a CNN trained at one input size on larger inputs.

    A model with global pooling only needs a new input shape (`edit.change_input`); a model
    with Flatten + Dense is made fully convolutional (`edit.fully_convolutional`): the Dense
    becomes a Conv covering the old feature map, so a larger image gives a score map whose
    cells are the old model's predictions on each window. Both keep the old outputs at the old
    size (measured).

    Example:
    ```python
    r = resolution(size=64)
    ```
    """
    from surgery import edit

    src = surgery.load_model(model)
    h, w, c = tuple(src.inputs[0].shape[1:])
    steps = [f"load_model({model!r})"]
    kinds = {type(l).__name__ for l in src.layers}
    if "Flatten" in kinds:
        same, _ = edit.fully_convolutional(src)
        steps.append("edit.fully_convolutional(model)  # Flatten+Dense -> Conv")
        big, _ = edit.fully_convolutional(src, input_shape=(size, size, c))
    else:
        same = src
        big, _ = edit.change_input(src, (size, size, c))
        steps.append(f"edit.change_input(model, ({size}, {size}, {c}))  # global pooling")
    x = _images(8, seed, size=h)
    diff = float(np.abs(np.asarray(same(x)).reshape(len(x), -1) -
                        np.asarray(src(x)).reshape(len(x), -1)).max())
    out = np.asarray(big(_images(4, seed + 1, size=size)))
    steps.append(f"run on {size}x{size} images -> output {out.shape[1:]}")
    metrics = {"max_output_diff_at_old_size": diff, "output_shape_at_new_size":
               list(out.shape[1:])}
    if output:
        surgery.save_model(big, output, overwrite=overwrite, inputs=[model])
    return RecipeResult("cnn-resolution", big, steps, metrics, output)


def inflate_3d(model: Any = SAMPLE_CNN, *, frames: int = 8, depth: int = 3,
               mode: str = "center", seed: int = 0, output: str | None = None,
               overwrite: bool = False,
               echo: Echo = quiet) -> RecipeResult:
    """2D CNN -> 3D CNN for short clips (I3D); a static clip reproduces the 2D prediction.

    Example:
    ```python
    r = inflate_3d(frames=8)
    ```
    """
    from surgery import edit

    src = surgery.load_model(model)
    video, report = edit.inflate(src, frames=frames, depth=depth, mode=mode)
    x = _images(8, seed)
    clip = np.repeat(x[:, None], frames, axis=1)
    diff = float(np.abs(np.asarray(video(clip)) - np.asarray(src(x))).max())
    steps = [f"load_model({model!r})",
             f"edit.inflate(model, frames={frames}, depth={depth}, mode={mode!r})",
             "compare a static clip's prediction with the image's"]
    if output:
        surgery.save_model(video, output, overwrite=overwrite, inputs=[model])
    return RecipeResult("cnn-inflate", video, steps, {"max_output_diff_static_clip": diff,
                                                      "converted": list(report.converted)},
                        output)


def grow(model: Any = SAMPLE_CNN, data=None, test=None, *, widen_layer: str = "fc",
         units: int = 96, deepen_after: str = "fc", epochs: int = 3, lr: float = 3e-4,
         seed: int = 0, output: str | None = None,
         overwrite: bool = False, echo: Echo = quiet) -> RecipeResult:
    """Widen and deepen a trained CNN (Net2Net) without changing its function, then keep
    training it.

    Example:
    ```python
    r = grow(units=96)
    ```
    """
    from surgery import edit

    src = surgery.load_model(model)
    if data is None:
        data = tasks.make_shapes(1500, seed=50 + seed)
        test = tasks.make_shapes(600, seed=998)
    steps = [f"load_model({model!r})"]
    wide, _ = edit.widen(src, widen_layer, units, seed=seed)
    steps.append(f"edit.widen(model, {widen_layer!r}, {units})")
    deep, _ = edit.deepen(wide, deepen_after)
    steps.append(f"edit.deepen(model, {deepen_after!r})")
    x = test[0][:32]
    diff = float(np.abs(np.asarray(deep(x)) - np.asarray(src(x))).max())
    steps.append("compare outputs with the original: the same function")
    before = accuracy(deep, *test)
    r = surgery.finetune(deep, data, epochs=epochs, lr=lr, batch_size=32, seed=seed, verbose=0)
    steps.append(f"finetune(epochs={epochs}, lr={lr})")
    metrics = {"max_output_diff_after_growth": diff, "params_before": src.count_params(),
               "params_after": r.model.count_params(), "accuracy_grown": before,
               "accuracy_after_training": accuracy(r.model, *test)}
    if output:
        surgery.save_model(r.model, output, overwrite=overwrite, inputs=[model])
    return RecipeResult("cnn-grow", r.model, steps, metrics, output)


recompute_bn_statistics = surgery.recompute_bn_statistics  # kept for callers of the recipe
