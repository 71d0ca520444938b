"""The proxy fast door's relay driven by callbacks: no task, future or timer per request.

For the common case (a request whose body, if any, came whole with its head, and an idle
pooled connection to its upstream) the door writes the upstream head and body to that
connection at once and hands it this relay as its sink: the upstream connection's llhttp
callbacks write the rewritten response head (built from llhttp's raw header bytes by
gateway/http/raw_head.py: the task path's bytes, without decoding every header) and the body
bytes straight to the client as they arrive (a small body with a length in one write, as the
task path does), and at the end the connection goes back to the pool and the door finishes
the request. Deadlines (the upstream's read timeout, a client that stops reading) are
checked by the door's one sweep (gateway/http/deadlines.py). Back-pressure goes both ways:
a client that stops reading pauses the upstream's reads; an upstream that stops reading
pauses the client's.

What this relay does not do goes through the door's task path, with the same head building,
response head rewriting, failure accounting and access line: a request whose body streams
on, no idle connection (one must be opened), a decision that needs I/O; and the one retry of
an idempotent body-less request whose pooled connection turns out closed by the upstream.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from gateway.http.answer_head import read_whole
from gateway.http.deadlines import Sweep
from gateway.http.proxy import SMALL_BODY
from gateway.http.raw_head import RawPairs
from gateway.http.upstream import Key, KnownHead, UpstreamPool, is_stale, retryable

if TYPE_CHECKING:
    from gateway.http.fast_proxy import FastProxyProtocol, _Exchange
    from gateway.http.upstream import _Connection

__all__ = ["CallbackRelay"]

log = logging.getLogger("gateway.fast_proxy")


class CallbackRelay:
    """One request relayed from an idle pooled connection, by callbacks on both sides."""

    __slots__ = ("_chunked", "_client", "_conn", "_exchange", "_headed", "_key", "_owner",
                 "_parts", "_pool", "_read_limit", "_route", "_sent", "_sweep",
                 "_waiting", "deadline", "limit", "moved")

    def __init__(self, owner: FastProxyProtocol, exchange: _Exchange, key: Key,
                 pool: UpstreamPool, conn: _Connection, sweep: Sweep, route: str) -> None:
        self._owner = owner
        self._exchange = exchange
        self._key = key  # the pool's, for the one retry on a new connection
        self._pool = pool
        self._conn: _Connection | None = conn
        self._sweep = sweep
        self._route = route
        self._sent = 0.0
        self._headed = False  # the response head went to the client
        self._chunked = False
        self._parts: list[bytes] | None = None  # a small body, read whole before its head
        self._waiting: tuple[int, bytes, RawPairs] | None = None
        self._client = True  # the client reads what is written to it
        self._read_limit = pool.read_timeout
        self.limit = self._read_limit
        self.moved = True
        self.deadline = 0.0

    def start(self, head: bytes, payload: bytes) -> None:
        """Write the request to the connection; the rest happens in callbacks."""
        conn = self._conn
        assert conn is not None and conn.transport is not None
        conn.relay(self, self._exchange.method == "HEAD")
        self._sweep.watch(self, conn.loop)
        self._sent = time.perf_counter()
        self._owner.send_upstream(conn.transport, head + payload if payload else head)

    # -- the upstream connection's callbacks (gateway/http/upstream.py's Sink) ----------

    def upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                      length: int | None) -> None:
        """Write the rewritten head (a small body's waits for the body)."""
        exchange = self._exchange
        exchange.upstream_status = status
        self._owner.observe_upstream(self._route, time.perf_counter() - self._sent)
        self.moved = True
        if read_whole(status, exchange.method, length, SMALL_BODY):
            # A copy: the connection's list takes a chunked body's trailers (there is none
            # with a length, but its list is not this relay's to keep).
            self._waiting = (status, reason, list(headers))
            self._parts = []
            return
        head = self._owner.answer_head_raw(exchange, status, reason, headers, length, None)
        if head is None:  # refused (a control character): the connection is not trusted
            self._drop()
            self._end()
            return
        data, self._chunked = head
        self._headed = True
        self._owner.deliver(data)

    def upstream_body(self, data: bytes) -> None:
        """Relay body bytes as they come (or keep a small body's)."""
        parts = self._parts
        if parts is not None:
            parts.append(data)
        elif self._headed:
            owner = self._owner
            if self._chunked:
                owner.deliver(b"%x\r\n" % len(data))
                owner.deliver(data)
                owner.deliver(b"\r\n")
            else:
                owner.deliver(data)
        if self._client:
            self.moved = True

    def upstream_end(self, error: BaseException | None) -> None:
        """The response is whole (or failed): write its end, give the connection back."""
        conn = self._conn
        self._conn = None
        if conn is None:
            return
        if error is not None:
            self._pool.release(conn, False)
            self._failed(error)
            return
        waiting = self._waiting
        if waiting is not None:
            body = b"".join(self._parts) if self._parts else b""
            status, reason, pairs = waiting
            head = self._owner.answer_head_raw(self._exchange, status, reason, pairs,
                                               len(body), body)
            if head is not None:
                self._owner.deliver(head[0])
        elif self._chunked:
            self._owner.deliver(b"0\r\n\r\n")
        self._pool.release(conn, True)
        self._end()

    def upstream_whole(self, known: KnownHead, body: bytes) -> None:
        """A whole response from one read, its head a known one: the answer in one write
        (the same bytes the three calls above write), the connection back to the pool."""
        exchange = self._exchange
        if not read_whole(known.status, exchange.method, known.length, SMALL_BODY):
            self.upstream_head(known.status, known.reason, list(known.pairs), known.length)
            if self._conn is not None:
                self.upstream_body(body)
                self.upstream_end(None)
            return
        conn = self._conn
        self._conn = None
        if conn is None:
            return
        exchange.upstream_status = known.status
        owner = self._owner
        owner.observe_upstream(self._route, time.perf_counter() - self._sent)
        answer = owner.known_answer(exchange, known, body)
        if answer is not None:
            owner.deliver(answer)
        self._pool.release(conn, True)
        self._end()

    def upstream_paused(self, paused: bool) -> None:
        """The upstream's side is full: stop (or resume) reading the client."""
        self._owner.hold_client(paused)

    # -- the client's side --------------------------------------------------------------

    def client_writable(self, writable: bool) -> None:
        """The client stopped (or resumed) reading: so do the upstream reads; a client that
        reads nothing for `proxy.write_timeout_seconds` is cut off."""
        self._client = writable
        conn = self._conn
        if conn is not None:
            conn.reading(writable)
        self.limit = self._read_limit if writable else self._owner.write_limit
        self.moved = True

    def client_lost(self) -> None:
        """The client went away (or was cut off): the upstream connection closes."""
        if self._conn is None:
            return
        self._drop()
        self._exchange.status = self._owner.client_closed_status
        self._exchange.keep_alive = False
        self._end()

    def cut_off(self) -> None:
        """Shutdown's deadline passed: never a partial answer."""
        self._owner.abort()
        self.client_lost()

    def expire(self) -> None:
        """The sweep found no progress for `limit` seconds."""
        if self._conn is None:
            return
        self._drop()
        owner = self._owner
        if not self._client:
            owner.client_stalled(self._exchange, self._route)
            self._end()
        else:
            self._failed(TimeoutError("upstream read timeout"))

    # -- internals ----------------------------------------------------------------------

    def _drop(self) -> None:
        """Stop relaying: the upstream connection is closed, never reused."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.detach()
            conn.abort()
            self._pool.release(conn, False)

    def _failed(self, error: BaseException) -> None:
        owner = self._owner
        exchange = self._exchange
        if self._headed:
            owner.failed_midway(exchange, error, self._route)
        elif (is_stale(error) and exchange.body is None and retryable(exchange.method)):
            self._sweep.forget(self)
            owner.retry_fresh(exchange, self._key)  # once, on a new connection (task path)
            return
        else:
            owner.refuse_failed(exchange, error, self._route)
        self._end()

    def _end(self) -> None:
        self._sweep.forget(self)
        self._owner.relay_ended(self._exchange)
