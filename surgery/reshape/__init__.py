"""`surgery.reshape`: the array conversions behind transplants between architectures.

Pure numpy (no TensorFlow import): every function validates its inputs and raises a
`SurgeryError` naming the expected and received shapes, keeps the input's dtype, and returns
new arrays without touching its inputs. Kernels are in Keras layout, (..., in, out).

Example:
```python
from surgery import reshape
gray = reshape.adapt_in_channels(rgb_kernel, 1, mode="sum")
k, rk, b = reshape.lstm_from_torch(w_ih, w_hh, b_ih, b_hh)
```
"""

from .channels import adapt_in_channels, pad_units, slice_units
from .initializers import initialize
from .net2net import identity_kernel, net2wider
from .pytorch import (batchnorm_config_from_torch, batchnorm_from_torch, batchnorm_to_torch,
                      conv_from_torch, conv_to_torch, linear_from_torch, linear_to_torch)
from .recurrent import (gru_from_torch, gru_to_torch, lstm_from_tf1, lstm_from_torch,
                        lstm_to_torch, resize_recurrent_units)
from .spatial import (conv_to_dense, dense_to_conv, inflate_kernel, reorder_flatten_rows,
                      resize_kernel)
from .vocab import RowRemap, remap_rows

__all__ = [
    "adapt_in_channels", "slice_units", "pad_units", "initialize",
    "resize_kernel", "inflate_kernel", "dense_to_conv", "conv_to_dense", "reorder_flatten_rows",
    "conv_from_torch", "conv_to_torch", "linear_from_torch", "linear_to_torch",
    "batchnorm_from_torch", "batchnorm_to_torch", "batchnorm_config_from_torch",
    "lstm_from_torch", "lstm_to_torch", "gru_from_torch", "gru_to_torch", "lstm_from_tf1",
    "resize_recurrent_units", "remap_rows", "RowRemap", "net2wider", "identity_kernel",
]
