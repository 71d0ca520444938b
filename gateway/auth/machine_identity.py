"""One Identity for machines and for non-session JWTs: subject, type, scopes, custom claims.

The subject decides the identity headers: `user_...` fills user_id (X-User-Id), `org_...`
org_id (X-Org-Id: an API key an organization owns), `mch_...` machine_id (X-Machine-Id).
A machine holds no organization role unless a claim (`org_role`) says so, and no session.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gateway.auth.claims import ClaimError, Identity, _safe_text, _split

__all__ = ["identity_from_api", "identity_from_machine_jwt", "scopes_of"]

# Claims every JWT carries; the rest are the credential's custom claims.
_REGISTERED = frozenset((
    "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "azp", "scope", "scp", "scopes",
    "client_id", "v", "sid",
))
_MAX_CUSTOM_CLAIMS = 64


def _subject_fields(subject: str) -> dict[str, Any]:
    if subject.startswith("user_"):
        return {"user_id": subject}
    if subject.startswith("org_"):
        return {"user_id": "", "org_id": subject}
    if subject.startswith("mch_"):
        return {"user_id": "", "machine_id": subject}
    raise ClaimError("the subject must be a user_, org_ or mch_ id")


def scopes_of(value: Any, where: str) -> tuple[str, ...]:
    """Scopes from a list or a space- (or comma-) separated string."""
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    return _split(value, where)


def _custom(claims: Any) -> Mapping[str, Any]:
    if claims is None:
        return {}
    if not isinstance(claims, dict):
        raise ClaimError("claims must be an object")
    custom = {k: v for k, v in claims.items() if k not in _REGISTERED}
    return dict(list(custom.items())[:_MAX_CUSTOM_CLAIMS])


def _role(custom: Mapping[str, Any]) -> str | None:
    role = _safe_text(custom.get("org_role"), "org_role")
    if role is None:
        return None
    return role if role.startswith("org:") else f"org:{role}"


def identity_from_api(body: Mapping[str, Any], token_type: str, issuer: str,
                      fallback_expiry: float) -> Identity:
    """The identity of a verify-endpoint answer; raise ClaimError when it is unusable."""
    subject = _safe_text(body.get("subject"), "subject")
    if not subject:
        raise ClaimError("subject is missing")
    expiration = body.get("expiration")
    if expiration is None:
        expires_at = fallback_expiry
    elif (isinstance(expiration, bool) or not isinstance(expiration, int | float)
          or not math.isfinite(expiration)):
        raise ClaimError("expiration must be a number")
    else:
        expires_at = float(expiration) / 1000.0
    custom = _custom(body.get("claims"))
    return Identity(
        issuer=issuer, expires_at=expires_at, token_type=token_type,
        token_id=_safe_text(body.get("id"), "id"),
        scopes=scopes_of(body.get("scopes"), "scopes"),
        org_role=_role(custom), custom_claims=custom, **_subject_fields(subject))


def identity_from_machine_jwt(claims: Mapping[str, Any], token_type: str) -> Identity:
    """The identity of a verified M2M JWT or OAuth JWT access token (RFC 9068)."""
    subject = _safe_text(claims.get("sub"), "sub")
    if not subject:
        raise ClaimError("sub is required")
    raw_scopes = next((claims[k] for k in ("scope", "scp", "scopes") if k in claims), None)
    if raw_scopes is None and token_type == "m2m_token":
        raw_scopes = claims.get("aud")  # Clerk's M2M JWTs name the machines they may call
    custom = _custom(dict(claims))
    return Identity(
        issuer=claims["iss"], expires_at=float(claims["exp"]), token_type=token_type,
        token_id=_safe_text(claims.get("jti"), "jti"),
        scopes=scopes_of(raw_scopes, "scope"),
        org_role=_role(custom), custom_claims=custom, **_subject_fields(subject))
