"""The one place `surgery` imports TensorFlow and Keras, lazily.

TensorFlow's C++ runtime prints CUDA-probe lines on stderr at import, before its log level
applies. The CLI sets ``SURGERY_QUIET_TF=1`` so those lines are dropped (stderr is pointed at
/dev/null for the duration of the import only); the library leaves stderr alone otherwise.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

__all__ = ["tensorflow", "keras", "tf_keras"]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    if os.environ.get("SURGERY_QUIET_TF") != "1" or "tensorflow" in sys.modules:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tensorflow() -> Any:
    """Imports and returns `tensorflow`."""
    with _quiet():
        import tensorflow as tf
    return tf


def keras() -> Any:
    """Imports and returns Keras 3."""
    with _quiet():
        import keras as k
    return k


def tf_keras() -> Any:
    """Imports and returns tf_keras (Keras 2)."""
    with _quiet():
        import tf_keras as k
    return k
