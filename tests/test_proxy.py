"""Sidecar proxy: identity injection, anti-spoofing, header hygiene, streaming, failures."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory, Running, free_port, serve_app
from tests.proxy_support import Upstream, generate, raw_request, status_of

IDENTITY = ("X-User-Id", "X-Org-Id", "X-Role", "X-Org-Slug", "X-Org-Permissions",
            "X-Session-Id", "X-Plan", "X-Features", "X-Actor-Id")


async def proxied(
    make_gateway: GatewayFactory, upstream: Upstream, config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Running:
    """A gateway in proxy mode in front of the recording upstream."""
    return await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url, **(env or {})},
                              config=config)


def org_token(clerk: DevIssuer, **kwargs: Any) -> str:
    return clerk.token(org_id="org_1", org_slug="acme", role="admin", plan="o:pro",
                       features="o:dashboard", org_permissions_v2="read", fpm="1", **kwargs)


async def metric(gw: Running, name: str, **labels: str) -> float:
    value = gw.gateway.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_identity_headers_reach_the_upstream_exactly(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    response = await gw.get("/api/orders?b=2&a=%20x", org_token(clerk),
                            headers={"X-Request-Id": "req-abcdef12"})
    assert response.status == 200
    assert response.headers["X-Upstream"] == "yes"
    assert await response.json() == {"path": "/api/orders?b=2&a=%20x", "bytes": 0}
    seen = upstream.seen[-1]
    assert seen.path_qs == "/api/orders?b=2&a=%20x"
    assert seen.values("X-User-Id") == ["user_2demo"]
    assert seen.values("X-Org-Id") == ["org_1"]
    assert seen.values("X-Org-Slug") == ["acme"]
    assert seen.values("X-Role") == ["org:admin"]
    assert seen.values("X-Session-Id") == ["sess_2demo"]
    assert seen.values("X-Plan") == ["o:pro"]
    assert seen.values("X-Features") == ["o:dashboard"]
    assert seen.values("X-Org-Permissions") == ["org:dashboard:read"]
    assert seen.values("X-Actor-Id") == []
    assert seen.values("X-Request-Id") == ["req-abcdef12"]
    assert response.headers["X-Request-Id"] == "req-abcdef12"
    assert await metric(gw, "clerk_gateway_decisions_total", door="proxy", route="default",
                        outcome="allow", reason="ok") == 1


SPOOFS = [
    ("X-Org-Id", "org_evil"), ("x-org-id", "org_evil2"), ("X_Org_Id", "org_evil3"),
    ("x_org-id", "org_evil4"), ("X-ORG_ID", "org_evil5"),
    ("X-User-Id", "user_evil"), ("X-User-Id", "user_evil_again"), ("X_User_Id", "user_evil3"),
    ("X-Role", "org:owner"), ("x_role", "org:owner"), ("X-Actor-Id", "user_admin"),
    ("X-Session-Id", "sess_evil"), ("X-Plan", "o:enterprise"), ("X-Features", "o:all"),
    ("X-Org-Permissions", "org:all:manage"), ("X-Org-Slug", "evil"),
]


async def test_spoofed_identity_headers_never_arrive(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    # A token without an organization: no X-Org-* may arrive at all.
    headers = CIMultiDict([*SPOOFS, ("Authorization", f"Bearer {clerk.token()}")])
    response = await gw.client.get("/x", headers=headers)
    assert response.status == 200
    seen = upstream.seen[-1]
    assert seen.normalised("X-User-Id") == ["user_2demo"]
    assert seen.normalised("X-Session-Id") == ["sess_2demo"]
    for name in ("X-Org-Id", "X-Role", "X-Actor-Id", "X-Plan", "X-Features",
                 "X-Org-Permissions", "X-Org-Slug"):
        assert seen.normalised(name) == [], name
    assert not any("evil" in v or "owner" in v for _, v in seen.headers)


async def test_spoofs_are_stripped_on_public_routes_too(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream, config={
        "routes": [{"name": "open", "path_prefix": "/public", "access": "public"}]})
    response = await gw.client.get("/public/page", headers=CIMultiDict(SPOOFS))
    assert response.status == 200
    seen = upstream.seen[-1]
    for name in IDENTITY:
        assert seen.normalised(name) == [], name


async def test_configured_prefixes_are_stripped_case_and_underscore_insensitively(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream,
                       config={"proxy": {"strip_header_prefixes": ["X-Auth-"]}})
    response = await gw.client.get("/x", headers=CIMultiDict([
        ("X-Auth-User", "evil"), ("x_auth_email", "evil@example.com"), ("X-AUTH-ROLE", "a"),
        ("X-Authentic", "kept"), ("Authorization", f"Bearer {clerk.token()}")]))
    assert response.status == 200
    names = {k.lower().replace("_", "-") for k, _ in upstream.seen[-1].headers}
    assert not {n for n in names if n.startswith("x-auth-")}
    assert upstream.seen[-1].values("X-Authentic") == ["kept"]


async def test_connection_listed_names_cannot_drop_injected_headers(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    port = gw.client.server.port
    token = org_token(clerk)
    request = (
        "GET /hop HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Connection: close, X-User-Id, X-Org-Id, X-Forwarded-For, X-Request-Id, X-Custom\r\n"
        "Connection: X_Org_Slug\r\n"
        "X-Custom: dropped\r\nX-Org-Id: org_evil\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
        "Trailer: X-Checksum\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: close\r\n"
        "Upgrade: h2c\r\nX-End-To-End: kept\r\n\r\n"
    ).encode()
    reply = await raw_request(port, request)
    assert status_of(reply) == 200, reply[:300]
    seen = upstream.seen[-1]
    assert seen.values("X-User-Id") == ["user_2demo"]
    assert seen.values("X-Org-Id") == ["org_1"]
    assert seen.values("X-Org-Slug") == ["acme"]
    assert seen.values("X-Forwarded-For") == ["127.0.0.1"]
    assert len(seen.values("X-Request-Id")) == 1
    assert seen.values("X-End-To-End") == ["kept"]
    for hop in ("X-Custom", "Keep-Alive", "TE", "Trailer", "Proxy-Authorization",
                "Proxy-Connection", "Upgrade"):
        assert seen.values(hop) == [], hop
    assert all("x-user-id" not in v.lower() for v in seen.values("Connection"))


async def test_forwarded_headers_come_from_the_connection_not_the_client(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    response = await gw.get("/fwd", clerk.token(), headers={
        "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example", "X-Forwarded-Uri": "/admin",
        "X_Forwarded_User": "admin", "Forwarded": "for=203.0.113.9", "X-Real-IP": "203.0.113.9",
        "Host": "api.example.com"})
    assert response.status == 200
    seen = upstream.seen[-1]
    assert seen.values("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.values("X-Forwarded-Proto") == ["http"]
    assert seen.values("X-Forwarded-Host") == ["api.example.com"]
    assert seen.values("Host") == ["api.example.com"]  # preserved by default
    for gone in ("X-Forwarded-Uri", "Forwarded", "X-Real-IP"):
        assert seen.values(gone) == [], gone
    assert seen.normalised("X-Forwarded-User") == []


async def test_trusted_proxy_chain_is_appended(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream, config={
        "proxy": {"trusted_proxies": ["127.0.0.0/8"]}})
    response = await gw.get("/fwd", clerk.token(), headers={
        "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "public.example"})
    assert response.status == 200
    seen = upstream.seen[-1]
    assert seen.values("X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
    assert seen.values("X-Forwarded-Proto") == ["https"]
    assert seen.values("X-Forwarded-Host") == ["public.example"]


async def test_host_rewrite_and_credential_stripping(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream, config={"proxy": {
        "preserve_host": False, "forward_authorization": False, "forward_cookies": False}})
    response = await gw.get("/creds", clerk.token(),
                            headers={"Host": "api.example.com", "Cookie": "theme=dark"})
    assert response.status == 200
    seen = upstream.seen[-1]
    assert seen.values("Host") == [upstream.url.removeprefix("http://")]
    assert seen.values("X-Forwarded-Host") == ["api.example.com"]
    assert seen.values("Authorization") == []
    assert seen.values("Cookie") == []
    assert seen.values("X-User-Id") == ["user_2demo"]


async def test_authorization_and_cookies_are_forwarded_by_default(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    token = clerk.token()
    assert (await gw.get("/creds", token, headers={"Cookie": "theme=dark"})).status == 200
    seen = upstream.seen[-1]
    assert seen.values("Authorization") == [f"Bearer {token}"]
    assert seen.values("Cookie") == ["theme=dark"]
    assert seen.values("User-Agent") != ["clerk-gateway"]


async def test_normalised_path_and_per_route_upstream(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream, aiohttp_server: Any
) -> None:
    other = Upstream()
    server = await aiohttp_server(other.app())
    gw = await proxied(make_gateway, upstream, config={"routes": [{
        "name": "billing", "path_prefix": "/billing",
        "upstream": str(server.make_url("")).rstrip("/") + "/"}]})
    port = gw.client.server.port
    request = (f"GET /api/../billing//invoices/./7?x=1 HTTP/1.1\r\nHost: a\r\n"
               f"Authorization: Bearer {clerk.token()}\r\nConnection: close\r\n\r\n").encode()
    assert status_of(await raw_request(port, request)) == 200
    assert [s.path_qs for s in other.seen] == ["/billing/invoices/7?x=1"]
    assert upstream.seen == []
    assert (await gw.get("/api/x", clerk.token())).status == 200
    assert [s.path_qs for s in upstream.seen] == ["/api/x"]


async def test_pipeline_refusals_never_reach_the_upstream(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    missing = await gw.get("/x")
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="clerk-gateway"'
    assert (await missing.json())["reason"] == "missing_token"
    expired = await gw.get("/x", clerk.token(lifetime=-60))
    assert expired.status == 401
    assert (await expired.json())["reason"] == "expired"
    ambiguous = await gw.get("/a%2Fb", clerk.token())
    assert ambiguous.status == 400
    assert (await ambiguous.json())["reason"] == "ambiguous_path"
    assert upstream.seen == []
    assert await metric(gw, "clerk_gateway_decisions_total", door="proxy", route="default",
                        outcome="deny", reason="missing_token") == 1


async def test_keys_unavailable_is_503_in_proxy_mode(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    clerk.fail_status = 500  # the issuer's key set cannot be fetched at all
    gw = await proxied(make_gateway, upstream)
    response = await gw.get("/x", clerk.token())
    assert response.status == 503
    assert (await response.json())["reason"] == "keys_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    assert upstream.seen == []


async def test_query_token_is_ignored_for_plain_http(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    response = await gw.client.get("/x", params={"__clerk_token": clerk.token()})
    assert response.status == 401
    assert upstream.seen == []


async def test_dead_upstream_is_502(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env={"GATEWAY_UPSTREAM": f"http://127.0.0.1:{free_port()}"})
    response = await gw.get("/x", clerk.token(), headers={"X-Request-Id": "req-dead0001"})
    assert response.status == 502
    assert await response.json() == {
        "error": "upstream_unavailable", "reason": "upstream_unavailable",
        "message": "The upstream service is unavailable.", "request_id": "req-dead0001"}
    assert await metric(gw, "clerk_gateway_upstream_errors_total",
                        route="default", kind="connect") == 1


async def test_stalled_upstream_is_504(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream, config={"proxy": {"read_timeout_seconds": 0.3}})
    response = await gw.get("/slow?seconds=5", clerk.token())
    assert response.status == 504
    assert (await response.json())["reason"] == "upstream_timeout"
    assert await metric(gw, "clerk_gateway_upstream_errors_total",
                        route="default", kind="timeout") == 1


async def test_upstream_reset_is_502(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    response = await gw.get("/reset", clerk.token())
    assert response.status == 502
    assert (await response.json())["reason"] == "upstream_unavailable"
    assert await metric(gw, "clerk_gateway_upstream_errors_total",
                        route="default", kind="reset") == 1


async def test_upstream_failure_mid_response_aborts_the_client(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    response = await gw.get("/broken", clerk.token())
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()  # truncated, never a clean end of body


async def test_body_over_limit_by_content_length_is_413(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream, config={"proxy": {"max_body_bytes": 1000}})
    response = await gw.client.post("/upload", data=b"x" * 1001,
                                    headers={"Authorization": f"Bearer {clerk.token()}"})
    assert response.status == 413
    assert (await response.json())["reason"] == "body_too_large"
    ok = await gw.client.post("/upload", data=b"x" * 1000,
                              headers={"Authorization": f"Bearer {clerk.token()}"})
    assert ok.status == 200
    assert upstream.uploads == [1000]


async def test_chunked_body_over_limit_is_413_and_never_delivered_whole(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream, config={"proxy": {"max_body_bytes": 100_000}})
    response = await gw.client.post("/upload", data=generate(300_000, 10_000),
                                    headers={"Authorization": f"Bearer {clerk.token()}"})
    assert response.status == 413
    assert (await response.json())["reason"] == "body_too_large"
    await asyncio.sleep(0.2)
    assert upstream.uploads == []  # the upstream never saw a complete (truncated) body


async def test_chunked_body_streams_through(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    response = await gw.client.post("/upload", data=generate(5_000_000, 65_536),
                                    headers={"Authorization": f"Bearer {clerk.token()}"})
    assert response.status == 200
    assert upstream.uploads == [5_000_000]


async def test_server_sent_events_flush_while_the_stream_is_open(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    response = await gw.get("/sse", clerk.token())
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
    assert first == b"data: first\n\n"
    assert not upstream.release.is_set()  # the upstream still holds the stream open
    upstream.release.set()
    rest = await asyncio.wait_for(response.content.read(), 5)
    assert rest == b"data: second\n\n"


async def test_client_disconnect_cancels_the_upstream_request(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    with pytest.raises(asyncio.TimeoutError):
        await gw.client.get("/hold", headers={"Authorization": f"Bearer {clerk.token()}"},
                            timeout=aiohttp.ClientTimeout(total=0.3))
    await asyncio.wait_for(upstream.cancelled.wait(), 5)


async def test_response_hop_headers_removed_and_end_to_end_kept(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    response = await gw.get("/cookies", clerk.token())
    assert response.status == 202
    assert response.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert response.headers["X-Kept"] == "end-to-end"
    assert "X-Secret" not in response.headers
    assert "Keep-Alive" not in response.headers
    # Upstream cookies are not kept by the gateway's client for the next caller.
    gw.client.session.cookie_jar.clear()  # (the test client's own jar did keep them)
    assert (await gw.get("/next", clerk.token())).status == 200
    assert upstream.seen[-1].values("Cookie") == []


async def test_compressed_responses_pass_through_verbatim(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    response = await gw.client.get("/gzip", auto_decompress=False,
                                   headers={"Authorization": f"Bearer {clerk.token()}"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await response.read()) == b"compressed payload"


async def test_head_and_methods_with_bodies(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    auth = {"Authorization": f"Bearer {clerk.token()}"}
    for method in ("PUT", "PATCH", "DELETE"):
        response = await gw.client.request(method, "/m", data=b"payload", headers=auth)
        assert response.status == 200, method
        assert upstream.seen[-1].method == method
        assert upstream.seen[-1].body == b"payload"
    head = await gw.client.head("/m", headers=auth)
    assert head.status == 200
    assert upstream.seen[-1].method == "HEAD"


async def test_proxy_settings_are_validated(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    from gateway.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        await proxied(make_gateway, upstream, config={"proxy": {
            "trusted_proxies": ["not-a-net"], "read_timeout_seconds": -1,
            "strip_header_prefixes": ["bad prefix"], "surprise": 1},
            "routes": [{"name": "r", "path_prefix": "/r", "upstream": "ftp://x"}]})
    text = str(caught.value)
    for expected in ("proxy.trusted_proxies", "proxy.read_timeout_seconds",
                     "proxy.strip_header_prefixes", "proxy.surprise", "routes[r].upstream"):
        assert expected in text, expected


async def test_route_upstream_needs_a_default_upstream(make_gateway: GatewayFactory) -> None:
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match="needs a default upstream"):
        await make_gateway(config={"routes": [
            {"name": "r", "path_prefix": "/r", "upstream": "http://127.0.0.1:1"}]})


async def test_forward_auth_mode_is_unchanged_without_upstream(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    assert gw.gateway.proxy is None
    response = await gw.get("/x", clerk.token())
    assert response.status == 200
    assert response.headers["X-User-Id"] == "user_2demo"


async def test_public_listener_json_is_never_html_on_upstream_errors(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    dead = await serve_app(__import__("aiohttp").web.Application())
    url = f"http://127.0.0.1:{dead.port}"
    await dead.close()
    gw = await make_gateway(env={"GATEWAY_UPSTREAM": url})
    response = await gw.get("/x", clerk.token())
    assert response.status == 502
    assert response.headers["Content-Type"].startswith("application/json")
    json.loads(await response.text())
