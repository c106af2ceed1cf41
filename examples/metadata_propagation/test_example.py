"""Smoke-run the metadata example: as a script, and in-process to check every chunk."""

from __future__ import annotations

import asyncio
import runpy
import subprocess
import sys
from pathlib import Path

MAIN = Path(__file__).with_name("main.py")


def test_script_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(MAIN)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "request_id=abc123" in proc.stdout
    assert "'summarizer': {'model': 'mock-llm-1'" in proc.stdout


def test_every_chunk_carries_the_accumulated_meta() -> None:
    module = runpy.run_path(str(MAIN), run_name="metadata_propagation_example")
    chunks = asyncio.run(module["main"]())

    assert [c.payload.text for c in chunks] == ["penguins", "huddle", "in", "3", "documents"]
    assert [c.payload.seq for c in chunks] == [0, 1, 2, 3, 4]
    assert [c.payload.done for c in chunks] == [False, False, False, False, True]
    assert len({c.trace_id for c in chunks}) == 1
    for pos, chunk in enumerate(chunks):
        assert chunk.payload.meta == {"pos": pos}
        assert chunk.meta == {
            "request_id": "abc123",
            "retrieval": {"docs": 3, "cost_usd": 0.0021},
            "summarizer": {"model": "mock-llm-1", "prompt_tokens": 42},
        }
    # Each chunk envelope has its own copy of the parent's meta.
    chunks[0].meta["request_id"] = "changed"
    assert chunks[1].meta["request_id"] == "abc123"
