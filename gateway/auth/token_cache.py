"""A bounded cache of verified tokens, keyed by a digest of the token, kept until expiry.

Hand-written rather than aiocache: it sits on every request, so lookups must be synchronous
dict reads, and it must be bounded (aiocache's memory backend has no size limit).
"""

from __future__ import annotations

import hashlib
from itertools import islice
from typing import Generic, TypeVar

__all__ = ["TokenCache"]

V = TypeVar("V")


class TokenCache(Generic[V]):
    """Insertion-ordered, size-bounded map from token digest to (value, expires_at)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[V, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(token: str) -> bytes:
        """The digest a token is stored under (the token itself is never kept)."""
        return hashlib.sha256(token.encode()).digest()

    def get(self, key: bytes) -> tuple[V, float] | None:
        """The cached value and its expiry time, or None."""
        return self._entries.get(key)

    def put(self, key: bytes, value: V, expires_at: float, now: float) -> None:
        """Remember a value until expires_at, evicting expired then oldest entries when full."""
        if self.max_entries <= 0:
            return
        entries = self._entries
        if len(entries) >= self.max_entries and key not in entries:
            self._evict(now)
        entries[key] = (value, expires_at)

    def discard(self, key: bytes) -> None:
        """Forget one entry."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()

    def _evict(self, now: float) -> None:
        entries = self._entries
        expired = [k for k, (_, exp) in islice(entries.items(), 64) if exp < now]
        for k in expired:
            del entries[k]
        while len(entries) >= self.max_entries:
            del entries[next(iter(entries))]
