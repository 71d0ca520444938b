"""Request-path normalisation (RFC 3986) that refuses to guess when a path is ambiguous.

The gateway matches routes on the normalised path and forwards that same path upstream, so
the rule that was checked is the rule for the resource the upstream serves. The normal form
is a fixpoint (normalising it again changes nothing), and no path passes whose one further
percent-decoding, by an upstream or a framework in front of it, would change its segments.
Steps, in order:

1. cut the query; the path must start with ``/``;
2. refuse raw bytes an upstream could read in more than one way: non-ASCII, controls,
   space, backslash, NUL, ``#`` (never valid in a request target) and ``;`` (matrix
   parameters, which Tomcat and Spring strip before routing);
3. percent-escapes must be well formed; escapes of unreserved characters
   (``ALPHA DIGIT - . _ ~``) are decoded, every other escape is kept with upper-case hex;
   escapes that decode to ``%`` (double encoding, in any spelling: ``%252e``,
   ``%25%32%65``), ``/``, ``\\``, ``;``, ``?``, ``#``, NUL or another control character are
   refused;
4. dot segments are removed after that decoding (so ``/%2e%2e/`` counts as ``..``),
   then repeated slashes are collapsed; a trailing slash is kept;
5. the kept escapes of non-ASCII bytes must be UTF-8, and their text, read with Unicode
   compatibility folding (NFKC: fullwidth ``%`` and ``/`` fold to ASCII, U+2025 to ``..``),
   must not add a separator, a dot segment, a control or any character refused above.

Every step is linear in the path's length, the work per byte is done by ``str`` and ``bytes``
methods where it can be, and a path with more escapes or segments than the configured bounds
is refused before any decoding, so hostile paths cost little more than ordinary ones.
"""

from __future__ import annotations

import binascii
import re
import unicodedata

__all__ = ["MAX_PATH_ESCAPES", "MAX_PATH_SEGMENTS", "AmbiguousPath", "normalize_path"]

MAX_PATH_ESCAPES = 256
MAX_PATH_SEGMENTS = 256
_UNRESERVED_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
# Bytes an escape must not decode to: one more decoding would split, end or re-escape the
# path somewhere else (`%`, `/`, `\`, `;`, `?`, `#`) or put a control character in it.
_REFUSED_BYTES = frozenset((*range(0x20), 0x7F, *b"%/\\;?#"))
# What a decoded path may hold (a decoded `/` is told from a raw one by counting).
_DECODED_ALLOWED = bytes(b for b in range(256) if b == 0x2F or b not in _REFUSED_BYTES)
# What each escaped byte becomes: unreserved characters decoded, the rest upper-case hex.
_NORMAL_ESCAPE = tuple(chr(b) if b in _UNRESERVED_BYTES else f"%{b:02X}" for b in range(256))
# Raw characters a path may hold: printable ASCII but space, backslash, `;` and `#`.
_RAW_ALLOWED = bytes(b for b in range(0x21, 0x7F) if b not in b"\\;#")
# 0xFF for `%`, 0 for every other byte (marks the escapes, _upper_escapes).
_PERCENT_MARKS = bytes(0xFF if b == 0x25 else 0 for b in range(256))
# What the text of non-ASCII escapes may not fold to (NFKC).
_FOLDED_REFUSED = re.compile(r"[\x00-\x1f\x7f-\x9f%\\;?#]")


class AmbiguousPath(ValueError):
    """The path cannot be normalised without guessing how the upstream reads it."""


def _check_raw(path: str) -> None:
    """Refuse raw characters an upstream could read in more than one way."""
    if not path.isascii():
        raise AmbiguousPath("refused non-ASCII character")
    refused = path.encode("ascii").translate(None, _RAW_ALLOWED)
    if refused:
        raise AmbiguousPath(f"refused character {chr(refused[0])!r}")


def _count(data: bytes, members: bytes) -> int:
    """How many bytes of `data` are in `members`."""
    return len(data) - len(data.translate(None, members))


def _decode_escapes(path: str, max_escapes: int) -> tuple[str, bool]:
    """Decode escapes of unreserved characters, upper-case the rest, refuse dangerous ones.

    Returns the path and whether a kept escape encodes a non-ASCII byte. The checks count
    bytes before and after one full percent-decoding (C speed); only a path that mixes
    decoded and kept escapes, or spells a kept one in lower case, is rebuilt escape by
    escape.
    """
    escapes = path.count("%")
    if escapes > max_escapes:
        raise AmbiguousPath(f"more than {max_escapes} percent-escapes")
    raw = path.encode("ascii")
    full = _percent_decode(path)
    if len(full) != len(raw) - 2 * escapes:  # each well-formed escape is 3 bytes -> 1
        raise AmbiguousPath("invalid percent-escape")
    refused = full.translate(None, _DECODED_ALLOWED)  # raw ones were refused before
    if refused:
        raise AmbiguousPath(f"refused escape %{refused[0]:02X}")
    if full.count(b"/") != raw.count(b"/"):
        raise AmbiguousPath("refused escape %2F")
    # Escape hex digits are unreserved: what decoding adds beyond the raw ones is decoded.
    unreserved = _count(full, _UNRESERVED_BYTES) - _count(raw, _UNRESERVED_BYTES) + 2 * escapes
    if unreserved == escapes:  # every escape decodes: the full decoding is the normal form
        return full.decode("ascii"), False
    non_ascii = not full.isascii()
    if unreserved == 0:  # every escape stays: its two hex digits upper-cased, nothing else
        if _count(raw, b"abcdef") == _count(full, b"abcdef"):
            return path, non_ascii  # already upper-case
        return _upper_escapes(raw).decode("ascii"), non_ascii
    parts = path.split("%")
    escaped = bytes.fromhex("".join([part[:2] for part in parts[1:]]))
    normal = _NORMAL_ESCAPE
    return parts[0] + "".join([normal[byte] + part[2:]
                               for byte, part in zip(escaped, parts[1:], strict=True)]), non_ascii


def _upper_escapes(raw: bytes) -> bytes:
    """The path with the two characters after each `%` upper-cased (escapes well formed).

    At C speed: the path as one big-endian integer takes the upper-cased path's bytes under a
    mask of the two bytes after each `%` (the `%` marks shifted one and two bytes on)."""
    marks = int.from_bytes(raw.translate(_PERCENT_MARKS), "big")
    after = (marks >> 8) | (marks >> 16)
    text, upper = int.from_bytes(raw, "big"), int.from_bytes(raw.upper(), "big")
    return ((upper & after) | (text & ~after)).to_bytes(len(raw), "big")


def _percent_decode(path: str) -> bytes:
    """Decode every escape of a well-formed ASCII path."""
    # Quoted-printable decoding is percent-decoding with `=` for `%`, at C speed; the
    # path's own `=` are escaped first so that they come back unchanged.
    return binascii.a2b_qp(path.replace("=", "=3D").replace("%", "="))


def _remove_dot_segments(path: str) -> str:
    """Drop empty and `.` segments, resolve `..` (never above the root)."""
    out: list[str] = []
    segments = path.split("/")
    for segment in segments[1:]:
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    normalized = "/" + "/".join(out)
    if out and segments[-1] in ("", ".", ".."):
        normalized += "/"
    return normalized


def _check_further_decoding(path: str) -> None:
    """Refuse non-ASCII escapes that are not UTF-8 or whose folded text changes segments."""
    try:
        text = _percent_decode(path).decode("utf-8")
    except UnicodeDecodeError:
        raise AmbiguousPath("percent-escapes that are not UTF-8") from None
    folded = unicodedata.normalize("NFKC", text)
    bad = _FOLDED_REFUSED.search(folded)
    if bad is not None:
        raise AmbiguousPath(f"an escape that reads as {bad.group()!r}")
    if folded.count("/") != path.count("/"):
        raise AmbiguousPath("an escape that reads as '/'")
    if "." in folded and {".", ".."} & set(folded.split("/")):
        raise AmbiguousPath("an escape that reads as a dot segment")


def normalize_path(raw: str, max_escapes: int = MAX_PATH_ESCAPES,
                   max_segments: int = MAX_PATH_SEGMENTS) -> str:
    """The request target's path in normal form; raise AmbiguousPath when it is ambiguous.

    Paths with more than `max_escapes` percent-escapes or `max_segments` segments are
    refused before any decoding: the bounds keep the work per request small.
    """
    path = raw.partition("?")[0]
    if not path.startswith("/"):
        raise AmbiguousPath("the path must start with /")
    if path.count("/") > max_segments:
        raise AmbiguousPath(f"more than {max_segments} segments")
    _check_raw(path)
    if "%" not in path and "//" not in path and "/." not in path:
        return path  # already normal: no escape to decode, no empty or dot segment
    non_ascii = False
    if "%" in path:
        path, non_ascii = _decode_escapes(path, max_escapes)
    path = _remove_dot_segments(path)
    if non_ascii:
        _check_further_decoding(path)
    return path
