"""Errors the API answers with: each knows its HTTP status and a stable code."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 500
    code = "internal_error"
    retriable = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class MalformedRequestError(ApiError):
    status = 400
    code = "malformed_request"


class PayloadTooLargeError(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(ApiError):
    status = 415
    code = "unsupported_media_type"


class InvalidImageError(ApiError):
    status = 422
    code = "invalid_image"


class OverloadedError(ApiError):
    status = 429
    code = "overloaded"
    retriable = True


class BrokerUnavailableError(ApiError):
    status = 503
    code = "broker_unavailable"
    retriable = True


class CaptionTimeoutError(ApiError):
    status = 504
    code = "timeout"
    retriable = True


class CaptionFailedError(ApiError):
    """The worker answered with a permanent failure."""

    status = 422
    code = "caption_failed"


class CaptionUnavailableError(ApiError):
    """Transient failures outlasted every retry; the job is in the dead-letter topic."""

    status = 503
    code = "caption_unavailable"
    retriable = True
