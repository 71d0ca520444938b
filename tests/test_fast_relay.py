"""The proxy fast door's callback relay: no task per request, its deadlines, back-pressure,
stale pooled connections and upstreams that fail midway."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httptools
from aiohttp import web

from gateway.devissuer import DevIssuer
from gateway.http.deadlines import Sweep
from gateway.http.fast_proxy import FastProxyDoor
from tests.conftest import GatewayFactory, Running, serve_app
from tests.proxy_support import MiB, Upstream, cut_mid_body
from tests.proxy_support import raw_request as raw_exchange


async def warm(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def door_of(running: Running) -> FastProxyDoor:
    door = running.client.server.runner.server._front  # type: ignore[union-attr]
    assert isinstance(door, FastProxyDoor)
    return door


def port_of(running: Running) -> int:
    port = running.client.server.port
    assert port is not None
    return port


def head(token: str, method: str = "GET", target: str = "/api", extra: str = "") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode()


def sample(running: Running, name: str, labels: dict[str, str]) -> float:
    running.gateway.metrics.flush()
    return running.gateway.registry.get_sample_value(name, labels) or 0.0


async def until(check: Any, what: str) -> None:
    """Wait (bounded) until check() holds."""
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def warmed(make_gateway: GatewayFactory, url: str, token: str,
                 **config: Any) -> Running:
    """A proxy whose token is verified and whose pool holds an idle upstream connection."""
    gw = await make_gateway(env={"GATEWAY_UPSTREAM": url}, config=config or None)
    assert (await gw.get("/warm", token)).status == 200
    return gw


async def test_a_request_on_an_idle_pooled_connection_is_relayed_without_a_task(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    token = clerk.token()
    gw = await warmed(make_gateway, upstream.url, token)
    door = door_of(gw)
    pending = asyncio.ensure_future(raw_exchange(port_of(gw), head(token, target="/hold")))
    await until(lambda: door.sweep.watched, "the relay is watched by the sweep")
    assert not door.tasks  # relayed by callbacks: no task for it
    assert door.callback_relays == 1
    await door.drain(0.1)  # shutdown's deadline passes: the relay is cut off
    answer = await asyncio.wait_for(pending, 10)
    assert not answer.startswith(b"HTTP/1.1 200 ")  # never a partial 200
    assert not door.sweep.watched
    await asyncio.wait_for(upstream.cancelled.wait(), 10)  # the upstream connection closed


async def test_keep_alive_requests_are_relayed_in_order_with_their_bodies(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    token = clerk.token()
    gw = await warmed(make_gateway, upstream.url, token)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
    try:
        for index in range(4):
            body = f"n={index}".encode()
            writer.write(f"PUT /echo/{index}?q={index} HTTP/1.1\r\nHost: app.test\r\n"
                         f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
                         .encode() + body)
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"X-Upstream: yes\r\n" in answer
            length = int(answer.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            assert json.loads(await reader.readexactly(length)) == {
                "path": f"/echo/{index}?q={index}", "bytes": len(body)}
    finally:
        writer.close()
    assert door_of(gw).callback_relays == 4
    assert [s.body for s in upstream.seen[-4:]] == [f"n={i}".encode() for i in range(4)]


async def test_the_sweep_times_out_an_upstream_that_never_answers(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    token = clerk.token()
    gw = await warmed(make_gateway, upstream.url, token, proxy={"read_timeout_seconds": 0.3})
    answer = await raw_exchange(port_of(gw), head(token, target="/hold"))
    assert answer.startswith(b"HTTP/1.1 504 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["reason"] == "upstream_timeout"
    assert door_of(gw).callback_relays == 1
    assert sample(gw, "clerk_gateway_upstream_errors_total",
                  {"route": "default", "kind": "timeout"}) == 1


async def test_a_client_that_leaves_closes_the_upstream_connection(
    clerk: DevIssuer, make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    token = clerk.token()
    gw = await warmed(make_gateway, upstream.url, token)
    door = door_of(gw)
    _, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
    writer.write(head(token, target="/hold"))
    await until(lambda: door.sweep.watched, "the relay is watched by the sweep")
    writer.close()
    await asyncio.wait_for(upstream.cancelled.wait(), 10)
    await until(lambda: not door.sweep.watched, "the relay ended")
    assert (await gw.get("/after", token)).status == 200  # the slot was given back


async def test_an_upstream_cut_off_mid_body_cuts_the_client_off(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    app = web.Application()
    app.router.add_get("/cut", cut_mid_body)
    app.router.add_get("/warm", warm)
    server = await serve_app(app)
    try:
        token = clerk.token()
        gw = await warmed(make_gateway, str(server.make_url("")).rstrip("/"), token)
        try:
            answer = await raw_exchange(port_of(gw), head(token, target="/cut"))
        except ConnectionResetError:
            answer = b""
        assert len(answer) < 10 * MiB  # never a complete answer
        assert door_of(gw).callback_relays == 1
        assert sample(gw, "clerk_gateway_upstream_errors_total",
                      {"route": "default", "kind": "reset"}) == 1
    finally:
        await server.close()


async def test_a_client_that_stops_reading_pauses_the_upstream_then_is_cut_off(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    total = 64 * MiB
    written: list[int] = [0]

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(total)})
        await response.prepare(request)
        block = b"b" * MiB
        for _ in range(total // MiB):
            await response.write(block)
            written[0] += MiB
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/warm", warm)
    server = await serve_app(app)
    try:
        token = clerk.token()
        gw = await warmed(make_gateway, str(server.make_url("")).rstrip("/"), token,
                          proxy={"write_timeout_seconds": 1.0})
        _, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
        try:
            writer.write(head(token, target="/big"))  # and never read the answer
            await until(lambda: sample(gw, "clerk_gateway_resource_guards_total",
                                       {"guard": "response_write"}) == 1,
                        "the stalled client is cut off")
        finally:
            writer.close()
        assert door_of(gw).callback_relays == 1
        # The upstream's reads were paused: it could not write the whole body (the gateway
        # never buffered it all for a client that reads nothing).
        assert written[0] < total
    finally:
        await server.close()


@dataclass
class Flaky:
    """A raw upstream that answers the first request of each connection and closes the
    connection, answering nothing, when a second request arrives on it (a pooled connection
    the upstream had closed: the gateway sees it closed before any response byte)."""

    requests: list[tuple[int, bytes]] = field(default_factory=list)
    connections: int = 0


class _FlakyConnection(asyncio.Protocol):
    def __init__(self, flaky: Flaky) -> None:
        self.flaky = flaky
        flaky.connections += 1
        self.number = flaky.connections
        self.served = 0
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.flaky.requests.append((self.number, url))

    def on_message_complete(self) -> None:
        self.served += 1
        if self.served == 1:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            self.transport.close()


async def test_a_stale_pooled_connection_is_retried_once_for_a_bodyless_get_only(
    clerk: DevIssuer, make_gateway: GatewayFactory
) -> None:
    flaky = Flaky()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _FlakyConnection(flaky), "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        token = clerk.token()
        gw = await warmed(make_gateway, f"http://127.0.0.1:{port}", token)
        answer = await raw_exchange(port_of(gw), head(token, target="/again"))
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nok")
        # Sent on the stale connection 1, then once more on a new connection 2.
        assert flaky.requests == [(1, b"/warm"), (1, b"/again"), (2, b"/again")]
        answer = await raw_exchange(port_of(gw), head(
            token, "POST", "/once", extra="Content-Length: 3\r\n") + b"abc")
        assert answer.startswith(b"HTTP/1.1 502 ")  # a body is never sent twice
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["reason"] == "upstream_unavailable"
        assert flaky.requests[3:] == [(2, b"/once")]
        assert door_of(gw).callback_relays == 2
    finally:
        server.close()


@dataclass(eq=False)
class _Relay:
    moved: bool = True
    limit: float = 0.05
    deadline: float = 0.0
    expired: asyncio.Event = field(default_factory=asyncio.Event)

    def expire(self) -> None:
        self.expired.set()

    def cut_off(self) -> None:
        raise AssertionError("not cut off")


async def test_the_sweep_expires_a_relay_without_progress_and_then_stops() -> None:
    sweep = Sweep(0.05)
    loop = asyncio.get_running_loop()
    relay = _Relay()
    sweep.watch(relay, loop)
    assert relay.moved  # the first deadline is set at the first tick
    await asyncio.wait_for(relay.expired.wait(), 10)
    assert relay.deadline > 0
    sweep.forget(relay)
    await asyncio.sleep(sweep.interval * 3)
    assert not sweep.running  # nothing watched: no timer runs
