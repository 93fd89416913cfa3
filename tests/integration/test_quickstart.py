"""The README's Quickstart works as written: each `sh` block of its Quickstart section runs, in order and
unchanged but for the port numbers, in a copy of the repository (what a checkout holds, with this
checkout's installed .venv and fetched broker jars), the block that runs `make run` in the background as
the service, the others against it, with a ~300 KB photo-like JPEG as `photo.jpg` and a few more in
`~/Pictures`. Every answer must be a caption shaped like the README's example answer, the bulk run must
caption the folder, and Ctrl-C (SIGINT to the process group) must stop everything with one last line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import REPO
from tests.support.images import make_picture
from tests.support.processes import running, session_members
from tests.support.services import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)
DOCUMENTED_PORT = re.compile(r"\b(localhost|127\.0\.0\.1):9000\b")
# A phone photo's order of size: its base64 is far above the 128 KiB one command-line argument may hold.
PHOTO_BYTES = (200_000, 400_000)
READY_TIMEOUT_S = 300  # building the tiny model, the broker's first start, the worker's model load
BLOCK_TIMEOUT_S = 180
STOP_DEADLINE_S = 15


def quickstart_section() -> str:
    text = README.read_text()
    start = text.index("\n## Quickstart\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def fenced_blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(quickstart_section()) if lang == language]


def with_port(block: str, port: int) -> str:
    """The block as written, the documented API port moved to the test's own."""
    return DOCUMENTED_PORT.sub(lambda match: f"{match.group(1)}:{port}", block)


def write_photo(path: Path, *, seed: int, size: tuple[int, int] = (1024, 768)) -> Path:
    make_picture(*size, seed=seed).save(path, "JPEG", quality=88)
    return path


def copy_checkout(to: Path) -> Path:
    """The files a checkout holds (tracked, or new and not ignored), times kept so that make sees the install
    as done; the installed .venv and the fetched broker jars are this checkout's own."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name, follow_symlinks=False)
    (to / ".venv").symlink_to(REPO / ".venv")
    (to / ".local" / "kafka").mkdir(parents=True)
    (to / ".local" / "kafka" / "libs").symlink_to((REPO / ".local" / "kafka" / "libs").resolve())
    return to


@dataclass
class Shell:
    """The user's shell: the copy as its working directory, a home of its own, ports of its own."""

    checkout: Path
    env: dict[str, str]
    api_port: int
    output: Path

    def run(self, block: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", with_port(block, self.api_port)],
            cwd=self.checkout,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )

    def start(self, block: str) -> subprocess.Popen[bytes]:
        with self.output.open("wb") as out:
            return subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", with_port(block, self.api_port)],
                cwd=self.checkout,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    checkout = copy_checkout(tmp_path / "captioner")
    home = tmp_path / "home"
    (home / "Pictures").mkdir(parents=True)
    for seed in range(3):
        write_photo(home / "Pictures" / f"holiday-{seed}.jpg", seed=seed, size=(640, 480))
    write_photo(checkout / "photo.jpg", seed=11)
    api_port = free_port()
    env = {name: value for name, value in os.environ.items() if name != "KAFKA_BOOTSTRAP_SERVERS"} | {
        "HOME": str(home),
        "KAFKA_LOCAL_PORT": str(free_port()),
        "KAFKA_LOCAL_CONTROLLER_PORT": str(free_port()),
        "CAPTIONER_API_PORT": str(api_port),
        "METRICS_PORT_BASE": str(free_port() - 1),  # worker 1 serves on base + 1
    }
    yield Shell(checkout, env, api_port, tmp_path / "make-run.out")
    subprocess.run(
        [str(checkout / "infra" / "kafka" / "broker.sh"), "stop"], env=env, check=False, capture_output=True
    )


def answers(stdout: str) -> list[dict[str, Any]]:
    """The JSON bodies the block's curls printed one after another (curl adds no line break)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(stdout):
        if stdout[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(stdout, at)
        found.append(value)
    return found


def stop_by_ctrl_c(service: subprocess.Popen[bytes], shell: Shell) -> None:
    broker_pid_file = next((shell.checkout / ".local" / "kafka").glob("state-*/broker.pid"))
    processes = session_members(service.pid) | {int(broker_pid_file.read_text())}
    os.killpg(service.pid, signal.SIGINT)
    wait_until(
        lambda: not any(running(pid) for pid in processes),
        timeout_s=STOP_DEADLINE_S,
        message=lambda: f"still running: {[p for p in processes if running(p)]}\n{shell.text()[-3000:]}",
    )


@pytest.mark.timeout(900)
def test_the_readmes_quickstart_runs_as_written(shell: Shell) -> None:
    blocks = fenced_blocks("sh")
    [example] = [json.loads(block) for block in fenced_blocks("json")]
    [service_block] = [block for block in blocks if re.search(r"\bmake run\b", block)]
    setup, clients = blocks[: blocks.index(service_block)], blocks[blocks.index(service_block) + 1 :]
    assert setup and clients, blocks
    assert all(DOCUMENTED_PORT.search(block) for block in clients)
    assert PHOTO_BYTES[0] < (shell.checkout / "photo.jpg").stat().st_size < PHOTO_BYTES[1]
    installed = subprocess.run(["make", "-q", "install"], cwd=shell.checkout, env=shell.env, check=False)
    if installed.returncode != 0:  # the block would install: a test installs nothing
        pytest.fail("`.venv` is not up to date with pyproject.toml and the lock: run `make install` first")

    for block in setup:
        done = shell.run(block)
        assert done.returncode == 0, f"{block}\n{done.stdout}\n{done.stderr}"

    service = shell.start(service_block)
    try:
        wait_until(
            lambda: "ready:" in shell.text() or service.poll() is not None,
            timeout_s=READY_TIMEOUT_S,
            message=lambda: shell.text()[-3000:],
        )
        assert service.poll() is None, shell.text()[-3000:]

        outputs = []
        for block in clients:
            done = shell.run(block)
            assert done.returncode == 0, f"{block}\n{done.stdout}\n{done.stderr}"
            outputs.append(done.stdout)

        captions = [answer for output in outputs for answer in answers(output)]
        assert len(captions) == 3, outputs  # base64 JSON, multipart, raw body
        for caption in captions:
            assert caption.keys() == example.keys(), caption
            assert isinstance(caption["title"], str) and caption["title"], caption
        titles = [json.loads(line) for line in (shell.checkout / "titles.jsonl").read_text().splitlines()]
        assert sorted(Path(row["path"]).name for row in titles) == [f"holiday-{n}.jpg" for n in range(3)]
        assert all(row["status"] == "ok" and row["title"] for row in titles), titles

        stop_by_ctrl_c(service, shell)
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.wait(timeout=5)
        assert shell.text().rstrip().splitlines()[-1] == "stopped (SIGINT)", shell.text()[-3000:]
        assert "make: ***" not in shell.text()
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait()
