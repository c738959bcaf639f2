"""Bad adapter options (issue #22 §5): whatever kind of value a rule gives an adapter option,
the transplant ends in one `SurgeryError` line naming the target, the adapter, what was given
and what the adapter takes; never "unexpected TypeError ... (a bug in surgery)"."""

from __future__ import annotations

import pytest

import surgery
from surgery.errors import OptionError, SurgeryError

BAD = ["x", -1, 10 ** 12, [1, "a"], [[1]], {"a": 1}, 1.5, True, None, [], [-5], [10 ** 9]]


@pytest.fixture(scope="module")
def cnn(keras):
    def build():
        return keras.Sequential([keras.Input((6, 6, 3)),
                                 keras.layers.Conv2D(4, 3, name="block1_conv")])
    return build(), build()


@pytest.mark.parametrize("name, option", [("slice", "keep"), ("slice", "axis"),
                                          ("transpose", "axes"), ("pad", "initializer"),
                                          ("adapt_in_channels", "mode"),
                                          ("adapt_in_channels", "indices"),
                                          ("resize_kernel", "mode"), ("remap_rows", "fill")])
def test_any_bad_value_is_a_surgery_error(cnn, name, option):
    path, model = cnn
    for value in BAD:
        rule = {"target": "block1_conv/kernel", "name": name, option: value}
        try:
            surgery.transplant(path, model, {"adapter": [rule]}, dry_run=True)
        except SurgeryError as e:
            assert "\n" not in str(e)


def test_exact_line(cnn):
    path, model = cnn
    with pytest.raises(OptionError) as e:
        surgery.transplant(path, model, {"adapter": [{"target": "block1_conv/kernel",
                                                      "name": "transpose", "axes": "x"}]},
                           dry_run=True)
    assert str(e.value) == ("block1_conv/kernel: adapter 'transpose' can't use axes = 'x' ('str' "
                            "object cannot be interpreted as an integer); its options are axes: "
                            "list of axes (default: reversed)")
