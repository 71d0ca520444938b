"""Budgets for Backend API look-ups of unknown tokens: token buckets per client and instance.

One client sending distinct garbage `ak_...` tokens must not spend the instance's Backend
API rate limit: each client address gets `burst` look-ups, refilled at `rate` per second, and
every client together gets the instance's bucket. A look-up takes one unit from both buckets,
or from neither when either is short (so a client refused for the instance's sake keeps its
own units, and a refused attempt changes nothing). `spend` is that arithmetic; `LookupBudgets`
keeps the buckets in this process (bounded: when full, the least recently seen clients are
forgotten); gateway/state/budget_share.py keeps them in the shared store for every worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from gateway.config_machine import MachineTokenSettings

__all__ = ["Bucket", "LookupBudgets", "Rate", "keep_recent", "lookup_rates", "spend"]

K = TypeVar("K")
V = TypeVar("V")

_MAX_CLIENTS = 65_536

Bucket = tuple[float, float]
"""(units held, when): a bucket's level at a time; an absent bucket is full."""


@dataclass(frozen=True, slots=True)
class Rate:
    """A bucket's refill rate (units per second) and size."""

    per_second: float
    burst: float

    def level(self, bucket: Bucket | None, now: float) -> float:
        """The units a bucket holds at ``now``."""
        if bucket is None:
            return self.burst
        units, at = bucket
        return min(self.burst, units + max(0.0, now - at) * self.per_second)

    def full_in(self, units: float) -> float:
        """Seconds until a bucket holding ``units`` is full again (and may be forgotten)."""
        return max(0.0, self.burst - units) / self.per_second


def lookup_rates(settings: MachineTokenSettings) -> tuple[Rate, Rate]:
    """The per-client and the instance's look-up rates the settings give."""
    return (Rate(settings.client_lookups_per_second, settings.client_lookup_burst),
            Rate(settings.lookups_per_second, settings.lookup_burst))


def keep_recent(table: dict[K, V], key: K, value: V, limit: int) -> None:
    """Store `value` as the most recently seen; over `limit`, forget the oldest sixteenth."""
    table.pop(key, None)
    table[key] = value
    if len(table) > limit:
        for old in list(table)[: max(1, limit // 16)]:
            del table[old]


def spend(buckets: Sequence[Bucket | None], rates: Sequence[Rate],
          now: float) -> tuple[list[float], list[Bucket]]:
    """Take one unit from every bucket: (the seconds until each bucket holds a unit, all 0.0;
    the buckets after) when each holds one, else (those seconds, []) and nothing is taken."""
    levels = [rate.level(bucket, now) for bucket, rate in zip(buckets, rates, strict=True)]
    waits = [max(0.0, 1.0 - level) / rate.per_second
             for level, rate in zip(levels, rates, strict=True)]
    if any(wait > 0.0 for wait in waits):
        return waits, []
    return waits, [(level - 1.0, now) for level in levels]


class LookupBudgets:
    """Per-client buckets and the instance's bucket, in this process."""

    def __init__(self, client: Rate, instance: Rate, max_clients: int = _MAX_CLIENTS) -> None:
        self.client = client
        self.instance = instance
        self.max_clients = max_clients
        self._clients: dict[str, Bucket] = {}
        self._instance: Bucket | None = None

    def take(self, client: str, now: float) -> float:
        """Spend one look-up: 0.0 when allowed, else the seconds until one is available."""
        held = self._clients.get(client)
        waits, after = spend((held, self._instance), (self.client, self.instance), now)
        if after:
            held, self._instance = after
        if held is not None:
            keep_recent(self._clients, client, held, self.max_clients)
        return max(waits)
