"""Names that come from visitors or from the disk (upload names, dataset folder and file names), made safe to show:
shortened for display and escaped so that Streamlit's Markdown shows them as typed: no link, image, emphasis,
formula or HTML. Nothing here knows about Streamlit beyond its Markdown being CommonMark."""

from __future__ import annotations

import re
import unicodedata

MAX_NAME_CHARS = 60  # longer names are shown as their start, an ellipsis and their end
ELLIPSIS = "…"
# Every ASCII punctuation character: CommonMark lets a backslash escape any of them, and the escape shows the
# character itself. Escaping them all also stops GitHub's autolinks, Streamlit's :colour[...] directives,
# $formulas$ and its typographic arrows (-> <-).
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def shorten(name: str, limit: int = MAX_NAME_CHARS) -> str:
    """``name`` with every control or invisible formatting character (newlines, bidirectional overrides) made a
    space and, when longer than ``limit`` characters, cut to its start, an ellipsis and its last ``limit // 3``
    characters (so an extension stays visible)."""
    cleaned = "".join(" " if unicodedata.category(char).startswith("C") else char for char in name)
    if len(cleaned) <= limit:
        return cleaned
    tail = limit // 3
    return cleaned[: limit - tail - len(ELLIPSIS)] + ELLIPSIS + cleaned[len(cleaned) - tail :]


def markdown_literal(text: str) -> str:
    """``text`` for Streamlit's Markdown, shown character for character as given (every ASCII punctuation
    character backslash-escaped)."""
    return _PUNCTUATION.sub(r"\\\1", text)
