"""The forward-auth fast door: decisions answered without aiohttp's request objects.

Forward-auth callers (Traefik, nginx, Caddy, Envoy) ask about the same session tokens again
and again over keep-alive connections. For those requests aiohttp's per-request machinery
(request and response objects, a handler task, the router) costs more than the decision.
The fast door is the public listener's connection protocol in forward-auth mode. It parses
each request head with llhttp (httptools), applying the checks aiohttp's parser applies, and
answers with the same ForwardAuthHandler pieces as the aiohttp door:

- a decision the pipeline can make without I/O (`Authorizer.authorize_now`: a cached token,
  a revocation status known locally) is answered at once, with no task and no await;
- a decision that needs I/O (a token not seen yet, a status to fetch) is answered by a task,
  with reading paused until it is written, so answers keep their order.

A request the fast door does not fully understand is handed over, bytes untouched, to
aiohttp's guarded protocol, which then serves the connection for the rest of its life: a
body, a pipelined request, HTTP/2 or 0.9, an upgrade, a reserved or percent-encoded path,
anything larger than the configured limits or refused by the parser. Handing over is always
safe: the aiohttp door is the reference both doors are tested against.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import httptools
from aiohttp import hdrs
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_parser import SINGLETON_HEADERS
from aiohttp.tcp_helpers import tcp_keepalive
from multidict import CIMultiDict, CIMultiDictProxy, istr
from prometheus_client import Counter

from gateway.http.errors import JSON_CONTENT_TYPE, refusal_parts
from gateway.http.forward_auth import ConflictingForwardedRequest, ForwardAuthHandler
from gateway.http.guard import refuse_late_head
from gateway.http.headers import new_request_id, request_id
from gateway.metrics import Metrics
from gateway.pipeline import Decision, RequestFacts
from gateway.reasons import Reason

__all__ = ["HANDOVER_CAUSES", "FastDoor", "FastDoorProtocol"]

log = logging.getLogger("gateway.fast_door")

# Why a request went to the aiohttp door (labels of the fast-door counter).
HANDOVER_CAUSES = ("pipelined", "body", "upgrade", "version", "target", "oversize", "malformed")
_BODY_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"expect"))
# aiohttp refuses a second copy of these (and so must every door).
_SINGLETONS = frozenset(name.encode() for name in SINGLETON_HEADERS)
# Answers carry the request's version, as aiohttp's do.
_STATUS_LINES = {
    (version, s.value): f"HTTP/{version} {s.value} {s.phrase}\r\n".encode()
    for version in ("1.0", "1.1") for s in HTTPStatus
}
_SERVER = f"Server: {SERVER_SOFTWARE}\r\n\r\n".encode()


def unsafe_target(target: bytes) -> bool:
    """True for request targets the fast door leaves to aiohttp's router and parser.

    Reserved paths (/_gateway/...), percent-encoded or dot segments in the path (aiohttp
    decodes them before routing), fragments, non-ASCII and anything but an origin-form
    target go the long way.
    """
    path = target.split(b"?", 1)[0]
    return (not path.startswith(b"/") or path.startswith(b"/_gateway") or b"%" in path
            or b"/." in path or b"#" in target or not target.isascii())


class _HttpDate:
    """The Date header line, formatted once per second."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        """`Date: ...\\r\\n` for the current second."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self._line


class _Request:
    """One parsed request on its way to an answer."""

    __slots__ = ("facts", "keep_alive", "method", "rid", "started", "version")

    def __init__(self, method: str, rid: str, version: str, keep_alive: bool,
                 started: float) -> None:
        self.method = method
        self.rid = rid
        self.version = version
        self.keep_alive = keep_alive
        self.started = started
        self.facts: RequestFacts | None = None


class FastDoor:
    """One listener's fast door: decides and answers, and tracks its connections."""

    def __init__(
        self,
        handler: ForwardAuthHandler,
        metrics: Metrics,
        *,
        max_head_bytes: int,
        max_headers: int,
        head_timeout: float,
        keepalive_timeout: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._handler = handler
        self._metrics = metrics
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.head_timeout = head_timeout
        self.keepalive_timeout = keepalive_timeout
        self._clock = clock
        self._date = _HttpDate()
        self.connections: set[FastDoorProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        counter = metrics.fast_path
        self._answered = counter.labels("answered")
        self._answered_later = counter.labels("answered_after_io")
        self._handed: dict[str, Counter] = {c: counter.labels(c) for c in HANDOVER_CAUSES}

    def protocol(self, fallback: Callable[[], asyncio.Protocol]) -> FastDoorProtocol:
        """A protocol for one new connection; `fallback` makes the aiohttp protocol."""
        return FastDoorProtocol(self, fallback)

    def close_idle(self) -> None:
        """Close connections between requests; busy ones close once they have answered."""
        for connection in list(self.connections):
            connection.shut_down()

    async def drain(self, seconds: float) -> None:
        """Wait (up to `seconds`) for answers still being decided."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=seconds)

    def handed_over(self, cause: str) -> None:
        """Count one request handed to the aiohttp door."""
        self._metrics.count(self._handed[cause])

    def begin(self, method: str, target: str, headers: CIMultiDictProxy[str],
              remote: str | None, version: str, keep_alive: bool,
              ) -> tuple[_Request, bytes | None]:
        """Start one request: its answer when no I/O is needed, else None for `finish`."""
        started = self._clock()
        handler = self._handler
        request = _Request(method, request_id(headers), version, keep_alive, started)
        try:
            facts = handler.facts(method, target, remote, headers)
        except ConflictingForwardedRequest:
            decision: Decision | None = handler.refuse_conflict()
        else:
            decision = handler.authorizer.authorize_now(facts)
            if decision is None:
                request.facts = facts
                return request, None
        self._metrics.count(self._answered)
        return request, self._respond(request, decision)

    async def finish(self, request: _Request) -> bytes:
        """The answer to a request whose decision needs I/O (never raises)."""
        metrics = self._metrics
        metrics.in_flight_change("forward_auth", 1)
        try:
            assert request.facts is not None
            decision = await self._handler.authorizer.authorize(request.facts)
            metrics.count(self._answered_later)
            return self._respond(request, decision)
        except Exception:  # never a stack trace to the caller; the log has it
            log.exception("forward-auth decision failed")
            request.keep_alive = False  # a broken decision ends the connection too
            return self._respond(request, None)
        finally:
            metrics.in_flight_change("forward_auth", -1)

    def failure(self, version: str) -> bytes:
        """A 500 JSON answer that closes the connection, for a request that broke a door."""
        request = _Request("GET", new_request_id(), version, False, self._clock())
        return self._respond(request, None)

    def _respond(self, request: _Request, decision: Decision | None) -> bytes:
        """The whole HTTP response for a decision (None: an internal error), observed."""
        handler = self._handler
        rid = request.rid
        pairs: Iterable[tuple[str, str]]
        if decision is not None and decision.allowed:
            status, body = 200, b""
            pairs = handler.allow_headers(decision, rid)
        else:
            reason = decision.reason if decision is not None else Reason.INTERNAL_ERROR
            retry_after = decision.retry_after if decision is not None else None
            status, headers, body = refusal_parts(reason, rid, handler.realm, retry_after)
            headers[hdrs.CONTENT_TYPE] = JSON_CONTENT_TYPE
            pairs = headers.items()
        lines = [f"{name}: {value}\r\n" for name, value in pairs]
        if body or request.method != "HEAD":  # as aiohttp: no `Content-Length: 0` on HEAD
            lines.append(f"Content-Length: {len(body)}\r\n")
        if request.version == "1.1":
            if not request.keep_alive:
                lines.append("Connection: close\r\n")
        elif request.keep_alive:
            lines.append("Connection: keep-alive\r\n")
        if request.method == "HEAD":
            body = b""  # the length a GET would get, without the body
        handler.observer.observe(request.started, rid, request.method, status, decision)
        # UTF-8, as aiohttp encodes header text (a configured realm may be non-ASCII).
        return b"".join((_STATUS_LINES[request.version, status], "".join(lines).encode(),
                         self._date.line(), _SERVER, body))


class FastDoorProtocol(asyncio.Protocol):
    """One connection: answer what the fast door can, hand the rest to aiohttp for good."""

    def __init__(self, door: FastDoor, fallback: Callable[[], asyncio.Protocol]) -> None:
        self._door = door
        self._fallback = fallback
        self._parser = httptools.HttpRequestParser(self)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._pending = b""  # bytes of the request not answered yet
        self._begun = 0
        self._complete = 0
        self._headers: list[tuple[str, str]] = []
        self._seen: list[bytes] = []
        self._target = b""
        self._irregular: str | None = None
        self._keep_alive = True
        self._version = ""
        self._served = 0
        self._last_active = 0.0  # loop time of the connection, last answer or a head's start
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # an answer is being decided
        self._held = b""  # bytes that arrived while busy
        self._reading_paused = False  # by the caller not reading its answers
        self._closing = False
        self._expired = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the caller, start the idle deadline."""
        # uvloop's transports have asyncio.Transport's methods without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        tcp_keepalive(self._transport)
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple | list) and peer else None
        self._last_active = self._loop.time()
        self._door.connections.add(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Parse; answer a whole request; keep a split one; hand the irregular to aiohttp."""
        if self._expired:
            return  # a 408 is on its way; the rest is read and dropped
        if self._busy:  # read before reading paused: parse it after the answer
            self._held += data
            return
        pending = self._pending + data if self._pending else data
        if len(pending) > self._door.max_head_bytes:
            self._hand_over(pending, "oversize")
            return
        parser = self._parser
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._hand_over(pending, "upgrade")
            return
        except httptools.HttpParserError:
            self._hand_over(pending, "malformed")
            return
        if self._begun > 1:
            self._hand_over(pending, "pipelined")
            return
        if self._irregular is not None:
            self._hand_over(pending, self._irregular)
            return
        if not self._complete:
            started = not self._pending
            self._pending = pending
            if started:  # a head has started: its deadline runs from now
                self._last_active = self._loop.time()
                self._rearm()
            return
        version = self._version
        if version != "1.1" and version != "1.0":
            self._hand_over(pending, "version")
            return
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        if version == "1.1" and hdrs.HOST not in headers:
            self._hand_over(pending, "malformed")  # aiohttp refuses HTTP/1.1 without Host
            return
        self._pending = b""
        self._begun = self._complete = 0
        try:
            request, answer = self._door.begin(
                parser.get_method().decode("ascii"), self._target.decode("ascii"), headers,
                self._remote, version, self._keep_alive)
        except Exception:  # a bug must cost one 500 JSON answer, not the connection's reset
            log.exception("forward-auth decision failed")
            self._send(self._door.failure(version), keep_alive=False)
            return
        if answer is not None:
            self._send(answer, request.keep_alive)
            return
        self._busy = True
        assert self._transport is not None
        self._transport.pause_reading()  # one answer at a time, in order
        task = self._loop.create_task(self._answer_later(request))
        self._door.tasks.add(task)
        task.add_done_callback(self._door.tasks.discard)

    def eof_received(self) -> bool:
        """The caller closed its side: finish a pending answer, then close."""
        self._closing = True
        return self._busy  # keep the transport open for an answer still being decided

    def pause_writing(self) -> None:
        """The caller stopped reading its answers: stop reading its requests."""
        self._reading_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        """The caller reads again."""
        self._reading_paused = False
        self._resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Forget the connection."""
        self._disarm()
        self._door.connections.discard(self)
        self._transport = None

    def shut_down(self) -> None:
        """Close now if idle, else after the answer being decided."""
        self._closing = True
        if not self._busy:
            self._close()

    # -- llhttp callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A request starts."""
        self._begun += 1
        if self._begun == 1:
            self._headers = []
            self._seen = []
            self._target = b""
            self._irregular = None

    def on_url(self, url: bytes) -> None:
        """The request target (maybe in pieces)."""
        self._target += url
        if unsafe_target(self._target):
            self._irregular = "target"

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header field, checked as aiohttp's parser checks it."""
        value = value.rstrip(b" \t")  # llhttp strips the space before a value, not after
        lowered = name.lower()
        if lowered in _SINGLETONS:
            if lowered in self._seen:
                self._irregular = "malformed"
            self._seen.append(lowered)
        if lowered in _BODY_HEADERS and (lowered != b"content-length" or value != b"0"):
            self._irregular = "body"
        elif lowered == b"upgrade" or lowered == b"sec-websocket-key1":
            self._irregular = "upgrade"
        elif b"\x00" in value:
            self._irregular = "malformed"
        headers = self._headers
        headers.append((istr(name.decode("utf-8", "surrogateescape")),
                        value.decode("utf-8", "surrogateescape")))
        if len(headers) > self._door.max_headers:
            self._irregular = "oversize"

    def on_headers_complete(self) -> None:
        """Read what llhttp forgets once the message is complete."""
        parser = self._parser
        self._keep_alive = parser.should_keep_alive()
        self._version = parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        """A body: the aiohttp door reads bodies."""
        self._irregular = "body"

    def on_message_complete(self) -> None:
        """The request is whole."""
        self._complete += 1

    # -- internals ----------------------------------------------------------------------

    def _send(self, answer: bytes, keep_alive: bool) -> None:
        """Write an answer; close after it when the caller or a shutdown asks."""
        transport = self._transport
        if transport is None:
            return
        transport.write(answer)
        self._served += 1
        self._last_active = self._loop.time()
        if self._served == 1:
            self._rearm()  # from the head deadline to the keep-alive timeout
        if not keep_alive or self._closing:
            self._close()

    async def _answer_later(self, request: _Request) -> None:
        answer = await self._door.finish(request)
        self._busy = False
        self._send(answer, request.keep_alive)
        if self._held and self._transport is not None:
            held, self._held = self._held, b""
            self.data_received(held)
        self._resume_reading()

    def _resume_reading(self) -> None:
        transport = self._transport
        if (transport is not None and not self._busy and not self._reading_paused
                and not transport.is_closing()):
            transport.resume_reading()

    def _hand_over(self, data: bytes, cause: str) -> None:
        """Give the connection (and the bytes not answered yet) to aiohttp, for good."""
        self._door.handed_over(cause)
        self._disarm()
        self._door.connections.discard(self)
        transport = self._transport
        self._transport = None
        if transport is None:
            return
        protocol = self._fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(data)

    def _close(self) -> None:
        self._disarm()
        self._door.connections.discard(self)
        if self._transport is not None:
            self._transport.close()

    def _idle_limit(self) -> float:
        """Seconds the connection may wait: the head deadline before the first request and
        while a head is arriving, the keep-alive timeout between requests."""
        door = self._door
        if (self._pending or not self._served) and door.head_timeout > 0:
            return door.head_timeout
        return door.keepalive_timeout

    def _arm(self) -> None:
        limit = self._idle_limit()
        if limit > 0:
            self._timer = self._loop.call_at(self._last_active + limit, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _rearm(self) -> None:
        self._disarm()
        self._arm()

    def _on_timer(self) -> None:
        """Close an idle connection; answer 408 to a head that did not arrive in time."""
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        if self._busy:  # deciding an answer: look again in a second
            self._timer = self._loop.call_later(1.0, self._on_timer)
            return
        if self._loop.time() - self._last_active < self._idle_limit():
            self._arm()  # active since: wait again from the last activity
            return
        self._door.connections.discard(self)
        if self._served and not self._pending:
            transport.close()
        else:
            self._expired = True
            refuse_late_head(transport, self._loop, transport.close)
