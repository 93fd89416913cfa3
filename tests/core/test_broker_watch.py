"""librdkafka's lines through Python logging: a broker's absence said once when it starts and once when it
ends, recurring lines left out with a count, and which clients still speak for the process."""

from __future__ import annotations

import json
import logging

import pytest
from confluent_kafka import KafkaError

from core.broker_watch import FRESH_REPORT_S, BrokerWatch

REFUSED = "[thrd:127.0.0.1:9092/bootstrap]: 127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: "


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stats(*states: str) -> str:
    """librdkafka's statistics JSON as it comes (no spaces), brokers before topics."""
    brokers = {
        f"127.0.0.1:{9092 + i}/{i}": {"name": f"b{i}", "state": state} for i, state in enumerate(states)
    }
    return json.dumps({"name": "c", "brokers": brokers, "topics": {}}, separators=(",", ":"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="tests.broker_watch")
    return caplog


@pytest.fixture
def watch(clock: Clock) -> BrokerWatch:
    return BrokerWatch(log=logging.getLogger("tests.broker_watch"), repeat_after_s=60.0, clock=clock)


def refused(watch: BrokerWatch, times: int = 1) -> None:
    for attempt in range(times):
        watch.log(
            3, "%s [%s] %s", "FAIL", "rdkafka#producer-1", REFUSED + f"Connection refused (after {attempt}ms)"
        )


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_losing_every_broker_is_said_once_when_it_starts_and_once_when_it_ends(
    watch: BrokerWatch, clock: Clock, logged: pytest.LogCaptureFixture
) -> None:
    producer, consumer = watch.client_config(), watch.client_config()
    producer["stats_cb"](stats("UP"))
    consumer["stats_cb"](stats("UP"))
    refused(watch)  # the first failure is logged: a broker of several may be down
    producer["error_cb"](KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert watch.reachable()  # the consumer still had a broker a moment ago

    consumer["error_cb"](KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    for _ in range(200):  # the retry storm: a try every 50 ms for 10 s
        clock.now += 0.05
        refused(watch)
        producer["error_cb"](KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
        consumer["stats_cb"](stats("INIT", "CONNECT"))
    assert not watch.reachable()
    consumer["stats_cb"](stats("INIT", "UP"))

    assert watch.reachable()
    lines = messages(logged)
    assert len(lines) == 3, lines
    assert "Connection refused" in lines[0]
    assert lines[1].startswith("no Kafka broker reachable (127.0.0.1:9092/bootstrap: Connect to")
    assert lines[2] == "a Kafka broker is reachable again after 10.0 s (200 connection failures not logged)"


def test_a_recurring_line_is_logged_once_a_minute_with_the_count_left_out(
    watch: BrokerWatch, clock: Clock, logged: pytest.LogCaptureFixture
) -> None:
    watch.client_config()["stats_cb"](stats("UP", "DOWN"))  # one broker of two lost: not an absence
    refused(watch, times=30)
    clock.now += 61
    refused(watch, times=2)

    lines = messages(logged)
    assert len(lines) == 2, lines
    assert lines[1].endswith("(and 29 more like it since the last one logged)")
    assert [record.levelno for record in logged.records] == [logging.ERROR, logging.ERROR]


def test_a_client_that_stopped_reporting_no_longer_speaks_for_the_process(
    watch: BrokerWatch, clock: Clock
) -> None:
    closed, producer = watch.client_config(), watch.client_config()
    closed["stats_cb"](stats("UP"))
    clock.now += FRESH_REPORT_S + 1
    producer["error_cb"](KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))

    assert not watch.reachable()


def test_no_report_yet_means_reachable(watch: BrokerWatch) -> None:
    watch.client_config()

    assert watch.reachable()


def test_debug_lines_an_operator_asked_for_are_logged_at_info(
    watch: BrokerWatch, logged: pytest.LogCaptureFixture
) -> None:
    watch.log(7, "%s [%s] %s", "CGRPOP", "rdkafka#consumer-2", "[thrd:main]: Group received op TERMINATE")

    assert [(record.levelno, record.getMessage()) for record in logged.records] == [
        (logging.INFO, "CGRPOP [rdkafka#consumer-2] [thrd:main]: Group received op TERMINATE")
    ]


COORDINATOR_LOADING = (
    "[thrd:main]: Failed to acquire idempotence PID from broker 127.0.0.1:9092/1: "
    "Broker: Coordinator load in progress: retrying"
)


def test_a_fresh_brokers_coordinator_loading_is_logged_at_debug_unless_librdkafka_calls_it_a_warning(
    clock: Clock, logged: pytest.LogCaptureFixture
) -> None:
    for level in (5, 6, 4):  # notice, info, warning; one watch each, so none is left out as recurring
        watch = BrokerWatch(log=logging.getLogger("tests.broker_watch"), repeat_after_s=60.0, clock=clock)
        watch.log(level, "%s [%s] %s", "GETPID", "rdkafka#producer-1", COORDINATOR_LOADING)

    assert [record.levelno for record in logged.records] == [logging.DEBUG, logging.DEBUG, logging.WARNING]


def test_a_clients_own_callbacks_are_called_too(watch: BrokerWatch) -> None:
    errors: list[KafkaError] = []
    reports: list[str] = []
    config = watch.client_config(error_cb=errors.append, stats_cb=reports.append)

    config["error_cb"](KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    config["stats_cb"](stats("UP"))

    assert [error.code() for error in errors] == [KafkaError._ALL_BROKERS_DOWN]
    assert reports == [stats("UP")]


def test_lines_left_out_are_remembered_for_a_bounded_number_of_kinds(
    watch: BrokerWatch, logged: pytest.LogCaptureFixture
) -> None:
    for index in range(5000):  # each names another (hostile) reply topic
        watch.log(6, "%s [%s] %s", "PARTCNT", "p", f"Topic t-{'x' * (index % 97)} partition count changed")

    assert len(watch._recent) <= 256
