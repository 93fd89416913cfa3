"""Exactly once for Kafka callers (CAPTIONER_DELIVERY_GUARANTEE=exactly_once), against a real broker: a
worker that dies as it commits, or before its outcomes are committed, or is frozen past its session timeout,
leaves nothing a read_committed reader sees, so each job's reply and dead letter is seen once however often
the job ran; and the retry records and dead letters of a transaction that aborted are never seen.

The kill and freeze tests put a dead letter out of order: slow jobs S (forced long captions) then job D
(refused at once: max_new_tokens 0) in one request partition. D's outcome is decided while the S jobs still
run: at least once, it is written at once, while its offset cannot be committed before theirs, so the
partition's next owner runs D again and writes it again."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from core.settings import TopicSettings
from schemas import REPLY_CODEC, CaptionReply, CaptionRequest, ReplyStatus
from schemas import headers as record_headers
from tests.conftest import StartWorker
from tests.support.dying_worker import DIED
from tests.support.images import make_image_bytes
from tests.support.kafka import (
    Isolation,
    Record,
    caption_request,
    committed_offsets,
    publish_requests,
    read_all,
)
from tests.support.processes import HARNESS_WORKER
from tests.support.services import ServiceProcess, service_env, spawn
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITION = 1
SLOW_JOBS = 24
EXACTLY_ONCE = {"CAPTIONER_DELIVERY_GUARANTEE": "exactly_once"}
SESSION_TIMEOUT_MS = "6000"  # the brokers' least
DEAD_LETTERED = "goes to the dead-letter topic"
FENCED = "fenced by a newer instance"  # librdkafka's fatal _FENCED, logged as the worker stops
CAPTIONED = re.compile(r"captioned (\d+) jobs")
DONE_S = 120
ABORT_ROUNDS = 3


@pytest.fixture
def slow_env(endless_model_dir: Path) -> dict[str, str]:
    """The tiny model's longest captions (a model that never ends one early), in batches that each run for
    a while: the S jobs take seconds."""
    return {
        **EXACTLY_ONCE,
        "CAPTIONER_MODEL": str(endless_model_dir),
        "CAPTIONER_MAX_NEW_TOKENS": "127",
        "CAPTIONER_LOG_LEVEL": "DEBUG",  # each batch's "captioned N jobs" line
        # A transaction it leaves open (killed or frozen mid-commit) is aborted by its coordinator 15 s on.
        "CAPTIONER_DELIVERY_TIMEOUT_S": "5",
    }


def slow_then_refused(bootstrap: str, topics: TopicSettings) -> tuple[list[CaptionRequest], CaptionRequest]:
    """The S jobs then D, in one partition."""
    slow = [
        caption_request(make_image_bytes("PNG", seed=seed), reply_topic=topics.replies)
        for seed in range(SLOW_JOBS)
    ]
    refused = caption_request(make_image_bytes("PNG", seed=99), reply_topic=topics.replies, max_new_tokens=0)
    publish_requests(bootstrap, topics.requests, [*slow, refused], partition=PARTITION)
    return slow, refused


def captioned(worker: ServiceProcess) -> int:
    return sum(int(count) for count in CAPTIONED.findall(worker.log()))


def final_replies(bootstrap: str, topics: TopicSettings) -> dict[str, list[CaptionReply]]:
    """Each correlation id's final replies, as a read_committed reader sees them."""
    found: dict[str, list[CaptionReply]] = {}
    for record in read_all(bootstrap, topics.replies, topics.reply_partitions):
        reply = REPLY_CODEC.decode(record.value)
        if reply.status is not ReplyStatus.RETRYING:
            found.setdefault(reply.correlation_id, []).append(reply)
    return found


def records_of(
    bootstrap: str,
    topic: str,
    partitions: int,
    request: CaptionRequest,
    *,
    isolation: Isolation = "read_committed",
) -> list[Record]:
    key = request.correlation_id.encode()
    return [
        record for record in read_all(bootstrap, topic, partitions, isolation=isolation) if record.key == key
    ]


def wait_for_the_jobs_committed(bootstrap: str, topics: TopicSettings, jobs: int) -> None:
    group = os.environ["CAPTIONER_WORKER_GROUP_ID"]  # set by the topics fixture

    def committed() -> bool:
        try:
            offsets = committed_offsets(bootstrap, group, topics.requests, topics.request_partitions)
        except KafkaException:  # the group's offsets are in an open transaction: unstable until it ends
            return False
        return offsets[PARTITION] >= jobs

    wait_until(
        committed,
        timeout_s=DONE_S,
        interval_s=0.5,
        message="the partition's committed offset did not pass every job",
    )


def assert_seen_once(
    bootstrap: str, topics: TopicSettings, slow: list[CaptionRequest], refused: CaptionRequest, *, by: str
) -> None:
    """What a read_committed reader sees: one final reply for each job and one dead letter for D, D's
    from the worker that took the partition over.

    Waited for: a transaction's commit marker reaches each of its partitions on its own, so its offsets
    can be visible a moment before its replies and dead letter are."""
    jobs = {request.correlation_id for request in [*slow, refused]}
    replies: dict[str, list[CaptionReply]] = {}
    dead_letters: list[Record] = []

    def every_outcome_visible() -> bool:
        nonlocal replies, dead_letters
        replies = final_replies(bootstrap, topics)
        dead_letters = records_of(bootstrap, topics.dead_letter, topics.request_partitions, refused)
        return jobs <= replies.keys() and bool(dead_letters)

    wait_until(
        every_outcome_visible,
        timeout_s=DONE_S,
        interval_s=0.5,
        message=lambda: (
            f"{len(jobs - replies.keys())} replies and {1 - len(dead_letters[:1])} dead letter unseen"
        ),
    )
    for request in slow:
        [reply] = replies[request.correlation_id]
        assert reply.status is ReplyStatus.SUCCEEDED
    [refused_reply] = replies[refused.correlation_id]
    assert refused_reply.status is ReplyStatus.FAILED and refused_reply.worker_id == by
    [dead] = dead_letters
    assert dead.headers[record_headers.DLQ_WORKER_ID] == by.encode()
    assert dead.headers[record_headers.DLQ_ERROR_CODE] == b"invalid_request"


def test_a_worker_killed_before_its_commit_leaves_only_its_replacements_outcomes(
    start_worker: StartWorker, topics: TopicSettings, kafka_bootstrap: str, slow_env: dict[str, str]
) -> None:
    first = start_worker(**slow_env)
    slow, refused = slow_then_refused(kafka_bootstrap, topics)
    first.wait_for_log(DEAD_LETTERED, timeout_s=60)  # D is decided
    first.kill()
    assert captioned(first) < SLOW_JOBS, "every slow job finished before the kill: nothing was tested"

    start_worker(**EXACTLY_ONCE)
    wait_for_the_jobs_committed(kafka_bootstrap, topics, SLOW_JOBS + 1)

    assert_seen_once(kafka_bootstrap, topics, slow, refused, by="worker-2")


def test_a_worker_dead_between_producing_and_committing_leaves_only_its_replacements_replies(
    start_worker: StartWorker,
    topics: TopicSettings,
    kafka_bootstrap: str,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """The first worker's first batch is captioned and its replies reach the reply topic; it dies as it
    commits (tests/support/dying_worker.py). Its replacement runs the batch again: a read_committed reader
    sees each job's reply once, the replacement's."""
    requests = [
        caption_request(make_image_bytes("PNG", seed=seed), reply_topic=topics.replies) for seed in range(4)
    ]
    dying = spawn(
        "worker-1",
        [sys.executable, "-m", "tests.support.dying_worker", "worker"],
        env=service_env(
            env, **EXACTLY_ONCE, CAPTIONER_WORKER_ID="worker-1", CAPTIONER_DELIVERY_TIMEOUT_S="5"
        ),
        log_path=tmp_path / "worker-1.log",
    )
    dying.wait_for_log("assigned", timeout_s=90)
    publish_requests(kafka_bootstrap, topics.requests, requests, partition=PARTITION)
    assert dying.wait_exit(timeout_s=DONE_S) == DIED, dying.log_tail()
    written = [
        REPLY_CODEC.decode(record.value)
        for record in read_all(
            kafka_bootstrap, topics.replies, topics.reply_partitions, isolation="read_uncommitted"
        )
    ]
    assert {reply.worker_id for reply in written} == {"worker-1"}, "it died before writing a reply"

    start_worker(**EXACTLY_ONCE, CAPTIONER_WORKER_ID="worker-2")  # another transactional id
    wait_for_the_jobs_committed(kafka_bootstrap, topics, len(requests))
    wanted = {request.correlation_id for request in requests}
    wait_until(  # behind the dead worker's open transaction until its coordinator aborts it
        lambda: wanted <= final_replies(kafka_bootstrap, topics).keys(),
        timeout_s=DONE_S,
        interval_s=0.5,
        message="the replacement's replies were not seen",
    )
    replies = final_replies(kafka_bootstrap, topics)
    for request in requests:
        [reply] = replies[request.correlation_id]
        assert reply.status is ReplyStatus.SUCCEEDED and reply.worker_id == "worker-2"


def test_a_zombie_worker_commits_nothing_and_its_outcomes_stay_invisible(
    start_worker: StartWorker, topics: TopicSettings, kafka_bootstrap: str, slow_env: dict[str, str]
) -> None:
    zombie = start_worker(**slow_env, CAPTIONER_SESSION_TIMEOUT_MS=SESSION_TIMEOUT_MS)
    slow, refused = slow_then_refused(kafka_bootstrap, topics)
    zombie.wait_for_log(DEAD_LETTERED, timeout_s=60)
    zombie.popen.send_signal(signal.SIGSTOP)  # frozen, D decided, S jobs unfinished
    try:
        finished_before = captioned(zombie)
        assert finished_before < SLOW_JOBS, "every slow job finished before the freeze: nothing was tested"
        start_worker(
            **EXACTLY_ONCE, CAPTIONER_SESSION_TIMEOUT_MS=SESSION_TIMEOUT_MS
        )  # takes the partitions over
        wait_for_the_jobs_committed(kafka_bootstrap, topics, SLOW_JOBS + 1)
    finally:
        zombie.popen.send_signal(signal.SIGCONT)

    # Back, the zombie finishes the batch it held and offers its outcomes. Where the freeze caught one of its
    # transactions open, the coordinator aborted that one meanwhile (CAPTIONER_DELIVERY_TIMEOUT_S + 10 s on)
    # and bumped the producer's epoch: the zombie comes back fenced and stops, as a fenced producer must.
    # Otherwise its offsets are refused for the group's old generation: it aborts, finds its partitions gone
    # and rejoins its groups. Which of the two happens depends on where the freeze lands.
    wait_until(
        lambda: captioned(zombie) > finished_before,
        timeout_s=DONE_S,
        message="the zombie did not finish its batch",
    )
    wait_until(
        lambda: zombie.log().count("assigned") >= 3 or not zombie.alive(),
        timeout_s=DONE_S,
        message="the zombie neither rejoined its groups nor stopped",
    )
    assert zombie.alive() or FENCED in zombie.log(), zombie.log_tail()
    assert_seen_once(kafka_bootstrap, topics, slow, refused, by="worker-2")


@pytest.fixture
def refusing_reply_topic(kafka_bootstrap: str, topics: TopicSettings) -> str:
    """A reply topic that refuses every reply, its record batches being 120 bytes at most: room for the
    transaction markers the coordinator writes to it (when one is refused, the transaction never ends)."""
    name = f"{topics.replies}.refusing"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created = admin.create_topics(
        [NewTopic(name, num_partitions=1, replication_factor=1, config={"max.message.bytes": "120"})]
    )
    for future in created.values():
        future.result(timeout=30)
    return name


def test_retry_and_dead_letter_records_of_an_aborted_transaction_are_never_seen(
    start_worker: StartWorker, topics: TopicSettings, kafka_bootstrap: str, refusing_reply_topic: str
) -> None:
    """Each job's reply goes to a topic that refuses it, so the transaction that holds its retry record
    (with a RETRYING notice) or dead letter (with a FAILED reply) aborts; the record is written again, in
    the next one, without the reply.

    The aborted copy reaches the log only if the worker's producer sent it before the refusal came back
    (librdkafka drops what it still holds when the transaction must abort), so the test runs rounds until
    an aborted copy of each kind is in the log: the evidence that there was something not to see."""
    start_worker(
        command=HARNESS_WORKER,
        **EXACTLY_ONCE,
        CAPTIONER_TOPIC_RETRY_DELAYS_S="[600]",  # a retry record waits: each job runs once
        HARNESS_FAILING_BATCHES=str(ABORT_ROUNDS),
    )
    retry_tier = topics.retry_topic(1)
    aborted_copy_logged = {retry_tier: False, topics.dead_letter: False}
    for round_ in range(ABORT_ROUNDS):
        transient = caption_request(
            make_image_bytes("PNG", seed=21 + 2 * round_), reply_topic=refusing_reply_topic
        )
        refused = caption_request(
            make_image_bytes("PNG", seed=22 + 2 * round_), reply_topic=refusing_reply_topic, max_new_tokens=0
        )
        publish_requests(kafka_bootstrap, topics.requests, [transient, refused], partition=PARTITION)
        wait_for_the_jobs_committed(kafka_bootstrap, topics, 2 * (round_ + 1))

        # Seen: once each.
        [retry] = records_of(kafka_bootstrap, retry_tier, topics.request_partitions, transient)
        assert retry.headers[record_headers.ATTEMPT] == b"2"
        [dead] = records_of(kafka_bootstrap, topics.dead_letter, topics.request_partitions, refused)
        assert dead.headers[record_headers.DLQ_ERROR_CODE] == b"invalid_request"
        # In the log, maybe: the aborted transaction's copy, besides the committed one.
        for topic, request in ((retry_tier, transient), (topics.dead_letter, refused)):
            logged = records_of(
                kafka_bootstrap, topic, topics.request_partitions, request, isolation="read_uncommitted"
            )
            aborted_copy_logged[topic] |= len(logged) >= 2
        if all(aborted_copy_logged.values()):
            return
    pytest.fail(
        f"no aborted copy in the log in {ABORT_ROUNDS} rounds ({aborted_copy_logged}): nothing was tested"
    )
