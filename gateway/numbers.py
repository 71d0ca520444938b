"""Whole numbers from untrusted text: ASCII digits only, bounded in length."""

from __future__ import annotations

__all__ = ["whole_number"]


def whole_number(text: str | bytes | None, max_digits: int = 18) -> int | None:
    """The value of `text` when it is 1 to `max_digits` ASCII digits, else None.

    `str.isdigit()` is true for `²` and other digits `int()` refuses, and `int()` refuses
    more than 4,300 digits: header values and URLs meet this check, never `int()` itself.
    Bytes (a header value as llhttp gives it) are read alike, without decoding them.
    """
    if text is None or not 0 < len(text) <= max_digits or not text.isascii() \
            or not text.isdigit():
        return None
    return int(text)
