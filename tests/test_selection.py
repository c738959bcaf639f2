"""Selectors: glob, re:, type:, callable; a selector matching nothing lists the closest paths."""

from __future__ import annotations

import pytest

import surgery
from surgery.errors import SelectorError
from surgery.selection import select


@pytest.fixture(scope="module")
def cnn(samples):
    return surgery.inspect(samples["cnn"]).variables


def paths(vs):
    return [v.path for v in vs]


def test_glob_on_variables_and_layers(cnn):
    assert paths(select(cnn, ["head/*"])) == ["head/kernel", "head/bias"]
    assert paths(select(cnn, ["head"])) == ["head/kernel", "head/bias"]
    assert paths(select(cnn, ["*/bias"])) == ["fc/bias", "head/bias"]


def test_regex(cnn):
    got = paths(select(cnn, [r"re:block[23]_conv/.*"]))
    assert got == ["block2_conv/kernel", "block3_conv/kernel"]


def test_type(cnn):
    got = select(cnn, ["type:BatchNormalization"])
    assert len(got) == 12 and all(v.layer_class == "BatchNormalization" for v in got)


def test_callable_and_union_keeps_model_order(cnn):
    got = paths(select(cnn, ["head/*", lambda v: v.path == "fc/kernel"]))
    assert got == ["fc/kernel", "head/kernel", "head/bias"]


def test_nested_model_prefix_selects_inside(keras_sink):
    got = paths(select(keras_sink, ["trunk"]))
    assert got and all(p.startswith("trunk/") for p in got)


@pytest.fixture(scope="module")
def keras_sink():
    import keras
    from tests.models import kitchen_sink
    return surgery.inspect(kitchen_sink(keras)).variables


def test_nothing_matched_lists_closest(cnn):
    with pytest.raises(SelectorError) as e:
        select(cnn, ["haed/*"], what="cnn.keras")
    assert str(e.value).startswith("selector 'haed/*' matches nothing in cnn.keras; closest "
                                   "paths: head")


def test_unknown_type_lists_classes(cnn):
    with pytest.raises(SelectorError) as e:
        select(cnn, ["type:LSTM"], what="cnn.keras")
    assert str(e.value) == ("selector 'type:LSTM' matches nothing in cnn.keras; layer classes "
                            "there: BatchNormalization, Conv2D, Dense")


def test_invalid_regex(cnn):
    with pytest.raises(SelectorError) as e:
        select(cnn, ["re:block[2"])
    assert str(e.value).startswith("invalid regex in selector 're:block[2': ")


def test_empty_selector(cnn):
    with pytest.raises(SelectorError, match="empty or invalid selector"):
        select(cnn, [""])
