"""Sidecar door: authorize through the pipeline, then stream the request to the upstream.

Bodies flow through in both directions without being buffered whole (chunked encoding
included, back-pressure both ways), responses are flushed as the upstream produces them (SSE),
WebSocket upgrades are relayed frame by frame, and upstream failures become 502/504 with the
JSON error body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import unquote_plus, urlsplit

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping
from yarl import URL

from gateway.clients import ClientAddresses
from gateway.config import Settings
from gateway.http.bounded_body import answer_and_close
from gateway.http.client_slots import ClientSlots
from gateway.http.errors import error_response
from gateway.http.front import Field
from gateway.http.headers import DECISION, REQUEST_ID, request_id
from gateway.http.hop import HeaderHygiene
from gateway.http.lean_head import LeanHead, usable_id
from gateway.http.memo import ParseMemo
from gateway.http.observe import RequestObserver
from gateway.http.strict_client import StrictConnector
from gateway.http.upstream import (
    Key,
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamReset,
)
from gateway.http.websocket import OpenSockets, SocketHandle, relay
from gateway.metrics import Metrics
from gateway.pipeline import Authorizer, Decision, RequestFacts
from gateway.reasons import Reason
from gateway.routing import Route

__all__ = ["SMALL_BODY", "BodyStalled", "BodyTooLarge", "ClientStalled", "LeanPlan",
           "ProxyHandler", "classify_failure"]

log = logging.getLogger("gateway.proxy")

# Bodies up to this size with a Content-Length are read whole and sent with the headers.
SMALL_BODY = 64 * 1024
_KEPT_HEADS = 256  # upstream heads kept cut around the request id (lean_request)
_NO_BODY_STATUSES = frozenset({204, 304})
_SKIP_AUTO_HEADERS = (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE)
# The access line's status when the client went away before an answer (nginx's convention).
_CLIENT_CLOSED = 499


class BodyTooLarge(Exception):
    """The client's request body passed the configured limit while streaming."""


class BodyStalled(Exception):
    """The client's request body made no progress for `proxy.body_idle_timeout_seconds`."""


class ClientStalled(Exception):
    """The client read none of the response for `proxy.write_timeout_seconds`."""


class _Exchange:
    """What the access line needs beyond the decision, filled in as the request goes."""

    __slots__ = ("observed", "reason", "upstream_status")

    def __init__(self) -> None:
        self.upstream_status: int | None = None  # None: the upstream was not reached
        self.reason: Reason | None = None  # set when the door refused an allowed request
        self.observed = False  # the WebSocket path writes its line at the upgrade


class _BodyState:
    __slots__ = ("stalled", "too_large")

    def __init__(self) -> None:
        self.too_large = False
        self.stalled = False


async def _stream_body(
    content: aiohttp.StreamReader, limit: int, state: _BodyState, idle_seconds: float
) -> AsyncIterator[bytes]:
    """Yield the request body as it arrives, failing (never truncating) past the limit or
    when no byte arrives for `idle_seconds`."""
    seen = 0
    while True:
        try:
            async with asyncio.timeout(idle_seconds):
                chunk = await content.readany()
        except TimeoutError:
            state.stalled = True
            raise BodyStalled(f"no request body byte for {idle_seconds:g} s") from None
        if not chunk:
            return
        seen += len(chunk)
        if limit and seen > limit:
            state.too_large = True
            raise BodyTooLarge(f"request body over {limit} bytes")
        yield chunk


def classify_failure(exc: BaseException) -> tuple[str, Reason]:
    """The metric kind and the reason for an upstream failure."""
    if isinstance(exc, UpstreamBusy):
        return "busy", Reason.UPSTREAM_BUSY
    if isinstance(exc, TimeoutError):
        return "timeout", Reason.UPSTREAM_TIMEOUT
    if isinstance(exc, UpstreamConnectError):
        return "connect", Reason.UPSTREAM_UNAVAILABLE
    if isinstance(exc, UpstreamReset):
        return "reset", Reason.UPSTREAM_UNAVAILABLE
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect", Reason.UPSTREAM_UNAVAILABLE
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
                  | aiohttp.ClientPayloadError | ConnectionError):
        return "reset", Reason.UPSTREAM_UNAVAILABLE
    return "other", Reason.UPSTREAM_UNAVAILABLE


def _strip_query_param(query: str, name: str) -> str:
    """The raw query string without any `name=` parameter (the WebSocket token)."""
    kept = [
        part for part in query.split("&")
        if part and unquote_plus(part.partition("=")[0]) != name
    ]
    return "&".join(kept)


_UPSTREAM_ERRORS = (aiohttp.ClientError, UpstreamError, TimeoutError, BodyTooLarge, BodyStalled)
# The lean pool's (host, port), the request target, the upstream request headers and their
# lower-cased names.
LeanPlan = tuple[tuple[str, int], str, list[tuple[str, str]], list[str]]


class _Upstream(Protocol):
    """What the relay needs of an upstream response, from either client."""

    @property
    def status(self) -> int:
        """The response status."""

    @property
    def reason(self) -> str | None:
        """The response reason phrase."""

    @property
    def headers(self) -> Any:
        """The response headers."""

    @property
    def content_length(self) -> int | None:
        """The declared body length, if any."""

    @property
    def at_eof(self) -> bool:
        """True once the body was read to its end."""

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, as it arrives."""

    async def read(self) -> bytes:
        """The whole (small) body."""

    def release(self) -> None:
        """Give a cleanly finished connection back."""

    def close(self) -> None:
        """Drop the connection."""


class _AiohttpUpstream:
    """aiohttp's client response seen through the relay's interface."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.reason = response.reason
        self.headers = response.headers

    @property
    def content_length(self) -> int | None:
        """The declared body length, if any."""
        return self._response.content_length

    @property
    def at_eof(self) -> bool:
        """True once the body was read to its end."""
        return self._response.content.at_eof()

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, as it arrives."""
        return self._response.content.iter_any()

    async def read(self) -> bytes:
        """The whole (small) body."""
        return await self._response.read()

    def release(self) -> None:
        """Give the connection back to aiohttp's pool."""
        self._response.release()

    def close(self) -> None:
        """Drop the connection."""
        self._response.close()


class ProxyHandler:
    """The catch-all handler of the public listener in proxy mode."""

    def __init__(
        self,
        settings: Settings,
        authorizer: Authorizer,
        metrics: Metrics,
        sockets: OpenSockets,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert settings.upstream, "the proxy needs an upstream"
        proxy = settings.proxy
        self._settings = settings
        self._authorizer = authorizer
        self._metrics = metrics
        self._sockets = sockets
        self._clock = clock
        self._realm = settings.realm
        self._default = settings.upstream.rstrip("/")
        self._limit = proxy.max_body_bytes
        self._ws_param = proxy.websocket_query_token
        self._ws_expiry = proxy.websocket_close_on_expiry
        self._ws_max = proxy.websocket_max_message_bytes
        self._leeway = settings.leeway_seconds
        self._body_idle = proxy.body_idle_timeout_seconds
        self._write_timeout = proxy.write_timeout_seconds
        self._ws_idle = proxy.websocket_idle_timeout_seconds
        self._addresses = ClientAddresses(proxy.trusted_proxies)
        self._hygiene = HeaderHygiene(settings, self._addresses)
        self._lean_head = LeanHead(self._hygiene)
        self._heads: ParseMemo[tuple[object, ...], tuple[Route, Key, bytes, bytes]] = (
            ParseMemo(_KEPT_HEADS, 9))
        self._client_requests = ClientSlots(proxy.max_requests_per_client)
        self._client_sockets = ClientSlots(proxy.websocket_max_per_client)
        self._session: aiohttp.ClientSession | None = None
        self._ws_session: aiohttp.ClientSession | None = None
        self._pool: UpstreamPool | None = None
        self._lean = proxy.client == "lean"
        self._bases: dict[str, tuple[str, int, str] | None] = {}
        self._durations: dict[str, Any] = {}
        self._observer = RequestObserver(metrics, "proxy")

    async def start(self) -> None:
        """Open the upstream client: one bounded keep-alive pool, reused by every request."""
        proxy = self._settings.proxy
        connector = StrictConnector(
            limit=proxy.max_connections,
            limit_per_host=proxy.max_connections_per_upstream,
            keepalive_timeout=proxy.keepalive_seconds,
            ttl_dns_cache=300,
            pool_timeout=proxy.pool_timeout_seconds,
        )
        self._session = self._client_session(connector)
        # WebSockets hold their connection for their whole life: their own bounded connector,
        # so idle sockets can never take the slots plain requests need.
        self._ws_session = self._client_session(StrictConnector(
            limit=proxy.websocket_max_connections, limit_per_host=0, ttl_dns_cache=300,
            pool_timeout=proxy.pool_timeout_seconds))
        if self._lean:
            self._pool = UpstreamPool(
                limit=proxy.max_connections, limit_per_upstream=proxy.max_connections_per_upstream,
                keepalive_seconds=proxy.keepalive_seconds,
                connect_timeout=proxy.connect_timeout_seconds,
                read_timeout=proxy.read_timeout_seconds,
                acquire_timeout=proxy.pool_timeout_seconds)

    def _client_session(self, connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
        """An aiohttp client session for upstream requests over the given connector."""
        proxy = self._settings.proxy
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=proxy.connect_timeout_seconds,
                sock_read=proxy.read_timeout_seconds),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            trust_env=False,
        )

    async def close(self) -> None:
        """Close the upstream client and its pooled connections."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._ws_session is not None:
            await self._ws_session.close()
            self._ws_session = None

    @property
    def pool(self) -> UpstreamPool | None:
        """The lean upstream pool (None with `proxy.client: aiohttp` or before start)."""
        return self._pool

    @property
    def observer(self) -> RequestObserver:
        """The proxy door's in-flight gauge, latency and access log (either door)."""
        return self._observer

    @property
    def hygiene(self) -> HeaderHygiene:
        """Header hygiene for upstream requests and client responses (either door)."""
        return self._hygiene

    @property
    def body_idle_seconds(self) -> float:
        """`proxy.body_idle_timeout_seconds`: a request body making no progress is cut."""
        return self._body_idle

    @property
    def read_timeout_seconds(self) -> float:
        """`proxy.read_timeout_seconds`: an upstream sending nothing that long times out."""
        return self._settings.proxy.read_timeout_seconds

    @property
    def write_timeout_seconds(self) -> float:
        """`proxy.write_timeout_seconds`: a client reading none of its response is cut."""
        return self._write_timeout

    def take_slot(self, peer: str | None, headers: MultiMapping[str],
                  websocket: bool = False) -> str | None:
        """Hold one of the client's upstream slots (either door): its key, or None (counted)
        when the client already holds its share."""
        client = self._addresses.of(peer, headers)
        if (self._client_sockets if websocket else self._client_requests).take(client):
            return client
        self.guard("client_websockets" if websocket else "client_requests")
        return None

    def give_slot(self, client: str, websocket: bool = False) -> None:
        """Release a slot held with take_slot()."""
        (self._client_sockets if websocket else self._client_requests).give(client)

    def facts(self, method: str, uri: str, headers: CIMultiDictProxy[str],
              client_ip: str | None, query: Mapping[str, str] | None = None,
              memo: dict[object, object] | None = None) -> RequestFacts:
        """What the pipeline decides a proxied request on (either door; `memo`: the fast
        door's for this head, see RequestFacts)."""
        # (by position: keywords cost a mapping per call, and this is on every request)
        return RequestFacts("proxy", method, uri, headers.get(hdrs.HOST), headers, query,
                            client_ip, self._addresses, memo)

    def lean_only(self) -> bool:
        """True when the lean pool serves every configured upstream (all plain http://)."""
        upstreams = [self._default, *(r.upstream for r in self._settings.routes if r.upstream)]
        return self._lean and all(self._base(u.rstrip("/")) is not None for u in upstreams)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Authorize, then forward (or relay the WebSocket), observed for the access log."""
        started = self._observer.begin()
        exchange = _Exchange()
        rid = request_id(request.headers)
        status = 500
        try:
            response = await self._handle(request, rid, started, exchange)
            if exchange.reason is Reason.BODY_TIMEOUT and not response.prepared:
                await answer_and_close(request, response)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = _CLIENT_CLOSED
            raise
        finally:
            if not exchange.observed:
                self._observer.end(started, rid, request.method, status, request.get(DECISION),
                                   exchange.upstream_status, exchange.reason)

    async def _handle(self, request: web.Request, rid: str, started: float,
                      exchange: _Exchange) -> web.StreamResponse:
        headers = request.headers
        upgrade = headers.get(hdrs.UPGRADE)
        websocket = (upgrade is not None and upgrade.lower() == "websocket"
                     and request.method == hdrs.METH_GET)
        facts = self.facts(request.method, request.raw_path, headers, request.remote,
                           request.query if websocket and self._ws_param else None)
        decision = await self._authorizer.authorize(facts)
        request[DECISION] = decision
        if not decision.allowed:
            return error_response(decision.reason, rid, self._realm, decision.retry_after)
        if decision.reason is Reason.PREFLIGHT:
            return self._preflight(decision, headers.get(hdrs.ORIGIN, ""), rid)
        length = request.content_length
        if self._limit and length is not None and length > self._limit:
            return self._refuse(Reason.BODY_TOO_LARGE, rid, exchange)
        # One client may hold only so many upstream slots (requests, sockets) at once.
        client = self.take_slot(request.remote, headers, websocket)
        if client is None:
            return self._refuse(Reason.TOO_MANY_REQUESTS, rid, exchange)
        try:
            return await self._dispatch(request, decision, websocket, rid, started, exchange)
        finally:
            self.give_slot(client, websocket)

    async def _dispatch(self, request: web.Request, decision: Decision, websocket: bool,
                        rid: str, started: float, exchange: _Exchange) -> web.StreamResponse:
        """Forward an allowed request through the client that serves its upstream."""
        headers = request.headers
        if not websocket:
            plan = self.lean_plan(decision, request.raw_path, headers, request.remote,
                                  request.scheme, rid)
            if isinstance(plan, Reason):
                return self._refuse(plan, rid, exchange)
            if plan is not None:
                return await self._forward_lean(request, decision.route.name, *plan, rid,
                                                exchange)
        try:
            url = self._target(decision, request.raw_path, websocket)
        except (ValueError, UnicodeError):
            return self._refuse(Reason.AMBIGUOUS_PATH, rid, exchange)
        upstream_headers = self._hygiene.upstream_headers(
            headers, client_ip=request.remote, scheme=request.scheme,
            identity=decision.headers, request_id=rid, websocket=websocket)
        if websocket:
            return await self._websocket(request, decision, url, upstream_headers, rid, started,
                                         exchange)
        return await self._forward(request, decision.route.name, url, upstream_headers, rid,
                                   exchange)

    def _preflight(self, decision: Decision, origin: str, rid: str) -> web.Response:
        """The answer to a CORS preflight from an allowed origin (the upstream never sees it)."""
        return web.Response(status=204, headers=self.preflight_headers(decision, origin, rid))

    def preflight_headers(self, decision: Decision, origin: str, rid: str
                          ) -> list[tuple[str, str]]:
        """The headers of the 204 answering an allowed CORS preflight (either door)."""
        cors = self._authorizer.cors
        assert cors is not None  # a preflight decision comes from a policy
        return [*cors.preflight_headers(origin, decision.route.name), (REQUEST_ID, rid)]

    def _refuse(self, reason: Reason, rid: str, exchange: _Exchange) -> web.Response:
        """The door's own refusal of a request the pipeline allowed."""
        exchange.reason = reason
        return error_response(reason, rid, self._realm)

    def guard(self, guard: str) -> None:
        """Count a connection cut or a request refused by a resource bound."""
        self._metrics.resource_guards.labels(guard).inc()

    def _target(self, decision: Decision, raw_path: str, websocket: bool) -> URL:
        upstream = decision.route.upstream
        base = upstream.rstrip("/") if upstream else self._default
        query = raw_path.partition("?")[2]
        if websocket and query and self._ws_param:
            query = _strip_query_param(query, self._ws_param)
        text = f"{base}{decision.path}?{query}" if query else base + decision.path
        return URL(text, encoded=True)

    def _base(self, base: str) -> tuple[str, int, str] | None:
        """(host, port, path prefix) of an http:// upstream; None for https (aiohttp's)."""
        if base in self._bases:
            return self._bases[base]
        parts = urlsplit(base)
        parsed = None
        if (parts.scheme == "http" and parts.hostname and not parts.query
                and not parts.fragment and parts.username is None):
            parsed = (parts.hostname, parts.port or 80, parts.path.rstrip("/"))
        self._bases[base] = parsed
        return parsed

    def lean_plan(self, decision: Decision, raw_path: str, headers: CIMultiDictProxy[str],
                  client_ip: str | None, scheme: str, rid: str) -> LeanPlan | Reason | None:
        """An allowed request's (host, port), target and upstream headers for the lean pool
        (shared by both doors); a Reason to refuse it; None for aiohttp's client (https)."""
        if self._pool is None:
            return None
        lean = self._lean_target(decision, raw_path)
        if lean is None:
            return None
        if not lean[1]:
            return Reason.AMBIGUOUS_PATH
        pairs, lows = self._hygiene.upstream_pairs(
            headers, client_ip=client_ip, scheme=scheme, identity=decision.headers,
            request_id=rid)
        return lean[0], lean[1], pairs, lows

    def lean_request(self, decision: Decision, method: str, raw_path: str, length: int | None,
                     fields: Sequence[Field], headers: CIMultiDictProxy[str],
                     client_ip: str | None, scheme: str, rid: str
                     ) -> tuple[Key, bytes] | Reason | None:
        """lean_plan() with the upstream head built at once from the header fields the fast
        door's front parsed (`length`: the body's, None without one): the pool's key and the
        head;
        a Reason to refuse it (a CR or LF where the head has none); None for aiohttp's client.
        A head provably the reference's is kept cut around the request id, by all else it is
        made of (a client sending the same head again: the front's memo gives the same
        fields), so the next such request only has its id put in."""
        if self._pool is None:
            return None
        route = decision.route
        made_of: tuple[object, ...] = ()  # (nothing is kept but for a known head's fields)
        if type(fields) is tuple:  # (see KnownRequest)
            # (`headers` are `fields` as text; the route is held by the entry: its id is its)
            made_of = (fields, id(route), decision.path, raw_path, method, client_ip, scheme,
                       decision.headers, length)
            try:
                kept = self._heads.get(made_of)
            except TypeError:  # (a list among the identity headers: nothing kept for it)
                kept, made_of = None, ()
            if kept is not None and kept[0] is route and usable_id(rid):
                return kept[1], b"".join((kept[2], rid.encode(), kept[3]))
        lean = self._lean_target(decision, raw_path)
        if lean is None:
            return None
        key, target = lean
        if not target:
            return Reason.AMBIGUOUS_PATH
        around = self._lean_head.around(key, method, target, fields, headers, client_ip,
                                        scheme, decision.headers, length)
        if around is not None and usable_id(rid):
            if made_of:
                self._heads.keep(made_of, (route, key, *around))
            return key, b"".join((around[0], rid.encode(), around[1]))
        try:
            head = self._lean_head.head(key, method, target, fields, headers, client_ip, scheme,
                                        decision.headers, rid, length)
        except ValueError:
            return Reason.MALFORMED_REQUEST
        return key, head

    def _lean_target(self, decision: Decision, raw_path: str
                     ) -> tuple[tuple[str, int], str] | None:
        """The (host, port) and request target for the lean client; "" when unsendable."""
        upstream = decision.route.upstream
        parsed = self._base(upstream.rstrip("/") if upstream else self._default)
        if parsed is None:
            return None
        host, port, prefix = parsed
        query = raw_path.partition("?")[2]
        target = f"{prefix}{decision.path}?{query}" if query else prefix + decision.path
        if " " in target or not target.isprintable():
            target = ""
        return (host, port), target

    def _failure(self, exc: BaseException, route: str, rid: str, exchange: _Exchange,
                 pool: str = "upstream_pool") -> web.Response:
        if isinstance(exc, aiohttp.WSServerHandshakeError):
            exchange.upstream_status = exc.status  # reached, but it refused the upgrade
        return self._refuse(self.upstream_failed(exc, route, rid, pool), rid, exchange)

    def upstream_failed(self, exc: BaseException, route: str, rid: str,
                        pool: str = "upstream_pool") -> Reason:
        """Count and log an upstream failure (either door); the reason to answer with."""
        kind, reason = classify_failure(exc)
        if kind == "busy":
            self.guard(pool)
        else:
            self._metrics.upstream_errors.labels(route, kind).inc()
        log.warning("upstream request failed", extra={
            "route": route, "kind": kind, "error_type": type(exc).__name__, "request_id": rid})
        return reason

    def observe_upstream(self, route: str, seconds: float) -> None:
        """Observe the time until an upstream's response head (either door)."""
        child = self._durations.get(route)
        if child is None:
            child = self._durations[route] = self._metrics.upstream_duration.labels(route)
        self._metrics.observe(child, seconds)

    async def _forward(
        self, request: web.Request, route: str, url: URL, headers: CIMultiDict[str], rid: str,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        """Send through aiohttp's client (https upstreams, or `proxy.client: aiohttp`)."""
        session = self._session
        assert session is not None, "proxy used before start()"
        state = _BodyState()
        data = (_stream_body(request.content, self._limit, state, self._body_idle)
                if request.body_exists else None)
        started = time.perf_counter()
        try:
            response = await session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False)
        except _UPSTREAM_ERRORS as exc:
            return self._send_failed(exc, state, route, rid, exchange)
        upstream = _AiohttpUpstream(response)
        return await self._relay(request, upstream, started, state, route, rid, exchange)

    async def _forward_lean(
        self, request: web.Request, route: str, key: tuple[str, int], target: str,
        headers: list[tuple[str, str]], lows: list[str], rid: str, exchange: _Exchange,
    ) -> web.StreamResponse:
        """Send through the lean keep-alive pool (plain http upstreams)."""
        pool = self._pool
        assert pool is not None, "proxy used before start()"
        state = _BodyState()
        data = (_stream_body(request.content, self._limit, state, self._body_idle)
                if request.body_exists else None)
        started = time.perf_counter()
        try:
            upstream = await pool.request(
                key, request.method, target, headers, data,
                request.content_length if data is not None else None, lows=lows)
        except _UPSTREAM_ERRORS as exc:
            return self._send_failed(exc, state, route, rid, exchange)
        except ValueError:
            return self._refuse(Reason.MALFORMED_REQUEST, rid, exchange)
        return await self._relay(request, upstream, started, state, route, rid, exchange)

    def _send_failed(self, exc: BaseException, state: _BodyState, route: str, rid: str,
                     exchange: _Exchange) -> web.Response:
        """The answer when the request could not be sent or no response head came back."""
        if state.too_large:
            return self._refuse(Reason.BODY_TOO_LARGE, rid, exchange)
        if state.stalled:  # nothing was answered yet: say why, then close
            self.guard("request_body_idle")
            return self._refuse(Reason.BODY_TIMEOUT, rid, exchange)
        return self._failure(exc, route, rid, exchange)

    async def _relay(
        self, request: web.Request, upstream: _Upstream, started: float, state: _BodyState,
        route: str, rid: str, exchange: _Exchange,
    ) -> web.StreamResponse:
        """Stream the upstream's response to the client (small bodies in one write)."""
        exchange.upstream_status = upstream.status
        try:
            self.observe_upstream(route, time.perf_counter() - started)
            length = upstream.content_length
            if (length is not None and length <= SMALL_BODY and request.method != hdrs.METH_HEAD
                    and upstream.status not in _NO_BODY_STATUSES):
                return await self._small(upstream, rid, route, exchange)
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason,
                headers=self._hygiene.response_headers(upstream.headers))
            response.headers[REQUEST_ID] = rid
            try:
                await response.prepare(request)
                async for chunk in upstream.chunks():
                    await self._write(response, chunk)
                await self._write(response, None)
            except ConnectionError:
                return response  # the client went away; the upstream connection is closed below
            except ClientStalled:
                self.guard("response_write")
                log.warning("client stopped reading the response; closing both connections",
                            extra={"route": route, "request_id": rid})
                if request.transport is not None:
                    request.transport.abort()
                return response
            except _UPSTREAM_ERRORS as exc:
                if state.too_large:
                    kind, exchange.reason = "body_too_large", Reason.BODY_TOO_LARGE
                elif state.stalled:
                    kind, exchange.reason = "body_idle", Reason.BODY_TIMEOUT
                    self.guard("request_body_idle")
                else:
                    kind, exchange.reason = classify_failure(exc)
                    self._metrics.upstream_errors.labels(route, kind).inc()
                log.warning("upstream failed mid-response; aborting the client connection",
                            extra={"route": route, "kind": kind, "request_id": rid})
                if request.transport is not None:
                    request.transport.abort()
                return response
            return response
        finally:
            if upstream.at_eof:
                upstream.release()
            else:
                upstream.close()

    async def _write(self, response: web.StreamResponse, chunk: bytes | None) -> None:
        """Write a chunk (None: the end); a client that reads none of it in time stalls."""
        try:
            async with asyncio.timeout(self._write_timeout):
                if chunk is None:
                    await response.write_eof()
                else:
                    await response.write(chunk)
        except TimeoutError:
            raise ClientStalled("the client read nothing in time") from None

    async def _small(self, upstream: _Upstream, rid: str, route: str,
                     exchange: _Exchange) -> web.StreamResponse:
        """A small body of known length, sent with the headers in one write."""
        try:
            body = await upstream.read()
        except _UPSTREAM_ERRORS as exc:
            return self._failure(exc, route, rid, exchange)
        response = web.Response(status=upstream.status, reason=upstream.reason, body=body,
                                headers=self._hygiene.response_headers(upstream.headers))
        response.headers[REQUEST_ID] = rid
        return response

    async def _websocket(
        self, request: web.Request, decision: Decision, url: URL, headers: CIMultiDict[str],
        rid: str, started: float, exchange: _Exchange,
    ) -> web.StreamResponse:
        session = self._ws_session
        assert session is not None, "proxy used before start()"
        route = decision.route.name
        protocols = tuple(
            p.strip() for value in request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ())
            for p in value.split(",") if p.strip()
        )
        connecting = time.perf_counter()
        try:
            upstream = await session.ws_connect(
                url, headers=headers, protocols=protocols, autoping=False, autoclose=False,
                max_msg_size=self._ws_max,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0))
        except (aiohttp.ClientError, TimeoutError, UpstreamBusy) as exc:
            return self._failure(exc, route, rid, exchange, "websocket_pool")
        self.observe_upstream(route, time.perf_counter() - connecting)
        exchange.upstream_status = 101
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoping=False, autoclose=False, max_msg_size=self._ws_max)
        client.headers[REQUEST_ID] = rid
        try:
            await client.prepare(request)
        except BaseException:
            await upstream.close()
            raise
        # The upgrade is decided: one access line now, not when the socket closes.
        exchange.observed = True
        self._observer.end(started, rid, request.method, client.status, decision, 101)
        identity = decision.identity
        handle = SocketHandle(identity.session_id if identity else None,
                              identity.user_id if identity else None, identity)
        expires_in = None
        if identity is not None and self._ws_expiry:
            expires_in = identity.expires_at + self._leeway - self._clock()
        self._sockets.add(handle)
        try:
            why = await relay(client, upstream, handle, expires_in, self._ws_idle)
        finally:
            self._sockets.remove(handle)
            if not upstream.closed:
                await upstream.close()
        if why == "idle":
            self.guard("websocket_idle")
        log.debug("websocket closed", extra={"route": route, "why": why, "request_id": rid})
        return client
