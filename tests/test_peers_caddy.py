"""What is particular to Caddy's forward_auth with config/caddy/Caddyfile as shipped
(the behaviour every shipped peer shares is in test_peers_shipped.py)."""

from __future__ import annotations

import pytest

from gateway.devissuer import DevIssuer
from tests.peer_support import (
    IDENTITY_HEADERS,
    GatewayUnderTest,
    PeerProcess,
    Upstream,
    fetch,
    peer_fixture,
    peer_gateway,  # noqa: F401 (the `gw` fixture)
    peer_upstream,  # noqa: F401 (the `upstream` fixture)
)

pytestmark = pytest.mark.peers


caddy = peer_fixture("caddy")


async def test_headers_the_gateway_left_out_arrive_neither_as_placeholders_nor_empty(
    clerk: DevIssuer, caddy: PeerProcess, upstream: Upstream
) -> None:
    # Caddy 2.6.2 (Debian 12) sends `{http.reverse_proxy.header.X-Org-Id}` for a copy_headers
    # name missing from the gateway's answer; the shipped file deletes those values.
    status, _, body = await fetch(caddy, "/", clerk.token(sub="user_plain", sid=None))
    assert status == 200, body
    seen = upstream.identity()
    assert seen["HTTP_X_USER_ID"] == "user_plain"
    assert seen["HTTP_X_TOKEN_TYPE"] == "session_token"  # every credential has a type
    left_out = [h for h in IDENTITY_HEADERS if h not in ("X-User-Id", "X-Token-Type")]
    for header in left_out:
        assert "HTTP_" + header.upper().replace("-", "_") not in seen, (header, seen)


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
