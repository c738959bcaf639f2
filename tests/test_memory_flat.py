"""Memory flat in model size on the file -> file paths (issue #21 items 3 and 4): the adapter
path (a PyTorch-layout state dict through conv_from_torch / linear_from_torch) holds a small
constant number of tensors, `max_memory` refuses a step that alone needs more, and the
streaming helpers behind the speed work (tiled transpose, CRC-32 from memory, direct reads,
the non-finite count without a copy) give exactly what the plain numpy / zlib versions give.

References: the same transplant done in memory into a live Keras model (`surgery.transplant`,
assigned with Keras's own variables, read back with Keras's `load_model` from the file),
PyTorch's layouts re-done by hand with numpy transposes, Python's `zipfile` CRC check of the
written archive, zlib's CRC-32 of whole byte strings, numpy's own transpose and `isfinite`
count, and the tensor sizes computed here from the shapes.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from surgery.errors import OptionError
from tests.conftest import traced_peak

# A ~53 MB model of five equal largest tensors (fc1..fc5's kernels, 1536 x 1536 float32,
# 9.4 MB): a Linear adapter holds its source and its result (2 x; fc0's kernel, after the
# Flatten, has its rows reordered in place); one more tensor held anywhere (the previous
# one, a copy, the model) shows in the peak.
# fc1..fc5 have no bias, so that their kernels are written one right after the other.
SHAPE = (8, 8, 16)
WIDTH = 1536
FC0_IN = 8 * 8 * 16
LARGEST = WIDTH * WIDTH * 4
HIDDEN = 5


def _keras_model(keras):
    L = keras.layers
    inp = keras.Input(SHAPE)
    x = L.Conv2D(16, 3, padding="same", name="conv")(inp)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(WIDTH, name="fc0")(x)
    for i in range(1, HIDDEN + 1):
        x = L.Dense(WIDTH, use_bias=False, name=f"fc{i}")(x)  # kernels back to back
    return keras.Model(inp, L.Dense(10, name="head")(x))


def _state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """PyTorch names and layouts (OIHW convs, (out, in) Linear weights)."""
    rng = np.random.default_rng(seed)
    sd = {"conv.weight": rng.standard_normal((16, 16, 3, 3), dtype=np.float32),
          "conv.bias": rng.standard_normal(16, dtype=np.float32),
          "fc0.weight": rng.standard_normal((WIDTH, FC0_IN), dtype=np.float32),
          "fc0.bias": rng.standard_normal(WIDTH, dtype=np.float32)}
    for i in range(1, HIDDEN + 1):
        sd[f"fc{i}.weight"] = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32)
    sd["head.weight"] = rng.standard_normal((10, WIDTH), dtype=np.float32)
    sd["head.bias"] = rng.standard_normal(10, dtype=np.float32)
    return sd


def _write_safetensors(tensors: dict[str, np.ndarray], path) -> None:
    """The safetensors layout written from the spec (not surgery's writer)."""
    header, offset = {}, 0
    for name, a in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).tobytes())


def _rules() -> dict:
    adapters = [{"target": "conv/kernel", "source": "conv.weight", "name": "conv_from_torch"},
                {"target": "fc0/kernel", "source": "fc0.weight", "name": "linear_from_torch",
                 "feature_shape": [8, 8, 16]}]
    adapters += [{"target": f"fc{i}/kernel", "source": f"fc{i}.weight",
                  "name": "linear_from_torch"} for i in range(1, HIDDEN + 1)]
    adapters += [{"target": "head/kernel", "source": "head.weight", "name": "linear_from_torch"}]
    renames = [{"from": r"^(\w+)\.bias$", "to": r"\1/bias"}]
    return {"strict": True, "adapter": adapters, "rename": renames}


@pytest.fixture(scope="module")
def torch_files(keras, tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory_flat")
    keras.utils.set_random_seed(3)
    target = str(folder / "target.keras")
    _keras_model(keras).save(target)
    source = str(folder / "torch.safetensors")
    sd = _state_dict()
    _write_safetensors(sd, source)
    return {"folder": folder, "target": target, "source": source, "sd": sd}


@pytest.mark.parametrize("output, shard", [("out.keras", None), ("out.weights.json", "20MB")])
def test_adapter_path_memory_is_flat(torch_files, tmp_path, output, shard):
    """Peak traced memory of the file -> file adapter path, into a .keras or Keras shards:
    under 2.5 x the largest tensor (a step holds its source and its result), while the model
    is 5.6 x that tensor."""
    out = str(tmp_path / output)
    total = sum(a.nbytes for a in torch_files["sd"].values())
    assert total > 5.5 * LARGEST
    peak = traced_peak(lambda: surgery.transplant_file(
        torch_files["source"], torch_files["target"], out, _rules(), max_shard_size=shard))
    assert peak < 2.5 * LARGEST, f"peak {peak / 1e6:.1f} MB, largest {LARGEST / 1e6:.1f} MB"


def test_adapter_path_is_bitwise_the_in_memory_transplant(keras, torch_files, tmp_path):
    """The streamed file (its zip CRCs checked by Python's zipfile) holds, loaded by Keras,
    bitwise what the same transplant assigns into a live model, and that is PyTorch's layout
    re-done here by hand."""
    out = str(tmp_path / "out.keras")
    report = surgery.transplant_file(torch_files["source"], torch_files["target"], out,
                                     _rules())
    assert report.ok
    with zipfile.ZipFile(out) as z:
        assert z.testzip() is None  # every member's CRC-32 matches its bytes
    live = keras.saving.load_model(torch_files["target"], compile=False)
    assert surgery.transplant(torch_files["source"], live, _rules()).ok
    written = keras.saving.load_model(out, compile=False)
    for a, b in zip(live.weights, written.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    sd = torch_files["sd"]
    by_name = {layer.name: layer for layer in written.layers}
    np.testing.assert_array_equal(by_name["conv"].kernel, sd["conv.weight"].transpose(2, 3, 1, 0))
    fc0 = sd["fc0.weight"].T.reshape(16, 8, 8, WIDTH).transpose(1, 2, 0, 3).reshape(-1, WIDTH)
    np.testing.assert_array_equal(by_name["fc0"].kernel, fc0)
    np.testing.assert_array_equal(by_name["fc3"].kernel, sd["fc3.weight"].T)
    np.testing.assert_array_equal(by_name["head"].bias, sd["head.bias"])


def test_max_memory_names_the_step_before_anything_is_written(torch_files, tmp_path):
    """fc1's step (the first of the five largest) holds its source (9.4 MB) and its
    converted kernel (9.4 MB) at once."""
    out = tmp_path / "out.keras"
    n = LARGEST
    assert n == 9_437_184
    with pytest.raises(OptionError) as e:
        surgery.transplant_file(torch_files["source"], torch_files["target"], str(out),
                                _rules(), max_memory="18MB")
    assert str(e.value) == (
        f"{torch_files['source']}: tensor fc1.weight -> fc1/kernel needs 18.9 MB (18874368 "
        "bytes: 9.5 MB read + 9.5 MB made by adapter 'linear_from_torch') at once, more than "
        "max_memory 18.0 MB allows; raise max_memory to at least 18.9 MB")
    assert e.value.path == torch_files["source"]
    assert not out.exists() and os.listdir(tmp_path) == []
    report = surgery.transplant_file(torch_files["source"], torch_files["target"], str(out),
                                     _rules(), max_memory=2 * n)  # exactly enough
    assert report.ok and out.exists()


def test_max_memory_on_the_command_line(torch_files, tmp_path):
    from cli import main

    rules = tmp_path / "rules.toml"
    lines = ["strict = true"]
    for item in _rules()["adapter"]:
        lines += ["[[adapter]]"] + [f"{k} = {json.dumps(v)}" for k, v in item.items()]
    lines += ["[[rename]]", "from = '^(\\w+)\\.bias$'", "to = '\\1/bias'"]
    rules.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.keras"
    r = CliRunner().invoke(main, ["transplant", torch_files["source"], torch_files["target"],
                                  "-o", str(out), "--rules", str(rules), "--max-memory",
                                  "18.8MB"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1] == (
        f"error: {torch_files['source']}: tensor fc1.weight -> fc1/kernel needs 18.9 MB "
        "(18874368 bytes: 9.5 MB read + 9.5 MB made by adapter 'linear_from_torch') at once, "
        "more than --max-memory 18.8 MB allows; raise --max-memory to at least 18.9 MB")
    assert not out.exists()


# ------------------------------------------------------------------ the helpers
# (the tiled transpose behind linear_from_torch/linear_to_torch: tests/test_reshape.py)

@pytest.mark.parametrize("sizes", [[3, 5], [0, 7], [7, 0], [1 << 20, 3, 1 << 21, 1]])
def test_crc32_combine_is_zlibs(sizes):
    from surgery.io.kerasfile_writer import crc32_combine

    rng = np.random.default_rng(len(sizes))
    parts = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    crc = zlib.crc32(parts[0])
    for part in parts[1:]:
        crc = crc32_combine(crc, zlib.crc32(part), len(part))
    assert crc == zlib.crc32(b"".join(parts))


def test_archive_crc_pieces_combine_to_the_members(keras, tmp_path):
    """A model with datasets above and below the worker's threshold (1 MiB): the member's
    CRC-32 in the zip directory is zlib's over the member's bytes as stored."""
    from surgery.io.kerasfile_writer import _REGION

    L = keras.layers
    model = keras.Sequential([keras.Input((600,)), L.Dense(700, name="big"),
                              L.Dense(3, name="small")])
    assert 600 * 700 * 4 > _REGION > 700 * 4
    src = str(tmp_path / "m.keras")
    model.save(src)
    out = str(tmp_path / "out.keras")
    surgery.transplant_file(src, src, out)
    with zipfile.ZipFile(out) as z:
        info = z.getinfo("model.weights.h5")
        assert info.CRC == zlib.crc32(z.read("model.weights.h5"))
    loaded = keras.saving.load_model(out, compile=False)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "bfloat16"])
def test_nonfinite_count_without_a_copy(dtype):
    import ml_dtypes

    from surgery.transfer.transplant import _count_nonfinite

    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    a = np.ones(3000, dtype=np.float32)
    assert _count_nonfinite(a.astype(dt)) == 0
    a[[5, 17, 2999]] = [np.nan, np.inf, -np.inf]
    assert _count_nonfinite(a.astype(dt)) == 3 == int((~np.isfinite(a)).sum())
    big = np.full(100, 3e38, dtype=np.float32)  # finite values whose float32 sum overflows
    assert _count_nonfinite(big) == 0
    if dtype == "float64":  # as before: counted as float32, where 1e300 is infinite
        assert _count_nonfinite(np.array([1e300, 1.0])) == 1


def test_safetensors_reads_into_the_array(tmp_path):
    """Read straight into the array: the values the spec's byte layout holds, and a file cut
    short is named as truncated."""
    from surgery.io.safetensors import SafetensorsSource
    from surgery.errors import FormatError

    sd = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.float32(7.5)}
    path = tmp_path / "t.safetensors"
    _write_safetensors({"a": sd["a"], "b": np.asarray(sd["b"])}, path)
    with SafetensorsSource(str(path)) as src:
        np.testing.assert_array_equal(src.read("a"), sd["a"])
        assert src.read("b").shape == () and src.read("b") == sd["b"]
        a = src.read("a")
        a[0, 0] = 99  # a new array: the next read is unaffected
        assert src.read("a")[0, 0] == 0
        data = path.read_bytes()
        path.write_bytes(data[:-10])
        with pytest.raises(FormatError, match="truncated"):
            src.read("b")


@pytest.mark.parametrize("value, expected", [("800MB", 800 * 10 ** 6), ("1.5GB", 1_500_000_000),
                                             ("2GiB", 2 * 2 ** 30), (4096, 4096)])
def test_memory_sizes(value, expected):
    from surgery.io.shards import parse_memory

    limit = parse_memory(value)
    assert limit == expected and limit.option == "max_memory"
    assert parse_memory(limit) is limit and parse_memory(None) is None
    with pytest.raises(OptionError, match="not a memory size"):
        parse_memory(1.5)


def test_delete_channels_reads_the_graph_config_reads(keras):
    """delete_channels reads its graph from the live nodes (speed): the same consumers,
    inputs (in order) and shared layers that `core.graph` / `core.shared_layers` read from the
    model's config, on a residual CNN, a model with a shared layer, two inputs, a nested model
    and a Concatenate, and the kitchen-sink model of the suite."""
    from surgery.edit import channel_graph
    from surgery.edit.core import graph, shared_layers
    from tests.models import kitchen_sink

    L = keras.layers
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="stem")(inp)
    for i in range(3):
        y = L.Conv2D(4, 3, padding="same", name=f"b{i}_c1")(x)
        y = L.BatchNormalization(name=f"b{i}_bn")(y)
        x = L.Add(name=f"b{i}_add")([x, y])
    residual = keras.Model(inp, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))
    a, b = keras.Input((8,), name="a"), keras.Input((8,), name="b")
    shared = L.Dense(8, name="shared")
    inner = keras.Sequential([keras.Input((8,)), L.Dense(4, name="in1")], name="inner")
    z = L.Concatenate(name="cat")([inner(L.Add(name="add")([shared(a), shared(b)])),
                                   L.Dense(4, name="side")(b)])
    several = keras.Model([a, b], L.Dense(2, name="out")(z))
    for model in (residual, several, kitchen_sink(keras)):
        assert channel_graph._live_graph(model) == graph(model) + (shared_layers(model),)
    assert channel_graph._live_graph(keras.Sequential([keras.Input((3,)), L.Dense(2)])) is None
