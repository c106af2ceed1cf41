"""Static checks that need every package laid out as the wheels install them.

pyright stops at core's regular ``penguiflow`` package in the editable monorepo and never
sees ``penguiflow.patterns`` and friends (microsoft/pyright#4280). This script copies each
package's ``src/penguiflow`` into one temporary tree, the layout the installed wheels
share, and points pyright at it. It then runs:

1. ``pyright --verifytypes penguiflow --ignoreexternal``: fails below 99% completeness;
2. pyright strict over ``tests/typing`` (the README-style flow and the ``assert_type``
   checks of the public API). mypy --strict checks the same folder in ``hatch run types``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
THRESHOLD = 0.99


def _pyright(args: list[str], tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "pyright", "--pythonpath", sys.executable, *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        for src in sorted(ROOT.glob("packages/*/src/penguiflow")):
            shutil.copytree(src, tree / "penguiflow", dirs_exist_ok=True)
        verify = _pyright(["--verifytypes", "penguiflow", "--ignoreexternal", "--outputjson"], tree)
        try:
            report = json.loads(verify.stdout)
        except json.JSONDecodeError:
            print(verify.stdout, verify.stderr, sep="\n")
            return 1
        score = report["typeCompleteness"]["completenessScore"]
        print(f"pyright --verifytypes penguiflow: {score:.1%} (at least {THRESHOLD:.0%} needed)")
        if score < THRESHOLD:
            for symbol in report["typeCompleteness"]["symbols"]:
                for diagnostic in symbol["diagnostics"]:
                    if diagnostic["severity"] == "error":
                        print(f"{symbol['name']}: {diagnostic['message']}")
            return 1
        strict = _pyright(["-p", str(HERE / "pyrightconfig.json")], tree)
        print(strict.stdout.strip())
        return strict.returncode


if __name__ == "__main__":
    raise SystemExit(main())
