"""Errors the API answers with, and the HTTP status of every error it can answer. They belong to
captioner's error family, so the error middleware turns any CaptionerError (an image error from
core.images, say) into the same JSON, with the status HTTP_STATUSES gives its class."""

from __future__ import annotations

from typing import Any

from core.errors import (
    CaptionerError,
    InvalidImageError,
    InvalidRequestError,
    KafkaTimeoutError,
    UnsupportedImageFormatError,
)
from schemas import errors as contract


def error_body(error: CaptionerError) -> dict[str, Any]:
    """What a caller sees: the code, the caller-safe message and the fields; never `detail`."""
    return {"error": {"code": error.code, "message": error.message, **error.fields}}


def http_status(error: CaptionerError) -> int:
    """The status of the error's class, or of the nearest class above it in HTTP_STATUSES; else 500."""
    for cls in type(error).__mro__:
        status = HTTP_STATUSES.get(cls)
        if status is not None:
            return status
    return 500


class ApiError(CaptionerError):
    """An error of the API's own."""


class MalformedRequestError(ApiError):
    code = "malformed_request"


class RequestTimeoutError(ApiError):
    """The body did not arrive within the read timeout."""

    code = "request_timeout"
    retriable = True


class PayloadTooLargeError(ApiError):
    code = "payload_too_large"


class UnsupportedMediaTypeError(ApiError):
    code = "unsupported_media_type"


class OverloadedError(ApiError):
    code = "overloaded"
    retriable = True


class BrokerUnavailableError(ApiError):
    code = "broker_unavailable"
    retriable = True


class ShuttingDownError(ApiError):
    """This instance is stopping: a request that arrives while it drains, or one still in flight at
    the drain bound. The connection is closed; another instance takes the retry."""

    code = "shutting_down"
    retriable = True


class CaptionTimeoutError(ApiError):
    code = "timeout"
    retriable = True


class CaptionFailedError(ApiError):
    """The worker answered with a permanent failure."""

    code = "caption_failed"


class CaptionUnavailableError(ApiError):
    """Transient failures outlasted every retry; the job is in the dead-letter topic."""

    code = "caption_unavailable"
    retriable = True


class UnauthorizedError(ApiError):
    """No API key, or not one of the configured keys (which key was tried is never said or logged)."""

    code = "unauthorized"


class TooManyItemsError(PayloadTooLargeError):
    """A batch with more images than CAPTIONER_API_MAX_BATCH_ITEMS."""


# The one table of the API's statuses, by error class: a subclass answers as its family does unless listed
# itself. Any other CaptionerError is a 500.
HTTP_STATUSES: dict[type, int] = {
    # the request itself
    MalformedRequestError: 400,
    UnauthorizedError: 401,
    RequestTimeoutError: 408,
    PayloadTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    OverloadedError: 429,
    # the image, checked here or by a worker (its FAILED reply), and the request's fields
    InvalidImageError: 422,
    UnsupportedImageFormatError: 415,
    InvalidRequestError: 400,
    # the caption
    CaptionFailedError: 422,
    CaptionUnavailableError: 503,
    CaptionTimeoutError: 504,
    # this instance and the cluster
    ShuttingDownError: 503,
    BrokerUnavailableError: 503,
    KafkaTimeoutError: 503,
    # The contract's errors reach no handler once start-up has prepared the request writer; one that did
    # would answer as any of the family did before this table.
    contract.SchemaContractError: 400,
    contract.SchemaRegistryUnavailableError: 503,
}
