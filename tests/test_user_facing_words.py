"""No internal jargon where users read: READMEs, docs, and every package's docstrings and errors.

Users have no access to the project's internal specification or its issue tracker
numbering, so references such as "contract §5.7", "B13", "D2", "issue 9" or "upstream"
mean nothing to them. Compatibility notes say "earlier PenguiFlow versions" and describe
the behaviour itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

JARGON = re.compile(
    r"§|\bcontract\b|\bupstream\b|\b[BD]\d{1,2}\b|\bissue[- ]\d+|shared/spec",
    re.IGNORECASE,
)


def user_facing_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    files += sorted((ROOT / "packages").glob("*/README.md"))
    files += sorted((ROOT / "examples").glob("*/README.md"))
    # Every package's docstrings and error messages.
    for addon in ("core", "patterns", "streaming", "viz", "testing", "otel", "redis"):
        files += sorted((ROOT / "packages" / f"penguiflow-{addon}" / "src").rglob("*.py"))
    return [f for f in files if f.exists()]


@pytest.mark.parametrize("path", user_facing_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_internal_jargon(path: Path) -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if JARGON.search(line)
    ]
    assert hits == [], "internal references in user-facing text:\n" + "\n".join(hits)


def test_docs_link_only_inside_the_repository() -> None:
    for path in sorted((ROOT / "docs").rglob("*.md")):
        for target in re.findall(r"\]\(([^)\s#]+)", path.read_text(encoding="utf-8")):
            if re.match(r"https?://", target):
                continue
            resolved = (path.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), f"{path.name} links outside: {target}"
            assert resolved.exists(), f"{path.name} links to a missing file: {target}"
