"""Resource exhaustion through the proxy, stalled for real over sockets, through both clients.

Slow request bodies, clients that stop reading, one client holding many upstream slots, a
full pool, and idle relayed WebSockets: each is bounded, answered with JSON or cut, counted
in `clerk_gateway_resource_guards_total`, and frees its upstream connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from gateway.devissuer import DevIssuer
from gateway.http.websocket import CLOSE_GOING_AWAY
from tests.conftest import GatewayFactory, Running, free_port
from tests.proxy_support import Upstream, start_gateway_process

CLIENTS = ["lean", "aiohttp"]


async def gateway(make_gateway: GatewayFactory, upstream: Upstream, client: str,
                  **proxy: Any) -> Running:
    return await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url},
                              config={"proxy": {"client": client, **proxy}})


def guards(gw: Running, guard: str) -> float:
    gw.gateway.metrics.flush()
    return gw.gateway.registry.get_sample_value(
        "clerk_gateway_resource_guards_total", {"guard": guard}) or 0.0


async def eventually(check: Any, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def stalled_upload(port: int, token: str, forwarded_for: str | None = None
                         ) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A POST announcing a megabyte of body that sends one byte and then nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"POST /upload HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: 1000000\r\n")
    if forwarded_for:
        head += f"X-Forwarded-For: {forwarded_for}\r\n"
    writer.write(head.encode() + b"\r\nu")
    await writer.drain()
    try:
        yield reader, writer
    finally:
        writer.close()


def split_reply(raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


@pytest.mark.parametrize("client", CLIENTS)
async def test_stalled_bodies_get_408_and_free_their_upstream_connections(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream, client: str
) -> None:
    gw = await gateway(make_gateway, upstream, client, body_idle_timeout_seconds=1,
                       max_connections_per_upstream=2)
    token = clerk.token()
    async with stalled_upload(gw.client.port, token) as (r1, _), \
            stalled_upload(gw.client.port, token) as (r2, _):
        await asyncio.sleep(0.3)  # both hold an upstream connection now
        # another user is served once the stalled bodies are cut, not never
        response = await asyncio.wait_for(gw.get("/other", token=clerk.token()), 15)
        assert response.status == 200
        for reader in (r1, r2):
            status, headers, body = split_reply(await asyncio.wait_for(reader.read(), 15))
            assert status == 408
            assert set(body) == {"error", "reason", "message", "request_id"}
            assert body["reason"] == "body_timeout"
            assert headers["connection"] == "close"
    assert guards(gw, "request_body_idle") == 2


@pytest.mark.parametrize("client", CLIENTS)
async def test_one_client_cannot_hold_every_upstream_slot(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream, client: str
) -> None:
    gw = await gateway(make_gateway, upstream, client, max_requests_per_client=2,
                       max_connections_per_upstream=3, trusted_proxies=["127.0.0.1/32"])
    token = clerk.token()
    attacker = "203.0.113.5"
    async with stalled_upload(gw.client.port, token, attacker), \
            stalled_upload(gw.client.port, token, f"198.51.100.7, {attacker}"):
        await asyncio.sleep(0.3)
        third = await gw.get("/x", token=token, headers={"X-Forwarded-For": attacker})
        assert third.status == 429
        assert third.headers["Retry-After"] == "1"
        assert (await third.json())["reason"] == "too_many_requests"
        other = await asyncio.wait_for(
            gw.get("/x", token=token, headers={"X-Forwarded-For": "198.51.100.7"}), 10)
        assert other.status == 200
    assert guards(gw, "client_requests") == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_clients_that_leave_mid_request_give_their_slots_back(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream, client: str
) -> None:
    gw = await gateway(make_gateway, upstream, client, max_requests_per_client=2)
    token = clerk.token()
    for _ in range(6):  # three times the cap, each left while the upstream holds it
        _, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
        writer.write(f"GET /hold HTTP/1.1\r\nHost: app\r\n"
                     f"Authorization: Bearer {token}\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort()
    deadline = time.monotonic() + 15
    while (status := (await gw.get("/x", token=token)).status) != 200:
        assert status == 429 and time.monotonic() < deadline, "slots never given back"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_full_pool_answers_503_after_the_pool_timeout(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream, client: str
) -> None:
    gw = await gateway(make_gateway, upstream, client, max_connections_per_upstream=1,
                       pool_timeout_seconds=0.5, max_requests_per_client=0)
    token = clerk.token()
    holding = asyncio.create_task(gw.get("/hold", token=token))
    try:
        await asyncio.sleep(0.3)
        waited = await asyncio.wait_for(gw.get("/x", token=token), 10)
        assert waited.status == 503
        assert waited.headers["Retry-After"] == "1"
        assert (await waited.json())["reason"] == "upstream_busy"
    finally:
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holding
    assert guards(gw, "upstream_pool") == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_client_that_stops_reading_is_cut_and_its_upstream_freed(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream, client: str
) -> None:
    gw = await gateway(make_gateway, upstream, client, write_timeout_seconds=0.5,
                       max_connections_per_upstream=1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.client.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(f"GET /download?size={256 * 1024 * 1024} HTTP/1.1\r\nHost: app\r\n"
                     f"Authorization: Bearer {clerk.token()}\r\n\r\n".encode())
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(
            b"HTTP/1.1 200")
        # ... and read nothing more
        await eventually(lambda: guards(gw, "response_write") == 1)
        after = await asyncio.wait_for(gw.get("/x", token=clerk.token()), 10)
        assert after.status == 200  # the only upstream connection was given back
    finally:
        writer.close()


async def open_socket(gw: Running, clerk: DevIssuer) -> aiohttp.ClientWebSocketResponse:
    return await gw.client.ws_connect(
        "/ws", headers={"Authorization": f"Bearer {clerk.token()}"}, autoping=False)


@pytest.mark.parametrize("client", CLIENTS)
async def test_idle_websockets_never_take_plain_request_slots(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream, client: str
) -> None:
    gw = await gateway(make_gateway, upstream, client, max_connections=2,
                       max_connections_per_upstream=2)
    sockets = [await open_socket(gw, clerk) for _ in range(4)]
    try:
        response = await asyncio.wait_for(gw.get("/x", token=clerk.token()), 10)
        assert response.status == 200
    finally:
        for ws in sockets:
            await ws.close()


async def test_websocket_connections_are_bounded_with_a_pool_timeout(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway(make_gateway, upstream, "lean", websocket_max_connections=2,
                       pool_timeout_seconds=0.5, websocket_max_per_client=0)
    sockets = [await open_socket(gw, clerk) for _ in range(2)]
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await asyncio.wait_for(open_socket(gw, clerk), 10)
        assert refused.value.status == 503
        assert guards(gw, "websocket_pool") == 1
    finally:
        for ws in sockets:
            await ws.close()


async def test_one_client_may_open_only_so_many_websockets(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway(make_gateway, upstream, "lean", websocket_max_per_client=2)
    sockets = [await open_socket(gw, clerk) for _ in range(2)]
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await open_socket(gw, clerk)
        assert refused.value.status == 429
        assert guards(gw, "client_websockets") == 1
    finally:
        for ws in sockets:
            await ws.close()
    again = await open_socket(gw, clerk)  # closed sockets give their slots back
    await again.close()


async def test_an_idle_websocket_is_closed_and_a_busy_one_kept(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway(make_gateway, upstream, "lean", websocket_idle_timeout_seconds=1)
    idle = await open_socket(gw, clerk)
    busy = await open_socket(gw, clerk)
    try:
        started = time.monotonic()
        for n in range(8):  # 2 s of traffic, a frame every quarter second
            await busy.send_str(f"n{n}")
            assert (await asyncio.wait_for(busy.receive(), 5)).data == f"echo:n{n}"
            await asyncio.sleep(0.25)
        closing = await asyncio.wait_for(idle.receive(), 10)
        assert closing.type is WSMsgType.CLOSE and closing.data == CLOSE_GOING_AWAY
        assert time.monotonic() - started < 10
        await busy.send_str("still")
        assert (await asyncio.wait_for(busy.receive(), 5)).data == "echo:still"
        await eventually(lambda: CLOSE_GOING_AWAY in upstream.ws_closed)
        assert guards(gw, "websocket_idle") == 1
    finally:
        await idle.close()
        await busy.close()


async def test_every_bad_bound_is_listed_and_the_defaults_are_documented(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    from gateway.config import ConfigError

    bad = {"proxy": {"body_idle_timeout_seconds": 0, "write_timeout_seconds": "soon",
                     "pool_timeout_seconds": -1, "max_requests_per_client": -1,
                     "websocket_max_connections": 0, "websocket_max_per_client": "x",
                     "websocket_idle_timeout_seconds": 0},
           "limits": {"keepalive_timeout_seconds": 0, "unauthenticated_body_timeout_seconds": 0,
                      "unauthenticated_body_memory_bytes": 10}}
    with pytest.raises(ConfigError) as caught:
        await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url}, config=bad)
    text = str(caught.value)
    for section, keys in bad.items():
        for key in keys:
            assert f"{section}.{key}" in text, key
    gw = await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url})
    proxy, limits = gw.settings.proxy, gw.settings.limits
    assert (proxy.body_idle_timeout_seconds, proxy.write_timeout_seconds,
            proxy.pool_timeout_seconds, proxy.max_requests_per_client,
            proxy.websocket_max_connections, proxy.websocket_max_per_client,
            proxy.websocket_idle_timeout_seconds) == (30, 60, 10, 64, 1024, 32, 300)
    assert (limits.keepalive_timeout_seconds, limits.unauthenticated_body_timeout_seconds,
            limits.unauthenticated_body_memory_bytes) == (75, 10, 32 * 1024 * 1024)


async def test_served_with_default_workers_every_stalled_body_is_cut(
    clerk: DevIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("proxy:\n  body_idle_timeout_seconds: 1\n")
    served = await start_gateway_process(
        {"CLERK_ISSUER": clerk.issuer, "GATEWAY_UPSTREAM": upstream.url,
         "GATEWAY_CONFIG": str(config)}, free_port(), free_port(), tmp_path)
    try:
        token = clerk.token()
        async with contextlib.AsyncExitStack() as stack:
            readers = [(await stack.enter_async_context(stalled_upload(served.port, token)))[0]
                       for _ in range(6)]
            replies = await asyncio.gather(*(asyncio.wait_for(r.read(), 20) for r in readers))
        for raw in replies:
            status, _, body = split_reply(raw)
            assert (status, body["reason"]) == (408, "body_timeout")
    finally:
        assert await served.stop() == 0
