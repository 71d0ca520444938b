"""One periodic sweep per door for the deadlines of its callback relays (no timer per request).

A relay marks progress with a flag (`moved`); each tick turns a marked relay's progress into
a fresh deadline (`limit` seconds from the tick) and expires a relay whose deadline passed.
A deadline is thus met within one tick: the interval is a tenth of the shortest limit, at
most a second. The timer runs only while some relay is watched.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Sweep", "Watched"]

_MAX_INTERVAL = 1.0
_MIN_INTERVAL = 0.005


class Watched(Protocol):
    """What the sweep needs of a relay."""

    moved: bool  # progress since the last tick
    limit: float  # seconds without progress before it expires
    deadline: float  # loop time it expires at (set by the sweep)

    def expire(self) -> None:
        """No progress for `limit` seconds: end the exchange."""

    def cut_off(self) -> None:
        """Shutdown's deadline passed: end the exchange at once."""


class Sweep:
    """The watched relays of one door and the timer that checks their deadlines."""

    def __init__(self, shortest_limit: float) -> None:
        self.interval = min(_MAX_INTERVAL, max(_MIN_INTERVAL, shortest_limit / 10))
        self.watched: set[Watched] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._quiet: asyncio.Future[None] | None = None

    @property
    def running(self) -> bool:
        """True while the timer is scheduled."""
        return self._timer is not None

    def watch(self, relay: Watched, loop: asyncio.AbstractEventLoop) -> None:
        """Check the relay's deadline from now on (its first deadline is set at a tick)."""
        relay.moved = True
        self.watched.add(relay)
        if self._timer is None:
            self._timer = loop.call_later(self.interval, self._tick, loop)

    def forget(self, relay: Watched) -> None:
        """The relay ended."""
        self.watched.discard(relay)
        if not self.watched and self._quiet is not None and not self._quiet.done():
            self._quiet.set_result(None)

    async def quiet(self, seconds: float) -> None:
        """Wait up to `seconds` until no relay is watched."""
        if not self.watched:
            return
        self._quiet = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(seconds):  # not wait_for: 3.11's can swallow a cancel
                await asyncio.shield(self._quiet)
        except TimeoutError:
            pass
        finally:
            self._quiet = None

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        expired = []
        for relay in self.watched:
            if relay.moved:
                relay.moved = False
                relay.deadline = now + relay.limit
            elif relay.deadline <= now:
                expired.append(relay)
        for relay in expired:
            if relay in self.watched:
                relay.expire()
        if self.watched:
            self._timer = loop.call_later(self.interval, self._tick, loop)
