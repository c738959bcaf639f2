"""One vocabulary for what happened to a variable (issue #17 item 8): the transplant report,
edit reports, plan reports and `diff` use the words of `surgery.outcomes`, each meaning what it
says, and the older spellings a user may pass in still work.

References: small hand-built Keras models whose every variable's fate is known by construction,
the values Keras itself holds (`get_weights`), and the documentation tables."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

import surgery
from surgery.errors import OptionError
from surgery.outcomes import ALIASES, MEANINGS, Counts, Outcome
from tests.conftest import ROOT
from tests.models import randomize

WORDS = {"copied", "converted", "initialized", "reinitialized", "skipped", "missing",
         "mismatched", "unused", "unchanged", "changed", "reshaped", "new", "removed",
         "only_in_a", "only_in_b", "frozen", "trainable"}


def _dense(keras, widths, names, inputs=4, seed=None):
    layers = [keras.Input((inputs,))] + [keras.layers.Dense(w, name=n)
                                         for w, n in zip(widths, names)]
    model = keras.Sequential(layers)
    return randomize(model, seed) if seed is not None else model


# ------------------------------------------------------------------ the words themselves

def test_the_words_and_their_documentation_agree():
    assert {w.value for w in Outcome} == WORDS
    assert set(MEANINGS) == set(Outcome) and all(MEANINGS[w] for w in Outcome)
    doc = surgery.outcomes.__doc__
    documented = set(re.findall(r"^\| ``(\w+)``(?: / ``(\w+)``)? \|", doc, re.M))
    assert {w for pair in documented for w in pair if w} == WORDS
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = readme.split("## Report words", 1)[1].split("\n## ", 1)[0]
    in_readme = set(re.findall(r"^\| `(\w+)`(?:, `(\w+)`)?", table, re.M))
    assert {w for pair in in_readme for w in pair if w} == WORDS


def test_older_spellings_and_printed_labels_read_as_their_word():
    expected = {"same": "unchanged", "kept": "unchanged", "shape": "reshaped",
                "shape differs": "reshaped", "only_a": "only_in_a", "only in a": "only_in_a",
                "Only in B": "only_in_b", "adapted": "converted", "carried": "copied",
                "deleted": "removed", "unfrozen": "trainable", "copied": "copied"}
    assert {k: Outcome(k).value for k in expected} == expected
    assert all(Outcome(v) for v in ALIASES.values())  # every alias names a word
    assert Outcome.ONLY_IN_A.label == "only in a" and Outcome.COPIED == "copied"
    assert json.dumps({Outcome.NEW: Outcome.FROZEN}) == '{"new": "frozen"}'
    with pytest.raises(OptionError) as e:
        Outcome.of("copyed")
    assert str(e.value) == ("unknown report word 'copyed'; the words: copied, converted, "
                            "initialized, reinitialized, skipped, missing, mismatched, unused, "
                            "unchanged, changed, reshaped, new, removed, only_in_a, only_in_b, "
                            "frozen, trainable")
    c = Counts(unchanged=3, reshaped=1)
    assert (c["same"], c["shape differs"], c.get("kept"), "same" in c) == (3, 1, 3, True)
    assert json.loads(json.dumps(c)) == {"unchanged": 3, "reshaped": 1}
    with pytest.raises(KeyError):
        c["only_a"]


# ------------------------------------------------------------------ diff

def test_diff_words_table_and_old_spellings(keras):
    a = _dense(keras, [3, 2], ["a", "b"], seed=1)
    b = _dense(keras, [3, 2, 1], ["a", "b", "c"], seed=2)
    b.get_layer("a").set_weights(a.get_layer("a").get_weights())
    kb, bb = a.get_layer("b").get_weights()
    b.get_layer("b").set_weights([kb + 0.5, bb])
    d = surgery.diff(a, b)
    assert {v.path: v.status.value for v in d.variables} == {
        "a/kernel": "unchanged", "a/bias": "unchanged", "b/kernel": "changed",
        "b/bias": "unchanged", "c/kernel": "only_in_b", "c/bias": "only_in_b"}
    assert str(d).splitlines()[3:] == [
        "a/kernel  unchanged",
        "a/bias    unchanged",
        "b/kernel  changed  max |a-b| = 0.5",
        "b/bias    unchanged",
        "c/kernel  only in b  (2, 1)",
        "c/bias    only in b  (1,)",
        "",
        "3 unchanged, 1 changed, 0 reshaped, 0 only in a, 2 only in b"]
    for old in ("only_b", "only in b", "only_in_b"):
        assert [v.path for v in d.of(old)] == ["c/kernel", "c/bias"]
    assert [v.path for v in d.of("same")] == ["a/kernel", "a/bias", "b/bias"]
    assert d.counts()["same"] == 3 and d.counts()["only_b"] == 2
    assert d.of("no such word") == []  # as before: an unknown word finds nothing
    data = json.loads(json.dumps(d.to_dict()))
    assert data["counts"] == {"unchanged": 3, "changed": 1, "reshaped": 0, "only_in_a": 0,
                              "only_in_b": 2}
    wide = _dense(keras, [5, 2], ["a", "b"], seed=1)
    rows = str(surgery.diff(a, wide)).splitlines()
    assert rows[3] == "a/kernel  reshaped  (4, 3) vs (4, 5)"
    assert surgery.diff(wide, a).of("shape")[0].status == Outcome.RESHAPED


# ------------------------------------------------------------------ transplant

def test_transplant_words_match_what_happened_to_each_variable(keras):
    src = _dense(keras, [5, 3, 2, 7], ["a", "b", "c", "x"], seed=1)
    tgt = _dense(keras, [5, 2, 2, 3, 1], ["a", "b", "c", "head", "new"], seed=2)
    before = {l.name: [w.copy() for w in l.get_weights()] for l in tgt.layers}
    rules = {"match": "exact", "skip": ["head/*"],
             "adapter": [{"target": "b/*", "name": "slice", "lossy": True}]}
    r = surgery.transplant(src, tgt, rules)
    assert [(e.path, e.status.value) for e in r.entries] == [
        ("a/kernel", "copied"), ("a/bias", "copied"), ("b/kernel", "converted"),
        ("b/bias", "converted"), ("c/kernel", "mismatched"), ("c/bias", "copied"),
        ("head/kernel", "skipped"), ("head/bias", "skipped"), ("new/kernel", "missing"),
        ("new/bias", "missing")]
    assert r.unused == ("x/kernel", "x/bias")
    # each word means what the target now holds (Keras's own weights as the reference)
    s = {l.name: l.get_weights() for l in src.layers}
    t = {l.name: l.get_weights() for l in tgt.layers}
    np.testing.assert_array_equal(t["a"][0], s["a"][0])                  # copied
    np.testing.assert_array_equal(t["b"][0], s["b"][0][:, :2])           # converted (slice)
    np.testing.assert_array_equal(t["c"][0], before["c"][0])             # mismatched: as was
    np.testing.assert_array_equal(t["c"][1], s["c"][1])                  # copied
    np.testing.assert_array_equal(t["head"][0], before["head"][0])       # skipped: as was
    np.testing.assert_array_equal(t["new"][0], before["new"][0])         # missing: as was
    assert [e.path for e in r.adapted] == [e.path for e in r.converted] == ["b/kernel",
                                                                            "b/bias"]
    assert r.counts() == {"copied": 3, "converted": 2, "skipped": 2, "missing": 2,
                          "mismatched": 1, "unused": 2}
    assert r.counts()["adapted"] == 2 and [e.path for e in r.of("adapted")] == ["b/kernel",
                                                                                 "b/bias"]
    lines = str(r).splitlines()
    assert lines[-1] == ("3 copied, 2 converted, 2 skipped, 2 missing, 1 mismatched, 2 unused; "
                         "strict would fail")
    words = {line.split()[1] for line in lines[3:-2] if line and not line.startswith("unused")}
    assert words == {"copied", "converted", "mismatched", "skipped", "missing"}
    assert json.loads(json.dumps(r.to_dict()))["entries"][2]["status"] == "converted"


# ------------------------------------------------------------------ edits

def test_edit_report_words_and_the_older_attribute(keras):
    model = _dense(keras, [5, 3, 2], ["a", "b", "c"], seed=3)
    result = surgery.edit.delete_layer(model, "b")
    rep = result.report
    assert rep.copied == rep.carried == ("a/kernel", "a/bias", "c/bias")
    assert rep.initialized == (("c/kernel", "shape (3, 2) -> (5, 2)"),) and rep.converted == ()
    new = {l.name: l.get_weights() for l in result.model.layers}
    old = {l.name: l.get_weights() for l in model.layers}
    np.testing.assert_array_equal(new["a"][0], old["a"][0])   # copied: bitwise the input's
    np.testing.assert_array_equal(new["c"][1], old["c"][1])
    lines = str(rep).splitlines()
    assert "  3 variables copied bitwise, 0 converted, 1 initialized" in lines
    assert "    initialized: c/kernel (shape (3, 2) -> (5, 2))" in lines
    data = rep.to_dict()
    assert (data["copied"], data["converted"], data["initialized"]) == (
        ["a/kernel", "a/bias", "c/bias"], [], [{"path": "c/kernel",
                                                "why": "shape (3, 2) -> (5, 2)"}])
    assert not {"carried"} & set(data)


# ------------------------------------------------------------------ every report, one vocabulary

def test_every_report_uses_only_the_words(keras):
    src = _dense(keras, [5, 3], ["a", "b"], seed=1)
    tgt = _dense(keras, [5, 2, 1], ["a", "b", "c"], seed=2)
    used = {e.status.value for e in surgery.transplant(src, tgt).entries}
    used |= {v.status.value for v in surgery.diff(src, tgt).variables}
    edit = surgery.edit.delete_layer(tgt, "b").report.to_dict()
    used |= {k for k in edit if k in WORDS}
    from surgery.plans.plan import _variable_actions

    frozen = _dense(keras, [5, 2, 1], ["a", "b", "c"], seed=2)
    frozen.get_layer("a").trainable = False
    actions = [row["action"] for row in _variable_actions(tgt, frozen)]
    actions += [row["action"] for row in _variable_actions(tgt, src)]
    used |= {part.split()[0] for a in actions  # "reshaped (5, 3) -> (5, 2), frozen"
             for part in re.sub(r"\([^)]*\)", "", a).split(",")}
    assert used <= WORDS, used - WORDS
    assert {"copied", "mismatched", "missing", "changed", "reshaped", "only_in_b",
            "initialized", "frozen", "removed"} <= used
