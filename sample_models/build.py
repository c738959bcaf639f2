"""Builds the shipped sample models from generated data (fixed seeds, no downloads).

Run with ``make sample-models`` (or ``python -m surgery.sample_models.build [--out DIR]``). Each model is
trained briefly, saved without optimizer state, and its held-out accuracy and build time are
written to ``manifest.json`` beside it. See sample_models/README.md for what each one is.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from surgery.sample_models import tasks  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _seed(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


def cnn_model(num_classes: int = len(tasks.PRETRAIN_SHAPES), name: str = "shapes_cnn",
              channels: int = 3):
    """The sample CNN: three Conv-BN-ReLU blocks, global pooling, a hidden Dense, a head."""
    import keras
    from keras import layers

    inputs = keras.Input((tasks.IMAGE_SIZE, tasks.IMAGE_SIZE, channels), name="image")
    x = inputs
    for i, filters in enumerate((16, 32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
        if i < 3:
            x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(64, activation="relu", name="fc")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name=name)


def lstm_model(num_classes: int = len(tasks.PRETRAIN_MOTIFS), name: str = "motif_lstm"):
    """The sample sequence model: Embedding + LSTM encoder + softmax head."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((tasks.SEQ_LEN,), dtype="int32", name="tokens"),
        layers.Embedding(tasks.VOCAB, 32, name="embed"),
        layers.LSTM(64, name="encoder"),
        layers.Dense(num_classes, activation="softmax", name="head"),
    ], name=name)


def _fit(model, x, y, epochs, batch_size=64):
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)


def _without_optimizer(model, build):
    """A fresh, uncompiled copy of `model` (weights copied layer by layer)."""
    fresh = build()
    for src, dst in zip(model.layers, fresh.layers):
        dst.set_weights(src.get_weights())
    return fresh


def _accuracy(model, x, y) -> float:
    return float((model.predict(x, verbose=0).argmax(-1) == y).mean())


def build_cnn(out: str) -> dict:
    _seed(1)
    x, y = tasks.make_shapes(6000, seed=1)
    xt, yt = tasks.make_shapes(1000, seed=2)
    model = cnn_model()
    _fit(model, x, y, epochs=8)
    model = _without_optimizer(model, cnn_model)
    _save_named(model, os.path.join(out, "cnn.keras"), tasks.PRETRAIN_SHAPES)
    return {"file": "cnn.keras", "task": "shapes: " + ", ".join(tasks.PRETRAIN_SHAPES),
            "test_accuracy": _accuracy(model, xt, yt)}


def _save_named(model, path: str, names) -> None:
    """Saves with the class names in the file (`inspect` shows them, `predict` uses them)."""
    from surgery.model.saving import save_model

    save_model(model, path, overwrite=True, class_names=list(names))


def build_lstm(out: str) -> dict:
    _seed(2)
    x, y = tasks.make_motifs(6000, seed=1)
    xt, yt = tasks.make_motifs(1000, seed=2)
    model = lstm_model()
    _fit(model, x, y, epochs=10)
    model = _without_optimizer(model, lstm_model)
    _save_named(model, os.path.join(out, "lstm.keras"),
                tasks.motif_names(tasks.PRETRAIN_MOTIFS))
    return {"file": "lstm.keras", "task": f"{len(tasks.PRETRAIN_MOTIFS)} motifs in sequences",
            "test_accuracy": _accuracy(model, xt, yt)}


def _blob_mlp():
    import keras
    from keras import layers

    return keras.Sequential([keras.Input((16,)), layers.Dense(32, activation="relu", name="l1"),
                             layers.Dense(16, activation="relu", name="l2"),
                             layers.Dense(8, activation="softmax", name="head")], name="blobs")


def build_hub(out: str) -> dict:
    """A TF2 Hub-format SavedModel: a 16 -> 16 feature extractor (two ReLU Dense layers)."""
    import tensorflow as tf

    _seed(3)
    x, y = tasks.make_blobs(4000, seed=1)
    xt, yt = tasks.make_blobs(1000, seed=2)
    mlp = _blob_mlp()
    _fit(mlp, x, y, epochs=10)
    acc = _accuracy(mlp, xt, yt)
    root = tf.train.Checkpoint()
    for name in ("l1", "l2"):
        kernel, bias = mlp.get_layer(name).get_weights()
        part = tf.Module(name=name)
        part.kernel = tf.Variable(kernel, name=f"{name}/kernel")
        part.bias = tf.Variable(bias, name=f"{name}/bias")
        setattr(root, name, part)
    root.variables = [root.l1.kernel, root.l1.bias, root.l2.kernel, root.l2.bias]
    root.trainable_variables = list(root.variables)

    @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32)])
    def features(inputs):
        h = tf.nn.relu(tf.matmul(inputs, root.l1.kernel) + root.l1.bias)
        return tf.nn.relu(tf.matmul(h, root.l2.kernel) + root.l2.bias)

    root.__call__ = features
    path = os.path.join(out, "hub_module")
    if os.path.isdir(path):
        import shutil

        shutil.rmtree(path)
    tf.saved_model.save(root, path)
    return {"file": "hub_module/", "task": "16-d blob features (pretraining accuracy of the "
            "MLP it was cut from)", "test_accuracy": acc}


def build_keras2(out: str) -> dict:
    """A Keras 2 (tf_keras) MLP with BatchNorm saved as legacy .h5."""
    import tf_keras

    tf_keras.utils.set_random_seed(4)
    x, y = tasks.make_blobs(4000, seed=3)
    xt, yt = tasks.make_blobs(1000, seed=4)
    L = tf_keras.layers
    model = tf_keras.Sequential([L.InputLayer((16,)), L.Dense(32, name="dense_a"),
                                 L.BatchNormalization(name="bn"), L.Activation("relu"),
                                 L.Dense(8, activation="softmax", name="head")], name="keras2_mlp")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=8, batch_size=64, verbose=0)
    acc = float((model.predict(xt, verbose=0).argmax(-1) == yt).mean())
    model.save(os.path.join(out, "keras2_mlp.h5"), include_optimizer=False)
    return {"file": "keras2_mlp.h5", "task": "8-way blobs (Keras 2 / tf_keras)",
            "test_accuracy": acc}


def _save_clean(model, build, path):
    _without_optimizer(model, build).save(path)


def mnist_dense_model():
    """The source material's Dense network: 784 inputs, a HeNormal-initialized,
    L2-regularized first layer, a 10-way softmax."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((784,), name="pixels"),
        layers.Dense(128, activation="relu", kernel_initializer="he_normal",
                     kernel_regularizer=keras.regularizers.L2(1e-4), name="hidden"),
        layers.Dense(10, activation="softmax", name="head"),
    ], name="dense_784")


def mnist_cnn_model():
    """The source material's CNN: Conv2D(32, 3x3) + MaxPooling + Dense(10) on 28x28x1."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((28, 28, 1), name="image"),
        layers.Conv2D(32, (3, 3), activation="relu", name="conv"),
        layers.MaxPooling2D((2, 2), name="pool"),
        layers.Flatten(name="flatten"),
        layers.Dense(10, activation="softmax", name="head"),
    ], name="cnn_28")


def text_lstm_model():
    """The source material's text model: Embedding(10000, 128) + LSTM(128) + Dense(1)."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((tasks.TEXT_LEN,), dtype="int32", name="tokens"),
        layers.Embedding(tasks.TEXT_VOCAB, 128, name="embedding"),
        layers.LSTM(128, name="lstm"),
        layers.Dense(1, activation="sigmoid", name="head"),
    ], name="text_lstm")


def build_source_examples(out: str) -> dict:
    """The three architectures of the source material, trained briefly on generated data."""
    _seed(5)
    x, y = tasks.make_digits_like(3000, seed=1)
    xt, yt = tasks.make_digits_like(500, seed=2)
    dense = mnist_dense_model()
    _fit(dense, x.reshape(len(x), -1), y, epochs=5)
    _save_clean(dense, mnist_dense_model, os.path.join(out, "dense_784.keras"))
    cnn = mnist_cnn_model()
    _fit(cnn, x, y, epochs=3)
    _save_clean(cnn, mnist_cnn_model, os.path.join(out, "cnn_28.keras"))
    tx, ty = tasks.make_text(3000, seed=1)
    txt, tyt = tasks.make_text(500, seed=2)
    text = text_lstm_model()
    text.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    text.fit(tx, ty, epochs=2, batch_size=64, verbose=0)
    _save_clean(text, text_lstm_model, os.path.join(out, "text_lstm.keras"))
    acc = float(((text.predict(txt, verbose=0)[:, 0] > 0.5) == tyt).mean())
    return {"file": "dense_784.keras, cnn_28.keras, text_lstm.keras",
            "task": "digit-like shapes (10 classes, 28x28); token sentiment (binary)",
            "test_accuracy": min(_accuracy(dense, xt.reshape(len(xt), -1), yt),
                                 _accuracy(cnn, xt, yt), acc)}


BUILDERS = {"cnn": build_cnn, "lstm": build_lstm, "hub": build_hub, "keras2": build_keras2,
            "source": build_source_examples}


def build_all(out: str = HERE, only: list[str] | None = None) -> dict:
    os.makedirs(out, exist_ok=True)
    manifest_path = os.path.join(out, "manifest.json")
    manifest = {}
    if only and os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    for name, builder in BUILDERS.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        entry = builder(out)
        entry["build_seconds"] = round(time.perf_counter() - t0, 1)
        manifest[name] = entry
        print(f"{name:<8} {entry['file']:<16} accuracy {entry['test_accuracy']:.3f}  "
              f"{entry['build_seconds']:.1f} s", flush=True)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=HERE, help="output folder (default: sample_models/)")
    parser.add_argument("--only", nargs="*", choices=sorted(BUILDERS))
    args = parser.parse_args()
    t0 = time.perf_counter()
    build_all(args.out, args.only)
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
