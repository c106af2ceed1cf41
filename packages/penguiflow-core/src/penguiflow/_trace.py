"""Trace ids: which request an item belongs to.

A *trace* is everything one request put into a flow; every item that carries the same
``trace_id`` belongs to it.
"""

from __future__ import annotations

from pydantic import BaseModel

from .types import Message

__all__ = ["trace_id_of"]


# How to read a trace id from an item of a given type: not at all, from the instance
# dict (pydantic fields), or with getattr. Cached per type: this runs on every hop.
_TID_NONE, _TID_FIELD, _TID_GETATTR = 0, 1, 2
_tid_kind: dict[type, int] = {
    str: _TID_NONE,
    bytes: _TID_NONE,
    int: _TID_NONE,
    float: _TID_NONE,
    bool: _TID_NONE,
    dict: _TID_NONE,
    list: _TID_NONE,
    tuple: _TID_NONE,
    type(None): _TID_NONE,
    Message: _TID_FIELD,
}


def _classify(cls: type) -> int:
    if issubclass(cls, Message):
        return _TID_FIELD
    if issubclass(cls, BaseModel):
        extra = cls.model_config.get("extra")
        if "trace_id" in cls.model_fields:
            return _TID_FIELD
        if extra != "allow" and not hasattr(cls, "trace_id"):
            return _TID_NONE
    return _TID_GETATTR


def trace_id_of(item: object) -> str | None:
    """Return the trace id an item belongs to, or ``None`` for an untracked item.

    The same as ``getattr(item, "trace_id", None)`` when that is a string, but cheap for
    the types that flow through a graph: ``Message`` envelopes, pydantic models, plain
    values. Add-ons use it to group items by trace the way the runtime does.
    """
    cls = type(item)
    kind = _tid_kind.get(cls)
    if kind is None:
        kind = _tid_kind[cls] = _classify(cls)
    if kind == _TID_NONE:
        return None
    if kind == _TID_FIELD:
        tid = item.__dict__.get("trace_id")
    else:
        tid = getattr(item, "trace_id", None)
    return tid if isinstance(tid, str) else None
