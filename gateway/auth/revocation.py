"""The revocation check run on every request: a local short-TTL cache in front of the store.

Steady state costs a few dict look-ups per request: each key an identity can be revoked by
(session, user, token id, organization, membership) is answered from the local cache while
its answer is younger than ``local_ttl_seconds``; older answers are refreshed from the store
in one batched, single-flight read. Changes published by any replica update the local cache
at once; the TTL is the backstop when a notification is lost.

When the store cannot be reached, a known revocation keeps denying until it expires; a known
"not revoked" answer is trusted for ``store_grace_seconds`` past its TTL; after that,
``on_store_error`` decides: fail_closed (REVOCATION_UNAVAILABLE, 503) or fail_open (allow,
counted in ``fail_open{component="revocation_store"}``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.auth.claims import Identity
from gateway.auth.introspection import SessionIntrospector
from gateway.auth.revocation_store import (
    RevocationEntry,
    RevocationStore,
    StoreUnavailable,
    entry_key,
)
from gateway.by_identity import ByIdentity
from gateway.config import RevocationSettings, Settings
from gateway.metrics import Metrics
from gateway.reasons import Reason

__all__ = [
    "RevocationChecker",
    "RevocationListener",
    "SocketCloser",
    "SocketRegistry",
    "clerk_issuers",
    "identity_keys",
]

log = logging.getLogger("gateway.revocation")

_MAX_LOCAL = 200_000
_MAX_NOTIFIED = 10_000
_KEYS_REMEMBERED = 4096  # identities whose revocation keys are kept (the token cache holds them)


class RevocationListener(Protocol):
    """Told about every revocation this replica learns of (its own and other replicas')."""

    def on_revoked(self, entry: RevocationEntry) -> None:
        """React to a new revocation (e.g. close open WebSockets); must not block."""


class SocketRegistry(Protocol):
    """What the proxy's registry of open WebSockets offers."""

    def close_session(self, session_id: str) -> object:
        """Close every socket opened with this session."""

    def close_user(self, user_id: str) -> object:
        """Close every socket opened by this user."""


class SocketCloser:
    """A listener closing the sockets of revoked sessions and users (membership,
    organization and token revocations close sockets only when the registry also offers
    ``close_matching(predicate)`` taking an Identity predicate)."""

    def __init__(self, registry: SocketRegistry) -> None:
        self._registry = registry

    def on_revoked(self, entry: RevocationEntry) -> None:
        """Close what the entry takes away."""
        if entry.kind == "session":
            self._registry.close_session(entry.id)
        elif entry.kind == "user":
            self._registry.close_user(entry.id)
        else:
            close_matching = getattr(self._registry, "close_matching", None)
            if callable(close_matching):
                close_matching(lambda identity: entry_matches(entry, identity))


def clerk_issuers(settings: Settings) -> frozenset[str]:
    """The issuers whose sessions Clerk's Backend API knows (introspection asks only them)."""
    return frozenset(i.issuer for i in settings.issuers if i.preset == "clerk")


def identity_keys(identity: Identity) -> list[str]:
    """Every local key that would revoke this identity."""
    keys = [entry_key("user", identity.user_id)]
    if identity.session_id:
        keys.append(entry_key("session", identity.session_id))
    if identity.token_id:
        keys.append(entry_key("token", identity.token_id))
    if identity.org_id:
        keys.append(entry_key("organization", identity.org_id))
        keys.append(entry_key("membership", f"{identity.org_id}:{identity.user_id}"))
    return keys


def _key_tuple(identity: Identity) -> tuple[str, ...]:
    """identity_keys() as a tuple (what RevocationChecker remembers per identity object)."""
    return tuple(identity_keys(identity))


def entry_matches(entry: RevocationEntry, identity: Identity) -> bool:
    """True when the entry revokes this identity."""
    return entry.key in identity_keys(identity)


@dataclass(slots=True)
class _Local:
    entry: RevocationEntry | None
    fetched_at: float
    seq: int


class RevocationChecker:
    """Implements the pipeline's RevocationCheck; also the write side (revoke, unrevoke)."""

    def __init__(
        self,
        settings: RevocationSettings,
        store: RevocationStore,
        metrics: Metrics,
        clock: Callable[[], float],
        introspector: SessionIntrospector | None = None,
        introspect_issuers: frozenset[str] = frozenset(),
    ) -> None:
        self.settings = settings
        self.introspect_issuers = introspect_issuers
        self.store = store
        # A store mirrored in memory (the shared SQLite store) answers without I/O.
        self._mirror: Callable[[float], Mapping[str, RevocationEntry] | None] | None = getattr(
            store, "current_mirror", None)
        self.introspector = introspector
        self._metrics = metrics
        self._clock = clock
        self._ttl = settings.local_ttl_seconds
        self._grace = settings.store_grace_seconds
        self._fail_open = settings.on_store_error == "fail_open"
        self._local: dict[str, _Local] = {}
        # The keys of the identities being checked (the same cached object comes back on
        # every request of its token).
        self._keys: ByIdentity[Identity, tuple[str, ...]] = ByIdentity(_KEYS_REMEMBERED)
        self._seq = 0
        self._inflight: dict[str, asyncio.Task[bool]] = {}
        self._down_until = 0.0
        self._resync_at = float("-inf")
        self._listeners: list[RevocationListener] = []
        self._notified: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._counters = {
            (source, result): metrics.revocation_checks.labels(source, result)
            for source in ("local", "store", "introspection", "introspection_cache")
            for result in ("clear", "revoked", "unavailable", "fail_open")
        }
        self._fail_open_counter = metrics.fail_open.labels("revocation_store")
        self._add_one = {key: metrics.tally(child) for key, child in self._counters.items()}

    async def start(self) -> None:
        """Start receiving change notifications from the store."""
        await self.store.start(self._on_change, self._on_resync)

    async def close(self) -> None:
        """Stop background work and close the store."""
        for task in list(self._background):
            task.cancel()
        await self.store.close()

    @property
    def ready(self) -> bool:
        """True while the store answers."""
        return self.store.healthy

    def subscribe(self, listener: RevocationListener) -> Callable[[], None]:
        """Register a listener; returns the function that unregisters it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    # -- the hot path -------------------------------------------------------------------

    async def check(self, identity: Identity) -> Reason | None:
        """None when the identity is still valid, else REVOKED or REVOCATION_UNAVAILABLE."""
        revoked, stale = self._local_state(identity)
        if revoked:
            return self._count("local", Reason.REVOKED)
        source = "local"
        if stale:
            source = "store"
            reason = await self._check_stale(stale)
            if reason is not None:
                return self._count(source, reason)
        introspector = self._introspector_for(identity)
        if introspector is not None and identity.session_id:
            cached, reason, failed_open = await introspector.check(identity.session_id)
            source = "introspection_cache" if cached else "introspection"
            if failed_open:  # not "clear": nobody knows (fail_open_total counts it too)
                self._add_one[(source, "fail_open")]()
                return None
            if reason is Reason.REVOKED:
                self._remember_introspected(identity.session_id)
            if reason is not None:
                return self._count(source, reason)
        self._add_one[(source, "clear")]()
        return None

    def check_now(self, identity: Identity) -> tuple[bool, Reason | None]:
        """`check` answered from local state only: (False, None) when it would need I/O."""
        revoked, stale = self._local_state(identity)
        if revoked:
            return True, self._count("local", Reason.REVOKED)
        if stale:
            return False, None
        source = "local"
        introspector = self._introspector_for(identity)
        if introspector is not None and identity.session_id:
            answer = introspector.answer_now(identity.session_id)
            if answer is False:
                return False, None
            source = "introspection_cache"
            if answer is Reason.REVOKED:
                self._remember_introspected(identity.session_id)
                return True, self._count(source, answer)
        self._add_one[(source, "clear")]()
        return True, None

    def _local_state(self, identity: Identity) -> tuple[bool, list[str]]:
        """(revoked by what is known locally, the identity's keys whose local state is too
        old to tell)."""
        now = self._clock()
        stale: list[str] = []
        local = self._local
        resync_at = self._resync_at
        ttl = self._ttl
        mirror = self._mirror(now) if self._mirror is not None else None
        keys = self._keys.of(identity, _key_tuple)
        if mirror is not None and local.keys().isdisjoint(keys) and mirror.keys().isdisjoint(
                keys):
            return False, stale  # the usual answer, in two set tests: known, and not revoked
        for key in keys:
            item = local.get(key)
            if item is None or now - item.fetched_at >= ttl or item.fetched_at < resync_at:
                if mirror is None:
                    stale.append(key)
                    continue
                entry = mirror.get(key)
                if entry is not None and entry.expires_at > now:
                    return True, stale
            elif item.entry is not None and item.entry.expires_at > now:
                return True, stale
        return False, stale

    def _introspector_for(self, identity: Identity) -> SessionIntrospector | None:
        """The introspector when Clerk's Backend API is asked about this identity's session."""
        if identity.session_id and identity.issuer in self.introspect_issuers:
            return self.introspector
        return None

    def _count(self, source: str, reason: Reason) -> Reason:
        label = "revoked" if reason is Reason.REVOKED else "unavailable"
        self._add_one[(source, label)]()
        return reason

    async def _check_stale(self, keys: list[str]) -> Reason | None:
        await self._load(keys)
        now = self._clock()
        unresolved = False
        for key in keys:
            item = self._local.get(key)
            if item is None:
                unresolved = True
                continue
            if item.entry is not None and item.entry.expires_at > now:
                return Reason.REVOKED
            if now - item.fetched_at >= self._ttl + self._grace:
                unresolved = True
        if not unresolved:
            return None
        if self._fail_open:
            self._fail_open_counter.inc()
            self._counters[("store", "fail_open")].inc()
            return None
        return Reason.REVOCATION_UNAVAILABLE

    async def _load(self, keys: list[str]) -> None:
        """Refresh keys from the store: one batched read, shared by concurrent requests."""
        waits: set[asyncio.Task[bool]] = set()
        todo: list[str] = []
        for key in keys:
            task = self._inflight.get(key)
            if task is None:
                todo.append(key)
            else:
                waits.add(task)
        if todo and self._clock() >= self._down_until:
            task = asyncio.create_task(self._fetch(todo))
            for key in todo:
                self._inflight[key] = task
            waits.add(task)
        if waits:
            await asyncio.shield(asyncio.gather(*waits))

    async def _fetch(self, keys: list[str]) -> bool:
        seq = self._seq
        started = self._clock()  # the answers are as old as the read's start, not its end
        try:
            entries = await self.store.get_many(keys)
        except StoreUnavailable:
            self._down_until = self._clock() + self.settings.store_retry_seconds
            return False
        except Exception:  # an unexpected store answer: treated as the store being down
            log.exception("revocation store read failed")
            self._down_until = self._clock() + self.settings.store_retry_seconds
            return False
        finally:
            for key in keys:
                self._inflight.pop(key, None)
        for key, entry in zip(keys, entries, strict=True):
            current = self._local.get(key)
            if current is not None and current.seq > seq:
                continue  # a notification arrived while we were reading: it is newer
            self._set_local(key, entry, started)
        return True

    def _set_local(self, key: str, entry: RevocationEntry | None, now: float) -> None:
        self._seq += 1
        self._local.pop(key, None)
        self._local[key] = _Local(entry, now, self._seq)
        if len(self._local) > _MAX_LOCAL:
            for old in list(self._local)[: _MAX_LOCAL // 10]:
                item = self._local[old]
                if item.entry is None or item.entry.expires_at <= now:
                    del self._local[old]

    # -- change notifications -------------------------------------------------------------

    def _on_change(self, op: str, value: RevocationEntry | str) -> None:
        now = self._clock()
        if isinstance(value, RevocationEntry):
            self._set_local(value.key, value, now)
            self._announce(value)
        else:
            self._set_local(value, None, now)

    def _on_resync(self) -> None:
        """The store is (again) reachable and notifications may have been missed: every
        local answer must be re-read before it is trusted as fresh again."""
        self._down_until = 0.0
        self._resync_at = self._clock()

    def _announce(self, entry: RevocationEntry) -> None:
        if self._notified.get(entry.key) == entry.created_at:
            return
        self._notified[entry.key] = entry.created_at
        if len(self._notified) > _MAX_NOTIFIED:
            for old in list(self._notified)[: _MAX_NOTIFIED // 2]:
                del self._notified[old]
        for listener in list(self._listeners):
            try:
                listener.on_revoked(entry)
            except Exception:  # a listener's bug must not stop revocation
                log.exception("revocation listener failed")

    # -- the write side -----------------------------------------------------------------

    def make_entry(self, kind: str, ident: str, *, ttl: float | None = None, reason: str = "",
                   source: str = "admin") -> RevocationEntry:
        """A new entry living ``ttl`` seconds (default entry_ttl_seconds), and never less
        than the revocation horizon: the longest any token it may apply to stays accepted."""
        now = self._clock()
        lifetime = max(ttl or self.settings.entry_ttl_seconds, self.settings.horizon_seconds)
        return RevocationEntry(kind, ident, now, now + lifetime, reason, source)

    async def revoke(self, entry: RevocationEntry) -> None:
        """Store a revocation (raises StoreUnavailable) and apply it here at once."""
        await self.store.put(entry)
        self._on_change("add", entry)

    async def unrevoke(self, kind: str, ident: str) -> bool:
        """Remove a revocation (raises StoreUnavailable); False when there was none."""
        key = entry_key(kind, ident)
        removed = await self.store.remove(key)
        self._on_change("remove", key)
        return removed

    async def list(self) -> list[RevocationEntry]:
        """Every live revocation (raises StoreUnavailable)."""
        return await self.store.list()

    def _remember_introspected(self, session_id: str) -> None:
        """Share an introspected revocation with every replica (best effort)."""
        key = entry_key("session", session_id)
        item = self._local.get(key)
        if item is not None and item.entry is not None:
            return
        entry = self.make_entry("session", session_id, reason="introspection",
                                source="introspection")
        self._set_local(key, entry, self._clock())
        self._announce(entry)

        async def share() -> None:
            try:
                await self.store.put(entry)
            except StoreUnavailable:
                log.warning("could not share an introspected revocation")

        task = asyncio.create_task(share())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
