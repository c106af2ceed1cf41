"""Repository-wide pytest setup (shared by every package's tests)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    # Suites that run the test kit's quiescence check after each test skip it for tests
    # marked so (they leave queued items or open streams behind on purpose).
    config.addinivalue_line(
        "markers", "leaves_state: the test leaves queued items or open streams on purpose"
    )
