"""Name a presented credential's type before anything trusts it (Clerk's token classes).

Clerk signs session tokens, JWT-template tokens and M2M JWTs with the same instance key, so
a valid signature says nothing about what a JWT is for. The class is read from the protected
header and the subject, as Clerk's backend SDK reads it (packages/backend/src/tokens/
jwtCategories.ts and machine.ts in clerk/javascript):

- header `cat`: `cl_B7d4PD111AAA` session, `cl_B7d4PD222AAA` JWT template, `cl_B7d4PD333AAA`
  M2M; `cl_I7d4PD111III` is stamped on every class by some instances and says nothing; an
  absent `cat` is a session token minted before the rollout; any other value is unknown;
- header `typ` `at+jwt` or `application/at+jwt` (RFC 9068, compared case-insensitively): an
  OAuth access token; `JWT` (or absent) says nothing; any other explicit type (RFC 8725
  3.11: `logout+jwt`, `dpop+jwt`, ...) is unknown;
- `sub` starting with `mch_`: a machine (M2M);
- opaque tokens by prefix: `ak_` API key, `mt_` M2M token, `oat_` OAuth access token.

A JWT is a session token only when none of these says otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CAT_IGNORE", "CAT_JWT_TEMPLATE", "CAT_M2M", "CAT_SESSION", "MACHINE_PREFIXES",
    "MACHINE_TYPES", "MACHINE_TYPE_NAMES", "TokenType",
    "jwt_token_type", "opaque_token_type",
]

CAT_SESSION = "cl_B7d4PD111AAA"
CAT_JWT_TEMPLATE = "cl_B7d4PD222AAA"
CAT_M2M = "cl_B7d4PD333AAA"
CAT_IGNORE = "cl_I7d4PD111III"
_OAUTH_TYPES = frozenset(("at+jwt", "application/at+jwt"))
_PLAIN_TYPES = frozenset(("jwt", "application/jwt"))
_MACHINE_SUBJECT = "mch_"


class TokenType(enum.Enum):
    """A credential's type, by Clerk's names; UNKNOWN is never accepted anywhere."""

    __hash__ = object.__hash__  # by identity, in C (as gateway/reasons.py's enums)

    SESSION_TOKEN = "session_token"
    JWT_TEMPLATE = "jwt_template"
    M2M_TOKEN = "m2m_token"
    API_KEY = "api_key"
    OAUTH_TOKEN = "oauth_token"
    UNKNOWN = "unknown"


MACHINE_PREFIXES: Mapping[str, TokenType] = {
    "ak_": TokenType.API_KEY, "mt_": TokenType.M2M_TOKEN, "oat_": TokenType.OAUTH_TOKEN,
}

MACHINE_TYPES = frozenset((TokenType.API_KEY, TokenType.M2M_TOKEN, TokenType.OAUTH_TOKEN))
MACHINE_TYPE_NAMES = frozenset(t.value for t in MACHINE_TYPES)

_BY_CAT = {
    CAT_SESSION: TokenType.SESSION_TOKEN,
    CAT_JWT_TEMPLATE: TokenType.JWT_TEMPLATE,
    CAT_M2M: TokenType.M2M_TOKEN,
}


def opaque_token_type(token: str) -> TokenType | None:
    """The machine type an opaque token's prefix names, or None for anything else."""
    for prefix, token_type in MACHINE_PREFIXES.items():
        if token.startswith(prefix):
            return token_type
    return None


def jwt_token_type(
    header: Mapping[str, Any], claims: Mapping[str, Any], *, clerk: bool = True
) -> TokenType:
    """The class of a parsed JWT (see the module docstring); fails closed to UNKNOWN.

    Each marker that names a class is evidence; none makes a session token, markers that
    name different classes make UNKNOWN. For issuers of the `oidc` preset (`clerk=False`) an
    RFC 9068 access token is the issuer's ordinary credential, so `typ` is no evidence there.
    """
    evidence: set[TokenType] = set()
    cat = header.get("cat", CAT_IGNORE)  # absent: minted before the rollout (null is present)
    if cat != CAT_IGNORE:
        by_cat = _BY_CAT.get(cat) if isinstance(cat, str) else None
        if by_cat is None:
            return TokenType.UNKNOWN
        evidence.add(by_cat)
    typ = header.get("typ", "JWT")
    if not isinstance(typ, str):
        return TokenType.UNKNOWN
    typ = typ.lower()
    if typ in _OAUTH_TYPES:
        if clerk:
            evidence.add(TokenType.OAUTH_TOKEN)
    elif typ not in _PLAIN_TYPES:
        return TokenType.UNKNOWN
    sub = claims.get("sub")
    if isinstance(sub, str) and sub.startswith(_MACHINE_SUBJECT):
        evidence.add(TokenType.M2M_TOKEN)
    if not evidence:
        return TokenType.SESSION_TOKEN
    return evidence.pop() if len(evidence) == 1 else TokenType.UNKNOWN
