"""One issuer's key set in the shared store: the last fetched JWKS, when, and the fetch lease.

The record (namespace ``jwks``) holds the raw JWKS document with the wall-clock time of its
fetch and its refresh interval; it is published on the feed, so every worker adopts a key
set any worker fetched. The lease (namespace ``jwks-lease``) is claimed atomically before an
unknown-``kid`` refetch and lives for the cooldown: at most one such fetch per cooldown for
all workers together. Records are keyed by a digest of the issuer's key source, so a changed
source never adopts the old source's keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.state.store import Change, Record, SharedStore

__all__ = ["KEYSETS", "LEASES", "KeySetShare", "SharedKeySet", "source_digest"]

KEYSETS = "jwks"
LEASES = "jwks-lease"
_KEEP_SECONDS = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class SharedKeySet:
    """A JWKS document as some worker fetched it."""

    document: Any
    fetched_at: float
    max_age: float


def source_digest(*parts: str | None) -> str:
    """A stable name for an issuer's key source (issuer, source kind, URLs)."""
    return hashlib.sha256("\x00".join(p or "" for p in parts).encode()).hexdigest()[:32]


def _decode(record: Record | None) -> SharedKeySet | None:
    if record is None:
        return None
    try:
        data = json.loads(record.value)
        return SharedKeySet(data["jwks"], float(data["fetched_at"]), float(data["max_age"]))
    except (ValueError, KeyError, TypeError):
        return None


class KeySetShare:
    """Load, publish and follow one issuer's shared key set; claim its refetch lease."""

    def __init__(self, store: SharedStore, source: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._key = source
        self.clock = clock

    async def load(self) -> SharedKeySet | None:
        """The shared key set (raises StoreUnavailable)."""
        [record] = await self._store.get_many(KEYSETS, [self._key])
        return _decode(record)

    async def publish(self, document: Any, fetched_at: float, max_age: float) -> None:
        """Share a freshly fetched key set with every worker (raises StoreUnavailable)."""
        value = json.dumps({"jwks": document, "fetched_at": fetched_at, "max_age": max_age})
        await self._store.put(KEYSETS, self._key, value, fetched_at + _KEEP_SECONDS, feed=True)

    async def claim_refetch(self, cooldown: float) -> bool:
        """True when this worker may refetch now (nobody did within the cooldown)."""
        return await self._store.claim(LEASES, self._key, str(os.getpid()),
                                       self.clock() + max(cooldown, 0.001))

    def follow(self, adopt: Callable[[SharedKeySet], object]) -> Callable[[], None]:
        """Call ``adopt`` with every key set another worker publishes; returns unfollow."""

        def on_change(changes: Sequence[Change]) -> None:
            for change in changes:
                shared = _decode(change.record) if change.key == self._key else None
                if shared is not None:
                    adopt(shared)

        return self._store.subscribe(KEYSETS, on_change, lambda: None)
