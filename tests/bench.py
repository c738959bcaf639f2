"""`make bench`: speed and memory as ratios to baselines measured in the same run.

Never asserted in tests: the figures are printed (and written to bench-out/bench.json) for a
person to read. Each measured path runs in its own subprocess so its wall time and peak memory
(ru_maxrss) are its own.

Benchmarks:
- read: `surgery.inspect` + reading every tensor of a ~400 MB `.keras` with `open_weights`
  (h5py, no TensorFlow) against `keras.saving.load_model` + `get_weights` layer by layer.
- transplant: file -> file `surgery transplant` of that model into a second file of the same
  architecture, against (a) the raw floor, h5py copying every source tensor into a new HDF5
  file once, and (b) the naive Keras path, `load_model` of both, `get_weights`/`set_weights`
  layer by layer, `save`; (c) its peak memory against the target's size + the largest tensor +
  the `import tensorflow` baseline.
- delete_channels: pruning a generated ~100-layer residual CNN against `clone_model` of it.
- finetune: median time per epoch of `surgery.finetune` against a hand-written Keras script
  doing the same training (same model, data, batch size, frozen layers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

OUT = os.environ.get("SURGERY_BENCH_OUT", "bench-out")
UNITS = int(os.environ.get("SURGERY_BENCH_UNITS", "4096"))

_MAKE = """
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
layers = [keras.Input(({units},))] + [keras.layers.Dense({units}, name="d%d" % i)
                                      for i in range(6)]
model = keras.Sequential(layers + [keras.layers.Dense(10, name="head")])
model.save({path!r})
"""

_MEASURE = """
import resource, sys, time, json
t0 = time.perf_counter()
{body}
print(json.dumps({{"seconds": time.perf_counter() - t0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

_PATHS = {
    "python -c 'import numpy, h5py' (floor)": "import numpy, h5py",
    "import tensorflow": "import tensorflow",
    "keras load_model + get_weights per layer (naive)": (
        "import keras\n"
        "m = keras.saving.load_model({path!r}, compile=False)\n"
        "n = sum(w.nbytes for l in m.layers for w in l.get_weights())"),
    "surgery inspect + open_weights, one tensor at a time": (
        "import surgery\n"
        "inv = surgery.inspect({path!r})\n"
        "w = surgery.open_weights({path!r})\n"
        "n = sum(w.read(k).nbytes for k in w)"),
}


def _run(code: str) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


_TRANSPLANT = {
    "raw floor: h5py copy of every source tensor": (
        "import h5py, surgery.io.archive as A\n"
        "ar = A.KerasArchive({path!r})\n"
        "src = h5py.File(ar.open_member('model.weights.h5'), 'r')\n"
        "dst = h5py.File({out!r}, 'w')\n"
        "def copy(name, obj):\n"
        "    if isinstance(obj, h5py.Dataset): dst.create_dataset(name, data=obj[()])\n"
        "src.visititems(copy); dst.close()"),
    "naive: load_model x2, get/set_weights per layer, save": (
        "import keras\n"
        "a = keras.saving.load_model({path!r}, compile=False)\n"
        "b = keras.saving.load_model({target!r}, compile=False)\n"
        "[lb.set_weights(la.get_weights()) for la, lb in zip(a.layers, b.layers)]\n"
        "b.save({out!r})"),
    "surgery transplant_file (file -> file)": (
        "import surgery\n"
        "surgery.transplant_file({path!r}, {target!r}, {out!r}, overwrite=True)"),
}


def _generate(path: str, seed: int) -> None:
    if not os.path.exists(path):
        t0 = time.perf_counter()
        code = f"import keras; keras.utils.set_random_seed({seed})\n" + \
            _MAKE.format(path=path, units=UNITS)
        subprocess.run([sys.executable, "-c", code], check=True)
        print(f"generated {path} ({os.path.getsize(path) / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t0:.1f} s")


def bench_transplant(path: str, summary: dict) -> None:
    target = os.path.abspath(os.path.join(OUT, "big_target.keras"))
    _generate(target, 2)
    out = os.path.abspath(os.path.join(OUT, "out.keras"))
    results = {}
    for name, body in _TRANSPLANT.items():
        dest = out + (".h5" if name.startswith("raw") else "")
        if os.path.exists(dest):
            os.remove(dest)
        results[name] = _run(_MEASURE.format(body=body.format(path=path, target=target,
                                                               out=dest)))
    tf_base = _run(_MEASURE.format(body="import tensorflow"))
    floor = results["raw floor: h5py copy of every source tensor"]
    naive = results["naive: load_model x2, get/set_weights per layer, save"]
    ours = results["surgery transplant_file (file -> file)"]
    size_mb = os.path.getsize(target) / 1e6
    largest_mb = UNITS * UNITS * 4 / 1e6
    bound = size_mb + largest_mb + tf_base["peak_mb"]
    print(f"\nfile -> file transplant of {size_mb:.0f} MB (measured in this run)")
    print(f"{'path':<56} {'wall s':>7} {'peak MB':>8}")
    for name, r in results.items():
        print(f"{name:<56} {r['seconds']:>7.2f} {r['peak_mb']:>8.0f}")
    print(f"(a) throughput vs raw floor: {floor['seconds'] / ours['seconds']:.2f}x "
          "(goal >= 0.5x)")
    print(f"(b) speed vs naive Keras path: {naive['seconds'] / ours['seconds']:.2f}x faster "
          "(goal >= 2x)")
    print(f"(c) peak memory {ours['peak_mb']:.0f} MB vs bound {bound:.0f} MB = target "
          f"{size_mb:.0f} + largest tensor {largest_mb:.0f} + TensorFlow "
          f"{tf_base['peak_mb']:.0f} ({ours['peak_mb'] / bound:.2f}x of the bound; the naive "
          f"path holds {naive['peak_mb']:.0f} MB)")
    summary["transplant"] = {"results": results, "tf_baseline": tf_base,
                             "memory_bound_mb": bound}


_FT_COMMON = """
import os, time, json, statistics
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, keras
from surgery.sample_models import tasks
x, y = tasks.make_shapes(3000, tasks.TRANSFER_SHAPES, seed=5)
model = keras.saving.load_model({model!r}, compile=False)
"""

_FT_SCRIPT = _FT_COMMON + """
for layer in model.layers:
    layer.trainable = layer.name in ("head", "fc")
times = []
class T(keras.callbacks.Callback):
    def on_epoch_begin(self, e, logs=None): self.t = time.perf_counter()
    def on_epoch_end(self, e, logs=None): times.append(time.perf_counter() - self.t)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
model.fit(x, y, batch_size=64, epochs=4, shuffle=True, verbose=0, callbacks=[T()])
print(json.dumps({{"epoch_seconds": statistics.median(times[1:])}}))
"""

_FT_SURGERY = _FT_COMMON + """
import surgery
r = surgery.finetune(model, (x, y), train=["head", "fc"], epochs=4, batch_size=64, verbose=0)
print(json.dumps({{"epoch_seconds": statistics.median([e["seconds"] for e in r.epochs[1:]])}}))
"""


def bench_finetune(summary: dict) -> None:
    model = os.path.abspath(os.path.join(OUT, "cnn4.keras"))
    if not os.path.exists(model):
        code = ("import surgery; m = surgery.load_model('sample_models/cnn.keras'); "
                f"surgery.save_model(surgery.replace_head(m, 4, seed=0).model, {model!r})")
        subprocess.run([sys.executable, "-c", code], check=True)
    runs = {}
    for name, code in (("hand-written Keras script", _FT_SCRIPT),
                       ("surgery.finetune", _FT_SURGERY)):
        r = subprocess.run([sys.executable, "-c", code.format(model=model)], capture_output=True,
                           text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        if r.returncode:
            raise SystemExit(f"finetune benchmark failed:\n{r.stderr[-2000:]}")
        runs[name] = json.loads(r.stdout.strip().splitlines()[-1])["epoch_seconds"]
    ratio = runs["surgery.finetune"] / runs["hand-written Keras script"]
    print("\nfine-tuning head + fc of the sample CNN, 3000 images, batch 64 (median epoch, "
          "epochs 2-4)")
    for name, t in runs.items():
        print(f"{name:<56} {t:>7.2f} s/epoch")
    print(f"ratio: {ratio:.2f}x the hand-written script (goal <= 1.05x)")
    summary["finetune"] = {"epoch_seconds": runs, "ratio": ratio}


_PRUNE = """
import os, time, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
from surgery import edit
L = keras.layers
inp = keras.Input((16, 16, 8))
x = L.Conv2D(16, 3, padding="same", name="stem")(inp)
for i in range(24):
    y = L.Conv2D(16, 3, padding="same", name=f"b{{i}}_c1")(x)
    y = L.BatchNormalization(name=f"b{{i}}_bn")(y)
    y = L.ReLU(name=f"b{{i}}_relu")(y)
    y = L.Conv2D(16, 3, padding="same", name=f"b{{i}}_c2")(y)
    x = L.Add(name=f"b{{i}}_add")([x, y])
x = L.GlobalAveragePooling2D()(x)
model = keras.Model(inp, L.Dense(10, name="head")(x))
t0 = time.perf_counter(); keras.models.clone_model(model); clone = time.perf_counter() - t0
t0 = time.perf_counter(); edit.delete_channels(model, "b3_c1", [0, 1, 2, 3])
prune = time.perf_counter() - t0
print(json.dumps({{"layers": len(model.layers), "clone": clone, "delete_channels": prune}}))
"""


def bench_prune(summary: dict) -> None:
    r = subprocess.run([sys.executable, "-c", _PRUNE.format()], capture_output=True, text=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if r.returncode:
        raise SystemExit(f"pruning benchmark failed:\n{r.stderr[-2000:]}")
    data = json.loads(r.stdout.strip().splitlines()[-1])
    ratio = data["delete_channels"] / data["clone"]
    print(f"\ndelete_channels on a {data['layers']}-layer residual CNN: "
          f"{data['delete_channels']:.2f} s vs clone_model {data['clone']:.2f} s = {ratio:.2f}x "
          "(goal <= 2x)")
    summary["delete_channels"] = {**data, "ratio": ratio}


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    path = os.path.abspath(os.path.join(OUT, "big.keras"))
    _generate(path, 1)
    size_mb = os.path.getsize(path) / 1e6
    results = {name: _run(_MEASURE.format(body=body.format(path=path)))
               for name, body in _PATHS.items()}
    naive = results["keras load_model + get_weights per layer (naive)"]
    print(f"\nreading a {size_mb:.0f} MB .keras file (ratios to the naive Keras path, "
          "measured in this run)")
    print(f"{'path':<56} {'wall s':>7} {'x naive':>8} {'peak MB':>8} {'x naive':>8}")
    for name, r in results.items():
        print(f"{name:<56} {r['seconds']:>7.2f} {r['seconds'] / naive['seconds']:>8.2f} "
              f"{r['peak_mb']:>8.0f} {r['peak_mb'] / naive['peak_mb']:>8.2f}")
    summary = {"file_mb": size_mb, "read": results}
    bench_transplant(path, summary)
    bench_finetune(summary)
    bench_prune(summary)
    with open(os.path.join(OUT, "bench.json"), "w") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
