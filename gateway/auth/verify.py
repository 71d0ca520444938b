"""Verify session tokens: strict parsing, allow-listed algorithms, signature, claims, cache.

Parsing is done once, strictly (base64url alphabet, no duplicate JSON keys, no NaN), and the
signature is checked with PyJWT's algorithm objects; the claim checks are explicit so that each
failure maps to its own reason. A verified token is cached until its `exp`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from gateway.auth.claims import ClaimError, Identity, identity_from_claims
from gateway.auth.classify import MACHINE_TYPES, TokenType, jwt_token_type, opaque_token_type
from gateway.auth.jwks import IssuerKeys, KeyEntry
from gateway.auth.machine import Client, MachineVerifier
from gateway.auth.machine_identity import identity_from_machine_jwt
from gateway.auth.mismatch import MismatchLog
from gateway.auth.rejection import TokenRejected
from gateway.auth.token_cache import TokenCache
from gateway.config import IssuerSettings, Settings
from gateway.metrics import Metrics
from gateway.reasons import Reason

__all__ = ["TokenRejected", "Verified", "Verifier"]

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_ALGORITHMS = get_default_algorithms()
_KEY_TYPES: dict[str, tuple[type, ...]] = {
    "RS": (rsa.RSAPublicKey,),
    "PS": (rsa.RSAPublicKey,),
    "ES": (ec.EllipticCurvePublicKey,),
    "Ed": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
}


@dataclass(frozen=True, slots=True)
class Verified:
    """A verified token's identity and the identity headers it yields."""

    identity: Identity
    headers: tuple[tuple[str, str], ...]
    # Opaque credentials: when the cached verdict goes stale (JWTs: exp plus the leeway).
    ask_again_at: float | None = None


def _b64decode(segment: str) -> bytes:
    if not _B64URL.match(segment) or len(segment) % 4 == 1:
        raise TokenRejected(Reason.MALFORMED_TOKEN, "not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenRejected(Reason.MALFORMED_TOKEN, "not base64url") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _json_object(segment: str, part: str) -> dict[str, Any]:
    raw = _b64decode(segment)
    try:
        value = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise TokenRejected(Reason.MALFORMED_TOKEN, f"{part} is not a JSON object") from exc
    if not isinstance(value, dict):
        raise TokenRejected(Reason.MALFORMED_TOKEN, f"{part} is not a JSON object")
    return value


def _numeric_date(claims: Mapping[str, Any], name: str, *, required: bool = False) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenRejected(Reason.INVALID_CLAIMS, f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenRejected(Reason.INVALID_CLAIMS, f"{name} must be a number")
    return float(value)


class Verifier:
    """Turns a token into a Verified identity or raises TokenRejected / KeysUnavailable."""

    def __init__(
        self,
        settings: Settings,
        keys: Mapping[str, IssuerKeys],
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        machine: MachineVerifier | None = None,
    ) -> None:
        self._types = settings.token_types
        self.machine = machine
        self._issuers: dict[str, IssuerSettings] = {i.issuer: i for i in settings.issuers}
        self._keys = keys
        self._metrics = metrics
        self._clock = clock
        self._leeway = settings.leeway_seconds
        self._max_bytes = settings.max_token_bytes
        self.mismatches = MismatchLog()  # iss/azp/aud expected vs received, rate-limited
        self._header_map = tuple(settings.identity_headers.items())
        self.cache: TokenCache[Verified] = TokenCache(settings.token_cache_size)

    def _admit(self, token_type: str, accepts: frozenset[str] | None) -> None:
        """Refuse a type the gateway does not verify, or this route does not accept."""
        if token_type not in self._types:
            raise TokenRejected(Reason.WRONG_TOKEN_TYPE, f"{token_type} is not accepted",
                                token_type=token_type)
        if accepts is not None and token_type not in accepts:
            raise TokenRejected(Reason.TOKEN_TYPE_NOT_ACCEPTED,
                                f"this route does not accept {token_type}",
                                token_type=token_type)

    async def verify(self, token: str, accepts: frozenset[str] | None = None,
                     client: Client = None) -> Verified:
        """Verify a token of a type the route accepts, using the cache for tokens already seen.

        `accepts` (None: every type of `token_types`) is checked before any network call;
        `client` gives the address whose budget an unknown opaque token spends.
        """
        if len(token) > self._max_bytes:
            raise TokenRejected(Reason.TOKEN_TOO_LARGE)
        now = self._clock()
        key = TokenCache.key(token)
        cached = self.cache.get(key)
        if cached is not None:
            verified, expires_at = cached
            ask_again_at = verified.ask_again_at
            if (now <= expires_at + self._leeway if ask_again_at is None
                    else now < ask_again_at):
                self._metrics.cache_lookup(True)
                self._admit(verified.identity.token_type, accepts)
                return verified
            self.cache.discard(key)
            if opaque_token_type(token) is None:
                raise TokenRejected(Reason.EXPIRED, token_type=verified.identity.token_type)
        self._metrics.cache_lookup(False)
        opaque = opaque_token_type(token)
        if opaque is not None:
            return await self._verify_opaque(token, key, opaque, accepts, client, now)
        verified = await self._verify_uncached(token, now, accepts)
        self.cache.put(key, verified, verified.identity.expires_at, now)
        self._metrics.token_cache_entries.set(len(self.cache))
        return verified

    def cache_key(self, token: str) -> bytes | None:
        """The key the token's verification is cached under; None for a token too long to
        ever be verified."""
        return None if len(token) > self._max_bytes else TokenCache.key(token)

    def verified_now(self, token: str, accepts: frozenset[str] | None = None,
                     key: bytes | None = None) -> Verified | None:
        """The cached verification of a still-valid token the route accepts; None (uncounted)
        for `verify` to decide. `key`: the token's cache_key(), when known."""
        if len(token) > self._max_bytes:
            return None
        cached = self.cache.get(key if key is not None else TokenCache.key(token))
        if cached is None:
            return None
        verified, expires_at = cached
        now = self._clock()
        ask_again_at = verified.ask_again_at
        if (now > expires_at + self._leeway if ask_again_at is None else now >= ask_again_at):
            return None
        token_type = verified.identity.token_type
        if token_type not in self._types or (accepts is not None and token_type not in accepts):
            return None
        self._metrics.cache_lookup(True)
        return verified

    async def _verify_opaque(self, token: str, key: bytes, token_type: TokenType,
                             accepts: frozenset[str] | None, client: Client,
                             now: float) -> Verified:
        """An opaque machine credential, verified at Clerk's Backend API (gateway/auth/machine)."""
        self._admit(token_type.value, accepts)
        if self.machine is None:
            raise TokenRejected(Reason.WRONG_TOKEN_TYPE, "machine credentials are not enabled",
                                token_type=token_type.value)
        try:
            result = await self.machine.verify(token, key, token_type, client)
        except TokenRejected as exc:
            exc.token_type = exc.token_type or token_type.value
            raise
        identity = result.identity
        if result.reusable_until is None:
            return Verified(identity, self._headers_for(identity))
        until = min(result.reusable_until, identity.expires_at)
        verified = Verified(identity, self._headers_for(identity), until)
        self.cache.put(key, verified, until, now)
        self._metrics.token_cache_entries.set(len(self.cache))
        return verified

    async def _verify_uncached(self, token: str, now: float,
                               accepts: frozenset[str] | None = None) -> Verified:
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenRejected(Reason.MALFORMED_TOKEN, f"{len(parts)} segments, expected 3")
        header = _json_object(parts[0], "header")
        claims = _json_object(parts[1], "payload")
        signature = _b64decode(parts[2])
        issuer = self._issuer_for(claims)
        token_type = jwt_token_type(header, claims, clerk=issuer.preset == "clerk")
        self._admit(token_type.value, accepts)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise TokenRejected(Reason.UNSUPPORTED_ALGORITHM)
        if "crit" in header:
            raise TokenRejected(Reason.UNSUPPORTED_HEADER, "crit is not supported")
        entry = await self._key_for(issuer, header.get("kid"))
        self._check_signature(alg, entry, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)
        self._check_claims(issuer, claims, now, token_type)
        try:
            identity = self._identity(token_type, claims, issuer)
        except ClaimError as exc:
            raise TokenRejected(Reason.INVALID_CLAIMS, str(exc)) from exc
        return Verified(identity, self._headers_for(identity))

    @staticmethod
    def _identity(token_type: TokenType, claims: Mapping[str, Any],
                  issuer: IssuerSettings) -> Identity:
        """The identity of verified claims, by the token's class."""
        if token_type in MACHINE_TYPES:
            return identity_from_machine_jwt(claims, token_type.value)
        if token_type is TokenType.JWT_TEMPLATE:
            identity = identity_from_claims(claims, "oidc", issuer.claims)
            return dataclasses.replace(identity, token_type=token_type.value)
        return identity_from_claims(claims, issuer.preset, issuer.claims)

    def _issuer_for(self, claims: Mapping[str, Any]) -> IssuerSettings:
        iss = claims.get("iss")
        if not isinstance(iss, str):
            raise TokenRejected(Reason.WRONG_ISSUER, "iss is missing")
        issuer = self._issuers.get(iss)
        if issuer is None:
            self.mismatches.note(Reason.WRONG_ISSUER, self._issuers, iss)
            raise TokenRejected(Reason.WRONG_ISSUER)
        return issuer

    async def _key_for(self, issuer: IssuerSettings, kid: Any) -> KeyEntry:
        keys = self._keys[issuer.name]
        if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > 256):
            raise TokenRejected(Reason.UNKNOWN_KEY, "kid must be a short string")
        if kid is None and keys.needs_kid:
            raise TokenRejected(Reason.MISSING_KEY_ID)
        entry = keys.get(kid)
        if entry is None:
            assert kid is not None
            entry = await keys.lookup_unknown(kid)
        if entry is None:
            raise TokenRejected(Reason.UNKNOWN_KEY)
        return entry

    @staticmethod
    def _check_signature(alg: str, entry: KeyEntry, signing_input: bytes, signature: bytes) -> None:
        if entry.algorithm is not None and entry.algorithm != alg:
            raise TokenRejected(Reason.UNSUPPORTED_ALGORITHM, "alg differs from the key's alg")
        if not isinstance(entry.key, _KEY_TYPES[alg[:2]]):
            raise TokenRejected(Reason.UNSUPPORTED_ALGORITHM, "alg does not fit the key type")
        if not _ALGORITHMS[alg].verify(signing_input, entry.key, signature):
            raise TokenRejected(Reason.BAD_SIGNATURE)

    def _check_claims(self, issuer: IssuerSettings, claims: Mapping[str, Any], now: float,
                      token_type: TokenType = TokenType.SESSION_TOKEN) -> None:
        leeway = self._leeway
        exp = _numeric_date(claims, "exp", required=True)
        nbf = _numeric_date(claims, "nbf")
        iat = _numeric_date(claims, "iat")
        assert exp is not None
        if now > exp + leeway:
            raise TokenRejected(Reason.EXPIRED)
        if nbf is not None and nbf > now + leeway:
            raise TokenRejected(Reason.NOT_YET_VALID, "nbf is in the future")
        if iat is not None and iat > now + leeway:
            raise TokenRejected(Reason.NOT_YET_VALID, "iat is in the future")
        # Every issuer has a maximum (declared or the default), so no accepted token can
        # outlive the revocations that apply to it; a token naming no start has no bound.
        start = iat if iat is not None else nbf
        if start is None or exp - start > issuer.effective_max_lifetime:
            raise TokenRejected(Reason.LIFETIME_TOO_LONG)
        if issuer.authorized_parties and token_type not in MACHINE_TYPES:
            azp = claims.get("azp")
            if not isinstance(azp, str) or azp not in issuer.authorized_parties:
                self.mismatches.note(Reason.WRONG_AUTHORIZED_PARTY, issuer.authorized_parties,
                                     azp)
                raise TokenRejected(Reason.WRONG_AUTHORIZED_PARTY)
        if issuer.audiences:
            aud = claims.get("aud")
            audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not any(isinstance(a, str) and a in issuer.audiences for a in audiences):
                self.mismatches.note(Reason.WRONG_AUDIENCE, issuer.audiences, aud)
                raise TokenRejected(Reason.WRONG_AUDIENCE)
        if (claims.get("sts") == "pending" and not issuer.accept_pending_sessions
                and token_type is TokenType.SESSION_TOKEN):
            raise TokenRejected(Reason.SESSION_PENDING)

    def _headers_for(self, identity: Identity) -> tuple[tuple[str, str], ...]:
        pairs = []
        for field_name, header in self._header_map:
            value = identity.field_text(field_name)
            if value is not None:
                pairs.append((header, value))
        return tuple(pairs)
