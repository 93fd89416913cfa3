"""Extras per role: the API, the core and the operator tools install and run without torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support.repo import REPO

WORKER_ONLY = {"torch", "transformers", "numpy"}

# Refuses the worker's libraries, as a machine with only `captioner[api]` would.
WITHOUT_WORKER_LIBRARIES = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "numpy"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
"""


def requirement_names(requirements: list[str]) -> set[str]:
    return {Requirement(line).name.lower() for line in requirements}


@pytest.fixture(scope="module")
def project() -> dict[str, object]:
    return dict(tomllib.loads((REPO / "pyproject.toml").read_text())["project"])


def test_the_base_install_and_the_api_extra_pull_no_worker_library(project: dict[str, object]) -> None:
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    api_install = requirement_names([*project["dependencies"], *extras["api"]])  # type: ignore[misc]
    assert not api_install & WORKER_ONLY
    assert requirement_names(extras["worker"]) >= {"torch", "transformers"}


def run_without_worker_libraries(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_WORKER_LIBRARIES + code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def test_every_module_below_the_worker_imports_without_its_libraries(tmp_path: Path) -> None:
    modules = [
        path.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
        for package in ("schemas", "core", "producer_api", "captioner")
        for path in (REPO / package).rglob("*.py")
        if path.name != "model_factory.py"
    ]
    code = f"import importlib\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
    result = run_without_worker_libraries(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_worker_without_its_extra_says_which_to_install(tmp_path: Path) -> None:
    # `captioner worker`, as the console script runs it:
    result = run_without_worker_libraries(
        "import sys\nsys.argv = ['captioner', 'worker']\nfrom captioner.cli import main\nmain()", tmp_path
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "pip install 'captioner[worker]'" in result.stderr
    assert "Traceback" not in result.stderr
