"""The gateway's signed assertion through the shipped nginx, Caddy and Traefik examples: the
app receives the gateway's own, never a client's (in any spelling)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
import yaml

from gateway.devissuer import DevIssuer
from tests.peer_support import (
    PEERS,
    GatewayUnderTest,
    PeerProcess,
    Upstream,
    fetch,
    peer_upstream,  # noqa: F401 (the `upstream` fixture)
    run_gateway,
    run_peer,
    spellings,
)

pytestmark = pytest.mark.peers

ISSUER = "https://gateway.example.com"
AUDIENCE = "https://app.example.com"


@pytest.fixture(name="gw")
async def asserting_gateway(clerk: DevIssuer, tmp_path: Path
                            ) -> AsyncIterator[GatewayUnderTest]:
    """A forward-auth gateway that signs an assertion for every allowed decision."""
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"assertion": {
        "enabled": True, "issuer": ISSUER, "audience": AUDIENCE}}))
    env = {"CLERK_ISSUER": clerk.issuer, "GATEWAY_STATE_DIR": str(tmp_path / "state")}
    async with run_gateway(env, config=str(config)) as running:
        yield running


@pytest.fixture(params=sorted(PEERS))
async def peer(request: pytest.FixtureRequest, tmp_path: Path, gw: GatewayUnderTest,
               upstream: Upstream) -> AsyncIterator[PeerProcess]:
    async with run_peer(request.param, tmp_path, gw.port, upstream.port) as running:
        yield running


async def test_the_app_receives_the_gateways_assertion_only(
    clerk: DevIssuer, gw: GatewayUnderTest, peer: PeerProcess, upstream: Upstream
) -> None:
    """Every spoofed spelling is gone; the one assertion left verifies with the gateway's key."""
    forged = clerk.sign({"iss": ISSUER, "aud": AUDIENCE, "sub": "user_victim"})
    spoofed = {spelling: forged for spelling in spellings("X-Gateway-Assertion")}
    status, _, body = await fetch(peer, "/", clerk.token(sub="user_real"), spoofed)
    assert status == 200, body
    seen = upstream.identity()
    assertion = seen["HTTP_X_GATEWAY_ASSERTION"]
    assert forged not in assertion
    signer = gw.gateway.authorizer.assertions
    assert signer is not None
    claims = jwt.decode(assertion, signer.key.private_key.public_key(),  # type: ignore[arg-type]
                        algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["sub"] == "user_real"


async def test_a_refused_request_reaches_nothing(
    clerk: DevIssuer, peer: PeerProcess, upstream: Upstream
) -> None:
    """Without a valid token, a forged assertion never reaches the app."""
    forged = clerk.sign({"iss": ISSUER, "aud": AUDIENCE, "sub": "user_victim"})
    status, _, _ = await fetch(peer, "/private", None, {"X-Gateway-Assertion": forged})
    assert status == 401
    assert upstream.requests == []
