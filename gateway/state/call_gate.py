"""A call lease per subject and one back-off, shared by every worker calling a rate-limited API.

Keys, in the caller's namespace and under its prefix: ``lease:<subject>`` is held by the one
worker calling the API about that subject now; ``backoff:`` holds the time until which no
worker calls (a 429's Retry-After).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from gateway.state.store import Record, SharedStore, StoreUnavailable

__all__ = ["SharedCallGate", "time_in"]


def time_in(record: Record | None) -> float:
    """The time a back-off record holds (0 when absent or not a number)."""
    try:
        return float(record.value) if record is not None else 0.0
    except ValueError:
        return 0.0


class SharedCallGate:
    """Claims, releases and the back-off of one API's calls (claim and block raise
    StoreUnavailable)."""

    def __init__(self, store: SharedStore, namespace: str, prefix: str,
                 clock: Callable[[], float]) -> None:
        self._store = store
        self._namespace = namespace
        self._prefix = prefix
        self._clock = clock

    def key(self, kind: str, subject: str = "") -> str:
        """The record key of one kind of fact about a subject."""
        return f"{self._prefix}{kind}:{subject}"

    async def claim(self, subject: str, seconds: float) -> bool:
        """Become the one worker calling about the subject (for at most ``seconds``)."""
        return await self._store.claim(self._namespace, self.key("lease", subject),
                                       str(os.getpid()), self._clock() + seconds)

    async def release(self, subject: str) -> None:
        """Let other workers call again (best effort: the lease expires anyway)."""
        with contextlib.suppress(StoreUnavailable):
            await self._store.delete(self._namespace, self.key("lease", subject))

    async def block(self, until: float) -> None:
        """Stop every worker's calls until ``until``."""
        await self._store.put(self._namespace, self.key("backoff"), repr(until), until)
