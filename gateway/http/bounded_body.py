"""Bounded reads of request bodies nobody has authenticated yet (webhooks and the like).

A body read whole before it can be verified is a cost anyone can impose: each read gets a
size cap, a deadline for the whole body, and every such read in the process shares one
memory budget. Bytes count against the budget as they arrive and until the handler is done
with the body; a read that would pass it is refused at once (503 with Retry-After) rather
than queued, so stalled senders can pin at most the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

from aiohttp import web

from gateway.config_sections import LimitSettings
from gateway.metrics import Metrics
from gateway.reasons import Reason

__all__ = ["BodyRefused", "BoundedBodies", "answer_and_close"]

_CHUNK = 64 * 1024
_R = TypeVar("_R", bound=web.StreamResponse)


class BodyRefused(Exception):
    """The body was not read whole: too large, too slow, or over the shared budget."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.label)
        self.reason = reason


class BoundedBodies:
    """Reads unauthenticated bodies within a size cap, a deadline and a shared memory budget."""

    def __init__(self, limits: LimitSettings, metrics: Metrics) -> None:
        self._timeout = limits.unauthenticated_body_timeout_seconds
        self._budget = limits.unauthenticated_body_memory_bytes
        self._metrics = metrics
        self._held = 0

    @property
    def held(self) -> int:
        """Bytes of unauthenticated bodies held right now."""
        return self._held

    @contextlib.asynccontextmanager
    async def read(self, request: web.Request, max_bytes: int) -> AsyncIterator[bytes]:
        """The whole body, counted against the budget until the block ends.

        Raises BodyRefused with BODY_TOO_LARGE (over `max_bytes`, declared or sent),
        BODY_TIMEOUT (not whole within the deadline), SERVER_BUSY (the budget is spent by
        other reads) or MALFORMED_REQUEST (the sender went away); answer those with
        answer_and_close(), as the rest of the body is left unread.
        """
        declared = request.content_length
        if declared is not None and declared > max_bytes:
            raise BodyRefused(Reason.BODY_TOO_LARGE)
        reserved = 0
        try:
            body = bytearray()
            try:
                async with asyncio.timeout(self._timeout):
                    while chunk := await request.content.read(_CHUNK):
                        if len(body) + len(chunk) > max_bytes:
                            raise BodyRefused(Reason.BODY_TOO_LARGE)
                        if self._held + len(chunk) > self._budget:
                            self._count("unauthenticated_body_memory")
                            raise BodyRefused(Reason.SERVER_BUSY)
                        self._held += len(chunk)
                        reserved += len(chunk)
                        body += chunk
            except TimeoutError:
                self._count("unauthenticated_body_deadline")
                raise BodyRefused(Reason.BODY_TIMEOUT) from None
            except ConnectionError:  # the sender went away mid-body
                raise BodyRefused(Reason.MALFORMED_REQUEST) from None
            yield bytes(body)
        finally:
            self._held -= reserved

    def _count(self, guard: str) -> None:
        self._metrics.resource_guards.labels(guard).inc()


async def answer_and_close(request: web.Request, response: _R) -> _R:
    """Send the answer, then close the connection at once: the rest of the request body is
    never read (aiohttp would otherwise linger up to 10 s reading a stalled body)."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()  # after the buffered answer is flushed
    return response
