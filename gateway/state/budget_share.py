"""Backend API look-up budgets shared by every worker: token buckets in the state store.

In namespace ``lookup_budgets``, for one Clerk Backend API (keys prefixed by a digest of its
URL): ``client:<address>`` holds a client's bucket, ``instance`` the bucket of every client
together, each as ``"<units> <time>"``. A look-up attempt reads both and, when each holds a
unit, writes both, in one transaction (gateway/auth/budget.py `spend`): atomic across every
worker, with the time read inside it, so the times written are in order whatever the
worker's queue. A refused attempt writes nothing, so rows are created no faster than the instance's
budget allows; a row expires when its bucket would be full again (absent means full) and is
purged like any other record. Only tokens with no cached verdict reach this.

A bucket found short of a unit cannot hold one before its refill time (other workers only
take units), so each worker remembers that time and refuses attempts on that bucket until
then without asking the store: a flood of guesses costs the store one transaction per
bucket and refill, not one per guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from gateway.auth.budget import Bucket, Rate, keep_recent, spend
from gateway.state.store import Record, SharedStore

__all__ = ["LOOKUP_BUDGETS", "SharedBudgets"]

LOOKUP_BUDGETS = "lookup_budgets"
_MAX_KNOWN_EMPTY = 65_536


def _bucket(record: Record | None, rate: Rate, now: float) -> Bucket | None:
    """The bucket a record holds (None, a full bucket, when absent or not a bucket)."""
    if record is None:
        return None
    units_text, _, at_text = record.value.partition(" ")
    try:
        units, at = float(units_text), float(at_text)
    except ValueError:
        return None
    if not (math.isfinite(units) and math.isfinite(at)):
        return None
    return min(max(units, 0.0), rate.burst), min(at, now)


class SharedBudgets:
    """The per-client and instance look-up budgets of every worker (``take`` raises
    StoreUnavailable)."""

    def __init__(self, store: SharedStore, api_digest: str, client: Rate, instance: Rate,
                 clock: Callable[[], float], max_known: int = _MAX_KNOWN_EMPTY) -> None:
        self._store = store
        self._clock = clock
        self._prefix = api_digest + ":"
        self._rates = (client, instance)
        self._max_known = max_known
        self._empty_until: dict[str, float] = {}

    def keys(self, client: str) -> tuple[str, str]:
        """The record keys of a client's bucket and of the instance's."""
        return f"{self._prefix}client:{client}", f"{self._prefix}instance"

    async def take(self, client: str) -> float:
        """Spend one look-up: 0.0 when allowed, else the seconds until one is available."""
        keys, rates, clock = self.keys(client), self._rates, self._clock
        now = clock()
        known = max(self._empty_until.get(key, 0.0) for key in keys)
        if known > now:
            return known - now  # a bucket known short: no unit before then, ask nobody

        def change(records: list[Record | None]) -> tuple[list[Record], tuple[float, list[float]]]:
            now = clock()  # under the write lock
            held = [_bucket(record, rate, now) for record, rate in zip(records, rates, strict=True)]
            waits, after = spend(held, rates, now)
            if not after:
                return [], (now, waits)  # refused: nothing written
            return [Record(key, f"{units!r} {at!r}", at + rate.full_in(units))
                    for key, (units, at), rate in zip(keys, after, rates, strict=True)
                    ], (now, waits)

        asked_at, waits = await self._store.update(LOOKUP_BUDGETS, keys, change)
        for key, wait in zip(keys, waits, strict=True):
            if wait > 0.0:  # no unit in that bucket before then (a bounded table)
                keep_recent(self._empty_until, key, asked_at + wait, self._max_known)
        return max(waits)
