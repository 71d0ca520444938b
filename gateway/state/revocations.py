"""Revocations and webhook idempotency on the shared store, mirrored in memory.

Every worker loads the live revocations once at start and keeps that mirror current from
the store's change feed, so a request's revocation check is a dict look-up, never a database
call: ``current_mirror`` answers while the feed is current, and only when it is not
(the database failing) does the checker fall back to reads, then to ``on_store_error``.
Webhook ``svix-id`` markers are claimed atomically in the ``webhook`` namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence

from gateway.auth.revocation_store import Notify, RevocationEntry
from gateway.state.store import Change, Record, SharedStore, StoreUnavailable

__all__ = ["REVOCATIONS", "WEBHOOKS", "SharedRevocationStore"]

log = logging.getLogger("gateway.revocation")

REVOCATIONS = "revocation"
WEBHOOKS = "webhook"


def _entry(record: Record | None) -> RevocationEntry | None:
    if record is None:
        return None
    try:
        data = json.loads(record.value)
    except ValueError:
        return None
    return RevocationEntry.from_dict(data) if isinstance(data, dict) else None


class SharedRevocationStore:
    """A RevocationStore on a SharedStore, with a feed-maintained in-memory mirror."""

    def __init__(self, store: SharedStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self._mirror: dict[str, RevocationEntry] = {}
        self._loaded = False
        self._notify: Notify | None = None
        self._resync: Callable[[], None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._reload_task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """True while the shared store answers."""
        return self._store.healthy

    async def start(self, notify: Notify, resync: Callable[[], None]) -> None:
        """Follow the feed, then load the mirror (a failure here leaves reads as fallback)."""
        self._notify, self._resync = notify, resync
        self._unsubscribe = self._store.subscribe(REVOCATIONS, self._on_changes,
                                                  self._on_store_resync)
        with contextlib.suppress(StoreUnavailable):
            await self._reload()

    async def close(self) -> None:
        """Stop following the feed (the shared store itself is closed by its owner)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._reload_task is not None:
            self._reload_task.cancel()

    async def _reload(self) -> None:
        records = await self._store.items(REVOCATIONS)
        mirror = {}
        for record in records:
            entry = _entry(record)
            if entry is not None:
                mirror[entry.key] = entry
        self._mirror, self._loaded = mirror, True

    def _on_store_resync(self) -> None:
        """Changes may have been missed: reload the mirror; until then, the checker reads."""
        self._loaded = False
        if self._resync is not None:
            self._resync()
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = asyncio.get_running_loop().create_task(self._reload_quietly())

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._reload()

    def _on_changes(self, changes: Sequence[Change]) -> None:
        for change in changes:
            entry = _entry(change.record)
            if change.op == "put" and entry is not None:
                self._mirror[entry.key] = entry
                if self._notify is not None:
                    self._notify("add", entry)
            elif change.op == "delete":
                self._mirror.pop(change.key, None)
                if self._notify is not None:
                    self._notify("remove", change.key)

    def current_mirror(self, now: float) -> Mapping[str, RevocationEntry] | None:
        """Every revocation by key while the mirror is current at ``now``, else None."""
        if not self._loaded or now >= self._store.fresh_until:
            return None
        return self._mirror

    async def get_many(self, keys: list[str]) -> list[RevocationEntry | None]:
        """From the mirror when current, else one read of the database."""
        now = self._clock()
        if self._loaded and self._store.feed_current:
            found = [self._mirror.get(key) for key in keys]
        else:
            found = [_entry(r) for r in await self._store.get_many(REVOCATIONS, keys)]
        return [e if e is not None and e.expires_at > now else None for e in found]

    async def put(self, entry: RevocationEntry) -> None:
        """Store the entry (durably) and tell every worker through the feed."""
        await self._store.put(REVOCATIONS, entry.key, json.dumps(entry.to_dict()),
                              entry.expires_at, feed=True)
        self._mirror[entry.key] = entry

    async def remove(self, key: str) -> bool:
        """Delete the entry and tell every worker; False when there was none."""
        removed = await self._store.delete(REVOCATIONS, key, feed=True)
        self._mirror.pop(key, None)
        return removed

    async def list(self) -> list[RevocationEntry]:
        """Every live entry, read from the database (the one truth)."""
        entries = (_entry(r) for r in await self._store.items(REVOCATIONS))
        return sorted((e for e in entries if e is not None), key=lambda e: (e.kind, e.id))

    async def claim(self, marker: str, ttl: float) -> bool:
        """Remember a webhook delivery unless some worker already did (atomic)."""
        return await self._store.claim(WEBHOOKS, marker, "1", self._clock() + ttl)

    async def release(self, marker: str) -> None:
        """Forget a delivery marker (its processing failed and may be retried)."""
        await self._store.delete(WEBHOOKS, marker)
