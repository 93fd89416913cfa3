"""The error family both roles share: a stable `code`, a `retriable` flag callers route on, and the
HTTP status it maps to. `message` is safe to show a caller; `detail` is for operators only (logs and
dead-letter headers) and may hold what a library said."""

from __future__ import annotations

from typing import Any


class CaptionerError(Exception):
    code = "internal_error"
    retriable = False
    http_status = 500

    def __init__(self, message: str, *, detail: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.fields = fields


class InvalidImageError(CaptionerError):
    """The bytes are not an image in an accepted format that we can decode. Permanent."""

    code = "invalid_image"
    http_status = 422


class ImageTooLargeError(InvalidImageError):
    """The image has more pixels than the limit. Permanent."""

    code = "image_too_large"


class UnsupportedImageFormatError(InvalidImageError):
    """A recognised image format that we do not decode (HEIC, ICO, EPS, ...). Permanent."""

    code = "unsupported_media_type"
    http_status = 415


class InvalidRequestError(CaptionerError):
    """A record that decodes but breaks the contract's rules (a field out of range, say). Permanent."""

    code = "invalid_request"
    http_status = 400
