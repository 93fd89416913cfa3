"""Reads the image out of a request: JSON base64 (the seed's contract), multipart, or a raw image body."""

from __future__ import annotations

import binascii
import io
import json
from dataclasses import dataclass

from aiohttp import BodyPartReader, web
from PIL import Image, UnidentifiedImageError

from producer_api.errors import (
    InvalidImageError,
    MalformedRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

SUPPORTED_FORMATS = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


@dataclass(frozen=True, slots=True)
class ImageUpload:
    data: bytes
    content_type: str


async def read_upload(request: web.Request, *, max_image_bytes: int) -> bytes:
    """The image's encoded bytes, still unchecked. Raises ApiError subclasses for bad requests."""
    if request.content_length is not None and request.content_length > _max_body(max_image_bytes):
        raise PayloadTooLargeError(f"request body exceeds {max_image_bytes} image bytes")
    content_type = request.content_type
    if content_type == "application/json":
        return _image_from_json(await _read_body(request, _max_body(max_image_bytes)), max_image_bytes)
    if content_type == "multipart/form-data":
        return await _image_from_multipart(request, max_image_bytes)
    if content_type.startswith("image/"):
        return await _read_body(request, max_image_bytes)
    raise UnsupportedMediaTypeError(
        f"unsupported Content-Type {content_type!r}; send application/json, multipart/form-data or image/*"
    )


def _max_body(max_image_bytes: int) -> int:
    # base64 grows data by 4/3; leave room for JSON or multipart framing.
    return max_image_bytes * 4 // 3 + 64 * 1024


async def _read_body(request: web.Request, limit: int) -> bytes:
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _image_from_json(body: bytes, max_image_bytes: int) -> bytes:
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedRequestError(f"body is not valid JSON: {exc}") from None
    encoded = document.get("image") if isinstance(document, dict) else None
    if not isinstance(encoded, str) or not encoded:
        raise MalformedRequestError('JSON body must be an object with a base64 string field "image"')
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:
        data = binascii.a2b_base64("".join(encoded.split()).encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MalformedRequestError(f'"image" is not valid base64: {exc}') from None
    if len(data) > max_image_bytes:
        raise PayloadTooLargeError(f"image is {len(data)} bytes; the limit is {max_image_bytes}")
    if not data:
        raise MalformedRequestError('"image" is empty')
    return data


async def _image_from_multipart(request: web.Request, max_image_bytes: int) -> bytes:
    try:
        reader = await request.multipart()
        async for part in reader:
            if isinstance(part, BodyPartReader) and part.name == "image":
                data = await part.read(decode=True)
                if len(data) > max_image_bytes:
                    raise PayloadTooLargeError(f"image is {len(data)} bytes; the limit is {max_image_bytes}")
                return bytes(data)
    except (ValueError, AssertionError) as exc:
        raise MalformedRequestError(f"malformed multipart body: {exc}") from None
    raise MalformedRequestError('multipart body has no "image" part')


def identify_image(data: bytes, *, max_pixels: int) -> ImageUpload:
    """Checks that the bytes are an image we can caption. Blocking: run it off the event loop."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format or ""
            width, height = image.size
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"not a decodable image: {exc}") from None
    content_type = SUPPORTED_FORMATS.get(image_format)
    if content_type is None:
        raise UnsupportedMediaTypeError(
            f"image format {image_format} is not supported; use one of {', '.join(SUPPORTED_FORMATS)}"
        )
    if width * height > max_pixels:
        raise InvalidImageError(f"image is {width}x{height}; the limit is {max_pixels} pixels")
    return ImageUpload(data=data, content_type=content_type)
