"""The lean upstream client against raw loopback servers whose every byte the test controls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from gateway.devissuer import DevIssuer
from gateway.http.proxy import classify_failure
from gateway.http.upstream import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamReset,
)
from gateway.reasons import Reason
from tests.conftest import GatewayFactory, Running
from tests.proxy_support import Upstream

Answer = Callable[[int, int, str, bytes, asyncio.StreamWriter], Awaitable[bool]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


@dataclass
class Raw:
    """A loopback server: `answer(conn_no, req_no, method, body, writer)` -> keep going?"""

    answer: Answer
    connections: int = 0
    requests: list[tuple[int, str, str, dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_no = self.connections
        try:
            for req_no in range(1, 1000):
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = b""
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding") == "chunked":
                    while (size := int((await reader.readline()).strip(), 16)):
                        body += await reader.readexactly(size)
                        await reader.readline()
                    await reader.readline()
                self.requests.append((conn_no, method, target, headers, body))
                if not await self.answer(conn_no, req_no, method, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[Raw]:
    raw = Raw(answer)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    try:
        yield raw
    finally:
        server.close()


def pool(**overrides: float) -> UpstreamPool:
    options: dict[str, float] = dict(limit=10, limit_per_upstream=10, keepalive_seconds=30.0,
                                     connect_timeout=2.0, read_timeout=5.0)
    options.update(overrides)
    return UpstreamPool(limit=int(options["limit"]),
                        limit_per_upstream=int(options["limit_per_upstream"]),
                        keepalive_seconds=options["keepalive_seconds"],
                        connect_timeout=options["connect_timeout"],
                        read_timeout=options["read_timeout"])


async def get(p: UpstreamPool, raw: Raw, method: str = "GET", path: str = "/",
              body: list[bytes] | None = None, length: int | None = None) -> tuple[int, bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        for part in body or ():
            yield part

    response = await p.request(("127.0.0.1", raw.port), method, path, [("X-Test", "1")],
                               chunks() if body is not None else None, length)
    try:
        data = await response.read()
    except BaseException:
        response.close()
        raise
    response.release()
    return response.status, data


async def ok(conn: int, req: int, method: str, body: bytes, w: asyncio.StreamWriter) -> bool:
    w.write(OK)
    await w.drain()
    return True


async def test_keep_alive_connection_is_reused() -> None:
    async with raw_server(ok) as raw:
        p = pool()
        assert await get(p, raw) == (200, b"hello")
        assert await get(p, raw, path="/b?x=1") == (200, b"hello")
        assert raw.connections == 1
        assert [r[2] for r in raw.requests] == ["/", "/b?x=1"]
        assert raw.requests[0][3]["host"] == f"127.0.0.1:{raw.port}"
        assert p.open_connections == 1
        await p.close()
        assert p.open_connections == 0


async def test_connection_close_is_not_reused() -> None:
    async def close(conn: int, req: int, method: str, body: bytes,
                    w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi")
        await w.drain()
        await asyncio.sleep(0.5)  # the client must not wait for this close to be done
        return False

    async with raw_server(close) as raw:
        p = pool()
        assert await get(p, raw) == (200, b"hi")
        assert p.open_connections == 0
        assert await get(p, raw) == (200, b"hi")
        assert raw.connections == 2
        await p.close()


async def test_chunked_response_is_read_whole_and_the_connection_reused() -> None:
    async def chunked(conn: int, req: int, method: str, body: bytes,
                      w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await w.drain()
        await asyncio.sleep(0.01)
        w.write(b"6\r\n world\r\n0\r\n\r\n")
        await w.drain()
        return True

    async with raw_server(chunked) as raw:
        p = pool()
        assert await get(p, raw) == (200, b"hello world")
        assert await get(p, raw) == (200, b"hello world")
        assert raw.connections == 1
        await p.close()


async def test_head_response_has_no_body_and_the_connection_is_reused() -> None:
    async def head(conn: int, req: int, method: str, body: bytes,
                   w: asyncio.StreamWriter) -> bool:
        if method == "HEAD":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        else:
            w.write(OK)
        await w.drain()
        return True

    async with raw_server(head) as raw:
        p = pool()
        assert await get(p, raw, "HEAD") == (200, b"")
        assert await get(p, raw) == (200, b"hello")
        assert raw.connections == 1
        await p.close()


async def test_no_content_and_not_modified_have_no_body() -> None:
    async def empty(conn: int, req: int, method: str, body: bytes,
                    w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 204 No Content\r\n\r\n" if req == 1
                else b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n")
        await w.drain()
        return True

    async with raw_server(empty) as raw:
        p = pool()
        assert await get(p, raw) == (204, b"")
        assert await get(p, raw) == (304, b"")
        assert raw.connections == 1
        await p.close()


async def test_close_delimited_body_is_read_to_eof_and_not_reused() -> None:
    async def until_eof(conn: int, req: int, method: str, body: bytes,
                        w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        await w.drain()
        return False

    async with raw_server(until_eof) as raw:
        p = pool()
        assert await get(p, raw) == (200, b"all of it")
        assert p.open_connections == 0
        await p.close()


def stale_after_first(answered: list[int]) -> Answer:
    """Answers the first request of each connection; a second one finds it closed."""
    async def answer(conn: int, req: int, method: str, body: bytes,
                     w: asyncio.StreamWriter) -> bool:
        if req > 1:
            return False  # the upstream closed the kept-alive connection as this request came
        answered.append(conn)
        w.write(OK)
        await w.drain()
        return True
    return answer


async def test_stale_keep_alive_idempotent_request_is_retried_once_on_a_fresh_connection(
) -> None:
    answered: list[int] = []
    async with raw_server(stale_after_first(answered)) as raw:
        p = pool()
        assert await get(p, raw) == (200, b"hello")
        assert await get(p, raw) == (200, b"hello")
        assert answered == [1, 2]
        assert raw.connections == 2
        await p.close()


async def test_stale_keep_alive_request_with_a_body_is_not_retried() -> None:
    answered: list[int] = []
    async with raw_server(stale_after_first(answered)) as raw:
        p = pool()
        assert await get(p, raw) == (200, b"hello")
        with pytest.raises(UpstreamReset) as failure:
            await get(p, raw, "POST", body=[b"data"], length=4)
        assert classify_failure(failure.value)[0] == "reset"
        assert answered == [1]
        assert raw.connections == 1
        assert p.open_connections == 0
        await p.close()


async def test_request_bodies_stream_with_length_or_chunked() -> None:
    async with raw_server(ok) as raw:
        p = pool()
        await get(p, raw, "POST", body=[b"ab", b"cd"], length=4)
        await get(p, raw, "PUT", body=[b"xy", b"z"])
        await get(p, raw, "POST")
        assert raw.requests[0][3]["content-length"] == "4"
        assert raw.requests[0][4] == b"abcd"
        assert raw.requests[1][3]["transfer-encoding"] == "chunked"
        assert raw.requests[1][4] == b"xyz"
        assert raw.requests[2][3]["content-length"] == "0"
        assert raw.connections == 1
        await p.close()


async def test_pool_bound_makes_requests_wait_for_a_connection() -> None:
    gate = asyncio.Event()

    async def held(conn: int, req: int, method: str, body: bytes,
                   w: asyncio.StreamWriter) -> bool:
        await gate.wait()
        w.write(OK)
        await w.drain()
        return True

    async with raw_server(held) as raw:
        p = pool(limit_per_upstream=1)
        first = asyncio.create_task(get(p, raw))
        second = asyncio.create_task(get(p, raw))
        for _ in range(200):
            if raw.requests:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert raw.connections == 1
        assert len(raw.requests) == 1  # the second request waits for the pool, not a socket
        assert p.open_connections == 1
        gate.set()
        assert await asyncio.wait_for(first, 5) == (200, b"hello")
        assert await asyncio.wait_for(second, 5) == (200, b"hello")
        assert raw.connections == 1
        await p.close()


async def test_total_bound_closes_another_upstreams_idle_connection() -> None:
    async with raw_server(ok) as one, raw_server(ok) as two:
        p = pool(limit=1)
        await get(p, one)
        await get(p, two)
        assert p.open_connections == 1
        await get(p, one)
        assert one.connections == 2
        await p.close()


async def test_idle_connections_expire() -> None:
    async with raw_server(ok) as raw:
        p = pool(keepalive_seconds=0.1)
        await get(p, raw)
        await asyncio.sleep(0.3)
        assert p.open_connections == 0
        await get(p, raw)
        assert raw.connections == 2
        await p.close()


async def test_abandoned_response_closes_its_connection() -> None:
    async def slow(conn: int, req: int, method: str, body: bytes,
                   w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        await w.drain()
        await asyncio.sleep(0.2)
        w.write(b"world")
        return True

    async with raw_server(slow) as raw:
        p = pool()
        response = await p.request(("127.0.0.1", raw.port), "GET", "/", [])
        response.close()
        assert p.open_connections == 0
        assert await get(p, raw) == (200, b"helloworld")
        assert raw.connections == 2
        await p.close()


async def test_read_timeout_and_refused_connection() -> None:
    async def silent(conn: int, req: int, method: str, body: bytes,
                     w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async with raw_server(silent) as raw:
        p = pool(read_timeout=0.1)
        with pytest.raises(TimeoutError) as timeout:
            await get(p, raw)
        assert classify_failure(timeout.value)[0] == "timeout"
        assert p.open_connections == 0
        port = raw.port
    with pytest.raises(UpstreamConnectError) as refused:
        await get(p, Raw(ok, port=port))
    assert classify_failure(refused.value)[0] == "connect"
    assert p.open_connections == 0
    await p.close()


async def test_reset_mid_body_fails_the_read() -> None:
    async def cut(conn: int, req: int, method: str, body: bytes,
                  w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await w.drain()
        return False

    async with raw_server(cut) as raw:
        p = pool()
        with pytest.raises(UpstreamReset):
            await get(p, raw)
        assert p.open_connections == 0
        await p.close()


async def test_newline_in_a_header_is_refused_before_connecting() -> None:
    p = pool()
    with pytest.raises(ValueError):
        await p.request(("127.0.0.1", 9), "GET", "/", [("X-Evil", "a\r\nX-Injected: 1")])
    assert p.open_connections == 0
    await p.close()


# Through the gateway: both upstream clients keep the proxy's contract.

@pytest.fixture
def recorder(upstream: Upstream) -> Upstream:
    """The recording upstream (conftest's), under the name these tests give it."""
    return upstream


def through(make_gateway: GatewayFactory, upstream: Upstream, client: str,
            **proxy: Any) -> Awaitable[Running]:
    return make_gateway(env={"GATEWAY_UPSTREAM": upstream.url},
                        config={"proxy": {"client": client, **proxy}})


def clerk_subject(clerk: DevIssuer) -> str:
    import jwt

    return str(jwt.decode(clerk.token(), options={"verify_signature": False})["sub"])


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_both_clients_forward_bodies_heads_and_identity(
    clerk: DevIssuer, make_gateway: GatewayFactory, recorder: Upstream, client: str
) -> None:
    gw = await through(make_gateway, recorder, client)
    auth = {"Authorization": f"Bearer {clerk.token()}"}

    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    response = await gw.client.post("/echo?q=1", data=chunks(), headers=auth)
    assert response.status == 200
    assert await response.json() == {"path": "/echo?q=1", "bytes": 6}
    response = await gw.client.head("/echo", headers=auth)
    assert response.status == 200
    assert await response.read() == b""
    response = await gw.client.get("/download?size=100000", headers=auth)
    assert len(await response.read()) == 100000
    assert [s.method for s in recorder.seen] == ["POST", "HEAD"]
    assert recorder.seen[0].body == b"abcdef"
    assert recorder.seen[0].values("X-User-Id") == [clerk_subject(clerk)]


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_both_clients_map_upstream_failures(
    clerk: DevIssuer, make_gateway: GatewayFactory, recorder: Upstream, client: str
) -> None:
    gw = await through(make_gateway, recorder, client, read_timeout_seconds=0.3)
    auth = {"Authorization": f"Bearer {clerk.token()}"}
    assert (await gw.client.get("/slow?seconds=2", headers=auth)).status == 504
    assert (await gw.client.get("/reset", headers=auth)).status == 502
    kinds = {kind: gw.gateway.registry.get_sample_value(
        "clerk_gateway_upstream_errors_total", {"route": "default", "kind": kind}) for kind in
        ("timeout", "reset")}
    assert kinds == {"timeout": 1.0, "reset": 1.0}


async def test_lean_client_keeps_one_connection_for_sequential_requests(
    clerk: DevIssuer, make_gateway: GatewayFactory, aiohttp_server: Any
) -> None:
    peers: list[object] = []

    async def handle(request: web.Request) -> web.Response:
        peers.append(request.transport)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    server = await aiohttp_server(app)
    gw = await make_gateway(env={"GATEWAY_UPSTREAM": str(server.make_url("")).rstrip("/")})
    auth = {"Authorization": f"Bearer {clerk.token()}"}
    for _ in range(3):
        response = await gw.client.get("/x", headers=auth)
        assert await response.text() == "ok"
    assert len(peers) == 3
    assert len({id(p) for p in peers}) == 1
    handler = gw.gateway.proxy
    assert handler is not None and handler._pool is not None  # the lean client is the default
    assert handler._pool.open_connections == 1


async def test_upstream_not_reading_the_upload_times_out() -> None:
    stalled = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        stalled.set()
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def endless() -> AsyncIterator[bytes]:
        block = b"u" * 1024 * 1024
        for _ in range(256):
            yield block

    p = pool(read_timeout=0.3)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                p.request(("127.0.0.1", port), "POST", "/", [], endless()), 10)
        assert stalled.is_set()
        assert p.open_connections == 0
    finally:
        server.close()
        await p.close()


async def test_cancelled_request_closes_its_connection() -> None:
    gate = asyncio.Event()

    async def held(conn: int, req: int, method: str, body: bytes,
                   w: asyncio.StreamWriter) -> bool:
        gate.set()
        await asyncio.sleep(5)
        return False

    async with raw_server(held) as raw:
        p = pool()
        task = asyncio.create_task(get(p, raw))
        await asyncio.wait_for(gate.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert p.open_connections == 0
        await p.close()


async def test_oversized_or_invalid_response_heads_are_refused() -> None:
    async def huge(conn: int, req: int, method: str, body: bytes,
                   w: asyncio.StreamWriter) -> bool:
        if req == 1 and conn == 1:
            w.write(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"b" * 100_000 + b"\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
        await w.drain()
        return True

    async with raw_server(huge) as raw:
        p = pool()
        for _ in range(2):
            with pytest.raises(UpstreamProtocolError) as failure:
                await get(p, raw)
            assert classify_failure(failure.value) == ("other", Reason.UPSTREAM_UNAVAILABLE)
        assert p.open_connections == 0
        await p.close()


async def test_proxy_client_setting_is_validated(
    make_gateway: GatewayFactory, recorder: Upstream
) -> None:
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match=r"proxy\.client.*lean, aiohttp"):
        await through(make_gateway, recorder, "curl")
    gw = await through(make_gateway, recorder, "aiohttp")
    assert gw.settings.proxy.client == "aiohttp"
