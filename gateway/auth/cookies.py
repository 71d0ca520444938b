"""Read one token cookie from a request's Cookie header: cheaply, lazily, never ambiguously.

Only the cookie that holds the token is looked for, with a bounded number of C-speed string
searches, so a hostile header costs a few linear scans, never a pure-Python parse of every
cookie. The rules (SECURITY.md, "Ambiguous token sources"):

- more than one Cookie header is refused (Node joins them, most readers take the first);
- the cookie may appear once: a second copy is refused (aiohttp keeps the last, Express, Go
  and Werkzeug the first), and so is any spelling another reader folds onto its name: other
  letter case (ASP.NET), percent-encoded characters and `.`, space or `[` for `_` (PHP), a
  comma before it (RFC 2109 readers) or blanks between the name and `=` (Go drops it);
- its value must read the same everywhere: no quotes, `%`, `+`, backslash, comma or blank
  (unquoted, URL-decoded or split differently by other readers), visible ASCII only.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence

__all__ = ["CookieReader", "MalformedCookie", "UnclearCookie"]

# RFC 6265 cookie-octets, less `%` and `+` (URL-decoded by PHP and Express).
_PLAIN_VALUE = re.compile(r"[!#$&-*\-./0-9:<=>?@A-Z\[\]^_`a-z{|}~]*")
_ASCII_TEXT = re.compile(r"[\t -~]*")
# PHP turns space, `.` and `[` in a cookie name into `_` (after URL-decoding it).
_UNDERSCORE_SPELLINGS = b" .["
_SUFFIX_LENGTH = 8  # Clerk's suffixed session cookie: `__session_<8 characters>`
MAX_MENTIONS = 8  # more mentions of the token cookie's name than this is refused


class UnclearCookie(Exception):
    """Other readers could read the token cookie differently from the gateway."""


class MalformedCookie(Exception):
    """The token cookie holds something that is not a token (not ASCII text)."""


def _fold_table() -> bytes:
    table = bytearray(bytes(range(256)).lower())
    for spelling in _UNDERSCORE_SPELLINGS:
        table[spelling] = ord("_")
    return bytes(table)


# ASCII letters in lower case and PHP's `_` for space, `.` and `[`: one pass in C.
_FOLD = _fold_table()
# URL escapes as quoted-printable ones (`%` as `=`, a real `=` out of the way).
_AS_QUOTED_PRINTABLE = bytes.maketrans(b"%=", b"=\x00")


class CookieReader:
    """Finds one cookie (and, for `__session`, Clerk's suffixed copies) in Cookie headers."""

    __slots__ = ("_folded_name", "_name", "_suffixed")

    def __init__(self, name: str) -> None:
        self._name = name
        self._suffixed = name == "__session"
        self._folded_name = name.encode().translate(_FOLD)

    def _folded_mentions(self, header: str) -> int:
        """How often any spelling another reader folds onto the name occurs in the header.

        Every step is one pass in C: case folding (Unicode's, as .NET and Go fold the long s
        and the Kelvin sign), URL-decoding (as quoted-printable, `%` written as `=`), then PHP's
        `_` for space, `.` and `[`.
        """
        folded = header if header.isascii() else header.casefold()
        data = folded.encode("utf-8", "surrogatepass")
        if b"%" in data:
            data = binascii.a2b_qp(data.translate(_AS_QUOTED_PRINTABLE))
        return data.translate(_FOLD).count(self._folded_name)

    def _mentions(self, header: str) -> list[int]:
        """Where the name occurs; raises UnclearCookie for other spellings or too many."""
        name = self._name
        size = len(name)
        found: list[int] = []
        if header.isascii() and "%" not in header:  # folding keeps every position: one pass
            folded, wanted = header.encode().translate(_FOLD), self._folded_name
            at = folded.find(wanted)
            while at >= 0:
                if header[at:at + size] != name:
                    raise UnclearCookie("a cookie name other readers fold onto the token cookie")
                found.append(at)
                if len(found) > MAX_MENTIONS:
                    raise UnclearCookie("too many mentions of the token cookie")
                at = folded.find(wanted, at + size)
            return found
        mentions = self._folded_mentions(header)
        if mentions > MAX_MENTIONS:
            raise UnclearCookie("too many mentions of the token cookie")
        if header.count(name) != mentions:
            raise UnclearCookie("a cookie name other readers fold onto the token cookie")
        at = header.find(name)
        while at >= 0:
            found.append(at)
            at = header.find(name, at + size)
        return found

    def read(self, headers: Sequence[str]) -> str | None:
        """The cookie's value (None when absent or empty); raises UnclearCookie, MalformedCookie."""
        if not headers:
            return None
        if len(headers) > 1:
            raise UnclearCookie("more than one Cookie header")
        header = headers[0]
        plain: str | None = None
        suffixed: str | None = None
        for at in self._mentions(header):
            copy = self._copy_at(header, at)
            if copy is None:
                continue
            is_suffixed, value = copy
            if is_suffixed:
                if suffixed is not None:
                    raise UnclearCookie("more than one suffixed token cookie")
                suffixed = value
            else:
                if plain is not None:
                    raise UnclearCookie("more than one token cookie")
                plain = value
        chosen = plain or suffixed
        if not chosen:
            return None
        if _PLAIN_VALUE.fullmatch(chosen) is None:
            if _ASCII_TEXT.fullmatch(chosen) is None:
                raise MalformedCookie("the token cookie is not ASCII text")
            raise UnclearCookie("the token cookie's value reads differently elsewhere")
        return chosen

    def _copy_at(self, header: str, at: int) -> tuple[bool, str] | None:
        """(suffixed, value) when the name at `at` starts a cookie, else None (in a value)."""
        semicolon = header.rfind(";", 0, at)
        comma = header.rfind(",", 0, at)
        if header[max(semicolon, comma) + 1:at].strip():
            return None  # part of another cookie's name or value
        end = header.find(";", at)
        piece = header[at:] if end < 0 else header[at:end]
        key, equals, value = piece.partition("=")
        rest = key[len(self._name):]
        is_suffixed = False
        if rest.strip() and self._suffixed and rest.startswith("_"):
            is_suffixed = len(rest.rstrip()) == _SUFFIX_LENGTH + 1
            if not is_suffixed:
                return None
            if len(rest[:_SUFFIX_LENGTH + 1].split()) != 1:  # PHP makes a blank `_`, Go drops it
                raise UnclearCookie("a blank inside the token cookie's name")
            rest = rest[_SUFFIX_LENGTH + 1:]
        elif rest.strip():
            return None  # another cookie whose name starts with this one
        if rest or (comma > semicolon):
            raise UnclearCookie("the token cookie is spelled in a way other readers split apart")
        return is_suffixed, value if equals else ""
