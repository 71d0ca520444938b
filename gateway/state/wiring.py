"""Which backend holds which shared facts, chosen once from the settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gateway.auth.budget import lookup_rates
from gateway.auth.revocation_store import RevocationStore, build_store
from gateway.auth.verdicts import LocalVerdicts
from gateway.config import IssuerSettings, Settings
from gateway.state.budget_share import SharedBudgets
from gateway.state.introspection_share import IntrospectionShare
from gateway.state.keysets import KeySetShare, source_digest
from gateway.state.revocations import SharedRevocationStore
from gateway.state.schema import database_path
from gateway.state.sqlite import SqliteStore
from gateway.state.verdict_share import SharedVerdicts

__all__ = [
    "introspection_share_for",
    "keyset_share_for",
    "lookup_budgets_for",
    "machine_verdicts_for",
    "revocation_store_for",
    "shared_store_for",
]

_MAX_POLL_SECONDS = 0.25


def shared_store_for(settings: Settings, clock: Callable[[], float]) -> SqliteStore | None:
    """The host's SQLite store in the state directory; None when shared_state is off."""
    if not settings.shared_state:
        return None
    lag = settings.revocation.local_ttl_seconds
    return SqliteStore(database_path(Path(settings.state_dir)), clock,
                       poll_seconds=min(_MAX_POLL_SECONDS, lag / 4), max_lag=lag)


def keyset_share_for(shared: SqliteStore | None,
                     issuer: IssuerSettings) -> KeySetShare | None:
    """The issuer's shared key set (None without a shared store or for a pinned PEM key)."""
    if shared is None or issuer.jwt_key:
        return None
    source = source_digest(issuer.issuer, issuer.key_source, issuer.jwks_url,
                           issuer.backend_api_url)
    return KeySetShare(shared, source)


def introspection_share_for(shared: SqliteStore | None, settings: Settings,
                            clock: Callable[[], float]) -> IntrospectionShare | None:
    """Introspection answers, leases and back-off shared through the host's store."""
    if shared is None:
        return None
    return IntrospectionShare(shared, source_digest(settings.clerk_api_url), clock)


def machine_verdicts_for(shared: SqliteStore | None, settings: Settings,
                         clock: Callable[[], float]) -> SharedVerdicts | None:
    """Machine-token verdicts, leases and back-off shared through the host's store."""
    if shared is None:
        return None
    machine = settings.machine_tokens
    return SharedVerdicts(shared, source_digest(settings.clerk_api_url),
                          LocalVerdicts(machine.cache_size), machine.grace_seconds, clock)


def lookup_budgets_for(shared: SqliteStore | None, settings: Settings,
                       clock: Callable[[], float]) -> SharedBudgets | None:
    """Machine-token look-up budgets (per client, per instance) shared through the host's
    store."""
    if shared is None:
        return None
    return SharedBudgets(shared, source_digest(settings.clerk_api_url),
                         *lookup_rates(settings.machine_tokens), clock)


def revocation_store_for(settings: Settings, shared: SqliteStore | None,
                         clock: Callable[[], float]) -> RevocationStore:
    """Redis when GATEWAY_REDIS_URL is set (across hosts), else the shared SQLite store,
    else (shared_state off) the process's memory."""
    redis_url = settings.redis_url.value if settings.redis_url else None
    if redis_url or shared is None:
        return build_store(redis_url, settings.revocation, clock)
    return SharedRevocationStore(shared, clock)
