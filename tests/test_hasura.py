"""Hasura / PromptQL auth-webhook mode: the documented answer shapes, roles and caching."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.devissuer import DevIssuer
from gateway.http.hasura import HASURA_PATH
from tests.conftest import GatewayFactory, Running
from tests.revocation_support import ADMIN_TOKEN, metric
from tests.test_workos import workos_config

HASURA = {"enabled": True, "variables": {
    "X-Hasura-User-Id": "user_id", "X-Hasura-Org-Id": "org_id", "X-Hasura-Org-Slug": "org_slug"}}
NAMESPACE = "https://hasura.io/jwt/claims"
POINTER = "/https:~1~1hasura.io~1jwt~1claims"


def config(clerk: DevIssuer, **hasura: Any) -> dict[str, Any]:
    """Clerk and the fake WorkOS trusted, Hasura webhook mode on."""
    return {**workos_config(clerk), "routes": [], "hasura": {**HASURA, **hasura}}


@pytest.fixture
async def gw(clerk: DevIssuer, make_gateway: GatewayFactory) -> Running:
    return await make_gateway(config=config(clerk), issuer_env=False)


async def ask(gw: Running, token: str | None, *, method: str = "GET", role: str | None = None,
              header: str = "Authorization", scheme: str = "Bearer ", admin: bool = False) -> Any:
    """Call the webhook as Hasura does: client headers as headers (GET) or in the body (POST)."""
    client_headers = {}
    if token is not None:
        client_headers[header] = scheme + token
    if role is not None:
        client_headers["X-Hasura-Role"] = role
    client = gw.admin if admin else gw.client
    if method == "GET":
        return await client.get(HASURA_PATH, headers=client_headers)
    body = {"headers": client_headers,
            "request": {"query": "query { widgets { id } }", "variables": {}}}
    return await client.post(HASURA_PATH, json=body)


def max_age(value: str) -> int:
    match = re.fullmatch(r"max-age=(\d+)", value)
    assert match, value
    return int(match.group(1))


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_allow_answers_string_session_variables(
    clerk: DevIssuer, gw: Running, method: str
) -> None:
    token = clerk.token(sub="user_1", org_id="org_1", org_slug="acme", role="admin")
    response = await ask(gw, token, method=method)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = await response.json()
    assert body == {"X-Hasura-User-Id": "user_1", "X-Hasura-Role": "admin",
                    "X-Hasura-Org-Id": "org_1", "X-Hasura-Org-Slug": "acme",
                    "Cache-Control": "max-age=10"}
    assert all(isinstance(v, str) for v in body.values())
    assert response.headers["Cache-Control"] == "max-age=10"
    assert metric(gw, "decisions_total", door="hasura", route="default", outcome="allow",
                  reason="ok") == 1


async def test_workos_identity_answers_alike(clerk: DevIssuer, gw: Running) -> None:
    token = clerk.workos_token(sub="user_01A", org_id="org_01A", role="admin")
    body = await (await ask(gw, token, method="POST")).json()
    assert body["X-Hasura-User-Id"] == "user_01A"
    assert body["X-Hasura-Role"] == "admin"
    assert body["X-Hasura-Org-Id"] == "org_01A"


async def test_without_an_organization_the_default_role_applies(
    clerk: DevIssuer, gw: Running
) -> None:
    body = await (await ask(gw, clerk.token(sub="user_1"))).json()
    assert body["X-Hasura-Role"] == "user"
    assert "X-Hasura-Org-Id" not in body  # absent values are left out, never "None"


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(("requested", "granted"), [
    ("editor", "editor"), ("member", "member"), ("user", "user"), (None, "member"),
])
async def test_requested_role_is_honoured_when_allowed(
    clerk: DevIssuer, gw: Running, method: str, requested: str | None, granted: str
) -> None:
    token = clerk.workos_token(org_id="org_1", role="member", roles=["member", "editor"])
    response = await ask(gw, token, method=method, role=requested)
    assert response.status == 200
    assert (await response.json())["X-Hasura-Role"] == granted


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("requested", ["admin", "Editor", "editor,admin", "org:admin"])
async def test_requested_role_outside_the_allowed_ones_is_refused(
    clerk: DevIssuer, gw: Running, method: str, requested: str
) -> None:
    token = clerk.workos_token(org_id="org_1", role="member", roles=["member", "editor"])
    response = await ask(gw, token, method=method, role=requested)
    assert response.status == 401
    body = await response.json()
    assert body["reason"] == "role_not_allowed"
    assert set(body) == {"error", "reason", "message", "request_id"}
    assert metric(gw, "decisions_total", door="hasura", route="default", outcome="deny",
                  reason="role_not_allowed") == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_deny_is_401_with_the_reason(clerk: DevIssuer, gw: Running, method: str) -> None:
    missing = await ask(gw, None, method=method)
    assert missing.status == 401
    assert (await missing.json())["reason"] == "missing_token"
    expired = await ask(gw, clerk.token(lifetime=-60), method=method)
    assert expired.status == 401
    assert (await expired.json())["reason"] == "expired"
    forged = clerk.token() + "x"
    bad = await ask(gw, forged, method=method)
    assert bad.status == 401
    assert forged not in await bad.text()


async def test_key_outage_stays_503_so_hasura_fails_the_request(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clerk.fail_status = 503
    gw = await make_gateway(config=config(clerk), issuer_env=False)
    response = await ask(gw, clerk.workos_token(), method="POST")
    assert response.status == 503  # never a 401 that signs everyone out
    assert (await response.json())["reason"] == "keys_unavailable"
    assert int(response.headers["Retry-After"]) >= 1


async def test_route_refusals_become_401_for_hasura(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    cfg = config(clerk)
    cfg["routes"] = [{"name": "graphql", "path_prefix": "/v1/graphql",
                      "require": {"organization": True}}]
    gw = await make_gateway(config=cfg, issuer_env=False)
    response = await ask(gw, clerk.token(sub="user_1"))
    assert response.status == 401  # Hasura recognises only 200 and 401
    assert (await response.json())["reason"] == "organization_required"
    assert (await ask(gw, clerk.token(sub="user_1", org_id="org_1"))).status == 200


@pytest.mark.parametrize(("lifetime", "cap"), [(4, 60), (30, 3600), (600, 10), (3600, 3600)])
async def test_cache_control_never_outlives_the_token(
    clerk: DevIssuer, make_gateway: GatewayFactory, lifetime: int, cap: int
) -> None:
    gw = await make_gateway(config=config(clerk, max_cache_seconds=cap), issuer_env=False)
    before = time.time()
    response = await ask(gw, clerk.token(lifetime=lifetime))
    assert response.status == 200
    seconds = max_age(response.headers["Cache-Control"])
    assert seconds == max_age((await response.json())["Cache-Control"])
    assert 0 < seconds <= min(lifetime, cap)
    assert before + seconds <= before + lifetime  # never past the token's exp
    assert seconds >= min(lifetime, cap) - 5  # and not needlessly short


async def test_token_at_its_last_second_is_not_cacheable(clerk: DevIssuer, gw: Running) -> None:
    response = await ask(gw, clerk.token(lifetime=-2))  # past exp, inside the 5 s leeway
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert "Cache-Control" not in await response.json()


async def test_cache_control_can_stay_out_of_the_body(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config=config(clerk, cache_control_in_body=False), issuer_env=False)
    response = await ask(gw, clerk.token())
    assert "Cache-Control" not in await response.json()
    assert response.headers["Cache-Control"] == "max-age=10"


async def test_a_revoked_session_is_refused(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    secret = "workos-webhook-secret"
    gw = await make_gateway(env={"WORKOS_WEBHOOK_SECRET": secret}, config=config(clerk),
                            issuer_env=False)
    token = clerk.workos_token(sub="user_1", sid="session_1")
    assert (await ask(gw, token)).status == 200
    body, headers = clerk.workos_delivery(secret, "session.revoked", {"id": "session_1"})
    assert (await gw.client.post("/_gateway/webhooks/workos", data=body,
                                 headers=headers)).status == 200
    response = await ask(gw, token, method="POST")
    assert response.status == 401
    assert (await response.json())["reason"] == "revoked"


async def test_anonymous_role_for_requests_without_a_token(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    cfg = config(clerk, anonymous_role="anonymous")
    cfg["routes"] = [{"name": "graphql", "path_prefix": "/v1/graphql", "access": "optional"}]
    gw = await make_gateway(config=cfg, issuer_env=False)
    response = await ask(gw, None)
    assert response.status == 200
    assert await response.json() == {"X-Hasura-Role": "anonymous"}
    assert response.headers["Cache-Control"] == "no-store"
    assert (await ask(gw, None, role="anonymous")).status == 200
    escalate = await ask(gw, None, role="admin")
    assert escalate.status == 401
    assert (await escalate.json())["reason"] == "role_not_allowed"
    signed_in = await ask(gw, clerk.token(sub="user_1"))
    assert (await signed_in.json())["X-Hasura-Role"] == "user"


async def test_disabled_by_default(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN})
    for admin in (False, True):
        response = await ask(gw, clerk.token(), admin=admin)
        assert response.status == 404
        assert (await response.json())["reason"] == "not_found"


async def test_admin_listener_answers_too(clerk: DevIssuer, gw: Running) -> None:
    response = await ask(gw, clerk.token(sub="user_7"), admin=True)
    assert (await response.json())["X-Hasura-User-Id"] == "user_7"


@pytest.mark.parametrize(("body", "status", "reason"), [
    (b"not json", 400, "malformed_request"),
    (b"[1, 2]", 400, "malformed_request"),
    (b'{"headers": {"Authorization": 5}}', 400, "malformed_request"),
    (b'{"headers": "Authorization: Bearer x"}', 400, "malformed_request"),
    (b"[" * 100_000, 400, "malformed_request"),
    (b'{"headers": {}, "pad": "' + b"x" * 2_000_000 + b'"}', 413, "body_too_large"),
    (b"\xff\xfe\x00\x01", 400, "malformed_request"),
])
async def test_malformed_posts_are_refused_precisely(
    gw: Running, body: bytes, status: int, reason: str
) -> None:
    response = await gw.client.post(HASURA_PATH, data=body,
                                    headers={"Content-Type": "application/json"})
    assert response.status == status
    payload = await response.json()
    assert payload["reason"] == reason and payload["request_id"]


async def test_other_methods_are_refused(gw: Running) -> None:
    response = await gw.client.put(HASURA_PATH, data=b"{}")
    assert response.status == 405
    assert response.headers["Allow"] == "GET,POST"


def template_config(clerk: DevIssuer) -> dict[str, Any]:
    """Clerk's Hasura JWT template read from Auth-Token, namespaced claims mapped by claims:."""
    return {
        "issuers": [{"name": "clerk", "issuer": clerk.issuer, "claims": {
            "org_id": f"{POINTER}/x-hasura-org-id",
            "org_role": f"{POINTER}/x-hasura-default-role",
            "roles": f"{POINTER}/x-hasura-allowed-roles"}}],
        "token_sources": [{"header": "Auth-Token"}, {"header": "Authorization",
                                                     "scheme": "Bearer"}],
        "hasura": HASURA,
    }


def template_token(clerk: DevIssuer) -> str:
    """A Hasura-template-shaped token (no `cat` header: class acceptance is h14's)."""
    now = int(time.time())
    claims = {"iss": clerk.issuer, "sub": "user_1", "iat": now, "nbf": now - 5,
              "exp": now + 60, "azp": "http://localhost:3000",
              NAMESPACE: {"x-hasura-user-id": "user_1", "x-hasura-default-role": "editor",
                          "x-hasura-allowed-roles": ["editor", "viewer"],
                          "x-hasura-org-id": "org_9"}}
    return clerk.sign(claims)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_jwt_template_in_a_custom_header_maps_namespaced_claims(
    clerk: DevIssuer, make_gateway: GatewayFactory, method: str
) -> None:
    gw = await make_gateway(config=template_config(clerk), issuer_env=False)
    token = template_token(clerk)
    response = await ask(gw, token, method=method, header="Auth-Token", scheme="")
    assert response.status == 200
    body = await response.json()
    assert body["X-Hasura-Role"] == "editor"
    assert body["X-Hasura-Org-Id"] == "org_9"
    viewer = await ask(gw, token, method=method, header="Auth-Token", scheme="", role="viewer")
    assert (await viewer.json())["X-Hasura-Role"] == "viewer"
    admin = await ask(gw, token, method=method, header="Auth-Token", scheme="", role="admin")
    assert admin.status == 401


async def test_jwt_template_claims_feed_forward_auth_headers_too(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config=template_config(clerk), issuer_env=False)
    response = await gw.get("/", headers={"Auth-Token": template_token(clerk)})
    assert response.status == 200
    assert response.headers["X-Org-Id"] == "org_9"
    assert response.headers["X-Role"] == "org:editor"
    # A session token (no namespace) keeps its own claims: the mapping only fills gaps.
    session = await gw.get("/", clerk.token(sub="user_2", org_id="org_2", role="admin"))
    assert session.headers["X-Org-Id"] == "org_2"
    assert session.headers["X-Role"] == "org:admin"


def test_hasura_settings_errors_are_all_reported(tmp_path: Any) -> None:
    from gateway.config import ConfigError, load_settings

    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps({"issuers": [{"name": "clerk", "issuer": "https://c.example"}],
                                "hasura": {"path": "graphql", "default_role": "a b",
                                           "variables": {"X-Hasura-Role": "org_role",
                                                         "User": "user_id",
                                                         "X-Hasura-Plan": "pla"},
                                           "max_cache_seconds": -1, "extra": 1}}))
    with pytest.raises(ConfigError) as info:
        load_settings({}, str(path))
    problems = "\n".join(info.value.problems)
    for expected in ("hasura.path:", "hasura.default_role:", "hasura.variables.X-Hasura-Role:",
                     "hasura.variables.User:", "hasura.variables.X-Hasura-Plan:",
                     "hasura.max_cache_seconds:", "hasura.extra: unknown setting"):
        assert expected in problems, expected


SHIPPED = Path(__file__).parents[1] / "config" / "hasura"


async def test_shipped_gateway_file_answers_hasura(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    shipped = yaml.safe_load((SHIPPED / "gateway.yaml").read_text())
    gw = await make_gateway(config=shipped)  # CLERK_ISSUER from the environment
    template = await ask(gw, template_token(clerk), method="POST", header="Auth-Token", scheme="")
    assert (await template.json())["X-Hasura-Role"] == "editor"
    session = await ask(gw, clerk.token(sub="user_1", sid="sess_1", org_id="org_1",
                                        org_slug="acme", role="admin"))
    assert await session.json() == {
        "X-Hasura-User-Id": "user_1", "X-Hasura-Role": "admin", "X-Hasura-Org-Id": "org_1",
        "X-Hasura-Org-Slug": "acme", "X-Hasura-Session-Id": "sess_1",
        "Cache-Control": "max-age=10"}
    assert await (await ask(gw, None)).json() == {"X-Hasura-Role": "anonymous"}


def test_shipped_hasura_engine_files_point_at_the_webhook() -> None:
    v2 = dict(line.split("=", 1) for line in (SHIPPED / "hasura-v2.env").read_text().splitlines()
              if line and not line.startswith("#"))
    assert urlsplit(v2["HASURA_GRAPHQL_AUTH_HOOK"]).path == HASURA_PATH
    assert v2["HASURA_GRAPHQL_AUTH_HOOK_MODE"] in ("GET", "POST")
    ddn = yaml.safe_load((SHIPPED / "auth-config.hml").read_text())
    assert ddn["kind"] == "AuthConfig"
    webhook = ddn["definition"]["mode"]["webhook"]
    assert webhook["method"] == "POST"
    forwarded = webhook["customHeadersConfig"]["body"]["headers"]["forward"]
    assert {"authorization", "auth-token", "x-hasura-role"} <= set(forwarded)
    assert HASURA_PATH in (SHIPPED / "auth-config.hml").read_text()


header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
posted = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(st.sampled_from(["headers", "request"]), st.one_of(
        st.dictionaries(st.sampled_from(["Authorization", "authorization", "Auth-Token",
                                         "Cookie", "X-Hasura-Role"]) | header_text,
                        header_text | st.integers() | st.none(), max_size=4),
        header_text, st.none())).map(lambda value: json.dumps(value).encode()),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=posted)
async def test_hostile_posts_never_allow_and_never_500(gw: Running, body: bytes) -> None:
    response = await gw.client.post(HASURA_PATH, data=body,
                                    headers={"Content-Type": "application/json"})
    assert response.status in (400, 401), body
    payload = await response.json()
    assert payload["reason"] and payload["request_id"]


async def test_a_clerk_jwt_template_is_accepted_only_where_its_route_accepts_it(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    """A real template token (`cat` cl_B7d4PD222AAA) from Auth-Token: refused as a session by
    default, accepted on the Hasura route once `accepts: [jwt_template]` says so."""
    claims = {NAMESPACE: {"x-hasura-default-role": "editor", "x-hasura-org-id": "org_9",
                          "x-hasura-allowed-roles": ["editor", "viewer"]}}
    token = clerk.template_token(sub="user_tpl", **claims)
    refused = await make_gateway(config=template_config(clerk), issuer_env=False)
    response = await ask(refused, token, method="GET", header="Auth-Token", scheme="")
    assert response.status == 401
    assert (await response.json())["reason"] == "wrong_token_type"
    accepting = {**template_config(clerk), "token_types": ["session_token", "jwt_template"],
                 "routes": [{"name": "graphql", "path": "/v1/graphql",
                             "accepts": ["jwt_template"]}]}
    gw = await make_gateway(config=accepting, issuer_env=False)
    response = await ask(gw, token, method="POST", header="Auth-Token", scheme="")
    assert response.status == 200
    body = await response.json()
    assert (body["X-Hasura-User-Id"], body["X-Hasura-Role"]) == ("user_tpl", "editor")
    assert body["X-Hasura-Org-Id"] == "org_9"
    session = await ask(gw, clerk.token(), method="GET", header="Auth-Token", scheme="")
    assert session.status == 401  # a session token is not what this route accepts
    assert (await session.json())["reason"] == "token_type_not_accepted"
