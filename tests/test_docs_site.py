"""docs/ is a site (mkdocs.yml, MkDocs + Material) that builds strictly: a broken link or anchor, a page left
out of the navigation or a link to a repository file that does not exist fails the build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.repo import REPO

BUILD_TIMEOUT_S = 120


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
    )


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    built = mkdocs_build(REPO / "mkdocs.yml", tmp_path / "site")

    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "contract" / "index.html").exists()  # schemas/README.md, as a page
    assert "WARNING" not in built.stderr


@pytest.fixture
def docs_copy(tmp_path: Path) -> Path:
    """A copy of the site's sources, placed as in the repository (the hook resolves links from it)."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "docs", copy / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "mkdocs.yml", copy)
    for entry in REPO.iterdir():
        if entry.name not in {"docs", "mkdocs.yml", ".git", ".venv", ".local"}:
            (copy / entry.name).symlink_to(entry)
    return copy


@pytest.mark.parametrize(
    ("link", "complaint"),
    [
        ("[gone](api.md#no-such-heading)", "does not contain an anchor '#no-such-heading'"),
        ("[gone](no-such-page.md)", "not found among documentation files"),
        ("[gone](../core/no_such_module.py)", "names no file of the repository"),
        ("[gone](../schemas/README.md#no-such-heading)", "does not contain an anchor '#no-such-heading'"),
    ],
)
def test_a_broken_link_fails_the_build(docs_copy: Path, tmp_path: Path, link: str, complaint: str) -> None:
    page = docs_copy / "docs" / "index.md"
    page.write_text(page.read_text() + f"\nSee {link}.\n")

    built = mkdocs_build(docs_copy / "mkdocs.yml", tmp_path / "site")

    assert built.returncode != 0
    assert complaint in built.stderr
