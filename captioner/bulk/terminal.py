"""JSON lines made safe for a terminal: results written to stdout may be read there.

`json.dumps` escapes C0 controls itself but not DEL, C1, bidirectional overrides or lone surrogates (the
undecodable bytes of a file name); each of those (core.text.UNSAFE) is written as a \\u escape, which means
the same character to any JSON parser. Plain text for the terminal goes through core.text.escaped.
"""

from __future__ import annotations

import re

from core.text import UNSAFE


def json_escaped(text: str) -> str:
    """A JSON document with every unsafe character written as a \\u escape: the same JSON to any parser.
    Outside strings a JSON document holds only printable ASCII, so each one found is inside a string."""
    return UNSAFE.sub(_json_escape, text)


def _json_escape(found: re.Match[str]) -> str:
    point = ord(found.group())
    if point < 0x10000:
        return f"\\u{point:04x}"
    high, low = divmod(point - 0x10000, 0x400)  # JSON writes a character beyond the BMP as a UTF-16 pair
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"
