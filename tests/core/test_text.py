"""The one escaper behind log lines, span attributes and the operator tools' terminal output."""

from __future__ import annotations

import os

import pytest

from core.text import escaped, escaped_keeping_lines


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a bus.jpg", "a bus.jpg"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("\x1b]0;owned\x07\x1b[2J\x9b1m", "\\x1b]0;owned\\x07\\x1b[2J\\x9b1m"),
        ("\u2028\u2029\u202e\u200b\ufeff", "\\u2028\\u2029\\u202e\\u200b\\ufeff"),
        ("café ☃ 車", "café ☃ 車"),
    ],
)
def test_unsafe_characters_are_written_as_visible_escapes(text: str, shown: str) -> None:
    assert escaped(text) == shown


def test_an_undecodable_byte_of_a_file_name_is_shown_as_the_byte_it_was() -> None:
    name = os.fsdecode(b"caf\xe9\xff.png")

    assert escaped(name) == "caf\\xe9\\xff.png"


def test_a_limit_cuts_after_the_escapes_and_says_how_much() -> None:
    assert escaped("\n" * 10, 6) == "\\n\\n\\n... [7 characters cut]"
    assert escaped("short", 6) == "short"


def test_lines_and_tabs_survive_where_a_traceback_needs_them() -> None:
    assert escaped_keeping_lines("line 1\n\tline 2\r\x1b[2J") == "line 1\n\tline 2\\r\\x1b[2J"
