"""Every command checks its options and its outputs before TensorFlow is imported (issue #18
item 4): an existing output without --overwrite, an output that is an input, and option values
that need no model are refused with their one `error:` line while an import hook blocks
tensorflow/keras. One subprocess runs every case (a driver calling `main` per case)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SAMPLES

_DRIVER = """
import contextlib, io, json, os, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'tensorflow_hub'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
from surgery.cli import main
results = []
for argv in json.load(open(sys.argv[2])):
    err = io.StringIO()
    code = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code
    results.append([code, err.getvalue()])
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))
print(json.dumps({"results": results, "loaded": loaded}))
"""

_EXISTS = "error: {out}: already exists; pass --overwrite (overwrite=True) to replace it"
_NO_INPUTS = "error: missing.npz: no such inputs file (an .npz with one array per model input)"

# (arguments, the exact error line); {cnn}, {cnn28}, {h5}: input models, {out}: an existing file
CASES = [
    (["sample-data", "blobs", "-o", "b.npz", "--n", "0"],
     "error: Invalid value for '--n': 0 is not in the range 1<=x<=1000000; see "
     "'surgery sample-data --help'"),
    (["sample-data", "motifs", "-o", "motifs.csv"],
     "error: motifs.csv: task motifs is not a table; write it as .npz"),
    (["freeze", "{cnn}", "-o", "{out}", "--select", "head"], _EXISTS),
    (["freeze", "{cnn}", "-o", "new.keras", "--select", "head", "--bn", "bogus"],
     "error: Invalid value for '--bn': 'bogus' is not one of 'inference', 'train'; see "
     "'surgery freeze --help'"),
    (["unfreeze", "{cnn}", "-o", "{out}", "--select", "head"], _EXISTS),
    (["unfreeze", "{cnn}", "-o", "new.keras"],
     "error: give --select S and/or --except S; see 'surgery unfreeze --help'"),
    (["reinit", "{cnn}", "-o", "{out}", "--select", "head"], _EXISTS),
    (["reinit", "{cnn}", "-o", "new.keras", "--select", "head", "--initializer", "nope"],
     "error: unknown initializer 'nope'; known: glorot_uniform, glorot_normal, he_uniform, "
     "he_normal, lecun_uniform, lecun_normal, orthogonal, random_normal, random_uniform, "
     "truncated_normal, zeros, ones"),
    (["reinit", "{cnn}", "-o", "new.keras", "--select", "head", "--seed", "-1"],
     "error: seed must be between 0 and 2147483647, got -1"),
    (["head", "{cnn}", "-o", "{out}", "--classes", "3"], _EXISTS),
    (["head", "{cnn}", "-o", "new.keras", "--classes", "0"],
     "error: num_classes must be a positive integer, got 0"),
    (["head", "{cnn}", "-o", "new.keras", "--classes", "3", "--keep-classes", "1,1"],
     "error: keep_classes lists a class twice: [1, 1]"),
    (["head", "{cnn}", "-o", "new.keras", "--classes", "1", "--keep-classes", "1,2"],
     "error: 2 kept classes don't fit a head of 1; raise num_classes or keep fewer"),
    (["set", "{cnn}", "-o", "{out}", "--select", "fc/kernel", "--l2", "1e-4"], _EXISTS),
    (["set", "{cnn}", "-o", "new.keras", "--select", "fc/kernel", "--l2", "-1"],
     "error: l2 must be a finite number >= 0, got -1.0"),
    (["set", "{cnn}", "-o", "new.keras", "--select", "fc/kernel", "--constraint", "nope"],
     "error: unknown constraint 'nope'; known: max_norm, min_max_norm, non_neg, unit_norm"),
    (["set", "{cnn}", "-o", "new.keras", "--select", "fc/kernel", "--initializer",
      "HE_NORMAL"],
     "error: unknown initializer 'HE_NORMAL'; known: glorot_uniform, glorot_normal, "
     "he_uniform, he_normal, lecun_normal, orthogonal, random_normal, zeros, ones"),
    (["edit", "delete-channels", "{cnn}", "-o", "{out}", "--layer", "fc", "--channels", "1"],
     _EXISTS),
    (["edit", "delete-channels", "{cnn}", "-o", "new.keras", "--layer", "fc", "--channels",
      "a"],
     "error: Invalid value for '--channels': expected comma-separated channel indices (0, 1, "
     "...), got 'a'; see 'surgery edit delete-channels --help'"),
    (["edit", "delete-channels", "{cnn}", "-o", "new.keras", "--layer", "fc", "--ratio", "2"],
     "error: edit.lowest_channels: ratio must be a number between 0 and 1 (the fraction of "
     "channels to delete), got 2.0"),
    (["edit", "widen", "{cnn}", "-o", "{out}", "--layer", "fc", "--units", "96"], _EXISTS),
    (["edit", "widen", "{cnn}", "-o", "new.keras", "--layer", "fc", "--units", "0"],
     "error: Invalid value for '--units': 0 is not in the range x>=1; see 'surgery edit widen "
     "--help'"),
    (["edit", "widen", "{cnn}", "-o", "new.keras", "--noise", "-1", "--layer", "fc", "--units",
      "96"],
     "error: widen 'fc': noise must be a finite number >= 0, got -1.0; pass e.g. 0.01 (or 0 "
     "for an exact copy)"),
    (["edit", "deepen", "{cnn}", "-o", "{out}", "--after", "fc"], _EXISTS),
    (["edit", "deepen", "{cnn}", "-o", "new.keras", "--after", "fc", "--inputs",
      "missing.npz"], _NO_INPUTS),
    (["edit", "delete-layer", "{cnn}", "-o", "{out}", "--layer", "fc"], _EXISTS),
    (["edit", "delete-layer", "{cnn}", "-o", "new.keras", "--layer", "fc", "--atol", "-1"],
     "error: Invalid value for '--atol': -1.0 is not a finite number >= 0; give a tolerance "
     "such as 1e-5; see 'surgery edit delete-layer --help'"),
    (["edit", "insert", "{cnn}", "-o", "{out}", "--after", "fc", "--layer-json", "{{}}"],
     _EXISTS),
    (["edit", "insert", "{cnn}", "-o", "new.keras", "--after", "fc", "--before", "fc",
      "--layer-json", "{{}}"],
     "error: give exactly one of --after, --before; see 'surgery edit insert --help'"),
    (["edit", "replace", "{cnn}", "-o", "{out}", "--layer", "fc", "--layer-json", "{{}}"],
     _EXISTS),
    (["edit", "replace", "{cnn}", "-o", "new.keras", "--layer", "fc", "--layer-json", "{{"],
     "error: Invalid value for --layer-json: not JSON (Expecting property name enclosed in "
     "double quotes: line 1 column 2 (char 1)); see 'surgery edit replace --help'"),
    (["edit", "change-input", "{cnn}", "-o", "{out}", "--shape", "32,32,1"], _EXISTS),
    (["edit", "change-input", "{cnn}", "-o", "new.keras", "--shape", "32,x,1"],
     "error: Invalid value for '--shape': expected comma-separated positive sizes such as "
     "32,32,1 (none for any size), got '32,x,1'; see 'surgery edit change-input --help'"),
    (["edit", "inflate", "{cnn}", "-o", "{out}", "--frames", "4"], _EXISTS),
    (["edit", "inflate", "{cnn}", "-o", "new.keras", "--depth", "2"],
     "error: Invalid value for --depth: mode center needs an odd depth (a middle frame), got "
     "2; use an odd --depth or --mode tile; see 'surgery edit inflate --help'"),
    (["edit", "fully-convolutional", "{cnn28}", "-o", "{out}"], _EXISTS),
    (["edit", "fully-convolutional", "{cnn28}", "-o", "new.keras", "--input-shape", "0,28,1"],
     "error: Invalid value for '--input-shape': expected comma-separated positive sizes such "
     "as 32,32,1 (none for any size), got '0,28,1'; see 'surgery edit fully-convolutional "
     "--help'"),
    (["convert", "{h5}", "-o", "{out}"], _EXISTS),
    (["convert", "{h5}", "-o", "new.keras", "--inputs", "missing.npz"], _NO_INPUTS),
    (["export", "{cnn}", "-o", "exported"],
     "error: exported: already exists; pass --overwrite (overwrite=True) to replace it"),
    (["export", "{cnn}", "-o", "new_dir", "--format", "zip"],
     "error: Invalid value for '--format': 'zip' is not one of 'hub', 'savedmodel', 'torch'; "
     "see 'surgery export --help'"),
    (["transplant", "{cnn}", "{cnn}", "-o", "{out}"], _EXISTS),
    (["transplant", "{cnn}", "{cnn}", "-o", "{out}", "--verify"], _EXISTS),
    (["transplant", "{cnn}", "{cnn}", "-o", "{cnn}", "--verify"],
     "error: {cnn}: this is the input {cnn}; write the output to another path (surgery never "
     "writes over its input)"),
    (["transplant", "{cnn}", "{cnn}", "-o", "new.keras", "--inputs", "missing.npz"],
     _NO_INPUTS),
    (["transplant", "{cnn}", "{cnn}", "-o", "new.keras", "--from", "torch", "--write-rules",
      "{out}"], _EXISTS),
    (["transplant", "{cnn}", "{cnn}", "--dry-run", "--from", "torch", "--write-rules",
      "{cnn}"],
     "error: {cnn}: this is the input {cnn}; write the output to another path (surgery never "
     "writes over its input)"),
    (["transplant", "{cnn}", "{cnn}", "-o", "new.keras", "--write-rules", "mapping.toml"],
     "error: --write-rules writes the rules --from torch infers; add --from torch; see "
     "'surgery transplant --help'"),
    (["transplant", "{cnn}", "{cnn}", "-o", "new.keras", "--from", "onnx"],
     "error: Invalid value for '--from': 'onnx' is not one of 'keras', 'torch'; see 'surgery "
     "transplant --help'"),
    (["export", "{cnn}", "-o", "new_dir", "--like", "t.safetensors"],
     "error: --like applies to --format torch only; see 'surgery export --help'"),
    (["export", "{cnn}", "--format", "torch", "-o", "new.safetensors", "--like",
      "missing.safetensors"], "error: missing.safetensors: no such file or directory"),
    (["export", "{cnn}", "--format", "torch", "-o", "new.safetensors", "--like",
      "missing.safetensors", "--write-rules", "{out}"], _EXISTS),
    (["export", "{cnn}", "--format", "torch", "-o", "new.safetensors", "--rules", "r.toml",
      "--write-rules", "export.toml"],
     "error: --write-rules writes the rules --like infers; add --like TEMPLATE.safetensors; "
     "see 'surgery export --help'"),
    # --max-memory: the plan pass names the largest tensor (block3_conv's 3x3x64x32 float32
    # kernel) before anything is read or written
    (["transplant", "{cnn}", "{cnn}", "-o", "new.keras", "--max-memory", "10KB"],
     "error: {cnn}: tensor block3_conv/kernel needs 73.8 KB (73728 bytes: read as it is) at "
     "once, more than --max-memory 10.0 KB allows; raise --max-memory to at least 73.8 KB"),
    (["transplant", "{cnn}", "{cnn}", "-o", "new.keras", "--max-memory", "1.5x"],
     "error: --max-memory '1.5x': not a memory size; give bytes (1500000000) or a size with a "
     "unit: 800MB, 1.5GB (powers of 1000), 2GiB (powers of 1024)"),
    (["convert", "{h5}", "-o", "new.keras", "--max-memory", "1KB"],
     "error: {h5}: the model, loaded twice (as Keras 2 and as Keras 3, to compare them), needs "
     "7.5 KB (7488 bytes: 2 x 3.8 KB) at once, more than --max-memory 1.0 KB allows; raise "
     "--max-memory to at least 7.5 KB"),
    (["export", "{cnn}", "--format", "torch", "-o", "new.safetensors", "--max-memory", "0"],
     "error: --max-memory '0': not a memory size; give bytes (1500000000) or a size with a "
     "unit: 800MB, 1.5GB (powers of 1000), 2GiB (powers of 1024)"),
    (["finetune", "{cnn}", "--data", "d.npz", "-o", "{out}"], _EXISTS),
    (["finetune", "{cnn}", "--data", "d.npz", "-o", "new.keras", "--epochs", "0"],
     "error: --epochs must be a whole number of at least 1, got 0"),
    (["finetune", "{cnn}", "--data", "d.npz", "-o", "new.keras", "--lr-mult", "head"],
     "error: Invalid value for --lr-mult: expected SELECTOR=MULTIPLIER, got 'head'; see "
     "'surgery finetune --help'"),
    (["finetune", "{cnn}", "--data", "d.npz", "-o", "new.keras", "--val-split", "1"],
     "error: --val-split must be a finite number in (0, 1), got 1.0"),
    (["recipe", "run", "cnn-channels", "-o", "{out}"], _EXISTS),
    (["recipe", "run", "cnn-channels", "-o", "new.keras", "--set", "nokey=1"],
     "error: Invalid value for --set: recipe cnn-channels has no option 'nokey'; it takes "
     "channels, mode, indices, seed, output; see 'surgery recipe run --help'"),
    (["apply", "plan.toml"], "error: {work}/{out}: already exists; pass --overwrite "
     "(overwrite=True) to replace it"),
    (["apply", "plan.toml", "--inputs", "missing.npz"], _NO_INPUTS),
    (["demo", "--out", "demo"], "error: demo/summary.json: already exists; pass --overwrite "
     "(overwrite=True) to replace it"),
    (["evaluate", "{cnn}", "--data", "d.npz", "--plot", "exists.png"],
     "error: exists.png: already exists; pass --overwrite (overwrite=True) to replace it"),
    (["evaluate", "{cnn}", "--data", "d.npz", "--batch-size", "0"],
     "error: Invalid value for '--batch-size': 0 is not in the range x>=1; see 'surgery "
     "evaluate --help'"),
    (["predict", "{cnn}", "--data", "d.npz", "-o", "exists.csv"],
     "error: exists.csv: already exists; pass --overwrite (overwrite=True) to replace it"),
    (["predict", "{cnn}", "--data", "d.npz", "-o", "p.csv", "--batch-size", "0"],
     "error: Invalid value for '--batch-size': 0 is not in the range x>=1; see 'surgery "
     "predict --help'"),
]


def _setup(work) -> dict:
    fill = {"cnn": os.path.join(SAMPLES, "cnn.keras"), "cnn28": os.path.join(SAMPLES,
            "cnn_28.keras"), "h5": os.path.join(SAMPLES, "keras2_mlp.h5"), "out": "exists.keras",
            "work": str(work)}
    for name in ("exists.keras", "exists.png", "exists.csv"):
        (work / name).write_bytes(b"not replaced")
    (work / "exported").mkdir()
    (work / "exported" / "saved_model.pb").write_bytes(b"not replaced")
    (work / "demo").mkdir()
    (work / "demo" / "summary.json").write_text("{}\n")
    (work / "d.npz").write_bytes(b"")  # never read: the checks come first
    (work / "plan.toml").write_text(f'[target]\nmodel = "{fill["cnn"]}"\n[[step]]\nop = '
                                    '"freeze"\nselect = ["head"]\n[output]\nmodel = '
                                    '"exists.keras"\n')
    return fill


def _tree(folder) -> dict:
    return {os.path.join(d, n): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(folder) for n in names}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("before_tf")
    fill = _setup(work)
    cases = [[a.format(**fill) for a in args] for args, _ in CASES]
    (work / "cases.json").write_text(json.dumps(cases))
    before = _tree(work)
    env = {**os.environ, "SURGERY_QUIET_TF": "0"}
    r = subprocess.run([sys.executable, "-c", _DRIVER, ROOT, str(work / "cases.json")],
                       cwd=work, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(r.stdout.splitlines()[-1])
    return fill, data, before == _tree(work)


def test_nothing_imported_tensorflow_and_nothing_was_written(runs):
    _, data, unchanged = runs
    assert data["loaded"] == []
    assert unchanged


@pytest.mark.parametrize("args, line", CASES, ids=[" ".join(a[:3]) for a, _ in CASES])
def test_refused_before_tensorflow(runs, args, line):
    fill, data, _ = runs
    code, err = data["results"][CASES.index((args, line))]
    assert "blocked" not in err, err
    assert (code, err) == (2, line.format(**fill) + "\n")


def test_every_model_command_has_a_case():
    """A new command that writes a file or takes options gets a case here."""
    from surgery.cli import main

    covered = {a[0] if a[0] not in ("edit", "recipe") else " ".join(a[:2]) for a, _ in CASES}
    commands = set()
    for name, cmd in main.commands.items():
        sub = getattr(cmd, "commands", None)
        commands |= {f"{name} {s}" for s in sub} if sub else {name}
    read_only = {"inspect", "diff", "recipe list"}  # no TensorFlow at all
    assert commands - read_only - covered == set()


def test_initializer_and_constraint_names_are_keras_own(keras):
    """The names the CLI accepts before loading are exactly those Keras resolves (base
    classes aside): checked against Keras's own tables and `get`."""
    from keras.src.constraints import ALL_OBJECTS_DICT as constraints
    from keras.src.initializers import ALL_OBJECTS_DICT as initializers

    from surgery.cli.models import CONSTRAINT_NAMES, INITIALIZER_NAMES

    assert INITIALIZER_NAMES == set(initializers) - {"Initializer", "initializer"}
    assert CONSTRAINT_NAMES == set(constraints) - {"Constraint", "constraint"}
    for name in sorted(INITIALIZER_NAMES):
        try:
            assert keras.initializers.get(name) is not None
        except KeyError:  # Constant needs value=...: a name Keras knows
            pass
        except ImportError:  # STFT needs scipy: a name Keras knows
            pass
    for name in sorted(CONSTRAINT_NAMES):
        assert keras.constraints.get(name) is not None
    for name in ("HE_NORMAL", "henormal", "He_normal", "maxnorm"):
        getter = keras.constraints.get if name == "maxnorm" else keras.initializers.get
        with pytest.raises(ValueError):
            getter(name)
