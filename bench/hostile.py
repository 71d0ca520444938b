"""Hostile requests a forward-auth gateway refuses or passes without a token.

Each shape is a request an anonymous client can send as often as it likes; the benchmark
(socket level with wrk, and in-process with bench.micro) reports each one's CPU per request
as a ratio to an ordinary cached-token request, which must stay a small multiple. Heads stay
under the default 8190-byte limit, so the fast door reads them as it reads ordinary ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CONFIG", "ORDINARY_PATH", "SHAPES", "Shape", "raw_request"]

ORDINARY_PATH = "/api/hello"
# The gateway under attack: one public route, everything else needs a token.
CONFIG = "routes:\n  - {name: public, path_prefix: /public, access: public}\n"
_BIG = 8000  # bytes of the hostile header value: the head stays under 8190


@dataclass(frozen=True)
class Shape:
    """One hostile request: a title, the path, its headers and the status it must get."""

    title: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


SHAPES = {
    "cookie_semicolons": Shape(
        "8 KB `Cookie: ;;;;...` on a public route", "/public/x", {"Cookie": ";" * _BIG}),
    "uri_escapes": Shape(
        "8 KB `X-Forwarded-Uri` of `%41` escapes (refused: over the escape bound)", "/",
        {"X-Forwarded-Uri": "/public/" + "%41" * ((_BIG - 8) // 3)}, 400),
    "uri_escapes_at_bound": Shape(
        "`X-Forwarded-Uri` of 256 lower-case UTF-8 escapes (the most accepted)", "/",
        {"X-Forwarded-Uri": "/public/" + "%c3%a9" * 128}),
    "uri_dot_segments": Shape(
        "`X-Forwarded-Uri` of 254 `.` segments (at the segment bound)", "/",
        {"X-Forwarded-Uri": "/public" + "/." * 254 + "/x"}),
    "uri_long_plain": Shape(
        "8 KB plain `X-Forwarded-Uri`", "/", {"X-Forwarded-Uri": "/public/" + "a" * _BIG}),
}


def raw_request(path: str, headers: dict[str, str]) -> bytes:
    """The HTTP/1.1 request bytes of a GET with these headers."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n{lines}\r\n".encode()
