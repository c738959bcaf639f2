"""Builds the two small models the example plans use (python examples/plans/make_models.py)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
L = keras.layers
keras.utils.set_random_seed(0)
twin = keras.Sequential([keras.Input((16,)), L.Dense(32, activation="relu", name="l1"),
                         L.Dense(16, activation="relu", name="l2")], name="hub_twin")
twin.save(os.path.join(HERE, "hub_twin.keras"))
inp = keras.Input((16, 16, 3))
x = L.Conv2D(8, 3, padding="same", name="stem")(inp)
y = L.Conv2D(8, 3, padding="same", name="block_conv1")(x)
y = L.BatchNormalization(name="block_bn1")(y)
y = L.ReLU(name="block_relu")(y)
y = L.Conv2D(8, 3, padding="same", name="block_conv2")(y)
x = L.ReLU(name="out_relu")(L.Add(name="block_add")([x, y]))
x = L.GlobalAveragePooling2D(name="gap")(x)
keras.Model(inp, L.Dense(4, name="head")(x), name="resnet_block").save(
    os.path.join(HERE, "resnet_block.keras"))
