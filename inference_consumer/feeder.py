"""The consumer side of a worker: takes records, holds retry records until due (holds.py), starts image
decoding.

Runs on its own thread so the consumer is polled (and rebalances are served) while a batch runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime

import torch
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from core.consuming import poll_batch
from core.offsets import OffsetTracker
from inference_consumer.delivery import OffsetCommits
from inference_consumer.holds import RetryHolds
from inference_consumer.jobs import Job, position
from inference_consumer.kafka_waits import KafkaWaits
from inference_consumer.observing import AssignedPartitions
from inference_consumer.outcomes import Fatal, OutcomePublisher
from inference_consumer.tracing import job_log_context, start_job_trace, traced_decode
from inference_consumer.validation import (
    PartitionCount,
    RequestRules,
    check_request,
    reply_address,
    undecodable_reply_address,
)
from schemas import CaptionerError, CaptionRequest, SchemaContractError
from schemas.framing import SINGLE_OBJECT_CODECS, FramedCodec

log = logging.getLogger(__name__)

Preprocess = Callable[[bytes], torch.Tensor]
Chore = Callable[[Consumer], None]

_BACKLOG_CHECK_S = 0.005  # a full backlog frees a whole batch at a time, far less often than this
# Errors after which this consumer cannot go on: an orchestrator must restart it, and someone must look.
_FATAL_CONSUMER_ERRORS = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)


def _noting_start(job: Job, decode: Preprocess) -> Preprocess:
    """`decode`, noting on the job when a pool thread starts it: the worker's decode bound counts from
    there, not from the time it waited for a thread."""

    def decode_noting_start(data: bytes) -> torch.Tensor:
        job.decode_started = time.monotonic()
        return decode(data)

    return decode_noting_start


class JobFeeder:
    def __init__(
        self,
        *,
        consumer: Consumer,
        commits: OffsetCommits,
        topics: list[str],
        retry_topics: set[str],
        tracker: OffsetTracker,
        outcomes: OutcomePublisher,
        ready: queue.Queue[Job],
        backlog: Callable[[], int],
        decode_pool: Executor,
        preprocess: Preprocess,
        fetch_size: int,
        waits: KafkaWaits,
        rules: RequestRules,
        reply_partitions: PartitionCount,
        max_hold_s: float,
        on_fatal: Fatal,
        chore: Chore | None = None,
        requests: FramedCodec[CaptionRequest] = SINGLE_OBJECT_CODECS.requests,
    ) -> None:
        self._consumer = consumer
        self._commits = commits
        self._topics = topics
        self._tracker = tracker
        self._outcomes = outcomes
        self._ready = ready
        self._backlog = backlog
        self._decode_pool = decode_pool
        self._preprocess = preprocess
        self._fetch_size = fetch_size
        self._waits = waits
        self._rules = rules
        self._reply_partitions = reply_partitions
        self._on_fatal = on_fatal
        self._chore = chore  # periodic work of the worker's that needs a consumer (DLQ depth)
        self._requests = requests
        self._holds = RetryHolds(consumer, retry_topics=retry_topics, max_hold_s=max_hold_s)
        self._assigned = AssignedPartitions(topics)
        # Partitions a rebalance callback let go of during the poll in progress (see `_take`).
        self._let_go_in_poll: set[tuple[str, int]] = set()
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-feeder", daemon=True)

    def start(self) -> None:
        self._consumer.subscribe(
            self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                self._poll_once()
        except Exception as exc:  # a bug, not a record: _take contains each record's failures
            log.exception("job feeder failed")
            self._on_fatal(f"job feeder failed: {type(exc).__name__}: {exc}")
        finally:
            self.stopping.set()

    def _poll_once(self) -> None:
        self._let_go_in_poll.clear()
        messages = poll_batch(self._consumer, max_messages=self._fetch_size, timeout_s=0.1)
        self._outcomes.serve()
        for message in messages:
            self._take(message)
        self._commits.store(self._consumer, self._topics)
        self._holds.release_due()
        if self._chore is not None:
            self._chore(self._consumer)

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            self._consumer_error(error)
            return
        topic, partition, offset = position(message)
        if (topic, partition) in self._let_go_in_poll:
            # Fetched before a rebalance callback of the same poll let its partition go: tracked now, it
            # would count under the partition's next assignment, and a zombie back in the group with a
            # fresh generation would commit it beside the partition's new owner. That owner runs it.
            return
        if self._holds.holds(topic, partition):
            return  # fetched behind a held retry record; it is fetched again after the hold
        job = Job.from_message(message)
        if self._holds.hold_if_not_due(job):
            return
        job.generation = self._tracker.track(topic, partition, offset)
        job.trace = start_job_trace(job)
        with job_log_context(job):
            try:
                self._admit(job)
            except Exception as exc:  # whatever one record does, it ends in its outcome, not here
                if not isinstance(exc, CaptionerError):
                    log.exception("unexpected error on %s[%d]@%d", topic, partition, offset)
                self._outcomes.failed(job, exc)

    def _admit(self, job: Job) -> None:
        """Decode and check the record, then start decoding its image and queue it for a batch."""
        try:
            job.request, job.framing = self._requests.decode_framed(job.value)
        except SchemaContractError:
            # Spring reply headers may still say where its sender waits: it gets a FAILED reply.
            job.reply_to = undecodable_reply_address(
                job.key, job.headers, self._rules, self._reply_partitions
            )
            raise
        job.reply_to = reply_address(job.request, self._rules, self._reply_partitions, job.headers)
        check_request(job.request)
        if job.expired(datetime.now(UTC)):
            self._outcomes.skipped_expired(job)
            return
        job.pixels = self._decode_pool.submit(
            _noting_start(job, traced_decode(job, self._preprocess)), job.request.image
        )
        while not self.stopping.is_set():
            if self._ready.qsize() < self._backlog():
                self._ready.put(job)
                return
            self._outcomes.serve()
            self.stopping.wait(_BACKLOG_CHECK_S)
        # Stopping with the backlog full: the job is left unfinished, so its offset is not committed.

    def _consumer_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal() or error.code() in _FATAL_CONSUMER_ERRORS:
            self._on_fatal(f"consumer error: {error.str()}")
            self.stopping.set()
            return
        log.warning("consumer error: %s", error)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))
        self._holds.assigned(partitions)
        self._assigned.assigned(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Let in-flight jobs of these partitions finish and commit them before another worker starts."""
        keys = [(p.topic, p.partition) for p in partitions]
        if not self._wait_finished(keys):
            log.warning("revoking %d partitions with jobs still running; they will run again", len(keys))
        self._commits.revoked(consumer, keys)
        self._let_go(keys, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Another member holds these partitions already (this one missed its session timeout): nothing of
        them can be committed any more."""
        keys = [(p.topic, p.partition) for p in partitions]
        log.warning(
            "lost %d partitions to the group's next generation; their unfinished jobs run again", len(keys)
        )
        self._commits.lost(consumer, keys)
        self._let_go(keys, partitions)

    def _let_go(self, keys: list[tuple[str, int]], partitions: list[TopicPartition]) -> None:
        self._let_go_in_poll.update(keys)
        self._holds.forget(keys)
        self._assigned.revoked(partitions)

    def _wait_finished(self, keys: list[tuple[str, int]]) -> bool:
        """Serves delivery reports while it waits: at shutdown no other loop does. With no broker reachable
        no outcome can become durable, so it does not wait."""
        give_up = self._waits.give_up_at()
        while not self._tracker.wait_finished(keys, timeout_s=0.05):
            if not self._waits.waiting(give_up):
                return False
            self._outcomes.serve()
        return True
