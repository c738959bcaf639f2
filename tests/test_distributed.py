"""tf.distribute paths of `surgery finetune` (slow tier: each process imports TensorFlow).

- mirrored: `fit` under MirroredStrategy over two logical CPU devices;
- multiworker: the custom training loop, two worker processes on 127.0.0.1 ports, which must
  end with the same weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import surgery
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

_SETUP = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, keras
sys.path.insert(0, {root!r})
from tests.test_finetune import small_cnn, toy_images
keras.utils.set_random_seed(0)
small_cnn(keras).save({model!r})
x, y = toy_images(64)
np.savez({data!r}, x=x, y=y)
"""

_MIRRORED = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import surgery
model = surgery.load_model({model!r})
result = surgery.finetune(model, {data!r}, epochs=2, batch_size=16, strategy="mirrored",
                          verbose=0)
assert len(tf.config.list_logical_devices("CPU")) == 2
surgery.save_model(result.model, {out!r})
print("replicas", tf.distribute.MirroredStrategy().num_replicas_in_sync)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    paths = {"model": str(folder / "m.keras"), "data": str(folder / "d.npz"), "folder": folder}
    subprocess.run([sys.executable, "-c", _SETUP.format(root=ROOT, **paths)], check=True,
                   cwd=ROOT)
    return paths


def test_mirrored_over_two_cpu_devices(setup):
    out = str(setup["folder"] / "mirrored.keras")
    r = subprocess.run([sys.executable, "-c", _MIRRORED.format(out=out, **setup)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "replicas 2" in r.stdout
    d = surgery.diff(setup["model"], out)
    assert not d.identical  # it trained


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multiworker_two_processes_agree(setup):
    ports = [_port(), _port()]
    exe = os.path.join(os.path.dirname(sys.executable), "surgery")
    procs, outs = [], []
    for i in range(2):
        out = str(setup["folder"] / f"worker{i}.keras")
        outs.append(out)
        env = dict(os.environ, TF_CONFIG=json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(
            [exe, "finetune", setup["model"], "--data", setup["data"], "-o", out,
             "--strategy", "multiworker", "--epochs", "2", "--batch-size", "16", "--quiet"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    assert surgery.diff(outs[0], outs[1]).identical
    assert not surgery.diff(setup["model"], outs[0]).identical
    with surgery.open_weights(outs[0]) as w:
        assert np.isfinite(w["head/kernel"]).all()
