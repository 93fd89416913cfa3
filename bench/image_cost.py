"""What one image can cost in time: each accepted format's worst cases within the limits (24 MP, a
16 MiB record), through what the API runs (core.images.inspect_image) and what a worker runs
(core.images.decode_image at the model's edge; for JPEGs also torchvision's decode_jpeg, the tensor
pipeline's decoder, here on the CPU). docs/security.md ("Decoding time") quotes its table.

    python -m bench.image_cost [--only NAME ...] [--unchecked]

--unchecked skips core.image_structure's walk, as the code before it ran: the figures a hostile file
could cost then (some take minutes). Times are the decoding thread's CPU seconds (the wall time of a
loaded machine moves with its neighbours), each the best of --repeat runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from unittest import mock

import numpy as np
import torch
from PIL import Image

with warnings.catch_warnings():  # torchvision 0.29 deprecates its image decoders for TorchCodec's
    warnings.simplefilter("ignore", DeprecationWarning)
    from torchvision.io import ImageReadMode, decode_jpeg  # type: ignore[import-untyped]

from core import images as core_images
from core.errors import CaptionerError
from core.image_structure import (
    GIF_MAX_BLOCKS,
    JPEG_MAX_SCANS,
    PNG_MAX_CHUNKS,
    TIFF_MAX_STRIPS,
)
from core.images import decode_image, inspect_image
from tests.support.images import (
    animated_webp,
    encode,
    gif_with_blocks,
    png_chunk,
    png_chunk_flood,
    png_chunks,
    rle_bmp,
    scan_bomb,
    tiff,
)

MAX_PIXELS = 24_000_000
EDGE = 4898  # the largest square within MAX_PIXELS
MODEL_EDGE = 224
MIB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], bytes]
    what: str


def _noise(width: int, height: int, *, mode: str = "RGB", levels: int = 256, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    bands = len(mode)
    pixels = (
        rng.integers(0, levels, (height, width, bands), dtype=np.uint8) * (255 // max(levels - 1, 1))
    ).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if bands == 1 else pixels, mode)


def _blocky_noise(noise_edge: int) -> Image.Image:
    """24 MP of noise drawn at noise_edge and enlarged: compresses to what a record holds."""
    return _noise(noise_edge, noise_edge).resize((EDGE, EDGE), Image.Resampling.NEAREST)


def _saved(picture: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, image_format, **options)
    return buffer.getvalue()


def _png_paeth_16bit(*, interlaced: bool) -> bytes:
    """24 MP of 16-bit RGBA, every row Paeth-filtered: the most work a PNG's pixels can ask (tiny file)."""
    passes = [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ]
    shapes = (
        [(-(-(EDGE - x) // dx), -(-(EDGE - y) // dy)) for x, y, dx, dy in passes]
        if interlaced
        else [(EDGE, EDGE)]
    )
    packer = zlib.compressobj(9)
    stream = b"".join(packer.compress((b"\x04" + bytes(8 * width)) * height) for width, height in shapes)
    stream += packer.flush()
    header = struct.pack(">IIBBBBB", EDGE, EDGE, 16, 6, 0, 0, int(interlaced))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", stream)
        + png_chunk(b"IEND", b"")
    )


def _png_fragments(count: int) -> bytes:
    """Noise whose zlib stream is split into `count` IDAT chunks."""
    picture = _noise(1000, 400)
    stream = b"".join(body for kind, body in png_chunks(encode(picture, "PNG")) if kind == b"IDAT")
    size = -(-len(stream) // count)
    header = struct.pack(">IIBBBBB", 1000, 400, 8, 2, 0, 0, 0)
    chunks = b"".join(png_chunk(b"IDAT", stream[at : at + size]) for at in range(0, len(stream), size))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + chunks + png_chunk(b"IEND", b"")


def _jpeg_with(segments: bytes) -> bytes:
    data = encode(Image.new("RGB", (64, 48), (1, 2, 3)), "JPEG")
    return data[:2] + segments + data[2:]


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _photoshop(segments: int) -> bytes:
    """APP13 segments full of the smallest Photoshop resources, which Pillow parses one by one."""
    resources = b"8BIM\x04\x04\x00\x00" + bytes(4)
    return _segment(0xED, b"Photoshop 3.0\x00" + resources * 5400) * segments


def _exif_of_entries(entries: int) -> bytes:
    """An Exif block whose first directory has `entries` entries, split over APP1 segments as Pillow
    joins them."""
    directory = struct.pack("<H", entries) + b"".join(
        struct.pack("<HHI", 1000 + index % 60000, 3, 1) + bytes(4) for index in range(entries)
    )
    blob = b"II*\x00" + struct.pack("<I", 8) + directory + bytes(4)
    piece = 65000
    return b"".join(
        _segment(0xE1, b"Exif\x00\x00" + blob[at : at + piece]) for at in range(0, len(blob), piece)
    )


def _tiff_jpeg_strips(strips: int) -> bytes:
    """A JPEG-compressed TIFF of `strips` 8-row strips, each the same small baseline JPEG."""
    strip = _saved(Image.new("L", (16, 8), 77), "JPEG")
    return tiff(16, 8 * strips, strip=strip, rows_per_strip=8, compression=7)


def _cases() -> list[Case]:
    edge = EDGE
    return [
        Case("jpeg-scan-bomb", lambda: scan_bomb(4000, 4000, scans=10_006), "4000x4000 grey, 10,006 scans"),
        Case(
            "jpeg-scans-at-limit",
            lambda: scan_bomb(
                edge, edge, scans=JPEG_MAX_SCANS, mode="RGB", color=(9, 99, 199), subsampling=0
            ),
            f"24 MP colour 4:4:4, {JPEG_MAX_SCANS} scans",
        ),
        Case(
            "jpeg-scans-over",
            lambda: scan_bomb(
                edge, edge, scans=JPEG_MAX_SCANS + 1, mode="RGB", color=(9, 99, 199), subsampling=0
            ),
            f"the same, {JPEG_MAX_SCANS + 1} scans",
        ),
        Case(
            "jpeg-noise", lambda: _saved(_noise(edge, edge), "JPEG", quality=75), "24 MP noise, baseline q75"
        ),
        Case(
            "jpeg-noise-progressive",
            lambda: _saved(_noise(edge, edge), "JPEG", quality=75, progressive=True),
            "24 MP noise, progressive q75",
        ),
        Case(
            "jpeg-markers",
            lambda: _jpeg_with(b"\xff\xfe\x00\x02" * (4 * MIB - 16)),
            "16 MiB of empty comments",
        ),
        Case("jpeg-padding", lambda: _jpeg_with(b"\xff" * (16 * MIB)), "16 MiB of fill bytes"),
        Case(
            "jpeg-quantization",
            lambda: _jpeg_with(_segment(0xDB, (b"\x00" + bytes(range(1, 65))) * 1008) * 255),
            "16 MiB of quantization tables",
        ),
        Case(
            "jpeg-photoshop-at-limit",
            lambda: _jpeg_with(_photoshop(4)),
            "256 KiB of Photoshop resources of 12 bytes",
        ),
        Case("jpeg-photoshop-flood", lambda: _jpeg_with(_photoshop(256)), "16 MiB of them"),
        Case(
            "jpeg-exif-at-limit",
            lambda: _jpeg_with(_exif_of_entries(21_000)),
            "256 KiB of Exif: a directory of 21,000 entries",
        ),
        Case(
            "jpeg-exif-flood", lambda: _jpeg_with(_exif_of_entries(65_535)), "a directory of 65,535 entries"
        ),
        Case("png-chunks-at-limit", lambda: png_chunk_flood(PNG_MAX_CHUNKS - 3), f"{PNG_MAX_CHUNKS} chunks"),
        Case("png-chunk-flood", lambda: png_chunk_flood(16 * MIB // 12), "16 MiB of empty chunks"),
        Case(
            "png-idat-at-limit",
            lambda: _png_fragments(PNG_MAX_CHUNKS - 3),
            f"1000x400 noise in {PNG_MAX_CHUNKS - 3} IDAT chunks",
        ),
        Case("png-idat-flood", lambda: _png_fragments(1_300_000), "the same noise in 1,300,000 IDAT chunks"),
        Case("png-paeth-16bit", lambda: _png_paeth_16bit(interlaced=False), "24 MP 16-bit RGBA, Paeth rows"),
        Case(
            "png-paeth-16bit-interlaced",
            lambda: _png_paeth_16bit(interlaced=True),
            "the same, Adam7 interlaced",
        ),
        Case(
            "gif-blocks-at-limit", lambda: gif_with_blocks(GIF_MAX_BLOCKS - 2), f"{GIF_MAX_BLOCKS} sub-blocks"
        ),
        Case("gif-block-flood", lambda: gif_with_blocks(8 * MIB - 4), "8M one-byte sub-blocks"),
        Case(
            "gif-noise",
            lambda: _saved(_noise(edge, edge, mode="L", levels=4).convert("P"), "GIF"),
            "24 MP, 4-colour noise",
        ),
        Case(
            "bmp-rle4-at-limit",
            lambda: rle_bmp(1000, 1000, (b"\xfa\x12" * 4 + b"\x00\x00") * 1000, rle4=True),
            "1 MP RLE4, a run per 250 pixels",
        ),
        Case(
            "bmp-rle4-24mp",
            lambda: rle_bmp(edge, edge, (b"\xff\x12" * 19 + b"\x35\x12\x00\x00") * edge, rle4=True),
            "24 MP RLE4, a run per 255 pixels",
        ),
        Case(
            "bmp-rle8-escapes-at-limit",
            lambda: rle_bmp(1000, 1000, b"\x00\x02\x00\x00" * (MIB // 4 - 300)),
            "1 MiB of RLE8 delta escapes that move nowhere",
        ),
        Case(
            "bmp-rle8-end-of-line",
            lambda: rle_bmp(24_000_000, 1, b"\x01\x00\x00\x00\x00\x01"),
            "24,000,000x1, one end-of-line escape",
        ),
        Case(
            "bmp-1bit",
            lambda: _saved(_noise(edge, edge, mode="L", levels=2).convert("1"), "BMP"),
            "24 MP, 1 bit a pixel",
        ),
        Case(
            "tiff-raw-strips-at-limit",
            lambda: tiff(366, TIFF_MAX_STRIPS, strip=bytes(366), rows_per_strip=1),
            f"uncompressed, {TIFF_MAX_STRIPS} strips",
        ),
        Case(
            "tiff-raw-strip-flood",
            lambda: tiff(5, 4 * MIB - 64, strip=bytes(5), rows_per_strip=1),
            "uncompressed, 4M strips",
        ),
        Case(
            "tiff-jpeg-strips-at-limit",
            lambda: _tiff_jpeg_strips(TIFF_MAX_STRIPS),
            f"JPEG-compressed, {TIFF_MAX_STRIPS} strips",
        ),
        Case(
            "tiff-jpeg-scans-at-limit",
            lambda: tiff(4000, 4000, strip=scan_bomb(4000, 4000, scans=JPEG_MAX_SCANS), compression=7),
            f"JPEG-compressed 16 MP, a strip of {JPEG_MAX_SCANS} scans",
        ),
        Case(
            "tiff-jpeg-scan-bomb",
            lambda: tiff(4000, 4000, strip=scan_bomb(4000, 4000, scans=10_006), compression=7),
            "JPEG-compressed 16 MP, a strip of 10,006 scans",
        ),
        Case(
            "tiff-lzma",
            lambda: _saved(_blocky_noise(1400), "TIFF", compression="lzma"),
            "24 MP blocky noise, LZMA",
        ),
        Case("webp-frames", lambda: animated_webp(16 * MIB // 64), "an animation of 262,144 frames"),
        Case(
            "webp-noise-lossy",
            lambda: _saved(_blocky_noise(2449), "WEBP", quality=90),
            "24 MP noise in 2x2 blocks, lossy q90",
        ),
        Case(
            "webp-noise-lossless",
            lambda: _saved(
                _noise(1600, 1600).resize((edge, edge), Image.Resampling.NEAREST), "WEBP", lossless=True
            ),
            "24 MP blocky noise, lossless",
        ),
    ]


def _timed(call: Callable[[], object]) -> tuple[float, str]:
    started = time.thread_time()
    try:
        call()
        outcome = "ok"
    except CaptionerError as error:
        outcome = error.code
    return time.thread_time() - started, outcome


def _best(call: Callable[[], object], repeat: int) -> tuple[float, str]:
    runs = [_timed(call) for _ in range(repeat)]
    return min(seconds for seconds, _ in runs), runs[0][1]


def _decode_jpeg(data: bytes) -> None:
    core_images.open_image(data, max_pixels=MAX_PIXELS).close()  # the tensor pipeline's checks come first
    decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def measure(case: Case, repeat: int) -> str:
    data = case.build()
    api_s, api_outcome = _best(lambda: inspect_image(data, max_pixels=MAX_PIXELS), repeat)
    worker_s, outcome = _best(
        lambda: decode_image(data, max_pixels=MAX_PIXELS, target_edge=MODEL_EDGE), repeat
    )
    tensor = "—"
    if case.name.startswith("jpeg"):
        tensor_s, tensor_outcome = _best(lambda: _decode_jpeg(data), repeat)
        tensor = f"{tensor_s:.2f} ({tensor_outcome})"
    return (
        f"| `{case.name}` | {case.what} | {len(data) / MIB:.2f} | {api_s:.2f} ({api_outcome}) "
        f"| {worker_s:.2f} ({outcome}) | {tensor} |"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.image_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="cases whose names start with these")
    parser.add_argument("--unchecked", action="store_true", help="without core.image_structure's walk")
    parser.add_argument("--repeat", type=int, default=1, choices=range(1, 6), metavar="1..5")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    cases = [case for case in _cases() if not args.only or case.name.startswith(tuple(args.only))]
    print("| case | image | MiB | API check, CPU s | worker decode, CPU s | decode_jpeg, CPU s |")
    print("|---|---|---|---|---|---|")
    unchecked = mock.patch.object(core_images, "check_decoding_cost", lambda _data: None)
    with unchecked if args.unchecked else contextlib.nullcontext():
        for case in cases:
            print(measure(case, args.repeat), flush=True)


if __name__ == "__main__":
    main()
