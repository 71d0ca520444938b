"""Session introspection against the fake Clerk's /v1/sessions/{id}: cache, single flight,
429 with Retry-After, outage with grace then the configured failure mode."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory, Running
from tests.revocation_support import metric, reason_of


class Clock:
    """Wall time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def introspecting(
    clerk: DevIssuer, make_gateway: GatewayFactory, clock: Clock, **revocation: Any
) -> Running:
    """A gateway with introspection on, talking to the fake Clerk's Backend API."""
    env = {"CLERK_SECRET_KEY": clerk.secret_key, "CLERK_API_URL": clerk.issuer}
    config = {"revocation": {"introspection": True, "introspection_ttl_seconds": 60,
                             "introspection_grace_seconds": 30, **revocation}}
    return await make_gateway(env=env, config=config, clock=clock)


def token(clerk: DevIssuer, sid: str = "sess_1") -> str:
    """A long-lived token so the moved clock never expires it."""
    return clerk.token(sub="user_1", sid=sid, lifetime=3600)


async def test_active_session_is_looked_up_once_then_cached(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clerk.sessions["sess_1"] = "active"
    clock = Clock()
    gw = await introspecting(clerk, make_gateway, clock)
    for _ in range(5):
        assert (await gw.get("/", token(clerk))).status == 200
    assert clerk.hits["session"] == 1
    assert metric(gw, "introspection_calls_total", result="active") == 1
    assert metric(gw, "revocation_checks_total", source="introspection_cache",
                  result="clear") == 4
    clock.offset = 61  # past the TTL: asked again
    assert (await gw.get("/", token(clerk))).status == 200
    assert clerk.hits["session"] == 2


async def test_inactive_and_unknown_sessions_are_revoked(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clerk.sessions.update(sess_r="revoked", sess_e="ended", sess_p="pending")
    gw = await introspecting(clerk, make_gateway, Clock())
    for sid in ("sess_r", "sess_e", "sess_p", "sess_missing"):
        response = await gw.get("/", token(clerk, sid))
        assert response.status == 401, sid
        assert await reason_of(response) == "revoked"
    assert metric(gw, "introspection_calls_total", result="inactive") == 3
    assert metric(gw, "introspection_calls_total", result="not_found") == 1
    # The revocation is shared through the store: the admin API lists it.
    assert {e.id for e in await gw.gateway.revocation.list()} >= {"sess_r", "sess_missing"}


async def test_one_call_for_a_hundred_concurrent_requests(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clerk.sessions["sess_1"] = "active"
    gw = await introspecting(clerk, make_gateway, Clock())
    clerk.delay = 0.2
    tokens = [token(clerk) for _ in range(100)]
    responses = await asyncio.gather(*(gw.get("/", t) for t in tokens))
    assert [r.status for r in responses] == [200] * 100
    assert clerk.hits["session"] == 1


async def test_429_stops_calls_until_retry_after_and_serves_the_last_answer(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clerk.sessions["sess_1"] = "active"
    clock = Clock()
    gw = await introspecting(clerk, make_gateway, clock)
    assert (await gw.get("/", token(clerk))).status == 200
    clerk.session_fail_status, clerk.retry_after = 429, 20
    clock.offset = 61
    assert (await gw.get("/", token(clerk))).status == 200  # last answer, within grace
    assert clerk.hits["session"] == 2
    assert metric(gw, "introspection_calls_total", result="rate_limited") == 1
    clock.offset = 75  # still inside Retry-After: no call at all
    for _ in range(3):
        assert (await gw.get("/", token(clerk))).status == 200
    assert clerk.hits["session"] == 2
    # A session never seen while rate limited: no answer to fall back on -> fail closed.
    unknown = await gw.get("/", token(clerk, "sess_new"))
    assert unknown.status == 503
    assert await reason_of(unknown) == "revocation_unavailable"
    assert clerk.hits["session"] == 2
    clerk.session_fail_status = None
    clock.offset = 82  # Retry-After elapsed: calls resume
    assert (await gw.get("/", token(clerk))).status == 200
    assert clerk.hits["session"] == 3


async def test_outage_uses_the_last_answer_within_grace_then_fails_closed(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clerk.sessions["sess_1"] = "active"
    clock = Clock()
    gw = await introspecting(clerk, make_gateway, clock)
    assert (await gw.get("/", token(clerk))).status == 200
    clerk.session_fail_status = 500
    clock.offset = 80  # 20 s past the TTL: inside the 30 s grace
    assert (await gw.get("/", token(clerk))).status == 200
    assert metric(gw, "introspection_calls_total", result="error") == 1
    clock.offset = 95  # 35 s past the TTL: grace over
    response = await gw.get("/", token(clerk))
    assert response.status == 503
    assert await reason_of(response) == "revocation_unavailable"
    assert response.headers["Retry-After"] == "1"
    assert metric(gw, "revocation_checks_total", source="introspection",
                  result="unavailable") == 1
    assert metric(gw, "fail_open_total", component="introspection") == 0


async def test_a_known_revoked_answer_stays_revoked_during_an_outage(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clerk.sessions["sess_1"] = "revoked"
    clock = Clock()
    gw = await introspecting(clerk, make_gateway, clock,
                             introspection_failure_mode="fail_open")
    assert (await gw.get("/", token(clerk))).status == 401
    clerk.session_fail_status = 503
    clock.offset = 200  # long past TTL and grace, fail-open: the store still says revoked
    assert (await gw.get("/", token(clerk))).status == 401


async def test_outage_fail_open_allows_and_is_metered(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clerk.sessions["sess_1"] = "active"
    clock = Clock()
    gw = await introspecting(clerk, make_gateway, clock,
                             introspection_failure_mode="fail_open")
    assert (await gw.get("/", token(clerk))).status == 200
    gw.gateway.metrics.flush()
    clear = metric(gw, "revocation_checks_total", source="introspection", result="clear")
    clerk.session_fail_status = 502
    clock.offset = 200
    assert (await gw.get("/", token(clerk))).status == 200
    assert (await gw.get("/", token(clerk, "sess_never_seen"))).status == 200
    assert metric(gw, "fail_open_total", component="introspection") == 2
    # Counted as what it is, never as a check that came back clear.
    gw.gateway.metrics.flush()
    assert metric(gw, "revocation_checks_total", source="introspection",
                  result="fail_open") == 2
    assert metric(gw, "revocation_checks_total", source="introspection",
                  result="clear") == clear


async def test_unreachable_api_is_an_outage(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    clerk.sessions["sess_1"] = "active"
    gw = await introspecting(clerk, make_gateway, Clock(), introspection_timeout_seconds=0.2)
    clerk.delay = 1.0  # slower than the timeout
    response = await gw.get("/", token(clerk))
    assert response.status == 503
    assert metric(gw, "introspection_calls_total", result="error") == 1


async def test_introspection_needs_the_secret_key(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    from gateway.config import ConfigError

    try:
        await make_gateway(config={"revocation": {"introspection": True}})
    except ConfigError as exc:
        assert "revocation.introspection: needs CLERK_SECRET_KEY" in str(exc)
    else:
        raise AssertionError("introspection without CLERK_SECRET_KEY must be refused")


async def test_tokens_of_other_issuers_are_not_looked_up_at_clerk(
    clerk: DevIssuer, make_gateway: GatewayFactory, aiohttp_server: Any
) -> None:
    corp = DevIssuer()
    server = await aiohttp_server(corp.app())
    corp.issuer = str(server.make_url("")).rstrip("/")
    env = {"CLERK_SECRET_KEY": clerk.secret_key, "CLERK_API_URL": clerk.issuer}
    config = {
        "issuers": [{"name": "corp", "issuer": corp.issuer, "preset": "oidc",
                     "jwks_url": f"{corp.issuer}/.well-known/jwks.json"}],
        "revocation": {"introspection": True},
    }
    gw = await make_gateway(env=env, config=config)
    response = await gw.get("/", corp.token(sub="employee_1", sid="corp_sess_1"))
    assert response.status == 200
    assert clerk.hits["session"] == 0
    clerk.sessions["sess_1"] = "active"
    assert (await gw.get("/", token(clerk))).status == 200
    assert clerk.hits["session"] == 1
