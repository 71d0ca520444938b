"""Per-client caps on what the proxy holds open for one client (upstream requests, sockets).

A client is its address: the connection's peer, or, when the peer is one of
`proxy.trusted_proxies`, the right-most address in `X-Forwarded-For` that is not trusted
(what a trusted proxy says it saw; anything further left the client could have written).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network

from multidict import MultiMapping

from gateway.config_sections import address_in

__all__ = ["ClientAddresses", "ClientSlots"]


class ClientAddresses:
    """Who a request comes from, for per-client caps."""

    def __init__(self, trusted: tuple[IPv4Network | IPv6Network, ...]) -> None:
        self._trusted = trusted
        self._is_trusted: Callable[[str], bool] = lru_cache(maxsize=4096)(
            lambda address: address_in(address, trusted))

    def trusts(self, peer: str | None) -> bool:
        """True when the peer is a trusted proxy (so it may say who the client is)."""
        return bool(self._trusted) and peer is not None and self._is_trusted(peer)

    def of(self, peer: str | None, headers: MultiMapping[str]) -> str:
        """The client address a request is counted against."""
        address = peer or ""
        if not self._trusted or not self._is_trusted(address):
            return address
        hops = [hop.strip() for value in headers.getall("X-Forwarded-For", ())
                for hop in value.split(",")]
        for hop in reversed(hops):
            if not hop:
                continue
            if not self._is_trusted(hop):
                return hop[:64]  # bounded: the key is kept while the client holds slots
            address = hop
        return address


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
