"""The route-policy decision table, run for Clerk v1 and v2 tokens through every door.

Every requirement kind, any_of / all_of, path binding, rule order, the default rule,
optional and public access, method and host matching, and every path-normalisation trick
against a protected route. Add a door to DOORS (and to `door` below) to run the same table
through it. The "proxy" door is the real reverse proxy: a second gateway (same routes and
issuers) in proxy mode in front of a recording upstream, both built once per module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import yaml
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import Gateway, build_public_app
from gateway.config import load_settings
from gateway.devissuer import DevIssuer, SigningKey
from tests.conftest import PublicServer
from tests.policy_support import (
    AuthorizerDoor,
    Door,
    ForwardAuthDoor,
    Profile,
    ProxyDoor,
    RawTargetDoor,
    RecordingUpstream,
    mint,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

OTHER_ISSUER = "https://partner.example.test"

ROUTES: list[dict[str, Any]] = [
    {"name": "health", "path": "/healthz", "access": "public"},
    {"name": "public", "path_prefix": "/public", "access": "public"},
    {"name": "feed", "path_prefix": "/feed", "access": "optional"},
    {"name": "closed", "path_prefix": "/closed", "access": "deny"},
    {"name": "shop-cart", "path": "/shop/cart", "access": "public"},
    {"name": "shop", "path_prefix": "/shop", "require": {"role": "admin"}},
    {"name": "admin", "path_prefix": "/admin", "require": {"role": "org:admin"}},
    {"name": "staff", "path_prefix": "/staff", "require": {"role": ["admin", "org:billing"]}},
    {"name": "invoices-read", "path_template": "/orgs/{org_id}/invoices/**", "methods": ["GET"],
     "require": {"all_of": [{"bind": {"org_id": "org_id"}},
                            {"permission": "org:invoices:read"}]}},
    {"name": "invoices-write", "path_template": "/orgs/{org_id}/invoices/**",
     "methods": ["POST", "PUT"],
     "require": {"bind": "org_id", "permission": "org:invoices:manage"}},
    {"name": "org", "path_template": "/orgs/{org_id}/**",
     "require": {"bind": {"org_id": "org_id"}}},
    {"name": "user-settings", "path_template": "/users/{user_id}/settings",
     "require": {"bind": {"user_id": "user_id"}}},
    {"name": "reports", "path_prefix": "/reports", "require": {"plan": "pro"}},
    {"name": "org-reports", "path_prefix": "/org-reports", "require": {"plan": "o:pro"}},
    {"name": "teams", "path_prefix": "/teams", "require": {"feature": "teams"}},
    {"name": "workspace", "path_prefix": "/workspace", "require": {"organization": True}},
    {"name": "internal", "path_prefix": "/internal", "require": {"issuer": "clerk"}},
    {"name": "partner", "path_prefix": "/partner", "require": {"issuer": [OTHER_ISSUER]}},
    {"name": "billing", "path_prefix": "/billing",
     "require": {"all_of": [{"role": "admin"},
                            {"any_of": [{"permission": "org:invoices:read"},
                                        {"plan": "pro"}]}]}},
    {"name": "either", "path_prefix": "/either",
     "require": {"any_of": [{"role": "billing"}, {"feature": "o:dashboard"}]}},
    {"name": "hosted", "path_prefix": "/hosted", "host": "api.example.com", "access": "public"},
    {"name": "wild", "path_prefix": "/wild", "host": "*.example.com", "access": "public"},
    {"name": "docs", "path": "/docs", "methods": ["GET"], "access": "public"},
    {"name": "any-team", "path_template": "/teams-of/*/board", "access": "public"},
]

PROFILES = {
    "plain": Profile(),
    "member": Profile(sub="user_m", org_id="org_1", role="member"),
    "admin": Profile(sub="user_a", org_id="org_1", role="admin",
                     permissions=("org:invoices:read",)),
    "admin_bare": Profile(sub="user_a", org_id="org_1", role="admin"),
    "admin_pro": Profile(sub="user_a", org_id="org_1", role="admin", plan="u:pro"),
    "manager": Profile(sub="user_g", org_id="org_1", role="member",
                       permissions=("org:invoices:read", "org:invoices:manage")),
    "other_admin": Profile(sub="user_o", org_id="org_2", role="admin",
                           permissions=("org:invoices:read",)),
    "billing": Profile(sub="user_b", org_id="org_1", role="billing"),
    "pro_user": Profile(sub="user_p", plan="u:pro"),
    "org_pro": Profile(sub="user_q", org_id="org_1", role="member", plan="o:pro"),
    "teams": Profile(sub="user_t", org_id="org_1", role="member", features=("o:teams",)),
    "dashboard": Profile(sub="user_d", org_id="org_1", role="member",
                         features=("o:dashboard",)),
    "expired": Profile(expired=True),
}


@dataclass(frozen=True)
class Row:
    """One request and the decision every door must reach."""

    method: str
    target: str
    who: str | None  # a PROFILES key, "partner" (the other issuer), or None (no token)
    status: int
    reason: str  # ok / public / anonymous, or the deny reason
    host: str | None = None
    upstream_path: str | None = None  # the normalised path the upstream must receive
    raw_ok: bool = True  # False: aiohttp's parser refuses the raw request line (a bare 400)


def row(method: str, target: str, who: str | None, status: int, reason: str,
        **kwargs: Any) -> Any:
    """A table row with a readable test id."""
    return pytest.param(Row(method, target, who, status, reason, **kwargs),
                        id=f"{method} {target} as {who or 'anon'} -> {reason}")


TABLE = [
    # public: no token needed, none checked
    row("GET", "/healthz", None, 200, "public"),
    row("GET", "/public/logo.png", None, 200, "public"),
    row("GET", "/public/logo.png", "expired", 200, "public"),
    # optional: identity when valid, anonymous without, rejected when invalid
    row("GET", "/feed", None, 200, "anonymous"),
    row("GET", "/feed", "plain", 200, "ok"),
    row("GET", "/feed", "expired", 401, "expired"),
    # deny
    row("GET", "/closed/x", "admin", 403, "access_denied"),
    row("GET", "/closed", None, 403, "access_denied"),
    # default rule: authenticated
    row("GET", "/elsewhere", None, 401, "missing_token"),
    row("GET", "/elsewhere", "plain", 200, "ok"),
    row("GET", "/elsewhere", "expired", 401, "expired"),
    # rule order: first match wins
    row("GET", "/shop/cart", None, 200, "public"),
    row("GET", "/shop/cart/", None, 200, "public"),
    row("GET", "/shop/items", "member", 403, "missing_role"),
    row("GET", "/shop/items", "admin", 200, "ok"),
    row("GET", "/shopping", None, 401, "missing_token"),  # a prefix matches whole segments
    # role (admin and org:admin alike; a list is any of)
    row("GET", "/admin", "admin", 200, "ok"),
    row("GET", "/admin/users", "member", 403, "missing_role"),
    row("GET", "/admin", "plain", 403, "missing_role"),
    row("GET", "/admin", None, 401, "missing_token"),
    row("GET", "/staff", "billing", 200, "ok"),
    row("GET", "/staff", "admin", 200, "ok"),
    row("GET", "/staff", "member", 403, "missing_role"),
    # permission + organization binding
    row("GET", "/orgs/org_1/invoices/7", "admin", 200, "ok",
        upstream_path="/orgs/org_1/invoices/7"),
    row("GET", "/orgs/org_1/invoices/7", "member", 403, "missing_permission"),
    row("HEAD", "/orgs/org_1/invoices/7", "member", 403, "missing_permission"),
    row("GET", "/orgs/org_2/invoices/7", "admin", 403, "organization_mismatch"),
    row("GET", "/orgs/org_2/invoices/7", "other_admin", 200, "ok"),
    row("GET", "/orgs/org_1/invoices/7", "plain", 403, "organization_required"),
    row("POST", "/orgs/org_1/invoices/7", "admin", 403, "missing_permission"),
    row("POST", "/orgs/org_1/invoices/7", "manager", 200, "ok"),
    row("PUT", "/orgs/org_2/invoices/7", "manager", 403, "organization_mismatch"),
    row("DELETE", "/orgs/org_1/invoices/7", "member", 200, "ok"),  # falls to the org route
    row("GET", "/orgs/org_1/members", "member", 200, "ok"),
    row("GET", "/orgs/org_1", "member", 200, "ok"),
    row("GET", "/orgs/org_2/members", "member", 403, "organization_mismatch"),
    row("GET", "/orgs/org_2", "member", 403, "organization_mismatch"),
    # user binding
    row("GET", "/users/user_plain/settings", "plain", 200, "ok"),
    row("GET", "/users/user_plain/settings/", "plain", 200, "ok"),
    row("GET", "/users/user_m/settings", "plain", 403, "user_mismatch"),
    row("GET", "/users/user_plain/settings", None, 401, "missing_token"),
    # plan: pro matches any scope, o:pro only the organization's
    row("GET", "/reports", "pro_user", 200, "ok"),
    row("GET", "/reports", "org_pro", 200, "ok"),
    row("GET", "/reports", "member", 403, "missing_plan"),
    row("GET", "/org-reports", "org_pro", 200, "ok"),
    row("GET", "/org-reports", "pro_user", 403, "missing_plan"),
    # feature
    row("GET", "/teams", "teams", 200, "ok"),
    row("GET", "/teams", "member", 403, "missing_feature"),
    # organization required
    row("GET", "/workspace", "member", 200, "ok"),
    row("GET", "/workspace", "plain", 403, "organization_required"),
    # issuer
    row("GET", "/internal", "plain", 200, "ok"),
    row("GET", "/internal", "partner", 403, "issuer_not_allowed"),
    row("GET", "/partner", "partner", 200, "ok"),
    row("GET", "/partner", "plain", 403, "issuer_not_allowed"),
    # all_of reports its first unmet child; any_of (all failing) its first child's leaf
    row("GET", "/billing", "admin", 200, "ok"),
    row("GET", "/billing", "admin_pro", 200, "ok"),
    row("GET", "/billing", "member", 403, "missing_role"),
    row("GET", "/billing", "admin_bare", 403, "missing_permission"),
    row("GET", "/either", "billing", 200, "ok"),
    row("GET", "/either", "dashboard", 200, "ok"),
    row("GET", "/either", "member", 403, "missing_role"),
    # host and method matching
    row("GET", "/hosted/x", None, 200, "public", host="api.example.com"),
    row("GET", "/hosted/x", None, 200, "public", host="API.Example.com:8443"),
    row("GET", "/hosted/x", None, 401, "missing_token", host="other.example.com"),
    row("GET", "/wild", None, 200, "public", host="eu.api.example.com"),
    row("GET", "/wild", None, 401, "missing_token", host="example.com"),
    row("GET", "/docs", None, 200, "public"),
    row("HEAD", "/docs", None, 200, "public"),
    row("POST", "/docs", None, 401, "missing_token"),
    row("GET", "/teams-of/red/board", None, 200, "public"),
    row("GET", "/teams-of/red/blue/board", None, 401, "missing_token"),
    # normalisation: the decoded, dot-free path is both matched and forwarded
    row("GET", "/orgs/%6Frg_1/invoices/7", "admin", 200, "ok",
        upstream_path="/orgs/org_1/invoices/7"),
    row("GET", "/orgs/org_1/./invoices//7?x=../../y", "admin", 200, "ok",
        upstream_path="/orgs/org_1/invoices/7"),
    # normalisation tricks against protected routes: denied or rejected, never allowed
    row("GET", "/admin/../admin", "member", 403, "missing_role"),
    row("GET", "//admin", "member", 403, "missing_role"),
    row("GET", "///admin//", "member", 403, "missing_role"),
    row("GET", "/./admin", "member", 403, "missing_role"),
    row("GET", "/%61dmin", "member", 403, "missing_role"),
    row("GET", "/%61%64%6d%69%6e", "member", 403, "missing_role"),
    row("GET", "/public/../admin", "member", 403, "missing_role"),
    row("GET", "/public/%2e%2e/admin", "member", 403, "missing_role"),
    row("GET", "/public/%2E%2E/admin", "member", 403, "missing_role"),
    row("GET", "/public/.%2e/admin", "member", 403, "missing_role"),
    row("GET", "/public/%2e/../admin", "member", 403, "missing_role"),
    row("GET", "/public/../admin?next=/public", "member", 403, "missing_role"),
    row("GET", "/public/..%2Fadmin", "member", 400, "ambiguous_path"),
    row("GET", "/public/..%2fadmin", "member", 400, "ambiguous_path"),
    row("GET", "/public%2F..%2Fadmin", "member", 400, "ambiguous_path"),
    row("GET", "/public/..%5Cadmin", "member", 400, "ambiguous_path"),
    row("GET", "/public/..\\admin", "member", 400, "ambiguous_path"),
    row("GET", "/public/%252e%252e/admin", "member", 400, "ambiguous_path"),
    # not a fixpoint: one more decoding would read ../admin, / or a dot segment
    row("GET", "/public/%25%32%65%25%32%65/admin", None, 400, "ambiguous_path"),
    row("GET", "/public/%25%32%65%25%32%65/admin", "member", 400, "ambiguous_path"),
    row("GET", "/public/%25%32%66admin", None, 400, "ambiguous_path"),
    row("GET", "/public/%2525", None, 400, "ambiguous_path"),
    row("GET", "/public/x%3F/../../admin", None, 400, "ambiguous_path"),
    row("GET", "/public/%C0%AE%C0%AE/admin", None, 400, "ambiguous_path"),
    row("GET", "/public/%EF%BC%8E%EF%BC%8E/admin", None, 400, "ambiguous_path"),
    row("GET", "/public/%EF%BC%8Fadmin", None, 400, "ambiguous_path"),
    row("GET", "/public/caf%c3%a9/%41", None, 200, "public", upstream_path="/public/caf%C3%A9/A"),
    row("GET", "/admin%00", "member", 400, "ambiguous_path"),
    row("GET", "/admin%0a", "member", 400, "ambiguous_path"),
    row("GET", "/admin;x=y", "member", 400, "ambiguous_path"),
    row("GET", "/public/..;/admin", "member", 400, "ambiguous_path"),
    row("GET", "/admin%3Bx=y", "member", 400, "ambiguous_path"),
    row("GET", "/admin%zz", "member", 400, "ambiguous_path"),
    row("GET", "/admin%4", "member", 400, "ambiguous_path"),
    row("GET", "admin", "member", 400, "ambiguous_path", raw_ok=False),
    row("GET", "/public/é/../../admin", "member", 400, "ambiguous_path", raw_ok=False),
    row("GET", "/orgs/org_1/../org_2/invoices/7", "admin", 403, "organization_mismatch"),
    row("GET", "/orgs/%6Frg_2/invoices/7", "admin", 403, "organization_mismatch"),
    row("GET", "/orgs/org_1%2F..%2Forg_2/invoices/7", "admin", 400, "ambiguous_path"),
    row("GET", "/orgs/org_1/invoices/%2e%2e/%2e%2e/org_2/invoices/7", "admin", 403,
        "organization_mismatch"),
    row("GET", "/users/user_m/../user_plain/settings", "member", 403, "user_mismatch"),
    row("GET", "/users/%75ser_m/settings", "plain", 403, "user_mismatch"),
    # matching is case-sensitive: /ADMIN is not /admin (nor, for the upstream, the same path)
    row("GET", "/ADMIN", "member", 200, "ok", upstream_path="/ADMIN"),
]

VERSIONS = [pytest.param(1, id="v1"), pytest.param(2, id="v2")]
DOORS = ["forward_auth", "forward_auth_nginx", "envoy_raw", "proxy_pipeline", "proxy",
         "proxy_fast"]


@dataclass
class Stack:
    """One issuer, a forward-auth and a proxy gateway, the upstream, every profile's tokens."""

    gateway: Gateway
    client: TestClient[Any, Any]
    server: TestServer
    tokens: dict[tuple[str, int], str]
    proxy_server: TestServer
    upstream: RecordingUpstream
    fast_proxy_server: TestServer
    fast_proxy: Gateway


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """The gateway under the ROUTES table, trusting a fake Clerk and a PEM-pinned partner."""
    clerk = DevIssuer()
    issuer_server = TestServer(clerk.app(), host="127.0.0.1")
    await issuer_server.start_server()
    clerk.issuer = str(issuer_server.make_url("")).rstrip("/")
    partner = DevIssuer(issuer=OTHER_ISSUER, key=SigningKey(kid="partner-1"))
    config = {
        "issuers": [{"name": "partner", "issuer": OTHER_ISSUER, "preset": "clerk",
                     "jwt_key": partner.key.public_pem()}],
        "routes": ROUTES,
    }
    path = tmp_path_factory.mktemp("policy") / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings({"CLERK_ISSUER": clerk.issuer}, str(path))
    gateway = Gateway(settings)
    server = PublicServer(gateway)  # forward-auth through the fast door, as `serve` runs it
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    upstream = RecordingUpstream()
    upstream_server = TestServer(upstream.app(), host="127.0.0.1")
    await upstream_server.start_server()
    proxy_settings = load_settings({
        "CLERK_ISSUER": clerk.issuer,
        "GATEWAY_UPSTREAM": str(upstream_server.make_url("")).rstrip("/"),
    }, str(path))
    proxy_server = TestServer(build_public_app(Gateway(proxy_settings)), host="127.0.0.1")
    await proxy_server.start_server()
    fast_proxy = Gateway(proxy_settings)
    fast_proxy_server = PublicServer(fast_proxy)  # the proxy's fast door, as `serve` runs it
    await fast_proxy_server.start_server()
    tokens = {}
    for version in (1, 2):
        for name, profile in PROFILES.items():
            tokens[(name, version)] = mint(clerk, profile, version)
        tokens[("partner", version)] = mint(partner, Profile(sub="user_partner"), version)
    yield Stack(gateway, client, server, tokens, proxy_server, upstream, fast_proxy_server,
                fast_proxy)
    await fast_proxy_server.close()
    await proxy_server.close()
    await upstream_server.close()
    await client.close()
    await issuer_server.close()


def fast_door_answers(gateway: Gateway) -> float:
    """Requests the forward-auth fast door answered itself, at once or after I/O."""
    gateway.metrics.flush()
    return sum(gateway.registry.get_sample_value(
        "clerk_gateway_forward_auth_fast_path_total", {"result": result}) or 0.0
        for result in ("answered", "answered_after_io"))


def fast_proxy_requests(gateway: Gateway) -> float:
    """Requests the proxy's fast door saw: served by it, or handed to aiohttp (and why)."""
    gateway.metrics.flush()
    return sum(sample.value for metric in gateway.registry.collect() for sample in metric.samples
               if sample.name == "clerk_gateway_proxy_fast_path_total")


@pytest.fixture(params=DOORS)
def door(request: pytest.FixtureRequest, stack: Stack) -> Door:
    """Each way into the gateway in turn."""
    if request.param == "forward_auth":
        return ForwardAuthDoor(stack.client)
    if request.param == "forward_auth_nginx":
        return ForwardAuthDoor(stack.client, nginx=True)
    if request.param == "envoy_raw":
        return RawTargetDoor("127.0.0.1", stack.server.port or 0)
    if request.param == "proxy":
        return ProxyDoor("127.0.0.1", stack.proxy_server.port or 0, stack.upstream)
    if request.param == "proxy_fast":
        return ProxyDoor("127.0.0.1", stack.fast_proxy_server.port or 0, stack.upstream,
                         name="proxy_fast")
    return AuthorizerDoor(stack.gateway.authorizer)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", TABLE)
async def test_decision_table(case: Row, version: int, door: Door, stack: Stack) -> None:
    token = stack.tokens[(case.who, version)] if case.who else None
    answered_before = fast_door_answers(stack.gateway)
    proxied_before = fast_proxy_requests(stack.fast_proxy)
    outcome = await door.send(case.method, case.target, token, case.host)
    if door.name == "proxy_fast":  # every row meets the fast door (served, or handed over)
        assert fast_proxy_requests(stack.fast_proxy) == proxied_before + 1
    if door.name in ("forward_auth", "forward_auth_nginx"):
        # the target travels in a header: the fast door itself answers every row
        assert fast_door_answers(stack.gateway) == answered_before + 1
    if door.name in ("envoy_raw", "proxy", "proxy_fast") and not case.raw_ok:
        # aiohttp's parser refuses the request line itself: a bare 400, still never allowed
        assert (outcome.status, outcome.upstream_path) == (400, None), outcome
        return
    assert outcome.status == case.status, outcome
    if case.status != 200:
        if case.method != "HEAD":
            assert outcome.reason == case.reason, outcome
        if case.status == 403:
            assert outcome.headers.get("WWW-Authenticate", "").endswith(
                f'error="insufficient_scope", error_description="{case.reason}"'
            ) or door.name == "proxy_pipeline"
        assert "X-User-Id" not in outcome.headers
        assert outcome.upstream_path is None
        return
    if door.name == "proxy_pipeline":
        assert outcome.reason == case.reason
    if door.name in ("proxy", "proxy_fast"):  # an allowed request arrives, path normalised
        assert outcome.upstream_path is not None, outcome
    # identity headers exactly when a token was verified
    assert ("X-User-Id" in outcome.headers) == (case.reason == "ok"), outcome
    if case.upstream_path is not None and outcome.upstream_path is not None:
        assert outcome.upstream_path == case.upstream_path
