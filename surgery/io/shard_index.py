"""The index of a sharded set of weights: reading and checking one, naming an output, packing one.

An index is JSON, ``{"metadata": {...}, "weight_map": {name: shard}}``: a tensor name and its
``.safetensors`` shard (Hugging Face), or an HDF5 group (``/layers/dense/vars``) and the list of
``.weights.h5`` shards holding its variables (Keras). Index and shards are untrusted:

- `read_index`: the index must be a JSON object with a non-empty ``weight_map`` that lists no
  name twice;
- `_shard_paths`: every shard must be a regular file inside the index's folder: no absolute
  path, no ``..``, no symbolic link leading out of the folder, no FIFO, device or folder; a
  missing shard is named. (What each shard holds is checked by the sources, `shards.py`.)

`index_files` lists the files an index names (best effort), so that no output is written over
one of them; `check_sharded_output` checks that an output's name and its shard size go together.

For the writers (`keras_shards.py`, `safetensors_shards.py`): `ShardedOutput`, what a sharded
write produced; `_pack`, which packs tensors in order (a shard is closed when the next tensor
would take it past the limit, and a tensor larger than the limit gets a shard of its own); and
`_dump_index`, which writes the index JSON (the writers import it: a test that patches it
patches it in the writer's module, `keras_shards._dump_index`).

Moved from `shards.py`, which still exports every public name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from typing import Any, Iterable

from .archive import MAX_JSON_BYTES, parse_json, read_small_file
from ..errors import FormatError, InputError, OptionError, OutputError, SurgeryError
from .sizes import parse_size

__all__ = ["read_index", "index_files", "check_sharded_output", "ShardedOutput",
           "INDEX_SUFFIXES"]

INDEX_SUFFIXES = (".safetensors.index.json", ".weights.json")
_AGAIN = "the index and its shards come from different saves; save or download them again"


class _Object(dict):
    """A JSON object that remembers the keys given twice (`json` keeps the last silently)."""

    def __init__(self, pairs):
        super().__init__()
        self.repeated: list[tuple[str, Any, Any]] = []
        for key, value in pairs:
            if key in self:
                self.repeated.append((key, self[key], value))
            self[key] = value


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_index(path: str, *, lists: bool) -> dict[str, list[str]]:
    """Reads and checks an index: ``weight_map`` as name -> shard file names (in order).

    Args:
        path: the index file.
        lists: whether a name may map to a list of shards (Keras) or only to one (Hugging Face).

    Raises:
        InputError: the index is not a readable regular file.
        FormatError: not JSON, no ``weight_map`` object, an empty one, a name listed twice, or
            a value that is not a shard file name (or a non-empty list of them).
    """
    data = read_small_file(path, "weights index", MAX_JSON_BYTES)
    parse_json(data, path)  # size, depth and syntax, before the second (pair-keeping) parse
    index = json.loads(data.decode("utf-8"), object_pairs_hook=_Object)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise FormatError(f"{path}: not a sharded weights index (no \"weight_map\" object); pass "
                          "the index file saved beside the shards", path=path)
    if not isinstance(index.get("metadata", {}), dict):
        raise FormatError(f"{path}: the index's \"metadata\" is not an object; refusing a "
                          "malformed index", path=path)
    if weight_map.repeated:
        name, first, second = weight_map.repeated[0]
        raise FormatError(f"{path}: the index lists {_short(name)} twice (in {_short(first)} "
                          f"and {_short(second)}); refusing an ambiguous index", path=path)
    if not weight_map:
        raise FormatError(f"{path}: the index's weight_map is empty; it names no weights",
                          path=path)
    out: dict[str, list[str]] = {}
    for name, value in weight_map.items():
        files = value if lists and isinstance(value, list) else [value]
        if not files or not all(isinstance(f, str) and f and "\x00" not in f for f in files):
            what = "a shard file name or a list of them" if lists else "a shard file name"
            raise FormatError(f"{path}: the index maps {_short(name)} to {_short(value)}, not "
                              f"{what}; refusing a malformed index", path=path)
        out[name] = list(dict.fromkeys(files))
    return out


def _shard_path(path: str, folder: str, name: str) -> str:
    """The checked path of shard `name` of the index `path` (in `folder`)."""
    where = f"{path}: shard {_short(name, 400)}"  # a path: long, but must be named whole
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        raise FormatError(f"{where} is an absolute path; an index may name only files in its "
                          "own folder; refusing it", path=path)
    if ".." in name.replace("\\", "/").split("/"):
        raise FormatError(f"{where} points outside the index's folder (..); an index may name "
                          "only files in its own folder; refusing it", path=path)
    full = os.path.join(folder, name)
    real, base = os.path.realpath(full), os.path.realpath(folder)
    if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
        raise FormatError(f"{where} leads through a symbolic link to {real}, outside the "
                          "index's folder; copy the shard files into the folder beside the "
                          "index", path=path)
    try:
        mode = os.stat(full).st_mode
    except FileNotFoundError:
        raise InputError(f"{where} is missing from {folder}; put every shard the index names "
                         "beside it", path=path) from None
    except OSError as e:
        raise InputError(f"{where} can't be read ({e.strerror})", path=path) from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"
        raise InputError(f"{where} is {kind}, not a regular file; pass real shard files",
                         path=path)
    return full


def _shard_paths(path: str, shards: list[str]) -> dict[str, str]:
    folder = os.path.dirname(os.path.abspath(path))
    return {name: _shard_path(path, folder, name) for name in shards}


def index_files(path: str) -> list[str]:
    """The shard files an index names, best effort (unchecked, [] when it can't be read): the
    files a command reads through `path`, so that no output is written over one of them."""
    path = os.fspath(path)
    if not path.lower().endswith(INDEX_SUFFIXES) or not os.path.isfile(path):
        return []
    try:
        weight_map = read_index(path, lists=True)
    except (SurgeryError, ValueError):
        return []
    folder = os.path.dirname(os.path.abspath(path))
    names = dict.fromkeys(f for files in weight_map.values() for f in files)
    return [os.path.join(folder, name) for name in names]


_KERAS_INDEX, _HF_INDEX = ".weights.json", ".safetensors.index.json"


def check_sharded_output(path: str, max_shard_size: Any, *, kind: str = "keras",
                         what: str = "max_shard_size") -> int | None:
    """Checks that an output's name and its shard size go together, before anything is read.

    Args:
        path: the output the user named.
        max_shard_size: None, or a size `parse_size` reads.
        kind: what the command writes: "keras" (a Keras model or weights: sharded as
            ``.weights.json``) or "safetensors" (a state dict: ``.safetensors.index.json``).
        what: the option's name in messages (``--max-shard-size`` on the command line).

    Returns:
        The limit in bytes for a sharded output, None for an unsharded one.

    Raises:
        OutputError: an index name of the other ecosystem.
        OptionError: a sharded name without a size, a size for an unsharded name, or a size
            `parse_size` refuses.
    """
    name = os.fspath(path)
    low = name.lower()
    mine, other = (_KERAS_INDEX, _HF_INDEX) if kind == "keras" else (_HF_INDEX, _KERAS_INDEX)
    example = "out.weights.json" if kind == "keras" else "model.safetensors.index.json"
    if low.endswith(other):
        hint = ("Hugging Face sharded checkpoints are written by surgery export --format torch "
                "(export_state_dict); for Keras shards name the output out.weights.json"
                if kind == "keras" else "Keras sharded weights are written by transplant and "
                "save_model; name a sharded state dict model.safetensors.index.json")
        raise OutputError(f"{name}: this command can't write that kind of sharded output; "
                          f"{hint}", path=name)
    if low.endswith(mine):
        if max_shard_size is None:
            raise OptionError(f"{name}: sharded weights need a shard size; pass "
                              f"{what} (for example 2GB), or write one file instead", path=name)
        return parse_size(max_shard_size, what)
    if max_shard_size is not None:
        raise OptionError(f"{name}: {what} applies only to sharded outputs; name the output "
                          f"{example}, or drop {what}", path=name)
    return None


@dataclasses.dataclass(frozen=True)
class ShardedOutput:
    """What a sharded write produced: the index, its shards in order, the tensor bytes in
    all, and the tensors larger than the limit (each alone in its shard)."""

    index: str
    shards: tuple[str, ...]
    total_size: int
    max_shard_size: int
    oversized: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _pack(sizes: Iterable[tuple[str, int]], limit: int) -> list[list[str]]:
    """Tensors (name, bytes) in order, packed into shards of at most `limit` bytes: a shard is
    closed when the next tensor would take it past the limit; a larger tensor is alone."""
    shards: list[list[str]] = []
    used = limit + 1  # no open shard yet
    for name, size in sizes:
        if used + size > limit or not shards:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def _dump_index(path: str, index: dict, **json_args) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(index, **json_args))
