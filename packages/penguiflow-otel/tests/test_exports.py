"""The public surface of penguiflow.otel and the namespace-package rules."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import penguiflow.otel as otel

SRC = Path(__file__).resolve().parents[1] / "src"


def test_all_is_exactly_the_public_names() -> None:
    assert otel.__all__ == ["instrument", "instrument_playbook"]
    public = {
        name
        for name, value in vars(otel).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public == set(otel.__all__)
    for name in otel.__all__:
        value = getattr(otel, name)
        assert value.__module__ == "penguiflow.otel"
        assert value.__doc__


def test_signatures() -> None:
    sig = inspect.signature(otel.instrument)
    assert list(sig.parameters) == ["flow", "tracer_provider", "meter_provider", "flow_name"]
    sig_pb = inspect.signature(otel.instrument_playbook)
    assert list(sig_pb.parameters) == ["playbook", "tracer_provider", "flow_name"]
    for s in (sig, sig_pb):
        rest = list(s.parameters.values())[1:]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest)
    assert sig.parameters["tracer_provider"].default is None
    assert sig.parameters["meter_provider"].default is None


def test_addon_ships_no_root_init() -> None:
    assert not (SRC / "penguiflow" / "__init__.py").exists()
    assert sorted(p.name for p in (SRC / "penguiflow").iterdir()) == ["otel"]
    assert (SRC / "penguiflow" / "otel" / "py.typed").exists()


def test_private_modules_import_and_version() -> None:
    for mod in ("_instrument", "_metrics", "_propagation", "_version"):
        importlib.import_module(f"penguiflow.otel.{mod}")
    assert otel.__version__ == importlib.import_module("penguiflow.otel._version").__version__


def test_importing_core_does_not_import_opentelemetry() -> None:
    import subprocess
    import sys

    code = "import sys, penguiflow, penguiflow.core; print('opentelemetry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
