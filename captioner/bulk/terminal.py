"""Text from outside (file names, the server's messages, titles) made safe to show on a terminal.

A file name or an answer may hold ESC, CSI, OSC or C1 sequences that would move the cursor, retitle the
window, hide earlier lines or write to the clipboard; and a name that is not UTF-8 holds lone surrogates
(Python's surrogateescape), which a strict stream refuses. Everything `str.isprintable` refuses (control
characters, C1, bidi overrides and other format characters, separators other than the space, lone
surrogates) is shown as a visible escape instead.
"""

from __future__ import annotations

import re

# surrogateescape maps each undecodable byte 0x80-0xff to U+DC80-U+DCFF.
_ESCAPED_BYTES = range(0xDC80, 0xDD00)


def shown(text: str) -> str:
    """`text` with every character a terminal could act on written as \\xNN, \\uNNNN or \\UNNNNNNNN
    (an undecodable byte of a file name as the byte it was, \\xNN)."""
    if text.isprintable():
        return text
    return "".join(character if character.isprintable() else _escape(character) for character in text)


def _escape(character: str) -> str:
    point = ord(character)
    if point in _ESCAPED_BYTES:
        return f"\\x{point - 0xDC00:02x}"
    if point < 0x100:
        return f"\\x{point:02x}"
    return f"\\u{point:04x}" if point < 0x10000 else f"\\U{point:08x}"


_NOT_PRINTABLE_IN_JSON = re.compile(r"[^\x20-\x7e]")


def json_escaped(text: str) -> str:
    """A JSON document with every character `str.isprintable` refuses written as a \\u escape: the same
    JSON to any parser, and safe when the output is a terminal. `json.dumps` escapes C0 controls itself,
    not DEL, C1 or format characters; outside strings a JSON document holds only printable ASCII, so each
    one found is inside a string, where an escape means the same character."""
    if text.isprintable():
        return text
    return _NOT_PRINTABLE_IN_JSON.sub(_json_escape, text)


def _json_escape(found: re.Match[str]) -> str:
    character = found.group()
    if character.isprintable():
        return character
    point = ord(character)
    if point < 0x10000:
        return f"\\u{point:04x}"
    high, low = divmod(point - 0x10000, 0x400)  # JSON writes a character beyond the BMP as a UTF-16 pair
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"
