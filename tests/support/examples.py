"""Builds the example clients under examples/ once per test session, every build output outside the
repository: Maven's and Go's download caches stay in the user's home (~/.m2, GOMODCACHE), as they would for
anyone building the examples by hand."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.repo import REPO

BUILD_TIMEOUT_S = 900  # a first build downloads every dependency


@dataclass(frozen=True)
class Program:
    """A built client: the command line that starts it."""

    command: tuple[str, ...]

    def run(self, *args: str, stdin: str = "", timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *args],
            input=stdin,
            capture_output=True,
            encoding="utf-8",
            timeout=timeout_s,
            check=False,
        )

    @contextmanager
    def started(self, *args: str) -> Iterator[subprocess.Popen[str]]:
        """The program running meanwhile (stdout and stderr piped); killed on the way out if still running."""
        with subprocess.Popen(
            [*self.command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
        ) as process:
            try:
                yield process
            finally:
                if process.poll() is None:
                    process.kill()


def _needed(program: str, why: str) -> str:
    found = shutil.which(program)
    if found is None:
        pytest.fail(f"{program} is needed to {why}")
    return found


def maven_program(example: str, main_class: str, build: Path) -> Program:
    """`mvn package` of examples/<example>/pom.xml with its build directory `build`; the program runs
    its classes with the dependency jars of the local Maven repository."""
    mvn = _needed("mvn", f"build examples/{example}; install Maven and a JDK 17+ (apt: maven)")
    java = _needed("java", f"run examples/{example}")
    pom = REPO / "examples" / example / "pom.xml"
    result = subprocess.run(
        [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom), "package", f"-DbuildDir={build}"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"mvn package failed:\n{result.stdout}\n{result.stderr}"
    dependencies = (build / "classpath.txt").read_text().strip()
    return Program((java, "-cp", f"{build / 'classes'}:{dependencies}", main_class))


def go_program(example: str, build: Path) -> Program:
    """`go build` of examples/<example> into `build`; go.sum is not rewritten (-mod=readonly)."""
    go = _needed("go", f"build examples/{example}; install Go 1.24+")
    binary = build / example
    result = subprocess.run(
        [go, "build", "-mod=readonly", "-o", str(binary), "."],
        cwd=REPO / "examples" / example,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"go build failed:\n{result.stdout}\n{result.stderr}"
    return Program((str(binary),))
