"""The Redis-backed store with a real redis-server: pub/sub propagation between gateways,
readiness, and what happens when Redis goes away mid-run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.auth.revocation import SocketCloser
from gateway.devissuer import DevIssuer
from tests.conftest import GatewayFactory, Running
from tests.redis_support import RedisServer, redis_server
from tests.revocation_support import (
    ADMIN_TOKEN,
    WEBHOOK_SECRET,
    admin_headers,
    delivery,
    metric,
    reason_of,
)

__all__ = ["redis_server"]  # the fixture, re-exported for pytest


class Clock:
    """Wall time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def eventually(probe: Callable[[], Awaitable[bool]], deadline: float = 5.0) -> None:
    """Poll until the probe holds, failing after the deadline."""
    end = time.monotonic() + deadline
    while not await probe():
        if time.monotonic() > end:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.05)


async def redis_gateway(make_gateway: GatewayFactory, redis: RedisServer,
                        clock: Clock | None = None, **revocation: Any) -> Running:
    """A gateway on the shared Redis, ready (subscribed) before it is returned."""
    env = {"GATEWAY_REDIS_URL": redis.url, "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
           "CLERK_WEBHOOK_SIGNING_SECRET": WEBHOOK_SECRET}
    config = {"revocation": {"store_retry_seconds": 0.2, "store_timeout_seconds": 0.5,
                             **revocation}}
    gw = await make_gateway(env=env, config=config, clock=clock)
    await eventually(lambda: ready(gw, True))
    return gw


async def ready(gw: Running, expected: bool) -> bool:
    """Whether /readyz reports Redis as expected."""
    response = await gw.admin.get("/readyz")
    body = await response.json()
    return bool(body["checks"].get("redis") is expected
                and (response.status == 200) is expected)


async def test_a_revocation_reaches_another_gateway_through_pubsub(
    clerk: DevIssuer, make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    # A long local TTL: only the pub/sub notification can flip the second gateway in time.
    first = await redis_gateway(make_gateway, redis_server, local_ttl_seconds=60)
    second = await redis_gateway(make_gateway, redis_server, local_ttl_seconds=60)
    registry = _Registry()
    second.gateway.revocation.subscribe(SocketCloser(registry))
    token = clerk.token(sub="user_1", sid="sess_1")
    assert (await second.get("/", token)).status == 200  # clear answer cached locally

    added = await first.admin.post("/admin/revocations", json={"kind": "session", "id": "sess_1"},
                                   headers=admin_headers())
    assert added.status == 201

    async def denied() -> bool:
        return (await second.get("/", token)).status == 401

    await eventually(denied, deadline=3.0)
    assert registry.closed == [("session", "sess_1")]
    listed = await second.admin.get("/admin/revocations", headers=admin_headers())
    assert [e["id"] for e in (await listed.json())["revocations"]] == ["sess_1"]

    removed = await second.admin.delete("/admin/revocations/session/sess_1",
                                        headers=admin_headers())
    assert removed.status == 200

    async def allowed() -> bool:
        return (await first.get("/", token)).status == 200

    await eventually(allowed, deadline=3.0)


async def test_webhook_idempotency_is_shared_between_gateways(
    clerk: DevIssuer, make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    first = await redis_gateway(make_gateway, redis_server)
    second = await redis_gateway(make_gateway, redis_server)
    body, headers = delivery("user.deleted", {"id": "user_1"})
    response = await first.client.post("/_gateway/webhooks/clerk", data=body, headers=headers)
    assert (await response.json())["status"] == "applied"
    replay = await second.client.post("/_gateway/webhooks/clerk", data=body, headers=headers)
    assert (await replay.json())["status"] == "duplicate"
    assert (await second.get("/", clerk.token(sub="user_1"))).status == 401


class _Registry:
    def __init__(self) -> None:
        self.closed: list[tuple[str, str]] = []

    def close_session(self, session_id: str) -> None:
        self.closed.append(("session", session_id))

    def close_user(self, user_id: str) -> None:
        self.closed.append(("user", user_id))


async def test_redis_outage_fail_closed(
    clerk: DevIssuer, make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    clock = Clock()
    gw = await redis_gateway(make_gateway, redis_server, clock, local_ttl_seconds=1,
                             store_grace_seconds=5)
    revoked = clerk.token(sub="user_1", sid="sess_bad", lifetime=3600)
    known = clerk.token(sub="user_2", sid="sess_ok", lifetime=3600)
    await gw.admin.post("/admin/revocations", json={"kind": "session", "id": "sess_bad"},
                        headers=admin_headers())
    assert (await gw.get("/", revoked)).status == 401
    assert (await gw.get("/", known)).status == 200

    redis_server.stop()
    await eventually(lambda: ready(gw, False))
    assert (await gw.get("/", revoked)).status == 401  # a known revocation keeps denying
    clock.offset = 3  # local answer stale, store unreachable, inside the 5 s grace
    assert (await gw.get("/", known)).status == 200
    assert (await gw.get("/", revoked)).status == 401
    clock.offset = 10  # grace over: fail closed
    for token in (known, clerk.token(sub="user_3", sid="sess_new", lifetime=3600)):
        response = await gw.get("/", token)
        assert response.status == 503
        assert await reason_of(response) == "revocation_unavailable"
        assert response.headers["Retry-After"] == "1"
    assert (await gw.get("/", revoked)).status == 401
    assert metric(gw, "fail_open_total", component="revocation_store") == 0

    # Writes cannot be accepted while the store is down, and say so.
    add = await gw.admin.post("/admin/revocations", json={"kind": "user", "id": "user_9"},
                              headers=admin_headers())
    assert add.status == 503
    body, headers = delivery("user.deleted", {"id": "user_9"})
    hook = await gw.client.post("/_gateway/webhooks/clerk", data=body, headers=headers)
    assert hook.status == 503

    # Redis comes back (empty: it ran without persistence): the gateway resubscribes,
    # re-reads, and the delivery Clerk retries is applied.
    redis_server.start()
    await eventually(lambda: ready(gw, True))
    assert (await gw.get("/", known)).status == 200
    hook = await gw.client.post("/_gateway/webhooks/clerk", data=body, headers=headers)
    assert (await hook.json())["status"] == "applied"
    assert (await gw.get("/", clerk.token(sub="user_9", lifetime=3600))).status == 401


async def test_redis_outage_fail_open_is_explicit_and_metered(
    clerk: DevIssuer, make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    clock = Clock()
    gw = await redis_gateway(make_gateway, redis_server, clock, local_ttl_seconds=1,
                             store_grace_seconds=5, on_store_error="fail_open")
    revoked = clerk.token(sub="user_1", sid="sess_bad", lifetime=3600)
    known = clerk.token(sub="user_2", sid="sess_ok", lifetime=3600)
    await gw.admin.post("/admin/revocations", json={"kind": "session", "id": "sess_bad"},
                        headers=admin_headers())
    assert (await gw.get("/", known)).status == 200
    redis_server.stop()
    await eventually(lambda: ready(gw, False))
    clock.offset = 10
    assert (await gw.get("/", known)).status == 200
    assert (await gw.get("/", clerk.token(sub="user_3", sid="sess_new", lifetime=3600))).status \
        == 200
    assert metric(gw, "fail_open_total", component="revocation_store") == 2
    # Fail-open never lifts a revocation this replica knows of.
    assert (await gw.get("/", revoked)).status == 401
