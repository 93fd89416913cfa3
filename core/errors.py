"""The error family both roles share (its base, CaptionerError, lives in schemas, the bottom layer)."""

from __future__ import annotations

from schemas.errors import CaptionerError

__all__ = [
    "CaptionerError",
    "ImageTooCostlyError",
    "ImageTooLargeError",
    "InvalidImageError",
    "InvalidRequestError",
    "KafkaTimeoutError",
    "UnsupportedImageFormatError",
]


class InvalidImageError(CaptionerError):
    """The bytes are not an image in an accepted format that we can decode. Permanent."""

    code = "invalid_image"


class ImageTooLargeError(InvalidImageError):
    """The image has more pixels than the limit. Permanent."""

    code = "image_too_large"


class ImageTooCostlyError(InvalidImageError):
    """Decoding the image would cost far more time than any image of its size needs (a JPEG with
    thousands of progressive scans, a PNG of a million chunks, ...), or it took longer than the
    worker waits for one image. Permanent."""

    code = "image_too_costly"


class UnsupportedImageFormatError(InvalidImageError):
    """A recognised image format that we do not decode (HEIC, ICO, EPS, ...). Permanent."""

    code = "unsupported_media_type"


class InvalidRequestError(CaptionerError):
    """A record that decodes but breaks the contract's rules (a field out of range, say). Permanent."""

    code = "invalid_request"


class KafkaTimeoutError(CaptionerError):
    """The cluster did not finish an admin operation (creating topics, electing their leaders) in time.
    It may later: retriable."""

    code = "kafka_timeout"
    retriable = True
