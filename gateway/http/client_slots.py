"""Per-client caps on what the proxy holds open for one client (upstream requests, sockets).

Who the client is comes from gateway/clients.py (the same definition every budget uses).
"""

from __future__ import annotations

__all__ = ["ClientSlots"]


class ClientSlots:
    """How many slots each client holds, refusing a client at `limit` (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held: dict[str, int] = {}

    def take(self, client: str) -> bool:
        """Hold one more slot for the client; False (nothing held) when at the limit."""
        held = self._held.get(client, 0)
        if self._limit and held >= self._limit:
            return False
        self._held[client] = held + 1
        return True

    def give(self, client: str) -> None:
        """Release a slot taken with take()."""
        left = self._held.get(client, 0) - 1
        if left > 0:
            self._held[client] = left
        else:
            self._held.pop(client, None)

    def held(self, client: str) -> int:
        """Slots the client holds now."""
        return self._held.get(client, 0)
