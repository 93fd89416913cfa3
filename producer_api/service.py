"""One caption request, end to end: check the image, publish the job, await its reply."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from captioner.settings import ApiSettings, TopicSettings
from producer_api.errors import (
    CaptionFailedError,
    CaptionTimeoutError,
    CaptionUnavailableError,
    InvalidImageError,
    OverloadedError,
)
from producer_api.payload import identify_image
from producer_api.publisher import RequestPublisher
from producer_api.replies import PendingReplies
from schemas import REQUEST_CODEC, CaptionReply, CaptionRequest, ReplyStatus


@dataclass(frozen=True, slots=True)
class CaptionResult:
    correlation_id: str
    reply: CaptionReply
    latency_ms: float

    def body(self) -> dict[str, Any]:
        return {
            "id": self.correlation_id,
            "title": self.reply.title,
            "model": self.reply.model,
            "worker_id": self.reply.worker_id,
            "attempt": self.reply.attempt,
            "inference_ms": round(self.reply.inference_ms, 2),
            "latency_ms": round(self.latency_ms, 2),
        }


class CaptionService:
    def __init__(
        self,
        *,
        api: ApiSettings,
        topics: TopicSettings,
        publisher: RequestPublisher,
        pending: PendingReplies,
        reply_partition: int,
        image_executor: Executor,
        max_image_pixels: int,
    ) -> None:
        self._api = api
        self._topics = topics
        self._publisher = publisher
        self._pending = pending
        self._reply_partition = reply_partition
        self._image_executor = image_executor
        self._max_image_pixels = max_image_pixels
        self._slots = asyncio.Semaphore(api.max_in_flight)

    async def caption(self, image: bytes) -> CaptionResult:
        if self._slots.locked():
            raise OverloadedError(
                f"{self._api.max_in_flight} requests are in flight on this instance",
                retry_after_s=1,
            )
        async with self._slots:
            return await self._caption(image)

    async def _caption(self, image: bytes) -> CaptionResult:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        upload = await loop.run_in_executor(
            self._image_executor, lambda: identify_image(image, max_pixels=self._max_image_pixels)
        )
        correlation_id = uuid.uuid4().hex
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
        reply_future = self._pending.expect(correlation_id)
        try:
            await self._publisher.publish(
                topic=self._topics.requests, key=correlation_id.encode(), value=REQUEST_CODEC.encode(job)
            )
            remaining = self._api.request_timeout_s - (time.perf_counter() - started)
            reply = await asyncio.wait_for(reply_future, timeout=max(remaining, 0.0))
        except TimeoutError:
            notice = self._pending.forget(correlation_id)
            raise self._timeout(correlation_id, notice) from None
        finally:
            self._pending.forget(correlation_id)
        return self._result(correlation_id, reply, started)

    def _timeout(self, correlation_id: str, notice: CaptionReply | None) -> CaptionTimeoutError:
        message = f"no caption within {self._api.request_timeout_s:g} s"
        if notice is not None and notice.error is not None:
            message += f"; the job is being retried after: {notice.error.message}"
            return CaptionTimeoutError(message, id=correlation_id, retrying=True, attempt=notice.attempt)
        return CaptionTimeoutError(message, id=correlation_id, retrying=False)

    def _result(self, correlation_id: str, reply: CaptionReply, started: float) -> CaptionResult:
        if reply.status is ReplyStatus.SUCCEEDED:
            return CaptionResult(correlation_id, reply, (time.perf_counter() - started) * 1000)
        error = reply.error
        code = error.code if error else "unknown"
        message = error.message if error else f"worker answered {reply.status}"
        if error is not None and error.retriable:
            raise CaptionUnavailableError(
                f"captioning failed after {reply.attempt} attempts: {message}", id=correlation_id, reason=code
            )
        if code == "invalid_image":
            raise InvalidImageError(message, id=correlation_id)
        raise CaptionFailedError(message, id=correlation_id, reason=code)
