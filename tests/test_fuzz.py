"""Mutated Keras files: only SurgeryError may escape open_weights and inspect.

A short run is part of `make test`; `make fuzz` runs many more examples
(SURGERY_FUZZ_EXAMPLES)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import surgery
from surgery.errors import SurgeryError

EXAMPLES = int(os.environ.get("SURGERY_FUZZ_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    import keras
    from tests.models import kitchen_sink
    folder = tmp_path_factory.mktemp("fuzz")
    model = kitchen_sink(keras)
    model.save(folder / "m.keras")
    model.save_weights(folder / "m.weights.h5")
    return {k: (folder / f"m.{k}").read_bytes() for k in ("keras", "weights.h5")}


def _mutate(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in edits:
        if not buf:
            break
        i = pos % len(buf)
        if kind == 0:
            buf[i] = value
        elif kind == 1:
            del buf[i:]
        else:
            buf[i:i] = bytes([value]) * 16
    return bytes(buf)


EDITS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2**31), st.integers(0, 255)),
                 min_size=1, max_size=6)


def _consume(path, load=False):
    with surgery.open_weights(path) as w:
        for key in w:
            w.read(key)
    surgery.inspect(path)
    if load:  # only files that passed every check reach Keras
        surgery.load_model(path)


@pytest.mark.parametrize("kind", ["keras", "weights.h5"])
def test_mutated_files_only_raise_surgery_errors(small_files, tmp_path_factory, kind):
    folder = tmp_path_factory.mktemp("mut")

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(EDITS)
    def check(edits):
        path = folder / f"x.{kind}"
        path.write_bytes(_mutate(small_files[kind], edits))
        try:
            _consume(str(path), load=kind == "keras")
        except SurgeryError:
            pass

    check()


@pytest.mark.fuzz
def test_fuzz_marker_runs_longer(small_files, tmp_path_factory):
    assert EXAMPLES >= 40  # `make fuzz` raises the example count for the test above
    test_mutated_files_only_raise_surgery_errors(small_files, tmp_path_factory, "keras")


@pytest.fixture(scope="module")
def safetensors_bytes(tmp_path_factory):
    from surgery.safetensors_io import write_safetensors
    path = tmp_path_factory.mktemp("st") / "w.safetensors"
    write_safetensors({"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
                       "a.bias": np.ones(4, np.float16)}, str(path))
    return path.read_bytes()


def test_mutated_safetensors_only_raise_surgery_errors(safetensors_bytes, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mst")

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(EDITS)
    def check(edits):
        path = folder / "x.safetensors"
        path.write_bytes(_mutate(safetensors_bytes, edits))
        try:
            _consume(str(path))
        except SurgeryError:
            pass

    check()


RULES_TEXT = open(os.path.join(os.path.dirname(__file__), "..", "examples", "rules",
                               "torch_cnn.toml"), "rb").read()


def test_mutated_rules_only_raise_surgery_errors(tmp_path_factory):
    from surgery.rules import load_rules
    folder = tmp_path_factory.mktemp("rules")

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(EDITS)
    def check(edits):
        path = folder / "r.toml"
        path.write_bytes(_mutate(RULES_TEXT, edits))
        try:
            load_rules(str(path))
        except SurgeryError:
            pass

    check()


