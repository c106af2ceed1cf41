"""Smoke-run the metrics example: as a script, and in-process with the stdout sink."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import runpy
import subprocess
import sys
from pathlib import Path

MAIN = Path(__file__).with_name("main.py")


def test_script_runs_with_whatever_sink_is_available(tmp_path: Path) -> None:
    # Should mlflow be installed, keep its run out of the working tree.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tmp_path.as_uri()}
    proc = subprocess.run(
        [sys.executable, str(MAIN)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    expected = "mlflow" if importlib.util.find_spec("mlflow") else "stdout"
    assert f"exporting FlowEvent metrics to {expected}" in proc.stdout
    assert "result: Score(text='penguins', score=0.875)" in proc.stdout


def test_stdout_sink_receives_samples_and_tags_of_every_event() -> None:
    module = runpy.run_path(str(MAIN), run_name="mlflow_metrics_example")
    sink, results = asyncio.run(module["main"](module["StdoutSink"]()))

    assert [r.text for r in results] == ["penguins", "rookery"]
    node_events = [
        (tags["node_name"], tags["event_type"])
        for tags, _ in sink.exported
        if tags["event_type"] in {"node_start", "node_success"}
    ]
    for node in ("clean", "score"):
        assert node_events.count((node, "node_start")) == 2
        assert node_events.count((node, "node_success")) == 2
    for tags, samples in sink.exported:
        assert {"queue_depth_in", "queue_depth_out", "attempt"} <= samples.keys()
        if tags["event_type"] == "node_success":
            assert len(tags["trace_id"]) == 32
            assert samples["latency_ms"] >= 0.0
