"""Untrusted .keras archives and JSON: refused before anything is extracted or allocated."""

from __future__ import annotations

import zipfile

import pytest

from surgery.io.archive import KerasArchive, parse_json
from surgery.errors import FormatError


def test_deep_json_refused():
    text = "[" * 10000 + "]" * 10000
    with pytest.raises(FormatError) as e:
        parse_json(text, "m.keras: config.json")
    assert str(e.value) == ("m.keras: config.json: JSON nested deeper than 200 levels; refusing "
                            "a config built to exhaust the parser")


def test_malformed_json():
    with pytest.raises(FormatError, match=r"^m: malformed JSON \(Expecting"):
        parse_json(b'{"a": ', "m")


def test_member_escaping_archive(tmp_path):
    p = tmp_path / "evil.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("../../etc/passwd", "x")
    with pytest.raises(FormatError) as e:
        KerasArchive(str(p))
    assert str(e.value) == (f"{p}: zip member '../../etc/passwd' points outside the archive; "
                            "refusing a hostile archive")


def test_zip_bomb_declared_size(tmp_path):
    p = tmp_path / "bomb.keras"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", b"\0" * (20 * 1024 * 1024))
    with pytest.raises(FormatError, match="refusing a zip bomb"):
        KerasArchive(str(p))


def test_config_without_class_name(tmp_path):
    p = tmp_path / "m.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", '{"hello": 1}')
    with pytest.raises(FormatError) as e:
        KerasArchive(str(p)).config
    assert str(e.value) == f"{p}: config.json is not a Keras model config (no class_name)"
