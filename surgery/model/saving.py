"""`surgery.load_model` and `surgery.save_model`: checked loading, atomic saving.

Loading checks the file before Keras sees it (archive structure, config, safe mode, weights
readable) and turns every failure into one `SurgeryError` line. Saving writes beside the target
under a temporary name and renames it into place when complete, refusing to write over the
model's own input or an existing file unless asked.
"""

from __future__ import annotations

import os
import sys
import weakref
from typing import Any, Iterable, Mapping, Sequence

from ..errors import FormatError, InputError, OptionError, OutputError, SurgeryError
from ..io.declared import check_declared_widths
from ..io.keras2 import translate_config
from ..io.safety import check_config

__all__ = ["load_model", "save_model", "source_path", "import_trusted_modules"]

_ORIGINS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def source_path(model: Any) -> str | None:
    """The file a model was loaded from by `load_model`, if any."""
    try:
        return _ORIGINS.get(model)
    except TypeError:
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_model(path: Any, *, safe_mode: bool = True, custom_objects: Mapping | None = None,
               legacy: bool = False) -> Any:
    """Loads a `.keras` or Keras 2 `.h5` model after checking the file.

    Args:
        path: a `.keras` or legacy `.h5` file; a live Keras 3 / tf_keras model is returned as is.
        safe_mode: refuse Lambda layers and configs that reach outside Keras (default on).
        custom_objects: your own classes, by the name the config uses.
        legacy: load a Keras 2 `.h5` as a tf_keras model instead of a Keras 3 one.

    Returns:
        The model (Keras 3, or tf_keras with `legacy=True`).

    Raises:
        InputError: missing path, a SavedModel directory (use `open_weights` for its variables,
            `hub_layer` to call it), or a bare weights file.
        FormatError: a damaged file or one Keras can't rebuild.
        UnsafeModelError: safe mode refused the config.

    Example:
    ```python
    model = surgery.load_model("sample_models/cnn.keras")
    ```
    """
    from ..io.livemodels import is_live_model
    from ..io.sources import detect_format, open_weights

    if is_live_model(path):
        return path
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"can't load a model from a {type(path).__name__}; pass a path")
    path = os.fspath(path)
    kind = detect_format(path)
    if kind == "savedmodel":
        raise InputError(f"{path}: a SavedModel directory, which Keras 3 can't load as a model; "
                         "read its variables with surgery.open_weights(path), or call it as a "
                         "layer with surgery.hub_layer(path)", path=path)
    if kind in ("npz", "checkpoint", "safetensors", "safetensors.index.json"):
        raise InputError(f"{path}: a weights file without an architecture; load the model it "
                         "belongs to and transplant these weights into it", path=path)
    with open_weights(path) as src:  # structure, config and every dataset header checked
        if src.format in ("weights.h5", "weights.json"):
            raise InputError(f"{path}: a .{src.format} file holds no architecture; load the "
                             ".keras model and call model.load_weights() or surgery.transplant",
                             path=path)
        config = src.config
        if config is None:
            raise FormatError(f"{path}: a Keras 2 weights file without a model config; it holds "
                              "weights only", path=path)
        if safe_mode:
            check_config(config, path, custom_objects=custom_objects)
        check_declared_widths(src, path)  # before Keras builds (and allocates) anything
    keras2 = None
    if kind == "hdf5" and not legacy:  # Keras 2 -> Keras 3: removed/renamed arguments
        keras2, _ = translate_config(config, path)
    import_trusted_modules()
    _check_classes(config, path, custom_objects, legacy)
    model = _keras_load(path, safe_mode=safe_mode, custom_objects=custom_objects,
                        legacy=legacy, keras2_config=keras2)
    _ORIGINS[model] = os.path.realpath(path)
    return model


def import_trusted_modules() -> None:
    """Imports the modules named with `surgery.io.safety.trust_modules` (CLI: ``--import``),
    so that the classes they register with Keras are found; each error is one line."""
    import importlib

    from ..io.safety import trusted_modules

    for module in trusted_modules():
        try:
            importlib.import_module(module)
        except SurgeryError:
            raise
        except Exception as e:  # the user's package failed to import: say which and why
            raise InputError(f"--import {module}: importing it failed ({_first_line(e)}); "
                             "fix the package or drop --import") from None


def _pip_name(package: str) -> str:
    return package.replace("_", "-")


def _installed(package: str) -> bool:
    """Whether `package` can be imported, found without importing it."""
    import importlib.util

    if package in sys.modules:
        return True
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _check_classes(config, path, custom_objects, legacy) -> None:
    """Refuses, with one clear line, a config naming a class Keras can't find: a package
    that is not installed is named with the command that installs it."""
    if legacy or not isinstance(config, dict) or "module" not in config:
        return  # Keras 2 configs carry no module fields; tf_keras reports its own errors
    from ..io.safety import KERAS_PACKAGES, _walk, package_of
    from ..io.tfimport import keras

    k = keras()
    known = set(custom_objects or ())
    for item, layer in _walk(config, "<model>"):
        cls, module = item.get("class_name"), item.get("module")
        if not isinstance(cls, str) or "config" not in item or cls.startswith("__"):
            continue
        registered = item.get("registered_name")
        if (isinstance(module, str) and module.split(".")[0] == "keras") or cls in known or \
                registered in known:
            continue
        if registered and k.saving.get_registered_object(registered) is not None:
            continue
        what = registered or cls
        package = package_of(module) if isinstance(module, str) and module else ""
        if package and not _installed(package):
            raise FormatError(f"{path}: this model uses {what} (layer {layer!r}) from "
                              f"{package}, which is not installed: pip install "
                              f"{_pip_name(package)}", path=path)
        if package in KERAS_PACKAGES:
            continue  # installed, and Keras imports it by the module name as it loads
        if package and package not in sys.modules:
            raise FormatError(f"{path}: this model uses {what} (layer {layer!r}) from "
                              f"{package}, which registers it when imported: pass --import "
                              f"{package} (CLI) or import {package} first (Python)", path=path)
        raise FormatError(f"{path}: layer {layer!r} is of class {what!r}, which is "
                          "neither a Keras class nor registered; pass custom_objects= (Python) "
                          "or register it with keras.saving.register_keras_serializable", path=path)


def _keras_load(path, *, safe_mode, custom_objects, legacy, keras2_config=None):
    try:
        from ..io import tfimport

        if legacy:
            return tfimport.tf_keras().models.load_model(path, custom_objects=custom_objects,
                                                         compile=False)
        if keras2_config is not None:
            return _keras3_from_keras2(path, keras2_config, safe_mode=safe_mode,
                                       custom_objects=custom_objects)
        return tfimport.keras().saving.load_model(path, custom_objects=custom_objects, compile=False,
                                       safe_mode=safe_mode)
    except SurgeryError:
        raise
    except Exception as e:  # Keras raises many types; the user gets one line
        msg = _first_line(e)
        if "Could not locate" in msg or "Unknown layer" in msg or "Unknown" in msg:
            raise FormatError(f"{path}: {msg}; pass the class in custom_objects "
                              "(Python) or register it with keras.saving.register_keras_"
                              "serializable", path=path) from None
        raise FormatError(f"{path}: Keras could not rebuild the model ({msg})", path=path) from None


def _keras3_from_keras2(path: str, config: dict, *, safe_mode: bool, custom_objects):
    """A Keras 2 `.h5` model rebuilt as Keras 3 from its translated config (`io.keras2`),
    its weights loaded layer by layer in the file's order, as Keras's own `.h5` loader does."""
    import h5py

    from ..io.tfimport import keras

    keras()  # TensorFlow and Keras imported once, quietly
    from keras.src.legacy.saving import legacy_h5_format, saving_options, saving_utils
    from keras.src.saving import object_registration, serialization_lib

    objects = {**(custom_objects or {}), **object_registration.GLOBAL_CUSTOM_OBJECTS}
    with saving_options.keras_option_scope(use_legacy_config=True), \
            serialization_lib.SafeModeScope(safe_mode):
        model = saving_utils.model_from_config(config, custom_objects=objects)
        with h5py.File(path, "r") as f:
            legacy_h5_format.load_weights_from_hdf5_group(f["model_weights"], model)
    return model


def _save_kind(path: str, model: Any, max_shard_size: Any = None) -> str:
    name = os.path.basename(path).lower()
    from ..io.shards import check_sharded_output

    if check_sharded_output(path, max_shard_size) is not None:
        return "shards"
    if name.endswith(".weights.h5"):
        return "weights"
    if name.endswith(".keras"):
        return "keras"
    if name.endswith((".h5", ".hdf5")):
        return "h5"
    raise OutputError(f"{path}: unknown output kind; use a .keras (model), .h5 (Keras 2 model), "
                      ".weights.h5 (weights only) or .weights.json (sharded weights, with "
                      "max_shard_size) file name", path=path)


def _save_shards(model: Any, path: str, max_shard_size: Any, *, inputs: list,
                 overwrite: bool) -> str:
    """Keras 3 sharded weights: Keras writes the whole `.weights.h5` into a scratch folder
    beside `path` (its own layout, every variable Keras saves), which is then split into
    shards and published as a set (`write_keras_shards`); the scratch folder is removed."""
    import shutil
    import tempfile

    import h5py

    from ..errors import UnsupportedModelError
    from ..io.atomic import TMP_MARK, _sigterm_as_interrupt, _write_error, check_output, \
        clean_stale
    from ..io.shards import parse_size, write_keras_shards

    if not type(model).__module__.startswith("keras"):
        raise UnsupportedModelError(f"{path}: sharded weights are written for Keras 3 models; "
                                    "convert this tf_keras model first (surgery convert), or "
                                    "save it as .h5", path=path)
    limit = parse_size(max_shard_size)
    check_output(path, inputs=inputs, overwrite=overwrite)  # before Keras writes anything
    clean_stale(path, inputs=inputs, folder=True)  # scratch folders of killed saves
    folder = os.path.dirname(os.path.abspath(path))
    with _sigterm_as_interrupt():
        try:
            scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}{TMP_MARK}"
                                       f"{os.getpid()}-", dir=folder)
        except OSError as e:
            raise _write_error(path, e) from None
        try:
            whole = os.path.join(scratch, "model.weights.h5")
            try:
                model.save_weights(whole)
            except OSError as e:
                raise _write_error(path, e) from None
            except Exception as e:
                raise OutputError(f"{path}: Keras could not write the weights "
                                  f"({_first_line(e)}); nothing was written", path=path) from None
            with h5py.File(whole, "r") as h5:
                write_keras_shards(h5, path, limit, inputs=inputs, overwrite=overwrite,
                                   where=path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return path


def save_model(model: Any, path: Any, *, overwrite: bool = False,
               inputs: Iterable[Any] = (), class_names: Sequence[str] | None = None,
               max_shard_size: Any = None) -> str:
    """Saves a model atomically.

    Args:
        model: a Keras 3 or tf_keras model.
        path: `.keras`, `.h5` (Keras 2 format), `.weights.h5` (weights only) or
            `.weights.json` (Keras 3 sharded weights, with `max_shard_size`: the index, its
            shards ``<name>_00000.weights.h5``, ... beside it, written as a set: all or none;
            `model.load_weights(path)` reads them).
        overwrite: replace an existing file.
        inputs: more paths the output must not be (the model's own source is always checked).
        class_names: the name of each output unit's class, stored in the `.keras` file's
            ``metadata.json`` (read back by `surgery.class_names`, `inspect`, `predict`); as
            many as the head has units (two for one sigmoid unit). `.keras` only.
        max_shard_size: the largest shard for a `.weights.json` path: bytes (int) or a
            string, "2GB", "500MB", "10KB", "512MiB" (`surgery.io.shards.parse_size`); a
            variable larger than that gets a shard of its own.

    Returns:
        The path written.

    Raises:
        OutputError: the path is an input, exists without `overwrite`, its folder is missing
            or is a file, or Keras failed to write; nothing is left behind.
        OptionError: `class_names` that don't fit the head, or for a file other than `.keras`;
            a `.weights.json` path without `max_shard_size`, or `max_shard_size` for another.

    Example:
    ```python
    surgery.save_model(model, "out/finetuned.keras", overwrite=True)
    ```
    """
    from ..io.atomic import atomic_path
    from ..io.livemodels import is_live_model

    if not is_live_model(model):
        raise InputError(f"save_model needs a Keras model, got a {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise OutputError(f"save_model needs a file path, got {type(path).__name__}")
    path = os.fspath(path)
    kind = _save_kind(path, model, max_shard_size)
    if class_names is not None and kind != "keras":
        raise OptionError(f"{path}: class names are stored only in .keras files; save to a "
                          ".keras path or drop class_names", path=path)
    if class_names is not None:  # before anything is written
        from ..io.classnames import check_class_names

        check_class_names(class_names, path, width=_head_width(model), error=OptionError)
    origin = source_path(model)
    if kind == "shards":
        return _save_shards(model, path, max_shard_size, inputs=[origin, *inputs],
                            overwrite=overwrite)
    with atomic_path(path, inputs=[origin, *inputs], overwrite=overwrite) as tmp:
        try:
            if kind == "weights":
                model.save_weights(tmp)
            elif kind == "h5" and type(model).__module__.startswith("keras"):
                from ..io.tfimport import keras

                keras().src.legacy.saving.legacy_h5_format.save_model_to_hdf5(model, tmp)
            else:
                model.save(tmp)
            if class_names is not None:
                from ..io.classnames import embed_class_names

                embed_class_names(tmp, class_names, target=path, width=_head_width(model))
        except SurgeryError:
            raise
        except Exception as e:
            raise OutputError(f"{path}: Keras could not write the model ({_first_line(e)}); "
                              "nothing was written", path=path) from None
    return path


def _head_width(model: Any) -> int | None:
    """The width of the model's (only) output, when it has one."""
    try:
        outputs = model.outputs
        return int(outputs[0].shape[-1]) if len(outputs) == 1 else None
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
