"""Forward-auth decisions through the public listener, token sources and identity headers."""

from __future__ import annotations

import asyncio
import json

from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory


async def test_valid_v2_token_is_allowed_with_identity_headers(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    token = clerk.token(org_id="org_1", org_slug="acme", role="admin", plan="o:pro",
                        features="o:dashboard,o:teams", org_permissions_v2="manage,read",
                        fpm="3,2")
    response = await gw.get("/anything", token)
    assert response.status == 200
    h = response.headers
    assert h["X-User-Id"] == "user_2demo"
    assert h["X-Org-Id"] == "org_1"
    assert h["X-Org-Slug"] == "acme"
    assert h["X-Role"] == "org:admin"
    assert h["X-Session-Id"] == "sess_2demo"
    assert h["X-Plan"] == "o:pro"
    assert h["X-Features"] == "o:dashboard,o:teams"
    assert h["X-Org-Permissions"] == (
        "org:dashboard:manage,org:dashboard:read,org:teams:read"
    )
    assert "X-Actor-Id" not in h  # an absent claim gives no header, not an empty one
    assert len(h["X-Request-Id"]) >= 8


async def test_valid_v1_token_gives_the_same_identity(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    token = clerk.token(version=1, org_id="org_1", org_slug="acme", role="org:admin",
                        permissions=("org:dashboard:read",), act={"sub": "user_support"})
    response = await gw.get("/", token)
    assert response.status == 200
    assert response.headers["X-Role"] == "org:admin"
    assert response.headers["X-Org-Permissions"] == "org:dashboard:read"
    assert response.headers["X-Actor-Id"] == "user_support"
    assert "X-Plan" not in response.headers


async def test_session_cookie_is_read_when_no_header(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    response = await gw.get("/", headers={"Cookie": f"__session={clerk.token(sub='user_c')}"})
    assert response.status == 200
    assert response.headers["X-User-Id"] == "user_c"


async def test_suffixed_session_cookie_is_read(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    cookie = f"__session_Ab3dE6gH={clerk.token(sub='user_s')}"
    response = await gw.get("/", headers={"Cookie": cookie})
    assert response.status == 200
    assert response.headers["X-User-Id"] == "user_s"


async def test_header_wins_over_cookie(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    response = await gw.get(
        "/", clerk.token(sub="user_header"),
        headers={"Cookie": f"__session={clerk.token(sub='user_cookie')}"},
    )
    assert response.headers["X-User-Id"] == "user_header"


async def test_two_authorization_headers_are_refused(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    response = await gw.client.get("/", headers=[
        ("Authorization", f"Bearer {clerk.token(sub='user_a')}"),
        ("Authorization", f"Bearer {clerk.token(sub='user_b')}"),
    ])
    assert response.status == 400
    assert (await response.json())["reason"] == "ambiguous_token"


async def test_other_authorization_scheme_falls_back_to_cookie(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    response = await gw.get("/", headers={
        "Authorization": "Basic dXNlcjpwYXNz", "Cookie": f"__session={clerk.token()}",
    })
    assert response.status == 200


async def test_configured_extra_header_source(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config={"token_sources": [{"header": "X-Session-Token"}]})
    assert (await gw.get("/", headers={"X-Session-Token": clerk.token()})).status == 200
    # Only the configured sources are read.
    assert (await gw.get("/", clerk.token())).status == 401


async def test_forwarded_method_and_uri_are_recorded(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    response = await gw.get("/", clerk.token(), headers={
        "X-Forwarded-Method": "POST", "X-Forwarded-Uri": "/api/orders?x=1",
    })
    assert response.status == 200


async def test_deny_has_json_body_challenge_and_never_echoes_the_token(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    token = clerk.token(lifetime=-60)
    response = await gw.get("/", token, headers={"X-Request-Id": "req-12345678"})
    text = await response.text()
    assert response.status == 401
    assert token not in text and token.split(".")[1] not in text
    body = json.loads(text)
    assert body == {
        "error": "invalid_token",
        "reason": "expired",
        "message": "The session token has expired.",
        "request_id": "req-12345678",
    }
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="clerk-gateway", error="invalid_token", error_description="expired"'
    )
    assert response.headers["Content-Type"].startswith("application/json")


async def test_missing_token_challenge_has_no_error_code(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    response = await gw.get("/")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="clerk-gateway"'
    assert (await response.json())["reason"] == "missing_token"


async def test_malformed_request_id_is_replaced(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    response = await gw.get("/", headers={"X-Request-Id": "bad id\twith spaces"})
    rid = response.headers["X-Request-Id"]
    assert rid != "bad id\twith spaces" and len(rid) == 32


async def test_reserved_paths_are_not_decisions(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    response = await gw.get("/_gateway/nothing-here", clerk.token())
    assert response.status == 404
    assert "X-User-Id" not in response.headers
    assert (await response.json())["reason"] == "not_found"


async def test_a_target_no_route_can_match_gets_a_json_404(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.server.port)
    writer.write(b"OPTIONS * HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ")
    assert b"application/json" in head
    assert json.loads(body)["reason"] == "not_found"


async def test_the_admin_listener_refuses_unknown_paths_and_methods_with_json(
    make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    missing = await gw.admin.get("/nope")
    assert missing.status == 404
    assert (await missing.json())["reason"] == "not_found"
    wrong = await gw.admin.post("/healthz")
    assert wrong.status == 405
    assert (await wrong.json())["reason"] == "unsupported_method"
    assert "GET" in wrong.headers["Allow"]


async def test_every_method_is_answered_without_redirects(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        response = await gw.client.request(method, "/x", allow_redirects=False)
        assert response.status == 401, method


PUBLIC = {"routes": [{"name": "public", "path_prefix": "/public", "access": "public"}]}


async def test_forwarded_uri_selects_the_route(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config=PUBLIC)
    assert (await gw.get("/", headers={"X-Forwarded-Uri": "/public/a"})).status == 200
    assert (await gw.get("/", headers={"X-Original-URI": "/public/a"})).status == 200
    assert (await gw.get("/", headers={"X-Forwarded-Uri": "/private"})).status == 401
    # Without forwarded headers the request's own path is the one decided (Envoy).
    assert (await gw.get("/public/a")).status == 200


async def test_untrusted_callers_cannot_choose_the_uri(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config={**PUBLIC, "forward_auth": {"trusted_callers": ["10.0.0.0/8"]}})
    assert (await gw.get("/", headers={"X-Forwarded-Uri": "/public/a"})).status == 401
    trusted = await make_gateway(config={**PUBLIC,
                                         "forward_auth": {"trusted_callers": ["127.0.0.1"]}})
    assert (await trusted.get("/", headers={"X-Forwarded-Uri": "/public/a"})).status == 200


async def test_envoy_path_prefix_is_removed(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config={**PUBLIC, "forward_auth": {"path_prefix": "/ext-authz"}})
    assert (await gw.get("/ext-authz/public/a")).status == 200
    assert (await gw.get("/ext-authz/private")).status == 401
    assert (await gw.get("/ext-authzpublic")).status == 401


async def test_conflicting_forwarded_and_original_uri_is_refused(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config=PUBLIC)
    # nginx sets X-Original-URI but passes a client's spoofed X-Forwarded-Uri along.
    response = await gw.get("/", clerk.token(), headers={
        "X-Forwarded-Uri": "/public/a", "X-Original-URI": "/admin"})
    assert response.status == 400
    assert (await response.json())["reason"] == "ambiguous_path"
    spoofed_method = await gw.get("/", clerk.token(), headers={
        "X-Forwarded-Method": "GET", "X-Original-Method": "DELETE"})
    assert spoofed_method.status == 400
    agreeing = await gw.get("/", headers={
        "X-Forwarded-Uri": "/public/a", "X-Original-URI": "/public/a"})
    assert agreeing.status == 200


async def test_uri_source_can_be_pinned(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config={**PUBLIC, "forward_auth": {"uri_source": "original"}})
    response = await gw.get("/", headers={"X-Forwarded-Uri": "/public/a",
                                          "X-Original-URI": "/admin"})
    assert response.status == 401  # only X-Original-URI counts: /admin needs a token


async def test_encoded_newline_in_the_path_is_a_decision(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    response = await gw.get("/admin%0a")
    assert response.status == 400
    assert (await response.json())["reason"] == "ambiguous_path"
