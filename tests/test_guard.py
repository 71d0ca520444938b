"""Connection guards: slow request heads, oversized and malformed HTTP, request smuggling."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway.app import Gateway, build_public_app
from gateway.config import load_settings
from gateway.devissuer import DevIssuer
from gateway.http.guard import GuardedAppRunner
from tests.conftest import free_port


@pytest.fixture
async def guarded(clerk: DevIssuer) -> AsyncIterator[int]:
    """A forward-auth gateway behind the guarded runner, with a 0.5 s head deadline."""
    settings = load_settings({"CLERK_ISSUER": clerk.issuer})
    runner = GuardedAppRunner(build_public_app(Gateway(settings)), head_timeout=0.5,
                              realm="clerk-gateway", access_log=None, max_line_size=4096,
                              max_field_size=4096, max_headers=32)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port
    await runner.cleanup()


async def exchange(port: int, chunks: list[bytes], pause: float = 0.0,
                   timeout: float = 5.0) -> bytes:
    """Send chunks (pausing between them) while reading, until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()

    async def read() -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)

    reading = asyncio.create_task(read())
    try:
        for chunk in chunks:
            if reading.done():
                break  # the server answered and closed: stop sending, like a real client
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(pause)
        await asyncio.wait_for(reading, timeout)
    finally:
        reading.cancel()
        writer.close()
    return bytes(received)


def status_and_body(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body or b"{}")


async def test_a_slow_request_head_is_cut_with_408(guarded: int) -> None:
    trickle = [b"GET / HTTP/1.1\r\nHost: x\r\n"] + [b"X-A: b\r\n"] * 20
    raw = await exchange(guarded, trickle, pause=0.1)
    status, body = status_and_body(raw)
    assert status == 408
    assert body["reason"] == "request_timeout"


async def test_a_silent_connection_is_closed(guarded: int) -> None:
    raw = await exchange(guarded, [], timeout=5)
    assert raw.startswith(b"HTTP/1.1 408")


async def test_a_slow_second_head_on_a_kept_alive_connection_is_cut(guarded: int) -> None:
    first = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    trickle = [first, b"GET / HTTP/1.1\r\n"] + [b"X-A: b\r\n"] * 20
    raw = await exchange(guarded, trickle, pause=0.1)
    assert raw.startswith(b"HTTP/1.1 401")  # the first request was answered
    assert b"HTTP/1.1 408" in raw


async def test_a_fast_client_is_not_cut(guarded: int) -> None:
    raw = await exchange(guarded, [b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"])
    assert raw.startswith(b"HTTP/1.1 401")
    assert b"408" not in raw


async def test_oversized_header_gets_431_json(guarded: int) -> None:
    big = b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 5000 + b"\r\n\r\n"
    status, body = status_and_body(await exchange(guarded, [big]))
    assert status == 431
    assert body["reason"] == "headers_too_large"
    assert "aaaa" not in json.dumps(body)


async def test_too_many_headers_get_a_json_error(guarded: int) -> None:
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
        f"X-H{i}: v\r\n".encode() for i in range(64)) + b"\r\n"
    status, body = status_and_body(await exchange(guarded, [many]))
    assert status in (400, 431)
    assert body["reason"] in ("malformed_request", "headers_too_large")


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
    # Request smuggling: conflicting framing is refused, never guessed.
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
])
async def test_malformed_http_gets_400_json(guarded: int, raw: bytes) -> None:
    status, body = status_and_body(await exchange(guarded, [raw]))
    assert status == 400
    assert body["reason"] == "malformed_request"
    assert set(body) == {"error", "reason", "message", "request_id"}


async def test_serve_guards_its_public_listener(clerk: DevIssuer, tmp_path: Any) -> None:
    config = tmp_path / "g.yaml"
    config.write_text("limits:\n  header_timeout_seconds: 0.5\n")
    port, admin = free_port(), free_port()
    env = {**os.environ, "CLERK_ISSUER": clerk.issuer, "GATEWAY_LISTEN": f"127.0.0.1:{port}",
           "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin}", "GATEWAY_WORKERS": "1",
           "GATEWAY_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config",
                                str(config)], env=env)
    try:
        for _ in range(100):
            try:
                raw = await exchange(port, [b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close"
                                            b"\r\n\r\n"])
                break
            except OSError:
                await asyncio.sleep(0.1)
        assert raw.startswith(b"HTTP/1.1 401")
        slow = await exchange(port, [b"GET / HTTP/1.1\r\n"] + [b"X-A: b\r\n"] * 20, pause=0.1)
        assert slow.startswith(b"HTTP/1.1 408")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
