"""Canonical paths for the variables inside Keras HDF5 files, without TensorFlow.

Two layouts:

- Keras 3 (``model.weights.h5`` inside a `.keras`, and ``.weights.h5``): variables sit at
  ``layers/<class-based name>/vars/<index>``; each ``vars`` group carries the object's real
  name as an attribute, and the config names the variables by class (`layertypes`).
- Keras 2 legacy ``.h5``: ``model_weights/<layer>/<weight name>:0`` with ``layer_names`` and
  ``weight_names`` attributes; weight names carry tf_keras's scope names (``enc/lstm_cell/...``)
  that are translated to canonical paths.

HDF5 files are untrusted. `open_h5` walks every object once before anything else reads the
file (`scan_h5`): external, soft and user-defined links, an object reached by two hard links
(a DAG or a cycle, which would make a tree walk exponential), groups nested deeper than
`MAX_DEPTH`, more than `MAX_OBJECTS` links or attributes, external-storage and virtual
datasets, datasets whose declared size is far beyond what the file stores, and datasets that
are not real numbers (strings, variable-length data, references, records, complex numbers) are
refused with a `FormatError` before any dataset is read.

Where it lives: `h5files` opens and scans the files (`open_h5`, `scan_h5`, `guard`, the dataset
checks and reads, `VirtualGroup` for shards, `MAX_DEPTH`, `MAX_OBJECTS`); `h5names` the config
helpers and how groups and variables are named and ordered; `h5keras3` the Keras 3 walk
(`keras3_entries`); `h5legacy` the Keras 2 reader (`legacy_entries`). Every name listed in
`__all__` is importable from here too; the limits are read in `h5files`, so change them there.
"""

from __future__ import annotations

from .h5files import (MAX_DEPTH, MAX_OBJECTS, VirtualGroup, check_dataset, dataset_dtype, guard,
                      open_h5, read_dataset, scan_h5)
from .h5keras3 import keras3_entries
from .h5legacy import legacy_entries
from .h5names import is_model_config, layer_name, model_layer_configs

__all__ = [
    "guard", "open_h5", "scan_h5", "VirtualGroup", "check_dataset", "dataset_dtype",
    "read_dataset", "keras3_entries", "legacy_entries", "layer_name", "model_layer_configs",
    "is_model_config", "MAX_DEPTH", "MAX_OBJECTS",
]
