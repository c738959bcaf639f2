"""What a function that changes a model's structure returns: the new model and a typed report.

`replace_head`, `add_head`, `set_regularizer`/`set_initializer`/`set_constraint` and every
`surgery.edit` function build a new model and leave their input untouched; they return an
`EditResult` that unpacks into the two. No TensorFlow here: the model is whatever the caller's
framework built.

Example:
```python
model, report = surgery.replace_head(model, 4)
print(report)              # or: result = surgery.replace_head(...); result.model, result.report
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Iterator, Protocol, TypeVar

__all__ = ["EditResult", "Report"]


class Report(Protocol):
    """What every report of an edit offers: ``str()`` for people, `to_dict` for JSON."""

    def to_dict(self) -> dict: ...


R = TypeVar("R", bound=Report)


@dataclass(frozen=True)
class EditResult(Generic[R]):
    """A new model and the report of what changed; the input model is untouched.

    Attributes:
        model: the new Keras model.
        report: a typed, frozen report with ``str()`` and ``to_dict()``: an `EditReport` from
            `surgery.edit`, a `HeadReport` (`replace_head`), an `AddHeadReport` (`add_head`),
            a `SetupReport` (`set_regularizer` and friends).
    """

    model: Any
    report: R

    def __iter__(self) -> Iterator[Any]:  # model, report = edit(...)
        return iter((self.model, self.report))
