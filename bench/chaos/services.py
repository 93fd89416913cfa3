"""The service under test: two `captioner api` instances (reply partitions 0 and 1) and two workers (the
harness's `captioner worker`, for its forced caption length) on the cluster, started as bench/service.py
starts one of each, with topics of this run's own."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.config import ChaosConfig
from bench.load import ClosedLoop, Target, load_client
from bench.service import topic_env
from tests.support.processes import (
    HARNESS_WORKER,
    ApiProcess,
    ChildStarter,
    ServiceProcess,
    exec_child,
    free_port,
    spawn,
    spawn_api,
)

API_COUNT = 2
WORKER_COUNT = 2
RETRY_DELAYS_S = (0.5, 1.0, 2.0)
_READY_TIMEOUT_S = 180.0
PREDICT = "/api/v1/predictions"


def worker_client_id(worker_id: str) -> str:
    """The Kafka client id a worker names itself by (inference_consumer/worker.py)."""
    return f"captioner-worker-{worker_id}"


def service_env(config: ChaosConfig, *, bootstrap: str, model_dir: Path) -> dict[str, str]:
    """What every process of the run shares: the cluster, replicated topics, the model, forced-length captions
    (so a batch costs fixed work and fills under load), short retry delays and this run's deadline."""
    return {
        **os.environ,
        **topic_env(config.run_id, "chaos"),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CAPTIONER_KAFKA_REPLICATION_FACTOR": "3",
        "CAPTIONER_MODEL": str(model_dir),
        "CAPTIONER_WORKER_THREADS": "1",
        "CAPTIONER_MAX_BATCH_SIZE": str(config.max_batch_size),
        "CAPTIONER_MAX_NEW_TOKENS": str(config.new_tokens),
        "HARNESS_MIN_NEW_TOKENS": str(config.new_tokens),
        "CAPTIONER_SESSION_TIMEOUT_MS": str(config.session_timeout_ms),
        "CAPTIONER_DELIVERY_GUARANTEE": config.delivery_guarantee,
        "CAPTIONER_TOPIC_RETRY_DELAYS_S": json.dumps(RETRY_DELAYS_S),
        "CAPTIONER_API_HOST": "127.0.0.1",
        "CAPTIONER_API_REQUEST_TIMEOUT_S": f"{config.request_timeout_s:g}",
        # The traffic repeats a few images to catch swapped replies: each must reach a worker.
        "CAPTIONER_CACHE_ENABLED": "false",
    }


@dataclass
class Deployment:
    env: dict[str, str]
    log_dir: Path
    stack: ExitStack
    apis: list[ApiProcess] = field(default_factory=list)
    api_urls: list[str] = field(default_factory=list)
    workers: list[ServiceProcess] = field(default_factory=list)
    start: ChildStarter = exec_child  # how a service process starts (the suite forks preloaded ones)
    _started_workers: int = 0

    @property
    def group(self) -> str:
        return self.env["CAPTIONER_WORKER_GROUP_ID"]

    @property
    def predict_urls(self) -> tuple[str, ...]:
        return tuple(url + PREDICT for url in self.api_urls)

    def start_worker(self) -> ServiceProcess:
        """A new worker (a replacement gets a new id); it logs each batch (DEBUG) so a fault can pick its
        moment. Returns once it holds partitions."""
        self._started_workers += 1
        worker_id = f"worker-{self._started_workers}"
        worker = spawn(
            worker_id,
            HARNESS_WORKER,
            env={**self.env, "CAPTIONER_WORKER_ID": worker_id, "CAPTIONER_LOG_LEVEL": "DEBUG"},
            log_path=self.log_dir / f"{worker_id}.log",
            start=self.start,
        )
        self.stack.callback(worker.stop)
        self.workers.append(worker)
        worker.wait_for_log("assigned", timeout_s=_READY_TIMEOUT_S)
        return worker

    def start_api(self, partition: int) -> None:
        api = spawn_api(
            f"api-{partition}",
            port=free_port(),
            env={
                **self.env,
                "CAPTIONER_API_REPLY_PARTITION": str(partition),
                "CAPTIONER_API_INSTANCE_ID": f"chaos-api-{partition}",
            },
            log_path=self.log_dir / f"api-{partition}.log",
            start=self.start,
        )
        self.stack.callback(api.stop)
        self.apis.append(api)
        self.api_urls.append(api.url)

    def wait_ready(self) -> None:
        give_up = time.monotonic() + _READY_TIMEOUT_S
        for api in self.apis:
            api.wait_ready(timeout_s=max(give_up - time.monotonic(), 1.0))


def deploy(
    stack: ExitStack, env: dict[str, str], log_dir: Path, *, start: ChildStarter = exec_child
) -> Deployment:
    deployment = Deployment(env=env, log_dir=log_dir, stack=stack, start=start)
    for _ in range(WORKER_COUNT):
        deployment.start_worker()
    for partition in range(API_COUNT):
        deployment.start_api(partition)
    deployment.wait_ready()
    return deployment


def caption(url: str, image: bytes, *, timeout_s: float) -> str:
    request = urllib.request.Request(url, data=image, headers={"Content-Type": "image/jpeg"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return str(json.load(response)["title"])


def learn_titles(urls: Sequence[str], images: Sequence[bytes], *, timeout_s: float) -> list[str]:
    """Each image's title, asked of every instance one request at a time on the quiet service: the answer a
    caller must get later under faults. Instances that disagree mean the service is broken before any
    fault."""
    titles = []
    for image in images:
        answers = {caption(url, image, timeout_s=timeout_s) for url in urls}
        if len(answers) != 1:
            raise RuntimeError(f"the instances gave one image different titles: {sorted(answers)}")
        titles.append(answers.pop())
    return titles


def measure_capacity(urls: Sequence[str], image: bytes, *, concurrency: int, seconds: float) -> float:
    """Answers per second over all instances with `concurrency` callers on each (bench/load.py's closed loop,
    one client process per instance)."""

    def run(url: str) -> tuple[int, float]:
        spec = ClosedLoop(
            target=Target(url=url, payloads=(image,), timeout_s=60),
            concurrency=concurrency,
            min_s=seconds,
            min_completions=1,
            max_s=seconds * 2,
        )
        with load_client() as client:
            result = client.run(spec)
        return sum(1 for outcome in result.measured if outcome.ok), result.wall_s

    with ThreadPoolExecutor(len(urls)) as pool:
        runs = list(pool.map(run, urls))
    return sum(ok / wall for ok, wall in runs)
