"""Class names stored in a `.keras` file: which output unit is which class.

A `.keras` archive's ``metadata.json`` holds Keras's own keys (``keras_version``,
``date_saved``); Keras 3.15 writes it and never reads it back. `surgery` adds one entry,
``{"surgery": {"class_names": ["circle", "square", ...]}}``, written by
``save_model(..., class_names=...)`` and read back here without TensorFlow: `inspect` shows it,
`evaluate` and `predict` use it, `finetune` checks new data against it.

The file is untrusted: the member's size is bounded, its JSON parsed with the archive's depth
and size limits, and the entry must be a list of distinct, non-empty strings, as many as the
head has units (two for a single sigmoid unit) where the config says how many; anything else
is one `FormatError` line naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from typing import Any, Sequence

from ..errors import FormatError, OptionError, ShapeError, SurgeryError
from .archive import SafeZip

__all__ = ["class_names", "check_class_names", "embed_class_names", "agreed_class_names",
           "names_of_origin",
           "head_units", "MAX_CLASSES", "MAX_CLASS_NAME", "MAX_METADATA_BYTES"]

MAX_CLASSES = 1_000_000
MAX_CLASS_NAME = 1000  # characters in one class name
MAX_METADATA_BYTES = 16 * 1024 * 1024
_MEMBER = "metadata.json"
_FIX = "re-save the model with surgery.save_model(model, path, class_names=[...])"
# layers after the head that keep its width (Sequential models)
_PASS_THROUGH = {"Activation", "Softmax", "Dropout", "ActivityRegularization", "GaussianNoise",
                 "GaussianDropout", "AlphaDropout"}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _fits(count: int, width: int) -> bool:
    """`count` names for a head of `width` units (one sigmoid unit: two classes)."""
    return count == width or (width == 1 and count == 2)


def check_class_names(names: Any, where: str, *, width: int | None = None,
                      error: type[SurgeryError] = FormatError) -> tuple[str, ...]:
    """`names` as a tuple of strings, or `error` naming `where` and what is wrong.

    Args:
        names: the candidate list.
        where: what to name in an error (``model.keras: metadata.json``).
        width: the head's width, when known: the count must match it (2 for one unit).
        error: the error class (`FormatError` for a file, `OptionError` for an argument).
    """
    head = f"{where}: class names"
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise error(f"{head} must be a list of strings, not {_type_name(names)}")
    if not names:
        raise error(f"{head} are an empty list; give one name per class")
    if len(names) > MAX_CLASSES:
        raise error(f"{head}: {len(names)} names, more than the {MAX_CLASSES} allowed")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise error(f"{head}: item {i} is {_type_name(name)}, not a string")
        if not name.strip():
            raise error(f"{head}: item {i} is empty; every class needs a name")
        if len(name) > MAX_CLASS_NAME:
            raise error(f"{head}: item {i} has {len(name)} characters, more than the "
                        f"{MAX_CLASS_NAME} allowed")
        if name in seen:
            raise error(f"{head}: {name!r} is both item {seen[name]} and item {i}; class "
                        "names must differ")
        seen[name] = i
    if width is not None and not _fits(len(names), width):
        units = f"{width} unit{'s' if width != 1 else ''}"
        raise error(f"{head}: {len(names)} names but the model's head has {units}; give "
                    f"{2 if width == 1 else width} names")
    return tuple(names)


def _layer_name(layer: Any) -> Any:
    if not isinstance(layer, dict):
        return None
    cfg = layer.get("config")
    return layer.get("name") or (cfg.get("name") if isinstance(cfg, dict) else None)


def _units(layer: Any) -> int | None:
    cfg = layer.get("config") if isinstance(layer, dict) else None
    units = cfg.get("units") if isinstance(cfg, dict) else None
    return units if isinstance(units, int) and not isinstance(units, bool) and units > 0 \
        else None


def head_units(config: Any) -> int | None:
    """The width of a model config's (only) output when it is a Dense layer's, else None."""
    inner = config.get("config") if isinstance(config, dict) else None
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list) or not layers:
        return None
    if config.get("class_name") == "Sequential":
        for layer in reversed(layers):
            if isinstance(layer, dict) and layer.get("class_name") in _PASS_THROUGH:
                continue
            return _units(layer)
        return None
    outputs = inner.get("output_layers")
    if isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], list):
        outputs = outputs[0]  # [["head", 0, 0]]: one output
    if not (isinstance(outputs, list) and outputs and isinstance(outputs[0], str)):
        return None
    found = [layer for layer in layers if _layer_name(layer) == outputs[0]]
    return _units(found[0]) if len(found) == 1 else None


def _read_metadata(archive: SafeZip, path: str) -> Any:
    info = archive.info(_MEMBER)
    if info.file_size > MAX_METADATA_BYTES:
        raise FormatError(f"{path}: {_MEMBER} declares {info.file_size} bytes, more than the "
                          f"{MAX_METADATA_BYTES} allowed; {_FIX}", path=path)
    return archive.read_json(_MEMBER)


def _entry(metadata: Any, path: str) -> Any:
    """The ``surgery.class_names`` value, or None where there is none."""
    where = f"{path}: {_MEMBER}"
    if not isinstance(metadata, dict):
        raise FormatError(f"{where} is {_type_name(metadata)}, not a JSON object; {_FIX}",
                          path=path)
    ours = metadata.get("surgery")
    if ours is None:
        return None
    if not isinstance(ours, dict):
        raise FormatError(f"{where}: \"surgery\" is {_type_name(ours)}, not a JSON object; "
                          f"{_FIX}", path=path)
    return ours.get("class_names")


def class_names(path: str | os.PathLike, *, width: int | None = None
                ) -> tuple[str, ...] | None:
    """The class names stored in a `.keras` file, or None when it stores none.

    Args:
        path: a `.keras` file.
        width: the head's width when the caller knows it (a loaded model); otherwise the
            config's output layer gives it when it is a Dense layer.

    Raises:
        InputError: the path can't be read. FormatError: not a zip, a damaged archive, or a
            ``metadata.json`` whose class names are not a list of distinct non-empty strings
            that fits the head.

    Example:
    ```python
    names = class_names("tuned.keras")  # ("circle", "ring", ...) or None
    ```
    """
    path = os.fspath(path)
    with SafeZip(path) as archive:
        if _MEMBER not in archive.members:
            return None
        names = _entry(_read_metadata(archive, path), path)
        if names is None:
            return None
        if width is None and "config.json" in archive.members:
            try:
                width = head_units(archive.read_json("config.json"))
            except FormatError:
                width = None  # the config's own problems are reported where it is used
    try:
        return check_class_names(names, f"{path}: {_MEMBER}", width=width)
    except FormatError as e:
        raise FormatError(f"{e}; {_FIX}", path=path) from None


def names_of_origin(path: str | None, width: int) -> tuple[str, ...] | None:
    """The class names a model's file stores, for a model descended from that file: None when
    the file stores none, or when the model's head (`width` units) no longer has as many
    classes (its head was replaced since: the file's names describe other units)."""
    if path is None or not str(path).lower().endswith(".keras"):
        return None
    names = class_names(path)
    return names if names and _fits(len(names), width) else None


def _new_metadata(archive: SafeZip, path: str, names: Sequence[str]) -> bytes:
    metadata = _read_metadata(archive, path) if _MEMBER in archive.members else {}
    if not isinstance(metadata, dict):
        metadata = {}
    ours = metadata.get("surgery")
    metadata["surgery"] = {**(ours if isinstance(ours, dict) else {}),
                           "class_names": list(names)}
    return json.dumps(metadata).encode()


def _copy_members(archive: SafeZip, out: zipfile.ZipFile, metadata: bytes) -> None:
    """Every member of `archive` into `out` in order, metadata.json replaced (or added first)."""
    if _MEMBER not in archive.members:
        out.writestr(_MEMBER, metadata)
    for name in archive.members:
        info = archive.info(name)
        new = zipfile.ZipInfo(name, info.date_time)
        new.compress_type = info.compress_type
        new.external_attr = info.external_attr
        if name == _MEMBER:
            out.writestr(new, metadata)
            continue
        new.file_size = info.file_size
        with archive.open_member(name) as src, \
                out.open(new, "w", force_zip64=info.file_size >= 1 << 31) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def embed_class_names(archive_path: str, names: Sequence[str], *, target: str,
                      width: int | None = None) -> None:
    """Rewrites the `.keras` archive at `archive_path` (a temporary file that `target` will be
    published from) with `names` in its ``metadata.json``, Keras's own keys kept.

    The new zip is written beside it under a temporary name recognisable as `target`'s (see
    `atomic`), then renamed over `archive_path`; on failure it is removed.

    Raises:
        OptionError: `names` is not a list of distinct non-empty strings fitting `width`.
    """
    from .atomic import TMP_MARK, _suffix

    names = check_class_names(names, target, width=width, error=OptionError)
    folder = os.path.dirname(os.path.abspath(archive_path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}{TMP_MARK}{os.getpid()}-",
                               suffix=_suffix(target), dir=folder)
    os.close(fd)
    try:
        with SafeZip(archive_path) as archive:
            metadata = _new_metadata(archive, target, names)
            with zipfile.ZipFile(tmp, "w") as out:
                _copy_members(archive, out, metadata)
        os.replace(tmp, archive_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def agreed_class_names(model_path: str | None, data_names: Sequence[str], *,
                       data_source: str, width: int | None = None) -> tuple[str, ...]:
    """The class names of a model trained on data: the data's (CSV names, image folders),
    which must be the ones the model's file stores, in the same order, when it stores any;
    else the stored ones; else none.

    Raises:
        ShapeError: the data's classes differ from the stored ones (both lists named, and
            the first place they differ).
        FormatError: the model's stored names are damaged (see `class_names`).
    """
    stored = None
    if model_path is not None and str(model_path).lower().endswith(".keras"):
        stored = names_of_origin(model_path, width) if width is not None else \
            class_names(model_path)
    data_names = tuple(data_names)
    if not stored or not data_names or stored == data_names:
        return data_names or stored or ()
    i = next((i for i, (a, b) in enumerate(zip(data_names, stored)) if a != b),
             min(len(data_names), len(stored)))
    here = repr(data_names[i]) if i < len(data_names) else "missing"
    there = repr(stored[i]) if i < len(stored) else "missing"
    raise ShapeError(f"{data_source}: its classes ({_listed(data_names)}) differ from the ones "
                     f"{model_path} stores ({_listed(stored)}): item {i} is {here} here and "
                     f"{there} there; give the data the model's classes in that order, or "
                     f"replace the head first: surgery head MODEL -o OUT --classes "
                     f"{len(data_names)}", path=data_source)
