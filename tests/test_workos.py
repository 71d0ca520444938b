"""WorkOS AuthKit access tokens: allowed and refused like Clerk's, with the same headers."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth.claims import ClaimError, identity_from_claims
from gateway.config import ClaimPaths, ConfigError, load_settings
from gateway.devissuer import DevIssuer, SigningKey
from tests.conftest import GatewayFactory, Running

ROUTES = [
    {"name": "admin", "path_prefix": "/admin", "require": {"role": "admin"}},
    {"name": "widgets", "path_prefix": "/widgets", "require": {"permission": "widgets:read"}},
    {"name": "audit", "path_prefix": "/audit", "require": {"feature": "audit-logs"}},
    {"name": "beta", "path_prefix": "/beta", "require": {"feature": "new-editor"}},
    {"name": "orgs", "path_prefix": "/org", "require": {"organization": True}},
]


def workos_config(clerk: DevIssuer, **extra: Any) -> dict[str, Any]:
    """A config trusting the fake WorkOS (api_url pointed at the dev issuer) and Clerk."""
    issuer = {"name": "workos", "preset": "workos", "client_id": clerk.workos_client_id,
              "api_url": clerk.issuer, **extra}
    return {"issuers": [{"name": "clerk", "issuer": clerk.issuer}, issuer], "routes": ROUTES}


@pytest.fixture
async def gw(clerk: DevIssuer, make_gateway: GatewayFactory) -> Running:
    return await make_gateway(config=workos_config(clerk), issuer_env=False)


async def test_keys_come_from_the_workos_jwks_path(clerk: DevIssuer, gw: Running) -> None:
    assert clerk.hits["workos_jwks"] == 1
    assert (await gw.get("/", clerk.workos_token())).status == 200


async def test_workos_token_yields_the_same_identity_headers_as_clerk(
    clerk: DevIssuer, gw: Running
) -> None:
    token = clerk.workos_token(sub="user_01A", sid="session_01A", org_id="org_01A",
                               role="admin", permissions=["widgets:read", "widgets:write"],
                               entitlements=["audit-logs"], feature_flags=["new-editor"],
                               act={"sub": "admin@example.com"})
    response = await gw.get("/", token)
    assert response.status == 200
    headers = response.headers
    assert headers["X-User-Id"] == "user_01A"
    assert headers["X-Session-Id"] == "session_01A"
    assert headers["X-Org-Id"] == "org_01A"
    assert headers["X-Role"] == "org:admin"  # the role in Clerk's form, as for Clerk tokens
    assert headers["X-Org-Permissions"] == "widgets:read,widgets:write"
    assert headers["X-Features"] == "audit-logs,new-editor"
    assert headers["X-Actor-Id"] == "admin@example.com"
    clerk_token = clerk.token(sub="user_2", org_id="org_2", role="admin")
    clerk_headers = (await gw.get("/", clerk_token)).headers
    assert {h for h in headers if h.startswith("X-")} >= {
        h for h in clerk_headers if h.startswith(("X-User", "X-Org-Id", "X-Role"))}


@pytest.mark.parametrize(("path", "claims", "status", "reason"), [
    ("/admin/x", {"org_id": "org_1", "role": "admin"}, 200, None),
    ("/admin/x", {"org_id": "org_1", "role": "member"}, 403, "missing_role"),
    ("/admin/x", {"org_id": "org_1", "role": "member", "roles": ["member", "admin"]}, 200, None),
    ("/widgets", {"permissions": ["widgets:read"]}, 200, None),
    ("/widgets", {"permissions": ["widgets:write"]}, 403, "missing_permission"),
    ("/audit", {"entitlements": ["audit-logs"]}, 200, None),
    ("/audit", {}, 403, "missing_feature"),
    ("/beta", {"feature_flags": ["new-editor"]}, 200, None),
    ("/org", {}, 403, "organization_required"),
    ("/org", {"org_id": "org_1"}, 200, None),
])
async def test_route_requirements_apply_unchanged(
    clerk: DevIssuer, gw: Running, path: str, claims: dict[str, Any], status: int,
    reason: str | None,
) -> None:
    response = await gw.get(path, clerk.workos_token(**claims))
    assert response.status == status
    if reason:
        assert (await response.json())["reason"] == reason


async def test_issuer_is_verified_exactly(clerk: DevIssuer, gw: Running) -> None:
    for iss in (clerk.workos_issuer + "/", clerk.workos_issuer.replace("client_", "client_X"),
                f"{clerk.issuer}/user_management/", "https://api.workos.com/user_management/x"):
        response = await gw.get("/", clerk.sign(clerk.workos_claims(iss=iss)))
        assert response.status == 401, iss
        assert (await response.json())["reason"] == "wrong_issuer"


async def test_expired_workos_token_is_refused(clerk: DevIssuer, gw: Running) -> None:
    response = await gw.get("/", clerk.workos_token(lifetime=-60))
    assert response.status == 401
    assert (await response.json())["reason"] == "expired"


async def test_foreign_key_is_refused(clerk: DevIssuer, gw: Running) -> None:
    stranger = SigningKey(kid=clerk.key.kid)
    response = await gw.get("/", clerk.sign(clerk.workos_claims(), key=stranger))
    assert response.status == 401
    assert (await response.json())["reason"] == "bad_signature"


async def test_bad_claim_types_are_refused_not_a_500(clerk: DevIssuer, gw: Running) -> None:
    for bad in ({"roles": "admin,\x00"}, {"permissions": [1, {}]}, {"org_id": ["x"]},
                {"act": "someone"}):
        response = await gw.get("/", clerk.workos_token(**bad))
        assert response.status == 401, bad
        assert (await response.json())["reason"] == "invalid_claims"


def test_client_id_derives_issuer_and_keys() -> None:
    settings = load_settings({"WORKOS_CLIENT_ID": "client_01ABC"})
    (issuer,) = settings.issuers
    assert issuer.name == "workos" and issuer.preset == "workos"
    assert issuer.issuer == "https://api.workos.com/user_management/client_01ABC"
    assert issuer.jwks_url == "https://api.workos.com/sso/jwks/client_01ABC"


def test_custom_authkit_domain_overrides_both(tmp_path: Any) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "issuers:\n"
        "  - name: workos\n    preset: workos\n    client_id: client_01ABC\n"
        "    api_url: https://auth.example.com\n"
        "  - name: workos2\n    preset: workos\n    client_id: client_01DEF\n"
        "    issuer: https://id.example.com/user_management/client_01DEF\n"
        "    jwks_url: https://id.example.com/keys\n")
    first, second = load_settings({}, str(path)).issuers
    assert first.issuer == "https://auth.example.com/user_management/client_01ABC"
    assert first.jwks_url == "https://auth.example.com/sso/jwks/client_01ABC"
    assert second.issuer == "https://id.example.com/user_management/client_01DEF"
    assert second.jwks_url == "https://id.example.com/keys"


def test_invalid_workos_settings_are_all_reported(tmp_path: Any) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "issuers:\n"
        "  - name: a\n    preset: workos\n"
        "  - name: b\n    preset: workos\n    client_id: client/../x\n"
        "  - name: c\n    preset: workos\n    client_id: client_1\n    api_url: http://example.com\n"
        "  - name: d\n    preset: clerk\n    issuer: https://x.example.com\n"
        "    client_id: client_1\n")
    with pytest.raises(ConfigError) as info:
        load_settings({}, str(path))
    problems = "\n".join(info.value.problems)
    assert "issuers[0].client_id: preset workos needs client_id" in problems
    assert "issuers[1].client_id: must be a WorkOS client id" in problems
    assert "issuers[2].api_url:" in problems and "must be an https URL" in problems
    assert "issuers[3].client_id: unknown setting" in problems


def test_entitlements_and_feature_flags_become_features_once() -> None:
    identity = identity_from_claims(
        {"iss": "i", "sub": "user_1", "exp": 1, "entitlements": ["a", "b"],
         "feature_flags": ["b", "c"]}, "workos", ClaimPaths())
    assert identity.features == ("a", "b", "c")


def test_workos_token_without_sub_is_refused() -> None:
    with pytest.raises(ClaimError):
        identity_from_claims({"iss": "i", "exp": 1, "sid": "s"}, "workos", ClaimPaths())
