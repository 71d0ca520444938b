"""Session introspection shared by every worker: answers, the call lease, the 429 back-off.

In namespace ``introspection``, for one Clerk Backend API (keys prefixed by a digest of its
URL): ``answer:<sid>`` holds a session's last status and when it was asked (kept for TTL +
grace, for the fallback); ``lease:<sid>`` is claimed by the one worker calling Clerk about
that session now; ``backoff`` holds the time until which a 429's Retry-After stops calls.
A worker with no fresh answer of its own reads all three in one query.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from gateway.state.call_gate import SharedCallGate, time_in
from gateway.state.store import Record, SharedStore

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


class IntrospectionShare(SharedCallGate):
    """Reads and writes of the shared introspection state (all raise StoreUnavailable);
    ``claim``/``release``/``block`` take a session id."""

    def __init__(self, store: SharedStore, api_digest: str,
                 clock: Callable[[], float]) -> None:
        super().__init__(store, INTROSPECTION, api_digest + ":", clock)

    async def view(self, session_id: str) -> SharedView:
        """The session's shared answer, whether a worker is asking Clerk, the back-off."""
        answer, lease, backoff = await self._store.get_many(INTROSPECTION, [
            self.key("answer", session_id), self.key("lease", session_id),
            self.key("backoff")])
        return SharedView(_answer(answer), lease is not None, time_in(backoff))

    async def publish(self, session_id: str, answer: SharedAnswer, keep: float) -> None:
        """Share an answer for ``keep`` seconds past its fetch."""
        value = json.dumps({"status": answer.status, "fetched_at": answer.fetched_at})
        await self._store.put(INTROSPECTION, self.key("answer", session_id), value,
                              answer.fetched_at + keep)
