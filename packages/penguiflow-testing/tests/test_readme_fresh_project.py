"""The README's product test file passes, unchanged, in a fresh project.

The two files of the README's "A product test file, end to end" section are written into
an empty directory outside this repository, and ``python -m pytest`` runs there in a
subprocess with the current interpreter: no monorepo configuration, no ``asyncio_mode``
unless the case sets it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FILES = ("support/flow.py", "tests/test_product_flow.py")


def readme_files() -> dict[str, str]:
    """The README's python blocks whose first line names one of ``FILES``."""
    found: dict[str, str] = {}
    for block in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        first = block.splitlines()[0]
        for name in FILES:
            if first == f"# {name}" or first.startswith(f"# {name}:"):
                found[name] = block
    assert set(found) == set(FILES), f"README blocks for {FILES} not found"
    return found


@pytest.mark.parametrize("mode", ["strict (the default)", "auto"])
def test_readme_product_tests_pass_in_a_fresh_project(tmp_path: Path, mode: str) -> None:
    project = tmp_path / "product"
    for name, text in readme_files().items():
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    ini = ["[pytest]"]
    if mode == "auto":
        ini.append("asyncio_mode = auto")
    (project / "pytest.ini").write_text("\n".join(ini) + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"\b4 passed\b", output), output
    assert "penguiflow" not in output.partition("warnings summary")[2], output
