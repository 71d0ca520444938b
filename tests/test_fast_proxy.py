"""The proxy's fast door: what it serves itself, what it hands to aiohttp and why, its limits."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from gateway.devissuer import DevIssuer
from gateway.http.fast_proxy import PROXY_HANDOVER_CAUSES, FastProxyDoor
from tests.conftest import GatewayFactory, Running, serve_app
from tests.proxy_support import MiB, Upstream, cut_mid_body
from tests.proxy_support import raw_request as raw_exchange


async def proxied(make_gateway: GatewayFactory, upstream: Upstream, **config: Any) -> Running:
    """A proxy-mode gateway (fast door on unless the config says otherwise)."""
    return await make_gateway(env={"GATEWAY_UPSTREAM": upstream.url}, config=config or None)


def counts(running: Running) -> dict[str, float]:
    """The fast door's counter, by result."""
    running.gateway.metrics.flush()
    return {sample.labels["result"]: sample.value
            for metric in running.gateway.registry.collect() for sample in metric.samples
            if sample.name == "clerk_gateway_proxy_fast_path_total"}


def port_of(running: Running) -> int:
    port = running.client.server.port
    assert port is not None
    return port


def head(token: str, method: str = "GET", target: str = "/api", version: str = "HTTP/1.1",
         extra: str = "") -> bytes:
    return (f"{method} {target} {version}\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode()


async def test_the_fast_door_serves_proxy_mode_by_default(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    assert isinstance(gw.client.server.runner.server._front, FastProxyDoor)  # type: ignore[union-attr]
    token = clerk.token()
    for _ in range(3):
        response = await gw.get("/api/items?page=2", token)
        assert response.status == 200
    seen = counts(gw)
    assert seen["answered_after_io"] == 1  # the first sight of the token needed its keys
    assert seen["answered"] == 2  # then decided without I/O
    assert [s.path_qs for s in upstream.seen] == ["/api/items?page=2"] * 3


async def test_fast_path_off_leaves_every_request_to_aiohttp(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream, proxy={"fast_path": False})
    assert (await gw.get("/api", clerk.token())).status == 200
    assert sum(counts(gw).values()) == 0


async def test_an_https_upstream_keeps_the_fast_door_off(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    routes = [{"name": "tls", "path_prefix": "/tls", "upstream": "https://127.0.0.1:1"}]
    gw = await proxied(make_gateway, upstream, routes=routes)
    assert gw.gateway.proxy is not None and not gw.gateway.proxy.lean_only()
    assert (await gw.get("/api", clerk.token())).status == 200
    assert sum(counts(gw).values()) == 0


@pytest.mark.parametrize(("cause", "raw"), [
    ("version", b"GET /api HTTP/1.0\r\nHost: app.test\r\nAuthorization: Bearer {t}\r\n\r\n"),
    ("body", b"POST /upload HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {t}\r\n"
             b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("body", b"POST /upload HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {t}\r\n"
             b"Content-Length: 3\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nabc"),
    ("target", b"GET /api/%2e%2e/x HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {t}\r\n"
               b"Connection: close\r\n\r\n"),
    ("pipelined", b"GET /api HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {t}\r\n\r\n"
                  b"GET /api HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {t}\r\n"
                  b"Connection: close\r\n\r\n"),
    ("malformed", b"GET /api HTTP/1.1\r\nHost: a\r\nHost: b\r\nAuthorization: Bearer {t}\r\n"
                  b"Connection: close\r\n\r\n"),
    ("upgrade", b"GET /ws HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {t}\r\n"
                b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
])
async def test_what_the_fast_door_does_not_serve_goes_to_aiohttp(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream, cause: str, raw: bytes
) -> None:
    gw = await proxied(make_gateway, upstream)
    token = clerk.token()
    assert (await gw.get("/warm", token)).status == 200
    before = counts(gw)
    answer = await raw_exchange(port_of(gw), raw.replace(b"{t}", token.encode()), timeout=3.0) \
        if cause != "upgrade" else await _upgrade(port_of(gw), raw.replace(b"{t}", token.encode()))
    after = counts(gw)
    assert after[cause] == before[cause] + 1
    assert after["answered"] == before["answered"]
    if cause == "malformed":
        assert b" 400 Bad Request\r\n" in answer  # aiohttp's parser refuses it
    elif cause == "upgrade":
        assert answer.startswith(b"HTTP/1.1 101 ")
    else:  # (after a `100 Continue` when the client expects one)
        assert b" 200 OK\r\n" in answer, answer[:200]
    if cause == "pipelined":
        assert answer.count(b"HTTP/1.1 200 ") == 2  # both answered, in order, by aiohttp


async def _upgrade(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()


def test_every_hand_over_cause_is_a_label() -> None:
    assert set(PROXY_HANDOVER_CAUSES) == {"pipelined", "body", "upgrade", "version", "target",
                                          "oversize", "malformed", "upstream"}


async def test_bodies_stream_both_ways_through_the_fast_door(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    auth = {"Authorization": f"Bearer {clerk.token()}"}
    payload = bytes(range(256)) * (8 * MiB // 256)
    response = await gw.client.post("/upload", data=payload, headers=auth)
    assert response.status == 200
    assert await response.json() == {"bytes": 8 * MiB}
    assert upstream.uploads == [8 * MiB]
    response = await gw.client.get(f"/download?size={8 * MiB}", headers=auth)
    assert response.status == 200
    assert len(await response.read()) == 8 * MiB
    seen = counts(gw)
    assert seen["answered"] + seen["answered_after_io"] == 2
    assert seen["body"] == 0


async def test_keep_alive_requests_follow_each_other_on_one_connection(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    token = clerk.token()
    assert (await gw.get("/warm", token)).status == 200
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
    try:
        for index in range(5):
            body = f"n={index}".encode()
            writer.write(f"POST /echo/{index} HTTP/1.1\r\nHost: app.test\r\nAuthorization: "
                         f"Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert status.startswith(b"HTTP/1.1 200 ")
            length = int(status.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
    finally:
        writer.close()
    assert [s.body for s in upstream.seen[-5:]] == [f"n={i}".encode() for i in range(5)]
    assert counts(gw)["pipelined"] == 0


async def test_a_refusal_before_the_body_arrives_closes_the_connection(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
    try:
        writer.write(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000000\r\n\r\n"
                     b"partial")
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b"Connection: close\r\n" in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["reason"] == "missing_token"
    assert upstream.uploads == []


async def test_a_body_over_the_limit_is_refused_before_the_upstream(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream, proxy={"max_body_bytes": 1000})
    answer = await raw_exchange(port_of(gw), head(
        clerk.token(), "POST", "/upload", extra="Content-Length: 1001\r\n") + b"x" * 1001)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["reason"] == "body_too_large"
    assert upstream.uploads == []


async def test_an_upstream_that_never_answers_times_out_with_504(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream, proxy={"read_timeout_seconds": 0.3})
    answer = await raw_exchange(port_of(gw), head(clerk.token(), target="/hold"))
    assert answer.startswith(b"HTTP/1.1 504 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["reason"] == "upstream_timeout"


async def test_an_upstream_cut_off_mid_body_cuts_the_client_off(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    app = web.Application()
    app.router.add_get("/cut", cut_mid_body)
    server = await serve_app(app)
    try:
        gw = await make_gateway(env={"GATEWAY_UPSTREAM": str(server.make_url("")).rstrip("/")})
        try:
            answer = await raw_exchange(port_of(gw), head(clerk.token(), target="/cut"))
        except ConnectionResetError:
            answer = b""
        assert len(answer) < 10 * MiB  # never a complete answer
        gw.gateway.metrics.flush()
        assert gw.gateway.registry.get_sample_value(
            "clerk_gateway_upstream_errors_total", {"route": "default", "kind": "reset"}) == 1
    finally:
        await server.close()


async def test_shutdown_cuts_off_a_relay_that_outlives_the_drain(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream)
    pending = asyncio.ensure_future(raw_exchange(port_of(gw), head(clerk.token(),
                                                                   target="/hold")))
    door = gw.client.server.runner.server._front  # type: ignore[union-attr]
    assert isinstance(door, FastProxyDoor)
    for _ in range(200):
        if door.tasks:
            break
        await asyncio.sleep(0.02)
    await door.drain(0.1)
    answer = await asyncio.wait_for(pending, 10)
    assert not answer.startswith(b"HTTP/1.1 200 ")  # cut off, never a partial 200
    assert not door.tasks


async def test_a_head_over_the_limit_goes_to_aiohttp_which_refuses_it(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream, limits={"max_header_bytes": 1024})
    answer = await raw_exchange(port_of(gw), head(clerk.token(), extra=f"X-Big: {'a' * 2000}\r\n"))
    assert b" 431 Request Header Fields Too Large\r\n" in answer  # aiohttp's parser: 431
    assert counts(gw)["oversize"] == 1
    assert upstream.seen == []


async def test_a_trickled_head_is_cut_with_408_by_the_fast_door(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await proxied(make_gateway, upstream, limits={"header_timeout_seconds": 0.3})
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
    try:
        writer.write(b"GET /api HTTP/1.1\r\nHost: app.test\r\n")  # and nothing more
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["reason"] == "request_timeout"
    assert sum(counts(gw).values()) == 0  # no request was served or handed over
    assert upstream.seen == []
