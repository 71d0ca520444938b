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

import re
from collections.abc import Mapping

from aiohttp import hdrs
from multidict import CIMultiDict

from gateway.cors import CorsPolicy
from gateway.http.cors import add_cors_headers
from gateway.http.front import SERVER_LINE
from gateway.http.headers import REQUEST_ID
from gateway.http.hop import end_to_end
from gateway.pipeline import Decision

__all__ = ["NO_BODY_STATUSES", "client_head", "encode_head"]

NO_BODY_STATUSES = frozenset({204, 304})
_SERVER = SERVER_LINE.decode()
_OCTETS = "application/octet-stream"
# Characters aiohttp's writer refuses in a response head (CR and LF only as line ends).
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")

Pairs = list[tuple[str, str]]


def _set(pairs: Pairs, name: str, value: str) -> None:
    """CIMultiDict's `pairs[name] = value`: the first occurrence replaced in place."""
    low = name.lower()
    found = -1
    for index, (key, _) in enumerate(pairs):
        if key.lower() == low:
            found = index
            break
    if found < 0:
        pairs.append((name, value))
        return
    pairs[found] = (name, value)
    pairs[found + 1:] = [pair for pair in pairs[found + 1:] if pair[0].lower() != low]


def _has(pairs: Pairs, low: str) -> bool:
    return any(key.lower() == low for key, _ in pairs)


def client_head(status: int, reason: str, upstream: Pairs, *, length: int | None,
                body: bytes | None, method: str, rid: str, keep_alive: bool, date: bytes,
                cors: CorsPolicy | None, decision: Decision | None,
                request_headers: Mapping[str, str]) -> tuple[bytes, bool] | None:
    """The head (with `body`, a small body read whole, after it) and whether the body that
    follows is to be chunked; None when the head holds a control character."""
    pairs = end_to_end(upstream)
    _set(pairs, REQUEST_ID, rid)
    if cors is not None and cors.enabled and decision is not None:
        headers = CIMultiDict(pairs)
        add_cors_headers(cors, decision, method, request_headers, headers)
        pairs = list(headers.items())
    head_only = method == "HEAD"
    no_body = status in NO_BODY_STATUSES
    if no_body:  # as aiohttp: no length, no body
        pairs = [pair for pair in pairs if pair[0].lower() != "content-length"]
    elif head_only:
        pass  # the upstream's length stays; nothing is added
    elif body is not None:
        _set(pairs, hdrs.CONTENT_LENGTH, str(len(body)))
        if body and not _has(pairs, "content-type"):
            pairs.append((hdrs.CONTENT_TYPE, _OCTETS))
    elif length != 0 and not _has(pairs, "content-type"):
        pairs.append((hdrs.CONTENT_TYPE, _OCTETS))
    chunked = body is None and length is None and not head_only and not no_body
    if chunked:
        _set(pairs, hdrs.TRANSFER_ENCODING, "chunked")
    head = encode_head(status, reason, pairs, keep_alive=keep_alive, date=date)
    if head is None:
        return None
    return (head + body if body else head), chunked


def encode_head(status: int, reason: str, pairs: Pairs, *, keep_alive: bool,
                date: bytes) -> bytes | None:
    """The status line and headers as aiohttp writes them; None for a control character."""
    lines = [f"{name}: {value}\r\n" for name, value in pairs]
    names = {name.lower() for name, _ in pairs}
    if "date" not in names:
        lines.append(date.decode())
    if "server" not in names:
        lines.append(_SERVER)
    if not keep_alive:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    text = f"HTTP/1.1 {status} {reason}\r\n{''.join(lines)}"
    if _FORBIDDEN.search(text):  # as aiohttp: a control character in a header is a 500
        return None
    return text.encode("utf-8", "ignore")  # as aiohttp: undecodable bytes are dropped
