"""Worker errors. `retriable` decides the route: retry tiers for transient, dead letters for permanent."""

from __future__ import annotations


class WorkerError(Exception):
    retriable = False
    code = "worker_error"


class InvalidImageError(WorkerError):
    """The bytes are not an image we can decode."""

    code = "invalid_image"


class ImageTooLargeError(WorkerError):
    """The image exceeds the pixel limit of the worker."""

    code = "image_too_large"


class InferenceError(WorkerError):
    """The model failed on a batch; another attempt may succeed."""

    retriable = True
    code = "inference_failed"


class ModelUnavailableError(WorkerError):
    """The weights cannot be loaded; the worker cannot start."""

    code = "model_unavailable"
