"""Per-client budgets for Backend API look-ups of unknown tokens (token buckets).

One client sending distinct garbage `ak_...` tokens must not spend the instance's Backend
API rate limit: each client address gets `burst` look-ups, refilled at `rate` per second.
The table is bounded; when full, the least recently seen clients are forgotten.
"""

from __future__ import annotations

__all__ = ["ClientBudget"]

_MAX_CLIENTS = 65_536


class ClientBudget:
    """Token buckets keyed by client address."""

    def __init__(self, rate: float, burst: int, max_clients: int = _MAX_CLIENTS) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str, now: float) -> float:
        """Spend one look-up: 0.0 when allowed, else the seconds until one is available."""
        buckets = self._buckets
        tokens, last = buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        if tokens >= 1.0:
            buckets[client] = (tokens - 1.0, now)
            wait = 0.0
        else:
            buckets[client] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        if len(buckets) > self.max_clients:
            for old in list(buckets)[: max(1, self.max_clients // 16)]:
                del buckets[old]
        return wait
