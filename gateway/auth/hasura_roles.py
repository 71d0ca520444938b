"""Hasura roles of an identity: shared by the Hasura webhook door and signed assertions."""

from __future__ import annotations

from gateway.auth.claims import Identity

__all__ = ["allowed_roles", "default_role"]


def default_role(identity: Identity, fallback: str) -> str:
    """The role a request acts as unless it asks for another: the organization role."""
    return identity.org_role.removeprefix("org:") if identity.org_role else fallback


def allowed_roles(identity: Identity, fallback: str) -> tuple[str, ...]:
    """The Hasura roles an identity may act as: its organization role(s), then the fallback."""
    roles = [r.removeprefix("org:") for r in (identity.org_role, *identity.roles) if r]
    return tuple(dict.fromkeys([*roles, fallback]))
