"""Every runnable ``python`` snippet of the docs site runs, and its assertions hold.

Each fenced ```` ```python ```` block under ``docs/`` is executed on its own, in a fresh
namespace, as a script would run it. A block that is a fragment (it uses names defined
elsewhere, or is a pytest module) is preceded by an HTML comment that starts with
``<!-- no-run``, which also says why; the comment is invisible on the rendered page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)
NO_RUN = "<!-- no-run"


def snippets() -> list[tuple[str, str | None]]:
    """(id, code) for each python block; code is None for a block marked no-run."""
    found: list[tuple[str, str | None]] = []
    for path in sorted(DOCS.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code"))
            name = f"{path.relative_to(DOCS)}:{line}"
            skip = match.group("before").strip().startswith(NO_RUN)
            found.append((name, None if skip else match.group("code")))
    return found


SNIPPETS = snippets()


def test_the_docs_have_runnable_snippets() -> None:
    runnable = [name for name, code in SNIPPETS if code is not None]
    assert len(runnable) >= 8, runnable


@pytest.mark.parametrize(
    "code",
    [pytest.param(code, id=name) for name, code in SNIPPETS if code is not None],
)
def test_snippet_runs(code: str, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(code, "<docs snippet>", "exec"), namespace)
