"""One caption request after its image is checked: publish the job, await its reply."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.cache_keys import SHARED_SCOPE
from core.errors import (
    CaptionerError,
    ImageTooCostlyError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidRequestError,
    UnsupportedImageFormatError,
)
from core.logs import log_context
from core.settings import ApiSettings, TopicSettings
from producer_api import metrics
from producer_api.cache import CachedCaptions
from producer_api.errors import CaptionFailedError, CaptionTimeoutError, CaptionUnavailableError
from producer_api.payload import ImageUpload
from producer_api.publisher import RequestPublisher
from producer_api.replies import PendingReplies
from producer_api.tracing import publish_span
from schemas import REQUEST_CODEC, CaptionCacheEntry, CaptionReply, CaptionRequest, ReplyStatus
from schemas import headers as record_headers

log = logging.getLogger(__name__)

# Images up to this size are encoded on the event loop (see CaptionService._encoded).
INLINE_ENCODE_MAX_BYTES = 64 * 1024

# Worker error codes whose message is written for the caller (core.errors); any other
# worker message may hold a library's text, so callers get only its code.
_CALLER_ERRORS: dict[str, type[CaptionerError]] = {
    InvalidImageError.code: InvalidImageError,
    ImageTooLargeError.code: ImageTooLargeError,
    ImageTooCostlyError.code: ImageTooCostlyError,
    UnsupportedImageFormatError.code: UnsupportedImageFormatError,
    InvalidRequestError.code: InvalidRequestError,
}


@dataclass(frozen=True, slots=True)
class CaptionResult:
    correlation_id: str
    reply: CaptionReply
    latency_ms: float
    cached: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "id": self.correlation_id,
            "title": self.reply.title,
            "model": self.reply.model,
            "worker_id": self.reply.worker_id,
            "attempt": self.reply.attempt,
            "inference_ms": round(self.reply.inference_ms, 2),
            "latency_ms": round(self.latency_ms, 2),
            "cached": self.cached,
        }

    @classmethod
    def from_cache(cls, correlation_id: str, entry: CaptionCacheEntry, started: float) -> CaptionResult:
        """The answer the entry's job gave (title, model, worker, attempt, inference time), under this
        request's own id and latency."""
        reply = CaptionReply(
            correlation_id=correlation_id,
            status=ReplyStatus.SUCCEEDED,
            model=entry.model,
            worker_id=entry.worker_id,
            title=entry.title,
            attempt=entry.attempt,
            inference_ms=entry.inference_ms,
            completed_at=entry.completed_at,
        )
        return cls(correlation_id, reply, (time.perf_counter() - started) * 1000, cached=True)


class CaptionService:
    def __init__(
        self,
        *,
        api: ApiSettings,
        topics: TopicSettings,
        publisher: RequestPublisher,
        pending: PendingReplies,
        reply_partition: int,
        executor: Executor,
        encode: Callable[[CaptionRequest], bytes] = REQUEST_CODEC.encode,
        cache: CachedCaptions | None = None,
    ) -> None:
        """executor runs encode: the Avro record copies the image, which is too much work for the loop."""
        self._api = api
        self._cache = cache
        self._topics = topics
        self._publisher = publisher
        self._pending = pending
        self._reply_partition = reply_partition
        self._executor = executor
        self._encode = encode

    async def caption(
        self, upload: ImageUpload, *, use_cache: bool = True, scope: str = SHARED_SCOPE
    ) -> CaptionResult:
        """Admission (app.predict) and the image check (payload.prepare_upload) come first. With
        `use_cache` false (the caller's headers asked for it) the image is captioned afresh. `scope`: the
        caller's caption-cache scope (cache.caller_scope), which the job carries to the worker."""
        correlation_id = uuid.uuid4().hex
        with log_context(correlation_id=correlation_id):
            return await self._caption(upload, correlation_id, use_cache=use_cache, scope=scope)

    async def _caption(
        self, upload: ImageUpload, correlation_id: str, *, use_cache: bool, scope: str
    ) -> CaptionResult:
        started = time.perf_counter()
        if self._cache is not None and upload.sha256:
            if not use_cache:
                metrics.CACHE_BYPASSED.inc()
            elif (entry := self._cache.find(upload.sha256, scope=scope)) is not None:
                return CaptionResult.from_cache(correlation_id, entry, started)
        now = datetime.now(UTC)
        job = CaptionRequest(
            correlation_id=correlation_id,
            image=upload.data,
            content_type=upload.content_type,
            reply_topic=self._topics.replies,
            reply_partition=self._reply_partition,
            created_at=now,
            deadline=now + timedelta(seconds=self._api.request_timeout_s),
        )
        value = await self._encoded(job)
        reply_future = self._pending.expect(correlation_id)
        try:
            with publish_span(self._topics.requests, correlation_id) as headers:
                if scope != SHARED_SCOPE:
                    headers = [*headers, (record_headers.CACHE_SCOPE, scope.encode())]
                # An undelivered job fails the reply's future; a delivered one does not wake the loop.
                self._publisher.send(
                    topic=self._topics.requests,
                    key=correlation_id.encode(),
                    value=value,
                    headers=headers,
                    failed=reply_future,
                )
            remaining = self._api.request_timeout_s - (time.perf_counter() - started)
            reply = await asyncio.wait_for(reply_future, timeout=max(remaining, 0.0))
        except TimeoutError:
            notice = self._pending.forget(correlation_id)
            raise self._timeout(correlation_id, notice) from None
        finally:
            self._pending.forget(correlation_id)
        return self._result(correlation_id, reply, started)

    async def _encoded(self, job: CaptionRequest) -> bytes:
        """Encoding copies the image: a large one is encoded on a thread, off the event loop; a small one
        costs less to encode here (tens of microseconds) than to hand to a thread and back."""
        if len(job.image) <= INLINE_ENCODE_MAX_BYTES:
            return self._encode(job)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._encode, job)

    def _timeout(self, correlation_id: str, notice: CaptionReply | None) -> CaptionTimeoutError:
        message = f"no caption within {self._api.request_timeout_s:g} s"
        if notice is not None and notice.error is not None:
            message += f"; the job is being retried after a {notice.error.code} failure"
            return CaptionTimeoutError(
                message,
                detail=notice.error.message,
                id=correlation_id,
                retrying=True,
                attempt=notice.attempt,
                reason=notice.error.code,
            )
        return CaptionTimeoutError(message, id=correlation_id, retrying=False)

    def _result(self, correlation_id: str, reply: CaptionReply, started: float) -> CaptionResult:
        if reply.status is ReplyStatus.SUCCEEDED:
            return CaptionResult(correlation_id, reply, (time.perf_counter() - started) * 1000)
        error = reply.error
        code = error.code if error else "unknown"
        detail = error.message if error else f"worker answered {reply.status} without an error"
        if error is not None and error.retriable:
            log.warning(
                "job %s failed after %d attempts: %s: %s", correlation_id, reply.attempt, code, detail
            )
            raise CaptionUnavailableError(
                f"captioning failed after {reply.attempt} attempts ({code})", id=correlation_id, reason=code
            )
        caller_error = _CALLER_ERRORS.get(code)
        if caller_error is not None and error is not None:
            raise caller_error(error.message, id=correlation_id)
        log.warning("job %s failed: %s: %s", correlation_id, code, detail)
        raise CaptionFailedError(
            f"the worker could not caption this image ({code})", id=correlation_id, reason=code
        )
