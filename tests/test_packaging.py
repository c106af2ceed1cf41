"""Every distribution builds a clean wheel and sdist, with the metadata an index shows.

Each package is built with its own build backend (hatchling, run with the current
interpreter, offline) into a temporary directory, then the archives are opened:

- the wheel holds the package's modules, its ``py.typed`` and the LICENSE, nothing else;
- the sdist holds ``src/``, the README, the CHANGELOG, the LICENSE and the build files;
- the metadata has a real summary, project URLs, Python-version classifiers,
  ``Typing :: Typed``, the MIT license, no dev-only extra, and a description (the README)
  whose links work on a package index (absolute URLs only).
"""

from __future__ import annotations

import email.parser
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LICENSE = (ROOT / "LICENSE").read_bytes()
PACKAGES = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())

SDIST_FILES = {"pyproject.toml", "PKG-INFO", "README.md", "CHANGELOG.md", "LICENSE"}
# hatchling puts the repository's .gitignore into every sdist, so that a build from the
# sdist leaves out the same files.
SDIST_ALLOWED_EXTRA = {".gitignore"}
DEV_EXTRAS = {"test", "tests", "testing", "dev", "develop", "lint", "docs", "typing"}
STRAY = re.compile(r"(^|/)(tests?|__pycache__|conftest\.py|\.pytest_cache)(/|$)|\.py[cod]$")


@dataclass(frozen=True)
class Built:
    package: Path
    wheel: zipfile.ZipFile
    sdist: tarfile.TarFile

    @property
    def module_dir(self) -> str:
        sub = self.package.name.removeprefix("penguiflow-")
        return "penguiflow" if sub == "core" else f"penguiflow/{sub}"


@pytest.fixture(scope="module", params=PACKAGES, ids=lambda p: p.name)
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Built]:
    package: Path = request.param
    out = tmp_path_factory.mktemp(package.name)
    result = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-d", str(out)],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel_path,) = out.glob("*.whl")
    (sdist_path,) = out.glob("*.tar.gz")
    with zipfile.ZipFile(wheel_path) as wheel, tarfile.open(sdist_path) as sdist:
        yield Built(package, wheel, sdist)


def metadata(built: Built) -> email.message.Message:
    (name,) = [n for n in built.wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.parser.Parser().parsestr(built.wheel.read(name).decode())


def test_wheel_holds_the_package_its_marker_and_the_license(built: Built) -> None:
    names = built.wheel.namelist()
    code = [n for n in names if ".dist-info/" not in n]
    assert code, "the wheel holds no module"
    outside = [n for n in code if not n.startswith(f"{built.module_dir}/")]
    assert outside == [], f"files outside {built.module_dir}/: {outside}"
    if built.module_dir != "penguiflow":
        # an add-on never ships the root package (it would replace core's on install)
        assert "penguiflow/__init__.py" not in names
    assert f"{built.module_dir}/py.typed" in names
    assert [n for n in names if STRAY.search(n)] == []
    licenses = [n for n in names if ".dist-info/licenses/" in n]
    assert [n.rsplit("/", 1)[1] for n in licenses] == ["LICENSE"]
    assert built.wheel.read(licenses[0]) == LICENSE


def test_sdist_holds_sources_and_metadata_files_only(built: Built) -> None:
    names = [m.name for m in built.sdist.getmembers() if m.isfile()]
    top = {n.split("/", 1)[0] for n in names}
    assert len(top) == 1, top
    relative = {n.split("/", 1)[1] for n in names}
    source = {n for n in relative if n.startswith(f"src/{built.module_dir}/")}
    assert f"src/{built.module_dir}/py.typed" in source
    assert relative - source - SDIST_FILES <= SDIST_ALLOWED_EXTRA, sorted(relative - source)
    assert relative >= SDIST_FILES
    assert [n for n in relative if STRAY.search(n)] == []
    (license_name,) = [n for n in names if n.endswith("/LICENSE")]
    extracted = built.sdist.extractfile(license_name)
    assert extracted is not None and extracted.read() == LICENSE


def test_metadata_an_index_shows(built: Built) -> None:
    meta = metadata(built)
    summary = meta["Summary"]
    assert summary and "add-on:" not in summary and len(summary) > 40, summary
    assert meta["License-Expression"] == "MIT"
    classifiers = set(meta.get_all("Classifier") or [])
    assert "Typing :: Typed" in classifiers
    assert {f"Programming Language :: Python :: 3.{minor}" for minor in (11, 12, 13)} <= classifiers
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Source", "Changelog", "Issues"} <= set(urls)
    assert all(u.startswith("https://github.com/penguiflow/penguiflow") for u in urls.values())
    extras = set(meta.get_all("Provides-Extra") or [])
    assert extras & DEV_EXTRAS == set(), f"dev-only extras published: {extras & DEV_EXTRAS}"


def test_description_links_are_absolute(built: Built) -> None:
    description = metadata(built).get_payload()
    assert isinstance(description, str) and description.strip()
    links = re.findall(r"\]\(([^)\s]+)", description)
    relative = [link for link in links if not re.match(r"https?://|#|mailto:", link)]
    assert relative == [], f"links that break on a package index: {relative}"
