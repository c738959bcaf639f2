"""`surgery.edit`: structural surgery on Keras 3 Functional and Sequential models.

Every function returns an `EditResult(model, report)`: a new model and what changed
(parameter counts before and after, variables copied bitwise, converted, initialized). The
input model is never touched.

Example:
```python
from surgery import edit
wider, report = edit.widen(model, "fc", 96)
print(report)
```
"""

import functools
import inspect
from typing import Callable

from ..errors import OptionError
from ..io.livemodels import require_live_model
from . import channels as _channels, convolutional as _convolutional, growth as _growth
from . import inflation as _inflation, layers as _layers
from .core import EditReport, EditResult

_NAMES = ("layer", "after", "before")


def _checked(fn: Callable) -> Callable:
    """The public edit functions check what users commonly get wrong before any work: a path
    instead of a model, a layer name that is not a string, channel indices that are not
    integers (each one `SurgeryError` line)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise OptionError(f"edit.{fn.__name__}: {e}") from None
        require_live_model(bound.arguments.get("model"), f"edit.{fn.__name__}")
        for name in _NAMES:
            value = bound.arguments.get(name)
            if name == "layer" and fn.__name__ == "insert_layer":
                continue  # there `layer` is the new layer itself
            if value is not None and not isinstance(value, str):
                raise OptionError(f"edit.{fn.__name__}: {name} must be a layer name (a "
                                  f"string), got {value!r}")
        units = bound.arguments.get("units")
        if "units" in bound.arguments and (not isinstance(units, int) or
                                           isinstance(units, bool)):
            raise OptionError(f"edit.{fn.__name__}: units must be an integer, got {units!r}")
        ratio = bound.arguments.get("ratio")
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                                  or not 0 < ratio < 1):
            raise OptionError(f"edit.{fn.__name__}: ratio must be a number between 0 and 1 "
                              f"(the fraction of channels to delete), got {ratio!r}")
        channels = bound.arguments.get("channels")
        if channels is not None and (isinstance(channels, (str, bytes)) or not all(
                isinstance(c, int) and not isinstance(c, bool) for c in channels)):
            raise OptionError(f"edit.{fn.__name__}: channels must be a list of channel "
                              f"indices (integers), got {channels!r}")
        return fn(*args, **kwargs)

    return wrapper


delete_channels = _checked(_channels.delete_channels)
lowest_channels = _checked(_channels.lowest_channels)
fully_convolutional = _checked(_convolutional.fully_convolutional)
deepen = _checked(_growth.deepen)
widen = _checked(_growth.widen)
inflate = _checked(_inflation.inflate)
change_input = _checked(_layers.change_input)
delete_layer = _checked(_layers.delete_layer)
insert_layer = _checked(_layers.insert_layer)
replace_layer = _checked(_layers.replace_layer)

__all__ = ["EditResult", "EditReport", "delete_channels", "lowest_channels", "widen", "deepen", "delete_layer", "insert_layer",
           "replace_layer", "change_input", "inflate", "fully_convolutional"]
