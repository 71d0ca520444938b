"""A lean HTTP/1.1 client for the proxy's plain requests: a bounded keep-alive pool per upstream.

Responses are parsed by llhttp (httptools); bodies stream both ways with back-pressure. A
connection goes back to the pool only when its response was read to a clean end, the request
body was sent whole, and the upstream did not ask to close. A request that finds a pooled
connection already closed by the upstream is retried once on a fresh connection, and only when
it is idempotent and has no body. A connection carries exactly one final response per request:
bytes that answer no request in flight (a second response, bytes while pooled, a body after a
HEAD/204/304 head, bytes after a Content-Length body) close it, and a 1xx other than 100 stops
it being reused. Waiting for a free connection ends after `acquire_timeout` (UpstreamBusy).

A caller that wants no task per request (the proxy's fast door) takes an idle connection with
`take_idle()`, gives it a `Sink` with `relay()` and writes the head itself: the response head,
body bytes and its end then reach the sink from the connection's own callbacks.

Known heads: a response that llhttp read whole from one read (a head, then exactly its
Content-Length of body, nothing after, keep-alive) leaves its head bytes in the pool's bounded
memo with what llhttp made of them. A later response to a sink whose one read holds exactly
those head bytes and that many body bytes is not parsed again: the same bytes from the same
(start) parser state parse the same way, so the sink gets the remembered head and the body at
once (`Sink.upstream_whole`). Only the head's parse is remembered, never a body or an answer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, Protocol, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.http.memo import ParseMemo
from gateway.numbers import whole_number

__all__ = [
    "KnownHead", "KnownHeads", "Sink", "UpstreamBusy", "UpstreamConnectError", "UpstreamError",
    "UpstreamPool", "UpstreamProtocolError", "UpstreamReset", "UpstreamResponse", "head_end",
    "is_stale", "request_head", "retryable",
]

# Response body bytes buffered before the upstream socket stops being read.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
# A response head larger than this is refused (llhttp itself sets no limit).
_MAX_HEAD = 64 * 1024
_RETRYABLE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_EMPTY_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_NO_BODY_STATUSES = frozenset({204, 304})
# The memo of known response heads: at most this many, each at most this long.
_KNOWN_HEADS = 256
_KNOWN_HEAD_BYTES = 4096
Key = tuple[str, int]


class UpstreamError(Exception):
    """The upstream exchange failed (never a ConnectionError: that is the client's side)."""


class UpstreamConnectError(UpstreamError):
    """No connection to the upstream could be opened."""


class UpstreamBusy(UpstreamError):
    """No connection to the upstream became free within the pool timeout."""


class UpstreamReset(UpstreamError):
    """The upstream closed or reset the connection before the response was complete."""


class UpstreamProtocolError(UpstreamError):
    """The upstream's response was not valid HTTP/1.1."""


class _Stale(UpstreamReset):
    """A pooled connection failed before any response byte: the upstream had closed it."""


def is_stale(exc: BaseException) -> bool:
    """True when a pooled connection turned out closed before any response byte (retryable
    once for an idempotent request without a body)."""
    return isinstance(exc, _Stale)


def retryable(method: str) -> bool:
    """True for the methods a stale pooled connection is retried for (without a body)."""
    return method in _RETRYABLE


def request_head(key: Key, method: str, target: str, headers: Iterable[tuple[str, str]],
                 chunked: bool, length: int | None, lows: list[str] | None = None) -> bytes:
    """The request head for the upstream: Host added when missing, the body's framing
    (`chunked`, or `length`, or 0 for an empty POST/PUT/PATCH); ValueError on a CR or LF.
    `lows`: the headers' lower-cased names, when known."""
    pairs = list(headers)
    if lows is None:
        lows = [name.lower() for name, _ in pairs]
    lines = [f"{method} {target} HTTP/1.1\r\n", *(f"{name}: {value}\r\n" for name, value in pairs)]
    lines += head_end(key, method, chunked, length, "host" in lows, "content-length" in lows)
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("newline or carriage return in the request head")
    return text.encode("utf-8")


def head_end(key: Key, method: str, chunked: bool, length: int | None, host_seen: bool,
             length_seen: bool) -> list[str]:
    """The lines request_head() ends a head with: Host when the headers have none, the body's
    framing, the blank line."""
    lines = []
    if not host_seen:
        host, port = key
        host = f"[{host}]" if ":" in host else host
        lines.append(f"Host: {host}:{port}\r\n" if port != 80 else f"Host: {host}\r\n")
    if chunked:
        lines.append("Transfer-Encoding: chunked\r\n")
    elif not length_seen and (length is not None or method in _EMPTY_BODY_METHODS):
        lines.append(f"Content-Length: {length or 0}\r\n")
    lines.append("\r\n")
    return lines


class KnownHead:
    """A response head llhttp parsed before (a final, keep-alive one with a Content-Length)."""

    __slots__ = ("derived", "length", "pairs", "reason", "status")

    def __init__(self, status: int, reason: bytes, pairs: tuple[tuple[bytes, bytes], ...],
                 length: int) -> None:
        self.status = status
        self.reason = reason
        self.pairs = pairs  # the raw header fields, as the callbacks would give them
        self.length = length
        # What a sink works out from this head and keeps with it (bounded by the sink).
        self.derived: dict[Any, Any] = {}


class KnownHeads:
    """The pool's memo of response heads llhttp read whole (gateway/http/memo.py)."""

    __slots__ = ("hits", "memo")

    def __init__(self) -> None:
        self.memo: ParseMemo[bytes, KnownHead] = ParseMemo(_KNOWN_HEADS, _KNOWN_HEAD_BYTES)
        self.hits = 0  # responses given whole from the memo (tests and the bench read it)

    def whole(self, data: bytes) -> tuple[KnownHead, int] | None:
        """The known head `data` starts with and where its body starts, when `data` is that
        head and exactly its body; else None."""
        end = data.find(b"\r\n\r\n") + 4
        known = self.memo.get(data[:end]) if end > 3 else None
        if known is None or len(data) - end != known.length:
            return None
        self.hits += 1
        return known, end

    def remember(self, head: bytes, known: KnownHead) -> None:
        """Keep a head llhttp read whole."""
        self.memo.keep(head, known)


class Sink(Protocol):
    """Who a relayed response goes to, from the connection's callbacks (no task, no future)."""

    def upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                      length: int | None) -> None:
        """The final response head (`length`: its Content-Length, None when it has none)."""

    def upstream_body(self, data: bytes) -> None:
        """Response body bytes, as they arrive."""

    def upstream_end(self, error: BaseException | None) -> None:
        """The response is complete (None) or failed; called once, never while parsing."""

    def upstream_whole(self, known: KnownHead, body: bytes) -> None:
        """A whole response, from one read: a known head and its whole body. Instead of the
        three calls above; the connection is the sink's to release."""

    def upstream_paused(self, paused: bool) -> None:
        """The upstream stopped (True) or resumed (False) reading what is written to it."""


class _Connection(asyncio.Protocol):
    """One upstream socket and the response being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: Key,
                 known: KnownHeads) -> None:
        self.loop = loop
        self.key = key
        self._known = known  # the pool's memo of response heads parsed whole
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle = False
        self.idle_since = 0.0
        self.reused = False
        self.on_lost: Any = None
        self.sink: Sink | None = None  # a relay fed by callbacks, instead of waiters
        self._parser: Any = None
        # llhttp itself read the last response to its end: the parser serves the next one
        # (a HEAD's or a failed response leaves it mid-message: a new one is made).
        self._parsed_whole = False
        self._active = False
        self._head_only = False
        self._got_bytes = False
        self._head_done = False
        self._done = False
        self._reusable = True
        self._until_eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._sending = False
        self._head_bytes = 0
        self._chunk_body = 0  # body bytes llhttp found in the chunk being parsed
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reason = b""
        self._raw: list[tuple[bytes, bytes]] = []
        self._length: bytes | None = None  # the response's first Content-Length
        self._chunked = False  # the response has a Transfer-Encoding
        self._reason_text = ""
        self.status = 0
        self.headers: CIMultiDictProxy[str] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's methods without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if (sink is not None and not self._got_bytes and self._active and not self._head_only
                and self._error is None):
            whole = self._known.whole(data)
            if whole is not None:
                # Bytes llhttp read whole before, from the parser's start, as it is now: they
                # parse as they did. The parser stays at its start, for the next response.
                known, end = whole
                self._got_bytes = self._head_done = self._done = self._parsed_whole = True
                self.status = known.status
                self.sink = None
                sink.upstream_whole(known, data[end:])
                return
        if not self._active or self._done:
            self._reusable = False  # bytes nobody asked for: never trust this socket again
            self.abort()
            return
        first = not self._got_bytes
        headed = self._head_done
        if first:  # what llhttp's callbacks fill, for this response
            self._got_bytes = True
            self._head_bytes = 0
            self._reason = b""
            self._raw = []
            self._length = None
            self._chunked = False
        self._chunk_body = 0
        try:
            self._parser.feed_data(data)
            if self._done and not self._chunked and self._reusable:
                self._check_ends_here(data, first, headed)
                if (first and sink is not None and self._reusable
                        and not self._known.memo.resting):
                    self._remember(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream switched protocols"))
            self.abort()
        except httptools.HttpParserError as exc:
            if not self._done:  # bytes after a whole response: keep it, close the socket
                self._fail(UpstreamProtocolError(f"invalid upstream response: {exc}"))
            self.abort()
        if self.sink is not None and (self._done or self._error is not None):
            self._end_sink()  # after parsing: the sink may reuse or drop this connection

    def _check_ends_here(self, data: bytes, first: bool, headed: bool) -> None:
        """A response with a length ended in this chunk: any byte after it (llhttp skips the
        CR and LF it finds between messages without a word) taints the connection."""
        if headed:
            head = 0
        elif first:
            head = data.find(b"\r\n\r\n") + 4  # (a 1xx head first: a mismatch, not reused)
        else:
            return  # the head began in an earlier chunk: its bytes here are not known
        if head + self._chunk_body != len(data):
            self._reusable = False

    def _remember(self, data: bytes) -> None:
        """Keep the head of a response llhttp just read whole from `data` alone (a final,
        keep-alive one, ending where its Content-Length says) in the pool's memo. (Called
        still reusable after _check_ends_here(): no error, and the head then the body's
        bytes are all of `data`.)"""
        length = whole_number(self._length) if self._length is not None else None
        if (length is None or not self._parsed_whole or self._head_only
                or self.status in _NO_BODY_STATUSES or self._chunk_body != length):
            return
        self._known.remember(data[:len(data) - length], KnownHead(
            self.status, self._reason, tuple(self._raw), length))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self._reusable = False
        if self._active and not self._done:
            if self._head_done and self._until_eof:
                self._done = True  # a close-delimited body ends with the connection
            elif not self._got_bytes and self.reused:
                self._fail(_Stale("the pooled connection was closed by the upstream"))
            else:
                self._fail(UpstreamReset("the upstream closed the connection"))
        if self.sink is not None:
            self._end_sink()
        self._wake()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(UpstreamReset("the upstream closed the connection"))
        if self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.sink is not None:
            self.sink.upstream_paused(True)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.sink is not None:
            self.sink.upstream_paused(False)
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._head_done:  # a second response to one request: never parse it, never trust
            self._reusable = False  # this socket again (it would answer the next request)
            raise UpstreamProtocolError("the upstream sent an unsolicited response")

    def on_status(self, status: bytes) -> None:
        self._reason += status
        if len(self._reason) > _MAX_HEAD:
            raise UpstreamProtocolError("the upstream's status line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > _MAX_HEAD:
            raise UpstreamProtocolError("the upstream's response head is too large")
        self._raw.append((name, value))
        if len(name) in (14, 17):  # the lengths of the two framing headers' names
            low = name.lower()
            if low == b"content-length":
                if self._length is None:
                    self._length = value
            elif low == b"transfer-encoding":
                self._chunked = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status == 101:
            self._fail(UpstreamProtocolError("the upstream switched protocols"))
            return
        if 100 <= status < 200:
            if status != 100:  # 102/103/...: relayed never; the socket is not reused
                self._reusable = False
            self._raw = []  # an informational response: the real one follows
            self._reason = b""
            self._length = None
            self._chunked = False
            return
        self.status = status
        self._head_done = True
        if not parser.should_keep_alive():
            self._reusable = False
        if self._head_only or status in _NO_BODY_STATUSES:
            self._done = True
        elif self._length is None and not self._chunked:
            self._until_eof = True
            self._reusable = False
        sink = self.sink
        if sink is not None:
            length = self._length
            sink.upstream_head(status, self._reason, self._raw,
                               None if length is None else whole_number(length))
            return
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in self._raw:
            headers.add(name.decode("utf-8", "surrogateescape"),
                        value.decode("utf-8", "surrogateescape"))
        self.headers = CIMultiDictProxy(headers)
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunk_body += len(body)
        if self._done:
            self._reusable = False  # a body after a HEAD/204/304 head
            return
        if self.sink is not None:
            self.sink.upstream_body(body)
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._read_paused and self.transport:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self._head_done:
            return  # the end of an informational response
        self._done = True
        self._parsed_whole = True
        if self._waiter is not None:  # (a relay fed by callbacks has none)
            self._wake()

    # used by the pool and the response
    def begin(self, head_only: bool, sending: bool) -> None:
        """Prepare for a new request's response."""
        self._sending = sending
        if not self._parsed_whole or self._parser is None:
            self._parser = httptools.HttpResponseParser(self)
        self._parsed_whole = False
        self._active = True
        self._head_only = head_only
        self._got_bytes = self._head_done = self._done = self._until_eof = False
        self._error = None
        self.headers = None
        # (no body bytes are left: finish() pools a connection again only then; what the
        # parser fills is reset when the response's first bytes are parsed)

    def relay(self, sink: Sink, head_only: bool) -> None:
        """Prepare for a response that goes to `sink` from the callbacks (no waiter)."""
        self.begin(head_only, False)
        self.sink = sink

    def detach(self) -> None:
        """The sink no longer wants the response (it ended the exchange itself)."""
        self.sink = None

    def reading(self, on: bool) -> None:
        """Stop (False) or resume (True) reading the response: the client is not reading."""
        transport = self.transport
        if transport is not None and on == self._read_paused:
            self._read_paused = not on
            if on:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _end_sink(self) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            error = None if self._done else (
                self._error or UpstreamReset("the upstream closed the connection"))
            sink.upstream_end(error)

    def finish(self) -> bool:
        """End the exchange; whether the connection can serve another request."""
        self._active = False
        if not self._parsed_whole or self._error is not None:
            self._parser = None
            self._parsed_whole = False
        return (self._done and self._reusable and not self.closed and not self._chunks
                and self._error is None)

    def abort(self) -> None:
        self._reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._reusable = False
        self._wake()

    def fail(self, exc: BaseException) -> None:
        """Fail the response in progress (the request body could not be sent)."""
        self._fail(exc)

    def sent(self) -> None:
        """The request body is sent: the read timeout applies from now on."""
        self._sending = False
        self._wake()

    def fail_quietly(self) -> None:
        """Never reuse this connection, but let the response be read."""
        self._reusable = False

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, seconds: float) -> None:
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(seconds, _expire, waiter) if seconds else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    @property
    def head_done(self) -> bool:
        return self._head_done

    async def wait_head(self, seconds: float) -> None:
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait(0 if self._sending else seconds)  # a long upload is no timeout
        self._reason_text = self._reason.decode("utf-8", "surrogateescape")

    async def read_chunk(self, seconds: float) -> bytes:
        """The next body bytes, b"" at the end."""
        while True:
            chunks = self._chunks
            if chunks:
                chunk = chunks.popleft()
                if len(chunks) > 0:
                    chunk = chunk + b"".join(chunks)
                    chunks.clear()
                self._buffered = 0
                if self._read_paused and self.transport is not None:
                    self._read_paused = False
                    self.transport.resume_reading()
                return chunk
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait(seconds)

    @property
    def at_eof(self) -> bool:
        return self._done and not self._chunks

    async def drain(self, seconds: float) -> None:
        """Wait while the upstream is not reading; an upstream stalled that long times out."""
        if self.closed:
            raise UpstreamReset("the upstream closed the connection")
        if self._write_paused:
            drain = self._drain = self.loop.create_future()
            timer = self.loop.call_later(seconds, _expire, drain) if seconds else None
            try:
                await drain
            finally:
                self._drain = None
                if timer is not None:
                    timer.cancel()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("upstream read timeout"))


class UpstreamResponse:
    """A response head; the body is read with read() or chunks(), then release() or close()."""

    __slots__ = ("_conn", "_pool", "_timeout", "_writer", "headers", "reason", "status")

    def __init__(self, pool: UpstreamPool, conn: _Connection,
                 writer: asyncio.Task[None] | None) -> None:
        self._pool = pool
        self._conn = conn
        self._writer = writer
        self._timeout = pool.read_timeout
        self.status = conn.status
        self.reason: str = conn._reason_text
        assert conn.headers is not None
        self.headers: CIMultiDictProxy[str] = conn.headers

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return whole_number(value)

    @property
    def at_eof(self) -> bool:
        return self._conn.at_eof

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        conn = self._conn
        while True:
            chunk = await conn.read_chunk(self._timeout)
            if not chunk:
                return
            yield chunk

    async def read(self) -> bytes:
        """The whole body."""
        parts = [chunk async for chunk in self.chunks()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Done with the response: the connection returns to the pool if it is clean."""
        writer = self._writer
        clean = writer is None or (writer.done() and not writer.cancelled()
                                   and writer.exception() is None)
        if writer is not None and not writer.done():
            writer.cancel()
        self._pool._release(self._conn, clean)

    def close(self) -> None:
        """Abandon the response: the connection is closed, never reused."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        self._conn.abort()
        self._pool._release(self._conn, False)


class UpstreamPool:
    """Keep-alive connections per (host, port), bounded in total and per upstream."""

    def __init__(self, *, limit: int, limit_per_upstream: int, keepalive_seconds: float,
                 connect_timeout: float, read_timeout: float,
                 acquire_timeout: float = 0.0) -> None:
        self._limit = limit
        self._acquire_timeout = acquire_timeout  # 0: wait for a free connection forever
        self._per = limit_per_upstream
        self._keepalive = keepalive_seconds
        self._connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: dict[Key, list[_Connection]] = {}
        self._open: dict[Key, int] = {}
        self._total = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None
        self.known = KnownHeads()  # response heads llhttp read whole (see above)

    @property
    def open_connections(self) -> int:
        """Connections counted against the bound (in use, idle or being opened)."""
        return self._total

    async def request(
        self, key: Key, method: str, target: str, headers: Iterable[tuple[str, str]],
        body: AsyncIterable[bytes] | None = None, length: int | None = None,
        lows: list[str] | None = None,
    ) -> UpstreamResponse:
        """Send one request and return once the response head arrived (`lows`: the
        headers' lower-cased names, when known)."""
        head = request_head(key, method, target, headers, body is not None and length is None,
                            length, lows)
        return await self.send(key, head, method, body, length)

    async def send(self, key: Key, head: bytes, method: str,
                   body: AsyncIterable[bytes] | None = None, length: int | None = None, *,
                   fresh: bool = False) -> UpstreamResponse:
        """Send a request whose head is built (request_head()); a stale pooled connection is
        retried once on a fresh one for an idempotent request without a body. `fresh`: on a
        new connection at once (the retry of a stale one found by a relay)."""
        retry = body is None and method in _RETRYABLE and not fresh
        conn = await self._acquire(key, fresh=fresh)
        try:
            return await self._exchange(conn, method == "HEAD", head, body, length)
        except _Stale:
            if not retry:
                raise UpstreamReset("the upstream closed a pooled connection") from None
        conn = await self._acquire(key, fresh=True)
        return await self._exchange(conn, method == "HEAD", head, body, length)

    def take_idle(self, key: Key) -> _Connection | None:
        """An idle pooled connection to the upstream, at once; None when there is none."""
        idle = self._idle.get(key)
        if not idle:
            return None
        now = idle[-1].loop.time()  # (get_running_loop() costs a getpid() on CPython 3.11)
        while idle:
            conn = idle.pop()
            conn.idle = False
            if conn.closed or now - conn.idle_since > self._keepalive:
                self._discard(conn)
                continue
            return conn
        return None

    def release(self, conn: _Connection, clean: bool) -> None:
        """A taken connection's exchange ended: pooled again when `clean` and reusable."""
        self._release(conn, clean)

    async def _exchange(self, conn: _Connection, head_only: bool, head: bytes,
                        body: AsyncIterable[bytes] | None, length: int | None
                        ) -> UpstreamResponse:
        conn.begin(head_only, body is not None)
        assert conn.transport is not None
        writer: asyncio.Task[None] | None = None
        try:
            if conn.closed:
                raise (_Stale if conn.reused else UpstreamReset)("the connection is closed")
            conn.transport.write(head)
            if body is not None:
                writer = asyncio.get_running_loop().create_task(
                    _send_body(conn, body, length is None, self.read_timeout))
                writer.add_done_callback(lambda task: _body_sent(conn, task))
            await conn.wait_head(self.read_timeout)
        except BaseException:
            if writer is not None and not writer.done():
                writer.cancel()
            conn.abort()
            self._release(conn, False)
            raise
        return UpstreamResponse(self, conn, writer)

    async def _acquire(self, key: Key, fresh: bool = False) -> _Connection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._acquire_timeout
        while True:
            if self._closed:
                raise UpstreamConnectError("the upstream pool is closed")
            idle = self._idle.get(key)
            if not fresh:
                taken = self.take_idle(key)
                if taken is not None:
                    return taken
            if self._limit and self._total >= self._limit and not self._close_other_idle():
                await self._wait_slot(deadline)
                continue
            if self._per and self._open.get(key, 0) >= self._per:
                if fresh and idle:
                    self._discard(idle.pop(0))
                    continue
                await self._wait_slot(deadline)
                continue
            break
        self._total += 1
        self._open[key] = self._open.get(key, 0) + 1
        conn = _Connection(loop, key, self.known)
        try:
            async with asyncio.timeout(self._connect_timeout or None):
                await loop.create_connection(lambda: conn, key[0], key[1])
        except TimeoutError:
            self._forget(conn)
            raise
        except OSError as exc:
            self._forget(conn)
            raise UpstreamConnectError(f"cannot connect to the upstream: {exc}") from exc
        except BaseException:
            self._forget(conn)
            raise
        conn.on_lost = self._lost
        return conn

    async def _wait_slot(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        try:
            if not self._acquire_timeout:
                await waiter
                return
            left = deadline - loop.time()
            if left <= 0:
                raise UpstreamBusy("no upstream connection became free in time")
            try:
                async with asyncio.timeout(left):
                    await waiter
            except TimeoutError:
                raise UpstreamBusy("no upstream connection became free in time") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake_waiters(self) -> None:
        while self._waiters:  # every waiter re-checks: fairness is FIFO within a re-check
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _close_other_idle(self) -> bool:
        oldest: _Connection | None = None
        for conns in self._idle.values():
            if conns and (oldest is None or conns[0].idle_since < oldest.idle_since):
                oldest = conns[0]
        if oldest is None:
            return False
        self._idle[oldest.key].remove(oldest)
        oldest.idle = False
        self._discard(oldest)
        return True

    def _release(self, conn: _Connection, clean: bool) -> None:
        reusable = conn.finish() and clean and not self._closed
        if not reusable:
            self._discard(conn)
            return
        conn.reused = True
        conn.idle = True
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(conn.key, []).append(conn)
        if self._sweeper is None and self._keepalive:
            self._sweeper = conn.loop.call_later(self._keepalive, self._sweep)
        if self._waiters:
            self._wake_waiters()

    def _discard(self, conn: _Connection) -> None:
        if conn.on_lost is None:
            return  # already forgotten
        conn.on_lost = None
        conn.abort()
        self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        self._total -= 1
        left = self._open.get(conn.key, 1) - 1
        if left:
            self._open[conn.key] = left
        else:
            self._open.pop(conn.key, None)
        if self._waiters:
            self._wake_waiters()

    def _lost(self, conn: _Connection) -> None:
        if conn.idle:
            conn.idle = False
            idle = self._idle.get(conn.key)
            if idle and conn in idle:
                idle.remove(conn)
            self._discard(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        left = False
        for conns in self._idle.values():
            while conns and now - conns[0].idle_since >= self._keepalive:
                conn = conns.pop(0)
                conn.idle = False
                self._discard(conn)
            left = left or bool(conns)
        if left and not self._closed:
            self._sweeper = asyncio.get_running_loop().call_later(self._keepalive, self._sweep)

    async def close(self) -> None:
        """Close every idle connection; in-flight ones close when their exchange ends."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in self._idle.values():
            for conn in conns:
                conn.idle = False
                self._discard(conn)
        self._idle.clear()
        self._wake_waiters()


async def _send_body(conn: _Connection, body: AsyncIterable[bytes], chunked: bool,
                     stall_seconds: float) -> None:
    transport = conn.transport
    assert transport is not None
    async for chunk in body:
        if not chunk:
            continue
        if conn.closed:
            raise UpstreamReset("the upstream closed the connection")
        if chunked:
            transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            transport.write(chunk)
        await conn.drain(stall_seconds)
    if chunked and not conn.closed:
        transport.write(b"0\r\n\r\n")


def _body_sent(conn: _Connection, task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None:
        conn.sent()
        return
    if conn.head_done and isinstance(exc, UpstreamError):
        conn.fail_quietly()  # the upstream answered and stopped reading: keep its answer
    else:
        conn.fail(exc)  # before the head the request fails; after it, the body does
