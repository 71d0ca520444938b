"""Route rules in proxy mode: a 403 is answered by the gateway and never reaches the upstream."""

from __future__ import annotations

import pytest

from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory, Running
from tests.policy_support import Profile, mint
from tests.proxy_support import Upstream

ROUTES = [
    {"name": "admin", "path_prefix": "/admin", "require": {"role": "admin"}},
    {"name": "invoices", "path_template": "/orgs/{org_id}/invoices/**",
     "require": {"bind": "org_id", "permission": "org:invoices:read"}},
]
MEMBER = Profile(sub="user_m", org_id="org_1", role="member")
READER = Profile(sub="user_r", org_id="org_1", role="member",
                 permissions=("org:invoices:read",))
ADMIN = Profile(sub="user_a", org_id="org_1", role="admin")


@pytest.fixture
async def gw(make_gateway: GatewayFactory, upstream: Upstream) -> Running:
    """A proxy-mode gateway under ROUTES."""
    return await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url}, config={"routes": ROUTES})


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(("path", "profile", "route", "reason", "message"), [
    ("/admin/users", MEMBER, "admin", "missing_role",
     "The organization role does not allow this."),
    ("/orgs/org_1/invoices/7", MEMBER, "invoices", "missing_permission",
     "A required organization permission is missing."),
    ("/orgs/org_2/invoices/7", READER, "invoices", "organization_mismatch",
     "The path belongs to another organization."),
])
async def test_route_rule_refusal_is_403_and_never_reaches_the_upstream(
    clerk: DevIssuer, gw: Running, upstream: Upstream, version: int, path: str,
    profile: Profile, route: str, reason: str, message: str,
) -> None:
    response = await gw.get(path, mint(clerk, profile, version),
                            headers={"X-Request-Id": "req-policy-0001"})
    assert response.status == 403
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer realm="clerk-gateway", error="insufficient_scope", '
        f'error_description="{reason}"')
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Request-Id"] == "req-policy-0001"
    assert await response.json() == {"error": "insufficient_scope", "reason": reason,
                                     "message": message, "request_id": "req-policy-0001"}
    assert "X-User-Id" not in response.headers
    assert upstream.seen == []
    assert gw.gateway.registry.get_sample_value("clerk_gateway_decisions_total", {
        "door": "proxy", "route": route, "outcome": "deny", "reason": reason}) == 1


@pytest.mark.parametrize("version", [1, 2])
async def test_the_same_rules_let_the_right_identity_through(
    clerk: DevIssuer, gw: Running, upstream: Upstream, version: int,
) -> None:
    admin = await gw.get("/admin/users", mint(clerk, ADMIN, version))
    reader = await gw.get("/orgs/org_1/invoices/7", mint(clerk, READER, version))
    assert (admin.status, reader.status) == (200, 200)
    assert [(s.path_qs, s.values("X-User-Id")) for s in upstream.seen] == [
        ("/admin/users", ["user_a"]), ("/orgs/org_1/invoices/7", ["user_r"])]
