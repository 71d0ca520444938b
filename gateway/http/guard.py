"""Connection guards: a deadline for request heads, and JSON answers to malformed HTTP.

aiohttp has no header-read timeout, so a client that trickles its request head byte by byte
(slowloris) could hold a connection for as long as it likes. The guard arms a timer when a
request head starts and closes the connection with 408 if the head is not complete in time.
Parser errors (oversized or malformed heads) get a JSON body like every other refusal
instead of aiohttp's plain-text page, and never a stack trace.

This relies on aiohttp's RequestHandler internals (`_request_count`, `_request_in_progress`,
`handle_error`, the server's `_kwargs`); tests in tests/test_guard.py break if they change.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.http.errors import error_body, error_response
from gateway.http.headers import new_request_id
from gateway.reasons import Reason

__all__ = ["ConnectionFront", "GuardedAppRunner", "GuardedRequestHandler", "refuse_late_head"]

log = logging.getLogger("gateway.guard")
_LINGER_SECONDS = 1.0


def _timeout_response() -> bytes:
    """A whole 408 response as bytes: the request head never arrived, so no aiohttp request
    exists to answer through."""
    body = json.dumps({**error_body(Reason.REQUEST_TIMEOUT),
                       "request_id": new_request_id()}).encode()
    head = (f"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head + body


def refuse_late_head(transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop,
                     close: Callable[[], None]) -> None:
    """Answer 408 to a connection whose request head is overdue, then close it."""
    log.info("request head not received in time; closing the connection")
    transport.write(_timeout_response())
    if transport.can_write_eof():
        transport.write_eof()
    # Linger before closing: closing with unread input would reset the connection and
    # the client could lose the 408.
    loop.call_later(_LINGER_SECONDS, close)


class GuardedRequestHandler(RequestHandler):
    """An aiohttp protocol with a request-head deadline and JSON parser errors."""

    __slots__ = ("_expired", "_head_timeout", "_head_timer", "_realm")

    def __init__(self, manager: web.Server, *, head_timeout: float, realm: str,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._realm = realm
        self._expired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the deadline for the first request head."""
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Stop the deadline once a head is parsed; start it when a new head begins."""
        if self._expired:
            return
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._disarm()
        elif self._head_timer is None and not self._request_in_progress and data:
            self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Forget the deadline with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timeout > 0 and self._head_timer is None:
            self._head_timer = self._loop.call_later(self._head_timeout, self._expire)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expire(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or self._request_in_progress:
            return
        self._expired = True  # from now on, bytes that still arrive are read and dropped
        refuse_late_head(transport, self._loop, self.force_close)

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None,
                     ) -> web.StreamResponse:
        """Answer a malformed or oversized request (or a handler crash) with a JSON error."""
        if isinstance(exc, LineTooLong):
            reason = Reason.HEADERS_TOO_LARGE
        elif status >= 500:
            reason = Reason.INTERNAL_ERROR
            log.error("request handling failed", exc_info=exc)
        else:
            reason = Reason.MALFORMED_REQUEST
        if reason is not Reason.INTERNAL_ERROR:
            log.info("malformed request refused", extra={
                "reason": reason.label, "error_type": type(exc).__name__ if exc else None})
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; closing the connection")
        response = error_response(reason, new_request_id(), self._realm)
        response.force_close()
        return response


class ConnectionFront(Protocol):
    """A protocol that sees each connection first and may hand it to the guarded handler."""

    def protocol(self, fallback: Callable[[], asyncio.Protocol]) -> asyncio.Protocol:
        """The protocol for one new connection; `fallback` makes the guarded handler."""

    def close_idle(self) -> None:
        """Close the connections it holds between requests (on shutdown)."""

    async def drain(self, seconds: float) -> None:
        """Wait (up to `seconds`) for the answers it is still deciding."""


class _GuardedServer:
    """Wraps aiohttp's Server so every connection gets a GuardedRequestHandler (behind the
    front, when there is one)."""

    def __init__(self, server: web.Server, head_timeout: float, realm: str,
                 front: ConnectionFront | None) -> None:
        self._server = server
        self._head_timeout = head_timeout
        self._realm = realm
        self._front = front

    def __call__(self) -> asyncio.Protocol:
        if self._front is not None:
            return self._front.protocol(self._guarded)
        return self._guarded()

    def _guarded(self) -> GuardedRequestHandler:
        server = self._server
        return GuardedRequestHandler(
            server, loop=server._loop, head_timeout=self._head_timeout, realm=self._realm,
            **server._kwargs)

    def pre_shutdown(self) -> None:
        """Stop idle connections, the front's included, before draining the rest."""
        if self._front is not None:
            self._front.close_idle()
        self._server.pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiohttp)
        """Let in-flight requests finish (the front's too), then close every connection."""
        if self._front is not None:
            await self._front.drain(timeout or 0.0)
        await self._server.shutdown(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose connections are guarded (head deadline, JSON parser errors)."""

    def __init__(self, app: web.Application, *, head_timeout: float, realm: str,
                 front: ConnectionFront | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._head_timeout = head_timeout
        self._realm = realm
        self._front = front

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _GuardedServer(  # type: ignore[return-value]
            server, self._head_timeout, self._realm, self._front)
