"""Weight sources over Keras files, read with h5py (no TensorFlow).

`.keras` archives, Keras 3 `.weights.h5` (named through an architecture) and Keras 2 legacy
`.h5` files (full models and `save_weights` files).
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from .archive import MAX_JSON_BYTES, KerasArchive, parse_json, read_small_file
from ..entries import VariableInfo
from ..errors import FormatError, InputError, ShapeError
from .h5layout import (guard, keras3_entries, legacy_entries, open_h5,
                       read_dataset)
from .sources import WeightSource

__all__ = ["KerasFileSource", "H5WeightsSource", "LegacyH5Source",
           "open_hdf5", "read_architecture"]


class _H5Source(WeightSource):
    def __init__(self, name, h5, variables, layers, config, owned=()):
        self._h5 = h5
        self._owned = list(owned)
        try:
            super().__init__(name, variables, layers, config)
        except Exception:
            self.close()
            raise

    def _read(self, info: VariableInfo) -> np.ndarray:
        if self._h5 is None:
            raise FormatError(f"{self.name}: the source is closed")
        with guard(self.name):
            ds = self._h5[info.key]
        return read_dataset(ds, self.name)

    def close(self) -> None:
        if self._h5 is not None:
            try:
                self._h5.close()
            finally:
                self._h5 = None
                for f in self._owned:
                    f.close()


class KerasFileSource(_H5Source):
    """A Keras 3 `.keras` archive: config and weights read straight from the zip."""

    format = "keras"

    def __init__(self, path: str):
        archive = KerasArchive(path)
        try:
            config = archive.config
            member = archive.open_member("model.weights.h5")
        except Exception:
            archive.close()
            raise
        h5 = open_h5(member, f"{path}: model.weights.h5")
        try:
            with guard(path):
                variables, layers = keras3_entries(h5, config, path)
        except Exception:
            h5.close()
            member.close()
            archive.close()
            raise
        super().__init__(path, h5, variables, layers, config, owned=(member, archive))


class H5WeightsSource(_H5Source):
    """A Keras 3 `.weights.h5`, named through an architecture when one is given."""

    format = "weights.h5"

    def __init__(self, path: str, h5: h5py.File, architecture: Any = None):
        config, reference = read_architecture(architecture) if architecture is not None else \
            (None, None)
        try:
            with guard(path):
                variables, layers = keras3_entries(h5, config, path)
            if reference is not None:
                _check_against(path, variables, reference, architecture)
        except Exception:
            h5.close()
            raise
        super().__init__(path, h5, variables, layers, config)


class LegacyH5Source(_H5Source):
    """A Keras 2 (tf_keras) `.h5` model or weights file."""

    format = "legacy-h5"

    def __init__(self, path: str, h5: h5py.File):
        try:
            with guard(path):
                variables, layers, config = legacy_entries(h5, path)
        except Exception:
            h5.close()
            raise
        super().__init__(path, h5, variables, layers, config)


def read_architecture(architecture: Any) -> tuple[dict, dict[str, tuple] | None]:
    """Reads a model config from a `.keras` file or a `config.json`.

    Returns:
        (config, shapes): `shapes` maps canonical paths to shapes when the architecture is a
        `.keras` (whose own weights give them), else None.
    """
    if isinstance(architecture, dict):
        return architecture, None
    path = os.fspath(architecture)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such architecture file (pass a .keras or config.json)",
                         path=path)
    if path.lower().endswith(".json"):
        config = parse_json(read_small_file(path, "architecture file", MAX_JSON_BYTES), path)
        if not isinstance(config, dict) or "class_name" not in config:
            raise FormatError(f"{path}: not a Keras model config (no class_name)", path=path)
        return config, None
    with KerasFileSource(path) as src:
        return src.config, {v.path: v.shape for v in src.variables()}


def _check_against(path, variables, reference, architecture) -> None:
    for v in variables:
        want = reference.get(v.path)
        if want is not None and tuple(want) != v.shape:
            raise ShapeError(f"{path}: {v.path} has shape {v.shape} but the architecture "
                             f"{os.fspath(architecture)} has {tuple(want)}; these weights belong "
                             "to another model")


def open_hdf5(path: str, *, architecture: Any = None) -> WeightSource:
    """Opens an HDF5 file as a Keras 3 `.weights.h5` or a Keras 2 `.h5` source."""
    h5 = open_h5(path, path)
    try:
        with guard(path):
            kind = "keras3" if ("layers" in h5 or "vars" in h5) else \
                "legacy" if ("model_weights" in h5 or "layer_names" in h5.attrs) else None
    except Exception:
        h5.close()
        raise
    if kind == "keras3":
        return H5WeightsSource(path, h5, architecture)
    if kind == "legacy":
        if architecture is not None:
            h5.close()
            raise InputError(f"{path}: a Keras 2 .h5 names its own variables; drop "
                             "architecture=/--architecture", path=path)
        return LegacyH5Source(path, h5)
    h5.close()
    raise FormatError(f"{path}: an HDF5 file that is neither Keras 3 weights nor a Keras 2 "
                      "model; surgery can't tell which variables it holds", path=path)
