"""Errors the API answers with. They belong to captioner's error family, so the error middleware turns
any CaptionerError (an image error from core.images, say) into the same JSON with its status."""

from __future__ import annotations

from typing import Any

from core.errors import CaptionerError


def error_body(error: CaptionerError) -> dict[str, Any]:
    """What a caller sees: the code, the caller-safe message and the fields; never `detail`."""
    return {"error": {"code": error.code, "message": error.message, **error.fields}}


class ApiError(CaptionerError):
    """An error of the API's own."""


class MalformedRequestError(ApiError):
    http_status = 400
    code = "malformed_request"


class RequestTimeoutError(ApiError):
    """The body did not arrive within the read timeout."""

    http_status = 408
    code = "request_timeout"
    retriable = True


class PayloadTooLargeError(ApiError):
    http_status = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(ApiError):
    http_status = 415
    code = "unsupported_media_type"


class OverloadedError(ApiError):
    http_status = 429
    code = "overloaded"
    retriable = True


class BrokerUnavailableError(ApiError):
    http_status = 503
    code = "broker_unavailable"
    retriable = True


class ShuttingDownError(ApiError):
    """This instance is stopping: a request that arrives while it drains, or one still in flight at
    the drain bound. The connection is closed; another instance takes the retry."""

    http_status = 503
    code = "shutting_down"
    retriable = True


class CaptionTimeoutError(ApiError):
    http_status = 504
    code = "timeout"
    retriable = True


class CaptionFailedError(ApiError):
    """The worker answered with a permanent failure."""

    http_status = 422
    code = "caption_failed"


class CaptionUnavailableError(ApiError):
    """Transient failures outlasted every retry; the job is in the dead-letter topic."""

    http_status = 503
    code = "caption_unavailable"
    retriable = True


class UnauthorizedError(ApiError):
    """No API key, or not one of the configured keys (which key was tried is never said or logged)."""

    http_status = 401
    code = "unauthorized"


class TooManyItemsError(PayloadTooLargeError):
    """A batch with more images than CAPTIONER_API_MAX_BATCH_ITEMS."""
