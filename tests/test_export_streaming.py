"""`export --format torch` streams (issue #21 item 3): the plan knows every PyTorch key, shape
and dtype before a tensor is read, and the write pass holds one rule's tensors at a time, into
`.safetensors`, Hugging Face shards and `.npz` alike.

References: peak traced memory (tracemalloc) against the sizes of the model's own tensors,
computed here from their shapes; PyTorch's layouts re-done here with numpy from the Keras
model's own weights (conv kernel (kh, kw, in, out) -> (out, in, kh, kw), Dense kernel
transposed, LSTM w_ih = kernel.T, w_hh = recurrent_kernel.T, b_ih = bias, b_hh = 0) and written
by the in-memory writers (`write_safetensors`, `write_safetensors_sharded`), whose bytes the
streamed files must equal; numpy's own `np.load` for `.npz`; the conversions themselves for the
plan's shapes.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from surgery.cli import main
from surgery.errors import FormatError, OptionError
from surgery.io.safetensors import write_safetensors
from surgery.io.shards import write_safetensors_sharded
from tests.conftest import traced_peak

WIDTH = 768                     # Dense(768) on 768 inputs: a 2.4 MB kernel
LARGEST = WIDTH * WIDTH * 4


def _dense_stack(keras, n: int):
    L = keras.layers
    inp = keras.Input((WIDTH,))
    x = inp
    for i in range(n):
        x = L.Dense(WIDTH, name=f"d{i}")(x)
    return keras.Model(inp, x)


def _stack_rules(n: int) -> dict:
    return {"export": [{"source": f"d{i}/kernel", "name": "linear_to_torch",
                        "target": f"layers.{i}.weight"} for i in range(n)],
            "rename": [{"from": r"^d(\d+)/bias$", "to": r"layers.\1.bias"}]}


@pytest.fixture(scope="module")
def stacks(keras, tmp_path_factory):
    """.keras files of 20 and 40 Dense(768) layers (48 MB and 95 MB), and the first one's
    kernels and biases as Keras holds them."""
    folder = tmp_path_factory.mktemp("stacks")
    keras.utils.set_random_seed(5)
    paths, weights = {}, {}
    for n in (20, 40):
        model = _dense_stack(keras, n)
        paths[n] = str(folder / f"stack{n}.keras")
        model.save(paths[n])
        if n == 20:
            weights = {layer.name: (layer.kernel.numpy(), layer.bias.numpy())
                       for layer in model.layers[1:]}
    return paths, weights


@pytest.mark.parametrize("output, shard", [("out.safetensors", None), ("out.npz", None),
                                           ("out.safetensors.index.json", "10MB")])
def test_export_memory_is_flat_in_model_size(stacks, tmp_path, output, shard):
    """Peak traced memory of exporting the 20- and 40-layer stacks from their .keras files:
    under 3 x the largest tensor (a Linear holds its kernel and the transposed one), and the
    doubled model's peak less than 1.5 x the first's (held until written, the 20-layer
    export alone would be 20 x the largest)."""
    paths, _ = stacks
    peaks = {}
    for n in (20, 40):
        out = tmp_path / str(n)
        out.mkdir()
        peaks[n] = traced_peak(lambda: surgery.export_state_dict(
            paths[n], str(out / output), _stack_rules(n), max_shard_size=shard))
        assert peaks[n] < 3 * LARGEST, f"{n} layers: peak {peaks[n] / 1e6:.1f} MB"
    assert peaks[40] < 1.5 * peaks[20], peaks


def _reference(weights: dict, n: int, dtype=None) -> dict[str, np.ndarray]:
    """The stack's PyTorch state dict in the export's order (the exports, then the renames)."""
    ref = {f"layers.{i}.weight": weights[f"d{i}"][0].T for i in range(n)}
    ref.update({f"layers.{i}.bias": weights[f"d{i}"][1] for i in range(n)})
    return {k: np.ascontiguousarray(v if dtype is None else v.astype(dtype))
            for k, v in ref.items()}


def test_like_a_float16_template_casts_one_tensor_at_a_time(stacks, tmp_path):
    """A float16 template: the output has its keys, order and dtype, the values are the
    float32 export cast (numpy's cast of the transposed kernels), each row says so, and the
    cast happens per tensor (peak under 3 x the largest float32 tensor)."""
    paths, weights = stacks
    want = _reference(weights, 20, np.float16)
    template, out = str(tmp_path / "t.safetensors"), str(tmp_path / "out.safetensors")
    order = list(reversed(want))  # the template's own order, not the export's
    write_safetensors({k: np.zeros_like(want[k]) for k in order}, template)
    report = None

    def run():
        nonlocal report
        report = surgery.export_state_dict(paths[20], out, _stack_rules(20), like=template)

    assert traced_peak(run) < 3 * LARGEST
    assert {r.note for r in report.rows} == {"Keras Dense -> PyTorch Linear; cast float32 -> "
                                             "float16 (the template's)",
                                             "cast float32 -> float16 (the template's)"}
    with surgery.open_weights(out) as got:
        assert list(got) == order
        for key in order:
            assert got.dtype(key) == "float16"
            np.testing.assert_array_equal(got.read(key), want[key], err_msg=key)


def test_max_memory_names_the_largest_step(stacks, tmp_path):
    """The first of the equal largest steps (d0's kernel, read and transposed), named before
    anything is read; exactly enough passes."""
    paths, _ = stacks
    out = tmp_path / "o.safetensors"
    with pytest.raises(OptionError) as e:
        surgery.export_state_dict(paths[20], str(out), _stack_rules(20), max_memory="4MB")
    assert str(e.value) == (
        f"{paths[20]}: tensor d0/kernel -> layers.0.weight needs 4.8 MB (4718592 bytes: 2.4 MB "
        "read + 2.4 MB made by exporter 'linear_to_torch') at once, more than max_memory 4.0 MB "
        "allows; raise max_memory to at least 4.8 MB")
    assert os.listdir(tmp_path) == []
    rules = tmp_path.parent / f"{tmp_path.name}.toml"  # the CLI's line, as the README shows it
    rules.write_text("".join(f'[[export]]\nsource = "d{i}/kernel"\nname = "linear_to_torch"\n'
                             f'target = "layers.{i}.weight"\n' for i in range(20)) +
                     "[[rename]]\nfrom = '^d(\\d+)/bias$'\nto = 'layers.\\1.bias'\n")
    r = CliRunner().invoke(main, ["export", paths[20], "--format", "torch", "-o", str(out),
                                  "--rules", str(rules), "--max-memory", "4.7MB"])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1] == (
        f"error: {paths[20]}: tensor d0/kernel -> layers.0.weight needs 4.8 MB (4718592 bytes: "
        "2.4 MB read + 2.4 MB made by exporter 'linear_to_torch') at once, more than "
        "--max-memory 4.7 MB allows; raise --max-memory to at least 4.8 MB")
    assert os.listdir(tmp_path) == []
    surgery.export_state_dict(paths[20], str(out), _stack_rules(20), max_memory=2 * LARGEST)
    assert out.exists()


# ------------------------------------------------------------- the bytes of each format

MIXED_RULES = {
    "export": [{"source": "conv/kernel", "name": "conv_to_torch", "target": "conv.weight"},
               {"source": "lstm", "name": "lstm_to_torch", "targets": {
                   "w_ih": "lstm.weight_ih_l0", "w_hh": "lstm.weight_hh_l0",
                   "b_ih": "lstm.bias_ih_l0", "b_hh": "lstm.bias_hh_l0"}},
               {"source": "fc/kernel", "name": "linear_to_torch", "target": "fc.weight"}],
    "rename": [{"from": r"^(conv|fc)/bias$", "to": r"\1.bias"}]}


@pytest.fixture(scope="module")
def mixed(keras, tmp_path_factory):
    """A Conv2D -> LSTM -> Dense model's .keras file and its PyTorch state dict computed here
    from the model's weights with PyTorch's layout equations, in the export's order."""
    L = keras.layers
    keras.utils.set_random_seed(11)
    model = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(4, 3, name="conv"),
                              L.Reshape((4, 16)), L.LSTM(5, name="lstm"),
                              L.Dense(3, name="fc")])
    path = str(tmp_path_factory.mktemp("mixed") / "mixed.keras")
    model.save(path)
    conv, lstm, fc = (model.get_layer(n) for n in ("conv", "lstm", "fc"))
    k, rk, b = (w.numpy() for w in (lstm.cell.kernel, lstm.cell.recurrent_kernel,
                                    lstm.cell.bias))
    ref = {"conv.weight": conv.kernel.numpy().transpose(3, 2, 0, 1),
           "lstm.weight_ih_l0": k.T, "lstm.weight_hh_l0": rk.T, "lstm.bias_ih_l0": b,
           "lstm.bias_hh_l0": np.zeros_like(b), "fc.weight": fc.kernel.numpy().T,
           "conv.bias": conv.bias.numpy(), "fc.bias": fc.bias.numpy()}
    return path, {key: np.ascontiguousarray(v) for key, v in ref.items()}


def test_safetensors_bytes_are_the_in_memory_writers(mixed, tmp_path):
    path, ref = mixed
    out, want = tmp_path / "out.safetensors", tmp_path / "want.safetensors"
    report = surgery.export_state_dict(path, str(out), MIXED_RULES)
    write_safetensors(ref, str(want))
    assert out.read_bytes() == want.read_bytes()
    assert list(report) == list(ref)


def test_sharded_output_is_the_in_memory_writers(mixed, tmp_path):
    """Shards of at most 300 bytes: the same files, byte for byte, as the in-memory sharded
    writer makes of the reference, and read back through the index, the reference."""
    path, ref = mixed
    (tmp_path / "got").mkdir()
    (tmp_path / "want").mkdir()
    index = tmp_path / "got" / "model.safetensors.index.json"
    surgery.export_state_dict(path, str(index), MIXED_RULES, max_shard_size=300)
    write_safetensors_sharded(ref, str(tmp_path / "want" / index.name), 300)
    names = sorted(os.listdir(tmp_path / "want"))
    assert len(names) > 3 and sorted(os.listdir(tmp_path / "got")) == names
    for name in names:
        assert (tmp_path / "got" / name).read_bytes() == (tmp_path / "want" / name).read_bytes()
    with surgery.open_weights(str(index)) as got:
        assert sorted(got) == sorted(ref)
        for key, value in ref.items():
            assert got.dtype(key) == str(value.dtype)
            np.testing.assert_array_equal(got.read(key), value, err_msg=key)


def test_npz_output_reads_back_with_numpy(mixed, tmp_path):
    path, ref = mixed
    out = tmp_path / "out.npz"
    surgery.export_state_dict(path, str(out), MIXED_RULES)
    with np.load(out) as got:
        assert got.files == list(ref)
        for key, value in ref.items():
            assert got[key].dtype == value.dtype and got[key].shape == value.shape
            np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_a_template_that_interleaves_rules(mixed, tmp_path):
    """The LSTM's four tensors apart in the template: each written where the template has it,
    with the reference's values (the LSTM is converted again rather than held)."""
    path, ref = mixed
    order = ["lstm.weight_ih_l0", "conv.weight", "lstm.bias_hh_l0", "fc.bias",
             "lstm.weight_hh_l0", "conv.bias", "lstm.bias_ih_l0", "fc.weight"]
    template, out = str(tmp_path / "t.safetensors"), tmp_path / "out.safetensors"
    write_safetensors({k: np.zeros_like(ref[k]) for k in order}, template)
    surgery.export_state_dict(path, str(out), MIXED_RULES, like=template)
    want = tmp_path / "want.safetensors"
    write_safetensors({k: ref[k] for k in order}, str(want))
    assert out.read_bytes() == want.read_bytes()


# ------------------------------------------------------------------ the plan and refusals

@pytest.fixture(scope="module")
def zoo(keras, tmp_path_factory):
    """One model with a layer for every exporter (and option) the plan has an equation for."""
    L = keras.layers
    keras.utils.set_random_seed(2)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    x = L.Conv2DTranspose(5, 3, name="tconv")(x)
    x = L.BatchNormalization(scale=False, epsilon=1e-5, name="bn")(x)
    seq = L.Reshape((6, 30))(x)
    s = L.Conv1D(6, 3, name="c1d")(seq)
    s1 = L.LSTM(4, use_bias=False, return_sequences=True, name="lstm")(s)
    s2 = L.GRU(3, name="gru")(s1)
    f = L.Dense(7, name="flat_fc")(L.Flatten()(x))
    out = L.Concatenate()([L.Dense(2, name="fc")(s2), f])
    model = keras.Model(inp, out)
    path = str(tmp_path_factory.mktemp("zoo") / "zoo.keras")
    model.save(path)
    return path


ZOO_RULES = {
    "skip": [f"{n}/bias" for n in ("conv", "dw", "tconv", "c1d", "flat_fc", "fc")],
    "export": [
        {"source": "conv/kernel", "name": "conv_to_torch", "target": "conv.weight"},
        {"source": "dw/kernel", "name": "conv_to_torch", "kind": "depthwise",
         "target": "dw.weight"},
        {"source": "tconv/kernel", "name": "conv_to_torch", "kind": "transpose",
         "target": "tconv.weight"},
        {"source": "bn", "name": "batchnorm_to_torch", "targets": {
            "weight": "bn.weight", "bias": "bn.bias", "running_mean": "bn.running_mean",
            "running_var": "bn.running_var", "num_batches_tracked": "bn.n"}},
        {"source": "c1d/kernel", "name": "transpose", "axes": [2, 1, 0], "target": "c1d.weight"},
        {"source": "lstm", "name": "lstm_to_torch", "targets": {"w_ih": "l.ih", "w_hh": "l.hh"}},
        {"source": "gru", "name": "gru_to_torch", "targets": {
            "w_ih": "g.ih", "w_hh": "g.hh", "b_ih": "g.bih", "b_hh": "g.bhh"}},
        {"source": "flat_fc/kernel", "name": "linear_to_torch", "feature_shape": [6, 6, 5],
         "target": "flat_fc.weight"},
        {"source": "fc/kernel", "name": "reshape", "shape": [2, 3], "target": "fc.weight"}],
}


def test_the_plan_knows_what_each_conversion_makes(zoo):
    """For every exporter, the plan's key, shape, dtype and note (from the shapes alone) are
    what running the conversion makes; nothing needed a run to learn its shapes."""
    from surgery.transfer import export_write as W
    from surgery.transfer.export import load_export_rules

    gru = {"source": "gru", "name": "gru_to_torch", "targets": {"w_ih": "g.ih", "w_hh": "g.hh"}}
    partial = dict(ZOO_RULES, export=[r for r in ZOO_RULES["export"] if r["source"] != "gru"]
                   + [gru])
    with surgery.open_weights(zoo) as src:
        draft = W.plan_export(src, load_export_rules(partial))
        assert draft.jobs[-1].made is None  # the GRU's bias not named: its own check says so
        draft = W.plan_export(src, load_export_rules(ZOO_RULES))
        assert all(job.made is not None for job in draft.jobs)
        plan = W.resolve_export(src, draft, "out.safetensors")
        for job in plan.jobs:
            if job.rule is None:
                continue
            made = [(key, a.shape, str(a.dtype), note)
                    for key, a, note in W._produce(src, job.rule, job.reads, dict(job.opts))]
            assert made == [(key, shape, dtype, job.note) for key, shape, dtype in job.made]
    assert len(plan.order) == 17


def test_options_outside_the_equations_are_run_once_for_their_shapes(zoo, tmp_path):
    """Negative transpose axes (numpy's, not the equation's): the plan runs that conversion
    for its shapes, and the output is numpy's transpose of the kernel."""
    rules = {"skip": ["*"], "export": [{"source": "c1d/kernel", "name": "transpose",
                                        "axes": [-1, 1, 0], "target": "w"}]}
    out = str(tmp_path / "o.safetensors")
    report = surgery.export_state_dict(zoo, out, rules)
    with surgery.open_weights(zoo) as src, surgery.open_weights(out) as got:
        np.testing.assert_array_equal(got.read("w"), src.read("c1d/kernel").transpose(2, 1, 0))
    assert report.rows[0].note == "transposed (3, 30, 6) axes [-1, 1, 0]"


@pytest.mark.parametrize("output, shard", [("o.safetensors", None), ("o.npz", None),
                                           ("o.safetensors.index.json", "1KB")])
def test_a_source_that_fails_mid_write_leaves_nothing(tmp_path, output, shard):
    """A state dict truncated after it was opened: the read of its last tensor fails while the
    output is being written; the error is the reader's, and nothing is left behind."""
    state = {f"t{i}": np.full((100, 3), i, np.float32) for i in range(4)}
    source = tmp_path / "in" / "s.safetensors"
    source.parent.mkdir()
    write_safetensors(state, str(source))
    rules = {"export": [{"source": f"t{i}", "name": "transpose", "target": f"t{i}.T"}
                        for i in range(4)]}
    (tmp_path / "out").mkdir()
    with surgery.open_weights(str(source)) as src:
        os.truncate(source, os.path.getsize(source) - 8)
        with pytest.raises(FormatError) as e:
            surgery.export_state_dict(src, str(tmp_path / "out" / output), rules,
                                      max_shard_size=shard)
    assert str(e.value) == f"{source}: t3 is truncated"
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("output, shard", [("out.safetensors", None),
                                           ("out.safetensors.index.json", "10MB")])
def test_the_disk_writes_start_while_the_export_runs(stacks, tmp_path, monkeypatch,
                                                     output, shard):
    """Each safetensors file written has a `Writeback` fed every byte of its tensors, whose
    syncs start before the file is complete (every FLUSH bytes), and which is stopped."""
    from surgery.io import safetensors, writeback

    paths, weights = stacks
    made, synced = [], []

    class Spy(writeback.Writeback):
        def __init__(self, fd: int):
            self.bytes = 0
            made.append(self)
            super().__init__(fd)

        def wrote(self, nbytes: int) -> None:
            self.bytes += nbytes
            super().wrote(nbytes)

    real_sync = getattr(os, "fdatasync", os.fsync)

    def sync(fd):
        synced.append(fd)
        real_sync(fd)

    monkeypatch.setattr(safetensors, "Writeback", Spy)
    monkeypatch.setattr(writeback, "_FLUSH", 4 * LARGEST)
    monkeypatch.setattr(os, "fdatasync", sync)
    surgery.export_state_dict(paths[20], str(tmp_path / output), _stack_rules(20),
                              max_shard_size=shard)
    data = sum(k.nbytes + b.nbytes for k, b in weights.values())
    assert len(made) == (1 if shard is None else 5)  # 48 MB in shards of at most 10 MB
    assert sum(spy.bytes for spy in made) == data
    assert len(synced) >= data // (4 * LARGEST) - len(made)
    assert all(not spy._thread.is_alive() for spy in made)
