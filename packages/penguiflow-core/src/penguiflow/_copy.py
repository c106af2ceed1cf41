"""``copy_with``: a shallow copy of a pydantic model with one field replaced, fast.

Envelopes are copied on hops (a controller's next WM, a node's result re-wrapped in the
incoming envelope, a join's batch); pydantic's ``model_copy(update=...)`` does the same
through generic machinery that costs several times more.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["copy_with", "with_payload"]

M = TypeVar("M", bound=BaseModel)


def copy_with(model: M, field: str, value: Any) -> M:
    """Return a shallow copy of ``model`` with one field replaced.

    The same result as ``model.model_copy(update={field: value})``, without its generic
    machinery: this runs on every hop of an enveloped flow.
    """
    cls = type(model)
    new = cls.__new__(cls)
    data = model.__dict__.copy()
    data[field] = value
    setattr_ = object.__setattr__
    setattr_(new, "__dict__", data)
    fields_set = model.__pydantic_fields_set__
    if field not in fields_set:
        fields_set = fields_set | {field}
    else:
        fields_set = set(fields_set)
    setattr_(new, "__pydantic_fields_set__", fields_set)
    extra = model.__pydantic_extra__
    setattr_(new, "__pydantic_extra__", None if extra is None else dict(extra))
    private = model.__pydantic_private__
    setattr_(new, "__pydantic_private__", None if private is None else dict(private))
    return new


def with_payload(message: M, payload: Any) -> M:
    """Return ``message`` with ``payload`` replaced (same trace, headers, meta, deadline)."""
    return copy_with(message, "payload", payload)
