"""What an image's container makes its decoders do, counted from the bytes before any decoder sees them.

The pixel limit bounds the memory of a picture, not the time: a file can make a decoder pass over the
same picture thousands of times (a JPEG's progressive scans: libjpeg-turbo's advisory LJT-01-003), or
make Pillow's Python code walk millions of tiny chunks, blocks, strips or padding bytes before or while
it decodes. Each accepted format's structure is walked here, as its decoders will walk it, and what
would cost more than a bounded time is refused with ImageTooCostlyError (docs/security.md,
Decoding time). The walks themselves run at C speed where the bytes are long (bytes.find, re) and stop at
their cap where Python steps through units, so a walk costs little whatever the file. Where the
walk meets a structure that no decoder here reads, it says so (InvalidImageError) rather than guess.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from core.errors import ImageTooCostlyError, InvalidImageError, UnsupportedImageFormatError

# libjpeg's own progression writes 10 scans for a colour picture (6 grey, 18 CMYK) and photo editors
# fewer; libjpeg-turbo's decompression fuzzer stops at 100 (TJPARAM_SCANLIMIT) and NVIDIA DALI at 500.
# Each scan costs a pass over every block of the picture; this many keeps a picture at the pixel limit
# within the time docs/security.md gives.
JPEG_MAX_SCANS = 64
# Markers of one picture (segments, standalone markers, scans). Pillow parses each header segment in
# Python; cameras write a few dozen, and a JPEG at the scan limit with a table before each scan fewer
# than two hundred.
JPEG_MAX_MARKERS = 4096
# Stray and fill bytes between the segments before the first scan, which Pillow reads one at a time.
JPEG_MAX_PADDING = 65536
# Chunks up to IEND; Pillow handles each in Python when it opens, verifies and loads a PNG. Encoders
# split the image data into chunks of 8 KiB or more.
PNG_MAX_CHUNKS = 16384
# Extension sub-blocks and stray bytes before the first picture of a GIF, each one Python step.
GIF_MAX_BLOCKS = 65536
# Strips or tiles of a TIFF's first page (uncompressed ones are decoded one Python step each), and the
# entries of its first directory (each parsed in Python).
TIFF_MAX_STRIPS = 65536
TIFF_MAX_TAGS = 1024
# Pillow decodes RLE-compressed BMP in Python, a step per run, escape and (RLE4) pixel.
BMP_RLE_MAX_PIXELS = 1_000_000
BMP_RLE_MAX_BYTES = 1024 * 1024

_JPEG_SOI = b"\xff\xd8"
# Outside a scan: no length follows TEM and RSTn.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
# Markers libjpeg stops at with an error: reserved codes, JPGn and JPG, DHP, EXP, and frames it does not
# decode (hierarchical). A second SOI or SOF is added by the walk.
_JPEG_FATAL = frozenset(
    {*range(0x02, 0xC0), 0xC5, 0xC6, 0xC7, 0xC8, 0xCD, 0xCE, 0xCF, 0xDE, 0xDF, *range(0xF0, 0xFE)}
)
_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB})
_JPEG_EOI, _JPEG_SOS, _JPEG_STUFFED = 0xD9, 0xDA, 0x00
# Segments whose values Pillow's header parser reads one by one in Python (quantization tables,
# Photoshop resources) or joins again at each one (Exif, whose directory getexif() then parses entry
# by entry): marker -> (what, signature, most bytes). Cameras write four tables at most, one Exif
# segment (the Exif standard keeps it within one) and at most a few Photoshop ones.
_JPEG_PARSED = {
    0xDB: ("quantization tables", b"", 65536),
    0xED: ("Photoshop resources (APP13)", b"Photoshop 3.0\x00", 262144),
    0xE1: ("Exif data", b"Exif\x00\x00", 262144),
}
_JPEG_FILL = re.compile(rb"\xff+")
# Inside a scan's entropy-coded data, FF00 is a data byte and FFD0-FFD7 a restart: the scan ends at
# the first other marker (fill bytes FF may precede it).
_JPEG_END_OF_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
_GIF_INTRODUCERS = re.compile(rb"[\x21\x2c\x3b]")
_GIF_EXTENSION = 0x21

# The header prefixes Pillow and libtiff both read the same way (Pillow also opens "MM\x2a\x00" and
# "II\x00\x2a", and reads "MM\x00\x2b" as classic where libtiff reads BigTIFF).
_TIFF_CLASSIC = {b"II\x2a\x00": "<", b"MM\x00\x2a": ">"}
_TIFF_BIG = {b"II\x2b\x00": "<"}
_TIFF_OTHER = (b"MM\x2a\x00", b"II\x00\x2a", b"MM\x00\x2b")
_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_COMPRESSION = 256, 257, 259
_TIFF_SAMPLES, _TIFF_ROWS_PER_STRIP, _TIFF_PLANAR = 277, 278, 284
_TIFF_STRIP_OFFSETS, _TIFF_STRIP_COUNTS = 273, 279
_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH, _TIFF_TILE_OFFSETS, _TIFF_TILE_COUNTS = 322, 323, 324, 325
_TIFF_READ = frozenset(
    {
        _TIFF_WIDTH,
        _TIFF_LENGTH,
        _TIFF_COMPRESSION,
        _TIFF_SAMPLES,
        _TIFF_ROWS_PER_STRIP,
        _TIFF_PLANAR,
        _TIFF_STRIP_OFFSETS,
        _TIFF_STRIP_COUNTS,
        _TIFF_TILE_WIDTH,
        _TIFF_TILE_LENGTH,
        _TIFF_TILE_OFFSETS,
        _TIFF_TILE_COUNTS,
    }
)
_TIFF_JPEG = 7
# Compressions decoded: none, CCITT (fax), LZW, JPEG (its strips walked as JPEGs), Deflate (two codes),
# PackBits, LZMA, Zstandard. Old-style JPEG (6), ThunderScan, SGI LogLuv and the rest are refused: rare,
# and each is one more decoder a hostile file could reach.
_TIFF_COMPRESSIONS = frozenset({1, 2, 3, 4, 5, _TIFF_JPEG, 8, 32773, 32946, 34925, 50000})
# Field types of integer arrays: (struct code, size).
_TIFF_INTEGERS = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}

_BMP_RLE8, _BMP_RLE4 = 1, 2


def check_decoding_cost(data: bytes) -> None:
    """Raises ImageTooCostlyError where the structure of `data` would cost its decoders more than
    docs/security.md's bound (InvalidImageError where it holds what no decoder here reads); formats it
    does not recognise are left to Pillow."""
    walk = _walk_for(data)
    if walk is not None:
        walk(data)


def jpeg_scans(data: bytes) -> int:
    """The scans libjpeg decodes in a JPEG's (or an MPO's) first picture, as the walk counts them;
    refuses as check_decoding_cost does."""
    return _jpeg_scans(data, 0, len(data))


def _walk_for(data: bytes) -> Callable[[bytes], None] | None:
    if data.startswith(b"\xff\xd8\xff"):
        return _check_jpeg
    if data.startswith(_PNG_SIGNATURE):
        return _check_png
    if data.startswith(_GIF_SIGNATURES):
        return _check_gif
    if data.startswith(b"BM"):
        return _check_bmp
    if data[:4] in _TIFF_CLASSIC or data[:4] in _TIFF_BIG or data[:4] in _TIFF_OTHER:
        return _check_tiff
    return None  # WebP: libwebp parses its chunks and decodes only the first frame, all in C


def _costly(message: str, limit: int) -> ImageTooCostlyError:
    return ImageTooCostlyError(message, limit=limit)


# --- JPEG (and MPO, whose first picture is an ordinary JPEG) -------------------------------------------


def _check_jpeg(data: bytes) -> None:
    _jpeg_scans(data, 0, len(data))


def _jpeg_scans(data: bytes, start: int, end: int) -> int:
    """The scans libjpeg decodes in the JPEG stream data[start:end], up to its first EOI (an MPO's
    further pictures are never decoded)."""
    if data[start : start + 2] != _JPEG_SOI:
        return 0  # libjpeg refuses a stream that does not start with SOI
    return _JpegWalk(data=data, end=end, position=start + 2).run()


@dataclass
class _JpegWalk:
    """Walks the markers as libjpeg's reader does: stray bytes, fill and stuffed zeros before a marker
    are skipped, a length-prefixed segment is skipped whole, a scan runs to the next marker that is not
    FF00 or RSTn, and where libjpeg fails the walk stops. Before the first scan it also counts what
    Pillow's header parser does in Python."""

    data: bytes
    end: int
    position: int
    scans: int = 0
    markers: int = 0
    frames: int = 0
    padding: int = 0
    parsed: dict[int, int] = field(default_factory=dict)  # bytes by marker, of _JPEG_PARSED's kinds

    def run(self) -> int:
        while (code := self._next_marker()) is not None and code != _JPEG_EOI:
            if code in _JPEG_STANDALONE:
                continue
            self.frames += code in _JPEG_FRAMES
            if code in _JPEG_FATAL or code == _JPEG_SOI[1] or self.frames > 1:
                if not self.scans:  # libjpeg reads the whole header first: this picture never decodes
                    raise InvalidImageError(
                        "the bytes are not a decodable image: the JPEG holds a marker no decoder reads"
                    )
                break  # libjpeg decodes the scans before it, and stops here
            if not self._skip_segment(code):
                break
        return self.scans

    def _next_marker(self) -> int | None:
        """The next marker's code, None at the end of the stream."""
        while (marker := self.data.find(b"\xff", self.position, self.end)) >= 0:
            fill = _JPEG_FILL.match(self.data, marker, self.end)
            code_at = fill.end() if fill else marker + 1
            if code_at >= self.end:
                return None
            code = self.data[code_at]
            if not self.scans:  # Pillow's parser reads these bytes one at a time
                self.padding += code_at - 1 - self.position + (2 if code == _JPEG_STUFFED else 0)
                if self.padding > JPEG_MAX_PADDING:
                    raise _costly(
                        f"the JPEG has more than {JPEG_MAX_PADDING} bytes of padding between its segments",
                        JPEG_MAX_PADDING,
                    )
            self.position = code_at + 1
            if code != _JPEG_STUFFED:
                self.markers += 1
                if self.markers > JPEG_MAX_MARKERS:
                    raise _costly(f"the JPEG has more than {JPEG_MAX_MARKERS} markers", JPEG_MAX_MARKERS)
                return code
        return None

    def _skip_segment(self, code: int) -> bool:
        """Past a length-prefixed segment (a scan: past its entropy-coded data); False at the end."""
        if self.position + 2 > self.end:
            return False
        length = max(int.from_bytes(self.data[self.position : self.position + 2], "big"), 2)
        if not self.scans and code in _JPEG_PARSED:
            self._parsed(code, length)
        self.position += length  # libjpeg skips a bogus length below 2 as if it were 2
        if code != _JPEG_SOS:
            return True
        self.scans += 1
        if self.scans > JPEG_MAX_SCANS:
            raise _costly(
                f"the JPEG has more than {JPEG_MAX_SCANS} scans (progressive passes over the picture)",
                JPEG_MAX_SCANS,
            )
        end_of_scan = _JPEG_END_OF_SCAN.search(self.data, self.position, self.end)
        if end_of_scan is None:
            return False
        self.position = end_of_scan.start()
        return True

    def _parsed(self, code: int, length: int) -> None:
        name, signature, limit = _JPEG_PARSED[code]
        if not self.data.startswith(signature, self.position + 2):
            return
        self.parsed[code] = self.parsed.get(code, 0) + length
        if self.parsed[code] > limit:
            raise _costly(f"the JPEG has more than {limit} bytes of {name}", limit)


# --- PNG ------------------------------------------------------------------------------------------------


def _check_png(data: bytes) -> None:
    position, chunks = len(_PNG_SIGNATURE), 0
    while position + 8 <= len(data):
        chunks += 1
        if chunks > PNG_MAX_CHUNKS:
            raise _costly(f"the PNG has more than {PNG_MAX_CHUNKS} chunks", PNG_MAX_CHUNKS)
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind == b"IEND":
            return
        position += 12 + length


# --- GIF ------------------------------------------------------------------------------------------------


def _check_gif(data: bytes) -> None:
    """Up to the first picture's descriptor: Pillow reads the extensions before it a sub-block at a
    time and stray bytes one at a time; the picture's own data is decoded in C."""
    if len(data) < 13:
        return
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    steps = 0
    while steps <= GIF_MAX_BLOCKS:
        introducer = _GIF_INTRODUCERS.search(data, position)
        if introducer is None:
            return
        steps += introducer.start() - position
        position = introducer.start()
        if data[position] != _GIF_EXTENSION:
            if steps <= GIF_MAX_BLOCKS:
                return  # the first picture, or the trailer
            break
        position += 2  # the introducer and the extension's label
        while position < len(data) and steps <= GIF_MAX_BLOCKS:
            size = data[position]
            steps += 1
            position += 1 + size
            if not size:
                break
    raise _costly(f"the GIF has more than {GIF_MAX_BLOCKS} blocks before its first picture", GIF_MAX_BLOCKS)


# --- BMP ------------------------------------------------------------------------------------------------


def _check_bmp(data: bytes) -> None:
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return  # the OS/2 core header has no compression field
    width, height, _planes, _bits, compression = struct.unpack_from("<iiHHI", data, 18)
    if compression not in (_BMP_RLE8, _BMP_RLE4):
        return
    if abs(width) * abs(height) > BMP_RLE_MAX_PIXELS or len(data) > BMP_RLE_MAX_BYTES:
        raise _costly(
            f"an RLE-compressed BMP is accepted up to {BMP_RLE_MAX_PIXELS} pixels and "
            f"{BMP_RLE_MAX_BYTES} bytes; send it uncompressed or as PNG",
            BMP_RLE_MAX_PIXELS,
        )


# --- TIFF -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TiffField:
    kind: int
    count: int
    value_at: int  # where its values are: inline in the entry, or at the offset the entry holds


@dataclass(frozen=True, slots=True)
class _TiffLayout:
    endian: str
    big: bool

    @property
    def entry_size(self) -> int:
        return 20 if self.big else 12

    def unpack(self, code: str, data: bytes, at: int) -> int:
        value: int = struct.unpack_from(self.endian + code, data, at)[0]
        return value


def _check_tiff(data: bytes) -> None:
    """The first page's directory (the only one Pillow opens): its size, its compression, how many
    strips or tiles libtiff or Pillow will decode, and the scans of JPEG-compressed ones."""
    prefix = data[:4]
    if prefix not in _TIFF_CLASSIC and prefix not in _TIFF_BIG:
        raise InvalidImageError("the bytes are not a decodable image: an irregular TIFF header")
    layout = _TiffLayout(endian=_TIFF_CLASSIC.get(prefix) or _TIFF_BIG[prefix], big=prefix in _TIFF_BIG)
    if len(data) < (16 if layout.big else 8):
        return
    directory = layout.unpack("Q" if layout.big else "I", data, 8 if layout.big else 4)
    fields = _tiff_fields(data, layout, directory)
    if fields is None:
        return  # no directory where the header points: nothing decodes
    compression = _tiff_value(data, layout, fields.get(_TIFF_COMPRESSION), default=1)
    if compression not in _TIFF_COMPRESSIONS:
        raise UnsupportedImageFormatError(
            f"TIFF compression {compression} is not supported; send the image uncompressed, "
            "or compressed with LZW, Deflate, PackBits or JPEG"
        )
    tiled = _TIFF_TILE_OFFSETS in fields
    offsets_tag = _TIFF_TILE_OFFSETS if tiled else _TIFF_STRIP_OFFSETS
    counts_tag = _TIFF_TILE_COUNTS if tiled else _TIFF_STRIP_COUNTS
    strips = max(
        fields[offsets_tag].count if offsets_tag in fields else 0,
        _tiff_strips_laid_out(data, layout, fields, tiled),
    )
    if strips > TIFF_MAX_STRIPS:
        raise _costly(f"the TIFF has more than {TIFF_MAX_STRIPS} strips or tiles", TIFF_MAX_STRIPS)
    if compression == _TIFF_JPEG and offsets_tag in fields:
        _check_tiff_jpeg(
            data,
            _tiff_values(data, layout, fields[offsets_tag]),
            _tiff_values(data, layout, fields[counts_tag]) if counts_tag in fields else [],
        )


def _tiff_fields(data: bytes, layout: _TiffLayout, directory: int) -> dict[int, _TiffField] | None:
    """The entries the walk reads, by tag; a tag twice is refused, since libtiff and Pillow keep
    different copies of it."""
    count_size = 8 if layout.big else 2
    if directory + count_size > len(data):
        return None
    entries = layout.unpack("Q" if layout.big else "H", data, directory)
    if entries > TIFF_MAX_TAGS:
        raise _costly(f"the TIFF's first directory has more than {TIFF_MAX_TAGS} entries", TIFF_MAX_TAGS)
    fields: dict[int, _TiffField] = {}
    seen: set[int] = set()
    for index in range(entries):
        at = directory + count_size + index * layout.entry_size
        if at + layout.entry_size > len(data):
            break
        tag, kind = layout.unpack("H", data, at), layout.unpack("H", data, at + 2)
        if tag in seen and tag in _TIFF_READ:
            raise InvalidImageError(f"the bytes are not a decodable image: TIFF tag {tag} appears twice")
        seen.add(tag)
        if tag not in _TIFF_READ or kind not in _TIFF_INTEGERS:
            continue
        count = layout.unpack("Q" if layout.big else "I", data, at + 4)
        value_at = at + (12 if layout.big else 8)
        if count * _TIFF_INTEGERS[kind][1] > (8 if layout.big else 4):
            value_at = layout.unpack("Q" if layout.big else "I", data, value_at)
        fields[tag] = _TiffField(kind=kind, count=count, value_at=value_at)
    return fields


def _tiff_value(data: bytes, layout: _TiffLayout, field: _TiffField | None, *, default: int) -> int:
    if field is None or field.count < 1:
        return default
    code, size = _TIFF_INTEGERS[field.kind]
    if field.value_at + size > len(data):
        return default
    return layout.unpack(code, data, field.value_at)


def _tiff_values(data: bytes, layout: _TiffLayout, field: _TiffField) -> list[int]:
    """An integer array, as much of it as the file holds (the walk has capped its count)."""
    code, size = _TIFF_INTEGERS[field.kind]
    count = max(0, min(field.count, (len(data) - field.value_at) // size))
    return list(struct.unpack_from(f"{layout.endian}{count}{code}", data, field.value_at)) if count else []


def _tiff_strips_laid_out(
    data: bytes, layout: _TiffLayout, fields: dict[int, _TiffField], tiled: bool
) -> int:
    """How many strips or tiles libtiff derives from the page's size (whatever the offsets array holds)."""
    width = _tiff_value(data, layout, fields.get(_TIFF_WIDTH), default=0)
    length = _tiff_value(data, layout, fields.get(_TIFF_LENGTH), default=0)
    planes = 1
    if _tiff_value(data, layout, fields.get(_TIFF_PLANAR), default=1) == 2:
        planes = max(1, _tiff_value(data, layout, fields.get(_TIFF_SAMPLES), default=1))
    if tiled:
        tile_width = _tiff_value(data, layout, fields.get(_TIFF_TILE_WIDTH), default=0)
        tile_length = _tiff_value(data, layout, fields.get(_TIFF_TILE_LENGTH), default=0)
        if tile_width < 1 or tile_length < 1:
            return 0  # libtiff refuses the page
        return -(-width // tile_width) * -(-length // tile_length) * planes
    rows = _tiff_value(data, layout, fields.get(_TIFF_ROWS_PER_STRIP), default=2**32 - 1)
    return -(-length // max(rows, 1)) * planes


def _check_tiff_jpeg(data: bytes, offsets: list[int], counts: list[int]) -> None:
    """libtiff hands libjpeg each strip or tile as a JPEG stream of its own, so each is held to the
    JPEG limits. Strips that share bytes are walked once; strips that overlap otherwise would make
    the walk cost more than the file's length, and are refused."""
    walked: set[tuple[int, int]] = set()
    budget = 2 * len(data)
    for index, offset in enumerate(offsets):
        end = min(len(data), offset + counts[index]) if index < len(counts) else len(data)
        if (offset, end) in walked or offset >= end:
            continue
        walked.add((offset, end))
        budget -= end - offset
        if budget < 0:
            raise _costly("the TIFF's JPEG strips overlap", TIFF_MAX_STRIPS)
        _jpeg_scans(data, offset, end)
