"""Text from the scheduler made safe to print: what other users chose (a job's name, its
arguments) must not move the cursor, colour the terminal or fake extra lines."""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with each control character shown as an escape: C0 and C1 controls, DEL,
    ESC, line and paragraph separators, and the invisible format characters (bidi
    overrides) that could reorder what is shown, e.g. "a\\x1b[31mb\\n" for "a\x1b[31mb\n"."""
    if text.isprintable():
        return text
    return "".join(
        _escape(c) if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text
    )
