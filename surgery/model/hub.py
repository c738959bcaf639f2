"""TF Hub modules and SavedModels as Keras 3 layers (`hub_layer`), and models as SavedModels
or TF2 Hub modules (`export_model`).

`hub.KerasLayer` is a tf_keras layer and fails inside Keras 3 models. `hub_layer` loads the
module with `tf.saved_model.load` and wraps each of its variables as a Keras 3 variable (the
same `tf.Variable`, not a copy, the way Keras's `TFSMLayer` does), so the layer trains with
`fit` and selectors reach the module's variables one by one: partial fine-tuning of a Hub
module. Each variable's path is the hub layer's name, then the path ``surgery inspect DIR``
shows for it (`io.checkpoints`): Keras layer names where the SavedModel carries them
(``hub/conv2d_1/kernel`` for a tf_keras ``model.save``), else the object-graph path
(``hub/l1/kernel``), so a selector copied from `inspect` works under ``hub/``. A module whose
``__call__`` returns a dict gives a layer that returns that dict (every output, one set of
variables), or the one output `output_key` names; a signature returns one output, so one with
several needs `output_key`. Saving a model that holds one writes
the module's path and the variables' values into the `.keras`; reloading needs the module at
that path and ``safe_mode=False`` (it runs the module's graph). For deployment, transplant the
weights into a native Keras model instead (`surgery transplant hub_dir model.keras`).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..errors import CheckFailed, InputError, OptionError
from ..io.tfimport import keras, tensorflow

__all__ = ["hub_layer", "HubLayer", "export_model"]

_keras = keras()
_tf = tensorflow()


def _object_paths(root: Any) -> dict[int, tuple[str, ...]]:
    """id(tf.Variable) -> the local names along its first path in the object graph
    (``("l1", "kernel")``)."""
    paths: dict[int, tuple[str, ...]] = {}
    seen: set[int] = set()
    stack: list[tuple[Any, tuple[str, ...]]] = [(root, ())]
    while stack:
        obj, prefix = stack.pop(0)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        children = getattr(obj, "_trackable_children", None)
        if not callable(children):
            continue
        try:
            items = children().items()
        except Exception:  # some trackables can't list children outside a save
            continue
        for name, child in sorted(items):
            path = prefix + (name,)
            if isinstance(child, _tf.Variable):
                paths.setdefault(id(child), path)
            else:
                stack.append((child, path))
    return paths


def _inspect_paths(handle: str):
    """A function from a variable's object-graph local names to the path `surgery inspect`
    shows for it (None where the SavedModel's checkpoint doesn't list it)."""
    from ..errors import SurgeryError
    from ..io.checkpoints import open_checkpoint

    try:
        with open_checkpoint(handle, savedmodel=True) as src:
            graph, node_paths = src.graph, dict(src.node_paths)
    except SurgeryError:
        return lambda parts: None
    return lambda parts: node_paths.get(graph.resolve(parts)) if parts else None


@_keras.saving.register_keras_serializable("surgery")
class HubLayer(_keras.layers.Layer):
    """A TF2 Hub module or SavedModel signature as a Keras 3 layer (see `hub_layer`)."""

    def __init__(self, handle: str, trainable: bool = False, signature: str | None = None,
                 output_key: str | None = None, **kwargs):
        super().__init__(trainable=trainable, **kwargs)
        self.handle, self.signature, self.output_key = handle, signature, output_key
        if not os.path.isfile(os.path.join(handle, "saved_model.pb")):
            raise InputError(f"{handle}: not a SavedModel or TF Hub module (no "
                             "saved_model.pb)")
        self._module = _tf.saved_model.load(handle)
        self._fn = self._callable()
        self._check_output_key()
        paths = _object_paths(self._module)
        readable = _inspect_paths(handle)
        variables = list(getattr(self._module, "variables", None) or []) or \
            list(getattr(self._fn, "variables", []) or [])
        trainable_ids = {id(v) for v in (getattr(self._module, "trainable_variables", None) or
                                         getattr(self._fn, "trainable_variables", []) or [])}
        self._surgery_variable_paths: dict[int, str] = {}
        for v in variables:
            parts = paths.get(id(v))
            path = readable(parts) or ("/".join(parts) if parts else v.name.split(":")[0])
            wrapped = _keras.Variable(initializer=v, trainable=id(v) in trainable_ids,
                                      dtype=v.dtype.name, shape=v.shape,
                                      name=path.replace("/", "_"))
            self._track_variable(wrapped)
            self._surgery_variable_paths[id(wrapped)] = path
        self.built = True

    def _callable(self):
        module = self._module
        if self.signature is not None:
            sigs = dict(getattr(module, "signatures", {}) or {})
            if self.signature not in sigs:
                raise InputError(f"{self.handle}: no signature {self.signature!r}; it has "
                                 f"{', '.join(sigs) or 'none'}")
            return sigs[self.signature]
        call = getattr(module, "__call__", None)
        if call is not None and hasattr(call, "concrete_functions") or \
                hasattr(call, "get_concrete_function"):
            return call
        sigs = list(getattr(module, "signatures", {}) or {})
        raise InputError(f"{self.handle}: the module has no __call__; pass signature= one of "
                         f"{', '.join(sigs) or 'none (it exposes nothing to call)'}")

    def _outputs(self) -> Any:
        """The structure the callable returns (a dict of specs, a spec), None if unknown."""
        fn = self._fn
        if hasattr(fn, "structured_outputs"):
            return fn.structured_outputs
        concrete = list(getattr(fn, "concrete_functions", None) or [])
        return concrete[0].structured_outputs if concrete else None

    def _check_output_key(self) -> None:
        """Refuses, before the layer is ever called, an `output_key` the callable doesn't
        return and a signature with several outputs but no `output_key`."""
        outputs = self._outputs()
        what = f"signature {self.signature!r}" if self.signature is not None else \
            "the module's __call__"
        keys = ", ".join(sorted(outputs)) if isinstance(outputs, dict) else ""
        if self.output_key is not None and outputs is not None and \
                (not isinstance(outputs, dict) or self.output_key not in outputs):
            whole = ", or none for the whole dict" if self.signature is None else ""
            raise InputError(f"{self.handle}: no output {self.output_key!r}; {what} returns "
                             + (f"{keys}; pass output_key= one of them{whole}" if keys else
                                "one tensor, not a dict; drop output_key"), path=self.handle)
        if self.signature is not None and self.output_key is None and \
                isinstance(outputs, dict) and len(outputs) > 1:
            raise InputError(f"{self.handle}: {what} returns {keys}; pass output_key= one of "
                             "them", path=self.handle)

    def call(self, inputs):
        out = self._fn(inputs)
        if isinstance(out, dict) and self.output_key is not None:
            return out[self.output_key]
        if isinstance(out, dict) and self.signature is not None:
            return next(iter(out.values()))  # one output (several need output_key)
        return out  # a dict from __call__: every output

    def get_config(self):
        return {**super().get_config(), "handle": self.handle, "signature": self.signature,
                "output_key": self.output_key}


def hub_layer(path: str, *, trainable: bool = False, signature: str | None = None,
              output_key: str | None = None, name: str = "hub") -> HubLayer:
    """A Keras 3 layer that calls a TF Hub module (TF2 format) or a SavedModel signature.

    Args:
        path: the module's directory.
        trainable: whether its trainable variables train (select some with `surgery.freeze`
            / `unfreeze` for partial fine-tuning; per variable, for the session).
        signature: a SavedModel signature to call instead of the module's ``__call__``
            (``serve`` for a Keras `model.export`).
        output_key: which output to return, of a signature returning several (needed) or
            of a ``__call__`` returning a dict (without it the layer returns the whole dict:
            ``outputs = layer(x); outputs["logits"]``).
        name: the layer's name; its variables' paths are this name, then the paths
            ``surgery inspect`` shows for the module (``hub/conv2d_1/kernel``).

    Raises:
        InputError: not a SavedModel; no ``__call__`` and no such signature (lists them); a
            signature with several outputs and no `output_key`, or an `output_key` the
            module doesn't return (lists the outputs).

    Example:
    ```python
    inputs = keras.Input((16,))
    x = surgery.hub_layer("sample_models/hub_module", trainable=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(8)(x))
    surgery.freeze(model, "hub/l1/*")            # partial fine-tuning of the module
    ```
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"hub_layer needs a SavedModel/TF Hub folder path, got "
                         f"{type(path).__name__}")
    return HubLayer(os.fspath(path), trainable=trainable, signature=signature,
                    output_key=output_key, name=name)


def export_model(model: Any, directory: str, *, fmt: str = "hub", overwrite: bool = False,
                 verify: bool = True, atol: float = 1e-5, inputs: Sequence = ()) -> str:
    """Writes `model` as a TF2 Hub module (``hub``: callable, ``variables`` and
    ``trainable_variables`` exposed, loadable with `hub.KerasLayer`) or a SavedModel
    (``savedmodel``: Keras's `model.export`, signature ``serve``), then reloads it and checks
    its outputs against the model's. Written beside `directory` and renamed into place.

    An existing `directory` is replaced only with `overwrite`, and only if it is an earlier
    export (a SavedModel folder holding nothing else) that holds none of `inputs` (the paths
    the caller read; the model's own file is always one).

    Raises:
        CheckFailed: the reloaded module's outputs differ (nothing left at `directory`).
        OutputError: `directory` may not be written or replaced (see `atomic.atomic_dir`).

    Example:
    ```python
    surgery.export_model(model, "exported/hub_module", fmt="hub")
    ```
    """
    from ..io.atomic import atomic_dir
    from .saving import source_path
    from .verify import probe_inputs

    if fmt not in ("hub", "savedmodel"):
        raise OptionError(f"unknown export format {fmt!r}; use hub or savedmodel")
    directory = os.fspath(directory)
    with atomic_dir(directory, inputs=[source_path(model), *inputs], overwrite=overwrite) as tmp:
        if fmt == "savedmodel":
            model.export(tmp, verbose=False)
        else:
            spec = [_tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]),
                                   model.inputs[0].dtype)]
            root = _tf.train.Checkpoint()
            root.model_variables = [v.value for v in model.weights]
            root.variables = list(root.model_variables)
            root.trainable_variables = [v.value for v in model.trainable_weights]

            @_tf.function(input_signature=spec)
            def serve(x):
                return model(x, training=False)

            root.__call__ = serve
            _tf.saved_model.save(root, tmp)
        if verify:
            x = probe_inputs(model)[0]
            loaded = _tf.saved_model.load(tmp)
            fn = loaded.signatures["serve"] if fmt == "savedmodel" else loaded
            got = fn(_tf.constant(x))
            got = next(iter(got.values())) if isinstance(got, dict) else got
            diff = float(np.abs(np.asarray(got) - np.asarray(model(x))).max())
            if diff > atol:
                raise CheckFailed(f"{directory}: the exported module's outputs differ from the "
                                  f"model's by {diff:.3g}; nothing was written")
    return directory
