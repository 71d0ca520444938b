"""End to end through a real nginx `auth_request` with the gateway as the auth service."""

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
    run_gateway,
    run_nginx,
)

pytestmark = pytest.mark.peers


@pytest.fixture
async def nginx(
    tmp_path: Path, gw: GatewayUnderTest, upstream: Upstream
) -> AsyncIterator[PeerProcess]:
    async with run_nginx(tmp_path, gw.port, upstream.port) as peer:
        yield peer


async def test_valid_token_reaches_upstream_with_identity(
    clerk: DevIssuer, nginx: PeerProcess, upstream: Upstream
) -> None:
    token = clerk.token(sub="user_n1", org_id="org_n1", org_slug="acme", role="admin")
    status, _, body = await fetch(nginx, "/reports?q=1", token)
    assert status == 200, body
    seen = json.loads(body)
    assert seen["path"] == "/reports?q=1"
    assert seen["headers"]["X-User-Id"] == "user_n1"
    assert seen["headers"]["X-Org-Id"] == "org_n1"
    assert seen["headers"]["X-Role"] == "org:admin"
    assert seen["headers"]["X-Org-Slug"] == "acme"
    assert "X-Actor-Id" not in seen["headers"]  # absent claim: no header, not an empty one
    assert len(upstream.requests) == 1


async def test_client_identity_headers_lose_to_the_gateway(
    clerk: DevIssuer, nginx: PeerProcess, upstream: Upstream
) -> None:
    token = clerk.token(sub="user_real", org_id="org_real")
    spoofed = {"X-Org-Id": "org_victim", "X-User-Id": "user_victim", "X-Role": "org:admin"}
    status, _, body = await fetch(nginx, "/", token, spoofed)
    assert status == 200, body
    received = upstream.requests[-1]["header_list"]
    assert [v for k, v in received if k.lower() == "x-org-id"] == ["org_real"]
    assert [v for k, v in received if k.lower() == "x-user-id"] == ["user_real"]
    assert not [v for k, v in received if k.lower() == "x-role"]  # token has no role


async def test_client_org_header_is_dropped_when_token_has_no_org(
    clerk: DevIssuer, nginx: PeerProcess, upstream: Upstream
) -> None:
    token = clerk.token(sub="user_solo")
    status, _, body = await fetch(nginx, "/", token, {"X-Org-Id": "org_victim"})
    assert status == 200, body
    received = upstream.requests[-1]["header_list"]
    assert not [v for k, v in received if k.lower() == "x-org-id"]
    assert [v for k, v in received if k.lower() == "x-user-id"] == ["user_solo"]


@pytest.mark.parametrize("kind", ["tampered", "expired"])
async def test_invalid_token_is_401_json_and_never_reaches_upstream(
    clerk: DevIssuer, nginx: PeerProcess, upstream: Upstream, kind: str
) -> None:
    if kind == "tampered":
        header, payload, signature = clerk.token(org_id="org_1").split(".")
        token = f"{header}.{payload}.{signature[:-4]}AAAA"
        reason = "bad_signature"
    else:
        token = clerk.token(lifetime=-60, iat=0, nbf=0)
        reason = "expired"
    status, headers, body = await fetch(nginx, "/private", token)
    assert status == 401
    assert headers["Content-Type"].startswith("application/json")
    document = json.loads(body)
    assert document["error"] == "invalid_token"
    assert document["reason"] == reason
    assert token not in body
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert upstream.requests == []


async def test_no_token_is_401_with_challenge(
    nginx: PeerProcess, upstream: Upstream, gw: GatewayUnderTest
) -> None:
    status, headers, body = await fetch(nginx, "/private")
    assert status == 401
    assert json.loads(body)["reason"] == "missing_token"
    assert headers["WWW-Authenticate"].startswith('Bearer realm="')
    assert upstream.requests == []
    # The denial is decided twice (auth_request, then error_page for the JSON body), both
    # times under nginx's $request_id, which is also the id the client sees.
    ids = [seen["headers"]["X-Request-Id"] for seen in gw.seen]
    assert len(ids) == 2 and ids[0] == ids[1] == json.loads(body)["request_id"]


async def test_session_cookie_works_through_nginx(
    clerk: DevIssuer, nginx: PeerProcess, upstream: Upstream
) -> None:
    cookie = f"__session={clerk.token(sub='user_cookie', org_id='org_cookie')}"
    status, _, body = await fetch(nginx, "/", headers={"Cookie": cookie})
    assert status == 200, body
    assert json.loads(body)["headers"]["X-User-Id"] == "user_cookie"
    assert upstream.requests[-1]["headers"]["X-Org-Id"] == "org_cookie"


async def test_original_uri_and_method_reach_the_gateway(
    nginx: PeerProcess, gw: GatewayUnderTest
) -> None:
    # A client-sent X-Forwarded-Uri would win over X-Original-URI in the gateway: the config
    # must clear it, or a client could have another path decided.
    spoof = {"X-Forwarded-Uri": "/public", "X-Forwarded-Method": "OPTIONS"}
    status, _, _ = await fetch(nginx, "/orgs/acme/reports?x=1", headers=spoof)
    assert status == 401
    first = gw.seen[0]
    assert first["headers"]["X-Original-URI"] == "/orgs/acme/reports?x=1"
    assert first["headers"]["X-Original-Method"] == "GET"
    assert "X-Forwarded-Uri" not in first["headers"]
    assert "X-Forwarded-Method" not in first["headers"]
    assert first["decision_path"] == "/orgs/acme/reports"
    assert first["reason"] == "missing_token"


async def test_gateway_503_becomes_500_at_the_client(
    clerk: DevIssuer, tmp_path: Path, upstream: Upstream
) -> None:
    # nginx's auth_request passes only 2xx, 401 and 403; any other status becomes its own 500.
    closed = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"
    env = {"CLERK_ISSUER": clerk.issuer, "CLERK_JWKS_URL": closed}
    async with run_gateway(env) as down, run_nginx(tmp_path, down.port, upstream.port) as peer:
        status, headers, body = await fetch(peer, "/", clerk.token())
        assert [seen["status"] for seen in down.seen] == [503]
        assert down.seen[0]["reason"] == "keys_unavailable"
    assert status == 500
    assert "Retry-After" not in headers  # nginx drops the gateway's answer entirely
    assert "keys_unavailable" not in body
    assert upstream.requests == []
