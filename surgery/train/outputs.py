"""Files a fine-tuning run writes besides the model: metrics JSON, curves PNG, LoRA adapters,
and the per-epoch checkpoint folder (`TrainingCheckpoint`).

Each file is written atomically (`atomic_path`). The plot needs matplotlib, an optional extra
(``pip install 'surgery[plot]'``); without it `--plot` fails before training with a clear
message.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import warnings
from typing import Any, Sequence

import numpy as np

from ..io.atomic import _inside, atomic_path
from ..errors import FormatError, InputError, OptionError, OutputError, OutputExists

__all__ = ["write_metrics", "write_plot", "write_adapters", "require_matplotlib",
           "check_adapters", "check_beside_checkpoint",
           "TrainingCheckpoint", "CHECKPOINT_MARKER", "weights_hash", "arrays_hash"]


def require_matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OptionError("--plot needs matplotlib, which is not installed; run "
                          "pip install 'surgery[plot]' (or drop --plot)") from None
    return plt


def write_metrics(result: Any, path: str, *, overwrite: bool = False,
                  inputs: Sequence = ()) -> str:
    """Per-epoch metrics (loss, metrics, seconds, trainable/frozen params) as JSON."""
    with atomic_path(path, inputs=inputs, overwrite=overwrite) as tmp:
        with open(tmp, "w") as f:
            json.dump(result.to_dict(), f, indent=2, default=str)
            f.write("\n")
    return path


def write_plot(result: Any, path: str, *, overwrite: bool = False,
               inputs: Sequence = ()) -> str:
    """Training curves: one panel for the losses, one for each other metric; a dashed
    vertical line in each marks the best epoch, whose weights the trained model holds."""
    plt = require_matplotlib()
    history = result.history
    keys = [k for k in history if not k.startswith("val_") and k not in (
        "seconds", "trainable_params", "frozen_params")]
    epochs = [e["epoch"] for e in result.epochs]
    best = getattr(result, "best_epoch", None)
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(5 * max(1, len(keys)), 3.5))
    axes = np.atleast_1d(axes)
    for ax, key in zip(axes, keys):
        ax.plot(epochs, history[key], marker="o", label=key)
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], marker="o", label=f"val_{key}")
        if best is not None:
            ax.axvline(best, color="0.4", linestyle="--", linewidth=1,
                       label=f"best epoch {best} (saved)")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path, inputs=inputs, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path


def write_adapters(adapters: dict, path: str, *, overwrite: bool = False,
                   inputs: Sequence = ()) -> str:
    """LoRA adapter weights (``<layer>/lora_kernel_a|b``) as an .npz."""
    check_adapters(adapters)
    with atomic_path(path, inputs=inputs, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **adapters)
    return path


def check_adapters(adapters: dict) -> None:
    """Raises `OptionError` when there are no LoRA adapters to save (no ``--lora-rank``)."""
    if not adapters:
        raise OptionError("--save-adapters needs --lora-rank: there are no adapters to save")


def check_beside_checkpoint(folder: str | None, outputs: Sequence, *,
                            inputs: Sequence = ()) -> None:
    """Refuses an output that is the checkpoint folder itself, or lies inside it (its files
    are removed after the run). A folder that holds an input is left to `TrainingCheckpoint`,
    whose refusal names that input.

    Raises:
        OutputError: naming the output and the checkpoint folder.
    """
    if not folder:
        return
    real = os.path.realpath(folder)
    holds_input = any(r and (_inside(r, folder) or os.path.realpath(r) == real)
                      for r in inputs if isinstance(r, (str, os.PathLike)))
    for path in outputs:
        if not path:
            continue
        if os.path.realpath(path) == real:
            raise OutputError(f"{folder}: is also the output {path} of this command; give "
                              "each output its own path", path=path)
        if _inside(path, folder) and not holds_input:
            raise OutputError(f"{path}: is inside the checkpoint folder {folder}, whose files "
                              "are removed after the run; write it outside that folder",
                              path=path)


# ---------------------------------------------------------------- the per-epoch checkpoint

CHECKPOINT_MARKER = "surgery-checkpoint.json"
_STATE, _LAST, _BEST = "state.json", "last.weights.h5", "best.weights.h5"
_FORMAT, _VERSION = "surgery finetune checkpoint", 1
_MAX_STATE = 16 * 2**20  # a state.json is a few KB; refuse to read a huge one


def weights_hash(model: Any) -> str:
    """sha256 over a model's weights: canonical path, dtype, shape and bytes of each."""
    from ..io.sources import open_weights

    h = hashlib.sha256()
    with open_weights(model) as w:
        for info in w.variables():
            a = np.ascontiguousarray(w.read(info.path))
            h.update(f"{info.path}|{a.dtype.str}|{a.shape}\n".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def arrays_hash(*arrays: Any) -> str:
    """sha256 over arrays (None included as a marker): dtype, shape and bytes of each."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none\n")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _damaged(path: str, what: str) -> FormatError:
    return FormatError(f"{path}: {what}; the checkpoint is damaged: start over with --overwrite "
                       "(overwrite=True)", path=path)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_state(path: str, state: Any) -> dict:
    """Types and ranges of a state.json; one FormatError line naming the first bad key."""
    if not isinstance(state, dict):
        raise _damaged(path, f"holds a JSON {_type_name(state)}, not an object")
    kinds = {"format": (str,), "version": (int,), "epoch": (int,), "epochs": (list,),
             "best": (int, float, type(None)), "best_epoch": (int, type(None)),
             "wait": (int,), "fingerprint": (dict,), "model_sha256": (str,),
             "data_sha256": (str,), "settings": (dict,)}
    for key, types in kinds.items():
        if key not in state:
            raise _damaged(path, f"has no {key!r}")
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise _damaged(path, f"{key!r} is {_type_name(value)}, expected {want}")
    if state["format"] != _FORMAT or state["version"] != _VERSION:
        raise _damaged(path, f"is not a {_FORMAT} of version {_VERSION} (format "
                             f"{state['format']!r}, version {state['version']})")
    epoch = state["epoch"]
    if epoch < 1 or len(state["epochs"]) != epoch or not all(
            isinstance(e, dict) for e in state["epochs"]):
        raise _damaged(path, f"'epoch' is {epoch} but 'epochs' holds {len(state['epochs'])} "
                             "records")
    for i, record in enumerate(state["epochs"], 1):
        if not _is_int(record.get("epoch")) or record["epoch"] != i:
            raise _damaged(path, f"record {i} of 'epochs' has 'epoch' "
                                 f"{json.dumps(record.get('epoch'))}, expected {i}")
        if "loss" not in record:
            raise _damaged(path, f"record {i} of 'epochs' has no 'loss'")
        bad = next((k for k, v in record.items() if isinstance(v, bool) or
                    not isinstance(v, (int, float))), None)
        if bad is not None:
            raise _damaged(path, f"record {i} of 'epochs': {bad!r} is "
                                 f"{_type_name(record[bad])}, expected a number")
    if state["best"] is not None and not math.isfinite(state["best"]):
        raise _damaged(path, f"'best' is {state['best']}, expected a finite number or null")
    if state["best_epoch"] is not None and not 1 <= state["best_epoch"] <= epoch:
        raise _damaged(path, f"'best_epoch' {state['best_epoch']} is outside 1..{epoch}")
    if state["wait"] < 0:
        raise _damaged(path, f"'wait' is {state['wait']}, below 0")
    for key, shape in state["fingerprint"].items():
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise _damaged(path, f"the shape of {key!r} is {shape!r}, expected a list of sizes")
    return state


def _setting_diff(saved: dict, now: dict) -> list[str]:
    keys = [k for k in dict.fromkeys([*saved, *now]) if k != "epochs"]
    return [f"--{k.replace('_', '-')} {json.dumps(saved.get(k))} (checkpoint) vs "
            f"{json.dumps(now.get(k))} (now)" for k in keys if saved.get(k) != now.get(k)]


class TrainingCheckpoint:
    """A `finetune` run's per-epoch checkpoint folder, and the best epoch's weights.

    The folder holds only files of its own: the marker ``surgery-checkpoint.json`` (written
    first, when this class creates the folder), ``state.json`` (epoch, per-epoch records,
    early-stopping state, the input model's weights hash and variable shapes, the data's hash
    and the run's settings), ``last.weights.h5`` (weights and optimizer state) and
    ``best.weights.h5``. Every file is written atomically. A folder without the marker is
    never written, reused or deleted; an earlier checkpoint needs ``resume`` (same model, data
    and settings; more epochs allowed) or ``overwrite``. A finished run removes its own files,
    then the folder if that leaves it empty. Without a folder the best weights stay in memory.

    Args:
        folder: the checkpoint folder, or None.
        model: the input model as given (hashed before anything changes it).
        data_arrays: the training and validation arrays (hashed).
        settings: the run's settings (JSON-able); on resume each must be the same.
        resume, overwrite: continue an earlier checkpoint / start over.
        inputs: paths the run reads; the folder may not be, hold or lie inside one.
    """

    def __init__(self, folder: str | None, *, model: Any, data_arrays: tuple, settings: dict,
                 resume: bool = False, overwrite: bool = False, inputs: tuple = ()):
        self.folder = os.fspath(folder).rstrip("/") or "/" if folder else None
        self.epochs: list[dict] = []
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.first = 0
        self._best_weights: list | None = None
        self._cleared = False
        self._state: dict | None = None
        if resume and not self.folder:
            raise OptionError("--resume needs a checkpoint folder (--checkpoint DIR, default "
                              "OUT.ckpt)")
        if not self.folder:
            return
        self._check_folder(inputs)
        from .finetune import fingerprint

        self.identity = {"fingerprint": fingerprint(model), "model_sha256": weights_hash(model),
                         "data_sha256": arrays_hash(*data_arrays),
                         "settings": json.loads(json.dumps(settings, default=str))}
        if os.path.isdir(self.folder):
            if resume:
                self._state = self._read_state()
                self._compare(self._state, settings)
            elif not overwrite:
                raise OutputExists(f"{self.folder}: holds the checkpoint of an earlier run; pass "
                                   "--resume to continue it or --overwrite to start over",
                                   path=self.folder)
        elif resume:
            raise InputError(f"{self.folder}: no checkpoint to resume from (no such folder); "
                             "run without --resume", path=self.folder)

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def _check_folder(self, inputs) -> None:
        from ..io.atomic import _input_paths, _inside, _same_file

        folder = self.folder
        for inp in _input_paths(inputs):
            if _same_file(folder, inp) or _inside(inp, folder):
                raise OutputError(f"{folder}: the checkpoint folder holds the input {inp}; give "
                                  "--checkpoint a folder of its own (surgery never writes "
                                  "into or deletes its inputs)", path=folder)
            if os.path.isdir(inp) and _inside(folder, inp):
                raise OutputError(f"{folder}: is inside the input folder {inp}; give "
                                  "--checkpoint a folder outside it (surgery never writes "
                                  "into its inputs)", path=folder)
        if not os.path.lexists(folder):
            parent = os.path.dirname(os.path.abspath(folder))
            if not os.path.isdir(parent):
                raise OutputError(f"{folder}: the folder {parent} does not exist; create it "
                                  "first or choose another --checkpoint folder", path=folder)
            return
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a folder"
            raise OutputError(f"{folder}: is {what}; give --checkpoint a folder path that "
                              "surgery can create", path=folder)
        marker = os.path.join(folder, CHECKPOINT_MARKER)
        if not os.path.isfile(marker) or os.path.islink(marker):
            raise OutputError(f"{folder}: is a folder surgery did not create (no "
                              f"{CHECKPOINT_MARKER} in it); surgery never reuses or deletes "
                              "it, so give --checkpoint a new folder", path=folder)

    def _read_state(self) -> dict:
        path = self._path(_STATE)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise InputError(f"{self.folder}: no checkpoint to resume from (state.json "
                             "missing); start over with --overwrite (overwrite=True)",
                             path=self.folder) from None
        if not stat.S_ISREG(st.st_mode):
            raise _damaged(path, "is not a regular file")
        if st.st_size > _MAX_STATE:
            raise _damaged(path, f"is {st.st_size:,} bytes, more than a state file can be")
        try:
            with open(path, "rb") as f:
                state = json.loads(f.read(_MAX_STATE + 1).decode("utf-8"))
        except UnicodeDecodeError:
            raise _damaged(path, "is not UTF-8 text") from None
        except ValueError as e:
            raise _damaged(path, f"is not valid JSON ({str(e).splitlines()[0]})") from None
        state = _check_state(path, state)
        for name, needed in ((_LAST, True), (_BEST, state["best_epoch"] not in (None,
                                                                                state["epoch"]))):
            if needed and not os.path.isfile(self._path(name)):
                raise _damaged(self._path(name), "is missing")
        return state

    def _compare(self, state: dict, settings: dict) -> None:
        from .finetune import fingerprint_diff

        now = self.identity
        diff = fingerprint_diff(state["fingerprint"], now["fingerprint"])
        if diff:
            raise InputError(f"{self.folder}: the checkpoint belongs to another model ({diff});"
                             " start without --resume or use the matching model", path=self.folder)
        if state["model_sha256"] != now["model_sha256"]:
            raise InputError(f"{self.folder}: the checkpoint was started from other weights of "
                             f"this architecture (weights sha256 {state['model_sha256'][:12]} "
                             f"in the checkpoint vs {now['model_sha256'][:12]} now); resume "
                             "with the model the run started from, or start over with "
                             "--overwrite", path=self.folder)
        if state["data_sha256"] != now["data_sha256"]:
            raise InputError(f"{self.folder}: the checkpoint was trained on other data (sha256 "
                             f"{state['data_sha256'][:12]} in the checkpoint vs "
                             f"{now['data_sha256'][:12]} now); resume with the same --data, "
                             "--val, --val-split and --label, or start over with --overwrite",
                             path=self.folder)
        changed = _setting_diff(state["settings"], now["settings"])
        if changed:
            raise OptionError(f"{self.folder}: the checkpoint's run had other settings: "
                              f"{'; '.join(changed)}; resume with the same settings (only "
                              "--epochs may grow), or start over with --overwrite")
        wanted = now["settings"].get("epochs")
        if _is_int(wanted) and wanted < state["epoch"]:
            raise OptionError(f"{self.folder}: the checkpoint already holds {state['epoch']} "
                              f"epochs; ask for at least {state['epoch']} (--epochs "
                              f"{state['epoch']}) or start over with --overwrite")

    def restore(self, model: Any) -> int:
        """Loads the checkpoint's weights and optimizer state; returns the epochs done."""
        if self._state is None:
            return 0
        state = self._state
        model.optimizer.build(model.trainable_variables)
        self._load(model, self._path(_LAST))
        self.epochs = list(state["epochs"])
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], \
            state["wait"]
        self.first = int(state["epoch"])
        return self.first

    def _load(self, model: Any, path: str) -> None:
        """`model.load_weights(path)`, all or nothing: a damaged file leaves `model` as it was
        and raises one FormatError line."""
        import h5py

        if not os.path.isfile(path) or os.path.islink(path):
            raise _damaged(path, "is missing")
        try:
            with h5py.File(path, "r"):
                pass
        except OSError:
            raise _damaged(path, "is not a readable HDF5 file (truncated or overwritten)") \
                from None
        snapshot = [np.array(v.numpy()) for v in model.weights]
        optimizer = getattr(model, "optimizer", None)
        slots = [np.array(v.numpy()) for v in optimizer.variables] if optimizer else []
        why = None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.load_weights(path)
            # Keras only warns when it skips variables (an optimizer without its state)
            if any("Skipping variable loading" in str(w.message) for w in caught):
                why = "Keras skipped some of its variables"
        except Exception as e:  # h5py and Keras raise many kinds for a damaged file
            why = type(e).__name__
        if why:
            for v, value in [*zip(model.weights, snapshot),
                             *zip(optimizer.variables if optimizer else [], slots)]:
                v.assign(value)
            raise _damaged(path, f"does not hold this model's weights and optimizer state "
                                 f"({why})")

    def save(self, model: Any, epoch: int, improved: bool) -> None:
        """Records epoch `epoch` (1-based): the last weights, the best ones, the state."""
        if improved and not self.folder:
            self._best_weights = [np.array(v.numpy()) for v in model.weights]
        if not self.folder:
            return
        self._prepare()
        with atomic_path(self._path(_LAST), overwrite=True) as tmp:
            model.save_weights(tmp, overwrite=True)
        if improved:
            with atomic_path(self._path(_BEST), overwrite=True) as tmp:
                shutil.copyfile(self._path(_LAST), tmp)
        state = {"format": _FORMAT, "version": _VERSION, "epoch": epoch, "epochs": self.epochs,
                 "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                 **self.identity}
        with atomic_path(self._path(_STATE), overwrite=True) as tmp:
            with open(tmp, "w") as f:
                json.dump(state, f, default=str)

    def _prepare(self) -> None:
        """Before the first write: create the folder (marker first), or clear an earlier
        run's files (state.json first, so that a half-cleared folder is never resumed)."""
        if self._cleared:
            return
        if not os.path.isdir(self.folder):
            try:
                os.mkdir(self.folder)
            except OSError as e:
                raise OutputError(f"{self.folder}: can't create the checkpoint folder "
                                  f"({e.strerror}); choose another --checkpoint folder",
                                  path=self.folder) from None
            with atomic_path(self._path(CHECKPOINT_MARKER)) as tmp:
                with open(tmp, "w") as f:
                    json.dump({"format": _FORMAT, "version": _VERSION}, f)
        elif self.first == 0:
            self._remove(_STATE, _LAST, _BEST)
        self._cleared = True

    def _remove(self, *names: str) -> None:
        from ..io.atomic import clean_stale

        for name in names:
            path = self._path(name)
            clean_stale(path)
            if os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)

    def load_best(self, model: Any) -> None:
        """Puts the best epoch's weights into `model` (when it isn't the last epoch)."""
        if self.best_epoch is None or self.best_epoch == len(self.epochs):
            return
        if self.folder:
            self._load(model, self._path(_BEST))
        elif self._best_weights is not None:
            for v, value in zip(model.weights, self._best_weights):
                v.assign(value)

    def finish(self) -> None:
        """Removes the files this checkpoint wrote, then the folder if it is left empty."""
        if not self.folder or not os.path.isdir(self.folder):
            return
        self._remove(_STATE, _LAST, _BEST, CHECKPOINT_MARKER)
        try:
            os.rmdir(self.folder)
        except OSError:
            pass  # it holds files of someone else's: they stay
