"""Image factories: deterministic pictures with real structure (gradients, shapes, noise)."""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


def make_picture(width: int = 96, height: int = 72, *, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1
    ) * rng.uniform(0.3, 1.0, size=3)
    pixels = np.clip(base + rng.normal(0, 20, size=base.shape), 0, 255).astype("uint8")
    picture = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(picture)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        x1, y1 = x0 + int(rng.integers(4, width // 2)), y0 + int(rng.integers(4, height // 2))
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.ellipse((x0, y0, x1, y1), fill=color)
    return picture


def encode(picture: Image.Image, image_format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=image_format)
    return buffer.getvalue()


def make_image_bytes(
    image_format: str = "JPEG", *, width: int = 96, height: int = 72, seed: int = 0
) -> bytes:
    return encode(make_picture(width, height, seed=seed), image_format)


class ReferenceCaptioner:
    """Plain processor + model.generate + batch_decode: the answer the service must give."""

    def __init__(self, model_dir: Path, *, max_new_tokens: int = 20) -> None:
        from transformers import AutoModelForCausalLM, AutoProcessor

        # transformers is untyped; bench.image_cost imports this module, so mypy reads it
        self.processor = AutoProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()  # type: ignore[no-untyped-call]
        self.max_new_tokens = max_new_tokens

    def caption(self, data: bytes) -> str:
        return self.captions([data])[0]

    def captions(self, images: list[bytes]) -> list[str]:
        import torch

        pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
        pixel_values = self.processor(images=pictures, return_tensors="pt").pixel_values
        with torch.inference_mode():
            ids = self.model.generate(
                pixel_values=pixel_values, do_sample=False, max_new_tokens=self.max_new_tokens
            )
        return [title.strip() for title in self.processor.batch_decode(ids, skip_special_tokens=True)]


@cache
def reference_captioner(model_dir: Path) -> ReferenceCaptioner:
    return ReferenceCaptioner(model_dir)


# --- Costly images: structures that make a decoder work far beyond what their pixels need ------------

_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


@dataclass(frozen=True)
class JpegSegment:
    marker: int
    start: int  # at its FF
    end: int  # past its bytes (a scan's: past its entropy-coded data)


def jpeg_segments(data: bytes) -> list[JpegSegment]:
    """The segments of a well-formed JPEG (an encoder's output), from the one after SOI to EOI."""
    segments, position = [], 2
    while position < len(data):
        marker = data[position + 1]
        if marker == 0xD9:
            segments.append(JpegSegment(marker, position, position + 2))
            return segments
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:
            found = _JPEG_SCAN_END.search(data, end)
            end = found.start() if found else len(data)
        segments.append(JpegSegment(marker, position, end))
        position = end
    return segments


def progressive_jpeg(
    width: int, height: int, *, mode: str = "L", color: int | tuple[int, ...] = 128, **options: Any
) -> bytes:
    """A flat picture, as Pillow (libjpeg's own progression) saves it progressively."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, "JPEG", progressive=True, **options)
    return buffer.getvalue()


def scan_bomb(
    width: int = 4000, height: int = 4000, *, scans: int = 10_006, mode: str = "L", **options: Any
) -> bytes:
    """A progressive JPEG with `scans` scans: its last scan, with the Huffman tables before it, repeated
    before EOI. Each repeat carries a few dozen bytes (runs of empty blocks), and libjpeg, which only
    warns about a progression that goes over the same coefficients again, decodes every one: a pass
    over the whole picture each (libjpeg-turbo's LJT-01-003)."""
    data = progressive_jpeg(width, height, mode=mode, **options)
    segments = jpeg_segments(data)
    scan_indexes = [index for index, segment in enumerate(segments) if segment.marker == 0xDA]
    first = last = scan_indexes[-1]
    while segments[first - 1].marker == 0xC4:
        first -= 1
    repeated = data[segments[first].start : segments[last].end]
    eoi = segments[-1].start
    return data[:eoi] + repeated * (scans - len(scan_indexes)) + data[eoi:]


def jpeg_scan_count(data: bytes) -> int:
    return sum(segment.marker == 0xDA for segment in jpeg_segments(data))


def mpo_with(first: bytes, second: bytes) -> bytes:
    """A multi-picture JPEG of two pictures: `first` carrying the index of a Pillow MPO (so Pillow opens
    it as MPO), then `second`. The index's offsets are Pillow's own, which only matter to a reader that
    seeks to the second picture."""
    buffer = io.BytesIO()
    make_picture(32, 24).save(
        buffer, format="MPO", save_all=True, append_images=[make_picture(32, 24, seed=1)]
    )
    index = next(
        segment
        for segment in jpeg_segments(buffer.getvalue())
        if segment.marker == 0xE2 and buffer.getvalue()[segment.start + 4 : segment.start + 8] == b"MPF\x00"
    )
    first_end = jpeg_segments(first)[-1].end
    return first[:2] + buffer.getvalue()[index.start : index.end] + first[2:first_end] + second


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, position = [], 8
    while position < len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks.append((kind, data[position + 8 : position + 8 + length]))
        position += 12 + length
    return chunks


def png_with(
    picture: Image.Image, *, before_data: bytes = b"", after_data: bytes = b"", fragment: int | None = None
) -> bytes:
    """Pillow's PNG of `picture` with chunks inserted before and after its image data, whose zlib
    stream may be split into IDAT chunks of `fragment` bytes."""
    chunks = png_chunks(encode(picture, "PNG"))
    header = next(body for kind, body in chunks if kind == b"IHDR")
    stream = b"".join(body for kind, body in chunks if kind == b"IDAT")
    size = fragment or len(stream)
    data = b"".join(png_chunk(b"IDAT", stream[at : at + size]) for at in range(0, len(stream), size))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + before_data
        + data
        + after_data
        + png_chunk(b"IEND", b"")
    )


def png_chunk_flood(chunks: int, *, picture: Image.Image | None = None, after_data: bool = False) -> bytes:
    """A small PNG with `chunks` empty private chunks before (or after) its image data."""
    flood = png_chunk(b"prVt", b"") * chunks
    picture = picture or Image.new("RGB", (16, 16))
    return png_with(picture, after_data=flood) if after_data else png_with(picture, before_data=flood)


def gif_with_blocks(blocks: int, *, size: tuple[int, int] = (16, 16)) -> bytes:
    """A GIF whose first picture follows a comment extension of `blocks` one-byte sub-blocks."""
    data = encode(Image.new("P", size), "GIF")
    flags = data[10]
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    comment = b"\x21\xfe" + b"\x01\x41" * blocks + b"\x00"
    return data[:at] + comment + data[at:]


def rle_bmp(width: int, height: int, runs: bytes, *, rle4: bool = False) -> bytes:
    """A BMP with 8-bit (or 4-bit) RLE compression holding `runs` (pairs of count and value, escapes)."""
    bits, compression = (4, 2) if rle4 else (8, 1)
    palette = b"".join(bytes([level, level, level, 0]) for level in range(2**bits))
    offset = 14 + 40 + len(palette)
    header = struct.pack(
        "<IiiHHIIiiII", 40, width, height, 1, bits, compression, len(runs), 2835, 2835, 2**bits, 0
    )
    return b"BM" + struct.pack("<IHHI", offset + len(runs), 0, 0, offset) + header + palette + runs


def tiff(
    width: int,
    height: int,
    *,
    strip: bytes,
    rows_per_strip: int | None = None,
    strips: int | None = None,
    compression: int = 1,
    extra_entries: int = 0,
) -> bytes:
    """A little-endian grey TIFF whose strips (one per `rows_per_strip` rows, or `strips` of them) all
    point at the same bytes, `strip`; `extra_entries` private SHORT tags pad its directory."""
    rows = rows_per_strip or height
    count = strips if strips is not None else -(-height // rows)
    offset_type, offset_code = (3, "H") if len(strip) + 8 <= 0xFFFF else (4, "I")
    entries: list[tuple[int, int, int, bytes]] = [
        (256, 4, 1, struct.pack("<I", width)),
        (257, 4, 1, struct.pack("<I", height)),
        (258, 3, 1, struct.pack("<H", 8)),
        (259, 3, 1, struct.pack("<H", compression)),
        (262, 3, 1, struct.pack("<H", 1)),
        (273, offset_type, count, struct.pack(f"<{count}{offset_code}", *[8] * count)),
        (277, 3, 1, struct.pack("<H", 1)),
        (278, 4, 1, struct.pack("<I", rows)),
        (279, offset_type, count, struct.pack(f"<{count}{offset_code}", *[len(strip)] * count)),
        *[(1000 + index, 3, 1, b"\x00\x00") for index in range(extra_entries)],
    ]
    entries.sort()
    directory_at = 8 + len(strip) + (len(strip) & 1)
    values_at = directory_at + 2 + 12 * len(entries) + 4
    directory, values = struct.pack("<H", len(entries)), b""
    for tag, kind, number, raw in entries:
        if len(raw) <= 4:
            directory += struct.pack("<HHI", tag, kind, number) + raw.ljust(4, b"\x00")
        else:
            directory += struct.pack("<HHII", tag, kind, number, values_at + len(values))
            values += raw + b"\x00" * (len(raw) & 1)
    directory += struct.pack("<I", 0)
    body = b"II*\x00" + struct.pack("<I", directory_at) + strip + b"\x00" * (len(strip) & 1)
    return body + directory + values


def animated_webp(frames: int) -> bytes:
    """A 1x1 animated WebP of `frames` frames, each the same lossless pixel."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "WEBP", lossless=True)
    single = buffer.getvalue()
    bitstream = single[single.index(b"VP8L") :]  # the frame's VP8L chunk, as it is

    def chunk(kind: bytes, body: bytes) -> bytes:
        return kind + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) & 1)

    frame = chunk(b"ANMF", bytes(12) + b"\x01\x00\x00\x00" + bitstream)
    body = b"WEBP" + chunk(b"VP8X", b"\x02" + bytes(3) + bytes(6)) + chunk(b"ANIM", bytes(6)) + frame * frames
    return b"RIFF" + struct.pack("<I", len(body)) + body
