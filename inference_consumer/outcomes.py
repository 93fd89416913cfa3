"""Produces each job's outcome (reply, retry record, dead letter) and finishes its offset once durable."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime

from confluent_kafka import KafkaError, Message, Producer

from captioner.settings import TopicSettings
from inference_consumer import metrics
from inference_consumer.jobs import Job
from inference_consumer.offsets import OffsetTracker
from schemas import REPLY_CODEC, CaptionReply, ReplyError, ReplyStatus
from schemas import headers as record_headers

log = logging.getLogger(__name__)

_STACK_LIMIT = 4000
_MESSAGE_LIMIT = 1000


class OutcomePublisher:
    """Every path through here ends with the job's offset finished, after the broker acknowledged."""

    def __init__(
        self,
        *,
        producer: Producer,
        tracker: OffsetTracker,
        topics: TopicSettings,
        model_name: str,
        worker_id: str,
        group_id: str,
    ) -> None:
        self._producer = producer
        self._tracker = tracker
        self._topics = topics
        self._model_name = model_name
        self._worker_id = worker_id
        self._group_id = group_id

    def succeeded(self, job: Job, title: str, *, inference_ms: float) -> None:
        self._reply(
            job,
            status=ReplyStatus.SUCCEEDED,
            title=title,
            inference_ms=inference_ms,
            then=lambda: self._finish(job),
        )
        metrics.JOBS.labels(outcome="succeeded").inc()

    def skipped_expired(self, job: Job) -> None:
        """The caller was already answered 504; running the job would only waste the model."""
        log.info(
            "job %s at %s[%d]@%d passed its deadline; not run",
            job.correlation_id,
            job.topic,
            job.partition,
            job.offset,
        )
        metrics.JOBS.labels(outcome="expired").inc()
        self._finish(job)

    def failed(self, job: Job, error: BaseException) -> None:
        retriable = bool(getattr(error, "retriable", False))
        tier = job.attempt  # attempt 1 failed -> retry tier 1
        if retriable and tier <= len(self._topics.retry_delays_s):
            self._retry(job, error, tier)
        else:
            self._dead_letter(job, error)

    def _retry(self, job: Job, error: BaseException, tier: int) -> None:
        due_ms = int((time.time() + self._topics.retry_delays_s[tier - 1]) * 1000)
        headers = self._origin_headers(job) | {
            record_headers.ATTEMPT: str(job.attempt + 1).encode(),
            record_headers.RETRY_DUE_MS: str(due_ms).encode(),
            record_headers.RETRY_ERROR_CLASS: type(error).__name__.encode(),
            record_headers.RETRY_ERROR_MESSAGE: str(error)[:_MESSAGE_LIMIT].encode(),
        }
        log.warning(
            "attempt %d of %s failed (%s); retrying via tier %d", job.attempt, job.correlation_id, error, tier
        )
        metrics.JOBS.labels(outcome="retried").inc()
        self._produce_then_finish(job, self._topics.retry_topic(tier), headers)
        self._reply(job, status=ReplyStatus.RETRYING, error=_reply_error(error, retriable=True))

    def _dead_letter(self, job: Job, error: BaseException) -> None:
        code = getattr(error, "code", "unexpected_error")
        headers = self._origin_headers(job) | {
            record_headers.ATTEMPT: str(job.attempt).encode(),
            record_headers.DLQ_ERROR_CLASS: type(error).__name__.encode(),
            record_headers.DLQ_ERROR_CODE: str(code).encode(),
            record_headers.DLQ_ERROR_MESSAGE: str(error)[:_MESSAGE_LIMIT].encode(),
            record_headers.DLQ_ERROR_STACK: "".join(traceback.format_exception(error))[
                -_STACK_LIMIT:
            ].encode(),
            record_headers.DLQ_CONSUMER_GROUP: self._group_id.encode(),
            record_headers.DLQ_WORKER_ID: self._worker_id.encode(),
            record_headers.DLQ_FAILED_AT_MS: str(int(time.time() * 1000)).encode(),
        }
        log.error(
            "job %s at %s[%d]@%d goes to the dead-letter topic: %s",
            job.correlation_id,
            job.topic,
            job.partition,
            job.offset,
            error,
        )
        metrics.JOBS.labels(outcome="dead_lettered").inc()
        self._produce_then_finish(job, self._topics.dead_letter, headers)
        retriable = bool(getattr(error, "retriable", False))  # True here: retries ran out
        self._reply(job, status=ReplyStatus.FAILED, error=_reply_error(error, retriable=retriable))

    def _origin_headers(self, job: Job) -> dict[str, bytes]:
        """Where the record came from, plus what must survive every hop: the replay marker and
        headers that are not ours (trace context, say)."""
        topic, partition, offset, timestamp_ms = job.origin()
        carried = {
            name: value
            for name, value in job.headers.items()
            if name == record_headers.REPLAYED_FROM or not name.startswith("captioner.")
        }
        return carried | {
            record_headers.ORIGINAL_TOPIC: topic.encode(),
            record_headers.ORIGINAL_PARTITION: str(partition).encode(),
            record_headers.ORIGINAL_OFFSET: str(offset).encode(),
            record_headers.ORIGINAL_TIMESTAMP_MS: str(timestamp_ms).encode(),
        }

    def _produce_then_finish(self, job: Job, topic: str, headers: dict[str, bytes]) -> None:
        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                # Leave the offset unfinished: it is not committed, and a restart re-runs the job.
                log.error(
                    "could not write %s[%d]@%d to %s: %s", job.topic, job.partition, job.offset, topic, error
                )
                return
            self._finish(job)

        self._producer.produce(
            topic, key=job.key, value=job.value, headers=list(headers.items()), on_delivery=on_delivery
        )

    def _reply(
        self,
        job: Job,
        *,
        status: ReplyStatus,
        title: str | None = None,
        error: ReplyError | None = None,
        inference_ms: float = 0.0,
        then: Callable[[], None] | None = None,
    ) -> None:
        request = job.request
        if request is None:
            if then:
                then()
            return  # an unreadable record names no reply address
        reply = CaptionReply(
            correlation_id=request.correlation_id,
            status=status,
            title=title,
            error=error,
            model=self._model_name,
            worker_id=self._worker_id,
            attempt=job.attempt,
            inference_ms=inference_ms,
            completed_at=datetime.now(UTC),
        )

        def on_delivery(delivery_error: KafkaError | None, _message: Message) -> None:
            if delivery_error is not None:
                log.error(
                    "reply for %s to %s undeliverable: %s",
                    request.correlation_id,
                    request.reply_topic,
                    delivery_error,
                )
                if then:
                    self.failed(job, ReplyUndeliverableError(delivery_error.str()))
                return
            if then:
                then()

        partition = request.reply_partition if request.reply_partition is not None else -1
        self._producer.produce(
            request.reply_topic,
            key=request.correlation_id.encode(),
            value=REPLY_CODEC.encode(reply),
            partition=partition,
            on_delivery=on_delivery,
        )

    def _finish(self, job: Job) -> None:
        self._tracker.finish(job.topic, job.partition, job.offset)


class ReplyUndeliverableError(Exception):
    """The request's reply address does not accept records (no such topic, say)."""

    retriable = False
    code = "reply_undeliverable"


def _reply_error(error: BaseException, *, retriable: bool) -> ReplyError:
    return ReplyError(
        code=str(getattr(error, "code", "unexpected_error")),
        message=str(error)[:_MESSAGE_LIMIT],
        retriable=retriable,
    )
