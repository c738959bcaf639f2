"""LSTM transfer recipes. Each composes `surgery` functions in a visible order.

Example:
```python
from surgery.recipes import lstm
result = lstm.encoder_reuse(seed=0)    # the sample LSTM's encoder on motif families
print(result)
```
"""

from __future__ import annotations

from typing import Any

import numpy as np

import surgery
from surgery.sample_models import tasks

from .base import SAMPLE_LSTM, Echo, RecipeResult, finish, quiet
from .cnn import _until_converged

__all__ = ["encoder_reuse", "vocabulary", "bidirectional", "grow", "pytorch_roundtrip"]


def encoder_reuse(model: Any = SAMPLE_LSTM, data=None, test=None, *,
                  classes: int | None = None, head_epochs: int = 15, tune_epochs: int = 10,
                  lr: float = 3e-3, tune_lr: float = 3e-4, batch_size: int = 16,
                  per_class: int = 20, seed: int = 0, output: str | None = None,
                  overwrite: bool = False, early_stop: int | None = None,
                  min_delta: float = 0.0, echo: Echo = quiet) -> RecipeResult:
    """The pretrained Embedding + LSTM encoder -> a classifier for another task.

    1. load the pretrained model; 2. a new head; 3. train the head, encoder frozen; 4. unfreeze
    everything at a lower learning rate; 5. measure test accuracy.

    Args:
        model: the pretrained sequence model (default: sample_models/lstm.keras).
        data, test: (x, y) arrays or data paths; default: motif families (3 classes, each two
            pretraining motifs, noisier sequences), `per_class` labels each.
        early_stop, min_delta: stop each phase once its training loss has not improved by
            `min_delta` for `early_stop` epochs; `head_epochs`/`tune_epochs` are then caps.

    Example:
    ```python
    r = encoder_reuse(seed=0)
    print(r.metrics["accuracy"])
    ```
    """
    if data is None:
        data, test = tasks.motif_transfer_task(per_class, seed=seed)
    classes = classes or int(np.max(np.asarray(data[1]))) + 1
    steps = []
    m = surgery.load_model(model)
    steps.append(f"load_model({model!r})")
    m = surgery.replace_head(m, classes, seed=seed).model
    steps.append(f"replace_head(model, {classes})")
    echo("  training the new head, encoder frozen")
    stop, until = _until_converged(early_stop, min_delta)
    r1 = surgery.finetune(m, data, train=["head"], epochs=head_epochs, batch_size=batch_size,
                          lr=lr, seed=seed, verbose=0, callbacks=stop)
    steps.append(f"finetune(train=['head'], epochs={head_epochs}{until}, lr={lr})")
    echo(f"  unfreezing the encoder at lr {tune_lr}")
    stop, until = _until_converged(early_stop, min_delta)
    r2 = surgery.finetune(r1.model, data, train=["head", "encoder", "embed"],
                          epochs=tune_epochs, batch_size=batch_size, lr=tune_lr, seed=seed,
                          verbose=0, callbacks=stop)
    steps.append(f"finetune(train=['head', 'encoder', 'embed'], epochs={tune_epochs}{until}, "
                 f"lr={tune_lr})")
    return finish("lstm-encoder", r2.model, steps, test, output, overwrite=overwrite,
                  inputs=[model, data, test], epochs=[len(r1.epochs), len(r2.epochs)])


def _sequences(n: int, seed: int):
    return tasks.make_motifs(n, seed=seed)[0]


def vocabulary(model: Any = SAMPLE_LSTM, *, old_vocab=None, new_vocab=None, fill: str = "mean",
               seed: int = 0, output: str | None = None,
               overwrite: bool = False, echo: Echo = quiet) -> RecipeResult:
    """Move the Embedding (and an output layer over tokens, if any) to a new vocabulary with
    `remap_rows`: known tokens keep their vectors, new tokens start from `fill`.

    Default vocabularies: the sample's 64 token ids as strings; the new one drops tokens
    60..63 and adds 8 new ones. Sequences written with carried tokens give the same outputs
    (measured after mapping their ids).

    Example:
    ```python
    r = vocabulary(new_vocab=my_tokens, old_vocab=old_tokens)
    ```
    """
    from surgery import edit
    from surgery.io.tfimport import keras

    src = surgery.load_model(model)
    embed = next(l for l in src.layers if type(l).__name__ == "Embedding")
    old_vocab = list(old_vocab) if old_vocab is not None else \
        [str(i) for i in range(embed.input_dim)]
    new_vocab = list(new_vocab) if new_vocab is not None else \
        old_vocab[:60] + [f"new{i}" for i in range(8)]
    steps = [f"load_model({model!r})"]
    config = embed.get_config()
    config["input_dim"] = len(new_vocab)
    new, _ = edit.replace_layer(src, embed.name, keras().layers.Embedding.from_config(config))
    steps.append(f"edit.replace_layer(model, {embed.name!r}, Embedding({len(new_vocab)}, ...))")
    report = surgery.transplant(src, new, {"adapter": [{
        "target": f"{embed.name}/embeddings", "name": "remap_rows", "old_vocab": old_vocab,
        "new_vocab": new_vocab, "fill": fill, "seed": seed, "lossy": True}]}, strict=True)
    steps.append("transplant(old, new, adapter remap_rows)")
    index = {t: i for i, t in enumerate(new_vocab)}
    carried = np.array([i for i, t in enumerate(old_vocab) if t in index])
    x = carried[_sequences(32, seed) % len(carried)]  # sequences of carried tokens only
    lookup = np.array([index.get(t, 0) for t in old_vocab])
    diff = float(np.abs(np.asarray(new(lookup[x])) - np.asarray(src(x))).max())
    steps.append("compare outputs on sequences of carried tokens (ids mapped)")
    metrics = {"vocabulary": f"{len(old_vocab)} -> {len(new_vocab)}",
               "note": report.converted[0].note, "max_output_diff_carried_tokens": diff}
    if output:
        surgery.save_model(new, output, overwrite=overwrite, inputs=[model])
    return RecipeResult("lstm-vocab", new, steps, metrics, output)


def bidirectional(model: Any = SAMPLE_LSTM, *, layer: str = "encoder", seed: int = 0,
                  output: str | None = None,
                  overwrite: bool = False, echo: Echo = quiet) -> RecipeResult:
    """A unidirectional LSTM becomes Bidirectional; the forward direction carries the old
    weights, the backward direction starts fresh, and the next layer's rows for the backward
    half start at zero, so the new model begins with exactly the old outputs.

    Example:
    ```python
    r = bidirectional(layer="encoder")
    ```
    """
    from surgery import edit
    from surgery.io.tfimport import keras

    k = keras()
    src = surgery.load_model(model)
    old = next(l for l in src.layers if l.name == layer)
    new_layer = k.layers.Bidirectional(type(old).from_config(old.get_config()), name=layer)
    new, _ = edit.replace_layer(src, layer, new_layer)
    steps = [f"load_model({model!r})", f"edit.replace_layer(model, {layer!r}, "
             f"Bidirectional({type(old).__name__}))"]
    report = surgery.transplant(src, new, {
        "rename": [{"from": f"^{layer}/", "to": f"{layer}/forward/"}],
        "skip": [f"{layer}/backward/*"],
        "adapter": [{"target": "head/kernel", "name": "pad"}]}, strict=True)
    steps.append(f"transplant(old, new, rename {layer}/ -> {layer}/forward/, pad the head)")
    x = _sequences(32, seed)
    diff = float(np.abs(np.asarray(new(x)) - np.asarray(src(x))).max())
    steps.append("compare outputs with the original")
    metrics = {"copied": len(report.copied), "max_output_diff": diff}
    if output:
        surgery.save_model(new, output, overwrite=overwrite, inputs=[model])
    return RecipeResult("lstm-bidirectional", new, steps, metrics, output)


def grow(model: Any = SAMPLE_LSTM, *, layer: str = "encoder", units: int = 96,
         stack: bool = True, seed: int = 0, output: str | None = None, overwrite: bool = False,
         echo: Echo = quiet) -> RecipeResult:
    """More LSTM units (gate by gate: the old units keep their outputs, the next layer's new
    rows start at zero: the same function), then optionally one more LSTM layer on top,
    initialized close to identity (its gates open, its cell copying its input).

    Example:
    ```python
    r = grow(units=96, stack=True)
    ```
    """
    from surgery import edit
    from surgery.io.tfimport import keras

    k = keras()
    src = surgery.load_model(model)
    old = next(l for l in src.layers if l.name == layer)
    width = int(old.units)
    config = old.get_config()
    config.update(units=int(units), return_sequences=bool(stack))
    wide, _ = edit.replace_layer(src, layer, type(old).from_config(config))
    steps = [f"load_model({model!r})", f"edit.replace_layer(model, {layer!r}, "
             f"{type(old).__name__}({units}, return_sequences={stack}))"]
    head = [l for l in src.layers if l is not old][-1].name
    surgery.transplant(src, wide, {"adapter": [
        {"target": layer, "name": "resize_recurrent_units", "seed": seed,
         "sources": {"kernel": f"{layer}/kernel", "recurrent_kernel":
                     f"{layer}/recurrent_kernel", "bias": f"{layer}/bias"}},
        {"target": f"{head}/kernel", "name": "pad"}]}, strict=not stack)
    steps.append("transplant(old, new, resize_recurrent_units + pad the next layer)")
    x = _sequences(32, seed)
    metrics = {"units": f"{width} -> {units}"}
    if not stack:
        metrics["max_output_diff"] = float(np.abs(np.asarray(wide(x)) -
                                                  np.asarray(src(x))).max())
        result = wide
    else:
        top = k.layers.LSTM(units, name=f"{layer}_top")
        result, _ = edit.insert_layer(wide, layer, top)
        gain = 3.0
        kernel = np.zeros((units, 4 * units), np.float32)
        kernel[:, 2 * units:3 * units] = np.eye(units) * 1.0  # cell input copies its input
        bias = np.zeros(4 * units, np.float32)
        bias[:units], bias[units:2 * units], bias[3 * units:] = gain * 2, -gain * 2, gain * 2
        with surgery.open_weights(result) as w:
            w.variable(f"{layer}_top/kernel").assign(kernel)
            w.variable(f"{layer}_top/recurrent_kernel").assign(
                np.zeros((units, 4 * units), np.float32))
            w.variable(f"{layer}_top/bias").assign(bias)
        steps.append(f"edit.insert_layer(model, {layer!r}, LSTM({units})) with near-identity "
                     "weights")
        seen, h = {}, x
        for part in [p for p in result.layers if type(p).__name__ != "InputLayer"]:
            h = part(h)
            seen[part.name] = np.asarray(h)
        below, above = seen[layer][:, -1], seen[f"{layer}_top"]
        metrics["top_layer_max_deviation_from_identity"] = float(np.abs(above - below).max())
        metrics["max_output_diff"] = float(np.abs(np.asarray(result(x)) -
                                                  np.asarray(src(x))).max())
    if output:
        surgery.save_model(result, output, overwrite=overwrite, inputs=[model])
    return RecipeResult("lstm-grow", result, steps, metrics, output)


def pytorch_roundtrip(model: Any = SAMPLE_LSTM, *, folder: str | None = None, seed: int = 0,
                      overwrite: bool = False, echo: Echo = quiet) -> RecipeResult:
    """Export the LSTM classifier to a PyTorch-layout `.safetensors` state dict and import it
    back into a fresh Keras model (examples/rules/torch_lstm_export.toml and torch_lstm.toml);
    the outputs are the same. An existing `folder`/lstm.safetensors is replaced only with
    `overwrite`.

    Example:
    ```python
    r = pytorch_roundtrip(folder="out")
    ```
    """
    import os
    import tempfile

    from surgery.model.rebuild import model_config, rebuild

    from .base import HERE

    rules = os.path.join(HERE, "examples", "rules")
    folder = folder or tempfile.mkdtemp(prefix="surgery-torch-")
    path = os.path.join(folder, "lstm.safetensors")
    from surgery.io.atomic import check_output

    # never over an existing file unless `overwrite`, never over (or into) the model read
    check_output(path, inputs=[model], overwrite=overwrite)
    src = surgery.load_model(model)
    keys = surgery.export_state_dict(src, path, os.path.join(rules, "torch_lstm_export.toml"),
                                     overwrite=overwrite)
    fresh = rebuild(src, model_config(src))
    report = surgery.transplant(path, fresh, os.path.join(rules, "torch_lstm.toml"))
    x = _sequences(32, seed)
    diff = float(np.abs(np.asarray(fresh(x)) - np.asarray(src(x))).max())
    steps = [f"export_state_dict(model, {path!r}, torch_lstm_export.toml)",
             "rebuild the architecture (fresh weights)",
             f"transplant({path!r}, fresh, torch_lstm.toml)", "compare outputs"]
    return RecipeResult("lstm-torch", fresh, steps, {"torch_keys": sorted(keys),
                                                     "imported_ok": report.ok,
                                                     "max_output_diff": diff}, path)
