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
    from surgery.io.safetensors import write_safetensors
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
    from surgery.transfer.rules import load_rules
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


# ------------------------------------------------------------------ issue #22: hangs and bombs
# Structured fuzzers for the parsers a hostile file or a careless rule reaches: rules text and
# the regexes in it, safetensors and .npy headers, and the HDF5 walk. Only SurgeryError may
# escape, and each example must finish quickly (a generous bound: a guard against hangs and
# blow-ups, not a speed measurement).

import json  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402

PER_EXAMPLE_S = 10.0
FAST = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

REGEX_TOKENS = ["a", "b", "/", ".", r"\w", r"\d", r"\s", "[ab]", "[^/]", "[a-z0-9]", "*", "+",
                "?", "*?", "{2}", "{1,3}", "{0,}", "{4294967296}", "(", ")", "(?:", "(?i)", "|",
                "^", "$", r"\b", r"\1", "(?=", "(?!", "(?<=a)", "(?>", "++", r"\.", "_"]
REGEXES = st.lists(st.sampled_from(REGEX_TOKENS), min_size=1, max_size=14).map("".join)
KEY_ALPHABET = "ab/_.!0 \x1b\n"
KEYS = st.one_of(st.text(KEY_ALPHABET, max_size=60),
                 st.sampled_from(["a" * 40 + "!", "/" * 500, "a" * 511 + "!", "ab" * 256,
                                  "a/" * 200 + "!", "_a" * 250, "a" * 600]))


def _timed(fn, *args):
    start = time.perf_counter()
    try:
        fn(*args)
    except SurgeryError:
        pass
    took = time.perf_counter() - start
    assert took < PER_EXAMPLE_S, f"{took:.1f} s for {args!r:.300}"


def test_fuzz_rule_regexes_finish(tmp_path_factory):
    """Random regexes as renames and re: selectors, matched against adversarial names."""
    from surgery.entries import VariableInfo
    from surgery.transfer.rules import load_rules
    from surgery.selection import select

    def use(pattern, keys):
        rules = load_rules({"rename": [{"from": pattern, "to": "x"}],
                            "skip": ["re:" + pattern]})
        for key in keys:
            rules.renames[0].pattern.sub("x", key)
            rules.renames[0].pattern.search(key)
        select([VariableInfo(k, (1,), "float32") for k in keys], ["re:" + pattern])

    @FAST
    @given(REGEXES, st.lists(KEYS, min_size=1, max_size=4))
    def check(pattern, keys):
        _timed(use, pattern, keys)

    check()


TOML_PIECES = ['match = "exact"\n', 'strict = true\n', 'skip = ["head/*", "re:^a.*"]\n',
               '[[rename]]\nfrom = "^a(.*)"\nto = "b\\\\1"\n', '[[rename]]\nfrom = "(a+)+"\n',
               '[[adapter]]\ntarget = "x"\nname = "adapt_in_channels"\nmode = "sum"\n',
               "x = " + "[" * 40 + "]" * 40 + "\n", "y = {a = {b = {c = 1}}}\n", '"""', "'''",
               "# [[[[\n", "[a.b.c]\n", "z = 1e999\n", "\x00", "\ufeff", "[[rename]]\n",
               'from = "\\u0000"\n', "to = 3\n", "= =\n", "[" * 200, "{" * 200 + "\n"]


def test_fuzz_rules_text(tmp_path_factory):
    from surgery.transfer.rules import load_rules
    folder = tmp_path_factory.mktemp("rules-text")

    @FAST
    @given(st.lists(st.one_of(st.sampled_from(TOML_PIECES), st.text(max_size=20)),
                    max_size=12))
    def check(pieces):
        path = folder / "r.toml"
        path.write_text("".join(pieces), encoding="utf-8", errors="surrogatepass")
        _timed(load_rules, str(path))

    check()


def _consume_all(path):
    with surgery.open_weights(path) as w:
        for key in w:
            w.read(key)
    inv = surgery.inspect(path, stats=True)
    str(inv)
    json.dumps(inv.to_dict(), allow_nan=False)


DTYPE_CODES = ["F32", "F16", "BF16", "I64", "U8", "BOOL", "C64", "F8_E4M3", "", "f32", 7]
DIMS = st.one_of(st.integers(0, 5), st.sampled_from([2 ** 32, 2 ** 63, 2 ** 64, -1, True, 1.5,
                                                     "3", None]))
NAMES = st.text("ab./\x1b\n\u202e", min_size=1, max_size=12)


def test_fuzz_safetensors_headers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("st-headers")

    @FAST
    @given(st.dictionaries(NAMES, st.tuples(st.sampled_from(DTYPE_CODES),
                                            st.lists(DIMS, max_size=4),
                                            st.lists(st.integers(-4, 2 ** 40), max_size=3)),
                           max_size=5),
           st.integers(0, 256))
    def check(entries, data_size):
        header = {name: {"dtype": d, "shape": s, "data_offsets": o}
                  for name, (d, s, o) in entries.items()}
        raw = json.dumps(header).encode()
        path = folder / "x.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x01" * data_size)
        _timed(_consume_all, str(path))

    check()


DESCRS = ["<f4", "<f8", "|b1", "<i8", "<c8", "|O", "<U3", "|S2", "|V4", "<M8[s]", "garbage",
          "[('a', '<f4')]"]


def test_fuzz_npy_headers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("npy-headers")

    @FAST
    @given(st.lists(st.tuples(st.sampled_from(DESCRS), st.lists(DIMS, max_size=3),
                              st.booleans(), st.integers(0, 64)), min_size=1, max_size=3))
    def check(members):
        path = folder / "x.npz"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for i, (descr, shape, fortran, size) in enumerate(members):
                text = ("{'descr': %r, 'fortran_order': %r, 'shape': %r, }"
                        % (descr, fortran, tuple(shape))).encode("latin1")
                text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
                z.writestr(f"m{i}.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text))
                           + text + b"\x01" * size)
        _timed(_consume_all, str(path))

    check()


def test_fuzz_hdf5_structure(tmp_path_factory):
    """Random Keras-3-shaped HDF5 files: groups joined by random hard links (DAGs, cycles),
    soft links, datasets of random dtypes and declared shapes."""
    import h5py
    folder = tmp_path_factory.mktemp("h5-structure")
    dtypes = ["float32", "int8", "bool", "complex64", "S3", h5py.string_dtype(), "float16"]

    @FAST
    @given(st.integers(1, 8), st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)),
                                       max_size=10),
           st.lists(st.tuples(st.integers(0, 7), st.sampled_from(range(len(dtypes))),
                              st.lists(st.integers(0, 2 ** 20), max_size=3), st.booleans()),
                    max_size=6),
           st.booleans())
    def check(n_groups, links, datasets, soft):
        path = folder / "x.weights.h5"
        with h5py.File(path, "w") as f:
            groups = [f.create_group("layers/dense")]
            groups[0].create_group("vars").attrs["name"] = "fc"
            for i in range(1, n_groups):
                groups.append(f.create_group(f"layers/dense/g{i}"))
            for a, b in links:
                if a < n_groups and b < n_groups:
                    name = f"l{a}_{b}"
                    if name not in groups[a]:
                        groups[a][name] = groups[b]
            for i, (g, dt, shape, data) in enumerate(datasets):
                target = groups[g % n_groups]["vars"] if g % n_groups == 0 else groups[g % n_groups]
                name = str(i)
                if name in target:
                    continue
                small = [min(d, 3) for d in shape]
                if dtypes[dt] is dtypes[5]:  # variable-length strings
                    target.create_dataset(name, data=np.full(small, "x", dtype=object),
                                          dtype=dtypes[dt])
                elif data or dtypes[dt] not in ("float32", "int8", "bool", "float16"):
                    target.create_dataset(name, data=np.zeros(small, dtype=dtypes[dt]))
                else:
                    target.create_dataset(name, shape=shape, dtype=dtypes[dt],
                                          chunks=True if shape and all(shape) else None)
            if soft:
                groups[-1]["s"] = h5py.SoftLink("/layers")
        _timed(_consume_all, str(path))

    check()
