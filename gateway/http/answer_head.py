"""The response head the proxy's fast door writes for an upstream's answer (both of its paths).

The upstream's headers lose their hop-by-hop ones, gain the request's X-Request-Id and the
gateway's CORS headers, and the framing the aiohttp door would give them (no length for
204/304, the length of a body read whole, chunked when the upstream gave no length); the head
is encoded as aiohttp's writer encodes one (Date and Server when absent, `Connection: close`,
undecodable bytes dropped, a control character refused). The operations on the header list
are those of a CIMultiDict (names compared by `str.lower()`, a set replacing the first
occurrence in place and dropping the others), so the bytes are the ones the door wrote when
it kept its headers in one.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import hdrs
from multidict import CIMultiDict

from gateway.cors import CorsPolicy
from gateway.http.cors import add_cors_headers
from gateway.http.front import SERVER_LINE
from gateway.http.headers import REQUEST_ID
from gateway.http.hop import end_to_end, put
from gateway.pipeline import Decision

__all__ = ["NO_BODY_STATUSES", "client_head", "encode_head", "read_whole"]

NO_BODY_STATUSES = frozenset({204, 304})
_SERVER = SERVER_LINE.decode()
_OCTETS = "application/octet-stream"
# The bytes a response head may hold besides CR and LF as line ends (aiohttp's writer
# refuses control characters, CR and LF in a header: the door answers 500 as it does).
_ALLOWED = bytes([9, 10, 13, *range(0x20, 0x7F), *range(0x80, 0x100)])

Pairs = list[tuple[str, str]]


def read_whole(status: int, method: str, length: int | None, small: int) -> bool:
    """True when the body is read whole and written with its head (one write, as the aiohttp
    door does): a length of at most `small` bytes on an answer that has a body."""
    return (length is not None and length <= small and method != "HEAD"
            and status not in NO_BODY_STATUSES)


def client_head(status: int, reason: str, upstream: Pairs, length: int | None,
                body: bytes | None, method: str, rid: str, keep_alive: bool, date: bytes,
                cors: CorsPolicy | None, decision: Decision | None,
                request_headers: Mapping[str, str]) -> tuple[bytes, bool] | None:
    """The head (with `body`, a small body read whole, after it) and whether the body that
    follows is to be chunked; None when the head holds a control character. (The door passes
    its parameters by position: raw_head.client_head_raw() takes them in the same order.)"""
    pairs = end_to_end(upstream)
    lows = [name.lower() for name, _ in pairs]
    put(pairs, lows, REQUEST_ID, rid)
    if cors is not None and cors.enabled and decision is not None:
        headers = CIMultiDict(pairs)
        add_cors_headers(cors, decision, method, request_headers, headers)
        pairs = list(headers.items())
        lows = [name.lower() for name, _ in pairs]
    head_only = method == "HEAD"
    no_body = status in NO_BODY_STATUSES
    if no_body:  # as aiohttp: no length, no body
        if "content-length" in lows:
            pairs = [pair for pair, low in zip(pairs, lows, strict=True) if low != "content-length"]
            lows = [low for low in lows if low != "content-length"]
    elif head_only:
        pass  # the upstream's length stays; nothing is added
    elif body is not None:
        put(pairs, lows, hdrs.CONTENT_LENGTH, str(len(body)))
        if body and "content-type" not in lows:
            pairs.append((hdrs.CONTENT_TYPE, _OCTETS))
    elif length != 0 and "content-type" not in lows:
        pairs.append((hdrs.CONTENT_TYPE, _OCTETS))
        lows.append("content-type")
    chunked = body is None and length is None and not head_only and not no_body
    if chunked:
        put(pairs, lows, hdrs.TRANSFER_ENCODING, "chunked")
    head = encode_head(status, reason, pairs, keep_alive=keep_alive, date=date, lows=lows)
    if head is None:
        return None
    return (head + body if body else head), chunked


def encode_head(status: int, reason: str, pairs: Pairs, *, keep_alive: bool, date: bytes,
                lows: list[str] | None = None) -> bytes | None:
    """The status line and headers as aiohttp writes them; None for a control character.
    `lows`: the lower-cased names, when known."""
    lines = [f"{name}: {value}\r\n" for name, value in pairs]
    names = lows if lows is not None else [name.lower() for name, _ in pairs]
    if "date" not in names:
        lines.append(date.decode())
    if "server" not in names:
        lines.append(_SERVER)
    if not keep_alive:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    # As aiohttp: undecodable bytes are dropped (control characters are ASCII in UTF-8).
    head = f"HTTP/1.1 {status} {reason}\r\n{''.join(lines)}".encode("utf-8", "ignore")
    ends = len(lines) + 1  # every CR and LF must be one of these line ends
    if (head.count(b"\r") != ends or head.count(b"\n") != ends
            or head.translate(None, _ALLOWED)):
        return None  # as aiohttp: a control character in a header is a 500
    return head
