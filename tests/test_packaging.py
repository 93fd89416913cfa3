"""Extras per role: the API, the core and the operator tools install and run without torch. The worker's
libraries are one list, pyproject.toml's `worker` extra: the import contract, these tests and the
command line's hint all read it."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from captioner.cli import worker_libraries
from tests.support.repo import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
WORKER_EXTRA = {Requirement(line).name for line in PYPROJECT["project"]["optional-dependencies"]["worker"]}
WORKER_LIBRARIES = {name.lower().replace("-", "_") for name in WORKER_EXTRA}  # their modules

# Refuses some libraries (the worker's, by default), as a machine with only `captioner[api]` would.
REFUSING = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {refused!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
"""


def requirement_names(requirements: list[str]) -> set[str]:
    return {Requirement(line).name.lower().replace("-", "_") for line in requirements}


@pytest.fixture(scope="module")
def project() -> dict[str, object]:
    return dict(PYPROJECT["project"])


def test_the_worker_libraries_are_one_list() -> None:
    """The import contract forbids, and the command line's hint names, exactly the worker extra's
    libraries; each is the module its distribution installs."""
    [contract] = [
        contract
        for contract in PYPROJECT["tool"]["importlinter"]["contracts"]
        if "inference_consumer" in contract.get("forbidden_modules", [])
    ]
    assert set(contract["forbidden_modules"]) - {"inference_consumer"} == WORKER_LIBRARIES
    assert worker_libraries() == WORKER_LIBRARIES
    installed_by = importlib.metadata.packages_distributions()
    for name in WORKER_EXTRA:
        module = name.lower().replace("-", "_")
        assert canonicalize_name(name) in {canonicalize_name(dist) for dist in installed_by[module]}


def test_the_base_install_and_the_api_extra_pull_no_worker_library(project: dict[str, object]) -> None:
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    api_install = requirement_names([*project["dependencies"], *extras["api"]])  # type: ignore[misc]
    assert not api_install & WORKER_LIBRARIES
    assert {"torch", "transformers"} <= WORKER_LIBRARIES


def run_without_worker_libraries(
    code: str, tmp_path: Path, *, refused: set[str] = WORKER_LIBRARIES
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", REFUSING.format(refused=refused) + code],
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


def test_a_worker_missing_a_library_it_imports_late_says_which_to_install(tmp_path: Path) -> None:
    """huggingface_hub, which the worker (and transformers) import only when the model loads."""
    result = run_without_worker_libraries(
        "import sys\nsys.argv = ['captioner', 'worker']\nfrom captioner.cli import main\nmain()",
        tmp_path,
        refused={"huggingface_hub"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "captioner worker needs huggingface_hub: pip install 'captioner[worker]'" in result.stderr
    assert "Traceback" not in result.stderr
