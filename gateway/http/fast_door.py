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

Head parsing, its checks and the hand-over to aiohttp (of a body, a pipelined request, an
upgrade, an odd target, anything oversized or malformed) are the shared llhttp front's
(gateway/http/front.py), as they are for the proxy's fast door.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from multidict import CIMultiDictProxy

from gateway.by_identity import ByIdentity
from gateway.http.forward_auth import ConflictingForwardedRequest, ForwardAuthHandler
from gateway.http.front import (
    HANDOVER_CAUSES,
    FrontDoor,
    FrontProtocol,
    encode_answer,
    encode_fields,
    refusal_answer,
)
from gateway.http.headers import new_request_id, request_id
from gateway.metrics import Metrics
from gateway.pipeline import Decision, RequestFacts
from gateway.reasons import Reason

__all__ = ["HANDOVER_CAUSES", "FastDoor", "FastDoorProtocol"]

log = logging.getLogger("gateway.fast_door")


class _Request:
    """One parsed request on its way to an answer."""

    __slots__ = ("facts", "keep_alive", "method", "origin", "rid", "started", "version")

    def __init__(self, method: str, rid: str, version: str, keep_alive: bool,
                 started: float) -> None:
        self.method = method
        self.rid = rid
        self.version = version
        self.keep_alive = keep_alive
        self.started = started
        self.facts: RequestFacts | None = None
        self.origin: str | None = None  # for the CORS headers of a refusal


class FastDoor(FrontDoor):
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
        counter = metrics.fast_path
        super().__init__(metrics, counter, HANDOVER_CAUSES, max_head_bytes=max_head_bytes,
                         max_headers=max_headers, head_timeout=head_timeout,
                         keepalive_timeout=keepalive_timeout)
        self._handler = handler
        self._metrics = metrics
        self._clock = clock
        self._count_answered = metrics.tally(counter.labels("answered"))
        self._count_answered_later = metrics.tally(counter.labels("answered_after_io"))
        # Each cached identity's header lines (the signer's tuple with its assertion too, while
        # reused), encoded once instead of once per request.
        self._identity_lines: ByIdentity[tuple[tuple[str, str], ...], bytes] = ByIdentity(4096)

    def protocol(self, fallback: Callable[[], asyncio.Protocol]) -> FastDoorProtocol:
        """A protocol for one new connection; `fallback` makes the aiohttp protocol."""
        return FastDoorProtocol(self, fallback)

    def begin(self, method: str, target: str, headers: CIMultiDictProxy[str],
              remote: str | None, version: str, keep_alive: bool,
              memo: dict[object, object] | None = None) -> tuple[_Request, bytes | None]:
        """Start one request: its answer when no I/O is needed, else None for `finish`
        (`memo`: the front's for a known head, see RequestFacts)."""
        started = self._clock()
        handler = self._handler
        request = _Request(method, request_id(headers), version, keep_alive, started)
        try:
            facts = handler.facts(method, target, remote, headers, memo)
        except ConflictingForwardedRequest:
            request.origin = handler.cors_origin(method, headers)
            decision: Decision | None = handler.refuse_conflict()
        else:
            request.origin = handler.cors_origin(facts.method, headers)
            decision = handler.authorizer.authorize_now(facts)
            if decision is None:
                request.facts = facts
                return request, None
        self._count_answered()
        return request, self._respond(request, decision)

    async def finish(self, request: _Request) -> bytes:
        """The answer to a request whose decision needs I/O (never raises)."""
        metrics = self._metrics
        metrics.in_flight_change("forward_auth", 1)
        try:
            assert request.facts is not None
            decision = await self._handler.authorizer.authorize(request.facts)
            self._count_answered_later()
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
        method, version, keep_alive = request.method, request.version, request.keep_alive
        date = self.date.line()
        if decision is not None and decision.allowed:
            status = 200
            answer = encode_answer(200, handler.allow_tail(rid), b"", method=method,
                                   version=version, keep_alive=keep_alive, date=date,
                                   encoded=self._identity_lines.of(decision.headers,
                                                                    encode_fields))
        else:
            reason = decision.reason if decision is not None else Reason.INTERNAL_ERROR
            status = reason.status
            answer = refusal_answer(reason, rid, handler.realm,
                                    decision.retry_after if decision is not None else None,
                                    method=method, version=version, keep_alive=keep_alive,
                                    date=date, extra=handler.refusal_cors(request.origin, decision))
        handler.observer.observe(request.started, rid, request.method, status, decision)
        return answer


class FastDoorProtocol(FrontProtocol):
    """One connection: answer what the fast door can, hand the rest to aiohttp for good."""

    def __init__(self, door: FastDoor, fallback: Callable[[], asyncio.Protocol]) -> None:
        super().__init__(door, fallback)
        self._door = door

    def _request(self, method: str, target: str, headers: CIMultiDictProxy[str],
                 version: str, keep_alive: bool) -> None:
        """Answer at once when no I/O is needed, else from a task with reading paused."""
        try:
            request, answer = self._door.begin(method, target, headers, self._remote, version,
                                               keep_alive, self._memo)
        except Exception:  # a bug must cost one 500 JSON answer, not the connection's reset
            log.exception("forward-auth decision failed")
            self._send(self._door.failure(version), keep_alive=False)
            return
        if answer is not None:
            self._send(answer, request.keep_alive)
            return
        self._hold()
        self._door.spawn(self._answer_later(request))

    async def _answer_later(self, request: _Request) -> None:
        answer = await self._door.finish(request)
        self._busy = False
        self._send(answer, request.keep_alive)
        self._release()
