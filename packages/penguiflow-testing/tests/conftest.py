"""Shared configuration for the penguiflow-testing suite."""

from __future__ import annotations

pytest_plugins = ["pytester"]
