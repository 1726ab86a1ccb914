"""cam.core.names: names from visitors or the disk shortened for display and shown as typed by Markdown."""

from __future__ import annotations

import re

from cam.core.names import ELLIPSIS, MAX_NAME_CHARS, markdown_literal, shorten


def test_every_ascii_punctuation_is_escaped_once_and_nothing_else() -> None:
    punctuation = "".join(chr(c) for c in range(33, 127) if not chr(c).isalnum())
    escaped = markdown_literal(f"a{punctuation}é “b”")
    assert escaped == "a" + "".join("\\" + char for char in punctuation) + "é “b”"
    assert re.sub(r"\\(.)", r"\1", escaped) == f"a{punctuation}é “b”"  # what CommonMark shows


def test_long_names_keep_their_start_and_end_and_controls_become_spaces() -> None:
    name = "x" * 2990 + "end.jpeg"
    short = shorten(name)
    assert len(short) == MAX_NAME_CHARS and short.endswith("end.jpeg") and short.count(ELLIPSIS) == 1
    assert shorten("cat.jpg") == "cat.jpg"
    assert shorten("a\nb\u202egpj.exe\x00") == "a b gpj.exe "  # newline, right-to-left override, NUL
