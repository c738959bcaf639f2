"""Inputs built to make surgery run forever (issue #22, hangs): HDF5 hard-link DAGs, cycles
and deep nesting, catastrophic regexes in rules and selectors, FIFOs and devices given as
files, deeply nested TOML.

Each case asserts the exact error line, that the inputs are unchanged and that nothing is left
behind. Whatever could hang runs in a subprocess with a timeout: the timeout only guards the
suite against a regression (a C-level regex match can't be interrupted in-process); it is not a
measure of speed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.entries import VariableInfo
from surgery.errors import FormatError, InputError, SelectorError
from surgery.transfer.rules import RulesError, load_rules
from surgery.selection import select
from tests.bad_inputs.files import one_error, rezip
from tests.conftest import ROOT, leftovers, sha256

GUARD_S = 120  # a hang guard only: each case below finishes in a few seconds


def _cli(args, timeout=GUARD_S):
    """Runs the `surgery` CLI in a subprocess; (exit code, stdout, stderr)."""
    code = "import sys; from cli import main; main(sys.argv[1:])"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def _python(snippet: str, timeout=GUARD_S) -> str:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(snippet)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr
    return p.stdout


# ------------------------------------------------------------------ HDF5 walking


def _dag(clean, path, levels=26) -> str:
    """The issue's file: under a layer, a chain of groups each reached by two hard links
    ('a' and 'b'), 26 levels deep: 2**26 paths through a ~40 KB file."""
    shutil.copy(clean / "m.weights.h5", path)
    with h5py.File(path, "r+") as f:
        top = f["layers/dense"].create_group("deep0")
        groups = [top]
        for i in range(1, levels):
            g = f.create_group(f"/store/g{i}")
            groups[-1]["a"] = g
            groups[-1]["b"] = g
            groups.append(g)
    return str(path)


def test_hard_link_dag_is_refused_fast(clean, tmp_path):
    h5 = _dag(clean, tmp_path / "dag.weights.h5")
    archive = rezip(clean / "m.keras", tmp_path / "dag.keras", h5)
    assert os.path.getsize(h5) < 100_000
    line = (f"{h5}: /store/g9/a is a second hard link to /store/g10; Keras never links one "
            "object twice, refusing a crafted weights file")
    before = {p: sha256(p) for p in (h5, archive)}
    rc, out, err = _cli(["inspect", h5, "--architecture", clean / "m.keras"])
    assert (rc, out, err) == (2, "", f"error: {line}\n")
    rc, out, err = _cli(["inspect", archive, "--stats"])
    assert (rc, out) == (2, "") and err == (
        f"error: {archive}: model.weights.h5: /store/g9/a is a second hard link to /store/g10; "
        "Keras never links one object twice, refusing a crafted weights file\n")
    out_path = tmp_path / "out.keras"
    rc, out, err = _cli(["transplant", clean / "m.keras", archive, "-o", out_path])
    assert rc == 2 and err.startswith(f"error: {archive}: model.weights.h5: /store/g9/a is a "
                                      "second hard link")
    assert not out_path.exists() and leftovers(str(tmp_path)) == []
    assert before == {p: sha256(p) for p in before}
    # in-process, the same line through the API and the CLI runner
    with pytest.raises(FormatError) as e:
        surgery.open_weights(h5)
    assert str(e.value) == line
    one_error(CliRunner().invoke(main, ["inspect", h5]), line)


def test_hard_link_cycle_and_deep_chain(clean, tmp_path):
    cycle = tmp_path / "cycle.weights.h5"
    shutil.copy(clean / "m.weights.h5", cycle)
    with h5py.File(cycle, "r+") as f:
        f["layers/dense/loop"] = f["layers"]  # a group that contains its own parent
    deep = tmp_path / "deep.weights.h5"
    shutil.copy(clean / "m.weights.h5", deep)
    with h5py.File(deep, "r+") as f:
        f["layers/dense"].create_group("/".join(f"d{i}" for i in range(70)))
    for path, line in [
        (cycle, f"{cycle}: /layers/dense/loop is a second hard link to /layers; Keras never "
                "links one object twice, refusing a crafted weights file"),
        (deep, f"{deep}: /layers/dense/" + "/".join(f"d{i}" for i in range(63)) +
               " is nested more than 64 groups deep; refusing a crafted weights file"),
    ]:
        before = sha256(path)
        rc, out, err = _cli(["inspect", path])
        assert (rc, err) == (2, f"error: {line}\n"), err
        assert sha256(path) == before


def test_clean_files_still_open(clean):
    """The walker's checks refuse nothing Keras itself writes (reference: the model's own
    weights, read back by Keras)."""
    import keras
    model = keras.saving.load_model(clean / "m.keras")
    expected = {"fc/kernel": model.get_layer("fc").kernel.numpy(),
                "head/bias": model.get_layer("head").bias.numpy()}
    for path in (clean / "m.keras", clean / "m.weights.h5"):
        arch = None if str(path).endswith(".keras") else str(clean / "m.keras")
        with surgery.open_weights(str(path), architecture=arch) as w:
            for key, value in expected.items():
                np.testing.assert_array_equal(w[key], value)


def test_named_layer_state_is_read(tmp_path):
    """A tf-idf StringLookup stores its weights as vars/idf_weights, not vars/0 (it was
    refused as 'damaged'); reference: the weights Keras loads back."""
    import keras
    inp = keras.Input((1,), dtype="string")
    lookup = keras.layers.StringLookup(vocabulary=["a", "b"], output_mode="tf_idf",
                                       idf_weights=[0.5, 0.25], name="idf")
    keras.Model(inp, lookup(inp)).save(tmp_path / "idf.keras")
    expected = keras.saving.load_model(tmp_path / "idf.keras").get_layer("idf").idf_weights
    with surgery.open_weights(str(tmp_path / "idf.keras")) as w:
        assert list(w) == ["idf/idf_weights"]
        np.testing.assert_array_equal(w["idf/idf_weights"], np.asarray(expected))


# ------------------------------------------------------------------ regexes


KEY = "a" * 40 + "!"  # the 41-character key

CATASTROPHIC = [
    (r"^(\w+\s?)+$", "nests repetition inside repetition, which can take exponential time; "
                     "simplify it"),
    (r"(a{1,})+b", "nests repetition inside repetition, which can take exponential time; "
                   "simplify it"),
    (r"(.*a){25}$", "nests repetition inside repetition, which can take exponential time; "
                    "simplify it"),
    (r"a{4294967296}", "repeats too many times; counted repetition is limited to 1000"),
    (r"(?:a|a)*b", "repeats a group of alternatives, which can take exponential time; repeat "
                   "a character class ([ab]) or spell the repetitions out"),
    (r"(a)\1*b", "uses a backreference or a conditional group, which can take exponential "
                 "time; surgery's regexes leave them out"),
    (".*a" * 25 + "$", "can take time growing as n**26 on a name of n characters (25 "
                       "repetitions can give characters back to what follows); anchor it "
                       "with ^, or make each repetition stop where the next part starts, "
                       "e.g. [^/]* instead of .*"),
    ("a?" * 30 + "a" * 30, "has alternatives that can start alike (1073741824 combinations), "
                           "which can take exponential time; make them start with different "
                           "characters"),
]


def test_catastrophic_regexes_are_refused_in_rules_and_selectors():
    """Each pattern hangs (or overflows) Python's re on the 41-character key; the rules and
    selectors refuse it before compiling. Run in a subprocess: a regression would hang."""
    out = _python(f"""
        import json
        from surgery.entries import VariableInfo
        from surgery.errors import SurgeryError
        from surgery.transfer.rules import load_rules
        from surgery.selection import select
        key = {KEY!r}
        got = []
        for pattern in {[p for p, _ in CATASTROPHIC]!r}:
            line = []
            try:
                rules = load_rules({{"rename": [{{"from": pattern, "to": "x"}}]}})
                rules.renames[0].pattern.sub("x", key)
            except SurgeryError as e:
                line.append(type(e).__name__ + ": " + str(e))
            try:
                select([VariableInfo(key, (1,), "float32")], ["re:" + pattern])
            except SurgeryError as e:
                line.append(type(e).__name__ + ": " + str(e))
            got.append(line)
        print(json.dumps(got))
    """)
    for (pattern, reason), lines in zip(CATASTROPHIC, json.loads(out)):
        # a selector matches whole names: no search for a start, so no hint to anchor it
        selector_reason = reason.replace("n**26", "n**25").replace("anchor it with ^, or ", "")
        assert lines == [f"RulesError: rules: 'from' pattern {pattern!r} {reason}",
                         f"SelectorError: selector {'re:' + pattern!r} {selector_reason}"]


def test_catastrophic_rename_through_the_cli(clean, tmp_path):
    src = tmp_path / "src.npz"
    np.savez(src, **{KEY: np.zeros((4, 3), np.float32)})
    rules = tmp_path / "r.toml"
    rules.write_text('[[rename]]\nfrom = "^(\\\\w+\\\\s?)+$"\nto = "fc/kernel"\n')
    before = {p: sha256(p) for p in (src, rules, clean / "m.keras")}
    out_path = tmp_path / "out.keras"
    rc, out, err = _cli(["transplant", src, clean / "m.keras", "-o", out_path, "--rules", rules])
    assert (rc, out) == (2, "") and err == (
        f"error: {rules}:2: 'from' pattern '^(\\\\w+\\\\s?)+$' nests repetition inside "
        "repetition, which can take exponential time; simplify it\n")
    assert not out_path.exists() and leftovers(str(tmp_path)) == []
    assert before == {p: sha256(p) for p in before}


def test_safe_regexes_still_rename_like_python_re():
    """The subset keeps the patterns people write; results equal Python's re (reference)."""
    keys = ["backbone/block1_conv/kernel", "backbone/block12_bn/moving_variance",
            "features.3.weight", "layer1.0.conv2.weight", "head/bias"]
    renames = [(r"^backbone/(.*)/kernel$", r"trunk/\1/w"), (r"^(.*)/(.*)/moving_variance$",
                                                             r"\2/\1/var"),
               (r"^features\.(\d+)\.(weight|bias)$", r"f/\1/\2"),
               (r"layer(\d)\.(\d)\.conv(\d)", r"L\1_\2_c\3"), (r"(?i)^HEAD/", "top/")]
    rules = load_rules({"rename": [{"from": p, "to": r} for p, r in renames]})
    for key in keys:
        ours, ref = key, key
        for rename, (p, r) in zip(rules.renames, renames):
            ours = rename.pattern.sub(rename.replacement, ours)
            ref = re.sub(p, r, ref)
        assert ours == ref
    picked = select([VariableInfo(k, (1,), "float32") for k in keys],
                    [r"re:.*block\d+_.*", r"re:^(?!.*bias).*weight$"])
    assert [v.path for v in picked] == [k for k in keys if re.fullmatch(r".*block\d+_.*", k)
                                        or re.fullmatch(r"^(?!.*bias).*weight$", k)]


def test_overlong_name_and_time_budget(monkeypatch):
    from surgery import selection
    rules = load_rules({"rename": [{"from": "^(.*)/kernel$", "to": r"\1/w"}]})
    pattern = rules.renames[0].pattern
    long_key = "x" * 600 + "/kernel"
    with pytest.raises(RulesError) as e:
        pattern.sub(r"\1/w", long_key)
    assert str(e.value) == (
        "rules: rename '^(.*)/kernel$': the name '" + "x" * 39 + "\u2026" + "x" * 33 +
        "/kernel' is 607 characters long; regexes are matched against names of up to 512 "
        "characters; select or rename it with a glob or an exact name instead")
    with pytest.raises(SelectorError) as e:
        select([VariableInfo(long_key, (1,), "float32")], ["re:.*kernel"])
    assert str(e.value).startswith("selector 're:.*kernel': the name '")
    monkeypatch.setattr(selection, "MAX_SECONDS", 0.0)
    rules = load_rules({"rename": [{"from": "^(.*)/kernel$", "to": r"\1/w"}]})
    pattern = rules.renames[0].pattern
    assert pattern.sub(r"\1/w", "a/kernel") == "a/w"
    with pytest.raises(RulesError) as e:
        pattern.sub(r"\1/w", "b/kernel")
    assert str(e.value) == ("rules: rename '^(.*)/kernel$': matching took more than 0 s over 1 "
                            "names; simplify the pattern")


# ------------------------------------------------------------------ special files


def test_rules_fifo_device_and_huge_file(clean, tmp_path):
    fifo = tmp_path / "rules.toml"
    os.mkfifo(fifo)
    big = tmp_path / "big.toml"
    big.write_bytes(b"# padding\n" * 110_000)
    out_path = tmp_path / "out.keras"
    for rules, line in [
        (fifo, f"{fifo}: is a FIFO, not a regular file; pass the rules file as a regular file"),
        ("/dev/zero", "/dev/zero: is a character device, not a regular file; pass the rules "
                      "file as a regular file"),
        (big, f"{big}: more than 1048576 bytes, too large for a rules file; check the path"),
    ]:
        rc, out, err = _cli(["transplant", clean / "m.keras", clean / "m.keras", "-o", out_path,
                             "--rules", rules])
        assert (rc, out, err) == (2, "", f"error: {line}\n")
        with pytest.raises(InputError) as e:
            load_rules(str(rules))
        assert str(e.value) == line
    assert not out_path.exists() and leftovers(str(tmp_path)) == []


def test_weights_fifo_and_device(tmp_path):
    fifo = tmp_path / "w.keras"
    os.mkfifo(fifo)
    for path, kind in [(fifo, "a FIFO"), ("/dev/zero", "a character device")]:
        rc, out, err = _cli(["inspect", path])
        assert (rc, out, err) == (2, "", f"error: {path}: {kind}, not a regular file; pass a "
                                         "model or weights file\n")


def test_architecture_fifo(clean, tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    rc, out, err = _cli(["inspect", clean / "m.weights.h5", "--architecture", fifo])
    assert (rc, out, err) == (2, "", f"error: {fifo}: is a FIFO, not a regular file; pass the "
                                     "architecture file as a regular file\n")


# ------------------------------------------------------------------ TOML nesting


@pytest.mark.parametrize("text", [
    "match = " + "[" * 5000 + "]" * 5000 + "\n",
    "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n",
])
def test_deep_toml_is_a_rules_error(clean, tmp_path, text):
    path = tmp_path / "deep.toml"
    path.write_text(text)
    line = f"{path}: arrays or tables nested more than 32 deep; a rules file needs two levels"
    with pytest.raises(RulesError) as e:
        load_rules(str(path))
    assert str(e.value) == line
    model = str(clean / "m.keras")
    one_error(CliRunner().invoke(main, ["transplant", model, model, "--dry-run", "--rules",
                                         str(path)]), line)


def test_brackets_inside_toml_strings_do_not_count(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text('skip = ["' + "[" * 100 + '", \'' + "{" * 100 + "'] # " + "[" * 100 + "\n"
                    '[[rename]]\nfrom = """^a[(((("""\nto = "b"\n')
    with pytest.raises(RulesError) as e:  # the regex is invalid; the nesting is fine
        load_rules(str(path))
    assert "invalid regex in 'from'" in str(e.value)
