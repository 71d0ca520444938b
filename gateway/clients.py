"""Who a request comes from: one definition for every per-client budget and cap.

A client is its address: the connection's peer, or, when the peer is trusted to speak for
others, the right-most `X-Forwarded-For` address that is not itself a listed proxy (what the
nearest trusted proxy says it saw; anything further left the client could have written).
The proxy's per-client caps and the per-client budget of Backend API look-ups both use it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network

from multidict import MultiMapping

from gateway.config_sections import address_in

__all__ = ["MAX_CLIENT_KEY", "ClientAddresses"]

MAX_CLIENT_KEY = 64  # a client key is kept while the client holds slots: bounded


class ClientAddresses:
    """Resolve a request's client address from its peer and `X-Forwarded-For`."""

    def __init__(self, trusted: tuple[IPv4Network | IPv6Network, ...], *,
                 trust_all_when_empty: bool = False) -> None:
        self._trusted = trusted
        self._trust_all = trust_all_when_empty and not trusted
        self._is_listed: Callable[[str], bool] = lru_cache(maxsize=4096)(
            lambda address: address_in(address, trusted))

    def trusts(self, peer: str | None) -> bool:
        """True when the peer may say who the client is (`X-Forwarded-For`)."""
        if self._trust_all:
            return True
        return bool(self._trusted) and peer is not None and self._is_listed(peer)

    def of(self, peer: str | None, headers: MultiMapping[str]) -> str:
        """The client address a request is counted against."""
        address = peer or ""
        if not self.trusts(peer):
            return address
        hops = [hop.strip() for value in headers.getall("X-Forwarded-For", ())
                for hop in value.split(",")]
        for hop in reversed(hops):
            if not hop:
                continue
            if not self._is_listed(hop):
                return hop[:MAX_CLIENT_KEY]
            address = hop
        return address
