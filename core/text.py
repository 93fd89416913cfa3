"""Text from outside made safe to show: the one escaper behind log lines, span attributes and what the
operator tools print on a terminal.

A value from a record, a header, a file name or a library's error can hold characters that forge or hide
a line (a newline, a carriage return, a Unicode line separator), rewrite a terminal (ESC, CSI and OSC
sequences, C1 controls), reorder what is shown (bidirectional overrides) or make a strict UTF-8 stream
refuse the whole line (lone surrogates: the undecodable bytes of a file name, under surrogateescape).
Each is written as a visible escape instead: `\\n`, `\\r`, `\\t`, `\\xNN` (an undecodable byte as the
byte it was), `\\uNNNN`.
"""

from __future__ import annotations

import re

_UNSAFE_BEYOND_ASCII = "\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff"
UNSAFE = re.compile(f"[\x00-\x1f{_UNSAFE_BEYOND_ASCII}]")
# The same, newline and tab allowed: a traceback or a stack header keeps its lines.
UNSAFE_BUT_LINES = re.compile(f"[\x00-\x08\x0b-\x1f{_UNSAFE_BEYOND_ASCII}]")
_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# surrogateescape maps each undecodable byte 0x80-0xff to U+DC80-U+DCFF.
_ESCAPED_BYTES = range(0xDC80, 0xDD00)


def escape_character(character: str) -> str:
    point = ord(character)
    if short := _SHORT_ESCAPES.get(character):
        return short
    if point in _ESCAPED_BYTES:
        return f"\\x{point - 0xDC00:02x}"
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"


def escaped(text: str, limit: int | None = None) -> str:
    """`text` with every unsafe character escaped; with `limit`, cut to that many characters (escapes
    included) plus a note of how many were cut. Only the first `limit` characters are looked at, so a
    huge value costs no more than a short one."""
    if limit is None:
        return UNSAFE.sub(lambda found: escape_character(found.group()), text)
    if len(text) <= limit and UNSAFE.search(text) is None:
        return text
    parts: list[str] = []
    room, position, stop = limit, 0, limit
    for found in UNSAFE.finditer(text, 0, limit):
        safe, escape = text[position : found.start()], escape_character(found.group())
        if len(safe) + len(escape) > room:
            stop = found.start()
            break
        parts += (safe, escape)
        room -= len(safe) + len(escape)
        position = found.end()
    tail = text[position : min(position + room, stop)]
    parts.append(tail)
    cut = len(text) - position - len(tail)
    shown = "".join(parts)
    return f"{shown}... [{cut} characters cut]" if cut else shown


def escaped_keeping_lines(text: str) -> str:
    """Every unsafe character but newline and tab escaped: for tracebacks and stack headers."""
    return UNSAFE_BUT_LINES.sub(lambda found: escape_character(found.group()), text)
