"""Unauthenticated webhook bodies are bounded in time and, across connections, in memory.

Stalled deliveries over real sockets, on the public and the admin listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from gateway.devissuer import DevIssuer
from gateway.http.webhooks import WEBHOOK_PATH
from tests.conftest import GatewayFactory, Running
from tests.revocation_support import WEBHOOK_SECRET, delivery, metric
from tests.test_exhaustion_proxy import split_reply

ENV = {"CLERK_WEBHOOK_SIGNING_SECRET": WEBHOOK_SECRET}
KiB = 1024


def port_of(gw: Running, listener: str) -> int:
    return int((gw.admin if listener == "admin" else gw.client).port)


@contextlib.asynccontextmanager
async def stalled_delivery(port: int, declared: int, sent: bytes
                           ) -> AsyncIterator[asyncio.StreamReader]:
    """A delivery that declares `declared` body bytes, sends `sent`, then nothing more."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json"
                 f"\r\nContent-Length: {declared}\r\n\r\n".encode() + sent)
    await writer.drain()
    try:
        yield reader
    finally:
        writer.close()


@pytest.mark.parametrize("listener", ["public", "admin"])
async def test_a_stalled_delivery_is_cut_with_408(
    make_gateway: GatewayFactory, listener: str
) -> None:
    gw = await make_gateway(env=ENV, config={
        "limits": {"unauthenticated_body_timeout_seconds": 0.5}})
    started = time.monotonic()
    async with stalled_delivery(port_of(gw, listener), 1000, b"{") as reader:
        status, headers, body = split_reply(await asyncio.wait_for(reader.read(), 10))
    assert time.monotonic() - started < 9
    assert status == 408
    assert set(body) == {"error", "reason", "message", "request_id"}
    assert body["reason"] == "body_timeout"
    assert headers["connection"] == "close"
    gw.gateway.metrics.flush()
    assert metric(gw, "resource_guards_total", guard="unauthenticated_body_deadline") == 1
    assert metric(gw, "webhook_events_total", type="other", result="rejected") == 1


async def test_stalled_deliveries_share_one_memory_budget(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env=ENV, config={"limits": {
        "unauthenticated_body_timeout_seconds": 30,
        "unauthenticated_body_memory_bytes": 64 * KiB}})
    bodies = gw.gateway.bodies
    chunk = b" " * (20 * KiB)
    async with contextlib.AsyncExitStack() as stack:
        for listener in ("public", "admin", "public"):
            await stack.enter_async_context(
                stalled_delivery(port_of(gw, listener), 100 * KiB, chunk))
        deadline = time.monotonic() + 10
        while bodies.held < 60 * KiB:
            assert time.monotonic() < deadline, bodies.held
            await asyncio.sleep(0.05)
        async with stalled_delivery(port_of(gw, "admin"), 100 * KiB, chunk) as reader:
            status, headers, body = split_reply(await asyncio.wait_for(reader.read(), 10))
        assert status == 503
        assert headers["retry-after"] == "1"
        assert body["reason"] == "server_busy"
        assert bodies.held <= 64 * KiB
    # the stalled senders went away: their bytes are given back and deliveries work again
    deadline = time.monotonic() + 10
    while bodies.held:
        assert time.monotonic() < deadline, bodies.held
        await asyncio.sleep(0.05)
    payload, headers = delivery("session.revoked", {"id": "sess_1", "user_id": "user_1"})
    response = await gw.client.post(WEBHOOK_PATH, data=payload, headers=headers)
    assert response.status == 200
    gw.gateway.metrics.flush()
    assert metric(gw, "resource_guards_total", guard="unauthenticated_body_memory") == 1


async def test_a_body_over_the_cap_is_refused_without_being_read(
    make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(env=ENV, config={"revocation": {"webhook_max_body_bytes": 1024}})
    async with stalled_delivery(port_of(gw, "public"), 4096, b"") as reader:
        status, _, _ = split_reply(await asyncio.wait_for(reader.read(), 10))
    assert status == 413
    assert gw.gateway.bodies.held == 0
