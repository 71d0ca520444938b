"""Key set behaviour asserted by fetch counts against the fake Clerk."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from gateway.devissuer import DevIssuer, SigningKey
from tests.conftest import GatewayFactory, Running

FAST_RETRY = {"keys": {"retry_min_seconds": 0.05, "retry_max_seconds": 0.1}}


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    """Poll until predicate() is true (a bounded wait, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_keys_are_fetched_once_at_startup(clerk: DevIssuer, make_gateway: GatewayFactory
                                                ) -> None:
    gw = await make_gateway()
    for _ in range(20):
        assert (await gw.get("/", clerk.token())).status == 200
    assert clerk.hits["jwks"] == 1


async def test_concurrent_unknown_kid_causes_one_fetch(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    assert clerk.hits["jwks"] == 1
    clerk.delay = 0.2  # keep the refetch in flight while every request arrives
    new_key = clerk.rotate()
    token = clerk.sign(clerk.claims(), key=new_key)
    results = await asyncio.gather(*(gw.gateway.verifier.verify(token) for _ in range(1000)))
    assert all(r.identity.user_id == "user_2demo" for r in results)
    assert clerk.hits["jwks"] == 2


async def test_concurrent_unknown_kid_over_http_causes_one_fetch(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    clerk.delay = 0.1
    token = clerk.sign(clerk.claims(), key=clerk.rotate())
    responses = await asyncio.gather(*(gw.get("/", token) for _ in range(200)))
    assert {r.status for r in responses} == {200}
    assert clerk.hits["jwks"] == 2


async def test_random_kids_during_cooldown_cause_no_fetch(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    first = clerk.sign(clerk.claims(), key=SigningKey(kid="ins_first_unknown"))
    assert (await gw.get("/", first)).status == 401
    assert clerk.hits["jwks"] == 2  # one refetch for the first unknown kid
    for _ in range(300):
        stranger = SigningKey.__new__(SigningKey)
        stranger.kid, stranger.private = f"ins_{uuid.uuid4().hex}", clerk.key.private
        response = await gw.get("/", clerk.sign(clerk.claims(), key=stranger))
        assert (await response.json())["reason"] == "unknown_key"
    assert clerk.hits["jwks"] == 2


async def test_unknown_kid_after_the_cooldown_refetches(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config={"keys": {"unknown_kid_cooldown_seconds": 0.2}})
    stranger = SigningKey(kid="ins_nobody")
    await gw.get("/", clerk.sign(clerk.claims(), key=stranger))
    assert clerk.hits["jwks"] == 2
    await asyncio.sleep(0.3)
    new_key = clerk.rotate()
    assert (await gw.get("/", clerk.sign(clerk.claims(), key=new_key))).status == 200
    assert clerk.hits["jwks"] == 3


async def test_rotation_new_key_accepted_and_removed_key_refused(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(config={"keys": {"unknown_kid_cooldown_seconds": 0}})
    old_token = clerk.token()
    new_key = clerk.rotate(keep_old=False)
    assert (await gw.get("/", clerk.sign(clerk.claims(), key=new_key))).status == 200
    # The refetch replaced the key set; a token by the removed key (not cached) is refused.
    assert (await gw.get("/", old_token)).status == 401


async def test_outage_keeps_the_last_good_keys(clerk: DevIssuer, make_gateway: GatewayFactory
                                               ) -> None:
    gw = await make_gateway()
    clerk.fail_status = 500
    assert await gw.gateway.keys["clerk"].refresh() is False
    assert (await gw.get("/", clerk.token(sub="user_during_outage"))).status == 200
    registry = gw.gateway.registry
    fetches = "clerk_gateway_key_fetches_total"
    assert registry.get_sample_value(fetches, {"issuer": "clerk", "result": "error"}) == 1
    assert registry.get_sample_value(fetches, {"issuer": "clerk", "result": "success"}) == 1
    assert registry.get_sample_value("clerk_gateway_keys", {"issuer": "clerk"}) == 1
    assert (await gw.admin.get("/readyz")).status == 200


async def test_empty_or_garbage_key_set_does_not_replace_good_keys(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    clerk.keys = []
    assert await gw.gateway.keys["clerk"].refresh() is False
    assert (await gw.get("/", clerk.sign(clerk.claims(), key=SigningKey("x")))).status == 401
    assert gw.gateway.keys["clerk"].ready


async def test_provider_down_at_startup_gives_503_then_recovers(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clerk.fail_status = 503
    gw: Running = await make_gateway(config=FAST_RETRY)
    token = clerk.token()
    ready = await gw.admin.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"] == {"keys:clerk": False, "state": True}
    response = await gw.get("/", token)
    assert response.status == 503
    assert (await response.json())["reason"] == "keys_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    assert "WWW-Authenticate" not in response.headers
    clerk.fail_status = None
    await wait_for(lambda: gw.gateway.keys["clerk"].ready)
    assert (await gw.admin.get("/readyz")).status == 200
    assert (await gw.get("/", token)).status == 200


async def test_cache_control_max_age_sets_the_refresh_interval(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clerk.cache_control = "public, max-age=120"
    gw = await make_gateway()
    assert 96 * 0.85 <= gw.gateway.keys["clerk"].next_delay() <= 96 * 1.15
    clerk.cache_control = "max-age=1"
    await gw.gateway.keys["clerk"].refresh()
    # Bounded below by min_refresh_seconds (30 s by default): 0.8 x 30 = 24 s.
    assert 24 * 0.85 <= gw.gateway.keys["clerk"].next_delay() <= 24 * 1.15


async def test_background_refresh_fetches_again(clerk: DevIssuer, make_gateway: GatewayFactory
                                                ) -> None:
    clerk.cache_control = "max-age=1"
    await make_gateway(config={"keys": {"min_refresh_seconds": 1}})
    await wait_for(lambda: clerk.hits["jwks"] >= 2)


async def test_pinned_pem_key_needs_no_fetch(clerk: DevIssuer, make_gateway: GatewayFactory
                                             ) -> None:
    gw = await make_gateway({"CLERK_JWT_KEY": clerk.key.public_pem()})
    assert (await gw.get("/", clerk.token())).status == 200
    assert (await gw.admin.get("/readyz")).status == 200
    assert clerk.hits["jwks"] == 0
    other = SigningKey(kid=clerk.key.kid)
    assert (await gw.get("/", clerk.sign(clerk.claims(), key=other))).status == 401


async def test_backend_api_keys_with_the_secret_key(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway({"CLERK_SECRET_KEY": clerk.secret_key, "CLERK_API_URL": clerk.issuer})
    assert (await gw.get("/", clerk.token())).status == 200
    assert clerk.hits["backend_jwks"] == 1
    assert clerk.hits["jwks"] == 1  # served through the authorized Backend API route


async def test_backend_api_with_a_wrong_secret_is_not_ready(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway({"CLERK_SECRET_KEY": "sk_test_wrong", "CLERK_API_URL": clerk.issuer},
                            config=FAST_RETRY)
    assert (await gw.admin.get("/readyz")).status == 503
    assert (await gw.get("/", clerk.token())).status == 503


async def test_oidc_discovery(clerk: DevIssuer, make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config={"issuers": [
        {"name": "workos", "issuer": clerk.issuer, "preset": "oidc"}]}, issuer_env=False)
    assert clerk.hits["discovery"] == 1 and clerk.hits["jwks"] == 1
    response = await gw.get("/", clerk.token(sub="user_oidc"))
    assert response.status == 200
    assert response.headers["X-User-Id"] == "user_oidc"


async def test_a_shared_key_set_is_checked_like_a_fetched_one(
    clerk: DevIssuer, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """Key material written into the state store (private or symmetric keys) is never
    adopted: the worker fetches from the issuer instead, and the planted key verifies nothing."""
    from jwt.algorithms import RSAAlgorithm

    from gateway.config import load_settings
    from gateway.state.schema import database_path
    from gateway.state.sqlite import SqliteStore
    from gateway.state.wiring import keyset_share_for

    state = tmp_path / "planted"
    settings = load_settings({"CLERK_ISSUER": clerk.issuer, "GATEWAY_STATE_DIR": str(state)})
    attacker = SigningKey(kid="ins_planted")
    planted = RSAAlgorithm.to_jwk(attacker.private, as_dict=True)  # holds the private "d"
    planted.update(kid="ins_planted", alg="RS256", use="sig")
    symmetric = {"kty": "oct", "kid": "ins_oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}
    store = SqliteStore(database_path(state), time.time)
    await store.open()
    share = keyset_share_for(store, settings.issuers[0])
    assert share is not None
    await share.publish({"keys": [planted, symmetric]}, time.time(), 300)
    await store.close()

    gw = await make_gateway(env={"GATEWAY_STATE_DIR": str(state)})
    assert clerk.hits["jwks"] == 1  # the planted set was refused, the issuer asked
    forged = clerk.sign(clerk.claims(), key=attacker)
    response = await gw.get("/", forged)
    assert response.status == 401
    assert (await response.json())["reason"] == "unknown_key"
    assert (await gw.get("/", clerk.token())).status == 200
