"""Worker errors. `retriable` decides the route: retry tiers for transient, dead letters for permanent."""

from __future__ import annotations

from core.errors import (
    CaptionerError,
    ImageTooCostlyError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidRequestError,
    UnsupportedImageFormatError,
)

__all__ = [
    "DecodersBusyError",
    "ImageTooCostlyError",
    "ImageTooLargeError",
    "InferenceError",
    "InvalidImageError",
    "InvalidRequestError",
    "ModelUnavailableError",
    "ReplyUndeliverableError",
    "UnsupportedImageFormatError",
    "WorkerError",
    "WorkerFatalError",
]


class WorkerError(CaptionerError):
    code = "worker_error"


class InferenceError(WorkerError):
    """The model failed on a batch; another attempt may succeed."""

    retriable = True
    code = "inference_failed"


class DecodersBusyError(WorkerError):
    """Every decode thread was held by images that outlived the decode bound, so this job's image was
    not started in time; another attempt, from a retry tier, will find a thread."""

    retriable = True
    code = "decoders_busy"


class ModelUnavailableError(WorkerError):
    """The weights cannot be loaded; the worker cannot start."""

    code = "model_unavailable"


class ReplyUndeliverableError(WorkerError):
    """The request's reply address does not accept records (no such topic, say)."""

    code = "reply_undeliverable"


class WorkerFatalError(WorkerError):
    """The worker cannot go on (lost credentials, a dead-letter topic that refuses records): it stops
    and its process exits non-zero so an orchestrator restarts it and someone is alerted."""

    code = "worker_fatal"
