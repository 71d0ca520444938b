"""The proxy fast door's response head built from the upstream's raw header bytes.

`client_head_raw` gives, byte for byte, what `client_head` (gateway/http/answer_head.py) gives
for the decoded headers, without decoding them: the same list operations on bytes (names
lowered with `bytes.lower()`, hop-by-hop and `Connection`-listed names dropped, X-Request-Id
set as a CIMultiDict sets it, the same framing, Date, Server and `Connection: close`) and one
join. It answers itself only when that is provably the str path's answer, else it decodes and
calls `client_head`:

- CORS on (an enabled policy and a decision): the str path (it edits a CIMultiDict);
- every `Connection` value printable ASCII (0x20-0x7E): its tokens choose what is dropped, and
  `str.strip()`/`str.lower()` differ from the bytes versions outside it (U+212A KELVIN SIGN
  lowers to `k`, U+00A0 and U+001C strip);
- the whole head printable ASCII plus tab, with CR and LF only as its line ends.

Why that is enough: every name the list is searched for is ASCII (the hop-by-hop names,
X-Request-Id, Content-Length, Content-Type, Transfer-Encoding, Date, Server) or a `Connection`
token (ASCII by the rule), so a header with a non-ASCII name is never dropped or replaced here
and reaches the head, which the last rule then refuses. Otherwise every name is ASCII, where
both lowerings agree, so both paths build the same list; its kept values, the reason and the
id are in the head, hence ASCII, where decoding (even with `surrogateescape`) and encoding
are the identity; and the head passes the str path's own control-character check.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache

from gateway.cors import CorsPolicy
from gateway.http.answer_head import NO_BODY_STATUSES, client_head
from gateway.http.front import SERVER_LINE
from gateway.http.hop import HOP_BY_HOP, put
from gateway.pipeline import Decision

__all__ = ["RawPairs", "client_head_raw", "raw_head", "raw_head_around_id"]

RawPairs = list[tuple[bytes, bytes]]

_HOP = frozenset(name.encode() for name in HOP_BY_HOP)
_PRINTABLE = bytes(range(0x20, 0x7F))
_PRINTABLE_TAB = bytes([9, *range(0x20, 0x7F)])  # printable ASCII and tab
_CLOSE = b"Connection: close\r\n"
_OCTETS = b"application/octet-stream"
_CACHED_VALUE = 128  # the longest `Connection` value whose dropped names are cached
# Stands for the request id in raw_head_around_id(): an id as request_id() makes them.
_ID_MARK = "rid:" + os.urandom(12).hex()


def client_head_raw(status: int, reason: bytes, upstream: RawPairs, length: int | None,
                    body: bytes | None, method: str, rid: str, keep_alive: bool, date: bytes,
                    cors: CorsPolicy | None, decision: Decision | None,
                    request_headers: Mapping[str, str]) -> tuple[bytes, bool] | None:
    """client_head() for the raw head, the same bytes (built from bytes when provably so).
    (Its parameters may be passed by position, in client_head()'s order: the callback relay
    does, once per response.)"""
    if cors is None or not cors.enabled or decision is None:
        head = raw_head(status, reason, upstream, length, body, method, rid, keep_alive, date)
        if head is not None:
            return head
    pairs = [(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
             for name, value in upstream]
    return client_head(status, reason.decode("utf-8", "surrogateescape"), pairs, length, body,
                       method, rid, keep_alive, date, cors, decision, request_headers)


def raw_head(status: int, reason: bytes, upstream: RawPairs, length: int | None,
             body: bytes | None, method: str, rid: str, keep_alive: bool, date: bytes
             ) -> tuple[bytes, bool] | None:
    """client_head()'s answer without CORS, built from bytes; None when it is not provably
    the same (a non-ASCII or control byte somewhere): then the str path answers."""
    pairs: RawPairs = []
    lows: list[bytes] = []
    listed: list[bytes] | None = None  # the `Connection` values
    for pair in upstream:  # one loop (no comprehension): this is the per-request cost
        low = pair[0].lower()
        if low in _HOP:
            if low == b"connection":
                listed = [pair[1]] if listed is None else [*listed, pair[1]]
            continue
        pairs.append(pair)
        lows.append(low)
    if listed is not None:
        hop = _hop_by_hop(listed)
        if hop is None:
            return None
        if not hop.isdisjoint(lows):  # a name listed besides the hop-by-hop ones is here
            pairs = [pair for pair, low in zip(pairs, lows, strict=True) if low not in hop]
            lows = [low for low in lows if low not in hop]
    put(pairs, lows, b"X-Request-Id", rid.encode("utf-8", "surrogatepass"))
    head_only = method == "HEAD"
    no_body = status in NO_BODY_STATUSES
    if no_body:  # as client_head: no length, no body
        if b"content-length" in lows:
            pairs = [pair for pair, low in zip(pairs, lows, strict=True)
                     if low != b"content-length"]
            lows = [low for low in lows if low != b"content-length"]
    elif head_only:
        pass
    elif body is not None:
        put(pairs, lows, b"Content-Length", b"%d" % len(body))
        if body and b"content-type" not in lows:
            pairs.append((b"Content-Type", _OCTETS))
    elif length != 0 and b"content-type" not in lows:
        pairs.append((b"Content-Type", _OCTETS))
        lows.append(b"content-type")
    chunked = body is None and length is None and not head_only and not no_body
    if chunked:
        put(pairs, lows, b"Transfer-Encoding", b"chunked")
    # `pairs` holds X-Request-Id at least: every header line ends with the CR LF after it.
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason), b"\r\n".join(map(b": ".join, pairs)),
             b"\r\n"]
    ends = len(pairs) + 2  # the status line's and the blank line's, and one a header
    if b"date" not in lows:
        parts.append(date)
        ends += 1
    if b"server" not in lows:
        parts.append(SERVER_LINE)
        ends += 1
    if not keep_alive:
        parts.append(_CLOSE)
        ends += 1
    parts.append(b"\r\n")
    head = b"".join(parts)
    # Printable ASCII and tab but for a CR LF ending each line (one pass in C).
    if head.translate(None, _PRINTABLE_TAB) != b"\r\n" * ends:
        return None  # not provably client_head's (which may refuse it): the str path answers
    return (head + body if body else head), chunked


def raw_head_around_id(status: int, reason: bytes, upstream: RawPairs, length: int,
                       method: str, keep_alive: bool, date: bytes) -> tuple[bytes, bytes] | None:
    """raw_head() for a body of `length` bytes read whole, cut around the request id:
    `before + id + after + body` is raw_head()'s answer for any id request_id() makes
    (printable ASCII) and any such body. None when raw_head() would not answer."""
    answer = raw_head(status, reason, upstream, length, bytes(length), method, _ID_MARK,
                      keep_alive, date)
    if answer is None or answer[1]:
        return None
    head = answer[0][:len(answer[0]) - length]
    mark = _ID_MARK.encode()
    if head.count(mark) != 1:  # the upstream's own bytes hold it too: not cut here
        return None
    before, after = head.split(mark)
    return before, after


def _hop_by_hop(values: list[bytes]) -> frozenset[bytes] | None:
    """The names dropped with these `Connection` values (hop.end_to_end's, on bytes); None
    unless each is printable ASCII."""
    if len(values) == 1 and len(values[0]) <= _CACHED_VALUE:
        return _one_value(values[0])  # the usual case: one short value, always the same
    if any(value.translate(None, _PRINTABLE) for value in values):
        return None
    return _HOP | {token.strip().lower().replace(b"_", b"-")
                   for value in values for token in value.split(b",") if token.strip()}


@lru_cache(maxsize=256)  # bounded: at most 256 values of _CACHED_VALUE bytes
def _one_value(value: bytes) -> frozenset[bytes] | None:
    """_hop_by_hop() of one value, cached: upstreams send the same few."""
    return _hop_by_hop([value, b""])  # (an empty value lists nothing)
