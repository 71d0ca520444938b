"""The admin listener is guarded like the public one: head deadline, idle close, header caps.

Run through `clerk-gateway serve` with the default worker count, over raw sockets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.devissuer import DevIssuer
from tests.conftest import free_port
from tests.proxy_support import GatewayProcess, start_gateway_process
from tests.test_guard import exchange, status_and_body


@pytest.fixture
async def served(clerk: DevIssuer, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    """`serve` with default workers, a 0.5 s head deadline and a 1 s idle keep-alive close."""
    config = tmp_path / "gateway.yaml"
    config.write_text("limits:\n  header_timeout_seconds: 0.5\n"
                      "  keepalive_timeout_seconds: 1\n")
    gateway = await start_gateway_process(
        {"CLERK_ISSUER": clerk.issuer, "GATEWAY_CONFIG": str(config)},
        free_port(), free_port(), tmp_path)
    try:
        yield gateway
    finally:
        assert await gateway.stop() == 0


async def test_a_trickled_admin_head_is_cut_with_408(served: GatewayProcess) -> None:
    trickle = [b"GET /metrics HTTP/1.1\r\nHost: x\r\n"] + [b"X-A: b\r\n"] * 40
    raw = await exchange(served.admin_port, trickle, pause=0.1, timeout=10)
    status, body = status_and_body(raw)
    assert status == 408
    assert set(body) == {"error", "reason", "message", "request_id"}
    assert body["reason"] == "request_timeout"


async def test_a_silent_admin_connection_is_closed(served: GatewayProcess) -> None:
    started = time.monotonic()
    raw = await exchange(served.admin_port, [], timeout=10)
    assert status_and_body(raw)[0] == 408
    assert time.monotonic() - started < 9


async def test_an_idle_kept_alive_admin_connection_is_closed(served: GatewayProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.admin_port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        # nothing more is sent: the connection must be closed by the gateway, not kept
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()


async def test_oversized_admin_headers_get_431_json(served: GatewayProcess) -> None:
    raw = await exchange(served.admin_port, [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
                                             + b"a" * 20000 + b"\r\n\r\n"], timeout=10)
    status, body = status_and_body(raw)
    assert status == 431 and body["reason"] == "headers_too_large"
