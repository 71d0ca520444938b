"""Clerk v1, v2 and OIDC claims normalise to one Identity."""

from __future__ import annotations

import pytest

from gateway.auth.claims import ClaimError, decode_v2_permissions, identity_from_claims
from gateway.config import ClaimPaths

BASE = {"iss": "https://clerk.example.com", "sub": "user_1", "exp": 2_000_000_000,
        "sid": "sess_1"}


def test_v2_permission_bitmap_example_from_the_protocol_notes() -> None:
    assert decode_v2_permissions("o:dashboard,o:teams", "manage,read", "3,2") == (
        "org:dashboard:manage", "org:dashboard:read", "org:teams:read")


def test_v2_permissions_skip_user_scoped_features() -> None:
    assert decode_v2_permissions("u:beta,o:billing,uo:reports", "read,write", "2,1") == (
        "org:billing:write", "org:reports:read")


@pytest.mark.parametrize(("fea", "per", "fpm"), [
    ("o:a", "read", "1,1"), ("o:a", "read", "x"), ("o:a", "read", "2"),
])
def test_inconsistent_v2_permissions_are_refused(fea: str, per: str, fpm: str) -> None:
    with pytest.raises(ClaimError):
        decode_v2_permissions(fea, per, fpm)


def test_v1_and_v2_tokens_give_the_same_identity() -> None:
    v1 = identity_from_claims({**BASE, "org_id": "org_1", "org_slug": "acme",
                               "org_role": "org:admin",
                               "org_permissions": ["org:dashboard:read"]}, "clerk", ClaimPaths())
    v2 = identity_from_claims({**BASE, "v": 2, "fea": "o:dashboard", "o": {
        "id": "org_1", "slg": "acme", "rol": "admin", "per": "read", "fpm": "1"}},
        "clerk", ClaimPaths())
    for name in ("user_id", "session_id", "org_id", "org_slug", "org_role", "org_permissions"):
        assert getattr(v1, name) == getattr(v2, name), name
    assert v2.features == ("o:dashboard",)
    assert v2.token_version == 2 and v1.token_version == 1


def test_v2_without_an_active_organization() -> None:
    identity = identity_from_claims({**BASE, "v": 2, "pla": "u:free", "fea": "u:beta"},
                                    "clerk", ClaimPaths())
    assert identity.org_id is None and identity.org_role is None
    assert identity.org_permissions == () and identity.plan == "u:free"


def test_actor_is_read_from_act() -> None:
    identity = identity_from_claims({**BASE, "act": {"sub": "user_admin"}}, "clerk", ClaimPaths())
    assert identity.actor_id == "user_admin"


def test_oidc_claims_through_json_pointers() -> None:
    claims = {**BASE, "https://hasura.io/jwt/claims": {
        "x-hasura-org-id": "org_9", "x-hasura-default-role": "editor",
        "x-hasura-allowed-roles": ["editor", "viewer"]}, "scope": "read write"}
    paths = ClaimPaths(
        org_id="/https:~1~1hasura.io~1jwt~1claims/x-hasura-org-id",
        org_role="/https:~1~1hasura.io~1jwt~1claims/x-hasura-default-role",
        org_permissions="/scope",
    )
    identity = identity_from_claims(claims, "oidc", paths)
    assert identity.org_id == "org_9"
    assert identity.org_role == "editor"
    assert identity.org_permissions == ("read", "write")


def test_oidc_without_a_user_id_is_refused() -> None:
    with pytest.raises(ClaimError):
        identity_from_claims({**BASE, "sub": None}, "oidc", ClaimPaths())


@pytest.mark.parametrize("value", ["a\r\nb", "caf\u00e9", "\x00", ["x"]])
def test_values_unsafe_for_headers_are_refused(value: object) -> None:
    with pytest.raises(ClaimError):
        identity_from_claims({**BASE, "org_id": value}, "clerk", ClaimPaths())
