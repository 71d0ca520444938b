"""Configuration reload (SIGHUP): validate first, then swap routes, issuers and mappings.

A reload never drops connections: listeners stay up and each request uses either the old
or the new components, never a mix within one pipeline step. New or changed issuers get a
fresh key set (fetched before the swap); unchanged issuers keep theirs, cache included.
Settings that only take effect at start-up (listeners, workers, upstream, secrets) keep
their running values and are named in the log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.auth.assertion import AssertionSigner, build_signer
from gateway.auth.jwks import IssuerKeys
from gateway.auth.revocation import clerk_issuers
from gateway.auth.signing_keys import SigningKeyError
from gateway.auth.verify import Verifier
from gateway.config import ConfigError, Settings, load_settings
from gateway.cors import CorsPolicy
from gateway.logs import protect_secrets
from gateway.pipeline import extractor_for, router_for
from gateway.redaction import secret_values

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["RESTART_FIELDS", "ReloadResult", "apply_settings", "reload_from_sources"]

log = logging.getLogger("gateway.reload")

RESTART_FIELDS = (
    "machine_tokens",
    "listen", "admin_listen", "workers", "upstream", "realm", "log_level", "log_format",
    "admin_token", "redis_url", "webhook_secret", "clerk_secret_key", "clerk_api_url",
    "forward_auth", "proxy", "revocation", "limits", "shutdown_timeout_seconds",
    "workos_webhook_secret", "hasura", "assertion", "state_dir", "shared_state",
)
_VERIFIER_FIELDS = (
    "issuers", "identity_headers", "leeway_seconds", "max_token_bytes", "token_cache_size",
    "token_types",
)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload changed, and what it could not change without a restart."""

    routes: int
    issuers_added: tuple[str, ...] = ()
    issuers_replaced: tuple[str, ...] = ()
    issuers_removed: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()


def _effective(old: Settings, new: Settings) -> tuple[Settings, tuple[str, ...]]:
    """The new settings with start-up-only fields kept at their running values."""
    pinned = {
        f: getattr(old, f) for f in RESTART_FIELDS
        if hasattr(old, f) and getattr(old, f) != getattr(new, f)
    }
    return dataclasses.replace(new, **pinned), tuple(pinned)


async def apply_settings(gateway: Gateway, new: Settings) -> ReloadResult:
    """Swap the gateway's reloadable components for ones built from validated settings."""
    old = gateway.settings
    settings, restart = _effective(old, new)
    current: Mapping[str, IssuerKeys] = gateway.keys
    fresh: dict[str, IssuerKeys] = {}
    if gateway.session is not None:
        for issuer in settings.issuers:
            held = current.get(issuer.name)
            if held is None or held.issuer != issuer or settings.keys != old.keys:
                fresh[issuer.name] = gateway.issuer_keys(issuer, settings.keys)
        await asyncio.gather(*(keys.refresh(fetch=True) for keys in fresh.values()))
    signer = await _signer_for(gateway, settings)
    added = tuple(n for n in fresh if n not in current)
    replaced = tuple(n for n in fresh if n in current)
    wanted = {i.name for i in settings.issuers}
    retired = [k for name, k in current.items() if name not in wanted or name in fresh]
    removed = tuple(name for name in current if name not in wanted)
    # From here to the end of the swap there is no await: requests see all old or all new.
    for name in removed:
        del gateway.keys[name]
        with contextlib.suppress(KeyError):
            gateway.metrics.keys.remove(name)
    gateway.keys.update(fresh)
    authorizer = gateway.authorizer
    if any(getattr(old, f) != getattr(settings, f) for f in _VERIFIER_FIELDS) or fresh:
        gateway.verifier = Verifier(settings, gateway.keys, gateway.metrics, gateway.clock,
                                    gateway.machine)
        authorizer.verifier = gateway.verifier
    authorizer.extractor = extractor_for(settings)
    authorizer.router = router_for(settings)
    authorizer.assertions = signer
    authorizer.cors = CorsPolicy(settings.cors)
    gateway.revocation.introspect_issuers = clerk_issuers(settings)
    gateway.settings = settings
    protect_secrets(secret_values(settings))  # a reload may bring new secrets
    for keys in fresh.values():
        keys.start()
    for keys in retired:
        await keys.stop()
    return ReloadResult(
        routes=len(settings.routes),
        issuers_added=added,
        issuers_replaced=replaced,
        issuers_removed=removed,
        restart_required=restart,
    )


async def _signer_for(gateway: Gateway, settings: Settings) -> AssertionSigner | None:
    """A signer for the new settings (re-reading the key: a SIGHUP is how a key file is
    rotated); the running one when the new key cannot be loaded."""
    try:
        return await asyncio.to_thread(build_signer, settings, gateway.clock)
    except SigningKeyError as exc:
        log.error("signing key not reloaded; the running key stays in use",
                  extra={"problem": str(exc)})
        return gateway.authorizer.assertions


async def reload_from_sources(
    gateway: Gateway, environ: Mapping[str, str], path: str | None
) -> ReloadResult | None:
    """Re-read the environment and file, validate, apply; None (and one log line) if invalid."""
    try:
        new = await asyncio.to_thread(load_settings, dict(environ), path)
    except ConfigError as exc:
        log.error("configuration reload refused; the running configuration stays in force",
                  extra={"config": path, "problems": exc.problems})
        return None
    result = await gateway.reload(new)
    log.info("configuration reloaded", extra={
        "config": path, "routes": result.routes, "issuers_added": list(result.issuers_added),
        "issuers_replaced": list(result.issuers_replaced),
        "issuers_removed": list(result.issuers_removed),
        "restart_required": list(result.restart_required),
    })
    return result
