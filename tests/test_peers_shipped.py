"""The shipped examples (config/nginx, config/caddy, config/traefik) end to end, as shipped.

Each peer runs with its file from config/ (only addresses replaced) in front of a WSGI
upstream that shows every HTTP_X_* variable it received, the gateway deciding with the fast
door on and off. A WSGI app reads `X_User_Id`, `X-User_Id` and `X-User-Id` as the same
HTTP_X_USER_ID, so no spelling of an identity header may come from the client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.devissuer import DevIssuer
from tests.conftest import free_port
from tests.peer_support import (
    IDENTITY_HEADERS,
    PEERS,
    SPOOF_SPELLINGS,
    GatewayUnderTest,
    PeerProcess,
    Upstream,
    fetch,
    peer_gateway,  # noqa: F401 (the `gw` fixture)
    peer_upstream,  # noqa: F401 (the `upstream` fixture)
    run_gateway,
    run_peer,
)

pytestmark = pytest.mark.peers


def variable(header: str) -> str:
    """The WSGI environ key a header name lands in."""
    return "HTTP_" + header.upper().replace("-", "_")


@pytest.fixture(params=sorted(PEERS))
async def peer(request: pytest.FixtureRequest, tmp_path: Path, gw: GatewayUnderTest,
               upstream: Upstream) -> AsyncIterator[PeerProcess]:
    async with run_peer(request.param, tmp_path, gw.port, upstream.port) as running:
        yield running


async def test_valid_token_reaches_upstream_with_identity(
    clerk: DevIssuer, peer: PeerProcess, upstream: Upstream
) -> None:
    token = clerk.token(sub="user_n1", org_id="org_n1", org_slug="acme", role="admin",
                        plan="o:pro")
    status, _, body = await fetch(peer, "/reports?q=1", token)
    assert status == 200, body
    assert json.loads(body)["path"] == "/reports?q=1"
    seen = upstream.identity()
    assert seen["HTTP_X_USER_ID"] == "user_n1"
    assert seen["HTTP_X_ORG_ID"] == "org_n1"
    assert seen["HTTP_X_ROLE"] == "org:admin"
    assert seen["HTTP_X_ORG_SLUG"] == "acme"
    assert seen["HTTP_X_PLAN"] == "o:pro"
    # Absent claims: no variable at all (Caddy 2.6.2's literal placeholders are deleted too).
    assert "HTTP_X_ACTOR_ID" not in seen
    assert not any(value.startswith("{http.") for value in seen.values()), seen
    assert len(upstream.requests) == 1


async def test_no_spelling_of_a_spoofed_identity_header_reaches_the_app(
    clerk: DevIssuer, peer: PeerProcess, upstream: Upstream
) -> None:
    token = clerk.token(sub="user_real", org_id="org_real")
    spoofed = {spelling: "victim" for spelling in SPOOF_SPELLINGS}
    status, _, body = await fetch(peer, "/", token, spoofed)
    assert status == 200, body
    seen = upstream.identity()
    assert seen["HTTP_X_USER_ID"] == "user_real"
    assert seen["HTTP_X_ORG_ID"] == "org_real"
    for header in IDENTITY_HEADERS:
        assert "victim" not in seen.get(variable(header), ""), (header, seen)


@pytest.mark.parametrize("spelling", ["X_Org_Id", "X-Org_Id", "X_Org-Id", "x_org_id"])
async def test_spoofed_org_never_arrives_when_the_token_has_none(
    clerk: DevIssuer, peer: PeerProcess, upstream: Upstream, spelling: str
) -> None:
    token = clerk.token(sub="user_solo")
    status, _, body = await fetch(peer, "/", token, {"X-Org-Id": "org_victim",
                                                    spelling: "org_victim"})
    assert status == 200, body
    seen = upstream.identity()
    assert "HTTP_X_ORG_ID" not in seen, seen
    assert seen["HTTP_X_USER_ID"] == "user_solo"


@pytest.mark.parametrize("kind", ["tampered", "expired"])
async def test_invalid_token_is_the_gateways_401_json(
    clerk: DevIssuer, peer: PeerProcess, upstream: Upstream, kind: str
) -> None:
    if kind == "tampered":
        header, payload, signature = clerk.token(org_id="org_1").split(".")
        token = f"{header}.{payload}.{signature[:-4]}AAAA"
        reason = "bad_signature"
    else:
        token = clerk.token(lifetime=-60, iat=0, nbf=0)
        reason = "expired"
    status, headers, body = await fetch(peer, "/private", token)
    assert status == 401, body
    assert headers["Content-Type"].startswith("application/json")
    document = json.loads(body)
    assert document["error"] == "invalid_token"
    assert document["reason"] == reason
    assert document["request_id"] == headers["X-Request-Id"]
    assert token not in body
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert upstream.requests == []


async def test_no_token_is_the_gateways_401_with_challenge(
    peer: PeerProcess, upstream: Upstream
) -> None:
    status, headers, body = await fetch(peer, "/private")
    assert status == 401
    assert json.loads(body)["reason"] == "missing_token"
    assert headers["WWW-Authenticate"].startswith('Bearer realm="')
    assert upstream.requests == []


async def test_forbidden_is_the_gateways_403_json(
    clerk: DevIssuer, tmp_path: Path, upstream: Upstream, peer_name: str
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("routes:\n  - name: admin\n    path_prefix: /admin\n    require:\n"
                      "      role: org:admin\n")
    env = {"CLERK_ISSUER": clerk.issuer, "GATEWAY_CONFIG": str(config)}
    async with run_gateway(env) as gw, run_peer(peer_name, tmp_path, gw.port,
                                                upstream.port) as peer:
        token = clerk.token(org_id="org_1", role="member")
        status, headers, body = await fetch(peer, "/admin/users", token)
    assert status == 403, body
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["reason"] == "missing_role"
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    assert upstream.requests == []


async def test_session_cookie_works(
    clerk: DevIssuer, peer: PeerProcess, upstream: Upstream
) -> None:
    cookie = f"__session={clerk.token(sub='user_cookie', org_id='org_cookie')}"
    status, _, body = await fetch(peer, "/", headers={"Cookie": cookie})
    assert status == 200, body
    assert upstream.identity()["HTTP_X_USER_ID"] == "user_cookie"
    assert upstream.identity()["HTTP_X_ORG_ID"] == "org_cookie"


async def test_gateway_503_reaches_the_client_with_retry_after(
    clerk: DevIssuer, tmp_path: Path, upstream: Upstream, peer_name: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"
    env = {"CLERK_ISSUER": clerk.issuer, "CLERK_JWKS_URL": closed}
    async with run_gateway(env) as down, run_peer(peer_name, tmp_path, down.port,
                                                  upstream.port) as peer:
        status, headers, body = await fetch(peer, "/", clerk.token())
        assert down.seen[-1]["reason"] == "keys_unavailable"
    assert status == 503, body
    assert int(headers["Retry-After"]) >= 1
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["reason"] == "keys_unavailable"
    assert upstream.requests == []


async def test_cors_preflights_and_refusals_through_the_peer(
    clerk: DevIssuer, tmp_path: Path, upstream: Upstream, peer_name: str
) -> None:
    # Forward-auth mode: an allowed origin's preflight reaches the app without a token (the
    # app answers it); another origin's does not; refusals carry CORS headers for the allowed
    # origin only, so a browser there can read the reason.
    app, other = "http://localhost:3000", "http://evil.localhost:3000"
    env = {"CLERK_ISSUER": clerk.issuer, "CLERK_AUTHORIZED_PARTIES": app}
    ask = {"Access-Control-Request-Method": "GET",
           "Access-Control-Request-Headers": "authorization"}
    async with run_gateway(env) as gw, run_peer(peer_name, tmp_path, gw.port,
                                                upstream.port) as peer:
        before = len(upstream.requests)  # Traefik's start-up probe is a refusal
        status, _, body = await fetch(peer, "/api/items", method="OPTIONS",
                                      headers={"Origin": app, **ask})
        assert status == 200, body
        (passed,) = upstream.requests[before:]
        assert passed["method"] == "OPTIONS"
        assert not any(k.startswith("HTTP_X_USER") for k in passed["environ"])
        status, headers, body = await fetch(peer, "/api/items", method="OPTIONS",
                                            headers={"Origin": other, **ask})
        assert status == 401, body
        assert "Access-Control-Allow-Origin" not in headers
        status, headers, body = await fetch(peer, "/api/items", headers={"Origin": app})
        assert status == 401, body
        assert headers["Access-Control-Allow-Origin"] == app
        assert json.loads(body)["reason"] == "missing_token"
        status, headers, _ = await fetch(peer, "/api/items", headers={"Origin": other})
        assert status == 401 and "Access-Control-Allow-Origin" not in headers
    assert len(upstream.requests) == before + 1


@pytest.fixture(params=sorted(PEERS))
def peer_name(request: pytest.FixtureRequest) -> str:
    """Each shipped peer's name, for tests that start their own gateway."""
    return str(request.param)
