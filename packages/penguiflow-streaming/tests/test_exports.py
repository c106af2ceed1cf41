"""Public surface, namespace rules, and which dependencies each part needs."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import penguiflow
import penguiflow.streaming as streaming

SRC = Path(__file__).resolve().parents[1] / "src"
IN_ALL = ["format_sse_event", "chunk_to_ws_json", "stream_flow", "emit_stream_events"]
EXTRA = [
    "ErrorCode",
    "ErrorEvent",
    "EventAdapter",
    "EventSourceEncoder",
    "FlowStream",
    "NODE_META_KEY",
    "Provenance",
    "StreamEnd",
    "StreamResult",
    "StreamWriter",
    "StreamingArgumentError",
    "StreamingPathError",
    "StreamingUsageError",
    "chunk_event_data",
    "chunk_node",
    "dumps",
    "emit_node_chunk",
    "error_event",
    "format_sse_comment",
    "format_sse_json",
    "format_sse_message",
    "open_stream",
    "provenance",
    "to_jsonable",
]


def test_all_is_exactly_the_documented_names() -> None:
    assert streaming.__all__ == IN_ALL


def test_extra_names_are_importable_but_not_in_all() -> None:
    public = {
        name
        for name, value in vars(streaming).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public == set(IN_ALL) | set(EXTRA)


@pytest.mark.parametrize("name", IN_ALL)
def test_names_in_all_are_reexported_by_the_root_package(name: str) -> None:
    value = getattr(streaming, name)
    assert getattr(penguiflow, name) is value
    assert name in penguiflow.__all__
    assert value.__module__ == "penguiflow.streaming"
    assert value.__doc__


def test_addon_ships_no_root_init() -> None:
    assert not (SRC / "penguiflow" / "__init__.py").exists()
    assert sorted(p.name for p in (SRC / "penguiflow").iterdir()) == ["streaming"]
    assert (SRC / "penguiflow" / "streaming" / "py.typed").exists()


def test_no_private_core_imports() -> None:
    for path in (SRC / "penguiflow" / "streaming").glob("*.py"):
        text = path.read_text()
        assert "penguiflow._" not in text, path
        assert "from .." not in text, path


def run_without_starlette(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where ``import starlette`` fails."""
    prelude = "import sys\nsys.modules['starlette'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_formatters_and_iterator_need_only_core() -> None:
    proc = run_without_starlette(
        """
        import penguiflow.streaming as s
        from penguiflow import format_sse_event
        assert s.open_stream and s.StreamWriter and format_sse_event
        heavy = [
            m for m, mod in sys.modules.items()
            if mod is not None and m.split(".")[0] in ("starlette", "anyio", "httpx")
        ]
        assert heavy == [], heavy
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_asgi_without_the_extra_names_what_to_install() -> None:
    proc = run_without_starlette(
        """
        from penguiflow.errors import MissingExtraError
        try:
            import penguiflow.streaming.asgi
        except MissingExtraError as exc:
            assert isinstance(exc, ImportError)
            print(exc)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'penguiflow-streaming[asgi]'" in proc.stdout


def test_misuse_errors_belong_to_the_penguiflow_tree() -> None:
    from penguiflow.errors import FlowRuntimeError, PenguiFlowError

    assert issubclass(streaming.StreamingUsageError, FlowRuntimeError)
    assert issubclass(streaming.StreamingPathError, FlowRuntimeError)
    assert issubclass(streaming.StreamingArgumentError, PenguiFlowError)
    assert issubclass(streaming.StreamingArgumentError, TypeError)
    assert issubclass(streaming.StreamingArgumentError, ValueError)


def test_the_trace_source_reads_through_cores_request_handle() -> None:
    text = (SRC / "penguiflow" / "streaming" / "_source.py").read_text()
    assert "from penguiflow.core import PenguiFlow, Request, RequestState" in text
    assert ".subscribe(" not in text  # one path to a trace's outcome: the request handle
    assert "Protocol" not in text
