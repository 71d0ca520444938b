"""End to end through a real Caddy `forward_auth` with the gateway as the auth service."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.devissuer import DevIssuer
from tests.conftest import free_port
from tests.peer_support import (
    GatewayUnderTest,
    PeerProcess,
    Upstream,
    fetch,
    peer_gateway,  # noqa: F401 (the `gw` fixture)
    peer_upstream,  # noqa: F401 (the `upstream` fixture)
    run_caddy,
    run_gateway,
)

pytestmark = pytest.mark.peers



def absent(received: list[list[str]], name: str) -> bool:
    """True when the upstream got no usable `name` header.

    Caddy 2.6.2 (Debian 12) quirk: a copy_headers name missing from the gateway's answer
    reaches the upstream as the literal placeholder `{http.reverse_proxy.header.<Name>}`
    (the client's own copy is still replaced); Caddy >= 2.7 sends no header at all.
    """
    values = [v for k, v in received if k.lower() == name.lower()]
    return values in ([], [f"{{http.reverse_proxy.header.{name}}}"])


@pytest.fixture
async def caddy(
    tmp_path: Path, gw: GatewayUnderTest, upstream: Upstream
) -> AsyncIterator[PeerProcess]:
    async with run_caddy(tmp_path, gw.port, upstream.port) as peer:
        yield peer


async def test_valid_token_reaches_upstream_with_identity(
    clerk: DevIssuer, caddy: PeerProcess, upstream: Upstream
) -> None:
    token = clerk.token(sub="user_n1", org_id="org_n1", org_slug="acme", role="admin")
    status, _, body = await fetch(caddy, "/reports?q=1", token)
    assert status == 200, body
    seen = json.loads(body)
    assert seen["path"] == "/reports?q=1"
    assert seen["headers"]["X-User-Id"] == "user_n1"
    assert seen["headers"]["X-Org-Id"] == "org_n1"
    assert seen["headers"]["X-Role"] == "org:admin"
    assert seen["headers"]["X-Org-Slug"] == "acme"
    assert absent(upstream.requests[-1]["header_list"], "X-Actor-Id")
    assert len(upstream.requests) == 1


async def test_client_identity_headers_lose_to_the_gateway(
    clerk: DevIssuer, caddy: PeerProcess, upstream: Upstream
) -> None:
    token = clerk.token(sub="user_real", org_id="org_real")
    spoofed = {"X-Org-Id": "org_victim", "X-User-Id": "user_victim", "X-Role": "org:admin"}
    status, _, body = await fetch(caddy, "/", token, spoofed)
    assert status == 200, body
    received = upstream.requests[-1]["header_list"]
    assert [v for k, v in received if k.lower() == "x-org-id"] == ["org_real"]
    assert [v for k, v in received if k.lower() == "x-user-id"] == ["user_real"]
    assert absent(received, "X-Role")  # the token has no role: the spoofed one is gone


async def test_client_org_header_never_arrives_when_token_has_no_org(
    clerk: DevIssuer, caddy: PeerProcess, upstream: Upstream
) -> None:
    token = clerk.token(sub="user_solo")
    status, _, body = await fetch(caddy, "/", token, {"X-Org-Id": "org_victim"})
    assert status == 200, body
    received = upstream.requests[-1]["header_list"]
    assert absent(received, "X-Org-Id")
    assert "org_victim" not in json.dumps(received)
    assert [v for k, v in received if k.lower() == "x-user-id"] == ["user_solo"]


@pytest.mark.parametrize("kind", ["tampered", "expired"])
async def test_invalid_token_is_401_json_and_never_reaches_upstream(
    clerk: DevIssuer, caddy: PeerProcess, upstream: Upstream, kind: str
) -> None:
    if kind == "tampered":
        header, payload, signature = clerk.token(org_id="org_1").split(".")
        token = f"{header}.{payload}.{signature[:-4]}AAAA"
        reason = "bad_signature"
    else:
        token = clerk.token(lifetime=-60, iat=0, nbf=0)
        reason = "expired"
    status, headers, body = await fetch(caddy, "/private", token)
    assert status == 401
    assert headers["Content-Type"].startswith("application/json")
    document = json.loads(body)
    assert document["error"] == "invalid_token"
    assert document["reason"] == reason
    assert token not in body
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert upstream.requests == []


async def test_no_token_is_401_with_challenge(caddy: PeerProcess, upstream: Upstream) -> None:
    status, headers, body = await fetch(caddy, "/private")
    assert status == 401
    assert json.loads(body)["reason"] == "missing_token"
    assert headers["WWW-Authenticate"].startswith('Bearer realm="')
    assert upstream.requests == []


async def test_session_cookie_works_through_caddy(
    clerk: DevIssuer, caddy: PeerProcess, upstream: Upstream
) -> None:
    cookie = f"__session={clerk.token(sub='user_cookie', org_id='org_cookie')}"
    status, _, body = await fetch(caddy, "/", headers={"Cookie": cookie})
    assert status == 200, body
    assert json.loads(body)["headers"]["X-User-Id"] == "user_cookie"
    assert upstream.requests[-1]["headers"]["X-Org-Id"] == "org_cookie"


async def test_original_uri_and_method_reach_the_gateway(
    caddy: PeerProcess, gw: GatewayUnderTest
) -> None:
    # Caddy sets X-Forwarded-Uri/-Method itself, replacing whatever the client sent.
    spoof = {"X-Forwarded-Uri": "/public", "X-Forwarded-Method": "OPTIONS"}
    status, _, _ = await fetch(caddy, "/orgs/acme/reports?x=1", headers=spoof)
    assert status == 401
    first = gw.seen[0]
    assert first["headers"]["X-Forwarded-Uri"] == "/orgs/acme/reports?x=1"
    assert first["headers"]["X-Forwarded-Method"] == "GET"
    assert first["decision_path"] == "/orgs/acme/reports"
    assert first["reason"] == "missing_token"
    assert len(gw.seen) == 1


async def test_gateway_503_reaches_the_client_unchanged(
    clerk: DevIssuer, tmp_path: Path, upstream: Upstream
) -> None:
    # Unlike nginx, Caddy hands any non-2xx answer of the gateway back to the client as is.
    closed = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"
    env = {"CLERK_ISSUER": clerk.issuer, "CLERK_JWKS_URL": closed}
    async with run_gateway(env) as down, run_caddy(tmp_path, down.port, upstream.port) as peer:
        status, headers, body = await fetch(peer, "/", clerk.token())
        assert [seen["status"] for seen in down.seen] == [503]
    assert status == 503
    assert int(headers["Retry-After"]) >= 1
    assert json.loads(body)["reason"] == "keys_unavailable"
    assert upstream.requests == []
