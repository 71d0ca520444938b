"""Where revocations live: aiocache in memory (one replica) or Redis with pub/sub (many).

Keys: ``<prefix>:rev:<kind>:<id>`` hold one JSON entry each and expire with it;
``<prefix>:webhook:<svix-id>`` remember processed webhook deliveries; every change is
published on ``<prefix>:revocations`` so each replica updates its local cache at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from aiocache import RedisCache, SimpleMemoryCache
from aiocache.serializers import JsonSerializer
from redis.exceptions import RedisError

from gateway.config import RevocationSettings
from gateway.numbers import whole_number
from gateway.redaction import describe_error
from gateway.state.store import StoreUnavailable
from gateway.tasks import stop_task

__all__ = [
    "KINDS",
    "MemoryStore",
    "RedisStore",
    "RevocationEntry",
    "RevocationStore",
    "StoreUnavailable",
    "build_store",
    "entry_key",
]

log = logging.getLogger("gateway.revocation")

KINDS = ("session", "user", "membership", "organization", "token")

Notify = Callable[[str, "RevocationEntry | str"], None]
"""Called with ("add", entry) or ("remove", key) for every change seen by this replica."""


def entry_key(kind: str, ident: str) -> str:
    """The local key of one revocation (membership ids are ``org_id:user_id``)."""
    return f"{kind}:{ident}"


@dataclass(frozen=True, slots=True)
class RevocationEntry:
    """One revoked session, user, membership, organization or token id."""

    kind: str
    id: str
    created_at: float
    expires_at: float
    reason: str = ""
    source: str = "admin"

    @property
    def key(self) -> str:
        """The local key (``kind:id``)."""
        return entry_key(self.kind, self.id)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RevocationEntry | None:
        """Rebuild an entry from stored JSON; None when the value is not an entry."""
        try:
            entry = cls(str(data["kind"]), str(data["id"]), float(data["created_at"]),
                        float(data["expires_at"]), str(data.get("reason") or ""),
                        str(data.get("source") or "admin"))
        except (KeyError, TypeError, ValueError):
            return None
        return entry if entry.kind in KINDS else None


class RevocationStore(Protocol):
    """The operations the checker, webhooks and admin API need from a store."""

    @property
    def healthy(self) -> bool:
        """True while the store answers."""

    async def start(self, notify: Notify, resync: Callable[[], None]) -> None:
        """Begin delivering change notifications."""

    async def close(self) -> None:
        """Stop and release connections."""

    async def put(self, entry: RevocationEntry) -> None:
        """Store an entry until it expires and tell every replica."""

    async def remove(self, key: str) -> bool:
        """Delete an entry and tell every replica; False when it did not exist."""

    async def get_many(self, keys: list[str]) -> list[RevocationEntry | None]:
        """Look several keys up at once."""

    async def list(self) -> list[RevocationEntry]:
        """Every live entry."""

    async def claim(self, marker: str, ttl: float) -> bool:
        """Set a marker if absent (atomically); False when it was already set."""

    async def release(self, marker: str) -> None:
        """Drop a marker set by claim."""


class _CacheStore:
    """The part shared by both backends: aiocache calls, key layout, error mapping."""

    def __init__(self, cache: Any, settings: RevocationSettings,
                 clock: Callable[[], float]) -> None:
        self._cache = cache
        self._prefix = settings.key_prefix
        self._clock = clock
        self.healthy = True

    def _rev(self, key: str) -> str:
        return f"{self._prefix}:rev:{key}"

    async def _call(self, op: Any) -> Any:
        try:
            result = await op
        except (RedisError, OSError, TimeoutError) as exc:
            self.healthy = False
            raise StoreUnavailable(type(exc).__name__) from exc
        self.healthy = True
        return result

    async def _put_value(self, entry: RevocationEntry) -> None:
        ttl = entry.expires_at - self._clock()
        if ttl > 0:
            await self._call(self._cache.set(self._rev(entry.key), entry.to_dict(),
                                             ttl=max(0.001, ttl)))

    async def get_many(self, keys: list[str]) -> list[RevocationEntry | None]:
        """Look several keys up with one round trip."""
        values = await self._call(self._cache.multi_get([self._rev(k) for k in keys]))
        now = self._clock()
        out: list[RevocationEntry | None] = []
        for value in values:
            entry = RevocationEntry.from_dict(value) if isinstance(value, dict) else None
            out.append(entry if entry is not None and entry.expires_at > now else None)
        return out

    async def _remove_value(self, key: str) -> bool:
        return bool(await self._call(self._cache.delete(self._rev(key))))

    async def claim(self, marker: str, ttl: float) -> bool:
        """SET NX with a TTL (aiocache `add`)."""
        try:
            await self._call(self._cache.add(f"{self._prefix}:webhook:{marker}", 1, ttl=ttl))
        except ValueError:
            return False
        return True

    async def release(self, marker: str) -> None:
        """Forget a marker."""
        await self._call(self._cache.delete(f"{self._prefix}:webhook:{marker}"))

    async def _entries(self, keys: list[str]) -> list[RevocationEntry]:
        if not keys:
            return []
        values = await self._call(self._cache.multi_get(keys))
        now = self._clock()
        entries = (RevocationEntry.from_dict(v) if isinstance(v, dict) else None for v in values)
        return sorted((e for e in entries if e is not None and e.expires_at > now),
                      key=lambda e: (e.kind, e.id))


class MemoryStore(_CacheStore):
    """In-process store (aiocache SimpleMemoryCache): one replica, nothing to run."""

    def __init__(self, settings: RevocationSettings, clock: Callable[[], float]) -> None:
        super().__init__(SimpleMemoryCache(timeout=None), settings, clock)
        self._notify: Notify | None = None

    async def start(self, notify: Notify, resync: Callable[[], None]) -> None:
        """Changes are delivered in-process."""
        self._notify = notify

    async def close(self) -> None:
        """Drop everything."""
        await self._cache.clear()

    async def put(self, entry: RevocationEntry) -> None:
        """Store and notify."""
        await self._put_value(entry)
        if self._notify is not None:
            self._notify("add", entry)

    async def remove(self, key: str) -> bool:
        """Delete and notify."""
        removed = await self._remove_value(key)
        if self._notify is not None:
            self._notify("remove", key)
        return removed

    async def list(self) -> list[RevocationEntry]:
        """Every live entry."""
        prefix = self._rev("")
        keys = [k for k in await self._cache.raw("keys") if str(k).startswith(prefix)]
        return await self._entries(keys)


def _redis_options(url: str, settings: RevocationSettings) -> dict[str, Any]:
    parts = urlsplit(url)
    db = (parts.path or "/0").lstrip("/") or "0"
    pool: dict[str, Any] = {"socket_timeout": max(settings.store_timeout_seconds, 1.0)}
    if parts.username:
        pool["username"] = unquote(parts.username)
    return {
        "endpoint": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "db": whole_number(db) or 0,
        "password": unquote(parts.password) if parts.password else None,
        "ssl": parts.scheme == "rediss",
        "create_connection_timeout": settings.store_timeout_seconds,
        "timeout": settings.store_timeout_seconds,
        "serializer": JsonSerializer(),
        "connection_pool_kwargs": pool,
    }


class RedisStore(_CacheStore):
    """Shared store (aiocache RedisCache) with a pub/sub channel for prompt propagation."""

    def __init__(self, url: str, settings: RevocationSettings,
                 clock: Callable[[], float]) -> None:
        super().__init__(RedisCache(**_redis_options(url, settings)), settings, clock)
        self.healthy = False
        self._channel = f"{settings.key_prefix}:revocations"
        self._retry = settings.store_retry_seconds
        self._task: asyncio.Task[None] | None = None
        self._notify: Notify | None = None
        self._resync: Callable[[], None] | None = None

    async def start(self, notify: Notify, resync: Callable[[], None]) -> None:
        """Subscribe in the background (the gateway starts even when Redis is down)."""
        self._notify, self._resync = notify, resync
        self._task = asyncio.create_task(self._listen(), name="revocation-pubsub")

    async def close(self) -> None:
        """Stop listening and close the connection pool."""
        await stop_task(self._task)
        self._task = None
        await self._cache.client.aclose()

    async def _listen(self) -> None:
        """Keep one subscription alive; after every (re)connect, ask for a resync."""
        while True:
            pubsub = self._cache.client.pubsub()
            try:
                async with asyncio.timeout(self._retry + 1):
                    await pubsub.subscribe(self._channel)
                await self._call(self._cache.raw("ping"))
                if self._resync is not None:
                    self._resync()
                last_ping = time.monotonic()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=self._retry)
                    if message is not None:
                        self._deliver(message.get("data"))
                    if time.monotonic() - last_ping >= self._retry:
                        await self._call(self._cache.raw("ping"))
                        last_ping = time.monotonic()
            except (RedisError, OSError, TimeoutError, StoreUnavailable) as exc:
                if self.healthy:
                    log.warning("revocation store unreachable",
                                extra={"error": describe_error(exc)})
                self.healthy = False
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await pubsub.aclose()
            await asyncio.sleep(self._retry)

    def _deliver(self, data: Any) -> None:
        if self._notify is None or not isinstance(data, bytes | str):
            return
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if message.get("op") == "add" and isinstance(message.get("entry"), dict):
            entry = RevocationEntry.from_dict(message["entry"])
            if entry is not None:
                self._notify("add", entry)
        elif message.get("op") == "remove" and isinstance(message.get("key"), str):
            self._notify("remove", message["key"])

    async def _publish(self, message: dict[str, Any]) -> None:
        await self._call(self._cache.raw("publish", self._channel, json.dumps(message)))

    async def put(self, entry: RevocationEntry) -> None:
        """Store, then publish to every replica (this one included)."""
        await self._put_value(entry)
        await self._publish({"op": "add", "entry": entry.to_dict()})

    async def remove(self, key: str) -> bool:
        """Delete, then publish."""
        removed = await self._remove_value(key)
        await self._publish({"op": "remove", "key": key})
        return removed

    async def list(self) -> list[RevocationEntry]:
        """Every live entry (SCAN, never KEYS)."""

        async def scan() -> list[str]:
            found: list[str] = []
            async for key in self._cache.client.scan_iter(match=self._rev("*"), count=500):
                found.append(key.decode() if isinstance(key, bytes) else str(key))
            return found

        try:
            async with asyncio.timeout(max(5.0, self._retry)):
                keys = await scan()
        except (RedisError, OSError, TimeoutError) as exc:
            self.healthy = False
            raise StoreUnavailable(type(exc).__name__) from exc
        return await self._entries(keys)


def build_store(redis_url: str | None, settings: RevocationSettings,
                clock: Callable[[], float]) -> RevocationStore:
    """Redis when a URL is configured, else the in-process store."""
    if redis_url:
        return RedisStore(redis_url, settings, clock)
    return MemoryStore(settings, clock)
