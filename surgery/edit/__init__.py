"""`surgery.edit`: structural surgery on Keras 3 Functional and Sequential models.

Every function returns an `EditResult(model, report)`: a new model and what changed
(parameter counts before and after, variables carried bitwise, converted, newly
initialized). The input model is never touched.

Example:
```python
from surgery import edit
wider, report = edit.widen(model, "fc", 96)
print(report)
```
"""

from .core import EditReport, EditResult
from .channels import delete_channels, lowest_channels
from .convolutional import fully_convolutional
from .growth import deepen, widen
from .inflation import inflate
from .layers import change_input, delete_layer, insert_layer, replace_layer

__all__ = ["EditResult", "EditReport", "delete_channels", "lowest_channels", "widen", "deepen", "delete_layer", "insert_layer",
           "replace_layer", "change_input", "inflate", "fully_convolutional"]
