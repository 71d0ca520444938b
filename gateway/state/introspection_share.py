"""Session introspection shared by every worker: answers, the call lease, the 429 back-off.

In namespace ``introspection``, for one Clerk Backend API (keys prefixed by a digest of its
URL): ``answer:<sid>`` holds a session's last status and when it was asked (kept for TTL +
grace, for the fallback); ``lease:<sid>`` is claimed by the one worker calling Clerk about
that session now; ``backoff`` holds the time until which a 429's Retry-After stops calls.
A worker with no fresh answer of its own reads all three in one query.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from gateway.state.store import Record, SharedStore, StoreUnavailable

__all__ = ["INTROSPECTION", "IntrospectionShare", "SharedAnswer", "SharedView"]

INTROSPECTION = "introspection"


@dataclass(frozen=True, slots=True)
class SharedAnswer:
    """A session status some worker got from Clerk, and when."""

    status: str
    fetched_at: float


@dataclass(frozen=True, slots=True)
class SharedView:
    """What every worker knows about one session right now."""

    answer: SharedAnswer | None
    leased: bool
    blocked_until: float


def _answer(record: Record | None) -> SharedAnswer | None:
    if record is None:
        return None
    try:
        data = json.loads(record.value)
        return SharedAnswer(str(data["status"])[:32], float(data["fetched_at"]))
    except (ValueError, KeyError, TypeError):
        return None


def _float(record: Record | None) -> float:
    try:
        return float(record.value) if record is not None else 0.0
    except ValueError:
        return 0.0


class IntrospectionShare:
    """Reads and writes of the shared introspection state (all raise StoreUnavailable)."""

    def __init__(self, store: SharedStore, api_digest: str,
                 clock: Callable[[], float]) -> None:
        self._store = store
        self._prefix = api_digest + ":"
        self._clock = clock

    def _key(self, kind: str, session_id: str = "") -> str:
        return f"{self._prefix}{kind}:{session_id}"

    async def view(self, session_id: str) -> SharedView:
        """The session's shared answer, whether a worker is asking Clerk, the back-off."""
        answer, lease, backoff = await self._store.get_many(INTROSPECTION, [
            self._key("answer", session_id), self._key("lease", session_id),
            self._key("backoff")])
        return SharedView(_answer(answer), lease is not None, _float(backoff))

    async def claim(self, session_id: str, seconds: float) -> bool:
        """Become the one worker asking Clerk about the session (for at most ``seconds``)."""
        return await self._store.claim(INTROSPECTION, self._key("lease", session_id),
                                       str(os.getpid()), self._clock() + seconds)

    async def release(self, session_id: str) -> None:
        """Let other workers ask again (best effort: the lease expires anyway)."""
        with contextlib.suppress(StoreUnavailable):
            await self._store.delete(INTROSPECTION, self._key("lease", session_id))

    async def publish(self, session_id: str, answer: SharedAnswer, keep: float) -> None:
        """Share an answer for ``keep`` seconds past its fetch."""
        value = json.dumps({"status": answer.status, "fetched_at": answer.fetched_at})
        await self._store.put(INTROSPECTION, self._key("answer", session_id), value,
                              answer.fetched_at + keep)

    async def block(self, until: float) -> None:
        """Stop every worker's calls until ``until`` (a 429's Retry-After)."""
        await self._store.put(INTROSPECTION, self._key("backoff"), repr(until), until)
