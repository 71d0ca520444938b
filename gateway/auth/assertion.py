"""Signed identity assertions: a short-lived JWT, signed by the gateway, per allowed request.

Signing costs more than a whole cached decision, so an assertion is reused for the same
verified token and audience until shortly before it expires (or, when it already lives as
long as the token it vouches for, until it expires). Claims come from the normalised
Identity only, never from the raw token.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jwt

from gateway.auth.claims import Identity
from gateway.auth.hasura_roles import allowed_roles, default_role
from gateway.auth.signing_keys import SigningKey, load_signing_key, publish_key
from gateway.config import Settings
from gateway.config_assertion import AssertionSettings, origin_of

__all__ = ["AssertionSigner", "assertion_claims", "build_signer", "route_audiences"]

_REFRESH_FRACTION = 0.25
_MAX_REFRESH_MARGIN = 15.0
_PUBLISH_MARGIN = 60.0  # a replaced key stays published one lifetime plus this long
Headers = tuple[tuple[str, str], ...]


def route_audiences(
    settings: AssertionSettings, upstream: str | None,
    routes: Iterable[tuple[str, str | None, str | None]],
) -> tuple[str, dict[str, str]]:
    """The default audience and each route's own: (name, assertion audience, upstream) in."""
    default = settings.audience or (origin_of(upstream) if upstream else "")
    own: dict[str, str] = {}
    for name, audience, route_upstream in routes:
        if audience:
            own[name] = audience
        elif route_upstream and not settings.audience:
            own[name] = origin_of(route_upstream)
    return default, own


def _hasura_claims(identity: Identity, fallback_role: str) -> dict[str, Any]:
    """The Hasura JWT-mode claims: the same roles the Hasura webhook door answers with."""
    claims: dict[str, Any] = {
        "x-hasura-user-id": identity.user_id,
        "x-hasura-default-role": default_role(identity, fallback_role),
        "x-hasura-allowed-roles": list(allowed_roles(identity, fallback_role)),
    }
    if identity.org_id:
        claims["x-hasura-org-id"] = identity.org_id
    return claims


def assertion_claims(identity: Identity, settings: AssertionSettings, audience: str,
                     now: float) -> dict[str, Any]:
    """The claims of one assertion; `exp` never beyond the source token's."""
    assert settings.issuer is not None
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "aud": audience,
        "sub": identity.user_id,
        "iat": int(now),
        "exp": int(min(now + settings.lifetime_seconds, identity.expires_at)),
        "jti": secrets.token_urlsafe(16),
        "source_issuer": identity.issuer,
        "token_type": identity.token_type,
    }
    optional: Mapping[str, Any] = {
        "sid": identity.session_id,
        "org_id": identity.org_id,
        "org_slug": identity.org_slug,
        "org_role": identity.org_role,
        "org_permissions": list(identity.org_permissions),
        "plan": identity.plan,
        "features": list(identity.features),
        "act": {"sub": identity.actor_id} if identity.actor_id else None,
        "scopes": list(identity.scopes),
        "machine_id": identity.machine_id,
    }
    claims.update({k: v for k, v in optional.items() if v})
    if settings.claims_namespace:
        claims[settings.claims_namespace] = _hasura_claims(identity, settings.default_role)
    return claims


class AssertionSigner:
    """Adds the signed assertion header to an allowed request's identity headers."""

    def __init__(
        self,
        settings: AssertionSettings,
        key: SigningKey,
        audiences: tuple[str, dict[str, str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.key = key
        self._default_audience, self._route_audiences = audiences
        self._clock = clock
        self._header = settings.header
        self._limit = settings.cache_size
        self._margin = min(settings.lifetime_seconds * _REFRESH_FRACTION, _MAX_REFRESH_MARGIN)
        self._cache: dict[tuple[int, str], tuple[Identity, Headers, float]] = {}

    def audience_for(self, route_name: str) -> str:
        """The audience of assertions for requests on a route."""
        return self._route_audiences.get(route_name, self._default_audience)

    def headers(self, identity: Identity, identity_headers: Headers, route_name: str) -> Headers:
        """The identity headers plus a (reused while fresh) assertion for this identity."""
        audience = self._route_audiences.get(route_name, self._default_audience)
        key = (id(identity), audience)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] is identity and now < cached[2]:
            return cached[1]
        claims = assertion_claims(identity, self.settings, audience, now)
        token = jwt.encode(claims, self.key.private_key, algorithm=self.key.algorithm,
                           headers={"kid": self.key.kid, "typ": "JWT"})
        headers = (*identity_headers, (self._header, token))
        exp = claims["exp"]
        reuse_until = exp if exp >= int(identity.expires_at) else exp - self._margin
        if self._limit:
            if len(self._cache) >= self._limit:
                self._evict(now)
            self._cache[key] = (identity, headers, reuse_until)
        return headers

    def _evict(self, now: float) -> None:
        """Drop expired entries, then the oldest tenth if that freed too little."""
        cache = self._cache
        for stale in [k for k, v in cache.items() if v[2] <= now]:
            del cache[stale]
        if len(cache) >= self._limit:
            for old in list(cache)[: max(1, self._limit // 10)]:
                del cache[old]


def build_signer(settings: Settings, clock: Callable[[], float] = time.time
                 ) -> AssertionSigner | None:
    """The signer the settings ask for (None when assertions are off); publishes its key.

    Raises SigningKeyError when the key cannot be read, does not fit, or cannot be kept.
    """
    config = settings.assertion
    if not config.enabled:
        return None
    key = load_signing_key(config.key_file, settings.state_dir, config.algorithm)
    publish_key(settings.state_dir, key, config.lifetime_seconds + _PUBLISH_MARGIN, clock)
    audiences = route_audiences(
        config, settings.upstream,
        ((r.name, r.assertion_audience, r.upstream) for r in settings.routes))
    return AssertionSigner(config, key, audiences, clock)
