"""The shared llhttp front of both fast doors: heads parsed, checked and handed over alike.

A fast door is the public listener's connection protocol. This module holds what the
forward-auth door (fast_door.py) and the proxy door (fast_proxy.py) share: each request head
is parsed by llhttp (httptools) with the checks aiohttp's parser applies; the head deadline
and the keep-alive timeout are enforced; and a request the door does not fully understand
is handed over, bytes untouched, to aiohttp's guarded protocol, which then serves the
connection for the rest of its life (a pipelined request, HTTP/2 or 0.9, an upgrade, a
reserved or percent-encoded path, anything larger than the limits or refused by the parser).
Handing over is always safe: the aiohttp door is the reference both doors are tested against.

A head that comes whole in one read, exactly as one parsed before on a keep-alive request
without a body, is not parsed again: the door keeps what each such head gave, keyed by its
exact bytes (gateway/http/memo.py), and the same bytes from the parser's start state parse
the same way, through the same checks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import httptools
from aiohttp import hdrs
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_parser import SINGLETON_HEADERS
from aiohttp.tcp_helpers import tcp_keepalive
from multidict import CIMultiDict, CIMultiDictProxy, istr
from prometheus_client import Counter

from gateway.http.errors import JSON_CONTENT_TYPE, refusal_parts
from gateway.http.guard import refuse_late_head
from gateway.http.memo import ParseMemo
from gateway.metrics import Metrics
from gateway.reasons import Reason

__all__ = [
    "HANDOVER_CAUSES",
    "SERVER_LINE",
    "STATUS_LINES",
    "Field",
    "FrontDoor",
    "FrontProtocol",
    "HttpDate",
    "KnownRequest",
    "encode_answer",
    "encode_fields",
    "field_text",
    "refusal_answer",
    "unsafe_target",
]


# Why a request went to the aiohttp door (labels of the fast-door counters).
HANDOVER_CAUSES = ("pipelined", "body", "upgrade", "version", "target", "oversize", "malformed")
_BODY_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"expect"))
# aiohttp's parser spells the names it knows its own way (hdrs); so must the doors' output:
# lower-cased name -> (the name for the CIMultiDict, the same name as bytes).
_KNOWN_NAMES = {str(v).lower().encode(): (v, str(v).encode())
                for v in vars(hdrs).values() if isinstance(v, istr)}
# A header field as it came: (name as the doors spell it, lower-cased name, value) bytes.
Field = tuple[bytes, bytes, bytes]
_PERCENT, _HASH = ord("%"), ord("#")
# aiohttp refuses a second copy of these (and so must every door).
_SINGLETONS = frozenset(name.encode() for name in SINGLETON_HEADERS)
# The lower-cased names the checks look at, with what each is (one lookup per field).
_SINGLE, _FRAMING, _UPGRADING = 1, 2, 4
_SPECIAL = {name: (_SINGLE if name in _SINGLETONS else 0)
            | (_FRAMING if name in _BODY_HEADERS else 0)
            | (_UPGRADING if name in (b"upgrade", b"sec-websocket-key1") else 0)
            for name in (*_SINGLETONS, *_BODY_HEADERS, b"upgrade", b"sec-websocket-key1")}
# Answers carry the request's version, as aiohttp's do.
STATUS_LINES = {
    (version, s.value): f"HTTP/{version} {s.value} {s.phrase}\r\n".encode()
    for version in ("1.0", "1.1") for s in HTTPStatus
}
SERVER_LINE = f"Server: {SERVER_SOFTWARE}\r\n".encode()
# The memo of request heads parsed whole: at most this many, each at most this long.
_KNOWN_REQUESTS = 256
_KNOWN_REQUEST_BYTES = 8192


def unsafe_target(target: bytes) -> bool:
    """True for request targets the fast doors leave to aiohttp's router and parser.

    Reserved paths (/_gateway/...), percent-encoded or dot segments in the path (aiohttp
    decodes them before routing), fragments, non-ASCII and anything but an origin-form
    target go the long way.
    """
    path = target.split(b"?", 1)[0]
    # (an int or find(): `bytes in bytes` costs ten times as much on CPython 3.11)
    return (not path.startswith(b"/") or path.startswith(b"/_gateway") or _PERCENT in path
            or path.find(b"/.") >= 0 or _HASH in target or not target.isascii())


def field_text(name: bytes, lowered: bytes, value: bytes) -> tuple[tuple[str, str], Field]:
    """One header field (value stripped) as the doors keep it: text for the CIMultiDict the
    pipeline reads, and the bytes (known names spelled as aiohttp spells them)."""
    known = _KNOWN_NAMES.get(lowered)
    if known is None:
        return (istr(name.decode("utf-8", "surrogateescape")),
                value.decode("utf-8", "surrogateescape")), (name, lowered, value)
    return (known[0], value.decode("utf-8", "surrogateescape")), (known[1], lowered, value)


def encode_fields(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Header fields as `name: value` lines (UTF-8, as aiohttp encodes header text)."""
    return "".join([f"{name}: {value}\r\n" for name, value in pairs]).encode()


def encode_answer(status: int, pairs: Iterable[tuple[str, str]], body: bytes, *, method: str,
                  version: str, keep_alive: bool, date: bytes, encoded: bytes = b"") -> bytes:
    """A whole answer as aiohttp writes one: Content-Length (none for an empty HEAD answer),
    Connection as the version needs, Date, Server; a HEAD answer without its body.
    `encoded` holds header lines already encoded (`encode_fields`), written before `pairs`."""
    lines = [f"{name}: {value}\r\n" for name, value in pairs]
    if body or method != "HEAD":
        lines.append(f"Content-Length: {len(body)}\r\n")
    if version == "1.1":
        if not keep_alive:
            lines.append("Connection: close\r\n")
    elif keep_alive:
        lines.append("Connection: keep-alive\r\n")
    if method == "HEAD":
        body = b""  # the length a GET would get, without the body
    # UTF-8, as aiohttp encodes header text (a configured realm may be non-ASCII).
    return b"".join((STATUS_LINES[version, status], encoded, "".join(lines).encode(), date,
                     SERVER_LINE, b"\r\n", body))


def refusal_answer(reason: Reason, rid: str, realm: str, retry_after: int | None, *,
                   method: str, version: str, keep_alive: bool, date: bytes,
                   extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """The whole JSON refusal for a reason, as the aiohttp door sends it; `extra` are
    headers it adds (the CORS headers for an allowed origin)."""
    status, headers, body = refusal_parts(reason, rid, realm, retry_after)
    headers[hdrs.CONTENT_TYPE] = JSON_CONTENT_TYPE
    return encode_answer(status, [*headers.items(), *extra], body, method=method,
                         version=version, keep_alive=keep_alive, date=date)


class KnownRequest:
    """What a keep-alive request head without a body gave when it was parsed (its fields a
    tuple: what is worked out from them may be kept by them, as the proxy's upstream head)."""

    __slots__ = ("fields", "headers", "memo", "method", "target", "version")

    def __init__(self, method: str, target: str, headers: CIMultiDictProxy[str],
                 fields: tuple[Field, ...], version: str) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.fields = fields
        self.version = version
        self.memo: dict[object, object] = {}  # what the pipeline worked out from it (facts)


class HttpDate:
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


class FrontDoor:
    """What every fast door keeps: limits, its connections and tasks, the hand-over count."""

    def __init__(self, metrics: Metrics, counter: Counter, causes: tuple[str, ...], *,
                 max_head_bytes: int, max_headers: int, head_timeout: float,
                 keepalive_timeout: float) -> None:
        self.metrics = metrics
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.head_timeout = head_timeout
        self.keepalive_timeout = keepalive_timeout
        self.date = HttpDate()
        self.connections: set[FrontProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._unsent: list[FrontProtocol] = []  # connections holding answers of this round
        self._requests: list[tuple[asyncio.WriteTransport, bytes]] = []  # to upstreams
        self._flushing = False  # a write at the end of this round is scheduled
        self._handed: dict[str, Counter] = {c: counter.labels(c) for c in causes}
        # Request heads parsed whole, by their bytes (see the module's docstring).
        self.known: ParseMemo[bytes, KnownRequest] = ParseMemo(_KNOWN_REQUESTS,
                                                               _KNOWN_REQUEST_BYTES)

    def close_idle(self) -> None:
        """Close connections between requests; busy ones close once they have answered."""
        for connection in list(self.connections):
            connection.shut_down()

    async def drain(self, seconds: float) -> None:
        """Wait (up to `seconds`) for answers still being decided or relayed."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=seconds)

    def write_later(self, connection: FrontProtocol, loop: asyncio.AbstractEventLoop) -> None:
        """Write a connection's answers once this round of the loop has read everything.

        Answers written back to back, after the round's reads, wake a caller waiting for
        them once per round instead of once per answer; each wake-up of another process
        costs the writer kernel time (most on virtual machines). Nothing waits longer: the
        loop runs this before it reads again.
        """
        self._at_end_of_round(loop)
        self._unsent.append(connection)

    def send_later(self, transport: asyncio.WriteTransport, data: bytes,
                   loop: asyncio.AbstractEventLoop) -> None:
        """Write a request to an upstream connection at the end of this round, as answers
        are (nothing else is written to that connection until its response has come)."""
        self._at_end_of_round(loop)
        self._requests.append((transport, data))

    def _at_end_of_round(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._write_unsent)

    def _write_unsent(self) -> None:
        self._flushing = False
        requests, self._requests = self._requests, []
        for transport, data in requests:
            if not transport.is_closing():  # (a relay dropped meanwhile aborted it)
                transport.write(data)
        connections, self._unsent = self._unsent, []
        for connection in connections:
            connection.write_unsent()

    def handed_over(self, cause: str) -> None:
        """Count one request handed to the aiohttp door."""
        self.metrics.count(self._handed[cause])

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a connection's answer as a task the door waits for on shutdown."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


class FrontProtocol(asyncio.Protocol):
    """One connection: parse heads, serve what the door can, hand the rest to aiohttp."""

    # A request body the door streams itself (the proxy door); else bodies are handed over.
    accepts_bodies = False

    def __init__(self, door: FrontDoor, fallback: Callable[[], asyncio.Protocol]) -> None:
        self._front = door
        self._fallback = fallback
        self._parser = httptools.HttpRequestParser(self)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._pending = b""  # bytes of the request not answered yet
        self._raw = b""  # the bytes of the request being served, as they came
        self._begun = 0
        self._headed = False
        self._head_bytes = 0
        self._headers: list[tuple[str, str]] = []
        self._fields: Sequence[Field] = ()  # the same headers as bytes
        self._parsed: list[Field] = []  # the fields of the head being parsed
        self._memo: dict[object, object] | None = None  # the head's, when it is a known one
        self._seen: list[bytes] = []
        self._target = b""
        self._irregular: str | None = None
        self._length: int | None = None  # the request's Content-Length
        self._keep_alive = True
        self._version = ""
        self._served = 0
        self._last_active = 0.0  # loop time of the connection, last answer or a head's start
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # an answer is being decided or relayed
        self._held = b""  # bytes that arrived while busy
        self._reading_paused = False  # by the caller not reading its answers
        self._closing = False
        self._expired = False
        self._unsent: list[bytes] = []  # written at the end of this round (write_later)

    # -- what a door implements ---------------------------------------------------------

    def _request(self, method: str, target: str, headers: CIMultiDictProxy[str],
                 version: str, keep_alive: bool) -> None:
        """Serve one whole, regular request head (its body, if any, follows)."""
        raise NotImplementedError

    def _body(self, chunk: bytes) -> None:
        """Body bytes llhttp found with the head (only when `accepts_bodies`)."""

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the caller, start the idle deadline."""
        # uvloop's transports have asyncio.Transport's methods without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        tcp_keepalive(self._transport)
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple | list) and peer else None
        self._last_active = self._loop.time()
        self._front.connections.add(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Parse; serve a whole head; keep a split one; hand the irregular to aiohttp."""
        if self._expired:
            return  # a 408 is on its way; the rest is read and dropped
        if self._busy:  # read before reading paused: parse it after the answer
            self._held += data
            return
        door = self._front
        if not self._pending and self._keep_alive:  # the parser is at its start
            known = door.known.get(data)
            if known is not None:
                self._raw = data
                self._fields = known.fields
                self._memo = known.memo
                self._length = None
                self._request(known.method, known.target, known.headers, known.version, True)
                return
        pending = self._pending + data if self._pending else data
        if len(pending) > door.max_head_bytes and not self.accepts_bodies:
            self._hand_over(pending, "oversize")  # (a body-streaming door counts head bytes)
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
        if not self._headed:
            if len(pending) > door.max_head_bytes:
                self._hand_over(pending, "oversize")
                return
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
        self._raw = pending  # for a door that hands the request over after all
        self._fields = self._parsed  # (a list: a known head's are a tuple, see KnownRequest)
        self._pending = b""
        self._begun = 0
        self._headed = False
        method = parser.get_method().decode("ascii")
        target = self._target.decode("ascii")
        self._memo = None
        if (not door.known.resting and pending is data and self._keep_alive
                and self._length is None
                and data.find(b"\r\n\r\n") + 4 == len(data)):  # one whole head, no more
            known = KnownRequest(method, target, headers, tuple(self._parsed), version)
            door.known.keep(data, known)
            self._fields, self._memo = known.fields, known.memo
        self._request(method, target, headers, version, self._keep_alive)

    def eof_received(self) -> bool:
        """The caller closed its side: finish a pending answer, then close."""
        self.write_unsent()  # the transport closes itself on return
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
        self._front.connections.discard(self)
        self._transport = None
        self._unsent = []  # nobody left to read them

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
            self._parsed = []
            self._seen = []
            self._target = b""
            self._irregular = None
            self._length = None
            self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        """The request target (maybe in pieces)."""
        self._target += url
        self._head_bytes += len(url)
        if unsafe_target(self._target):
            self._irregular = "target"

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header field, checked as aiohttp's parser checks it."""
        value = value.rstrip(b" \t")  # llhttp strips the space before a value, not after
        lowered = name.lower()
        kind = _SPECIAL.get(lowered)
        if kind is None:  # the usual field: only its bytes are checked
            if 0 in value:  # a NUL byte
                self._irregular = "malformed"
        else:
            if kind & _SINGLE:
                if lowered in self._seen:
                    self._irregular = "malformed"
                self._seen.append(lowered)
            if kind & _FRAMING and (lowered != b"content-length" or value != b"0"):
                if (self.accepts_bodies and lowered == b"content-length" and value.isdigit()
                        and value.isascii()):
                    self._length = int(value)
                else:
                    self._irregular = "body"
            elif kind & _UPGRADING:
                self._irregular = "upgrade"
            elif 0 in value:
                self._irregular = "malformed"
        headers = self._headers
        text, field = field_text(name, lowered, value)
        headers.append(text)
        self._parsed.append(field)
        self._head_bytes += len(name) + len(value) + 4
        if (len(headers) > self._front.max_headers
                or self._head_bytes > self._front.max_head_bytes):
            self._irregular = "oversize"

    def on_headers_complete(self) -> None:
        """Read what llhttp forgets once the message is complete."""
        parser = self._parser
        self._headed = True
        self._keep_alive = parser.should_keep_alive()
        self._version = parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        """A body: the proxy door streams it; otherwise the aiohttp door reads bodies."""
        if self.accepts_bodies and self._length is not None:
            self._body(body)
        else:
            self._irregular = "body"

    # -- for the doors ------------------------------------------------------------------

    def _send(self, answer: bytes, keep_alive: bool) -> None:
        """Write a whole answer (at the end of this round) and end the request on it."""
        if self._transport is None:
            return
        self._deliver(answer)
        self._answered(keep_alive)

    def _deliver(self, data: bytes) -> None:
        """Write bytes to the caller at the end of this round, after those held already
        (every write of a door to its caller goes this way, so their order holds)."""
        if self._transport is None:
            return
        if not self._unsent:
            self._front.write_later(self, self._loop)
        self._unsent.append(data)

    def write_unsent(self) -> None:
        """Write what is held for the end of the round, before anything else is."""
        unsent = self._unsent
        if unsent:
            self._unsent = []
            transport = self._transport
            if transport is not None:
                if len(unsent) == 1:
                    transport.write(unsent[0])
                else:
                    transport.writelines(unsent)

    def _abort(self) -> None:
        """Cut the connection now: what is held is never written."""
        self._unsent = []
        if self._transport is not None:
            self._transport.abort()

    def _answered(self, keep_alive: bool) -> None:
        """The answer is written: close after it when the caller or a shutdown asks."""
        self._served += 1
        self._last_active = self._loop.time()
        if self._served == 1:
            self._rearm()  # from the head deadline to the keep-alive timeout
        if not keep_alive or self._closing:
            self._close()

    def _hold(self) -> None:
        """One answer at a time, in order: stop reading until this one is written."""
        self._busy = True
        if self._transport is not None:
            self._transport.pause_reading()

    def _release(self) -> None:
        """The answer is written: parse what arrived meanwhile, read again."""
        self._busy = False
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
        self._front.handed_over(cause)
        self._disarm()
        self.write_unsent()  # aiohttp's answers come after the ones given already
        self._front.connections.discard(self)
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
        self.write_unsent()
        self._front.connections.discard(self)
        if self._transport is not None:
            self._transport.close()

    def _idle_limit(self) -> float:
        """Seconds the connection may wait: the head deadline before the first request and
        while a head is arriving, the keep-alive timeout between requests."""
        door = self._front
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
        self.write_unsent()
        if self._busy:  # deciding an answer: look again in a second
            self._timer = self._loop.call_later(1.0, self._on_timer)
            return
        if self._loop.time() - self._last_active < self._idle_limit():
            self._arm()  # active since: wait again from the last activity
            return
        self._front.connections.discard(self)
        if self._served and not self._pending:
            transport.close()
        else:
            self._expired = True
            refuse_late_head(transport, self._loop, transport.close)
