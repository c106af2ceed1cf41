"""PenguiFlow: typed, async-first orchestration for agent and data pipelines.

Core names are imported eagerly, except ``ModelRegistry``, ``Middleware``, ``PlanStep`` and
``Thought``, whose modules load on first use (``import penguiflow`` does not need them).
Names of the add-on distributions
(``penguiflow-patterns``, ``-streaming``, ``-viz``) resolve lazily on first use; when the
add-on is missing, using the name raises :class:`~penguiflow.errors.MissingExtraError`
(an ``ImportError``) saying what to install. Feature detection:
``importlib.util.find_spec("penguiflow.viz") is not None``.

Type checkers (mypy, pyright) see the same thing: with the add-on installed,
``from penguiflow import join_k`` has the add-on's own signature; without it, that line is
an error (``Module "penguiflow" has no attribute "join_k"``, ``"join_k" is unknown import
symbol``), never a silent ``Any``. So is any other name this module does not define.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any


def _extend_path(path: list[str], name: str) -> list[str]:
    """``pkgutil.extend_path`` for directories on ``sys.path``, without importing pkgutil
    (and, through it, ``importlib.util``): a millisecond of ``import penguiflow``."""
    path = list(path)
    for entry in sys.path:
        if isinstance(entry, str):
            portion = os.path.join(entry, name)
            if portion not in path and os.path.isdir(portion):
                path.append(portion)
    return path


# Add-ons install penguiflow/<sub>/ in their own directories.
if TYPE_CHECKING:
    # The standard spelling, which tools reading the source (griffe, for the API
    # reference) recognise as a namespace package; the run-time line does the same.
    __path__ = __import__("pkgutil").extend_path(__path__, __name__)
else:
    __path__ = _extend_path(__path__, __name__)

from ._version import __version__ as __version__
from .core import (
    DEFAULT_QUEUE_MAXSIZE as DEFAULT_QUEUE_MAXSIZE,
    Context as Context,
    CycleError as CycleError,
    PenguiFlow as PenguiFlow,
    TraceCancelled as TraceCancelled,
    call_playbook as call_playbook,
    create as create,
)
from .errors import MissingExtraError, PenguiFlowError as PenguiFlowError
from .metrics import FlowEvent as FlowEvent
from .node import Node as Node, NodePolicy as NodePolicy
from .types import (
    WM as WM,
    FinalAnswer as FinalAnswer,
    Headers as Headers,
    Message as Message,
    StreamChunk as StreamChunk,
)

if TYPE_CHECKING:  # core names loaded on first use (``_DEFERRED`` below)
    from .middlewares import Middleware as Middleware
    from .registry import ModelRegistry as ModelRegistry
    from .types import PlanStep as PlanStep, Thought as Thought

if TYPE_CHECKING:
    # What type checkers see: each add-on's ``__all__`` (the names in ``_ADDONS`` below).
    # A star import from a module the checker cannot find defines nothing, so without the
    # add-on ``from penguiflow import join_k`` is an error instead of ``Any``; an explicit
    # ``from .patterns import join_k`` would define ``join_k`` as ``Any`` for mypy.
    from .patterns import *  # noqa: F403
    from .streaming import *  # noqa: F403
    from .viz import *  # noqa: F403

__all__ = [
    "__version__",
    "Context",
    "CycleError",
    "DEFAULT_QUEUE_MAXSIZE",
    "FinalAnswer",
    "FlowEvent",
    "Headers",
    "Message",
    "Middleware",
    "ModelRegistry",
    "Node",
    "NodePolicy",
    "PenguiFlow",
    "PenguiFlowError",
    "PlanStep",
    "StreamChunk",
    "Thought",
    "TraceCancelled",
    "WM",
    "call_playbook",
    "create",
]

# Optional names: attribute -> (module, distribution). They join __all__ and dir() only
# when their distribution is installed, so that ``from penguiflow import *`` also works
# with core alone.
_ADDONS: dict[str, tuple[str, str]] = {
    "map_concurrent": ("penguiflow.patterns", "penguiflow-patterns"),
    "join_k": ("penguiflow.patterns", "penguiflow-patterns"),
    "predicate_router": ("penguiflow.patterns", "penguiflow-patterns"),
    "union_router": ("penguiflow.patterns", "penguiflow-patterns"),
    "format_sse_event": ("penguiflow.streaming", "penguiflow-streaming"),
    "chunk_to_ws_json": ("penguiflow.streaming", "penguiflow-streaming"),
    "stream_flow": ("penguiflow.streaming", "penguiflow-streaming"),
    "emit_stream_events": ("penguiflow.streaming", "penguiflow-streaming"),
    "flow_to_mermaid": ("penguiflow.viz", "penguiflow-viz"),
    "flow_to_dot": ("penguiflow.viz", "penguiflow-viz"),
}


class MissingAddOnError(PenguiFlowError, AttributeError):
    """``penguiflow.<name>`` was read, but the add-on that provides ``name`` is missing.

    An ``AttributeError``, so ``hasattr(penguiflow, "join_k")`` is ``False`` and
    ``getattr(penguiflow, "join_k", None)`` is ``None`` without the add-on. The statement
    ``from penguiflow import join_k`` raises :class:`~penguiflow.errors.MissingExtraError`
    (an ``ImportError``) with the same message instead.
    """


def _installed(module_name: str) -> bool:
    # Add-ons normally sit in a directory of ``__path__``: looking there is cheap. Other
    # ways of installing them (an import hook) are asked through ``find_spec``.
    sub = module_name.rpartition(".")[2]
    if any(os.path.isdir(os.path.join(entry, sub)) for entry in __path__):
        return True
    import importlib.util

    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False


_PRESENT = {module_name: _installed(module_name) for module_name, _ in _ADDONS.values()}
_INSTALLED_ADDONS = sorted(
    name for name, (module_name, _) in _ADDONS.items() if _PRESENT[module_name]
)
__all__ += _INSTALLED_ADDONS


def _read_by_from_import() -> bool:
    """Whether the attribute access being served is a ``from penguiflow import name``.

    ``ImportError`` and ``AttributeError`` cannot share one exception class (their
    instance layouts conflict), so the statement is told apart from ``hasattr`` and plain
    attribute reads by the instruction its frame is executing.
    """
    frame = sys._getframe(2)  # 0: this helper, 1: __getattr__, 2: the reader
    try:
        import dis  # only on this error path: ``import penguiflow`` stays cheap

        return frame.f_code.co_code[frame.f_lasti] == dis.opmap["IMPORT_FROM"]
    except IndexError:  # pragma: no cover - defensive
        return False


# Core names whose modules ``import penguiflow`` does not need: loaded on first use.
_DEFERRED: dict[str, str] = {
    "Middleware": "penguiflow.middlewares",
    "ModelRegistry": "penguiflow.registry",
    "PlanStep": "penguiflow.types",
    "Thought": "penguiflow.types",
}


def _addon_attribute(name: str) -> Any:
    """The module's ``__getattr__``: resolve a deferred core name or an add-on name on
    first use."""
    deferred = _DEFERRED.get(name)
    if deferred is not None:
        value = globals()[name] = getattr(importlib.import_module(deferred), name)
        return value
    try:
        module_name, dist = _ADDONS[name]
    except KeyError:
        raise AttributeError(f"module 'penguiflow' has no attribute {name!r}") from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        text = f"penguiflow.{name} needs the {dist!r} distribution: pip install {dist}"
        if _read_by_from_import():
            raise MissingExtraError(text, name=module_name) from None
        raise MissingAddOnError(text, name=name, obj=sys.modules[__name__]) from None
    value = getattr(module, name)
    globals()[name] = value
    return value


if not TYPE_CHECKING:
    # Hidden from type checkers: a module ``__getattr__`` returning ``Any`` would make every
    # unknown name (a missing add-on's included) ``Any`` instead of an error.
    __getattr__ = _addon_attribute
    del _addon_attribute  # dir(penguiflow) stays as it was


def __dir__() -> list[str]:
    return sorted((set(globals()) - set(_ADDONS)) | set(_INSTALLED_ADDONS) | set(_DEFERRED))
