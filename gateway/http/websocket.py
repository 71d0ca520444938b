"""WebSocket relay for the proxy, and the registry of open sockets revocation can close.

The upgrade has already been authorized by the pipeline. The relay connects to the upstream
first (so an unreachable upstream is a plain 502/504 before the upgrade), then accepts the
client and relays text, binary, ping, pong and close frames both ways. It closes the socket
when the token that opened it expires (code 4001), when revocation asks (4003), when no frame
passes either way for the idle timeout (1001) or when the gateway shuts down (1001).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp
from aiohttp import WSMsgType, web

from gateway.auth.claims import Identity
from gateway.tasks import stop_task

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_REVOKED",
    "CLOSE_TOKEN_EXPIRED",
    "OpenSockets",
    "SocketHandle",
    "relay",
]

CLOSE_TOKEN_EXPIRED = 4001
CLOSE_REVOKED = 4003
CLOSE_GOING_AWAY = 1001
_CLOSE_INTERNAL = 1011
_NOT_SENDABLE = frozenset({1004, 1005, 1006, 1015})


class SocketHandle:
    """One relayed socket: who opened it, and a way to ask the relay to close it."""

    __slots__ = ("_request", "identity", "session_id", "user_id")

    def __init__(self, session_id: str | None, user_id: str | None,
                 identity: Identity | None = None) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.identity = identity
        self._request: asyncio.Future[tuple[int, str]] = (
            asyncio.get_running_loop().create_future()
        )

    def close(self, code: int, reason: str) -> None:
        """Ask the relay to close both sides with this code (idempotent)."""
        if not self._request.done():
            self._request.set_result((code, reason))

    @property
    def requested(self) -> asyncio.Future[tuple[int, str]]:
        """Resolves when someone asked this socket to close."""
        return self._request


class OpenSockets:
    """Open relayed sockets by session and user, so revocation can close them."""

    def __init__(self) -> None:
        self._all: set[SocketHandle] = set()
        self._by_session: dict[str, set[SocketHandle]] = {}
        self._by_user: dict[str, set[SocketHandle]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def add(self, handle: SocketHandle) -> None:
        """Register an open socket."""
        self._all.add(handle)
        if handle.session_id:
            self._by_session.setdefault(handle.session_id, set()).add(handle)
        if handle.user_id:
            self._by_user.setdefault(handle.user_id, set()).add(handle)

    def remove(self, handle: SocketHandle) -> None:
        """Forget a closed socket."""
        self._all.discard(handle)
        for index, key in ((self._by_session, handle.session_id),
                           (self._by_user, handle.user_id)):
            if key and key in index:
                index[key].discard(handle)
                if not index[key]:
                    del index[key]

    def close_session(self, session_id: str, code: int = CLOSE_REVOKED,
                      reason: str = "session revoked") -> int:
        """Close every socket opened by this session; returns how many."""
        return self._close(self._by_session.get(session_id, ()), code, reason)

    def close_user(self, user_id: str, code: int = CLOSE_REVOKED,
                   reason: str = "session revoked") -> int:
        """Close every socket opened by this user; returns how many."""
        return self._close(self._by_user.get(user_id, ()), code, reason)

    def close_matching(self, matches: Callable[[Identity], bool], code: int = CLOSE_REVOKED,
                       reason: str = "session revoked") -> int:
        """Close every socket whose opening identity matches (organization, membership and
        token revocations); returns how many."""
        return self._close({h for h in self._all if h.identity is not None
                            and matches(h.identity)}, code, reason)

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "gateway shutting down") -> int:
        """Close every socket (shutdown); returns how many."""
        return self._close(self._all, code, reason)

    @staticmethod
    def _close(handles: set[SocketHandle] | tuple[()], code: int, reason: str) -> int:
        targets = list(handles)
        for handle in targets:
            handle.close(code, reason)
        return len(targets)


def _sendable(code: int | None) -> int:
    if code is None or code < 1000 or code in _NOT_SENDABLE or code >= 5000:
        return 1000
    return code


_Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


class _Activity:
    """When a frame last went through, either way."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = asyncio.get_running_loop().time()


async def _pump(source: _Socket, sink: _Socket, activity: _Activity) -> tuple[int, str]:
    """Relay messages until the source closes; returns its close code and reason."""
    loop = asyncio.get_running_loop()
    while True:
        msg = await source.receive()
        activity.at = loop.time()
        kind = msg.type
        if kind is WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif kind is WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif kind is WSMsgType.PING:
            await sink.ping(msg.data)
        elif kind is WSMsgType.PONG:
            await sink.pong(msg.data)
        elif kind is WSMsgType.CLOSE:
            return _sendable(msg.data), msg.extra or ""
        elif kind is WSMsgType.ERROR:
            return _CLOSE_INTERNAL, ""
        else:  # CLOSING, CLOSED
            return _sendable(source.close_code), ""


async def relay(
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    handle: SocketHandle,
    expires_in: float | None,
    idle_seconds: float = 0.0,
) -> str:
    """Relay both ways until one side closes, the token expires, no frame passes either way
    for `idle_seconds` (0: never) or a close is requested.

    Returns why it ended: client, upstream, expired, idle or requested.
    """
    loop = asyncio.get_running_loop()
    activity = _Activity()
    expires_at = loop.time() + max(0.0, expires_in) if expires_in is not None else None
    to_upstream = asyncio.ensure_future(_pump(client, upstream, activity))
    to_client = asyncio.ensure_future(_pump(upstream, client, activity))
    waiting: set[asyncio.Future[tuple[int, str]]] = {to_upstream, to_client, handle.requested}
    idle = False
    try:
        while True:
            now = loop.time()
            deadlines = [d for d in (expires_at, activity.at + idle_seconds if idle_seconds
                                     else None) if d is not None]
            done, _ = await asyncio.wait(
                waiting, timeout=max(0.0, min(deadlines) - now) if deadlines else None,
                return_when=asyncio.FIRST_COMPLETED)
            now = loop.time()
            if done or (expires_at is not None and now >= expires_at):
                break
            if idle_seconds and now - activity.at >= idle_seconds:
                idle = True
                break
    finally:
        for task in (to_upstream, to_client):
            task.cancel()
        for task in (to_upstream, to_client):
            await stop_task(task)
    if to_upstream in done and not to_upstream.cancelled() and to_upstream.exception() is None:
        code, reason = to_upstream.result()
        why = "client"
        client_code, client_reason = code, reason
        upstream_code, upstream_reason = code, reason
    elif to_client in done and not to_client.cancelled() and to_client.exception() is None:
        code, reason = to_client.result()
        why = "upstream"
        client_code, client_reason = code, reason
        upstream_code, upstream_reason = code, reason
    elif handle.requested in done:
        client_code, client_reason = handle.requested.result()
        why = "requested"
        upstream_code, upstream_reason = CLOSE_GOING_AWAY, "client session closed"
    elif idle:
        why = "idle"
        client_code, client_reason = CLOSE_GOING_AWAY, "idle timeout"
        upstream_code, upstream_reason = CLOSE_GOING_AWAY, "idle timeout"
    elif not done:
        why = "expired"
        client_code, client_reason = CLOSE_TOKEN_EXPIRED, "token expired"
        upstream_code, upstream_reason = CLOSE_GOING_AWAY, "client token expired"
    else:  # a pump failed while sending
        why = "error"
        client_code = upstream_code = _CLOSE_INTERNAL
        client_reason = upstream_reason = ""
    with contextlib.suppress(Exception):
        await upstream.close(code=upstream_code, message=upstream_reason.encode()[:120])
    with contextlib.suppress(Exception):
        await client.close(code=client_code, message=client_reason.encode()[:120])
    return why
