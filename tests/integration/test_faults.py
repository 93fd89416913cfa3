"""Failure modes against a real broker: poison records, retries, deadlines, crashes, outages, overload."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest
import requests

from core.settings import TopicSettings
from schemas import REPLY_CODEC, ReplyStatus
from schemas import headers as record_headers
from tests.conftest import StartApi, StartWorker
from tests.integration.test_pipeline import PREDICT, post_image
from tests.support.broker import BROKER_SCRIPT
from tests.support.images import make_image_bytes, reference_captioner
from tests.support.kafka import caption_request, committed_offset, publish, publish_request, read_until
from tests.support.processes import HARNESS_WORKER
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DLQ_HEADERS = [
    record_headers.ORIGINAL_TOPIC,
    record_headers.ORIGINAL_PARTITION,
    record_headers.ORIGINAL_OFFSET,
    record_headers.ORIGINAL_TIMESTAMP_MS,
    record_headers.ATTEMPT,
    record_headers.DLQ_CONSUMER_GROUP,
    record_headers.DLQ_ERROR_CLASS,
    record_headers.DLQ_ERROR_CODE,
    record_headers.DLQ_ERROR_MESSAGE,
    record_headers.DLQ_ERROR_STACK,
    record_headers.DLQ_WORKER_ID,
    record_headers.DLQ_FAILED_AT_MS,
]
# 100 decoding steps a batch, with a model that never ends a caption early (the endless_model_dir
# fixture), so that work is in flight when we strike.
SLOW_TOKENS = {"CAPTIONER_MAX_NEW_TOKENS": "100"}


def report(name: str, **counts: int) -> None:
    """Fault-test tallies, printed (pytest -s shows them) for the release notes."""
    print(json.dumps({"test": name, **counts}))


def test_poison_and_garbage_records_go_to_the_dlq_without_stopping_the_partition(
    start_worker: StartWorker, topics: TopicSettings, kafka_bootstrap: str, tiny_model_dir: Path
) -> None:
    start_worker()
    poison = caption_request(b"\x89PNG\r\n\x1a\n definitely not a png", reply_topic=topics.replies)
    good_image = make_image_bytes("PNG", seed=5)
    good = caption_request(good_image, reply_topic=topics.replies)
    publish(kafka_bootstrap, topics.requests, os.urandom(64), key=b"garbage", partition=0)
    publish_request(kafka_bootstrap, topics.requests, poison, partition=0)
    publish_request(kafka_bootstrap, topics.requests, good, partition=0)

    dead = read_until(kafka_bootstrap, topics.dead_letter, lambda records: len(records) >= 2)
    replies = read_until(kafka_bootstrap, topics.replies, lambda records: len(records) >= 2)

    assert {record.key for record in dead} == {b"garbage", poison.correlation_id.encode()}
    for record in dead:
        assert all(name in record.headers for name in DLQ_HEADERS), record.headers.keys()
        assert record.headers[record_headers.ORIGINAL_TOPIC] == topics.requests.encode()
        assert record.headers[record_headers.ORIGINAL_PARTITION] == b"0"
        assert record.headers[record_headers.ATTEMPT] == b"1"
    garbage = next(record for record in dead if record.key == b"garbage")
    assert garbage.headers[record_headers.DLQ_ERROR_CLASS] == b"NotSingleObjectError"
    assert len(garbage.value) == 64  # the original bytes, unchanged
    by_id = {reply.correlation_id: reply for reply in (REPLY_CODEC.decode(r.value) for r in replies)}
    assert by_id[poison.correlation_id].status is ReplyStatus.FAILED
    assert by_id[poison.correlation_id].error is not None
    assert by_id[poison.correlation_id].error.code == "invalid_image"
    assert by_id[good.correlation_id].title == reference_captioner(tiny_model_dir).caption(good_image)
    group = os.environ["CAPTIONER_WORKER_GROUP_ID"]
    wait_until(
        lambda: committed_offset(kafka_bootstrap, group, topics.requests, 0) >= 3,
        timeout_s=20,
        interval_s=0.5,
        message="the partition's offsets were not committed past the poison",
    )


def test_permanent_failure_reaches_the_caller_at_once(start_worker: StartWorker, start_api: StartApi) -> None:
    start_worker()
    api = start_api()
    truncated_jpeg = make_image_bytes("JPEG", width=320, height=240)[:600]

    response = post_image(api.url, truncated_jpeg, how="image/jpeg")

    # A 422 is the worker's FAILED reply; had the failure been retried or lost, the caller would have got
    # the 504 of the API's timeout instead.
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_image"


def test_transient_failure_is_retried_and_answered(
    start_worker: StartWorker, start_api: StartApi, tiny_model_dir: Path
) -> None:
    start_worker(command=HARNESS_WORKER, HARNESS_FAILING_BATCHES="1")
    api = start_api()
    image = make_image_bytes("JPEG", seed=9)

    response = post_image(api.url, image)

    assert response.status_code == 200, response.text
    assert response.json()["attempt"] == 2
    assert response.json()["title"] == reference_captioner(tiny_model_dir).caption(image)


def test_exhausted_retries_end_in_the_dlq_and_a_503(
    start_worker: StartWorker, start_api: StartApi, topics: TopicSettings, kafka_bootstrap: str
) -> None:
    start_worker(command=HARNESS_WORKER, HARNESS_FAILING_BATCHES="1000")
    api = start_api()

    response = post_image(api.url, make_image_bytes("PNG", seed=2))

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "caption_unavailable"
    [dead] = read_until(kafka_bootstrap, topics.dead_letter, lambda records: len(records) >= 1)
    assert dead.headers[record_headers.ATTEMPT] == str(1 + len(topics.retry_delays_s)).encode()
    assert dead.headers[record_headers.DLQ_ERROR_CODE] == b"inference_failed"
    assert dead.headers[record_headers.ORIGINAL_TOPIC] == topics.requests.encode()


def test_expired_job_is_not_run_and_is_counted(
    start_worker: StartWorker, topics: TopicSettings, kafka_bootstrap: str
) -> None:
    from tests.support.services import free_port

    metrics_port = free_port()
    start_worker(CAPTIONER_WORKER_METRICS_PORT=str(metrics_port))
    expired = caption_request(make_image_bytes("PNG"), reply_topic=topics.replies, deadline_s=-1)
    live = caption_request(make_image_bytes("PNG", seed=1), reply_topic=topics.replies)
    publish_request(kafka_bootstrap, topics.requests, expired, partition=1)
    publish_request(kafka_bootstrap, topics.requests, live, partition=1)

    [reply] = read_until(kafka_bootstrap, topics.replies, lambda records: len(records) >= 1)

    assert REPLY_CODEC.decode(reply.value).correlation_id == live.correlation_id
    metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert 'captioner_worker_jobs_total{outcome="expired"} 1.0' in metrics


def test_killing_a_worker_mid_batch_loses_no_request(
    start_worker: StartWorker, start_api: StartApi, endless_model_dir: Path
) -> None:
    settings = {**SLOW_TOKENS, "CAPTIONER_MODEL": str(endless_model_dir), "CAPTIONER_MAX_BATCH_SIZE": "4"}
    victim = start_worker(**settings)
    start_worker(**settings)
    api = start_api(CAPTIONER_API_REQUEST_TIMEOUT_S="60")
    images = [make_image_bytes("JPEG", seed=seed) for seed in range(48)]
    answered: list[int] = []

    def call(image: bytes) -> int:
        try:
            status = post_image(api.url, image, timeout=90).status_code
        except requests.RequestException:
            return -1
        answered.append(status)
        return status

    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = [pool.submit(call, image) for image in images]
        wait_until(lambda: len(answered) >= 8, timeout_s=120, message=lambda: f"{answered} answered")
        victim.kill()  # SIGKILL: no cleanup, no commit, no goodbye to the group
        statuses = [future.result() for future in futures]

    counts = collections.Counter(statuses)
    lost = counts[-1]
    report(
        "kill -9 a worker mid-batch",
        sent=len(images),
        answered=len(images) - lost,
        ok=counts[200],
        errors=len(images) - lost - counts[200],
        lost=lost,
    )
    assert lost == 0
    assert counts[200] == len(images), counts


class OwnBroker:
    """A broker only this test stops and starts."""

    def __init__(self, state: Path) -> None:
        from tests.support.services import free_port

        port, controller_port = free_port(), free_port()
        while controller_port == port:
            controller_port = free_port()
        # Its own free controller port, not broker.sh's default of port + 1: free_port's ports are odd
        # (Linux gives bind(0) odd ports), and the even one above it is where connect() looks first, so an
        # outgoing connection of another test could hold it.
        self.env = os.environ | {
            "KAFKA_LOCAL_PORT": str(port),
            "KAFKA_LOCAL_CONTROLLER_PORT": str(controller_port),
            "KAFKA_LOCAL_STATE": str(state),
        }
        self.bootstrap = f"127.0.0.1:{port}"
        self.log_path = state / "broker.log"  # broker.sh's

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")

    def _run(self, command: str) -> None:
        done = subprocess.run([str(BROKER_SCRIPT), command], env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"broker.sh {command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    broker = OwnBroker(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()


class BackgroundLoad:
    """Closed-loop clients that keep posting until stopped, noting for each request which client sent
    it, when, and its status (-1: no answer)."""

    def __init__(self, url: str, image: bytes, *, clients: int) -> None:
        self.clients = set(range(clients))
        self.answers: list[tuple[int, float, int]] = []  # (client, sent at, status); appends are atomic
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(client, url, image)) for client in self.clients
        ]

    def __enter__(self) -> BackgroundLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    @property
    def statuses(self) -> collections.Counter[int]:
        return collections.Counter(status for _, _, status in list(self.answers))

    def served_since(self, moment: float) -> set[int]:
        """The clients that got a caption for a request they sent at or after moment."""
        return {client for client, sent, status in list(self.answers) if sent >= moment and status == 200}

    def _run(self, client: int, url: str, image: bytes) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                status = post_image(url, image, timeout=60).status_code
            except requests.RequestException:
                status = -1
            self.answers.append((client, sent, status))
            self._stop.wait(0.05)  # pacing: a client refused at once does not spin


def test_broker_outage_gives_quick_503s_then_recovers(
    own_broker: OwnBroker, start_worker: StartWorker, start_api: StartApi, env: dict[str, str]
) -> None:
    env["KAFKA_BOOTSTRAP_SERVERS"] = own_broker.bootstrap
    worker = start_worker()
    api = start_api(CAPTIONER_API_REQUEST_TIMEOUT_S="10")
    image = make_image_bytes("PNG", seed=4)
    assert post_image(api.url, image).status_code == 200

    def logs() -> str:
        """What a failed recovery leaves to read (CI keeps no files)."""
        return "".join(
            f"\n--- {name} log, last lines ---\n{tail}"
            for name, tail in (
                ("worker", worker.log_tail(3000)),
                ("api", api.log_tail(3000)),
                ("broker", own_broker.log_tail(3000)),
            )
        )

    with BackgroundLoad(api.url, image, clients=4) as load:
        load_started = time.monotonic()
        wait_until(
            lambda: load.served_since(load_started) == load.clients,
            timeout_s=60,
            message=lambda: f"not every client was served before the outage: {load.statuses}",
        )
        own_broker.stop()
        during: list[tuple[int, float]] = []
        give_up = time.monotonic() + 30
        while len([status for status, _ in during if status == 503]) < 5:
            assert time.monotonic() < give_up, during
            started = time.monotonic()
            during.append((post_image(api.url, image).status_code, time.monotonic() - started))
        quick_503s = [elapsed for status, elapsed in during if status == 503]
        assert max(quick_503s) < 2.0, quick_503s
        assert requests.get(api.url + "/readyz", timeout=10).status_code == 503

        own_broker.start()
        recovered_at = time.monotonic()  # only requests sent from here on count as served after recovery
        after: list[int] = []

        def served_again() -> bool:
            after.append(post_image(api.url, image).status_code)
            return after[-1] == 200

        wait_until(served_again, timeout_s=90, interval_s=0.5, message=lambda: f"{after}{logs()}")
        wait_until(
            lambda: load.served_since(recovered_at) == load.clients,
            timeout_s=60,
            message=lambda: f"clients served after recovery: {load.served_since(recovered_at)}{logs()}",
        )

    statuses = (
        load.statuses + collections.Counter(status for status, _ in during) + collections.Counter(after)
    )
    sent = sum(statuses.values())
    report(
        "broker stopped during load",
        sent=sent,
        answered=sent - statuses[-1],
        ok=statuses[200],
        status_503=statuses[503],
        status_504=statuses[504],
        lost=statuses[-1],
    )
    assert set(statuses) <= {200, 503, 504}, statuses
    assert load.served_since(recovered_at) == load.clients  # every client, not just the probe


_WATCH_LINE = re.compile(
    r"no Kafka broker reachable|reachable again after [\d.]+ s \((\d+) connection failures not logged\)"
)


def _broker_watch_lines(log: str) -> list[int | None]:
    """The worker's outage lines in order: None where it said no broker is reachable, and where it said one
    is reachable again, how many connection failures it left out meanwhile."""
    return [None if found[1] is None else int(found[1]) for found in _WATCH_LINE.finditer(log)]


def test_a_worker_that_loses_its_broker_says_so_once_and_once_more_when_it_is_back(
    own_broker: OwnBroker, start_worker: StartWorker, env: dict[str, str]
) -> None:
    """Not one line per connection attempt (each client tries many times a second): while the broker is
    away the worker keeps trying, and its log says so when it starts and when it ends. A broker stopping
    gracefully closes its connections before its listener, so a client can reconnect in between: then the
    stop is one short outage more, said the same way."""
    env["KAFKA_BOOTSTRAP_SERVERS"] = own_broker.bootstrap
    worker = start_worker()

    own_broker.stop()
    wait_until(
        lambda: (lines := _broker_watch_lines(worker.log())) and lines[-1] is None,
        timeout_s=30,
        message=worker.log_tail,
    )
    own_broker.start()  # seconds, during which the worker's clients keep trying
    wait_until(
        lambda: (lines := _broker_watch_lines(worker.log())) and lines[-1] is not None,
        timeout_s=120,
        message=worker.log_tail,
    )

    log = worker.log()
    lines = _broker_watch_lines(log)
    assert set(lines[0::2]) == {None} and None not in lines[1::2], log[-3000:]  # gone, back, gone, back
    assert len(lines) <= 4, log[-3000:]  # the outage, and at most one reconnection while the broker stopped
    assert (lines[-1] or 0) >= 20, log[-3000:]  # the failures while it was away, left out
    assert log.count("Connection refused") <= 5, log[-3000:]  # the first of each kind, before it knew
    assert worker.alive()


async def _saturated_rate(url: str, image: bytes, *, clients: int, duration_s: float) -> float:
    """Answers per second with as many clients as the instance admits, all the time: its saturated
    throughput. Counted from the first answers on, as a batch's time passes before any answer comes, and
    with no client refused, since refusals retried at once would take CPU from the worker."""
    answered_at: list[float] = []
    give_up = time.monotonic() + duration_s
    async with aiohttp.ClientSession() as session:

        async def client() -> None:
            while time.monotonic() < give_up:
                async with session.post(
                    url + PREDICT, data=image, headers={"Content-Type": "image/png"}
                ) as r:
                    assert r.status == 200, r.status
                    answered_at.append(time.monotonic())

        await asyncio.gather(*(client() for _ in range(clients)))
    first = min(answered_at)
    after_first = [at for at in answered_at if at > first]
    assert after_first, "no answers after the first batch: the measure needs a longer window"
    return len(after_first) / (max(after_first) - first)


async def _open_loop(url: str, image: bytes, *, rate: float, duration_s: float) -> collections.Counter[int]:
    statuses: collections.Counter[int] = collections.Counter()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one() -> None:
            try:
                async with session.post(
                    url + PREDICT, data=image, headers={"Content-Type": "image/png"}
                ) as response:
                    if response.status == 429:
                        assert response.headers["Retry-After"].isdigit()
                    statuses[response.status] += 1
            except aiohttp.ClientError:
                statuses[-1] += 1

        tasks = []
        started = time.monotonic()
        for index in range(int(rate * duration_s)):
            # pacing: an open loop sends at its rate whatever the answers
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return statuses


MAX_IN_FLIGHT = 8


def test_overload_is_shed_with_429_and_every_request_is_accounted_for(
    start_worker: StartWorker, start_api: StartApi, endless_model_dir: Path
) -> None:
    start_worker(**SLOW_TOKENS, CAPTIONER_MODEL=str(endless_model_dir), CAPTIONER_MAX_BATCH_SIZE="4")
    api = start_api(CAPTIONER_API_MAX_IN_FLIGHT=str(MAX_IN_FLIGHT), CAPTIONER_API_REQUEST_TIMEOUT_S="10")
    image = make_image_bytes("PNG", seed=6)
    capacity = asyncio.run(_saturated_rate(api.url, image, clients=MAX_IN_FLIGHT, duration_s=4))

    statuses = asyncio.run(_open_loop(api.url, image, rate=1.2 * capacity, duration_s=20))

    sent = sum(statuses.values())
    report(
        "1.2x saturation for 20 s",
        sent=sent,
        answered=sent - statuses[-1],
        ok=statuses[200],
        status_429=statuses[429],
        status_504=statuses[504],
        lost=statuses[-1],
    )
    assert set(statuses) <= {200, 429, 504}, statuses
    assert statuses[429] > 0 and statuses[200] > 0, statuses


def test_an_api_asked_for_readiness_through_a_broker_outage_outlives_it(
    own_broker: OwnBroker, start_api: StartApi, env: dict[str, str]
) -> None:
    """librdkafka aborts the process when a group-coordinator admin request (describing the workers'
    group, here) timed out while no coordinator was reachable, and one comes back (librdkafka#4605). A
    prober keeps asking /readyz through an outage and after it: the API must outlive both."""
    env["KAFKA_BOOTSTRAP_SERVERS"] = own_broker.bootstrap
    api = start_api(wait_for_worker=False)

    def probe_for(seconds: float) -> list[int]:
        statuses, give_up = [], time.monotonic() + seconds
        while time.monotonic() < give_up:
            statuses.append(requests.get(api.url + "/readyz", timeout=30).status_code)
        return statuses

    own_broker.stop()
    assert set(probe_for(10)) == {503}  # each describe in the outage times out
    own_broker.start()
    api.wait_for_log("Kafka is reachable again", timeout_s=60)
    probe_for(10)

    assert api.alive(), api.log()[-3000:]
    assert "Assertion" not in api.log(), api.log()[-3000:]
