"""Decides each job's outcome records (reply, retry record, dead letter) and hands them to the worker's sink
(delivery.py: at least once, transactions.py: exactly once), which finishes the job's offset once they
count as written.

No method here raises for what one record carries: a reply the broker refuses, or does not take within
the producer's delivery timeout (CAPTIONER_DELIVERY_TIMEOUT_S), sends the job to the dead-letter topic, so
one reply topic cannot hold the partition's later commits for longer; a retry record it refuses does too;
and only a dead letter it refuses for good (say, the worker may not write the topic) stops the worker,
through `on_fatal`, since it can no longer keep a job anywhere.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime

from confluent_kafka import KafkaError

from core.offsets import OffsetTracker
from core.settings import TopicSettings
from inference_consumer import metrics
from inference_consumer.cache_writer import CacheWriter, Captioned
from inference_consumer.delivery import OutcomeRecord, OutcomeSink
from inference_consumer.errors import ReplyUndeliverableError
from inference_consumer.jobs import Job
from inference_consumer.tracing import (
    about_job,
    end_job_trace,
    end_publish_span,
    job_failed,
    job_log_context,
    start_publish_span,
)
from schemas import CaptionerError, CaptionReply, ReplyError, ReplyStatus
from schemas import headers as record_headers
from schemas.framing import SINGLE_OBJECT_CODECS, FramedCodec

log = logging.getLogger(__name__)

_STACK_LIMIT = 4000
_MESSAGE_LIMIT = 1000
_INTERNAL_MESSAGE = "the worker failed on this job"
# Our headers that a retry record or a dead letter keeps: the replay marker, and the caption-cache scope
# its title is to be filed under when a later attempt succeeds.
_CARRIED_HEADERS = frozenset({record_headers.REPLAYED_FROM, record_headers.CACHE_SCOPE})

Fatal = Callable[[str], None]


class OutcomePublisher:
    """Every path through here ends with the job's offset finished, once its records count as written.
    Each public method hands one job's records to the sink together (`sink.outcome()`)."""

    def __init__(
        self,
        *,
        sink: OutcomeSink,
        tracker: OffsetTracker,
        topics: TopicSettings,
        model_name: str,
        worker_id: str,
        group_id: str,
        on_fatal: Fatal | None = None,
        cache: CacheWriter | None = None,
        replies: FramedCodec[CaptionReply] = SINGLE_OBJECT_CODECS.replies,
    ) -> None:
        self._sink = sink
        self._replies = replies
        self._cache = cache
        self._tracker = tracker
        self._topics = topics
        self._model_name = model_name
        self._worker_id = worker_id
        self._group_id = group_id
        self._on_fatal = on_fatal or _log_fatal

    def serve(self) -> None:
        """Serves delivery reports, then the follow-ups they asked for. Called by the loops' threads."""
        self._sink.serve()

    def batch(self) -> AbstractContextManager[object]:
        """Held around a batch's outcomes: they go into one transaction (exactly once)."""
        return self._sink.outcome()

    def succeeded(
        self, job: Job, title: str, *, inference_ms: float, max_new_tokens: int | None = None
    ) -> None:
        """`max_new_tokens`: the limit the title was computed with; with it, the title goes to the
        caption cache once the reply is acknowledged."""

        def durable() -> None:
            self._finish(job)
            if max_new_tokens is not None:
                self._to_cache(job, title, inference_ms=inference_ms, max_new_tokens=max_new_tokens)

        with self._sink.outcome():
            self._reply(
                job, status=ReplyStatus.SUCCEEDED, title=title, inference_ms=inference_ms, then=durable
            )
        metrics.JOBS.labels(outcome="succeeded").inc()

    def _to_cache(self, job: Job, title: str, *, inference_ms: float, max_new_tokens: int) -> None:
        if self._cache is None or job.request is None:
            return
        scope = job.cache_scope
        if scope is None:  # a scope we cannot honour: filing the title as shared would reveal it
            metrics.CACHE_WRITES.labels(result="skipped").inc()
            return
        self._cache.submit(
            Captioned(
                image=job.request.image,
                scope=scope,
                max_new_tokens=max_new_tokens,
                title=title,
                worker_id=self._worker_id,
                correlation_id=job.request.correlation_id,
                attempt=job.attempt,
                inference_ms=inference_ms,
                completed_at=datetime.now(UTC),
            )
        )

    @about_job
    def skipped_expired(self, job: Job) -> None:
        """The caller was already answered 504; running the job would only waste the model."""
        log.info(
            "job %s at %s[%d]@%d passed its deadline; not run",
            job.name,
            job.topic,
            job.partition,
            job.offset,
        )
        metrics.JOBS.labels(outcome="expired").inc()
        with self._sink.outcome():
            self._finish(job)

    @about_job
    def failed(self, job: Job, error: BaseException) -> None:
        job_failed(job, error)
        retriable = isinstance(error, CaptionerError) and error.retriable
        tier = job.attempt  # attempt 1 failed -> retry tier 1
        with self._sink.outcome():
            if retriable and tier <= len(self._topics.retry_delays_s):
                self._retry(job, error, tier)
            else:
                metrics.JOBS.labels(outcome="dead_lettered" if retriable else "failed").inc()
                self._dead_letter(job, error)

    @about_job
    def _retry(self, job: Job, error: BaseException, tier: int) -> None:
        due_ms = int((time.time() + self._topics.retry_delays_s[tier - 1]) * 1000)
        headers = self._origin_headers(job) | {
            record_headers.ATTEMPT: str(job.attempt + 1).encode(),
            record_headers.RETRY_DUE_MS: str(due_ms).encode(),
            record_headers.RETRY_ERROR_CLASS: type(error).__name__.encode(),
            record_headers.RETRY_ERROR_MESSAGE: _operator_message(error).encode(),
        }
        log.warning(
            "attempt %d of %s failed (%s); retrying via tier %d",
            job.attempt,
            job.name,
            _operator_message(error),
            tier,
        )
        metrics.JOBS.labels(outcome="retried").inc()
        accepted = self._send(
            job, self._topics.retry_topic(tier), headers, refused=lambda: self._dead_letter(job, error)
        )
        if accepted:  # refused at once, the job was dead-lettered and its caller told FAILED
            self._reply(job, status=ReplyStatus.RETRYING, error=_reply_error(error, retriable=True))

    @about_job
    def _dead_letter(self, job: Job, error: BaseException) -> None:
        code = error.code if isinstance(error, CaptionerError) else "internal_error"
        headers = self._origin_headers(job) | {
            record_headers.ATTEMPT: str(job.attempt).encode(),
            record_headers.DLQ_ERROR_CLASS: type(error).__name__.encode(),
            record_headers.DLQ_ERROR_CODE: code.encode(),
            record_headers.DLQ_ERROR_MESSAGE: _operator_message(error).encode(),
            record_headers.DLQ_ERROR_STACK: "".join(traceback.format_exception(error))[
                -_STACK_LIMIT:
            ].encode(),
            record_headers.DLQ_CONSUMER_GROUP: self._group_id.encode(),
            record_headers.DLQ_WORKER_ID: self._worker_id.encode(),
            record_headers.DLQ_FAILED_AT_MS: str(int(time.time() * 1000)).encode(),
        }
        log.error(
            "job %s at %s[%d]@%d goes to the dead-letter topic: %s",
            job.name,
            job.topic,
            job.partition,
            job.offset,
            _operator_message(error),
        )
        self._send(job, self._topics.dead_letter, headers, refused=lambda: self._cannot_keep(job))
        retriable = isinstance(error, CaptionerError) and error.retriable  # True here: retries ran out
        self._reply(job, status=ReplyStatus.FAILED, error=_reply_error(error, retriable=retriable))

    def _cannot_keep(self, job: Job) -> None:
        self._tracker.abandon(job.topic, job.partition, job.offset, job.generation)
        self._on_fatal(
            f"the dead-letter topic {self._topics.dead_letter} refused {job.topic}[{job.partition}]"
            f"@{job.offset}; its offset stays uncommitted"
        )

    def _origin_headers(self, job: Job) -> dict[str, bytes]:
        """Where the record came from, plus what must survive every hop: the replay marker, the cache
        scope and headers that are not ours (trace context, say)."""
        origin = job.origin()
        carried = {
            name: value
            for name, value in job.headers.items()
            if name in _CARRIED_HEADERS or not name.startswith("captioner.")
        }
        return carried | {
            record_headers.ORIGINAL_TOPIC: origin.topic.encode(),
            record_headers.ORIGINAL_PARTITION: str(origin.partition).encode(),
            record_headers.ORIGINAL_OFFSET: str(origin.offset).encode(),
            record_headers.ORIGINAL_TIMESTAMP_MS: str(origin.timestamp_ms).encode(),
        }

    def _send(self, job: Job, topic: str, headers: dict[str, bytes], *, refused: Callable[[], None]) -> bool:
        """The record's own bytes to `topic`; its offset finishes once the record counts as written. A
        failure the producer may overcome (not acknowledged within the delivery timeout: a broker down, a
        partition without a leader) sends it again, so a retry or dead-letter record is never dropped; one
        it cannot (refused by the topic) calls `refused`. False when refused at once."""

        def on_failed(error: KafkaError) -> None:
            with job_log_context(job):  # delivery reports run on another thread, outside any job's
                if error.retriable() or error.code() == KafkaError._MSG_TIMED_OUT:
                    log.warning(
                        "could not write %s[%d]@%d to %s yet: %s",
                        job.topic,
                        job.partition,
                        job.offset,
                        topic,
                        error.str(),
                    )
                    self._send(job, topic, headers, refused=refused)
                else:
                    log.error(
                        "%s refused %s[%d]@%d: %s", topic, job.topic, job.partition, job.offset, error.str()
                    )
                    refused()

        return self._sink.emit(
            OutcomeRecord(
                topic=topic,
                key=job.key,
                value=job.value,
                headers=list(headers.items()),
                job=job,
                durable=lambda: self._finish(job),
                failed=on_failed,
            )
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
        """`then` marks the final reply: it runs once the reply is durable, and a reply the topic
        refuses sends the job to the dead-letter topic instead."""
        address = job.reply_to
        if address is None:
            if then:
                then()
            return  # no readable, valid reply address: the dead letter is all there is
        reply = CaptionReply(
            correlation_id=address.correlation_id,
            status=status,
            title=title,
            error=error,
            model=self._model_name,
            worker_id=self._worker_id,
            attempt=job.attempt,
            inference_ms=inference_ms,
            completed_at=datetime.now(UTC),
        )

        span, headers = start_publish_span(job, address.topic)

        def undeliverable(reason: str, *, timed_out: bool = False) -> None:
            with job_log_context(job):
                log.error("reply for %s to %s undeliverable: %s", job.name, address.topic, reason)
            if then:
                job.reply_to = None  # the dead letter's FAILED reply would meet the same refusal
                message = (
                    "the reply topic did not take the reply within the delivery timeout"
                    if timed_out
                    else "the reply topic refused the reply"
                )
                self._dead_letter(job, ReplyUndeliverableError(message, detail=reason))

        produced = time.perf_counter()

        def acknowledged() -> None:
            end_publish_span(span, None)
            if then:
                metrics.REPLY_SECONDS.observe(time.perf_counter() - produced)

        def on_failed(error: KafkaError) -> None:
            end_publish_span(span, error.str())
            undeliverable(error.str(), timed_out=error.code() == KafkaError._MSG_TIMED_OUT)

        try:  # in the request's framing; a registry that refuses or is down leaves the reply undeliverable
            value = self._replies.encode(reply, topic=address.topic, framing=job.framing)
        except CaptionerError as exc:
            end_publish_span(span, exc.code)
            undeliverable(f"{exc.code}: {exc.message}")
            return
        self._sink.emit(
            OutcomeRecord(
                topic=address.topic,
                key=address.correlation_id.encode() or None,
                value=value,
                partition=-1 if address.partition is None else address.partition,
                headers=[*address.headers, *headers],
                job=job,
                durable=then,
                acknowledged=acknowledged,
                failed=on_failed,
                reply=True,
            )
        )

    def _finish(self, job: Job) -> None:
        end_job_trace(job)
        self._tracker.finish(job.topic, job.partition, job.offset, job.generation)


def _log_fatal(reason: str) -> None:
    log.critical("%s", reason)


def _operator_message(error: BaseException) -> str:
    """For logs and dead-letter headers: the caller's message plus what a library said."""
    if isinstance(error, CaptionerError):
        text = f"{error.message} ({error.detail})" if error.detail else error.message
    else:
        text = f"{type(error).__name__}: {error}"
    return text[:_MESSAGE_LIMIT]


def _reply_error(error: BaseException, *, retriable: bool) -> ReplyError:
    """For the caller: a code and a plain message, never a library's words or a repr."""
    if isinstance(error, CaptionerError):
        return ReplyError(code=error.code, message=error.message[:_MESSAGE_LIMIT], retriable=retriable)
    return ReplyError(code="internal_error", message=_INTERNAL_MESSAGE, retriable=retriable)
