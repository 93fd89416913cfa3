"""The service as `make run` runs it (infra/run-local.sh): the broker, `captioner topics create`, WORKERS
workers and one `captioner api`, here with topic names and a port of this benchmark's own. Each worker is
`captioner worker` as the harness runs it (tests/support/harness_worker.py), so that its captions can be
forced to a fixed length."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.breakdown import request_partitions_held
from bench.models import REPO
from core.cache_signing import write_key_pair
from core.kafka_config import client_config
from core.settings import ApiSettings, KafkaSettings, TopicSettings, load_settings, variable_names
from tests.support.processes import (
    CAPTIONER,
    HARNESS_WORKER,
    ApiProcess,
    ServiceProcess,
    free_port,
    free_ports,
    spawn,
    spawn_api,
)

BROKER_SH = REPO / "infra" / "kafka" / "broker.sh"
_READY_TIMEOUT_S = 300.0  # a worker loads its model first
# At saturation a request waits for the batch ahead of it: on a slow or busy machine that can pass the
# default 30 s, and a 504 would then measure this timeout, not the service's throughput.
REQUEST_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ServiceSpec:
    label: str  # e.g. "base" or "tiny": names the topics, the consumer group and the logs
    model_dir: Path
    workers: int
    worker_threads: int
    max_new_tokens: int
    min_new_tokens: int  # the harness worker's forced length (HARNESS_MIN_NEW_TOKENS)
    # CPU of each worker, in order (`taskset -c`); empty: no pinning, the scheduler places them.
    worker_cpus: tuple[int, ...] = ()
    # Settings of this service alone, over the harness's environment (the GPU run's device and dtype).
    extra_env: tuple[tuple[str, str], ...] = ()
    # The workers forked by one process after its imports (CAPTIONER_WORKER_PROCESSES), as `WORKERS=N make
    # run` starts them, instead of a process each; no pinning then.
    forked: bool = False

    def worker_command(self, index: int) -> list[str]:
        """The harness's worker, under `taskset` when pinned; taskset execs it, so the pid is the worker's."""
        if not self.worker_cpus:
            return list(HARNESS_WORKER)
        return ["taskset", "-c", str(self.worker_cpus[index - 1]), *HARNESS_WORKER]


def worker_id(run_id: str, label: str, index: int) -> str:
    """CAPTIONER_WORKER_ID of worker `index` (from 1): the `worker_id` of each answer it gives."""
    return f"{workers_id(run_id, label)}-{index}"


def workers_id(run_id: str, label: str) -> str:
    """CAPTIONER_WORKER_ID of the process that forks a service's workers: theirs less the index."""
    return f"{run_id}-{label}-worker"


@dataclass(frozen=True)
class Service:
    spec: ServiceSpec
    url: str  # http://127.0.0.1:<port>
    api: ApiProcess
    workers: tuple[ServiceProcess, ...]
    run_id: str
    worker_metrics_ports: tuple[int, ...] = ()  # each worker's CAPTIONER_METRICS_PORT, in order

    @property
    def worker_metrics_urls(self) -> tuple[str, ...]:
        return tuple(f"http://127.0.0.1:{port}/metrics" for port in self.worker_metrics_ports)

    @property
    def worker_ids(self) -> tuple[str, ...]:
        count = self.spec.workers
        return tuple(worker_id(self.run_id, self.spec.label, index) for index in range(1, count + 1))

    @property
    def topics(self) -> dict[str, str]:
        """This service's topic names and worker group, as topic_env gives them."""
        return topic_env(self.run_id, self.spec.label)

    @property
    def predictions_url(self) -> str:
        return f"{self.url}/api/v1/predictions"

    def check_alive(self) -> None:
        for process in (self.api, *self.workers):
            process.check_alive()


def start_broker(stack: ExitStack) -> str:
    """KAFKA_BOOTSTRAP_SERVERS if set; else `broker.sh start`. A broker this run started is stopped at the
    end; one that was already running (someone else's) is left running."""
    kafka = load_settings(KafkaSettings)
    if "bootstrap_servers" in kafka.model_fields_set:
        return kafka.bootstrap_servers
    was_running = subprocess.run([BROKER_SH, "status"], capture_output=True, check=False).returncode == 0
    started = subprocess.run([BROKER_SH, "start"], capture_output=True, text=True, check=False, timeout=180)
    if started.returncode != 0:
        raise RuntimeError(f"broker.sh start failed:\n{started.stderr}")
    if not was_running:
        stack.callback(_stop_broker)
    return started.stdout.strip().splitlines()[-1]


def _stop_broker() -> None:
    subprocess.run([BROKER_SH, "stop"], check=False, timeout=120)


def topic_env(run_id: str, label: str) -> dict[str, str]:
    """Topic names and consumer group of one service run, so no run ever reads another's records."""
    prefix = f"{run_id}-{label}"
    return {
        "CAPTIONER_TOPIC_REQUESTS": f"{prefix}.requests",
        "CAPTIONER_TOPIC_REPLIES": f"{prefix}.replies",
        "CAPTIONER_TOPIC_RETRY_PREFIX": f"{prefix}.requests.retry",
        "CAPTIONER_TOPIC_DEAD_LETTER": f"{prefix}.requests.dlq",
        "CAPTIONER_TOPIC_CAPTIONS": f"{prefix}.captions",
        "CAPTIONER_WORKER_GROUP_ID": f"{prefix}.workers",
    }


def run_topics(run_id: str, label: str) -> TopicSettings:
    """The topic settings this run's services read: the environment's, with the run's own names."""
    names = topic_env(run_id, label)
    run_names = {
        field: names[variable]
        for field, variable in variable_names(TopicSettings).items()
        if variable in names
    }
    return load_settings(TopicSettings).model_copy(update=run_names)


def service_env(spec: ServiceSpec, *, bootstrap: str, run_id: str, port: int) -> dict[str, str]:
    """The harness's environment (so CAPTIONER_DECODER, CAPTIONER_MAX_BATCH_SIZE... pass through), plus
    what this run fixes: model, generation length, threads, topics, port, and a longer request timeout
    (REQUEST_TIMEOUT_S) unless CAPTIONER_API_REQUEST_TIMEOUT_S sets one."""
    api = load_settings(ApiSettings)
    request_timeout_s = api.request_timeout_s if "request_timeout_s" in api.model_fields_set else None
    return {
        **os.environ,
        **topic_env(run_id, spec.label),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CAPTIONER_MODEL": str(spec.model_dir),
        "CAPTIONER_MAX_NEW_TOKENS": str(spec.max_new_tokens),
        "HARNESS_MIN_NEW_TOKENS": str(spec.min_new_tokens),
        "CAPTIONER_WORKER_THREADS": str(spec.worker_threads),
        "CAPTIONER_API_HOST": "127.0.0.1",
        "CAPTIONER_API_PORT": str(port),
        "CAPTIONER_API_REQUEST_TIMEOUT_S": f"{request_timeout_s or REQUEST_TIMEOUT_S:g}",
        **dict(spec.extra_env),
    }


Started = TypeVar("Started", bound=ServiceProcess)


@contextlib.contextmanager
def running_service(spec: ServiceSpec, *, bootstrap: str, run_id: str, log_dir: Path) -> Iterator[Service]:
    """Start the service, wait until it answers /readyz and every worker has partitions; on exit (normal or
    not) SIGTERM the API, then the workers, wait for each, and delete the run's topics."""
    port = free_port()
    env = service_env(spec, bootstrap=bootstrap, run_id=run_id, port=port)
    with ExitStack() as stack:
        env |= cache_key_env(env, Path(stack.enter_context(tempfile.TemporaryDirectory())))
        stack.callback(delete_topics, bootstrap, run_id, spec.label)
        _create_topics(env, log_dir / f"{spec.label}-topics.log")
        if spec.forked:
            first_port = free_ports(spec.workers)
            metrics_ports = tuple(range(first_port, first_port + spec.workers))
            workers: tuple[ServiceProcess, ...] = (
                _start(stack, _spawn_forked(spec, env, run_id=run_id, port=first_port, log_dir=log_dir)),
            )
        else:
            metrics_ports = tuple(free_port() for _ in range(spec.workers))  # the breakdown reads them
            workers = tuple(
                _start(
                    stack,
                    spawn(
                        f"{spec.label} worker {index}",
                        spec.worker_command(index),
                        env={
                            **env,
                            "CAPTIONER_WORKER_ID": worker_id(run_id, spec.label, index),
                            "CAPTIONER_WORKER_METRICS_PORT": str(metrics_ports[index - 1]),
                        },
                        log_path=log_dir / f"{spec.label}-worker-{index}.log",
                    ),
                )
                for index in range(1, spec.workers + 1)
            )
        api = _start(
            stack,
            spawn_api(f"{spec.label} api", port=port, env=env, log_path=log_dir / f"{spec.label}-api.log"),
        )
        service = Service(
            spec=spec,
            url=f"http://127.0.0.1:{port}",
            api=api,
            workers=workers,
            run_id=run_id,
            worker_metrics_ports=metrics_ports,
        )
        _wait_ready(service)
        yield service


def _spawn_forked(
    spec: ServiceSpec, env: Mapping[str, str], *, run_id: str, port: int, log_dir: Path
) -> ServiceProcess:
    """One harness process that forks spec.workers workers: `<run>-<label>-worker-1`, ... as worker_id
    names them, on the metrics ports from `port` up."""
    return spawn(
        f"{spec.label} workers",
        list(HARNESS_WORKER),
        env={
            **env,
            "CAPTIONER_WORKER_PROCESSES": str(spec.workers),
            "CAPTIONER_WORKER_ID": workers_id(run_id, spec.label),
            "CAPTIONER_WORKER_METRICS_PORT": str(port),
        },
        log_path=log_dir / f"{spec.label}-workers.log",
    )


def cache_key_env(env: Mapping[str, str], directory: Path) -> dict[str, str]:
    """A key pair of the run's own, so that workers sign caption-cache entries and the API serves them
    (docs/caption-cache.md), unless the environment names keys already."""
    if "CAPTIONER_CACHE_SIGNING_KEY_FILE" in env or "CAPTIONER_CACHE_VERIFY_KEYS_FILE" in env:
        return {}
    private_path, public_path = write_key_pair(directory)
    return {
        "CAPTIONER_CACHE_SIGNING_KEY_FILE": str(private_path),
        "CAPTIONER_CACHE_VERIFY_KEYS_FILE": str(public_path),
    }


def _start(stack: ExitStack, process: Started) -> Started:
    stack.callback(process.stop)
    return process


def _create_topics(env: Mapping[str, str], log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [CAPTIONER, "topics", "create"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log_path.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"captioner topics create failed:\n{result.stderr[-3000:]}")


def _wait_ready(service: Service) -> None:
    give_up = time.monotonic() + _READY_TIMEOUT_S
    for worker in service.workers:
        worker.wait_for_log("assigned", timeout_s=max(give_up - time.monotonic(), 1.0))
    if service.spec.forked:  # one log for all: each worker's metrics say when it holds request partitions
        requests_topic = service.topics["CAPTIONER_TOPIC_REQUESTS"]
        while not all(request_partitions_held(url, requests_topic) for url in service.worker_metrics_urls):
            service.check_alive()
            if time.monotonic() > give_up:
                tail = service.workers[0].log_tail()
                raise TimeoutError(f"not every forked worker holds request partitions:\n{tail}")
            time.sleep(0.2)
    service.check_alive()
    service.api.wait_ready(timeout_s=max(give_up - time.monotonic(), 1.0))


def delete_topics(bootstrap: str, run_id: str, label: str) -> None:
    """Best effort: the run's topics hold nothing but benchmark traffic."""
    from confluent_kafka.admin import AdminClient

    topics = run_topics(run_id, label)
    config = client_config(load_settings(KafkaSettings), client_id=f"{run_id}-admin") | {
        "bootstrap.servers": bootstrap
    }
    try:
        admin = AdminClient(config)  # kept referenced until the futures are done
        futures = admin.delete_topics(
            [topics.requests, topics.replies, *topics.retry_topics, topics.dead_letter, topics.captions],
            operation_timeout=30,
        )
        for future in futures.values():
            future.result(timeout=30)
    except Exception as exc:
        print(f"bench: could not delete the {label} topics of {run_id}: {exc}", file=sys.stderr)
