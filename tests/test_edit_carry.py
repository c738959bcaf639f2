"""Edits build their fresh layers without drawing initial values for variables the carry will
overwrite (surgery.edit.carry): what nothing writes must still be initialized exactly as
Keras initializes it, and the new model's config must keep the real initializers."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

from surgery import edit  # noqa: E402


def _model():
    inp = keras.Input((8,))
    x = L.Dense(16, name="a")(inp)
    x = L.Dense(32, name="b")(x)
    x = L.BatchNormalization(name="bn",
                             moving_variance_initializer=keras.initializers.Constant(2.0),
                             beta_initializer=keras.initializers.Constant(-0.25))(x)
    x = L.Dense(4, name="c", kernel_initializer=keras.initializers.Constant(0.5),
                bias_initializer=keras.initializers.Constant(0.125))(x)
    out = L.Dense(3, name="d")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # trained-looking values, unlike any initializer's
        layer.set_weights([rng.normal(size=w.shape).astype("float32") + 3.0
                           for w in layer.get_weights()])
    return model


def test_variables_nothing_writes_get_their_keras_initial_values():
    model = _model()
    new, report = edit.delete_layer(model, "b")  # bn and c now read 16 features, not 32
    assert sorted(p for p, _ in report.initialized) == [
        "bn/beta", "bn/gamma", "bn/moving_mean", "bn/moving_variance", "c/kernel"]
    bn, c = new.get_layer("bn"), new.get_layer("c")
    # Keras's own initial values: BatchNormalization's defaults and the given constants
    np.testing.assert_array_equal(bn.gamma.numpy(), np.ones(16, "float32"))
    np.testing.assert_array_equal(bn.beta.numpy(), np.full(16, -0.25, "float32"))
    np.testing.assert_array_equal(bn.moving_mean.numpy(), np.zeros(16, "float32"))
    np.testing.assert_array_equal(bn.moving_variance.numpy(), np.full(16, 2.0, "float32"))
    np.testing.assert_array_equal(c.kernel.numpy(), np.full((16, 4), 0.5, "float32"))
    # c's bias kept its shape: copied from the old model, not initialized
    np.testing.assert_array_equal(c.bias.numpy(), model.get_layer("c").bias.numpy())
    np.testing.assert_array_equal(new.get_layer("d").kernel.numpy(),
                                  model.get_layer("d").kernel.numpy())


def test_a_random_initializer_draws_values_for_what_nothing_writes():
    inp = keras.Input((8,))
    x = L.Dense(16, name="a")(inp)
    x = L.Dense(32, name="b")(x)
    out = L.Dense(64, name="c")(x)  # glorot_uniform: |w| <= sqrt(6 / (16 + 64)) after the edit
    model = keras.Model(inp, out)
    new, report = edit.delete_layer(model, "b")
    kernel = new.get_layer("c").kernel.numpy()
    limit = np.sqrt(6 / (16 + 64))
    assert ("c/kernel", "shape (32, 64) -> (16, 64)") in report.initialized
    assert np.all(np.abs(kernel) <= limit)
    # uniform on [-limit, limit]: std limit / sqrt(3) (1024 draws: within 10 %)
    assert abs(kernel.std() / (limit / np.sqrt(3)) - 1) < 0.1


def test_the_new_model_keeps_the_real_initializers():
    model = _model()
    new, _ = edit.delete_layer(model, "b")
    for name in ("a", "bn", "c", "d"):
        old_config = model.get_layer(name).get_config()
        new_config = new.get_layer(name).get_config()
        for key, value in old_config.items():
            if key.endswith("_initializer"):
                assert new_config[key] == value, (name, key)
    assert type(new.get_layer("d").kernel_initializer).__name__ == "GlorotUniform"
    assert np.all(new.get_layer("c").kernel_initializer(
        (2, 2), dtype="float32").numpy() == 0.5)


def test_delete_channels_writes_every_variable_of_the_narrowed_layers():
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 3, name="conv", bias_initializer=keras.initializers.Constant(7.0))(inp)
    x = L.BatchNormalization(name="bn")(x)
    out = L.Dense(2, name="head")(L.Flatten()(x))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        layer.set_weights([rng.normal(size=w.shape).astype("float32")
                           for w in layer.get_weights()])
    new, report = edit.delete_channels(model, "conv", [1, 5])
    keep = [0, 2, 3, 4, 6, 7]
    np.testing.assert_array_equal(new.get_layer("conv").kernel.numpy(),
                                  model.get_layer("conv").kernel.numpy()[..., keep])
    np.testing.assert_array_equal(new.get_layer("conv").bias.numpy(),
                                  model.get_layer("conv").bias.numpy()[keep])
    for var in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_array_equal(getattr(new.get_layer("bn"), var).numpy(),
                                      getattr(model.get_layer("bn"), var).numpy()[keep])
    assert report.initialized == ()
    assert new.get_layer("conv").get_config()["bias_initializer"] == \
        model.get_layer("conv").get_config()["bias_initializer"]


def test_layers_that_build_sublayers_keep_their_initializers():
    # MultiHeadAttention builds EinsumDense sublayers from its own initializers: it is built
    # as Keras builds it, and its sublayers keep glorot_uniform for a later reinit
    inp = keras.Input((5, 8))
    x = L.MultiHeadAttention(2, 4, name="mha")(inp, inp)
    x = L.LayerNormalization(name="ln")(x)
    x = L.Dense(8, name="extra")(x)
    out = L.Dense(3, name="head")(L.GlobalAveragePooling1D()(x))
    model = keras.Model(inp, out)
    new, report = edit.delete_layer(model, "extra")
    assert report.initialized == ()
    mha = new.get_layer("mha")
    for sub in (mha._query_dense, mha._key_dense, mha._value_dense, mha._output_dense):
        assert type(sub.kernel_initializer).__name__ == "GlorotUniform", sub.name
    x = np.random.default_rng(2).normal(size=(2, 5, 8)).astype("float32")
    reference = keras.Model(model.input, model.get_layer("mha").output)
    np.testing.assert_array_equal(keras.Model(new.input, mha.output)(x), reference(x))


def test_a_tf_keras_functional_model_is_refused_with_what_to_do():
    tk = pytest.importorskip("tf_keras")
    from surgery.errors import EditError

    inp = tk.Input((4,))
    model = tk.Model(inp, tk.layers.Dense(2, name="out")(tk.layers.Dense(3, name="a")(inp)),
                     name="k2")
    with pytest.raises(EditError) as e:
        edit.delete_layer(model, "a")
    assert str(e.value) == (
        "k2: graph edits of a Keras 2 (tf_keras) Functional model are not supported; edit it "
        "as Keras 3: surgery.load_model(MODEL.h5) without legacy=True, or surgery convert "
        "MODEL.h5 -o MODEL.keras")
