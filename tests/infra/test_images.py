"""The two images, checked offline: each installs its own hashed lock, the API's holds no torch, every
pin equals the full lock's (so an image runs what `make test` tested), and the Dockerfiles copy what the
package needs and .dockerignore lets through. No image is built here (no Docker engine)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.repo import REPO

DEPLOY = REPO / "infra" / "deploy"
FULL_LOCK = REPO / "requirements" / "lock.txt"
ROLES = ("api", "worker")
# What only the worker extra's libraries bring: CUDA runtime wheels and triton (torch), tokenizers and
# safetensors (transformers).
BROUGHT_BY_WORKER_LIBRARIES = re.compile(r"^(triton|nvidia-.*|tokenizers|safetensors)$")
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+)")
HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")


def read_lock(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, hashes) for every pin of a pip-compile lock."""
    pins: dict[str, tuple[str, set[str]]] = {}
    current = ""
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), set())
        for digest in HASH.findall(line):
            pins[current][1].add(digest)
    return {name: (version, frozenset(hashes)) for name, (version, hashes) in pins.items()}


def role_lock(role: str) -> Path:
    return REPO / "requirements" / f"{role}.txt"


def project() -> dict[str, object]:
    return dict(tomllib.loads((REPO / "pyproject.toml").read_text())["project"])


def direct_requirements(role: str) -> set[str]:
    """The base install plus the role's extra, for Linux and Python 3.11."""
    extras = project()["optional-dependencies"]
    assert isinstance(extras, dict)
    lines = [*project()["dependencies"], *extras[role]]  # type: ignore[misc]
    environment = {"sys_platform": "linux", "python_version": "3.11", "extra": ""}
    return {
        canonicalize_name(requirement.name)
        for requirement in map(Requirement, lines)
        if requirement.marker is None or requirement.marker.evaluate(environment)
    }


@pytest.mark.parametrize("role", ROLES)
def test_each_role_lock_pins_what_the_full_lock_pins(role: str) -> None:
    full, lock = read_lock(FULL_LOCK), read_lock(role_lock(role))
    assert lock, f"requirements/{role}.txt pins nothing"
    differing = {name: pin[0] for name, pin in lock.items() if full.get(name) != pin}
    assert not differing, f"requirements/{role}.txt is not lock.txt's (`make lock-roles`): {differing}"
    assert all(hashes for _, hashes in lock.values()), "every pin needs its hashes (--require-hashes)"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_lock_holds_its_install_and_the_build_backend(role: str) -> None:
    pinned = set(read_lock(role_lock(role)))
    assert direct_requirements(role) <= pinned
    assert "setuptools" in pinned, "the image builds the project with --no-build-isolation"


def test_the_api_lock_holds_no_worker_library() -> None:
    """The worker's libraries are pyproject.toml's `worker` extra (tests/test_packaging.py)."""
    extras = project()["optional-dependencies"]
    assert isinstance(extras, dict)
    worker_extra = {canonicalize_name(Requirement(line).name) for line in extras["worker"]}
    api_lock = read_lock(role_lock("api"))
    assert not [name for name in api_lock if name in worker_extra or BROUGHT_BY_WORKER_LIBRARIES.match(name)]
    assert worker_extra <= set(read_lock(role_lock("worker")))


def dockerfile(role: str) -> str:
    return (DEPLOY / f"Dockerfile.{role}").read_text()


@pytest.mark.parametrize("role", ROLES)
def test_each_image_installs_its_hashed_lock_then_the_project_alone(role: str) -> None:
    text = dockerfile(role)
    assert re.search(rf"pip install --require-hashes -r \S*{role}\.txt", text)
    assert f"COPY requirements/{role}.txt " in text
    assert re.search(r"pip install --no-deps --no-build-isolation /src", text)


@pytest.mark.parametrize("role", ROLES)
def test_each_image_runs_as_a_non_root_user_on_python_3_11_slim(role: str) -> None:
    text = dockerfile(role)
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert stages and all(re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", image) for image in stages)
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users and users[-1] not in {"0", "root"}


def dockerignore_lets_through(path: str) -> bool:
    """Docker's rule: the last pattern that matches decides; `!` lets a path back in."""
    included = True
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            included = negated
    return included


@pytest.mark.parametrize("role", ROLES)
def test_each_image_copies_every_package_and_docker_ignores_none_of_them(role: str) -> None:
    copied = {
        source
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile(role), flags=re.MULTILINE)
        for source in line.split()[:-1]
    }
    for source in copied:
        assert (REPO / source).exists(), source
        assert dockerignore_lets_through(source), f".dockerignore leaves out {source}"
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in find["include"]}
    assert packages <= copied
