"""The floor under `api_cpu_ms_per_request`: what a bare aiohttp server costs per request on this machine.

It runs on the API's own event loop (core.event_loop: uvloop where installed), reads each body whole and
answers a small JSON body, and nothing else: no Kafka, no image check, no middleware. The same load client
offers it the same open loop as the API's measurement (`bench.measure.measure_api_cost`), so the two CPU
times per request compare directly; the API's own work is the difference.

    python -m bench.api_floor PORT   (the server alone; make bench starts it itself)
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from bench.breakdown import cpu_seconds
from bench.images import BenchImage
from bench.load import LoadClient, OpenLoop, Target
from core.event_loop import new_event_loop
from tests.support.processes import free_port
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
PATH = "/api/v1/predictions"
START_TIMEOUT_S = 30.0
CLIENT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
# What the load client reads from a 200 (bench.load.answered), in the shape the API answers.
ANSWER = {"id": "0" * 32, "title": "a bare server", "cached": False, "inference_ms": 0.0, "latency_ms": 0.0}


async def _answer(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response(ANSWER)


def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post(PATH, _answer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=new_event_loop())


@dataclass(frozen=True)
class BareServer:
    url: str
    pid: int


@contextmanager
def bare_server() -> Iterator[BareServer]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.api_floor", str(port)], cwd=REPO)
    try:
        wait_until(
            lambda: _answers(port) or process.poll() is not None,
            timeout_s=START_TIMEOUT_S,
            message=f"the bare aiohttp server to listen on port {port}",
        )
        if process.poll() is not None:
            raise RuntimeError(f"the bare aiohttp server exited (status {process.returncode})")
        yield BareServer(url=f"http://127.0.0.1:{port}{PATH}", pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(port: int) -> bool:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", data=b"x", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def measure_api_floor(client: LoadClient, image: BenchImage, *, duration_s: float, rate: float) -> float:
    """CPU milliseconds per request of the bare server under an open loop at `rate`, one image's body;
    counted from its first request, as the API's is (bench.measure.measure_api_cost)."""
    with bare_server() as server:
        target = Target(url=server.url, payloads=(image.data,), timeout_s=CLIENT_TIMEOUT_S)
        before = cpu_seconds(server.pid)
        run = client.run(OpenLoop(target=target, rate=rate, duration_s=duration_s, poisson=False))
        used = cpu_seconds(server.pid) - before
    if not run.outcomes or not all(outcome.ok for outcome in run.outcomes):
        raise RuntimeError("the bare aiohttp server did not answer every request")
    return 1000 * used / len(run.outcomes)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
