"""What is particular to nginx's auth_request with config/nginx/clerk-gateway.conf as shipped
(the behaviour every shipped peer shares is in test_peers_shipped.py)."""

from __future__ import annotations

import json

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


nginx = peer_fixture("nginx")


async def test_refusal_is_decided_twice_under_one_request_id(
    nginx: PeerProcess, upstream: Upstream, gw: GatewayUnderTest
) -> None:
    status, _, body = await fetch(nginx, "/private")
    assert status == 401
    assert upstream.requests == []
    # The denial is decided twice (auth_request, then error_page for the JSON body), both
    # times under nginx's $request_id, which is also the id the client sees.
    ids = [seen["headers"]["X-Request-Id"] for seen in gw.seen]
    assert len(ids) == 2 and ids[0] == ids[1] == json.loads(body)["request_id"]
    assert [seen["reason"] for seen in gw.seen] == ["missing_token", "missing_token"]


async def test_original_uri_and_method_reach_the_gateway(
    nginx: PeerProcess, gw: GatewayUnderTest
) -> None:
    # The gateway prefers X-Forwarded-*: the shipped file sets them itself, so a client's
    # own values never decide another path.
    spoof = {"X-Forwarded-Uri": "/public", "X-Forwarded-Method": "OPTIONS"}
    status, _, _ = await fetch(nginx, "/orgs/acme/reports?x=1", headers=spoof)
    assert status == 401
    first = gw.seen[0]
    assert first["headers"]["X-Original-URI"] == "/orgs/acme/reports?x=1"
    assert first["headers"]["X-Original-Method"] == "GET"
    assert first["headers"].getall("X-Forwarded-Uri") == ["/orgs/acme/reports?x=1"]
    assert first["headers"].getall("X-Forwarded-Method") == ["GET"]
    assert first["decision_path"] == "/orgs/acme/reports"
    assert first["reason"] == "missing_token"


async def test_underscore_headers_are_dropped_before_the_gateway_too(
    nginx: PeerProcess, gw: GatewayUnderTest
) -> None:
    status, _, _ = await fetch(nginx, "/", headers={"X_Forwarded_Uri": "/public"})
    assert status == 401
    assert all("X_Forwarded_Uri" not in seen["headers"] for seen in gw.seen)
