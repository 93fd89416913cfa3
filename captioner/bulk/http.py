"""Captioning through the HTTP API: one POST per image, retried with backoff while the service says it is
busy (429) or cannot reach Kafka (503 broker_unavailable), or the connection fails. A 503
caption_unavailable is final: that job already went through every retry tier into the dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from pydantic import SecretStr

from captioner.bulk.files import ImageFile
from captioner.bulk.results import TIMEOUT, Result

PREDICTIONS = "/api/v1/predictions"
RETRY_STATUSES = frozenset({429, 503})
# A 503 is retried only for this code; 429 always.
RETRIABLE_503_CODE = "broker_unavailable"
# Retry-After's delta-seconds beyond this many digits is as good as never (and Backoff caps it anyway).
_MAX_RETRY_AFTER_DIGITS = 9
# The API's answers are a few hundred bytes; whatever a misdirected URL sends back is not read past this.
MAX_ANSWER_BYTES = 64 * 1024

# The connection failed or broke mid-answer: the request may be sent again (captioning changes nothing).
_RETRIABLE_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter (so many clients told "busy" at once do not return at once),
    never sooner than the server's Retry-After, which is itself capped (a hostile server cannot park us)."""

    attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0
    max_retry_after_s: float = 120.0

    def delay_s(self, retry: int, retry_after_s: float | None, rng: random.Random) -> float:
        jittered = rng.uniform(0.0, min(self.cap_s, self.base_s * 2**retry))
        if retry_after_s is None:
            return jittered
        return max(min(retry_after_s, self.max_retry_after_s), jittered)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After in seconds: either form HTTP allows (delta-seconds or an HTTP-date); None when absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is True too, but no number
        return float(value) if len(value) <= _MAX_RETRY_AFTER_DIGITS else float(10**_MAX_RETRY_AFTER_DIGITS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class HttpBackend:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_url: str,
        backoff: Backoff,
        api_key: SecretStr | None = None,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._session = session
        self._url = api_url.rstrip("/") + PREDICTIONS
        # aiohttp drops it on a redirect to another origin, so the key goes to the API's origin only.
        self._auth = {"Authorization": f"Bearer {api_key.get_secret_value()}"} if api_key else {}
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._sleep = sleep

    async def caption(self, image: ImageFile) -> Result:
        for retry in range(self._backoff.attempts):
            last_try = retry + 1 == self._backoff.attempts
            try:
                status, retry_after, body = await self._post(image)
            except TimeoutError:
                return Result.failed(image.path, error=TIMEOUT, message="the API did not answer in time")
            except _RETRIABLE_ERRORS as exc:
                if last_try:
                    return Result.failed(
                        image.path, error="connection_failed", message=f"cannot reach the API: {exc}"
                    )
                await self._sleep(self._backoff.delay_s(retry, None, self._rng))
                continue
            except aiohttp.ClientError as exc:  # a redirect loop, say: this image fails, the run goes on
                return Result.failed(
                    image.path, error="request_failed", message=f"{type(exc).__name__}: {exc}"
                )
            if _worth_retrying(status, body) and not last_try:
                await self._sleep(self._backoff.delay_s(retry, retry_after, self._rng))
                continue
            return _result(image.path, status, body, tries=retry + 1)
        raise AssertionError("unreachable: the last try always returns")

    async def _post(self, image: ImageFile) -> tuple[int, float | None, Any]:
        headers = {"Content-Type": image.content_type, **self._auth}
        async with self._session.post(self._url, data=image.data, headers=headers) as response:
            raw = await _read_bounded(response, MAX_ANSWER_BYTES)
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return response.status, retry_after, _json_or_none(raw)


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks = bytearray()
    while len(chunks) <= limit:
        chunk = await response.content.read(limit + 1 - len(chunks))
        if not chunk:
            break
        chunks += chunk
    return bytes(chunks)


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _error_of(body: Any) -> dict[str, Any]:
    found = body.get("error") if isinstance(body, dict) else None
    return found if isinstance(found, dict) else {}


def _worth_retrying(status: int, body: Any) -> bool:
    if status == 503:
        return _error_of(body).get("code") == RETRIABLE_503_CODE
    return status in RETRY_STATUSES


def _result(path: str, status: int, body: Any, *, tries: int) -> Result:
    answer = body if isinstance(body, dict) else {}
    if status == 200 and isinstance(answer.get("title"), str):
        return Result.captioned(path, title=answer["title"], id=_text(answer.get("id")))
    error = _error_of(body)
    code = _text(error.get("code")) or f"http_{status}"
    message = _text(error.get("message")) or f"the API answered HTTP {status}"
    if _worth_retrying(status, body):
        message += f" (gave up after {tries} tries)"
    return Result.failed(path, error=code, message=message, id=_text(error.get("id")))


def _text(value: object) -> str | None:
    return value[:1000] if isinstance(value, str) else None
