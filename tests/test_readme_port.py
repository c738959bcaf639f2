"""The README's "Porting from PyTorch" example, run exactly as written (the `sh` block after that
heading), from a folder holding copies of the sample models and example rules. Checked against
what does not come from the port: the sample LSTM's own weights (read by Keras) and the
exported state dict (read by numpy through safetensors' documented layout)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from surgery.cli import main
from tests.conftest import ROOT


def _block() -> list[list[str]]:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("### Porting from PyTorch", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _safetensors(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for key, spec in header.items():
        if key == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        assert spec["dtype"] == "F32"
        out[key] = np.frombuffer(data[start:end], "<f4").reshape(spec["shape"])
    return out


def test_readme_port_example_runs_and_round_trips(tmp_path, monkeypatch, keras):
    for folder in ("sample_models", "examples"):
        shutil.copytree(os.path.join(ROOT, folder), tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    commands = _block()
    assert [c[:2] for c in commands] == [["surgery", "export"], ["surgery", "transplant"],
                                         ["surgery", "transplant"], ["surgery", "export"]]
    runner = CliRunner()
    outputs = []
    for argv in commands:
        result = runner.invoke(main, argv[1:])
        assert result.exit_code == 0, (argv, result.output)
        outputs.append(result.output)
    assert "paired by names and shapes (3;" in outputs[1]
    assert "lstm[l0] -> encoder  lstm_from_torch" in outputs[1]
    assert "2 copied, 4 converted, 0 skipped, 0 missing, 0 mismatched, 0 unused" in outputs[1]
    assert os.path.exists("lstm_mapping.toml")

    original = keras.models.load_model("sample_models/lstm.keras")
    for name in ("lstm_ported.keras", "lstm_ported_again.keras"):
        ported = keras.models.load_model(name)
        for a, b in zip(original.layers, ported.layers):
            for wa, wb in zip(a.get_weights(), b.get_weights()):
                np.testing.assert_array_equal(wa, wb)

    # Keras -> PyTorch with the template: the names, shapes and the documented layout
    state = _safetensors("lstm_state.safetensors")
    exported = _safetensors("lstm_exported.safetensors")
    assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in state.items()}
    emb = original.get_layer("embed").get_weights()[0]
    kernel, recurrent, bias = original.get_layer("encoder").get_weights()
    head_k, head_b = original.get_layer("head").get_weights()
    np.testing.assert_array_equal(exported["embed.weight"], emb)
    np.testing.assert_array_equal(exported["lstm.weight_ih_l0"], kernel.T)
    np.testing.assert_array_equal(exported["lstm.weight_hh_l0"], recurrent.T)
    np.testing.assert_allclose(exported["lstm.bias_ih_l0"] + exported["lstm.bias_hh_l0"], bias,
                               rtol=0, atol=1e-7)
    np.testing.assert_array_equal(exported["head.weight"], head_k.T)
    np.testing.assert_array_equal(exported["head.bias"], head_b)


@pytest.mark.parametrize("argv", [["transplant", "a.safetensors", "b.keras", "-o", "c.keras",
                                   "--from", "onnx"]])
def test_from_choices(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2
    assert "'onnx' is not one of 'keras', 'torch'" in result.output
