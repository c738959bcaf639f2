"""`convert` preserves the function (issue #15, function-preservation properties): tf_keras
(Keras 2) models of several architectures are saved as `.h5`, converted to Keras 3 by `surgery
convert`, and the converted model's outputs on the sample tasks' own data must equal the
*tf_keras* original's (the other framework is the reference). Depthwise convolutions and
recurrent layers are left to issue #16: their Keras 2 configs carry keys Keras 3 rejects
(`groups`, `time_major`), so `convert` refuses them with one line today (checked below)
instead of converting them."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.sample_models import tasks

pytestmark = pytest.mark.slow  # tf_keras and Keras 3 both run: ~10-35 s per case


def _cnn_bn(k):
    x = k.Input((32, 32, 3))
    h = k.layers.Conv2D(8, 3, name="c1")(x)
    h = k.layers.BatchNormalization(name="bn")(h)
    h = k.layers.ReLU()(h)
    h = k.layers.GlobalAveragePooling2D()(h)
    return k.Model(x, k.layers.Dense(4, activation="softmax", name="head")(h))


def _residual_concat(k):
    x = k.Input((32, 32, 3))
    a = k.layers.Conv2D(6, 3, padding="same", activation="relu", name="a")(x)
    b = k.layers.Conv2D(6, 3, padding="same", name="b")(a)
    h = k.layers.Add()([a, b])
    h = k.layers.Concatenate()([h, k.layers.Conv2D(2, 1, name="side")(x)])
    h = k.layers.MaxPooling2D(4)(h)
    h = k.layers.Flatten()(h)
    return k.Model(x, k.layers.Dense(3, name="logits")(h))


def _lstm(k):
    x = k.Input((tasks.SEQ_LEN,), dtype="int32")
    h = k.layers.Embedding(tasks.VOCAB, 8, name="embed")(x)
    h = k.layers.LSTM(12, name="enc")(h)
    return k.Model(x, k.layers.Dense(5, activation="softmax", name="head")(h))


@pytest.mark.parametrize("build", [_cnn_bn, _residual_concat])
def test_convert_keeps_the_tf_keras_function_on_task_data(build, tmp_path):
    import tf_keras
    tf_keras.utils.set_random_seed(0)
    original = build(tf_keras)
    # move the BatchNorm statistics off their initial values so they matter
    for layer in original.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.moving_mean.shape[0]
            layer.set_weights([np.linspace(0.5, 1.5, n), np.linspace(-0.2, 0.2, n),
                               np.linspace(0.1, 0.3, n), np.linspace(0.5, 2.0, n)])
    src = tmp_path / "model.h5"
    original.save(src)
    if build is _lstm:
        x = tasks.make_motifs(64, seed=3)[0]
    else:
        x = tasks.make_shapes(64, seed=3)[0]
    out = tmp_path / "model.keras"
    r = CliRunner().invoke(main, ["convert", str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    converted = surgery.load_model(str(out))
    expected = original.predict(x, verbose=0)
    got = np.asarray(converted(x, training=False))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert float(np.std(expected)) > 1e-3  # the outputs vary: a constant would prove nothing


def test_keras2_lstm_converts_to_the_same_function_on_task_data(tmp_path):
    """tf_keras writes time_major=False into every RNN config; Keras 3 removed the argument
    and always behaves so: it is dropped (a time_major=True is refused: tests/test_keras2.py)
    and the converted model gives tf_keras's outputs on the motif sequences."""
    import keras
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    original = _lstm(tf_keras)
    src = tmp_path / "lstm.h5"
    original.save(src)
    r = CliRunner().invoke(main, ["convert", str(src), "-o", str(tmp_path / "o.keras")])
    assert r.exit_code == 0, r.output
    x, _ = tasks.make_motifs(64, seed=3)
    expected = original.predict(x, verbose=0)
    got = keras.saving.load_model(tmp_path / "o.keras").predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert float(np.std(expected)) > 1e-3
