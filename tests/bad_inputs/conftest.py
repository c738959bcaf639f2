"""Fixtures of the hostile-file tests."""

from __future__ import annotations

import zipfile

import pytest


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A small real Keras model: its .keras, .weights.h5 and config.json."""
    import keras
    folder = tmp_path_factory.mktemp("clean")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc"),
                              keras.layers.Dense(2, name="head")], name="small")
    model.save(folder / "m.keras")
    model.save_weights(folder / "m.weights.h5")
    with zipfile.ZipFile(folder / "m.keras") as z:
        (folder / "config.json").write_bytes(z.read("config.json"))
    return folder
