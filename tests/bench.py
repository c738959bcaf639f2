"""`make bench`: speed and memory as ratios to baselines measured in the same run.

Never asserted in tests: the figures are printed (and written to bench-out/bench.json) for a
person to read. Each measured path runs in its own subprocess so its wall time and peak memory
(ru_maxrss) are its own.

Benchmarks:
- read: `surgery.inspect` + reading every tensor of a ~400 MB `.keras` with `open_weights`
  (h5py, no TensorFlow) against `keras.saving.load_model` + `get_weights` layer by layer.
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


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    path = os.path.abspath(os.path.join(OUT, "big.keras"))
    if not os.path.exists(path):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", _MAKE.format(path=path, units=UNITS)], check=True)
        print(f"generated {path} ({os.path.getsize(path) / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t0:.1f} s")
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
    with open(os.path.join(OUT, "bench.json"), "w") as f:
        json.dump({"file_mb": size_mb, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
