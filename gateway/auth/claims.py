"""Normalise Clerk v1, Clerk v2, WorkOS AuthKit and plain OIDC claims into one Identity."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gateway.config import ClaimPaths
from gateway.numbers import whole_number

__all__ = ["ClaimError", "Identity", "decode_v2_permissions", "identity_from_claims"]


class ClaimError(ValueError):
    """A claim has the wrong type or an unsafe value."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the caller is, independent of the token's format."""

    issuer: str
    user_id: str
    expires_at: float
    session_id: str | None = None
    org_id: str | None = None
    org_slug: str | None = None
    org_role: str | None = None
    org_permissions: tuple[str, ...] = ()
    plan: str | None = None
    features: tuple[str, ...] = ()
    actor_id: str | None = None
    session_status: str | None = None
    # The credential's type and what machines carry (gateway/auth/machine_identity.py).
    token_type: str = "session_token"
    scopes: tuple[str, ...] = ()
    machine_id: str | None = None
    custom_claims: Mapping[str, Any] = dataclasses.field(
        default_factory=dict, compare=False, hash=False)
    token_id: str | None = None
    token_version: int = 1
    roles: tuple[str, ...] = ()

    def field_text(self, name: str) -> str | None:
        """The value of one identity field as header text (lists comma-joined)."""
        value = getattr(self, name)
        if isinstance(value, tuple):
            return ",".join(value) or None
        return value or None


def _safe_text(value: Any, claim: str) -> str | None:
    """A claim as a header-safe string, or None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ClaimError(f"{claim} must be a string")
    text = str(value)
    if not text.isprintable() or not text.isascii() or ("," in text and claim.endswith("_id")):
        raise ClaimError(f"{claim} holds characters not allowed in a header")
    return text or None


def _split(value: Any, claim: str) -> tuple[str, ...]:
    """A comma list (string) or array of strings as a tuple."""
    if value is None:
        return ()
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list):
        items = [_safe_text(v, claim) or "" for v in value]
    else:
        raise ClaimError(f"{claim} must be a list or a comma-separated string")
    out = tuple(i for i in items if i)
    for item in out:
        if "," in item or not item.isprintable() or not item.isascii():
            raise ClaimError(f"{claim} holds characters not allowed in a header")
    return out


def _org_role(role: str | None) -> str | None:
    """Clerk's `org:<role>` form of a role."""
    if role is None:
        return None
    return role if role.startswith("org:") else f"org:{role}"


def decode_v2_permissions(features: str, permissions: str, bitmaps: str) -> tuple[str, ...]:
    """Expand Clerk v2 `fea`/`per`/`fpm` into `org:<feature>:<permission>` names."""
    per = [p.strip() for p in permissions.split(",") if p.strip()]
    org_features = []
    for entry in features.split(","):
        scope, _, name = entry.strip().partition(":")
        if name and "o" in scope:
            org_features.append(name)
    masks = [m.strip() for m in bitmaps.split(",") if m.strip()]
    if len(masks) > len(org_features):
        raise ClaimError("o.fpm has more entries than organization features")
    out: list[str] = []
    for feature, mask_text in zip(org_features, masks, strict=False):
        mask = whole_number(mask_text, 64)
        if mask is None:
            raise ClaimError("o.fpm must be a comma list of integers")
        if mask >> len(per):
            raise ClaimError("o.fpm sets a bit with no permission")
        out.extend(f"org:{feature}:{p}" for j, p in enumerate(per) if mask >> j & 1)
    return tuple(out)


def _actor(claims: Mapping[str, Any]) -> str | None:
    act = claims.get("act")
    if act is None:
        return None
    if not isinstance(act, dict):
        raise ClaimError("act must be an object")
    return _safe_text(act.get("sub"), "act.sub")


def _clerk_identity(claims: Mapping[str, Any], base: dict[str, Any]) -> Identity:
    version = claims.get("v", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ClaimError("v must be an integer")
    base.update(
        session_id=_safe_text(claims.get("sid"), "sid"),
        actor_id=_actor(claims),
        token_version=version,
        session_status=_safe_text(claims.get("sts"), "sts"),
    )
    if version >= 2:
        org = claims.get("o")
        if org is not None and not isinstance(org, dict):
            raise ClaimError("o must be an object")
        org = org or {}
        fea = claims.get("fea")
        if fea is not None and not isinstance(fea, str):
            raise ClaimError("fea must be a comma-separated string")
        per, fpm = org.get("per"), org.get("fpm")
        if (per is not None and not isinstance(per, str)) or (fpm is not None and not isinstance(
            fpm, str
        )):
            raise ClaimError("o.per and o.fpm must be comma-separated strings")
        return Identity(
            **base,
            org_id=_safe_text(org.get("id"), "o.id"),
            org_slug=_safe_text(org.get("slg"), "o.slg"),
            org_role=_org_role(_safe_text(org.get("rol"), "o.rol")),
            org_permissions=decode_v2_permissions(fea or "", per or "", fpm or ""),
            plan=_safe_text(claims.get("pla"), "pla"),
            features=_split(fea, "fea"),
        )
    return Identity(
        **base,
        org_id=_safe_text(claims.get("org_id"), "org_id"),
        org_slug=_safe_text(claims.get("org_slug"), "org_slug"),
        org_role=_org_role(_safe_text(claims.get("org_role"), "org_role")),
        org_permissions=_split(claims.get("org_permissions"), "org_permissions"),
        plan=_safe_text(claims.get("pla"), "pla"),
        features=_split(claims.get("fea"), "fea"),
    )


def _pointer(claims: Mapping[str, Any], pointer: str | None) -> Any:
    """Resolve an RFC 6901 JSON pointer; None when any step is missing."""
    if not pointer:
        return None
    node: Any = claims
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and (index := whole_number(part)) is not None \
                and index < len(node):
            node = node[index]
        else:
            return None
        if node is None:
            return None
    return node


def _oidc_identity(claims: Mapping[str, Any], paths: ClaimPaths, base: dict[str, Any]) -> Identity:
    base["user_id"] = _safe_text(_pointer(claims, paths.user_id), "user_id")
    if not base["user_id"]:
        raise ClaimError(f"no user id at {paths.user_id}")
    permissions = _pointer(claims, paths.org_permissions)
    if isinstance(permissions, str):
        permissions = permissions.replace(" ", ",")
    return Identity(
        **base,
        session_id=_safe_text(_pointer(claims, paths.session_id), "session_id"),
        org_id=_safe_text(_pointer(claims, paths.org_id), "org_id"),
        org_slug=_safe_text(_pointer(claims, paths.org_slug), "org_slug"),
        org_role=_safe_text(_pointer(claims, paths.org_role), "org_role"),
        org_permissions=_split(permissions, "org_permissions"),
        plan=_safe_text(_pointer(claims, paths.plan), "plan"),
        features=_split(_pointer(claims, paths.features), "features"),
        actor_id=_safe_text(_pointer(claims, paths.actor_id), "actor_id"),
        roles=_split(_pointer(claims, paths.roles), "roles"),
    )


def _roles(value: Any, claim: str) -> tuple[str, ...]:
    """A role list in Clerk's `org:<role>` form."""
    return tuple(_org_role(r) or "" for r in _split(value, claim))


def _workos_identity(claims: Mapping[str, Any], base: dict[str, Any]) -> Identity:
    """WorkOS AuthKit access-token claims (`org_id`, `role`, `roles`, `permissions`, ...)."""
    features = (*_split(claims.get("entitlements"), "entitlements"),
                *_split(claims.get("feature_flags"), "feature_flags"))
    return Identity(
        **base,
        session_id=_safe_text(claims.get("sid"), "sid"),
        actor_id=_actor(claims),
        org_id=_safe_text(claims.get("org_id"), "org_id"),
        org_role=_org_role(_safe_text(claims.get("role"), "role")),
        roles=_roles(claims.get("roles"), "roles"),
        org_permissions=_split(claims.get("permissions"), "permissions"),
        features=tuple(dict.fromkeys(features)),
    )


_MAPPED_FIELDS = ("org_id", "org_slug", "org_role", "org_permissions", "plan", "features",
                  "roles")


def _with_mapped_claims(identity: Identity, claims: Mapping[str, Any],
                        paths: ClaimPaths) -> Identity:
    """Fill fields the preset left empty from configured pointers (JWT-template claims)."""
    changes: dict[str, Any] = {}
    for name in _MAPPED_FIELDS:
        pointer = getattr(paths, name)
        if pointer is None or getattr(identity, name):
            continue
        value = _pointer(claims, pointer)
        if value is None:
            continue
        if name == "roles":
            changes[name] = _roles(value, name)
        elif name in ("org_permissions", "features"):
            changes[name] = _split(value, name)
        elif name == "org_role":
            changes[name] = _org_role(_safe_text(value, name))
        else:
            changes[name] = _safe_text(value, name)
    return replace(identity, **changes) if changes else identity


def identity_from_claims(
    claims: Mapping[str, Any], preset: str, paths: ClaimPaths
) -> Identity:
    """Build the Identity for verified claims; raise ClaimError when they are unusable."""
    base: dict[str, Any] = {
        "issuer": claims["iss"],
        "user_id": _safe_text(claims.get("sub"), "sub"),
        "expires_at": float(claims["exp"]),
        "token_id": _safe_text(claims.get("jti"), "jti"),
    }
    if preset == "oidc":
        return _oidc_identity(claims, paths, base)
    if not base["user_id"]:
        raise ClaimError("sub is required")
    if preset == "workos":
        return _with_mapped_claims(_workos_identity(claims, base), claims, paths)
    return _with_mapped_claims(_clerk_identity(claims, base), claims, paths)
