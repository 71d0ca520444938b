"""The proxy's fast door: plain requests proxied without aiohttp's request and response objects.

In proxy mode aiohttp's per-request machinery is paid twice (a server request, then a client
response to relay) and costs more than the decision. This door is the public listener's
connection protocol in proxy mode when every upstream is a plain http:// one served by the
lean pool. Heads are parsed by the shared llhttp front (gateway/http/front.py, with the
checks aiohttp applies); then, with the ProxyHandler's own pieces (pipeline, header hygiene,
target and path checks, body limit, pool, failure accounting, observer):

- a decision the pipeline can make without I/O is made at once; one that needs I/O is awaited
  in the request's relay task, with reading paused;
- the upstream head is built once, from the header bytes llhttp saw, by HeaderHygiene's rules
  (gateway/http/lean_head.py) and written to a pooled connection, a Content-Length body
  streamed after it with back-pressure both ways;
- the response head is framed by llhttp, rewritten (hop-by-hop headers out, X-Request-Id
  in; gateway/http/answer_head.py) and written as aiohttp's door writes it; its body is
  relayed as it arrives (a small body with a length in one write, as the aiohttp door does).

The common case (the whole request here, an idle pooled connection for its upstream, a
decision made without I/O) is relayed by callbacks alone (gateway/http/fast_relay.py), with
no task, future or timer per request; the rest runs in a task per request (`_relay`). Both
share the head building, the response head, the failure accounting and the access line.

What it does not fully understand goes to the aiohttp door for the rest of the connection:
HTTP/1.0, chunked or `Expect` request bodies, upgrades (WebSocket), odd targets, pipelined or
malformed requests, and (after a reload) a route whose upstream is https.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import httptools
from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.cors import CorsPolicy
from gateway.http.answer_head import client_head, encode_head, read_whole
from gateway.http.cors import add_cors_headers
from gateway.http.deadlines import Sweep
from gateway.http.fast_relay import CallbackRelay
from gateway.http.front import (
    HANDOVER_CAUSES,
    Field,
    FrontDoor,
    FrontProtocol,
    refusal_answer,
)
from gateway.http.headers import request_id
from gateway.http.proxy import (
    SMALL_BODY,
    BodyStalled,
    ClientStalled,
    ProxyHandler,
)
from gateway.http.raw_head import RawPairs, client_head_raw, raw_head_around_id
from gateway.http.upstream import Key, KnownHead, UpstreamError, UpstreamResponse
from gateway.metrics import Metrics
from gateway.pipeline import Authorizer, Decision, RequestFacts
from gateway.reasons import Reason

__all__ = ["PROXY_HANDOVER_CAUSES", "FastProxyDoor", "FastProxyProtocol"]

log = logging.getLogger("gateway.fast_proxy")

# "upstream": after a reload, a route's upstream is https (aiohttp's client serves it).
PROXY_HANDOVER_CAUSES = (*HANDOVER_CAUSES, "upstream")
_CLIENT_CLOSED = 499  # the access line's status when the client went away (nginx's)
_LINGER_SECONDS = 1.0
# Request body bytes buffered before the client socket stops being read.
_BODY_HIGH_WATER = 256 * 1024
_BODY_LOW_WATER = 64 * 1024
# What ends a relay as the aiohttp door's do: the upstream failed, or the body stalled.
_UPSTREAM_ERRORS = (UpstreamError, TimeoutError, BodyStalled)
# Answers cut around the request id kept per known upstream head (for each Date line and
# keep-alive): a head without a Date of its own lives on, so they are bounded.
_KNOWN_ANSWERS = 8


# The arguments client_head() and client_head_raw() share, after the upstream's head, in their
# order (by position: a keyword dict per response costs more than the call it feeds): length,
# body, method, rid, keep_alive, date, cors, decision, request_headers.
_HeadFacts = tuple[int | None, bytes | None, str, str, bool, bytes, CorsPolicy | None,
                   Decision | None, Mapping[str, str]]


class FastProxyDoor(FrontDoor):
    """One listener's proxy fast door: the ProxyHandler's pieces behind the llhttp front."""

    def __init__(self, handler: ProxyHandler, authorizer: Authorizer, metrics: Metrics, *,
                 realm: str,
                 max_body_bytes: int, max_head_bytes: int, max_headers: int,
                 head_timeout: float, keepalive_timeout: float) -> None:
        counter = metrics.proxy_fast_path
        super().__init__(metrics, counter, PROXY_HANDOVER_CAUSES, max_head_bytes=max_head_bytes,
                         max_headers=max_headers, head_timeout=head_timeout,
                         keepalive_timeout=keepalive_timeout)
        self.handler = handler
        self.observer = handler.observer  # (the handler's for good)
        self.authorizer = authorizer
        self.realm = realm
        self.max_body_bytes = max_body_bytes
        self.served = metrics.tally(counter.labels("answered"))
        self.served_later = metrics.tally(counter.labels("answered_after_io"))
        # The deadlines of the relays driven by callbacks: one sweep for them all.
        self.sweep = Sweep(min(handler.read_timeout_seconds, handler.write_timeout_seconds))
        self.callback_relays = 0  # requests relayed by callbacks alone (tests and bench read it)

    def protocol(self, fallback: Callable[[], asyncio.Protocol]) -> FastProxyProtocol:
        """A protocol for one new connection; `fallback` makes the aiohttp protocol."""
        return FastProxyProtocol(self, fallback)

    async def drain(self, seconds: float) -> None:
        """Let relays finish for up to `seconds`, then cut the rest off (as aiohttp does)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        await super().drain(seconds)
        await self.sweep.quiet(max(0.0, until - loop.time()))
        for relay in list(self.sweep.watched):
            relay.cut_off()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=1.0)


class _Body:
    """A request body on its way upstream: fed by the connection, read by the pool."""

    __slots__ = ("_chunks", "_done", "_idle", "_owner", "_size", "_waiter", "stalled")

    def __init__(self, owner: FastProxyProtocol, idle_seconds: float) -> None:
        self._owner = owner
        self._idle = idle_seconds  # `proxy.body_idle_timeout_seconds`, as the aiohttp door's
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._waiter: asyncio.Future[None] | None = None
        self.stalled = False  # no byte came for `idle_seconds`: the request ends with 408

    def feed(self, chunk: bytes) -> None:
        """Body bytes from the client; reading stops while too many wait."""
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > _BODY_HIGH_WATER:
            self._owner.pause_body()
        self._wake()

    def end(self) -> None:
        """The client sent the whole body."""
        self._done = True
        self._wake()

    def whole(self) -> bytes | None:
        """The whole body when it came with the head and none was read yet; else None."""
        if not self._done or self._waiter is not None:
            return None
        return b"".join(self._chunks)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._chunks
        while True:
            if chunks:
                chunk = chunks.popleft()
                self._size -= len(chunk)
                if self._size < _BODY_LOW_WATER:
                    self._owner.resume_body()
                yield chunk
            elif self._done:
                return
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    async with asyncio.timeout(self._idle):
                        await self._waiter
                except TimeoutError:
                    self.stalled = True
                    raise BodyStalled(f"no request body byte for {self._idle:g} s") from None
                finally:
                    self._waiter = None


class _Exchange:
    """One request on its way through the door: what the answer and the access line need."""

    __slots__ = ("body", "client", "decision", "facts", "fields", "head", "keep_alive", "length",
                 "method", "reason", "rid", "started", "status", "target", "upstream_status")

    def __init__(self, method: str, target: str, rid: str, keep_alive: bool, started: float,
                 length: int, facts: RequestFacts, fields: Sequence[Field]) -> None:
        self.method = method
        self.target = target
        self.rid = rid
        self.keep_alive = keep_alive
        self.started = started
        self.length = length
        self.facts = facts
        self.fields = fields  # the headers as the front parsed them, as bytes
        self.body: _Body | None = None
        self.decision: Decision | None = None
        self.client: str | None = None  # the per-client slot held while relaying
        self.status = 500
        self.upstream_status: int | None = None
        self.reason: Reason | None = None
        self.head: bytes | None = None  # the upstream request head, once built


class FastProxyProtocol(FrontProtocol):
    """One client connection of the proxy's fast door."""

    accepts_bodies = True
    client_closed_status = _CLIENT_CLOSED

    def __init__(self, door: FastProxyDoor, fallback: Callable[[], asyncio.Protocol]) -> None:
        super().__init__(door, fallback)
        self._door = door
        self._early: list[bytes] = []  # body bytes parsed with the head
        self._late: list[bytes] = []  # body bytes read while the decision was pending
        self._body_left = 0  # body bytes the client has still to send
        self._stream: _Body | None = None
        self._deciding = False
        self._body_paused = False
        self._task: asyncio.Task[None] | None = None
        self._live: CallbackRelay | None = None  # the relay driven by callbacks, if any
        self._writable: asyncio.Future[None] | None = None

    # -- the front's hooks --------------------------------------------------------------

    def _body(self, chunk: bytes) -> None:
        """Body bytes parsed with the head: kept for the request's body stream."""
        self._early.append(chunk)

    def _request(self, method: str, target: str, headers: CIMultiDictProxy[str],
                 version: str, keep_alive: bool) -> None:
        """Decide (at once when no I/O is needed) and start relaying an allowed request."""
        if version != "1.1":
            self._hand_over(self._raw, "version")
            return
        door = self._door
        early, self._early = self._early, []
        length = self._length or 0
        left = length - sum(map(len, early))
        facts = door.handler.facts(method, target, headers, self._remote, None, self._memo)
        exchange = _Exchange(method, target, request_id(headers), keep_alive,
                             door.observer.begin(), length, facts, self._fields)
        self._busy = True
        if length:
            body = exchange.body = self._stream = _Body(self, door.handler.body_idle_seconds)
            for chunk in early:
                body.feed(chunk)
            if left:
                self._body_left = left
                self._parser = httptools.HttpRequestParser(self)  # the body bypasses llhttp
            else:
                body.end()
        try:
            decision = door.authorizer.authorize_now(facts)
        except Exception:  # a bug must cost one 500 JSON answer, not the connection's reset
            log.exception("proxy decision failed")
            self._refuse(exchange, Reason.INTERNAL_ERROR, keep_alive=False)
            self._finish(exchange)
            return
        if decision is None:
            self._deciding = True
            self._task = door.spawn(self._decide_later(exchange))
            return
        door.served()
        key = self._decided(exchange, decision)
        if key is not None and not self._relay_now(exchange, key):
            self._task = door.spawn(self._relay(exchange, key))
            # Cancelled before its first step, a relay's `finally` never runs: free the slot.
            self._task.add_done_callback(lambda _: self._give_slot(exchange))

    # -- asyncio.Protocol ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Stream a request body (past llhttp, by its length); the rest to the front."""
        left = self._body_left
        if left and not self._expired:
            chunk = data[:left] if len(data) > left else data
            self._body_left = left - len(chunk)
            body = self._stream
            if body is not None:
                body.feed(chunk)
                if self._deciding:
                    self._late.append(chunk)
                if not self._body_left:
                    body.end()
            data = data[len(chunk):]
            if not data:
                return
        super().data_received(data)
        if self._busy and len(self._held) > self._door.max_head_bytes:
            self._pause()  # one request at a time: the next waits for this answer

    def eof_received(self) -> bool:
        """The client closed its side: as with aiohttp's door, its request is abandoned."""
        self.write_unsent()  # (the transport closes itself on return)
        self._closing = True
        return False

    def pause_writing(self) -> None:
        """The client stopped reading: the relay waits, the requests wait."""
        super().pause_writing()
        if self._live is not None:
            self._live.client_writable(False)
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        """The client reads again."""
        super().resume_writing()
        if self._live is not None:
            self._live.client_writable(True)
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        """The client went away: its relay stops, the upstream connection closes."""
        super().connection_lost(exc)
        if self._live is not None:
            self._live.client_lost()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # -- body back-pressure (from _Body) ------------------------------------------------

    def pause_body(self) -> None:
        """Too much body waits for the upstream: stop reading the client."""
        if not self._body_paused and self._transport is not None:
            self._body_paused = True
            self._transport.pause_reading()

    def resume_body(self) -> None:
        """The upstream took the body: read the client again (if it is still sending)."""
        if self._body_paused:
            self._body_paused = False
            if self._transport is not None and self._body_left and not self._reading_paused:
                self._transport.resume_reading()

    # -- internals ----------------------------------------------------------------------

    def _pause(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    async def _decide_later(self, exchange: _Exchange) -> None:
        door = self._door
        try:
            decision = await door.authorizer.authorize(exchange.facts)
        except Exception:  # never a stack trace to the caller; the log has it
            log.exception("proxy decision failed")
            self._deciding = False
            self._refuse(exchange, Reason.INTERNAL_ERROR, keep_alive=False)
            self._finish(exchange)
            return
        except asyncio.CancelledError:
            exchange.status = _CLIENT_CLOSED
            self._finish(exchange)
            raise
        door.served_later()
        self._deciding = False
        key = self._decided(exchange, decision)
        if key is not None and not self._relay_now(exchange, key):
            await self._relay(exchange, key)

    def _relay_now(self, exchange: _Exchange, key: Key) -> bool:
        """Relay by callbacks (True) when the whole request is here and an idle pooled
        connection to its upstream is too; else the head is kept for the task path."""
        body = exchange.body
        payload = b""
        if body is not None:
            whole = body.whole()
            if whole is None:
                return False  # the body streams on: the task path sends it
            payload = whole
        pool = self._door.handler.pool
        transport = self._transport
        head = exchange.head
        if pool is None or transport is None or head is None:
            return False
        conn = pool.take_idle(key)
        if conn is None:
            return False
        route = exchange.decision.route.name if exchange.decision is not None else "none"
        relay = self._live = CallbackRelay(self, exchange, key, pool, conn, self._door.sweep,
                                           route)
        self._door.callback_relays += 1
        relay.start(head, payload)
        if self._writable is not None:  # the client is not reading its answers yet
            relay.client_writable(False)
        return True

    # -- what the callback relay asks of its connection ---------------------------------

    def send_upstream(self, transport: asyncio.WriteTransport, data: bytes) -> None:
        """Write a whole request to its upstream connection at the end of this round."""
        self._door.send_later(transport, data, self._loop)

    # Response bytes to the client, in order, at the end of this round (the front's own
    # method under a public name: no extra call per write).
    deliver = FrontProtocol._deliver

    def abort(self) -> None:
        """Cut the client off now (nothing held is written)."""
        self._abort()

    @property
    def write_limit(self) -> float:
        """`proxy.write_timeout_seconds`: a client reading nothing that long is cut off."""
        return self._door.handler.write_timeout_seconds

    def observe_upstream(self, route: str, seconds: float) -> None:
        """Observe the time until the upstream's response head."""
        self._door.handler.observe_upstream(route, seconds)

    def hold_client(self, paused: bool) -> None:
        """The upstream is not reading what is written to it: stop reading the client."""
        transport = self._transport
        if transport is None:
            return
        if paused:
            transport.pause_reading()
        elif not self._reading_paused and not self._body_paused:
            transport.resume_reading()

    def relay_ended(self, exchange: _Exchange) -> None:
        """The callback relay is done: the slot back, the access line, the next request."""
        self._live = None
        self._give_slot(exchange)
        self._finish(exchange)

    def retry_fresh(self, exchange: _Exchange, key: Key) -> None:
        """The pooled connection was stale: send again once, on a new connection."""
        self._live = None
        self._task = self._door.spawn(self._relay(exchange, key, fresh=True))
        self._task.add_done_callback(lambda _: self._give_slot(exchange))

    def refuse_failed(self, exchange: _Exchange, exc: BaseException, route: str) -> None:
        """No answer came: count the upstream failure, answer 502/504 (either path)."""
        handler = self._door.handler
        self._refuse(exchange, handler.upstream_failed(exc, route, exchange.rid))

    def failed_midway(self, exchange: _Exchange, exc: BaseException, route: str) -> None:
        """The upstream failed after the head went out: count it, cut the client off."""
        handler = self._door.handler
        stream = exchange.body
        if stream is not None and stream.stalled:
            kind, exchange.reason = "body_idle", Reason.BODY_TIMEOUT
            handler.guard("request_body_idle")
        else:
            exchange.reason = handler.upstream_failed(exc, route, exchange.rid)
            kind = "upstream"
        log.warning("upstream failed mid-response; aborting the client connection",
                    extra={"route": route, "kind": kind, "request_id": exchange.rid})
        self._cut(exchange)

    def client_stalled(self, exchange: _Exchange, route: str) -> None:
        """The client read none of its answer in time: count it, cut both off."""
        self._door.handler.guard("response_write")
        log.warning("client stopped reading the response; closing both connections",
                    extra={"route": route, "request_id": exchange.rid})
        self._cut(exchange)

    def answer_head(self, exchange: _Exchange, status: int, reason: str,
                    pairs: list[tuple[str, str]], length: int | None,
                    body: bytes | None) -> tuple[bytes, bool] | None:
        """The client's head for the upstream's (and `body`), and whether to chunk the body
        after it; None when refused with 500 (a control character in the head)."""
        head = client_head(status, reason, pairs,
                           *self._head_facts(exchange, status, length, body))
        return head if head is not None else self._unsendable(exchange)

    def answer_head_raw(self, exchange: _Exchange, status: int, reason: bytes,
                        pairs: RawPairs, length: int | None,
                        body: bytes | None) -> tuple[bytes, bool] | None:
        """answer_head() for the upstream's raw head (the callback relay's): the same bytes."""
        head = client_head_raw(status, reason, pairs,
                               *self._head_facts(exchange, status, length, body))
        return head if head is not None else self._unsendable(exchange)

    def known_answer(self, exchange: _Exchange, known: KnownHead, body: bytes) -> bytes | None:
        """answer_head_raw()'s bytes for a known upstream head and its whole small body,
        from the head cut around the request id once per Date line; None when refused."""
        door = self._door
        cors = door.authorizer.cors
        if cors is None or not cors.enabled or exchange.decision is None:
            date = door.date.line()
            keep_alive = exchange.keep_alive
            around = known.derived.get((keep_alive, date))
            if around is None:
                derived = known.derived
                if len(derived) >= _KNOWN_ANSWERS:
                    derived.clear()
                around = derived[keep_alive, date] = raw_head_around_id(
                    known.status, known.reason, list(known.pairs), known.length,
                    exchange.method, keep_alive, date) or ()
            if around:
                exchange.status = known.status
                return b"".join((around[0], exchange.rid.encode(), around[1], body))
        head = self.answer_head_raw(exchange, known.status, known.reason, list(known.pairs),
                                    known.length, body)
        return head[0] if head is not None else None

    def _head_facts(self, exchange: _Exchange, status: int, length: int | None,
                    body: bytes | None) -> _HeadFacts:
        """What both head builders are told besides the upstream's head (its status kept)."""
        exchange.status = status
        door = self._door
        return (length, body, exchange.method, exchange.rid, exchange.keep_alive,
                door.date.line(), door.authorizer.cors, exchange.decision, exchange.facts.headers)

    def _unsendable(self, exchange: _Exchange) -> tuple[bytes, bool] | None:
        """A response head that cannot be sent (a control character): answered with 500
        (None: no head)."""
        log.error("upstream response head holds a control character",
                  extra={"request_id": exchange.rid})
        self._refuse(exchange, Reason.INTERNAL_ERROR, keep_alive=False)
        return None

    def _decided(self, exchange: _Exchange, decision: Decision) -> Key | None:
        """The lean pool's key for an allowed request (its head built); else refused or
        handed over (None)."""
        door = self._door
        exchange.decision = decision
        if not decision.allowed:
            self._refuse(exchange, decision.reason, decision.retry_after, door_reason=False)
            self._finish(exchange)
            return None
        if decision.reason is Reason.PREFLIGHT:
            self._preflight(exchange, decision)
            self._finish(exchange)
            return None
        if door.max_body_bytes and exchange.length > door.max_body_bytes:
            self._refuse(exchange, Reason.BODY_TOO_LARGE)
            self._finish(exchange)
            return None
        handler = door.handler
        headers = exchange.facts.headers
        # One client may hold only so many upstream slots at once (as in the aiohttp door).
        client = handler.take_slot(self._remote, headers)
        if client is None:
            self._refuse(exchange, Reason.TOO_MANY_REQUESTS)
            self._finish(exchange)
            return None
        lean = handler.lean_request(decision, exchange.method, exchange.target,
                                    exchange.length or None, exchange.fields, headers,
                                    self._remote, "http", exchange.rid)
        if lean is None or isinstance(lean, Reason):
            handler.give_slot(client)
            if lean is None:
                self._give_up()
            else:
                self._refuse(exchange, lean)
                self._finish(exchange)
            return None
        key, exchange.head = lean
        exchange.client = client
        self._late = []
        return key

    def _preflight(self, exchange: _Exchange, decision: Decision) -> None:
        """Answer an allowed CORS preflight with 204 (the upstream never sees it)."""
        origin = exchange.facts.headers.get(hdrs.ORIGIN, "")
        pairs = self._door.handler.preflight_headers(decision, origin, exchange.rid)
        exchange.status = 204
        head = encode_head(204, "No Content", pairs, keep_alive=exchange.keep_alive,
                           date=self._door.date.line())
        if head is None:
            self._refuse(exchange, Reason.INTERNAL_ERROR, keep_alive=False)
        else:
            self._deliver(head)

    def _give_up(self) -> None:
        """Hand the request, as it came, to the aiohttp door (its decision is made again)."""
        door = self._door
        door.metrics.in_flight_change("proxy", -1)
        data = b"".join((self._raw, *self._late, self._held))
        self._late, self._held, self._stream, self._body_left = [], b"", None, 0
        self._busy = False
        if self._transport is not None:
            self._transport.resume_reading()
        self._hand_over(data, "upstream")

    def _refuse(self, exchange: _Exchange, reason: Reason, retry_after: int | None = None, *,
                keep_alive: bool = True, door_reason: bool = True) -> None:
        """Write the JSON refusal; a body still on its way is read and dropped, then closed."""
        if door_reason:
            exchange.reason = reason  # the door refused a request the pipeline allowed
        exchange.status = reason.status
        exchange.keep_alive = exchange.keep_alive and keep_alive and not self._body_left
        if self._transport is None:
            return
        cors: CIMultiDict[str] = CIMultiDict()
        add_cors_headers(self._door.authorizer.cors, exchange.decision, exchange.method,
                         exchange.facts.headers, cors)
        self._deliver(refusal_answer(
            reason, exchange.rid, self._door.realm, retry_after, method=exchange.method,
            version="1.1", keep_alive=exchange.keep_alive, date=self._door.date.line(),
            extra=cors.items()))

    async def _relay(self, exchange: _Exchange, key: Key, *, fresh: bool = False
                     ) -> None:
        """Send the request upstream and relay the answer (never raises but cancellation);
        `fresh`: on a new connection (a callback relay's pooled one was stale)."""
        handler = self._door.handler
        route = exchange.decision.route.name if exchange.decision is not None else "none"
        pool = handler.pool
        body = exchange.body
        length = exchange.length if body is not None else None
        head = exchange.head
        try:
            assert head is not None, "a key comes with its head (_decided)"
            if pool is None:
                raise UpstreamError("the proxy is not started")
            sent = time.perf_counter()
            try:
                upstream = await pool.send(key, head, exchange.method, body, length,
                                           fresh=fresh)
            except _UPSTREAM_ERRORS as exc:
                if body is not None and body.stalled:
                    handler.guard("request_body_idle")  # nothing answered yet: say why, close
                    self._refuse(exchange, Reason.BODY_TIMEOUT, keep_alive=False)
                else:
                    self.refuse_failed(exchange, exc, route)
                return
            exchange.upstream_status = upstream.status
            handler.observe_upstream(route, time.perf_counter() - sent)
            try:
                await self._answer(exchange, upstream, route)
            finally:
                if upstream.at_eof:
                    upstream.release()
                else:
                    upstream.close()
        except asyncio.CancelledError:
            exchange.status = _CLIENT_CLOSED
            exchange.keep_alive = False
            self._abort()  # cut off (shutdown deadline): never a partial answer
            raise
        except Exception:  # never a stack trace to the caller; the log has it
            log.exception("proxy relay failed")
            if self._transport is not None and exchange.upstream_status is None:
                self._refuse(exchange, Reason.INTERNAL_ERROR, keep_alive=False)
            else:
                exchange.keep_alive = False
        finally:
            self._give_slot(exchange)
            self._finish(exchange)

    def _give_slot(self, exchange: _Exchange) -> None:
        """Release the per-client slot the exchange holds (once)."""
        client, exchange.client = exchange.client, None
        if client is not None:
            self._door.handler.give_slot(client)

    async def _answer(self, exchange: _Exchange, upstream: UpstreamResponse, route: str) -> None:
        """Write the upstream's answer as the aiohttp door writes it, the body as it comes."""
        if self._transport is None:
            return
        status = upstream.status
        length = upstream.content_length
        body = None
        if read_whole(status, exchange.method, length, SMALL_BODY):
            try:
                body = await upstream.read()
            except _UPSTREAM_ERRORS as exc:
                self.refuse_failed(exchange, exc, route)
                return
        head = self.answer_head(exchange, status, upstream.reason, list(upstream.headers.items()),
                                length, body)
        transport = self._transport
        if head is None or transport is None:
            return
        data, chunked = head
        self._deliver(data)
        if body is not None:
            return
        try:
            async for chunk in upstream.chunks():
                if self._transport is None:
                    return  # the client went away
                if chunked:
                    self._deliver(b"%x\r\n" % len(chunk))
                    self._deliver(chunk)
                    self._deliver(b"\r\n")
                else:
                    self._deliver(chunk)
                if self._writable is not None:
                    await self._drained()
            if chunked:
                self._deliver(b"0\r\n\r\n")
        except ClientStalled:
            self.client_stalled(exchange, route)
        except _UPSTREAM_ERRORS as exc:
            self.failed_midway(exchange, exc, route)

    async def _drained(self) -> None:
        """Wait until the client reads again; one that reads nothing in
        `proxy.write_timeout_seconds` stalls (ClientStalled), as in the aiohttp door."""
        writable = self._writable
        if writable is None:
            return
        try:
            async with asyncio.timeout(self._door.handler.write_timeout_seconds):
                await writable
        except TimeoutError:
            raise ClientStalled("the client read nothing in time") from None

    def _cut(self, exchange: _Exchange) -> None:
        """End an answer cut off midway: the client sees it incomplete, never reused."""
        exchange.keep_alive = False
        self._abort()

    def _finish(self, exchange: _Exchange) -> None:
        """The answer is written: observe it, then the next request (or close)."""
        self._task = None
        self._door.observer.end(exchange.started, exchange.rid, exchange.method,
                                exchange.status, exchange.decision, exchange.upstream_status,
                                exchange.reason)
        self._stream = None
        if self._body_left:  # the upstream answered before the whole body came: drop it
            exchange.keep_alive = False
        transport = self._transport
        if transport is None:
            return
        if self._body_left:  # refused mid-body: read and drop the rest, then close
            self._expired = True
            self._busy = False
            self.write_unsent()  # the answer, before the end of our side
            if transport.can_write_eof():
                transport.write_eof()
            transport.resume_reading()
            self._loop.call_later(_LINGER_SECONDS, self._close)
            return
        self._answered(exchange.keep_alive)
        if exchange.keep_alive and not self._closing:
            self._release()
