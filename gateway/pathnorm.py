"""Request-path normalisation (RFC 3986) that refuses to guess when a path is ambiguous.

The gateway matches routes on the normalised path and forwards that same path upstream, so
the rule that was checked is the rule for the resource the upstream serves. Steps, in order:

1. cut the query; the path must start with ``/``;
2. refuse raw bytes an upstream could read in more than one way: non-ASCII, controls,
   space, backslash, NUL, ``#`` (never valid in a request target) and ``;`` (matrix
   parameters, which Tomcat and Spring strip before routing);
3. percent-escapes must be well formed; escapes of unreserved characters
   (``ALPHA DIGIT - . _ ~``) are decoded, every other escape is kept with upper-case hex;
   escapes that decode to ``/``, ``\\``, ``;``, NUL or another control character, and
   double-encoded escapes (``%25`` followed by two hex digits), are refused;
4. dot segments are removed after that decoding (so ``/%2e%2e/`` counts as ``..``),
   then repeated slashes are collapsed; a trailing slash is kept.
"""

from __future__ import annotations

import re

__all__ = ["AmbiguousPath", "normalize_path"]

_HEX = "0123456789ABCDEFabcdef"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Escapes whose decoded byte would change how the upstream splits or reads the path.
_REFUSED_ESCAPES = frozenset({0x2F, 0x5C, 0x3B, 0x7F, *range(0x20)})
_RAW_REFUSED = re.compile(r"[^\x21-\x7e]|[\\;#]")
_DOUBLE_ENCODED = re.compile(r"%25[0-9A-Fa-f]{2}")


class AmbiguousPath(ValueError):
    """The path cannot be normalised without guessing how the upstream reads it."""


def _decode_unreserved(path: str) -> str:
    """Decode escapes of unreserved characters, upper-case the rest, refuse dangerous ones."""
    if "%" not in path:
        return path
    out: list[str] = []
    i = 0
    length = len(path)
    while i < length:
        char = path[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        pair = path[i + 1:i + 3]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise AmbiguousPath("invalid percent-escape")
        value = int(pair, 16)
        if value in _REFUSED_ESCAPES:
            raise AmbiguousPath(f"refused escape %{pair.upper()}")
        if value == 0x25 and _DOUBLE_ENCODED.match(path, i):
            raise AmbiguousPath("double-encoded escape")
        decoded = chr(value)
        out.append(decoded if decoded in _UNRESERVED else "%" + pair.upper())
        i += 3
    return "".join(out)


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


def normalize_path(raw: str) -> str:
    """The request target's path in normal form; raise AmbiguousPath when it is ambiguous."""
    path = raw.split("?", 1)[0]
    if not path.startswith("/"):
        raise AmbiguousPath("the path must start with /")
    bad = _RAW_REFUSED.search(path)
    if bad is not None:
        raise AmbiguousPath(f"refused character {bad.group()!r}")
    if "%" not in path and "//" not in path and "/." not in path:
        return path  # already normal: no escape to decode, no empty or dot segment
    return _remove_dot_segments(_decode_unreserved(path))
